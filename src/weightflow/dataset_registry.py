"""The dataset registry: every dataset name, how it is loaded and its shape — written once, here.

This module imports nothing but the standard library, so that :mod:`weightflow.config` (imported by the
Snakefile when every job parses the rules) can check layer sizes against datasets without importing torch.
:mod:`weightflow.data` loads the datasets by their ``kind``; ``config/schema.yaml``'s dataset enum lists the same
names (a test checks that they agree).

Kinds:

* ``sklearn`` — scikit-learn's bundled copies (no download), seeded stratified train/val/test splits, every feature
  standardized with the training split's mean and std;
* ``idx`` — the four IDX files of an MNIST-format dataset in a folder; the official test set is the test split;
  pixels standardized with one mean and std of the training split;
* ``digits28`` — scikit-learn's 8×8 digits upsampled to 28×28 (an offline stand-in for MNIST);
* ``weight_target`` — no data: a target distribution over weights (the Gaussian sanity experiment).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DatasetSpec", "DATASETS", "KINDS", "dataset_shapes", "DEFAULT_ROOTS", "HOW_TO_GET", "IDX_FILES",
           "idx_root", "missing_data"]

KINDS = ("sklearn", "idx", "digits28", "weight_target")


@dataclass(frozen=True)
class DatasetSpec:
    """How a dataset is loaded (``kind``, one of :data:`KINDS`) and its shape (0, 0 for ``weight_target``)."""

    kind: str
    num_features: int
    num_classes: int
    description: str


DATASETS: dict[str, DatasetSpec] = {
    "breast_cancer": DatasetSpec("sklearn", 30, 2, "Wisconsin breast cancer (569 tumours, 30 features)"),
    "digits": DatasetSpec("sklearn", 64, 10, "8x8 handwritten digits (1797 images)"),
    "wine": DatasetSpec("sklearn", 13, 3, "wine recognition (178 wines, 13 features)"),
    "iris": DatasetSpec("sklearn", 4, 3, "iris flowers (150 flowers, 4 features)"),
    "digits28": DatasetSpec(
        "digits28", 784, 10,
        "scikit-learn's 8x8 digits upsampled (bilinear) to 28x28: an offline stand-in for MNIST with its input and "
        "output shape (1797 images)",
    ),
    "mnist": DatasetSpec("idx", 784, 10, "MNIST handwritten digits (IDX files; 60k train, 10k test)"),
    "fashion_mnist": DatasetSpec("idx", 784, 10, "Fashion-MNIST clothing images (IDX files; 60k train, 10k test)"),
    "gaussian": DatasetSpec("weight_target", 0, 0, "no data: the target N(1, I) over the weights"),
}

assert all(spec.kind in KINDS for spec in DATASETS.values())


def dataset_shapes() -> dict[str, tuple[int, int]]:
    """``{name: (num_features, num_classes)}`` of every dataset with data (not the ``weight_target`` ones)."""
    return {name: (spec.num_features, spec.num_classes) for name, spec in DATASETS.items()
            if spec.kind != "weight_target"}


#: Default folders of the IDX datasets (override: the experiment's ``data_root`` or ``WEIGHTFLOW_{NAME}_ROOT``).
DEFAULT_ROOTS = {
    "fashion_mnist": "/usr/share/datasets/fashion-mnist",
    "mnist": "data/mnist",
}
HOW_TO_GET = {
    "fashion_mnist": "install Debian's package 'dataset-fashion-mnist' (apt-get install dataset-fashion-mnist) "
    "or point `data_root` at a folder with the four Fashion-MNIST IDX files",
    "mnist": "put the four MNIST IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
    "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz], from https://yann.lecun.com/exdb/mnist/ or a "
    "mirror) in that folder, or point the experiment's `data_root` (or WEIGHTFLOW_MNIST_ROOT) at a folder holding "
    "them; without the files, dataset 'digits28' is an offline stand-in of the same shape",
}
#: The four files of an IDX dataset (each may also be gzipped, ``.gz``).
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_root(name: str, root: str | Path | None = None) -> Path:
    """The folder of IDX dataset ``name``: ``root``, else ``WEIGHTFLOW_{NAME}_ROOT``, else :data:`DEFAULT_ROOTS`."""
    return Path(root or os.environ.get(f"WEIGHTFLOW_{name.upper()}_ROOT", DEFAULT_ROOTS[name]))


def missing_data(name: str, root: str | Path | None = None) -> str | None:
    """Why dataset ``name`` cannot be loaded here (its IDX folder or one of its files is missing, with the remedy),
    or ``None`` when it can — without reading anything.  Datasets of the other kinds are always available."""
    if DATASETS[name].kind != "idx":
        return None
    folder = idx_root(name, root)
    where = folder if folder.is_absolute() else f"{folder} ({folder.absolute()})"
    if not folder.is_dir():
        return f"dataset {name!r}: IDX directory {where} does not exist; {HOW_TO_GET[name]}"
    for stem in IDX_FILES:
        if not any((folder / f"{stem}{suffix}").is_file() for suffix in ("", ".gz")):
            return f"dataset {name!r}: {where} has no IDX file {stem}[.gz]; {HOW_TO_GET[name]}"
    return None

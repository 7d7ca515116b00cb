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

from dataclasses import dataclass

__all__ = ["DatasetSpec", "DATASETS", "KINDS", "dataset_shapes"]

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

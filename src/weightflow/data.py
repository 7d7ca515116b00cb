"""Datasets: seeded train/val/test splits as tensors.

``load_dataset(name, seed=..., root=...)`` returns a :class:`Dataset` with ``x_*`` float32 ``[n, num_features]``
and ``y_*`` int64 ``[n]``.  The names, their loader kinds and shapes are those of the one registry,
:data:`weightflow.dataset_registry.DATASETS` (torch-free, shared with :mod:`weightflow.config` and the schema):

* ``breast_cancer``, ``digits``, ``wine``, ``iris`` — scikit-learn's bundled copies (no download), split
  stratified and seeded into train/val/test; every feature standardized with the training split's mean and std.
* ``digits28`` — an offline stand-in for MNIST with its input and output shapes (784 features, 10 classes):
  scikit-learn's bundled 8×8 digits scaled to [0, 1] (``/16``) and upsampled to 28×28 by bilinear interpolation
  (:func:`upsample_images`, ``align_corners=False``), split stratified and seeded like the other scikit-learn sets,
  then standardized with ONE mean and std of the training split's pixels, like the IDX sets.  1797 images only
  (1077 / 360 / 360): the same architecture and pipeline as MNIST, not its difficulty.
* ``mnist``, ``fashion_mnist`` — IDX files (``*-images-idx3-ubyte[.gz]``, ``*-labels-idx1-ubyte[.gz]``) read from
  ``root``; the official test set is the test split, a seeded part of the training set the validation split.
  Pixels scaled to [0, 1], then standardized with one mean and std from the training split.
  Default roots: ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``) for Fashion-MNIST,
  ``data/mnist`` for MNIST (no Debian package ships it: put the four files there, or set ``data_root`` or
  ``WEIGHTFLOW_MNIST_ROOT``); a missing folder or file raises ``FileNotFoundError`` naming it and the remedy.
  Experiments written for ``digits28`` run on MNIST by setting ``dataset: mnist`` (same layer sizes).
* ``gaussian`` — no data: the toy target N(1, I) over weights used by the Gaussian sanity experiment;
  all splits are empty and ``weight_target`` holds the target's mean and std.
"""

from __future__ import annotations

import dataclasses
import gzip
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from weightflow.dataset_registry import DATASETS as REGISTRY
from weightflow.dataset_registry import DEFAULT_ROOTS, idx_root, missing_data

__all__ = ["Dataset", "DATASETS", "REGISTRY", "load_dataset", "load_experiment_data", "read_idx", "upsample_images",
           "DEFAULT_ROOTS"]

DATASETS = tuple(REGISTRY)  # every dataset name (weightflow.dataset_registry.DATASETS holds kinds and shapes)

@dataclass
class Dataset:
    """Train/val/test splits of one dataset.  ``x_*``: float32 ``[n, num_features]``; ``y_*``: int64 ``[n]``."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    num_features: int
    num_classes: int
    weight_target: dict[str, float] = field(default_factory=dict)

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        """``(x, y)`` of split ``'train'``, ``'val'`` or ``'test'``."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; use 'train', 'val' or 'test'")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def to(self, device: torch.device | str) -> "Dataset":
        moved = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()}
        return Dataset(**moved)


def _standardize(train: np.ndarray, *others: np.ndarray, per_feature: bool = True) -> list[np.ndarray]:
    """Standardize with the training split's statistics only (constant features get std 1)."""
    axis = 0 if per_feature else None
    mean, std = train.mean(axis=axis), train.std(axis=axis)
    std = np.where(std > 1e-8, std, 1.0)
    return [((a - mean) / std).astype(np.float32) for a in (train, *others)]


def _standardize_pixels(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """``(p / 255 − mean) / std`` of uint8 pixels with ONE mean and std of the training split's scaled pixels.

    The same numbers as :func:`_standardize` ``(per_feature=False)`` on ``p / 255`` (up to float64 rounding of the
    statistics), computed exactly from the 256-bin histogram of the training pixels and applied as a lookup table:
    a second for the 47M pixels of Fashion-MNIST instead of seven."""
    values = np.arange(256, dtype=np.float64) / 255.0
    counts = np.bincount(train.ravel(), minlength=256).astype(np.float64)
    mean = float(counts @ values) / counts.sum()
    std = float(np.sqrt(counts @ (values - mean) ** 2 / counts.sum()))
    lut = ((values - mean) / (std if std > 1e-8 else 1.0)).astype(np.float32)
    return [lut[a] for a in (train, *others)]


def _tensors(name, xs, ys, num_classes) -> Dataset:
    (xtr, xva, xte), (ytr, yva, yte) = xs, ys
    t = lambda a, dt: torch.from_numpy(np.ascontiguousarray(a)).to(dt)  # noqa: E731
    return Dataset(
        name=name,
        x_train=t(xtr, torch.float32), y_train=t(ytr, torch.long),
        x_val=t(xva, torch.float32), y_val=t(yva, torch.long),
        x_test=t(xte, torch.float32), y_test=t(yte, torch.long),
        num_features=int(xtr.shape[1]), num_classes=int(num_classes),
    )


def _stratified_splits(x: np.ndarray, y: np.ndarray, seed: int, val_fraction: float, test_fraction: float):
    """Seeded stratified ``(x_train, x_val, x_test), (y_train, y_val, y_test)``."""
    from sklearn.model_selection import train_test_split

    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_fraction / (1.0 - test_fraction), random_state=seed + 1, stratify=y_rest
    )
    return (x_train, x_val, x_test), (y_train, y_val, y_test)


def _load_sklearn(name: str, seed: int, val_fraction: float, test_fraction: float) -> Dataset:
    from sklearn import datasets as skd

    bunch = getattr(skd, f"load_{name}")()
    x, y = bunch.data.astype(np.float64), bunch.target.astype(np.int64)
    xs, ys = _stratified_splits(x, y, seed, val_fraction, test_fraction)
    return _tensors(name, _standardize(*xs), ys, int(y.max()) + 1)


def upsample_images(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of ``images [n, h, w]`` to ``[n, size, size]`` (float64).

    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``: output pixel ``i`` (centre
    ``i + 1/2``) samples the input at ``(i + 1/2) · h / size − 1/2`` in input pixel-centre coordinates (clamped to
    the image), interpolating linearly between the two nearest pixel centres along each axis."""
    t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float64)).unsqueeze(1)
    out = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return out.squeeze(1).numpy()


def _load_digits28(seed: int, val_fraction: float, test_fraction: float) -> Dataset:
    from sklearn import datasets as skd

    bunch = skd.load_digits()
    images = bunch.images.astype(np.float64) / 16.0  # [1797, 8, 8] in [0, 1]
    x = upsample_images(images, 28).reshape(len(images), 28 * 28)
    y = bunch.target.astype(np.int64)
    xs, ys = _stratified_splits(x, y, seed, val_fraction, test_fraction)
    return _tensors("digits28", _standardize(*xs, per_feature=False), ys, 10)


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (raw or ``.gz``) into a numpy array of its stored shape (uint8 data)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but the file holds {data.size} values")
    return data.reshape(dims)


def _find_idx(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{root}: missing IDX file {stem}[.gz]")


def _load_idx(name: str, root: str | Path | None, seed: int, val_fraction: float) -> Dataset:
    reason = missing_data(name, root)
    if reason is not None:
        raise FileNotFoundError(reason)
    root = idx_root(name, root)
    x_tr = read_idx(_find_idx(root, "train-images-idx3-ubyte"))
    y_tr = read_idx(_find_idx(root, "train-labels-idx1-ubyte"))
    x_te = read_idx(_find_idx(root, "t10k-images-idx3-ubyte"))
    y_te = read_idx(_find_idx(root, "t10k-labels-idx1-ubyte"))
    x_tr, x_te = x_tr.reshape(len(x_tr), -1), x_te.reshape(len(x_te), -1)
    perm = np.random.default_rng(seed).permutation(len(x_tr))
    n_val = int(round(val_fraction * len(x_tr)))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    xs = _standardize_pixels(x_tr[train_idx], x_tr[val_idx], x_te)
    ys = (y_tr[train_idx].astype(np.int64), y_tr[val_idx].astype(np.int64), y_te.astype(np.int64))
    return _tensors(name, xs, ys, 10)


def _gaussian_target(mean: float = 1.0, std: float = 1.0) -> Dataset:
    empty_x, empty_y = torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return Dataset("gaussian", empty_x, empty_y, empty_x, empty_y, empty_x, empty_y, 0, 0,
                   weight_target={"mean": mean, "std": std})


def load_dataset(
    name: str,
    *,
    seed: int = 0,
    root: str | Path | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`) with seeded splits; see the module docstring."""
    if name not in REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if not (0.0 < val_fraction < 1.0 and 0.0 < test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
        raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in (0, 1) with sum < 1")
    kind = REGISTRY[name].kind
    if kind == "sklearn":
        data = _load_sklearn(name, seed, val_fraction, test_fraction)
    elif kind == "digits28":
        data = _load_digits28(seed, val_fraction, test_fraction)
    elif kind == "idx":
        data = _load_idx(name, root, seed, val_fraction)
    else:
        return _gaussian_target()
    spec = REGISTRY[name]
    if (data.num_features, data.num_classes) != (spec.num_features, spec.num_classes):
        raise ValueError(f"dataset {name!r}: loaded {data.num_features} features and {data.num_classes} classes, the "
                         f"registry (weightflow.dataset_registry) says {spec.num_features} and {spec.num_classes}")
    return data


def subset_splits(data: Dataset, max_examples: int, seed: int) -> Dataset:
    """``data`` with at most ``max_examples`` examples in each split: a seeded random subset of each, in the
    original order (standardization keeps the full training split's statistics)."""
    out = {}
    for split in ("train", "val", "test"):
        x, y = data.split(split)
        if len(y) > max_examples:
            keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + 7919))[:max_examples].sort().values
            x, y = x[keep], y[keep]
        out[f"x_{split}"], out[f"y_{split}"] = x, y
    return dataclasses.replace(data, **out)


def load_experiment_data(cfg: dict) -> Dataset:
    """The dataset of an experiment config (its ``dataset``, ``seed``, ``data_root``, split fractions and
    ``max_examples``)."""
    data = load_dataset(
        cfg["dataset"],
        seed=cfg.get("seed", 0),
        root=cfg.get("data_root"),
        val_fraction=cfg.get("val_fraction", 0.2),
        test_fraction=cfg.get("test_fraction", 0.2),
    )
    if cfg.get("max_examples") is not None and not data.weight_target:
        data = subset_splits(data, int(cfg["max_examples"]), cfg.get("seed", 0))
    return data

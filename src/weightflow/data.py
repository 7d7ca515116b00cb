"""Datasets: seeded train/val/test splits as tensors.

``load_dataset(name, seed=..., root=...)`` returns a :class:`Dataset` with ``x_*`` float32 ``[n, num_features]``
and ``y_*`` int64 ``[n]``.  Names:

* ``breast_cancer``, ``digits``, ``wine``, ``iris`` — scikit-learn's bundled copies (no download), split
  stratified and seeded into train/val/test; every feature standardized with the training split's mean and std.
* ``mnist``, ``fashion_mnist`` — IDX files (``*-images-idx3-ubyte[.gz]``, ``*-labels-idx1-ubyte[.gz]``) read from
  ``root``; the official test set is the test split, a seeded part of the training set the validation split.
  Pixels scaled to [0, 1], then standardized with one mean and std from the training split.
  Default root for ``fashion_mnist``: ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``).
* ``gaussian`` — no data: the toy target N(1, I) over weights used by the Gaussian sanity experiment;
  all splits are empty and ``weight_target`` holds the target's mean and std.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["Dataset", "DATASETS", "load_dataset", "load_experiment_data", "read_idx", "DEFAULT_ROOTS"]

SKLEARN_DATASETS = ("breast_cancer", "digits", "wine", "iris")
IDX_DATASETS = ("mnist", "fashion_mnist")
DATASETS = SKLEARN_DATASETS + IDX_DATASETS + ("gaussian",)

DEFAULT_ROOTS = {
    "fashion_mnist": "/usr/share/datasets/fashion-mnist",
    "mnist": "data/mnist",
}
HOW_TO_GET = {
    "fashion_mnist": "install Debian's package 'dataset-fashion-mnist' (apt-get install dataset-fashion-mnist) "
    "or point `root` at a folder with the four Fashion-MNIST IDX files",
    "mnist": "put the four MNIST IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
    "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) in that folder or set `root`",
}


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


def _load_sklearn(name: str, seed: int, val_fraction: float, test_fraction: float) -> Dataset:
    from sklearn import datasets as skd
    from sklearn.model_selection import train_test_split

    bunch = getattr(skd, f"load_{name}")()
    x, y = bunch.data.astype(np.float64), bunch.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_fraction / (1.0 - test_fraction), random_state=seed + 1, stratify=y_rest
    )
    xs = _standardize(x_train, x_val, x_test)
    return _tensors(name, xs, (y_train, y_val, y_test), int(y.max()) + 1)


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
    root = Path(root or os.environ.get(f"WEIGHTFLOW_{name.upper()}_ROOT", DEFAULT_ROOTS[name]))
    if not root.is_dir():
        raise FileNotFoundError(f"dataset {name!r}: IDX directory {root} does not exist; {HOW_TO_GET[name]}")
    try:
        x_tr = read_idx(_find_idx(root, "train-images-idx3-ubyte"))
        y_tr = read_idx(_find_idx(root, "train-labels-idx1-ubyte"))
        x_te = read_idx(_find_idx(root, "t10k-images-idx3-ubyte"))
        y_te = read_idx(_find_idx(root, "t10k-labels-idx1-ubyte"))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"dataset {name!r}: {exc}; {HOW_TO_GET[name]}") from exc
    x_tr = x_tr.reshape(len(x_tr), -1).astype(np.float64) / 255.0
    x_te = x_te.reshape(len(x_te), -1).astype(np.float64) / 255.0
    perm = np.random.default_rng(seed).permutation(len(x_tr))
    n_val = int(round(val_fraction * len(x_tr)))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    xs = _standardize(x_tr[train_idx], x_tr[val_idx], x_te, per_feature=False)
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
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if not (0.0 < val_fraction < 1.0 and 0.0 < test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
        raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in (0, 1) with sum < 1")
    if name in SKLEARN_DATASETS:
        return _load_sklearn(name, seed, val_fraction, test_fraction)
    if name in IDX_DATASETS:
        return _load_idx(name, root, seed, val_fraction)
    return _gaussian_target()


def load_experiment_data(cfg: dict) -> Dataset:
    """The dataset of an experiment config (its ``dataset``, ``seed``, ``data_root`` and split fractions)."""
    return load_dataset(
        cfg["dataset"],
        seed=cfg.get("seed", 0),
        root=cfg.get("data_root"),
        val_fraction=cfg.get("val_fraction", 0.2),
        test_fraction=cfg.get("test_fraction", 0.2),
    )

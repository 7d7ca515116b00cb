"""Datasets: shapes, seeded splits, standardization fit on the training split only, IDX reading."""

import gzip

import numpy as np
import pytest
import torch

from weightflow.data import DEFAULT_ROOTS, load_dataset, read_idx


@pytest.mark.parametrize("name,features,classes", [("breast_cancer", 30, 2), ("digits", 64, 10), ("wine", 13, 3),
                                                   ("iris", 4, 3)])
def test_sklearn_datasets(name, features, classes):
    d = load_dataset(name, seed=0)
    assert (d.num_features, d.num_classes) == (features, classes)
    for split in ("train", "val", "test"):
        x, y = d.split(split)
        assert x.dtype == torch.float32 and y.dtype == torch.long and x.shape[1] == features
        assert set(y.unique().tolist()) == set(range(classes))
    # standardization statistics come from the training split only
    assert torch.allclose(d.x_train.mean(0), torch.zeros(features), atol=1e-5)
    assert not torch.allclose(d.x_test.mean(0), torch.zeros(features), atol=1e-3)
    n = len(d.y_train) + len(d.y_val) + len(d.y_test)
    assert abs(len(d.y_test) / n - 0.2) < 0.02


def test_splits_are_seeded():
    a, b, c = load_dataset("wine", seed=0), load_dataset("wine", seed=0), load_dataset("wine", seed=1)
    assert torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, c.x_train)


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_idx_reader_and_mnist_from_root(tmp_path):
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (50, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte", rng.integers(0, 10, 50))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (20, 28, 28)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 20))
    assert read_idx(tmp_path / "train-images-idx3-ubyte.gz").shape == (50, 28, 28)
    d = load_dataset("mnist", root=tmp_path, val_fraction=0.2)
    assert d.x_train.shape == (40, 784) and d.x_val.shape == (10, 784) and d.x_test.shape == (20, 784)
    assert abs(float(d.x_train.mean())) < 1e-5


def test_missing_idx_directory_names_path_and_remedy(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*dataset-fashion-mnist"):
        load_dataset("fashion_mnist", root=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="t10k-images"):
        (tmp_path / "partial").mkdir()
        load_dataset("mnist", root=tmp_path / "partial")


@pytest.mark.skipif(not (DEFAULT_ROOTS["fashion_mnist"] and __import__("os").path.isdir(DEFAULT_ROOTS["fashion_mnist"])),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_default_root():
    d = load_dataset("fashion_mnist")
    assert d.x_test.shape == (10000, 784) and d.num_classes == 10


def test_gaussian_target_and_unknown_name():
    g = load_dataset("gaussian")
    assert g.weight_target == {"mean": 1.0, "std": 1.0} and len(g.y_train) == 0
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")

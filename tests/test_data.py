"""Datasets: shapes, seeded splits, standardization fit on the training split only, IDX reading, digits28, the registry."""

import gzip

import numpy as np
import pytest
import torch

from weightflow.data import DEFAULT_ROOTS, load_dataset, read_idx, upsample_images


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


def _bilinear_reference(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear interpolant of ``image`` (pixel centres at integer coordinates, clamped at the border) evaluated at
    the centres of a ``size × size`` grid covering the same square (align_corners=False)."""
    h = image.shape[0]
    coords = np.clip((np.arange(size) + 0.5) * h / size - 0.5, 0, h - 1)
    lo = np.floor(coords).astype(int)
    hi = np.minimum(lo + 1, h - 1)
    frac = coords - lo
    out = np.empty((size, size))
    for i in range(size):
        for j in range(size):
            top = (1 - frac[j]) * image[lo[i], lo[j]] + frac[j] * image[lo[i], hi[j]]
            bottom = (1 - frac[j]) * image[hi[i], lo[j]] + frac[j] * image[hi[i], hi[j]]
            out[i, j] = (1 - frac[i]) * top + frac[i] * bottom
    return out


def test_upsample_images_is_bilinear_at_the_pixel_centres():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (3, 8, 8))
    up = upsample_images(images, 28)
    assert up.shape == (3, 28, 28)
    for image, got in zip(images, up):
        assert np.abs(got - _bilinear_reference(image, 28)).max() < 1e-12
    assert np.allclose(upsample_images(np.ones((1, 8, 8)), 28), 1.0)  # constants stay constant


def test_digits28_shape_splits_and_standardization_from_train_only():
    from sklearn.datasets import load_digits

    d = load_dataset("digits28", seed=0)
    assert (d.num_features, d.num_classes) == (784, 10)
    n = len(d.y_train) + len(d.y_val) + len(d.y_test)
    assert n == 1797 and abs(len(d.y_test) / n - 0.2) < 0.01 and abs(len(d.y_val) / n - 0.2) < 0.01
    for split in ("train", "val", "test"):
        x, y = d.split(split)
        assert x.dtype == torch.float32 and x.shape[1] == 784 and set(y.unique().tolist()) == set(range(10))
    # ONE mean and std, of the training split's pixels (like the IDX sets), not per pixel
    assert abs(float(d.x_train.double().mean())) < 1e-6 and abs(float(d.x_train.double().std()) - 1) < 1e-3
    assert not torch.allclose(d.x_train.mean(0), torch.zeros(784), atol=1e-3)  # per-pixel means are not removed
    assert abs(float(d.x_test.double().mean())) > 1e-4  # the test split is not standardized on itself
    # each image is the standardized bilinear upsampling of one 8x8 digit (/16): undo the affine map and compare
    raw = upsample_images(load_digits().images / 16.0, 28).reshape(1797, 784)
    image = d.x_train[0].double().numpy()
    match = np.argmin(np.abs(np.corrcoef(raw, image[None])[-1, :-1] - 1))
    slope, intercept = np.polyfit(raw[match], image, 1)
    assert np.abs(slope * raw[match] + intercept - image).max() < 1e-4 and slope > 0
    assert torch.equal(load_dataset("digits28", seed=0).x_train, d.x_train)
    assert not torch.equal(load_dataset("digits28", seed=1).x_train, d.x_train)


def test_mnist_without_files_names_the_folder_and_the_remedy(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"mnist.*nowhere.*data_root.*digits28"):
        load_dataset("mnist", root=tmp_path / "nowhere")


def test_one_registry_for_dataset_names_and_shapes():
    """The schema's dataset enum, weightflow.data and weightflow.config all take their names from the registry."""
    from pathlib import Path

    import yaml

    from weightflow.config import DATASET_SHAPES
    from weightflow.data import DATASETS
    from weightflow.dataset_registry import DATASETS as REGISTRY

    schema = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "schema.yaml").read_text())
    assert schema["$defs"]["experiment"]["properties"]["dataset"]["enum"] == list(REGISTRY)
    assert DATASETS == tuple(REGISTRY)
    assert DATASET_SHAPES == {name: (s.num_features, s.num_classes) for name, s in REGISTRY.items()
                              if s.kind != "weight_target"}
    for name, spec in REGISTRY.items():  # every dataset that needs no files loads with the registry's shape
        if spec.kind in ("sklearn", "digits28"):
            d = load_dataset(name)
            assert (d.num_features, d.num_classes) == (spec.num_features, spec.num_classes)

"""The weights file format: round trip, deterministic bytes, safe loading, clear errors."""

import pickle

import pytest
import torch

from weightflow.io import WeightsFile, WeightsFileError, load_weights, save_weights


def _wf(n=4, sizes=(4, 6, 3)):
    d = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    return WeightsFile(torch.randn(n, d), sizes, columns={"run": torch.arange(n), "loss": torch.rand(n)},
                       extras={"perm.0": torch.stack([torch.randperm(6) for _ in range(n)])},
                       metadata={"dataset": "iris", "seed": 3})


def test_roundtrip(tmp_path):
    wf = _wf()
    save_weights(tmp_path / "w.pt", wf)
    back = load_weights(tmp_path / "w.pt", layer_sizes=[4, 6, 3])
    assert torch.equal(back.weights, wf.weights) and back.layer_sizes == (4, 6, 3)
    assert back.columns.keys() == wf.columns.keys() and torch.equal(back.extras["perm.0"], wf.extras["perm.0"])
    assert back.metadata == {"dataset": "iris", "seed": 3}
    assert list(back.frame().columns) == ["loss", "run"] and len(back.select([0, 2])) == 2


def test_same_content_same_bytes(tmp_path):
    wf = _wf()
    save_weights(tmp_path / "w.pt", wf)
    first = (tmp_path / "w.pt").read_bytes()
    save_weights(tmp_path / "w.pt", wf)
    assert (tmp_path / "w.pt").read_bytes() == first


def test_errors_name_file_and_field(tmp_path):
    save_weights(tmp_path / "w.pt", _wf())
    with pytest.raises(WeightsFileError, match=r"w\.pt.*layer_sizes"):
        load_weights(tmp_path / "w.pt", layer_sizes=[4, 5, 3])
    with pytest.raises(WeightsFileError, match="no such weights file"):
        load_weights(tmp_path / "missing.pt")
    torch.save({"format": "weightflow-weights", "format_version": 1, "weights": torch.zeros(2, 5)}, tmp_path / "bad.pt")
    with pytest.raises(WeightsFileError, match=r"bad\.pt.*'layer_sizes' is missing"):
        load_weights(tmp_path / "bad.pt")
    with pytest.raises(WeightsFileError, match="rows"):
        WeightsFile(torch.zeros(3, 51), (4, 6, 3), columns={"run": torch.arange(2)})


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_arbitrary_objects_are_not_unpickled(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"format": "weightflow-weights", "x": _Evil()}, fh)
    with pytest.raises(WeightsFileError, match="not a readable weights file"):
        load_weights(path)

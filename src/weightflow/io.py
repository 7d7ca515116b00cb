"""The weights file format: ``N`` networks of one architecture, with per-row columns and metadata.

A weights file is written with :func:`torch.save` and holds a plain dict of tensors, strings and ints only,
so :func:`load_weights` reads it with ``torch.load(..., weights_only=True)`` (nothing is unpickled)::

    {
      "format": "weightflow-weights",        # str
      "format_version": 1,                   # int
      "weights": Tensor [N, D] float32,      # flat layout, see weightflow.weights
      "layer_sizes": Tensor [L+1] int64,
      "columns": {name: Tensor [N]},         # per-row values, e.g. run, step, epoch, train_loss, val_loss
      "extras": {name: Tensor [N, ...]},     # per-row arrays, e.g. permutations, removed scale factors
      "metadata": str,                       # JSON: dataset, seed, config hash, package version, ...
    }

From a notebook::

    from weightflow.io import load_weights
    wf = load_weights("results/breast_cancer/ensemble/weights.pt")
    wf.weights            # [N, D]
    wf.frame()            # pandas DataFrame of the columns
    wf.metadata["dataset"]
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch
from torch import Tensor

from weightflow.weights import MLPLayout, as_layout

__all__ = ["WeightsFile", "WeightsFileError", "save_weights", "load_weights", "read_payload", "FORMAT_VERSION"]

FORMAT = "weightflow-weights"
FORMAT_VERSION = 1


class WeightsFileError(ValueError):
    """A weights file is missing, malformed, or does not match what the caller needs (message names the file)."""


@dataclass
class WeightsFile:
    """``N`` networks in the flat layout plus per-row columns, per-row extras and JSON metadata."""

    weights: Tensor
    layer_sizes: tuple[int, ...]
    columns: dict[str, Tensor] = field(default_factory=dict)
    extras: dict[str, Tensor] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.layer_sizes = tuple(int(n) for n in self.layer_sizes)
        layout = as_layout(self.layer_sizes)
        if self.weights.ndim != 2 or self.weights.shape[1] != layout.dim:
            raise WeightsFileError(
                f"weights must be [N, D={layout.dim}] for layer_sizes {list(self.layer_sizes)}, "
                f"got {list(self.weights.shape)}"
            )
        n = self.weights.shape[0]
        for kind, table in (("column", self.columns), ("extra", self.extras)):
            for name, value in table.items():
                if not isinstance(value, Tensor) or value.ndim < 1 or value.shape[0] != n:
                    shape = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
                    raise WeightsFileError(f"{kind} '{name}' must be a tensor with {n} rows, got {shape}")

    @property
    def layout(self) -> MLPLayout:
        return as_layout(self.layer_sizes)

    def __len__(self) -> int:
        return self.weights.shape[0]

    def select(self, index: Tensor | Sequence[int]) -> "WeightsFile":
        """Rows ``index`` (long indices or a bool mask) of weights, columns and extras."""
        index = torch.as_tensor(index)
        return WeightsFile(
            weights=self.weights[index],
            layer_sizes=self.layer_sizes,
            columns={k: v[index] for k, v in self.columns.items()},
            extras={k: v[index] for k, v in self.extras.items()},
            metadata=dict(self.metadata),
        )

    def frame(self) -> pd.DataFrame:
        """The per-row columns as a DataFrame (one row per network)."""
        return pd.DataFrame({k: v.numpy() for k, v in self.columns.items()})


def save_weights(path: str | Path, wf: WeightsFile) -> None:
    """Write ``wf`` to ``path`` (parent folders are created).  Deterministic: same content, same bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "weights": wf.weights.detach().to("cpu", torch.float32).contiguous(),
        "layer_sizes": torch.tensor(wf.layer_sizes, dtype=torch.long),
        "columns": {k: v.detach().cpu().contiguous() for k, v in sorted(wf.columns.items())},
        "extras": {k: v.detach().cpu().contiguous() for k, v in sorted(wf.extras.items())},
        "metadata": json.dumps(wf.metadata, sort_keys=True, default=str),
    }
    torch.save(payload, path)


def read_payload(path: Path, fmt: str, version: int, keys: Sequence[str], error: type[Exception],
                 what: str) -> Mapping:
    """Load a weightflow file's dict with ``torch.load(weights_only=True)`` and check its header and fields.

    Raises ``error`` naming ``path`` and the field when the file is missing, unreadable, of another ``format``
    or ``format_version``, or lacks one of ``keys``."""
    if not path.is_file():
        raise error(f"{path}: no such {what}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise error(f"{path}: not a readable {what} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, Mapping) or payload.get("format") != fmt:
        raise error(f"{path}: field 'format' is not '{fmt}'")
    if payload.get("format_version") != version:
        raise error(f"{path}: field 'format_version' is {payload.get('format_version')!r}, this weightflow reads {version}")
    for key in keys:
        if key not in payload:
            raise error(f"{path}: field '{key}' is missing")
    return payload


def load_weights(path: str | Path, *, layer_sizes: Sequence[int] | None = None) -> WeightsFile:
    """Read a weights file safely (``weights_only=True``) and validate it.

    Args:
        layer_sizes: if given, the file must hold networks of exactly this architecture.

    Raises:
        WeightsFileError: naming ``path`` and the offending field.
    """
    path = Path(path)
    payload = read_payload(path, FORMAT, FORMAT_VERSION, ("weights", "layer_sizes", "columns", "extras", "metadata"),
                           WeightsFileError, "weights file")
    try:
        wf = WeightsFile(
            weights=payload["weights"],
            layer_sizes=tuple(payload["layer_sizes"].tolist()),
            columns=dict(payload["columns"]),
            extras=dict(payload["extras"]),
            metadata=json.loads(payload["metadata"]),
        )
    except (WeightsFileError, ValueError, TypeError, AttributeError) as exc:
        raise WeightsFileError(f"{path}: {exc}") from exc
    if layer_sizes is not None and tuple(layer_sizes) != wf.layer_sizes:
        raise WeightsFileError(
            f"{path}: field 'layer_sizes' is {list(wf.layer_sizes)}, expected {list(layer_sizes)}"
        )
    return wf

"""Small shared helpers: devices, seeds, progress bars, hashing."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import fields
from typing import Any, Iterable, TypeVar

import torch
from tqdm.auto import tqdm

__all__ = ["resolve_device", "derive_seed", "generator", "progress", "config_hash", "from_section"]

T = TypeVar("T")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``'auto'`` → CUDA when available, else CPU; otherwise ``torch.device(name)`` (errors if CUDA is absent)."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use device: auto or cpu")
    return device


def derive_seed(seed: int, *keys: Any) -> int:
    """A 63-bit seed derived from ``seed`` and any keys (stage names, run indices) — stable across processes."""
    text = json.dumps([int(seed), *[str(k) for k in keys]])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, *keys: Any, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` seeded with :func:`derive_seed` ``(seed, *keys)``."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, *keys))


def progress(iterable: Iterable[T] | None = None, **kwargs: Any) -> tqdm:
    """A tqdm progress bar with pipeline defaults (updates at most every 2 s; off when WEIGHTFLOW_PROGRESS=0)."""
    kwargs.setdefault("mininterval", 2.0)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("disable", os.environ.get("WEIGHTFLOW_PROGRESS", "1") == "0")
    return tqdm(iterable, **kwargs)


def config_hash(cfg: Any) -> str:
    """A short stable hash of a JSON-able config (sorted keys)."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def from_section(cls: type[T], section: dict[str, Any], name: str) -> T:
    """The settings dataclass ``cls`` from config section ``name``; unknown keys are an error naming them."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"{name}: unknown setting(s) {unknown}; known: {sorted(known)}")
    return cls(**section)

"""Vector-field networks over MLP weights: ``build_model(name, layer_sizes, **options)``.

Every model is called as ``model(x [B, D], t [B]) -> [B, D]`` with ``x`` and the output in the flat layout of
:mod:`weightflow.weights`.  ``ngt`` (sparse relational transformer with edge updates), ``ngt_dense`` (its
all-pairs baseline) and ``pna`` read the networks as neural graphs and are equivariant to permutations of
hidden neurons; ``mlp`` is a flat, non-equivariant baseline.  No model mixes the networks of a batch.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import nn

from weightflow.models.mlp import FlatMLP
from weightflow.models.ngt import NGT
from weightflow.models.ngt_dense import DenseNGT
from weightflow.models.pna import PNA
from weightflow.utils import derive_seed
from weightflow.weights import MLPLayout

__all__ = ["MODELS", "build_model", "NGT", "DenseNGT", "PNA", "FlatMLP"]

log = logging.getLogger(__name__)

MODELS = {"ngt": NGT, "ngt_dense": DenseNGT, "pna": PNA, "mlp": FlatMLP}
# Options each model takes (the config section holds all of them; a model ignores the others).
_OPTIONS = {
    "ngt": ("width", "depth", "heads", "key_width", "edge_hidden", "time_size", "fourier_features", "fourier_scale",
            "dropout", "bf16", "affine_skip"),
    "pna": ("width", "depth", "time_size", "fourier_features", "fourier_scale", "dropout", "bf16", "affine_skip"),
    "mlp": ("width", "depth", "time_size", "dropout", "bf16", "time_shift"),
}
_OPTIONS["ngt_dense"] = _OPTIONS["ngt"]


def build_model(
    name: str,
    layer_sizes: Sequence[int] | MLPLayout,
    *,
    seed: int | None = None,
    compile: bool = False,
    **options,
) -> nn.Module:
    """A vector-field network for MLPs of ``layer_sizes``.

    Args:
        name: ``ngt``, ``ngt_dense``, ``pna`` or ``mlp``.
        seed: when given, the parameters (and random-Fourier frequencies) are drawn from a stream derived from
            it (:func:`weightflow.utils.derive_seed` ``(seed, "model", name)``), leaving the global RNG untouched.
        compile: ``model.compile()`` (``torch.compile``; state-dict keys are unchanged).  The sparse NG-T compiles
            its blocks' plain-autograd path for training only (:meth:`weightflow.models.ngt.NGT.compile`: on CPU
            0.7–0.8× the eager step time after about 40 CPU s of compilation); the other models compile ``forward``,
            whose compiled backward pass the likelihoods' vmapped vector-Jacobian products cannot run.
        **options: the ``model`` config section's fields — ``width, depth, heads, key_width, edge_hidden,
            time_size, fourier_features, fourier_scale, dropout, bf16, affine_skip, time_shift`` (each model uses those
            it has).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    known = set().union(*_OPTIONS.values())
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"build_model got unknown model options {sorted(unknown)}; known: {sorted(known)}")
    kwargs = {key: value for key, value in options.items() if key in _OPTIONS[name]}
    if seed is None:
        model = MODELS[name](layer_sizes, **kwargs)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "model", name))
            model = MODELS[name](layer_sizes, **kwargs)
    log.info("model %s for layer sizes %s: %d parameters", name, list(getattr(layer_sizes, "layer_sizes", layer_sizes)),
             sum(p.numel() for p in model.parameters()))
    if compile:
        model.compile()
    return model

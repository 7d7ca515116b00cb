"""Canonicalization of ReLU MLPs: removing the positive scaling symmetry (Pittorino et al., 2022).

For ReLU, ``relu(s z) = s relu(z)`` for ``s > 0``, so scaling a hidden neuron's incoming weights and bias by
``1/s`` and its outgoing weights by ``s`` leaves the network's function unchanged.  :func:`canonicalize` picks
one representative per orbit, layer by layer from the input:

1. hidden layer ``l`` (after the previous layer's scales were pushed into its columns): neuron ``k`` with
   incoming norm ``s_k = |W_l[k, :]|`` gets ``W_l[k, :] /= s_k``, ``b_l[k] /= s_k`` and
   ``W_{l+1}[:, k] *= s_k``;  the logits are unchanged;
2. last layer, by ``last_layer``:

   * ``'free'`` (function-preserving, the pipeline's default): ``(W_L, b_L)`` keep the pushed scales and stay
     Euclidean; the canonical network computes exactly the raw network's logits, so every probability-based
     metric (NLL, ECE, Brier, BMA, diversity) of a canonical network equals the raw network's;
   * ``'sphere'`` (the thesis' form): ``s_L = |W_L|_F / R`` and ``(W_L, b_L) /= s_L``, so ``|W_L|_F = R``
     (``last_radius``, default ``sqrt(C)``).  The logits are divided by the positive constant ``s_L``:
     predicted labels are unchanged but probabilities are tempered (on breast cancer the median ``s_L`` is
     0.36, so the canonical networks are markedly less confident than the raw ones).

The result lies on :class:`weightflow.manifold.ProductSpheres`.  The map is idempotent (all scales of a
canonical network are 1) and batched over networks; only the few layers are looped over.

Dead neurons.  A hidden neuron whose incoming norm is ``<= dead_tol`` outputs the constant ``relu(b_k)``.
It is made canonical exactly: its constant contribution ``W_{l+1}[:, k] relu(b_k)`` is folded into
``b_{l+1}``, its outgoing column is set to 0, its incoming weights to ``e_1 = (1, 0, ..., 0)`` and its bias to
0, and its scale is recorded as 0.  The function is unchanged (up to the ``<= dead_tol`` incoming weights).
In the sphere form, a network whose whole last layer has norm ``<= dead_tol`` computes constant logits ``b_L``;
no point of the manifold computes the same function, so it gets ``W_L = R e_1`` with ``b_L`` kept and ``s_L = 0``
recorded — the one case that changes the function (it never occurs in trained networks).  Nothing is ever divided by 0.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import torch
from torch import Tensor

from weightflow.io import WeightsFile, load_weights, save_weights
from weightflow.manifold import ProductSpheres
from weightflow.runner import StageJob
from weightflow.weights import MLPLayout, as_layout, flatten, unflatten

__all__ = ["canonicalize", "canonicalize_chunked", "scale_extras", "canonical_stage", "DEAD_TOL", "LAST_LAYER_FORMS"]

log = logging.getLogger(__name__)

DEAD_TOL = 1e-12
LAST_LAYER_FORMS = ProductSpheres.LAST_LAYER_FORMS


def _first_axis_like(w: Tensor) -> Tensor:
    e = torch.zeros_like(w)
    e[..., 0] = 1.0
    return e


def canonicalize(
    flat: Tensor,
    layer_sizes: Sequence[int] | MLPLayout,
    last_radius: float | None = None,
    *,
    dead_tol: float = DEAD_TOL,
    last_layer: str = "sphere",
) -> tuple[Tensor, list[Tensor]]:
    """Canonical representatives of ``flat [B, D]`` and the scale factors removed.

    Args:
        last_radius: Frobenius norm ``R`` of the canonical last layer (``None`` = ``sqrt(C)``).
        dead_tol: hidden neurons (or a last layer) with incoming norm ``<= dead_tol`` are dead (module docstring).
        last_layer: ``'free'`` (function-preserving) or ``'sphere'`` (``|W_L|_F = R``).

    Returns:
        ``(canonical [B, D], scales)`` with ``scales[l]`` of shape ``[B, n_l]`` for hidden layer ``l``
        (``s_k``, 0 for dead neurons) and ``[B, 1]`` for the last layer (``s_L``; 1 in the free form).  For a
        network with ``s_L > 0``: ``forward(canonical) = forward(flat) / s_L``.
    """
    if last_layer not in LAST_LAYER_FORMS:
        raise ValueError(f"canonical.last_layer: unknown form {last_layer!r}; use one of {LAST_LAYER_FORMS}")
    layout = as_layout(layer_sizes)
    radius = math.sqrt(layout.num_classes) if last_radius is None else float(last_radius)
    if not radius > 0:
        raise ValueError(f"last_radius must be > 0, got {last_radius}")
    layers = [(w.clone(), b.clone()) for w, b in unflatten(flat, layout)]
    scales = []
    for l in range(layout.num_layers - 1):
        (w, b), (w_next, b_next) = layers[l], layers[l + 1]
        norm = w.norm(dim=-1)  # [B, n_l]
        dead = norm <= dead_tol
        # dead neurons: fold their constant output relu(b) into the next bias, then cut them off
        b_next = b_next + (w_next * (torch.relu(b) * dead).unsqueeze(-2)).sum(-1)
        scale = torch.where(dead, torch.zeros_like(norm), norm)
        w_next = w_next * scale.unsqueeze(-2)
        safe = torch.where(dead, torch.ones_like(norm), norm)
        w = torch.where(dead.unsqueeze(-1), _first_axis_like(w), w / safe.unsqueeze(-1))
        b = torch.where(dead, torch.zeros_like(b), b / safe)
        layers[l], layers[l + 1] = (w, b), (w_next, b_next)
        scales.append(scale)
    w, b = layers[-1]
    if last_layer == "free":
        scales.append(torch.ones_like(w[..., :1, 0]))
        return flatten(layers), scales
    norm = w.flatten(-2).norm(dim=-1, keepdim=True)  # [B, 1]
    dead = norm <= dead_tol
    scale = torch.where(dead, torch.zeros_like(norm), norm / radius)
    safe = torch.where(dead, torch.ones_like(norm), scale)
    e = _first_axis_like(w.flatten(-2)).unflatten(-1, w.shape[-2:])
    w = torch.where(dead.unsqueeze(-1), radius * e, w / safe.unsqueeze(-1))
    b = torch.where(dead, b, b / safe)
    layers[-1] = (w, b)
    scales.append(scale)
    return flatten(layers), scales


def canonicalize_chunked(flat: Tensor, layer_sizes: Sequence[int] | MLPLayout, last_radius: float | None = None, *,
                         chunk_size: int = 4096, **options) -> tuple[Tensor, list[Tensor]]:
    """:func:`canonicalize` of ``flat [N, D]`` ``chunk_size`` rows at a time, into preallocated outputs: the same
    result (the map is per row) with memory bounded by one chunk's intermediates, not ``N``'s (37,550 Fashion-MNIST
    snapshots peaked at 7.6 GiB unchunked)."""
    out = torch.empty_like(flat)
    scales: list[Tensor] | None = None
    for start in range(0, flat.shape[0], chunk_size):
        part, part_scales = canonicalize(flat[start:start + chunk_size], layer_sizes, last_radius, **options)
        out[start:start + chunk_size] = part
        if scales is None:
            scales = [s.new_empty(flat.shape[0], *s.shape[1:]) for s in part_scales]
        for whole, piece in zip(scales, part_scales):
            whole[start:start + chunk_size] = piece
    if scales is None:  # no rows
        _, scales = canonicalize(flat, layer_sizes, last_radius, **options)
    return out, scales


def scale_extras(scales: Sequence[Tensor]) -> dict[str, Tensor]:
    """Weights-file extras ``{'scale.{l}': scales[l]}`` (layer ``l`` 0-based; the last one is ``[N, 1]``)."""
    return {f"scale.{l}": s for l, s in enumerate(scales)}


def canonical_stage(job: StageJob) -> None:
    """Rule ``canonical``: canonicalize ``inputs['weights']`` into ``outputs['weights']`` in the form named by the
    ``{form}`` wildcard (``free`` or ``sphere``; ``canonical.last_radius`` and ``canonical.dead_tol`` from the config).

    Keeps the input's columns, extras and metadata; adds extras ``scale.{l}`` (the removed factors) and
    metadata ``canonical = {reference, last_layer, last_radius, dead_tol}``.
    """
    cfg = job.params["cfg"]
    opts = cfg["canonical"]
    form = job.wildcards.get("form", opts["last_layer"])
    wf = load_weights(job.inputs["weights"], layer_sizes=cfg["layer_sizes"])
    geometry = ProductSpheres(wf.layout, last_radius=opts["last_radius"], last_layer=form)
    canonical, scales = canonicalize_chunked(wf.weights, wf.layout, geometry.last_radius, dead_tol=opts["dead_tol"],
                                             last_layer=form)
    dead = sum(int((s == 0).sum()) for s in scales[:-1])
    log.info(
        "%d networks canonicalized (last layer %s%s): %d dead hidden neurons, %d dead last layers, "
        "largest norm deviation %.2e",
        len(wf), form, f", radius {geometry.last_radius:.4g}" if form == "sphere" else "", dead,
        int((scales[-1] == 0).sum()), float(geometry.norm_deviation(canonical).max()) if len(wf) else 0.0,
    )
    clash = sorted(set(wf.extras) & set(scale_extras(scales)))
    if clash:
        raise ValueError(f"{job.inputs['weights']}: extras {clash} already exist; is this file canonical already?")
    metadata = dict(wf.metadata)
    metadata["canonical"] = {
        "reference": job.wildcards.get("reference", "none"),
        "last_layer": form,
        "last_radius": geometry.last_radius if form == "sphere" else None,
        "dead_tol": opts["dead_tol"],
    }
    save_weights(
        job.output_path("weights"),
        WeightsFile(
            weights=canonical,
            layer_sizes=wf.layer_sizes,
            columns=dict(wf.columns),
            extras={**wf.extras, **scale_extras(scales)},
            metadata=metadata,
        ),
    )

"""A time-gated affine skip for vector fields over flat weights: ``s(x, t) = g(t) ⊙ x + c(t)``.

Why: when p0 and p1 are Gaussians with diagonal covariances, the exact flow-matching field (independent
coupling, path ``x_t = (1 − t) x0 + t x1``) is per-coordinate affine in ``x``::

    v*(x, t)_i = c_i(t) + g_i(t) x_i,   g_i(t) = (t σ1_i² − (1 − t) σ0_i²) / ((1 − t)² σ0_i² + t² σ1_i²)

(for N(0, I) → N(1, I): ``g(t) = (2t − 1)/((1 − t)² + t²)``, ``c(t) = 1 − t g(t)``), and an x1-predictor is
affine in the same way.  A network whose only time-dependent route to its output passes through ``x`` must
build ``c(t)`` from features of ``x`` — and the projection of ``x_t`` on the mean-transport direction (e.g. the
mean weight of a network, ``t + O(D^{-1/2})`` for N(0, I) → N(1, I)) is a sharper clock than its time
embedding.  Fitted as a function of that projection, ``c`` adds a spurious slope ``−t c'``-like term along the
direction and shrinks the samples' spread there (measured: per-network-mean std 0.48× the target's with the
flat MLP; ``benchmarks/flow_quality/gaussian_sanity.py``).  The skip gives ``c(t)`` and ``g(t)`` a route that
sees only ``t``, so the network models what is left.

``groups [D]`` ties the gains and shifts of coordinates: one group per coordinate (:meth:`per_coordinate`,
for non-equivariant models) or one per layer and kind — weights or biases of each affine layer —
(:meth:`per_layer`), which keeps a graph model equivariant to hidden-neuron permutations.  Both maps start at
zero, so the skip adds nothing at initialization.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from weightflow.models.embeddings import TimeEmbedding
from weightflow.weights import MLPLayout, as_layout

__all__ = ["AffineSkip", "layer_groups", "SkipField"]


def layer_groups(layout: MLPLayout) -> Tensor:
    """Long ``[D]``: ``2 l`` for the weights and ``2 l + 1`` for the biases of affine layer ``l``."""
    groups = torch.empty(layout.dim, dtype=torch.long)
    for l, (w_start, b_start, end) in enumerate(layout.offsets):
        groups[w_start:b_start] = 2 * l
        groups[b_start:end] = 2 * l + 1
    return groups


class AffineSkip(nn.Module):
    """``s(x, t) = g(t)[groups] ⊙ x + c(t)[groups]`` with ``(g, c) = Linear(TimeEmbedding(t))`` (zero-initialized).

    Args:
        groups: long ``[D]``, the group of every flat coordinate (values ``0 .. G − 1``).
        time_size: sinusoidal time features of the embedding.
        hidden: width of the time embedding's MLP.
    """

    def __init__(self, groups: Tensor, time_size: int = 16, hidden: int = 64) -> None:
        super().__init__()
        self.register_buffer("groups", groups.long().clone(), persistent=False)
        self.num_groups = int(groups.max()) + 1
        self.time = TimeEmbedding(time_size, hidden)
        self.out = nn.Linear(hidden, 2 * self.num_groups)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @classmethod
    def per_layer(cls, layout, **options) -> "AffineSkip":
        """One gain and shift per layer and kind (weights, biases): equivariant to hidden-neuron permutations."""
        return cls(layer_groups(as_layout(layout)), **options)

    @classmethod
    def per_coordinate(cls, layout, **options) -> "AffineSkip":
        """One gain and shift per flat coordinate."""
        return cls(torch.arange(as_layout(layout).dim), **options)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """``x [B, D]``, ``t [B]`` → ``[B, D]``."""
        gain, shift = self.out(self.time(t.to(x.dtype))).chunk(2, dim=-1)
        return gain[:, self.groups] * x + shift[:, self.groups]


class SkipField(nn.Module):
    """``field(x, t) + skip(x, t)``: a vector field with an :class:`AffineSkip` beside it (same interface)."""

    def __init__(self, field: nn.Module, skip: AffineSkip) -> None:
        super().__init__()
        self.field, self.skip = field, skip
        self.equivariant = getattr(field, "equivariant", False)

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        return self.field(x, t) + self.skip(x, t)

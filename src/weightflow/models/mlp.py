"""Flat-vector MLP baseline: the same ``model(x [B, D], t [B]) -> [B, D]`` interface, *not* permutation-equivariant."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from weightflow.models.base import check_inputs
from weightflow.models.blocks import FeedForward
from weightflow.models.embeddings import TimeEmbedding
from weightflow.weights import MLPLayout, as_layout

__all__ = ["FlatMLP"]


class FlatMLP(nn.Module):
    """``h = W_in x + τ``, ``τ = time(t)``; ``depth`` pre-norm residual blocks ``h ← h + FFN(LN h)``;
    output ``W_out LN(h) + g(τ) ⊙ x + c(τ)`` → ``[B, D]``.

    Beside the trunk, a time-gated per-coordinate affine skip ``g(τ) ⊙ x + c(τ)`` (``g`` and ``c`` linear in
    ``τ``, zero at initialization) — the exact form of the field between Gaussians with diagonal covariances
    (:mod:`weightflow.models.skip`); the trunk models the rest.

    * The gain ``g(τ) ⊙ x``: without it the trunk (``width`` < ``D``, e.g. 256 < 802) cannot pass ``x``
      through, yet the velocity toward a tight target must cancel each coordinate's prior noise (``u_t``
      contains ``−x0``; an x1-prediction likewise tends to ``x_t`` as ``t → 1``).  Measured on a target
      N(0.5, 0.03² I) over D = 802 with a width-64 trunk: samples spread 0.030 with it, 0.31 (the prior's)
      without (tests/test_flow_training.py).
    * The shift ``c(τ)``: a route for the time-dependent mean of the field that sees only ``t``.  Without it the
      trunk builds that mean from ``x``, whose projection on the transport direction is a sharper clock than
      the time embedding (for N(0, I) → N(1, I) over D = 802, the mean weight of ``x_t`` is ``t`` ± 0.03): the
      field then gets a spurious slope along that direction (−1.9 at t = 0.5, where the exact one is 0; the clock
      predicts −2.0) and the samples' per-network mean weights spread 0.47× the target's; with ``c(τ)``
      1.04–1.09× (500–2000 steps; ``benchmarks/flow_quality/gaussian_sanity.py``, ``gaussian_table.py``).
    """

    equivariant = False

    def __init__(
        self,
        layer_sizes: Sequence[int] | MLPLayout,
        *,
        width: int = 256,
        depth: int = 3,
        time_size: int = 64,
        dropout: float = 0.0,
        bf16: bool = False,
        time_shift: bool = True,
    ) -> None:
        super().__init__()
        self.dim = as_layout(layer_sizes).dim
        self.input = nn.Linear(self.dim, width)
        self.time = TimeEmbedding(time_size, width)
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(depth))
        self.blocks = nn.ModuleList(FeedForward(width, 2 * width) for _ in range(depth))
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, self.dim))
        self.skip = nn.Linear(width, self.dim)
        # created last: the other parameters' initial draws are unchanged (``time_shift=False``: the network as it
        # was before the shift, for before/after measurements)
        self.shift = nn.Linear(width, self.dim) if time_shift else None
        for layer in (self.skip, self.shift):
            if layer is not None:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        self.bf16 = bf16

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        x, t = check_inputs(x, t, self.dim)
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            tau = self.time(t)
            h = self.input(x) + tau
            for norm, block in zip(self.norms, self.blocks):
                h = h + self.dropout(block(norm(h)))
            out = self.output(h) + self.skip(tau) * x
            if self.shift is not None:
                out = out + self.shift(tau)
        return out.to(x.dtype)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # Files written before the shift existed hold no ``shift.*``: a zero shift is the same function.
        if self.shift is not None:
            for name, param in self.shift.named_parameters():
                state_dict.setdefault(f"{prefix}shift.{name}", torch.zeros_like(param))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

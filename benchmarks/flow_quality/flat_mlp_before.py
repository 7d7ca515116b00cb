"""The flat MLP vector field as it was before the time-only shift c(τ) (for before/after measurements)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from weightflow.models.base import check_inputs
from weightflow.models.blocks import FeedForward
from weightflow.models.embeddings import TimeEmbedding
from weightflow.weights import MLPLayout, as_layout

__all__ = ["FlatMLP"]


class FlatMLP(nn.Module):
    """``h = W_in x + τ``, ``τ = time(t)``; ``depth`` pre-norm residual blocks ``h ← h + FFN(LN h)``;
    output ``W_out LN(h) + g(τ) ⊙ x`` → ``[B, D]``.

    The gated skip ``g(τ) ⊙ x`` (``g`` linear, zero at initialization) gives every coordinate its own
    time-dependent gain on the input.  Without it the trunk (``width`` < ``D``, e.g. 256 < 802) cannot pass
    ``x`` through, yet the velocity toward a tight target must cancel each coordinate's prior noise (``u_t``
    contains ``−x0``; an x1-prediction likewise tends to ``x_t`` as ``t → 1``).  Measured on a target
    N(0.5, 0.03² I) over D = 802 with a width-64 trunk: samples spread 0.030 with the skip, 0.31 (the prior's)
    without (tests/test_flow_training.py).
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
        nn.init.zeros_(self.skip.weight)
        nn.init.zeros_(self.skip.bias)
        self.bf16 = bf16

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        x, t = check_inputs(x, t, self.dim)
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            tau = self.time(t)
            h = self.input(x) + tau
            for norm, block in zip(self.norms, self.blocks):
                h = h + self.dropout(block(norm(h)))
            out = self.output(h) + self.skip(tau) * x
        return out.to(x.dtype)

"""Common frame of the neural-graph vector fields: flat weights → graph states → processor → flat output."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from weightflow.graph import NeuralGraph
from weightflow.models.embeddings import GraphEncoder, GraphHead
from weightflow.models.skip import AffineSkip
from weightflow.weights import MLPLayout

__all__ = ["GraphVectorField", "check_inputs"]


def check_inputs(x: Tensor, t: Tensor | float, dim: int) -> tuple[Tensor, Tensor]:
    """Validate ``x [B, D]`` and broadcast ``t`` (a number, ``[]``, ``[B]`` or ``[B, 1]``) to ``[B]`` of ``x``'s dtype."""
    if x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(f"model input must have shape [B, {dim}] (flat layout), got {list(x.shape)}")
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(x.shape[0])
    if t.shape[0] != x.shape[0]:
        raise ValueError(f"t must be a scalar or have one entry per network ({x.shape[0]}), got {t.shape[0]}")
    return x, t


class GraphVectorField(nn.Module):
    """``model(x [B, D], t [B]) -> [B, D]`` through the neural graph of ``layer_sizes``.

    Subclasses take their processor's options (``depth``, ``heads``, ``dropout``) and hand the encoder's
    (``time_size``, ``fourier_features``, ``fourier_scale``, ``bf16``) to this constructor.
    Subclasses implement :meth:`process` on node states ``[B, N, d]`` and edge states ``[B, E, d]``.  Nothing
    mixes the networks of a batch, so every output row depends on its own input row only.  With ``bf16`` the
    processor runs under bfloat16 autocast (attention logits and softmax stay float32); the output has ``x``'s dtype.

    ``affine_skip`` (default) adds :class:`~weightflow.models.skip.AffineSkip` per layer — ``g_l(t) x + c_l(t)`` with
    one gain and shift per layer and kind (weights, biases), zero at initialization and equivariant: a route to the
    field's time-dependent affine part that does not pass through the graph.  Without it the NG-T's Gaussian sanity
    samples spread 0.75× the target's per-network mean; with it 0.985× (``benchmarks/flow_quality/gaussian_table.py``).
    """

    equivariant = True

    def __init__(
        self,
        layer_sizes: Sequence[int] | MLPLayout,
        *,
        width: int,
        time_size: int = 64,
        fourier_features: int = 0,
        fourier_scale: float = 1.0,
        bf16: bool = False,
        affine_skip: bool = True,
    ) -> None:
        super().__init__()
        self.graph = NeuralGraph(layer_sizes)
        self.encoder = GraphEncoder(self.graph, width, time_size, fourier_features, fourier_scale)
        self.head = GraphHead(self.graph, width)
        self.bf16 = bf16
        # created last: the other parameters' initial draws are unchanged
        self.skip = AffineSkip.per_layer(self.graph.layout, time_size=time_size, hidden=width) if affine_skip else None

    def process(self, nodes: Tensor, edges: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        x, t = check_inputs(x, t, self.graph.layout.dim)
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            nodes, edges = self.encoder(x, t)
            nodes, edges = self.process(nodes, edges)
            out = self.head(nodes, edges)
        out = out.to(x.dtype)
        return out if self.skip is None else out + self.skip(x, t)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # Files written before the skip existed hold no ``skip.*``: a zero skip is the same function.
        if self.skip is not None:
            for name, param in self.skip.named_parameters():
                state_dict.setdefault(f"{prefix}skip.{name}", torch.zeros_like(param))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

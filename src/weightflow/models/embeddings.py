"""Input and output maps of the graph vector fields: time embedding, scalar lifting, encoder, head.

Shapes: ``B`` networks, ``N`` nodes, ``E`` edges (one per weight), ``d`` state width, ``D`` flat dimension.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from weightflow.graph import NeuralGraph

__all__ = ["TimeEmbedding", "ScalarLift", "GraphEncoder", "GraphHead"]


class TimeEmbedding(nn.Module):
    """``t [B] -> [B, out]``: sinusoids of ``t`` at ``size // 2`` geometric frequencies in ``[1, 1000]``
    (``[sin(f t), cos(f t)]``), then a two-layer SiLU MLP."""

    def __init__(self, size: int, out: int) -> None:
        super().__init__()
        if size < 2 or size % 2:
            raise ValueError(f"time embedding size must be an even integer >= 2, got {size}")
        self.register_buffer("freqs", torch.logspace(0.0, 3.0, size // 2), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(size, out), nn.SiLU(), nn.Linear(out, out))

    def forward(self, t: Tensor) -> Tensor:
        angles = t.unsqueeze(-1) * self.freqs.to(t.dtype)
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=-1))


class ScalarLift(nn.Module):
    """Scalars ``[...]`` → states ``[..., d]``: a linear map of ``w`` or, with ``fourier_features = F > 0``, of the
    random-Fourier lifting ``[w, sin(2π f w), cos(2π f w)]`` with fixed frequencies ``f ~ N(0, scale²)``, ``[F]``."""

    def __init__(self, width: int, fourier_features: int = 0, fourier_scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * fourier_scale * torch.randn(fourier_features))
        self.linear = nn.Linear(1 + 2 * fourier_features, width)

    def forward(self, w: Tensor) -> Tensor:
        w = w.unsqueeze(-1)
        if self.freqs.numel():
            angles = w * self.freqs.to(w.dtype)
            w = torch.cat([w, angles.sin(), angles.cos()], dim=-1)
        return self.linear(w)


class GraphEncoder(nn.Module):
    """Flat weights and times → initial node and edge states.

    ``node = lift_b(bias) + pos[node_position] + time_node(t)`` ``[B, N, d]`` (learned vectors per input and
    output neuron, one per hidden layer) and ``edge = lift_w(weight) + layer_emb[edge_layer] + time_edge(t)``
    ``[B, E, d]`` (one vector per affine layer).
    """

    def __init__(
        self, graph: NeuralGraph, width: int, time_size: int, fourier_features: int = 0, fourier_scale: float = 1.0
    ) -> None:
        super().__init__()
        self.graph = graph
        self.weight_lift = ScalarLift(width, fourier_features, fourier_scale)
        self.bias_lift = ScalarLift(width, fourier_features, fourier_scale)
        self.node_position = nn.Embedding(graph.num_positions, width)
        self.edge_position = nn.Embedding(graph.layout.num_layers, width)
        self.time = TimeEmbedding(time_size, 2 * width)
        nn.init.normal_(self.node_position.weight, std=1.0)
        nn.init.normal_(self.edge_position.weight, std=1.0)

    def forward(self, flat: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        time_node, time_edge = self.time(t).unsqueeze(1).chunk(2, dim=-1)
        nodes = self.bias_lift(self.graph.node_features(flat)) + self.node_position(self.graph.node_position) + time_node
        edges = self.weight_lift(self.graph.edge_features(flat)) + self.edge_position(self.graph.edge_layer) + time_edge
        return nodes, edges


class GraphHead(nn.Module):
    """Final node ``[B, N, d]`` and edge ``[B, E, d]`` states → flat ``[B, D]``: a LayerNorm and a linear read-out
    per edge (weights) and per non-input node (biases)."""

    def __init__(self, graph: NeuralGraph, width: int) -> None:
        super().__init__()
        self.graph = graph
        self.node_norm = nn.LayerNorm(width)
        self.edge_norm = nn.LayerNorm(width)
        self.node_out = nn.Linear(width, 1)
        self.edge_out = nn.Linear(width, 1)

    def forward(self, nodes: Tensor, edges: Tensor) -> Tensor:
        edge_values = self.edge_out(self.edge_norm(edges)).squeeze(-1)
        node_values = self.node_out(self.node_norm(nodes)).squeeze(-1)
        return self.graph.to_flat(edge_values, node_values)

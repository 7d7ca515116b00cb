"""NG-GNN: principal neighbourhood aggregation over neural graphs with FiLM edge modulation and edge updates.

Per layer (pre-norm residual; LayerNorm per node / edge only), with ``n = LN(nodes)`` and ``e = LN(edges)``::

    γ_e, β_e, u_e = split(W_e e + b)                          FiLM parameters and edge-update term (one matmul)
    m_{s→t} = γ_e ⊙ (W_fwd n)_s + β_e,   m_{t→s} = γ_e ⊙ (W_bwd n)_t + β_e    both directions of edge e = (s, t)
    a_i = PNA({m → i})                    mean/min/max/std × identity/amplification/attenuation  [12 d]
    nodes ← nodes + MLP([n_i, a_i])
    edges ← edges + EdgeUpdate(u_e, LN nodes)

using torch-geometric's :class:`~torch_geometric.nn.aggr.DegreeScalerAggregation` (degree statistics of the
architecture's own graph).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from weightflow.models.base import GraphVectorField
from weightflow.models.blocks import EdgeUpdate, SparseIncidence
from weightflow.weights import MLPLayout

__all__ = ["PNALayer", "PNA"]

AGGREGATORS = ["mean", "min", "max", "std"]
SCALERS = ["identity", "amplification", "attenuation"]


class PNALayer(nn.Module):
    """One PNA message-passing layer with FiLM-modulated messages and an edge update (sparse incidence)."""

    def __init__(self, width: int, degree_histogram: Tensor, dropout: float = 0.0) -> None:
        super().__init__()
        self.node_norm = nn.LayerNorm(width)
        self.edge_norm = nn.LayerNorm(width)
        self.node_in = nn.Linear(width, 2 * width)
        self.edge_proj = nn.Linear(width, 3 * width)  # FiLM γ, β and the edge update's edge term
        from torch_geometric.nn.aggr import DegreeScalerAggregation  # imported on use: torch-geometric loads slowly

        self.aggregate = DegreeScalerAggregation(AGGREGATORS, SCALERS, degree_histogram)
        self.post = nn.Sequential(
            nn.Linear((1 + len(AGGREGATORS) * len(SCALERS)) * width, width), nn.SiLU(), nn.Linear(width, width)
        )
        self.update_norm = nn.LayerNorm(width)
        self.edge_update = EdgeUpdate(width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, nodes: Tensor, edges: Tensor, incidence: SparseIncidence) -> tuple[Tensor, Tensor]:
        n = self.node_norm(nodes)
        to_target, to_source = self.node_in(n).chunk(2, dim=-1)
        gamma, beta, edge_term = self.edge_proj(self.edge_norm(edges)).chunk(3, dim=-1)
        messages = torch.cat(
            [gamma * incidence.source(to_target) + beta, gamma * incidence.target(to_source) + beta]
        )
        aggregated = self.aggregate(messages, incidence.message_index, dim_size=incidence.num_nodes, dim=0)
        nodes = nodes + self.dropout(self.post(torch.cat([n, aggregated.to(n.dtype)], dim=-1)))
        edges = edges + self.dropout(self.edge_update(edge_term, self.update_norm(nodes), incidence))
        return nodes, edges


class PNA(GraphVectorField):
    """NG-GNN vector field: ``depth`` :class:`PNALayer` s over the ``B`` tiled graphs of a batch."""

    def __init__(
        self,
        layer_sizes: Sequence[int] | MLPLayout,
        *,
        width: int = 64,
        depth: int = 5,
        dropout: float = 0.0,
        **encoder_options,
    ) -> None:
        super().__init__(layer_sizes, width=width, **encoder_options)
        histogram = self.graph.degree_histogram()
        self.layers = nn.ModuleList(PNALayer(width, histogram, dropout) for _ in range(depth))

    def process(self, nodes: Tensor, edges: Tensor) -> tuple[Tensor, Tensor]:
        batch, width = nodes.shape[0], nodes.shape[-1]
        incidence = SparseIncidence(self.graph.tiled_edge_index(batch), batch * self.graph.num_nodes)
        nodes, edges = nodes.reshape(-1, width), edges.reshape(-1, width)
        for layer in self.layers:
            nodes, edges = layer(nodes, edges, incidence)
        return nodes.view(batch, -1, width), edges.view(batch, -1, width)

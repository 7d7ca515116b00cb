"""NG-T: relational transformer with edge updates over the real edges of neural graphs (sparse).

Per block (pre-norm residual; LayerNorm over the feature dimension of each node / edge only)::

    n ← n + W_o Attn(LN n, LN e)          attention over the graph neighbours (in- and out-edges) and self
    n ← n + FFN(LN n)
    e ← e + EdgeUpdate(LN e, LN n)        MLP of (own edge, source node, target node)

with queries, keys and values conditioned on the edge state of the connecting edge (see
:meth:`weightflow.models.blocks.SparseIncidence.attend`).  One edge state per weight serves both directions.
"""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from weightflow.models.base import GraphVectorField
from weightflow.models.blocks import EdgeUpdate, FeedForward, SparseIncidence
from weightflow.weights import MLPLayout

__all__ = ["RelationalAttention", "NGTBlock", "NGT"]


class RelationalAttention(nn.Module):
    """Edge-conditioned multi-head attention: node projections, the incidence's attention, output map.

    The edge terms ``(edge_q, edge_k, edge_v)``, each ``[*, d]``, of queries, keys and values come from the block's
    edge projection.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.heads = heads
        self.node_qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, nodes: Tensor, edge_qkv: tuple[Tensor, Tensor, Tensor], incidence) -> Tensor:
        return self.out(incidence.attend(self.node_qkv(nodes), edge_qkv, self.heads))


class NGTBlock(nn.Module):
    """One relational-transformer block (node attention, node FFN, edge update), any incidence.

    One weight ``edge_proj`` (``[4d, d]``) maps the normalized edge state to the attention's edge terms (query, key,
    value) and the edge update's edge term, ``[*, d]`` each.  The four maps are applied separately: splitting one
    ``[*, 4d]`` output would make the backward pass join the four gradients into a fresh copy of that whole
    edge tensor (measured: 20 % slower for this projection on 2 CPU cores).
    """

    def __init__(self, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.node_norm = nn.LayerNorm(width)
        self.edge_norm = nn.LayerNorm(width)
        self.edge_proj = nn.Linear(width, 4 * width)
        self.attention = RelationalAttention(width, heads)
        self.ffn_norm = nn.LayerNorm(width)
        self.ffn = FeedForward(width, 2 * width)
        self.update_norm = nn.LayerNorm(width)
        self.edge_update = EdgeUpdate(width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, nodes: Tensor, edges: Tensor, incidence) -> tuple[Tensor, Tensor]:
        normed, width = self.edge_norm(edges), nodes.shape[-1]
        maps = zip(self.edge_proj.weight.split(width), self.edge_proj.bias.split(width))
        edge_q, edge_k, edge_v, edge_term = (F.linear(normed, weight, bias) for weight, bias in maps)
        nodes = nodes + self.dropout(self.attention(self.node_norm(nodes), (edge_q, edge_k, edge_v), incidence))
        nodes = nodes + self.dropout(self.ffn(self.ffn_norm(nodes)))
        edges = edges + self.dropout(self.edge_update(edge_term, self.update_norm(nodes), incidence))
        return nodes, edges


class NGT(GraphVectorField):
    """Sparse NG-T vector field: ``depth`` :class:`NGTBlock` s over the ``B`` tiled graphs of a batch."""

    def __init__(
        self,
        layer_sizes: Sequence[int] | MLPLayout,
        *,
        width: int = 64,
        depth: int = 5,
        heads: int = 4,
        dropout: float = 0.0,
        **encoder_options,
    ) -> None:
        super().__init__(layer_sizes, width=width, **encoder_options)
        self.blocks = nn.ModuleList(NGTBlock(width, heads, dropout) for _ in range(depth))

    def process(self, nodes: Tensor, edges: Tensor) -> tuple[Tensor, Tensor]:
        batch, width = nodes.shape[0], nodes.shape[-1]
        incidence = SparseIncidence(self.graph.tiled_edge_index(batch), batch * self.graph.num_nodes)
        nodes, edges = nodes.reshape(-1, width), edges.reshape(-1, width)
        for block in self.blocks:
            nodes, edges = block(nodes, edges, incidence)
        return nodes.view(batch, -1, width), edges.view(batch, -1, width)

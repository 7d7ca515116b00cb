"""Dense all-pairs NG-T — the baseline of the benchmark, not meant for training.

As in Kofinas et al.'s public implementation, every node attends to every node and every ordered node pair
``(i, j)`` carries an edge state (``[B, N, N, d]``): pair ``(target, source)`` of a real edge and its mirror
``(source, target)`` start from that weight's edge state, every other pair from a learned "no edge" vector.
The blocks are the sparse model's :class:`~weightflow.models.ngt.NGTBlock` run on a :class:`DenseIncidence`;
the head reads the ``(target, source)`` states.  Cost O(N² d²) per block against O(E d²) for the sparse model.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from weightflow.models.ngt import NGT
from weightflow.weights import MLPLayout

__all__ = ["DenseIncidence", "DenseNGT"]


class DenseIncidence:
    """All ordered pairs: node states ``[B, N, k]``, pair states ``[B, N, N, k]`` indexed ``(target i, source j)``."""

    @staticmethod
    def source(x: Tensor) -> Tensor:
        return x.unsqueeze(1)

    @staticmethod
    def target(x: Tensor) -> Tensor:
        return x.unsqueeze(2)

    @staticmethod
    def add_endpoints(edge: Tensor, source: Tensor, target: Tensor) -> Tensor:
        return edge + source.unsqueeze(1) + target.unsqueeze(2)

    @staticmethod
    def attend(node_qkv: Tensor, edge_qkv: tuple[Tensor, Tensor, Tensor], heads: int) -> Tensor:
        """Node ``i`` attends to every node ``j`` with query ``qn_i + qe_ij``, key ``kn_j + ke_ij``, value ``vn_j + ve_ij``
        (node terms ``[B, N, 2k + d]``; pair terms ``(qe, ke, ve)``: ``[B, N, N, k]`` twice, ``[B, N, N, d]``)
        → ``[B, N, d]``."""
        qe, ke, ve = edge_qkv
        qn, kn, vn = node_qkv.split([qe.shape[-1], ke.shape[-1], ve.shape[-1]], dim=-1)
        q = qn.unsqueeze(2) + qe
        k = kn.unsqueeze(1) + ke
        v = vn.unsqueeze(1) + ve
        score = (q * k).unflatten(-1, (heads, -1)).sum(-1) / math.sqrt(q.shape[-1] // heads)
        alpha = score.float().softmax(dim=2).to(v.dtype)
        return (alpha.unsqueeze(-1) * v.unflatten(-1, (heads, -1))).sum(2).flatten(-2)


class DenseNGT(NGT):
    """All-pairs NG-T vector field: the options and blocks of :class:`~weightflow.models.ngt.NGT`, with every
    node pair an edge slot (pairs without a weight share one learned ``no_edge`` state).

    Queries, keys and the edge-update MLP default to the full width ``d``, as in the public implementation this
    variant stands in for (the sparse model defaults to ``d/2``; pass ``key_width``/``edge_hidden`` to compare
    at equal widths)."""

    def __init__(
        self,
        layer_sizes: Sequence[int] | MLPLayout,
        *,
        width: int = 64,
        key_width: int | None = None,
        edge_hidden: int | None = None,
        **options,
    ) -> None:
        super().__init__(layer_sizes, width=width, key_width=key_width or width, edge_hidden=edge_hidden or width,
                         **options)
        self.no_edge = nn.Parameter(torch.randn(width))
        source, target = self.graph.edge_index
        n = self.graph.num_nodes
        self.register_buffer("pair_forward", target * n + source, persistent=False)
        self.register_buffer("pair_backward", source * n + target, persistent=False)

    def process(self, nodes: Tensor, edges: Tensor) -> tuple[Tensor, Tensor]:
        batch, n, width = nodes.shape
        pairs = self.no_edge.to(edges.dtype).expand(batch, n * n, width).clone()
        pairs[:, self.pair_forward] = edges
        pairs[:, self.pair_backward] = edges
        pairs = pairs.view(batch, n, n, width)
        for block in self.blocks:
            nodes, pairs = block(nodes, pairs, DenseIncidence)
        return nodes, pairs.view(batch, n * n, width).index_select(1, self.pair_forward)

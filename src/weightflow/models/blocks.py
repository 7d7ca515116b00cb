"""Building blocks shared by the graph vector fields: the batched sparse incidence, feed-forward and edge-update MLPs.

An *incidence* says how node states reach edges: ``source(x)`` / ``target(x)`` give every edge the state of its
source / target node, ``add_endpoints(e, s, t)`` is ``e + source(s) + target(t)``.  :class:`SparseIncidence`
does it for the ``B`` tiled copies of a neural graph (node states ``[B*N, k]`` → edge states ``[B*E, k]``) with
gathers and scatters under plain autograd: PNA's incidence, and the reference of the sparse NG-T, whose default path
runs fused on the layered edge order (:mod:`weightflow.models.layered`).  The dense all-pairs baseline has its own
(:class:`weightflow.models.ngt_dense.DenseIncidence`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SparseIncidence", "FeedForward", "EdgeUpdate"]


class SparseIncidence:
    """The real edges of ``B`` tiled neural graphs (``edge_index [2, B*E]``, ``num_nodes = B*N``).

    Each edge is used in both directions; ``message_index [2*B*E]`` is the receiving node of the messages
    ``cat([to_target, to_source])``.
    """

    def __init__(self, edge_index: Tensor, num_nodes: int) -> None:
        self.source_index, self.target_index = edge_index
        self.num_nodes = num_nodes
        self.message_index = torch.cat([self.target_index, self.source_index])
        # receivers of the attention scores cat([to targets, to sources, self-loops])
        self.attention_index = torch.cat([self.message_index, torch.arange(num_nodes, device=edge_index.device)])

    def source(self, x: Tensor) -> Tensor:
        return x.index_select(0, self.source_index)

    def target(self, x: Tensor) -> Tensor:
        return x.index_select(0, self.target_index)

    def add_endpoints(self, edge: Tensor, source: Tensor, target: Tensor) -> Tensor:
        """``edge + source[source node] + target[target node]``, summed into the fresh gathered tensor in place."""
        return self.source(source).add_(self.target(target)).add_(edge)

    def attend(self, node_qkv: Tensor, edge_qkv: tuple[Tensor, Tensor, Tensor], heads: int) -> Tensor:
        """Edge-conditioned multi-head attention of every node over its graph neighbours and itself.

        ``node_qkv [B*N, 2k + d]`` holds the node terms of queries, keys (width ``k``) and values (width ``d``),
        ``edge_qkv`` their edge terms ``(q, k, v)``: ``[B*E, k]``, ``[B*E, k]``, ``[B*E, d]``.
        The message from node ``j`` to node ``i`` over edge ``e`` has query ``qn_i + qe_e``, key ``kn_j + ke_e`` and
        value ``vn_j + ve_e`` (the self-loop has no edge term); per head
        ``out_i = sum_j softmax_j(<q, k> / sqrt(k/heads)) v`` → ``[B*N, d]``.  The two directions of the edges
        are kept apart (no concatenated copies of the ``[B*E, d]`` terms); only the ``[*, heads]`` scores are joined
        for the softmax over each node's neighbourhood.
        """
        from torch_geometric.utils import scatter, softmax  # imported on use: torch-geometric loads slowly (~4 CPU s)

        edge_q, edge_k, edge_v = edge_qkv
        key_width = edge_q.shape[-1]
        # split (not slicing), so that the backward pass joins the gradients with one cat instead of zero-fills
        node_q, node_k, node_v = node_qkv.split([key_width, key_width, edge_v.shape[-1]], dim=-1)
        src, dst = self.source_index, self.target_index
        scale = 1.0 / math.sqrt(key_width // heads)

        def score(q: Tensor, k: Tensor) -> Tensor:  # [M, heads], float32
            return (q * k).unflatten(-1, (heads, -1)).sum(-1).float() * scale

        def weigh(alpha: Tensor, v: Tensor) -> Tensor:  # alpha [M, heads] times the values [M, d]
            return (alpha.unsqueeze(-1) * v.unflatten(-1, (heads, -1))).flatten(-2)

        def gather_add(x: Tensor, index: Tensor, edge: Tensor) -> Tensor:  # x[index] + edge, added in place
            return x.index_select(0, index).add_(edge)

        q_t, k_t, v_t = gather_add(node_q, dst, edge_q), gather_add(node_k, src, edge_k), gather_add(node_v, src, edge_v)
        q_s, k_s, v_s = gather_add(node_q, src, edge_q), gather_add(node_k, dst, edge_k), gather_add(node_v, dst, edge_v)
        scores = torch.cat([score(q_t, k_t), score(q_s, k_s), score(node_q, node_k)])
        alpha = softmax(scores, self.attention_index, num_nodes=self.num_nodes).to(edge_q.dtype)
        a_t, a_s, a_self = alpha.split([len(src), len(src), self.num_nodes])
        return (
            scatter(weigh(a_t, v_t), dst, dim=0, dim_size=self.num_nodes, reduce="sum")
            + scatter(weigh(a_s, v_s), src, dim=0, dim_size=self.num_nodes, reduce="sum")
            + weigh(a_self, node_v)
        )


class FeedForward(nn.Module):
    """``Linear(d, h) → SiLU → Linear(h, d)`` on the last dimension."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, width))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class EdgeUpdate(nn.Module):
    """Edge MLP on (own edge, source node, target node): ``W_o σ(W_e e + b + (W_s n)[source] + (W_t n)[target])``.

    The caller passes the edge term ``W_e e + b`` (``[*, hidden]``), computed in one matmul with its other edge
    projections.  The node terms are projected on the nodes first and then gathered onto the edges (``N ≪ E``):
    the same map as an MLP on the concatenation ``[e, n_source, n_target]`` at a third of the edge-side cost.
    """

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.node_in = nn.Linear(width, 2 * hidden, bias=False)
        self.out = nn.Linear(hidden, width)

    def forward(self, edge_term: Tensor, nodes: Tensor, incidence) -> Tensor:
        source, target = self.node_in(nodes).chunk(2, dim=-1)
        return self.out(F.silu(incidence.add_endpoints(edge_term, source, target)))

"""NG-T: relational transformer with edge updates over the real edges of neural graphs (sparse).

Per block (pre-norm residual; LayerNorm over the feature dimension of each node / edge only)::

    n ← n + W_o Attn(LN n, LN e)          attention over the graph neighbours (in- and out-edges) and self
    n ← n + FFN(LN n)
    e ← e + EdgeUpdate(LN e, LN n)        MLP of (own edge, source node, target node)

with queries, keys and values conditioned on the edge state of the connecting edge (see
:meth:`weightflow.models.blocks.SparseIncidence.attend`).  One edge state per weight serves both directions.

By default the blocks run fused on the layered edge order (:mod:`weightflow.models.layered`); ``fused=False``
runs the plain-autograd gather/scatter reference (:class:`~weightflow.models.blocks.SparseIncidence`), the same map.
:meth:`NGT.compile` compiles that reference for training (see there).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weightflow.models.base import GraphVectorField
from weightflow.models.blocks import EdgeUpdate, FeedForward, SparseIncidence
from weightflow.models.layered import LayeredAttention, LayeredEdgeUpdate, LayeredIncidence
from weightflow.weights import MLPLayout

__all__ = ["RelationalAttention", "NGTBlock", "NGT"]


class RelationalAttention(nn.Module):
    """Edge-conditioned multi-head attention: node projections, the incidence's attention, output map.

    Queries and keys have width ``key_width`` (their dot products are all the attention needs of them), values
    width ``d``.  The edge terms ``(edge_q, edge_k, edge_v)`` — ``[*, key_width]``, ``[*, key_width]``, ``[*, d]`` —
    come from the block's edge projection.
    """

    def __init__(self, width: int, heads: int, key_width: int) -> None:
        super().__init__()
        if width % heads or key_width % heads:
            raise ValueError(f"width {width} and key_width {key_width} must be divisible by heads {heads}")
        self.heads = heads
        self.node_qkv = nn.Linear(width, 2 * key_width + width)
        self.out = nn.Linear(width, width)

    def forward(self, nodes: Tensor, edge_qkv: tuple[Tensor, Tensor, Tensor], incidence) -> Tensor:
        return self.out(incidence.attend(self.node_qkv(nodes), edge_qkv, self.heads))


class NGTBlock(nn.Module):
    """One relational-transformer block (node attention, node FFN, edge update), any incidence.

    One weight ``edge_proj`` (``[2k + d + h, d]``) maps the normalized edge state to the attention's edge terms
    (query and key ``[*, k]``, value ``[*, d]``) and the edge update's edge term (``[*, h]``), with
    ``k = key_width`` and ``h = edge_hidden``.  The four maps are applied separately: splitting one concatenated
    output would make the backward pass join the four gradients into a fresh copy of that whole edge tensor
    (measured: 20 % slower for this projection on 2 CPU cores).  :meth:`forward_layered` computes the query, key
    and edge-update terms in one GEMM and assembles its gradient itself.
    """

    def __init__(self, width: int, heads: int, dropout: float = 0.0, *, key_width: int, edge_hidden: int) -> None:
        super().__init__()
        self.edge_sizes = [key_width, key_width, width, edge_hidden]
        self.node_norm = nn.LayerNorm(width)
        self.edge_norm = nn.LayerNorm(width)
        self.edge_proj = nn.Linear(width, sum(self.edge_sizes))
        self.attention = RelationalAttention(width, heads, key_width)
        self.ffn_norm = nn.LayerNorm(width)
        self.ffn = FeedForward(width, 2 * width)
        self.update_norm = nn.LayerNorm(width)
        self.edge_update = EdgeUpdate(width, edge_hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, nodes: Tensor, edges: Tensor, incidence) -> tuple[Tensor, Tensor]:
        normed = self.edge_norm(edges)
        maps = zip(self.edge_proj.weight.split(self.edge_sizes), self.edge_proj.bias.split(self.edge_sizes))
        edge_q, edge_k, edge_v, edge_term = (F.linear(normed, weight, bias) for weight, bias in maps)
        nodes = nodes + self.dropout(self.attention(self.node_norm(nodes), (edge_q, edge_k, edge_v), incidence))
        nodes = nodes + self.dropout(self.ffn(self.ffn_norm(nodes)))
        edges = edges + self.dropout(self.edge_update(edge_term, self.update_norm(nodes), incidence))
        return nodes, edges

    @torch.compiler.disable(reason="fused NG-T kernels: compile the reference (NGT.compile)")
    def forward_layered(self, nodes: Tensor, edges: Tensor, incidence: LayeredIncidence) -> tuple[Tensor, Tensor]:
        """:meth:`forward` on the layered edge order, with the attention and the edge MLP fused
        (:class:`~weightflow.models.layered.LayeredAttention`, :class:`~weightflow.models.layered.LayeredEdgeUpdate`):
        the same map and parameters, without gathered queries and keys or edge values.

        Never traced by ``torch.compile`` (a graph break): Dynamo can trace the fused functions, but compiling them
        took 10 minutes on 2 CPU cores for a 4 % faster step; :meth:`NGT.compile` compiles :meth:`forward`."""
        node_qkv = self.attention.node_qkv(self.node_norm(nodes))
        projection = (self.edge_proj.weight, self.edge_proj.bias)
        attended, edge_term = LayeredAttention.apply(
            self.edge_norm(edges), node_qkv, *projection, incidence, self.attention.heads
        )
        nodes = nodes + self.dropout(self.attention.out(attended))
        nodes = nodes + self.dropout(self.ffn(self.ffn_norm(nodes)))
        update = self.edge_update
        mlp = (edge_term, update.node_in(self.update_norm(nodes)), update.out.weight, update.out.bias)
        if self.training and self.dropout.p > 0:
            return nodes, edges + self.dropout(LayeredEdgeUpdate.apply(*mlp, None, incidence))
        return nodes, LayeredEdgeUpdate.apply(*mlp, edges, incidence)  # the residual added by the output GEMM


class NGT(GraphVectorField):
    """Sparse NG-T vector field: ``depth`` :class:`NGTBlock` s over the ``B`` tiled graphs of a batch.

    ``key_width`` (query/key width) and ``edge_hidden`` (hidden width of the edge-update MLP) default to ``d/2``:
    they size the per-edge work, which dominates the cost (E ≫ N).  Measured on case (a) of
    ``benchmarks/models.py`` (interleaved in one process, 1 CPU thread): ``d`` for both takes 1.24× the step time of
    ``d/2`` on the fused path, 1.29× on the reference path.

    ``fused`` (default) runs the blocks on the layered edge order with the fused attention and edge MLP of
    :mod:`weightflow.models.layered` (0.85–0.9× the reference step time on case (a), 0.75–0.8× on case (b), about
    30 % less step memory); ``fused=False`` runs the plain-autograd gather/scatter reference, the same map (an
    attribute: set it on a built model to switch).  :meth:`compile` compiles the reference for training.
    """

    def __init__(
        self,
        layer_sizes: Sequence[int] | MLPLayout,
        *,
        width: int = 64,
        depth: int = 5,
        heads: int = 4,
        key_width: int | None = None,
        edge_hidden: int | None = None,
        dropout: float = 0.0,
        fused: bool = True,
        **encoder_options,
    ) -> None:
        super().__init__(layer_sizes, width=width, **encoder_options)
        self.fused = fused
        self.compiled = False
        half = width // 2 if (width // 2) % heads == 0 else width  # d/2 unless heads does not divide it
        key_width, edge_hidden = key_width or half, edge_hidden or width // 2
        self.blocks = nn.ModuleList(
            NGTBlock(width, heads, dropout, key_width=key_width, edge_hidden=edge_hidden) for _ in range(depth)
        )

    def compile(self, *args, **kwargs) -> None:
        """``torch.compile`` for training: each block's plain-autograd :meth:`NGTBlock.forward` (the gather/scatter
        reference) is compiled, with ``torch.compile`` 's arguments; in training mode the blocks then run it whatever
        ``fused`` says.  Eval mode (sampling, likelihoods) keeps the eager path: a compiled backward pass does not run
        under ``torch.autograd.grad(..., is_grads_batched=True)``, which the likelihoods' divergences use, and sampling
        would pay for compiling its own graphs.  A deep copy (the training's EMA model) is not compiled.

        The blocks share one compiled graph (their parameters are its inputs), so compiling costs one block's graph:
        on the cases of ``benchmarks/models.py`` about 40 CPU s with an empty Inductor cache (8 s tracing, 30 s
        C++ compilation; 26–42 s of wall time on 2 shared cores), 4 s from a warm one (``TORCHINDUCTOR_CACHE_DIR``,
        by default under the temporary directory).  Measured there (1 CPU thread, interleaved with the eager fused
        path in one process): 0.71× the fused step time on case (a), 0.78–0.81× on case (b), and no more step
        memory (peak RSS of a step: 214 vs 223 MiB, 298 vs 311 MiB; the compiler itself keeps about 100 MB); with
        the ``bf16`` option (bfloat16 autocast, AMX GEMMs; other outputs) 0.59× and 0.8×.
        Compiling the fused kernels instead took 10 minutes for 0.96×; the whole model's reference, twice the time
        for 0.72–0.77×.  Since the fused path's attention runs on compiled C++ kernels
        (:mod:`weightflow.models.attention_kernels`), the default run's NG-T (d = 32, depth 3, batch 32, 30-16-16-2;
        the three alternating in one process) steps in 124 ms compiled, 139 ms fused with the kernels and 174 ms
        fused on ATen ops at 1 thread (the training's ``flow.threads``: so the default run still compiles for
        training), and in 123 / 101 / 127 ms at 2 threads.
        """
        for block in self.blocks:
            block.compile(*args, **kwargs)
        self.compiled = True

    def process(self, nodes: Tensor, edges: Tensor) -> tuple[Tensor, Tensor]:
        batch, width = nodes.shape[0], nodes.shape[-1]
        nodes, edges = nodes.reshape(-1, width), edges.reshape(-1, width)
        if self.fused and not (self.compiled and self.training):
            incidence = LayeredIncidence(self.graph, batch)
            edges = incidence.to_layered(edges)
            for block in self.blocks:
                nodes, edges = block.forward_layered(nodes, edges, incidence)
            edges = incidence.from_layered(edges)
        else:
            incidence = SparseIncidence(self.graph.tiled_edge_index(batch), batch * self.graph.num_nodes)
            for block in self.blocks:
                nodes, edges = block(nodes, edges, incidence)
        return nodes.view(batch, -1, width), edges.view(batch, -1, width)

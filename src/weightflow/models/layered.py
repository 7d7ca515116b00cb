"""Fused NG-T kernels on the layered edge order: attention and edge update as custom autograd functions.

The edges of a neural graph form one dense block per affine layer: layer ``l`` joins every source neuron
``i < I = n_{l-1}`` to every target neuron ``o < O = n_l``.  In the layered order
(:meth:`weightflow.graph.NeuralGraph.layered_edge_order`) the ``B`` copies of that block are the rows
``[O, B, I]`` of the edge tensor, so "the edges of target ``o``" are the contiguous ``[I, d]`` matrix
``ê[o, b]`` and "the edges of source ``i``" the strided ``[O, d]`` matrix ``ê[:, b, i]`` — both valid operands of
a batched matrix product.  Gathers of node states become broadcasts, scatters become sums over one axis or
batched matrix products, and the neighbourhood softmax becomes per-block max/sum reductions: no index tensors.

:class:`LayeredAttention` never builds the edge terms of the values (``[B*E, d]``) nor the gathered queries and
keys.  With ``q_e = W_q ê_e``, ``k_e = W_k ê_e``, ``v_e = W_v ê_e`` (biases moved onto the node terms
``q̃, k̃, ṽ``) the score of head ``h`` for node ``n`` attending over edge ``e`` to node ``m`` is

    <q̃_n + q_e, k̃_m + k_e>_h = <q̃_n, k̃_m>_h + <P_n^h, ê_e> + <R_m^h, ê_e> + <q_e, k_e>_h,
    P_n^h = (W_k^h)ᵀ q̃_n^h,  R_m^h = (W_q^h)ᵀ k̃_m^h                    (node terms, [heads, d] per node)

and the edge part of the aggregated values is ``Σ_e α_e^h v_e^h = W_v^h A_n^h`` with ``A_n^h = Σ_e α_e^h ê_e``.
Per block that is one GEMM ``ê → [q_e | k_e | u_e]`` (``u_e``: the edge MLP's edge term) and four batched
products reading ``ê`` (scores and values, from the targets' and from the sources' side), where plain autograd
makes about twenty passes over gathered, multiplied and scattered edge tensors and keeps six of them for the
backward pass.  :class:`LayeredEdgeUpdate` adds the endpoint terms by broadcasting and fuses the residual.

Measured against that reference (``benchmarks/models.py``, cases (a) / (b), reference and fused runs interleaved
on 1–2 shared CPU threads): 0.85–0.9× / 0.75–0.8× the step time and 31 % / 28 % less step memory.  The edge work
(element-wise, gather/scatter and batched products on ``[B*E, ·]`` tensors, CPU time per op) falls from 67 % / 71 %
of the op time to 58 % / 48 %, the GEMMs take 24 % / 20 %, and node-sized work grows from 2 % / 8 % to 18 % / 32 %:
the per-node operands ``P, R, G`` are ``heads × d`` wide, nearly edge-sized where a layer's fan-out is small.
Taking ``<P_n, ê_e> = <q̃_n, k_e>_h`` and ``<R_n, ê_e> = <k̃_n, q_e>_h`` directly from the GEMM's ``q_e, k_e`` on the
sides with few edges per node (a broadcast product and a head sum; their gradients added to ``[dq_e | dk_e]`` before
the GEMM) did not pay: 0.94–1.0× the attention time and 0.98× the step time on case (b) (fan-out 10), no change on
(a) — the broadcast products cost what the thin batched products they replace do.  For training,
:meth:`weightflow.models.ngt.NGT.compile` (Inductor on the reference) takes 0.71× / 0.8× this path's step time.

Dtypes: everything runs in the dtype of the normalized edge states, except the dense projections
(``ê → [q_e | k_e | u_e]``, the edge MLP's output matrix and their gradients), which run in the autocast dtype when
autocast is on (bfloat16 GEMMs pay on GPUs and, a little, on CPUs with AMX-BF16: the ``bf16`` model option took 0.95×
the float32 step time on case (a), d = 64, and 1.05× on case (b), d = 32, where the casts cost more than the GEMMs
save; the small batched products and the softmax do not pay).

Accumulations write in place: ``acc[:, rows].add_(x)`` (Python's ``acc[:, rows] += x`` copies the slice back onto
itself afterwards, an extra pass over it) and ``baddbmm_`` into ``dê`` per target (half the time of
``add_(bmm(...))``; per source the strided view makes ``baddbmm_`` 3× slower, so that side keeps ``add_``).  Tried
and dropped, measured on case (a): writing ``[dq_e | dk_e | du_e]`` through ``out=`` instead of concatenating, or
two GEMMs instead of the concatenation (no change either); the sources' side of a block with fewer out-edges than
heads (a classifier's output layer) computed on ``q_e, k_e`` and ``v_e = W_v ê_e`` instead of per-node operands
(no change); the output layer's bias folded into its GEMM as a column of ones (1.01×, the weight gradient's GEMM
slows down at 33 columns); ``[dq_e | dk_e]`` as one broadcast product ``[q_e | k_e] ⊙ [σ | σ]`` against
``[W_k; W_q]`` and ``du_e`` in a second GEMM, no concatenation (1.2× the time of those lines: a broadcast over a
strided view is slow on CPU, and two GEMMs cost more than one); the edge contractions (``bmm`` s reading ``ê``) on
the bfloat16 copy of ``ê`` under autocast (1.06× the float32 step, where the ``bf16`` option as it is takes 0.95×:
bfloat16 ``bmm`` on strided views copies its operands).

Compiled kernels.  On float32 CPU tensors the per-block passes over ``ê`` run in
:mod:`weightflow.models.attention_kernels` (C++, built once per machine): the scores with their running maximum,
the softmax's numerators and sums, the values (``α`` normalized in place, ``A_t``, ``A_s`` and the node part), the
weights' gradients ``dα`` with ``Σ α dα`` and ``d_v``, the edge GEMM's output gradient ``[dq_e | dk_e | du_e]``, the
scores' side of ``dê`` with ``[dP | dR]`` and the node-node terms' ``[dq | dk]``, and the edge MLP's ``SiLU(u_e + S +
T)`` with its backward pass and node sums — one pass each where the ATen path makes 3–20 ops per block.  The node
operands (``[P | R]``, ``[G | P | R]``), the GEMMs and the weight gradients stay on ATen.  :func:`_block_scores`,
:func:`_block_values`, :func:`_block_d_alpha` and :func:`_block_score_gradients` are the ATen path of the same passes:
it runs where the kernels cannot (no compiler, float64, CUDA, widths without an instance, the ``bf16`` option's
bfloat16 GEMM outputs, and the vmapped backward pass of ``is_grads_batched``, which a custom op cannot run).

Before the kernels, a step of case (a) spent two thirds of its time in the attention (forward 57 ms, backward
121 ms of 271 ms, timed in place), most of it in those loops; the same step at batch 1 (per-op overhead only) took
47 ms.  With them, measured with the two paths alternating in one process (2 threads): one layer's attention takes
0.66× / 0.61× the ATen path's time forward and 0.68× / 0.64× backward on cases (a) / (b)
(``benchmarks/attention_kernel.py``), and the training step 0.75× / 0.76× (``benchmarks/models.py`` with and without
``--no-kernels``, three rounds).  The kernels agree with the ATen path to float32 rounding (largest difference 7e-7 /
1e-6 of the outputs' scale), not bitwise.

:class:`weightflow.models.blocks.SparseIncidence` (gather/scatter, plain autograd) is the reference these
functions are tested against.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from weightflow.graph import NeuralGraph
from weightflow.models import attention_kernels

__all__ = ["LayerBlock", "LayeredIncidence", "LayeredAttention", "LayeredEdgeUpdate"]


@dataclass(frozen=True)
class LayerBlock:
    """One affine layer's edges in the layered order: rows ``rows`` of the edge tensor, as ``[fan_out, B, fan_in]``;
    ``sources`` / ``targets`` are its neurons' node slices."""

    rows: slice
    fan_in: int
    fan_out: int
    sources: slice
    targets: slice


class LayeredIncidence:
    """The ``B`` tiled neural graphs of a batch with edges in the layered order and nodes in ``[B, N]`` order.

    ``to_layered`` / ``from_layered`` move ``[B*E, ·]`` edge tensors between the tiled and the layered order (a row
    permutation whose backward pass is the inverse permutation).  Per :class:`LayerBlock`, ``by_target`` /
    ``by_source`` view a layered edge tensor as the batch of ``[I, ·]`` matrices of each target (``O*B`` of them,
    contiguous) or ``[O, ·]`` matrices of each source (``B*I``, strided); ``targets`` / ``sources`` and
    ``head_targets`` / ``head_sources`` give node tensors in the matching order, ``add_*`` accumulate back.
    """

    def __init__(self, graph: NeuralGraph, batch: int) -> None:
        self.batch, self.num_nodes = batch, graph.num_nodes
        self.order = graph.layered_edge_order(batch)
        self.inverse = torch.empty_like(self.order)
        self.inverse[self.order] = torch.arange(len(self.order), device=self.order.device)
        blocks, row = [], 0
        sizes, starts = graph.layer_sizes, graph.node_start
        for layer in range(1, len(sizes)):
            fan_in, fan_out = sizes[layer - 1], sizes[layer]
            rows = slice(row, row + fan_out * batch * fan_in)
            sources = slice(starts[layer - 1], starts[layer - 1] + fan_in)
            blocks.append(LayerBlock(rows, fan_in, fan_out, sources, slice(starts[layer], starts[layer] + fan_out)))
            row = rows.stop
        self.blocks: tuple[LayerBlock, ...] = tuple(blocks)

    def to_layered(self, edges: Tensor) -> Tensor:
        """Tiled ``[B*E, k]`` → layered ``[B*E, k]``."""
        return _PermuteRows.apply(edges, self.order, self.inverse)

    def from_layered(self, edges: Tensor) -> Tensor:
        """Layered ``[B*E, k]`` → tiled ``[B*E, k]``."""
        return _PermuteRows.apply(edges, self.inverse, self.order)

    def edges(self, x: Tensor, block: LayerBlock) -> Tensor:
        """Rows of ``block`` of a layered edge tensor ``[B*E, k]`` as ``[O, B, I, k]`` (a view)."""
        return x[block.rows].view(block.fan_out, self.batch, block.fan_in, -1)

    def by_target(self, x: Tensor, block: LayerBlock) -> Tensor:
        """Layered edges ``[B*E, k]`` of ``block`` as the ``[O*B]`` matrices ``[I, k]`` of each target (a view)."""
        return x[block.rows].view(block.fan_out * self.batch, block.fan_in, -1)

    def by_source(self, x: Tensor, block: LayerBlock) -> Tensor:
        """Layered edges ``[B*E, k]`` of ``block`` as the ``[B*I]`` matrices ``[O, k]`` of each source (a strided
        view)."""
        return x[block.rows].view(block.fan_out, self.batch * block.fan_in, -1).transpose(0, 1)

    def node_targets(self, x: Tensor, block: LayerBlock) -> Tensor:
        """Node operands of ``block`` ``[O*B, J, w]`` in the order of :meth:`by_target` as ``[O, B, J, w]`` (a view)."""
        return x.unflatten(0, (block.fan_out, self.batch))

    def node_sources(self, x: Tensor, block: LayerBlock) -> Tensor:
        """Node operands of ``block`` ``[B*I, J, w]`` in the order of :meth:`by_source` as ``[B, I, J, w]`` (a view)."""
        return x.unflatten(0, (self.batch, block.fan_in))

    @staticmethod
    def targets(x: Tensor, block: LayerBlock) -> Tensor:
        """Node rows ``[B, N, *s]`` → the targets of ``block`` as ``[O, B, *s]`` (a view)."""
        return x[:, block.targets].transpose(0, 1)

    @staticmethod
    def sources(x: Tensor, block: LayerBlock) -> Tensor:
        """Node rows ``[B, N, *s]`` → the sources of ``block`` as ``[B, I, *s]`` (a view)."""
        return x[:, block.sources]

    @staticmethod
    def head_targets(x: Tensor, block: LayerBlock) -> Tensor:
        """Node rows ``[B, N, J, w]`` → the targets of ``block`` head-major, ``[J, O*B, w]`` (a node-sized copy)."""
        return x[:, block.targets].permute(2, 1, 0, 3).reshape(x.shape[2], -1, x.shape[3])

    @staticmethod
    def head_sources(x: Tensor, block: LayerBlock) -> Tensor:
        """Node rows ``[B, N, J, w]`` → the sources of ``block`` head-major, ``[J, B*I, w]`` (a node-sized copy)."""
        return x[:, block.sources].permute(2, 0, 1, 3).reshape(x.shape[2], -1, x.shape[3])

    @staticmethod
    def add_to_targets(acc: Tensor, values: Tensor, block: LayerBlock) -> None:
        """``acc[:, targets] += values`` for node rows ``acc`` ``[B, N, *s]`` and ``values`` ``[O, B, *s]``."""
        acc[:, block.targets].add_(values.transpose(0, 1))

    @staticmethod
    def add_to_sources(acc: Tensor, values: Tensor, block: LayerBlock) -> None:
        """``acc[:, sources] += values`` for node rows ``acc`` ``[B, N, *s]`` and ``values`` ``[B, I, *s]``."""
        acc[:, block.sources].add_(values)

    def add_head_targets(self, acc: Tensor, values: Tensor, block: LayerBlock) -> None:
        """Inverse of :meth:`head_targets`, accumulated: ``acc`` ``[B, N, J, w]`` += ``values`` ``[J, O*B, w]``."""
        acc[:, block.targets].add_(values.view(values.shape[0], block.fan_out, self.batch, -1).permute(2, 1, 0, 3))

    def add_head_sources(self, acc: Tensor, values: Tensor, block: LayerBlock) -> None:
        """Inverse of :meth:`head_sources`, accumulated: ``acc`` ``[B, N, J, w]`` += ``values`` ``[J, B*I, w]``."""
        acc[:, block.sources].add_(values.view(values.shape[0], self.batch, block.fan_in, -1).permute(1, 2, 0, 3))


class _PermuteRows(torch.autograd.Function):
    """``x[index]`` for a permutation ``index`` whose inverse is ``inverse``; the gradient is ``grad[inverse]`` (a
    gather, where plain autograd would scatter-add into zeros)."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


def _gemm_dtype(x: Tensor) -> torch.dtype:
    """Dtype of the dense projections: the autocast dtype where autocast is on for ``x``'s device, else ``x``'s."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


class LayeredAttention(torch.autograd.Function):
    """Edge-conditioned multi-head attention of every node over its in-edges, out-edges and itself, and the edge
    MLP's edge term.

    The map of :meth:`weightflow.models.blocks.SparseIncidence.attend` applied to the edge terms
    ``(q_e, k_e, v_e)`` of ``ê W_edgeᵀ + b_edge`` = ``[q_e | k_e | v_e | u_e]``, computed without building the
    gathered queries and keys nor ``v_e`` (see the module docstring); ``u_e`` (the edge term of the edge MLP) comes
    out of the same GEMM as ``q_e, k_e``, so that the gradient of ``ê`` is assembled by one GEMM as well.

    Inputs: ``normed`` ``ê`` ``[R, d]`` (``R = B*E`` rows in the layered order), ``node_qkv`` ``[B*N, 2k + d]``
    (the node terms ``qn, kn, vn`` of queries, keys and values), ``weight`` ``[2k + d + h, d]`` and ``bias``
    ``[2k + d + h]`` (the edge projection ``W_edge, b_edge``), the :class:`LayeredIncidence` and the number of heads
    ``H``.  Outputs: the attention ``[B*N, d]`` and ``u_e`` ``[R, h]``; per head ``h`` (key chunk ``c = k/H``, value
    chunk ``d/H``, ``τ = c^{-1/2}``)

        out_n^h = Σ_{m ∈ nb(n) ∪ {n}} α_nm^h value_nm^h,   α_n·^h = softmax_m(τ <query_nm, key_nm>_h)

    where the message over edge ``e`` between ``n`` and ``m`` has query ``qn_n + b_q + q_e``, key
    ``kn_m + b_k + k_e`` and value ``vn_m + b_v + v_e``, and the self-loop has ``qn_n``, ``kn_n``, ``vn_n``.

    Saved for backward:
        ``ê`` ``[R, d]`` — the operand of every edge contraction and of ``dW_edge``, and its autocast copy when the
        GEMMs run in another dtype;
        ``[q_e | k_e | u_e]`` ``[R, 2k + h]`` — the factors of the quadratic term ``<q_e, k_e>_h``, whose gradient
        needs each of them (recomputing would cost a GEMM; ``u_e`` is the edge MLP's input and shares the buffer);
        ``α_t``, ``α_s`` ``[R, H]`` (at least float32) — each edge's weight in its target's softmax (the target
        attending to the source) and in its source's; ``α_self`` ``[B, N, H]``;
        ``A`` per block, ``[O*B, H, d]`` and ``[B*I, H, d]`` — the α-weighted sums of ``ê`` at each target and
        source, node-sized: ``dW_v^h = Σ_n dout_n^h ⊗ A_n^h``;
        ``node_qkv``, ``weight``, ``bias`` (node-sized): ``q̃, k̃, ṽ, P, R`` are recomputed from them.
    """

    @staticmethod
    def forward(
        ctx, normed: Tensor, node_qkv: Tensor, weight: Tensor, bias: Tensor, incidence: LayeredIncidence, heads: int
    ) -> tuple[Tensor, Tensor]:
        gemm = _gemm_dtype(normed)
        with torch.autocast(normed.device.type, enabled=False):
            node_qkv, weight, bias = (x.to(normed.dtype) for x in (node_qkv, weight, bias))
            normed_gemm = normed.to(gemm)
            out, edge_term, saved = _attention_forward(normed, normed_gemm, node_qkv, weight, bias, incidence, heads)
        ctx.incidence, ctx.heads = incidence, heads
        ctx.save_for_backward(normed, normed_gemm, node_qkv, weight, bias, *saved)
        return out, edge_term

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor, grad_edge_term: Tensor) -> tuple[Tensor | None, ...]:
        normed, *tensors = ctx.saved_tensors
        with torch.autocast(normed.device.type, enabled=False):
            grads = _attention_backward(
                grad.to(normed.dtype), grad_edge_term, normed, *tensors, incidence=ctx.incidence, heads=ctx.heads
            )
        return (*grads, None, None)


class _NodeTerms:
    """Per-head node terms of one attention call and the weights that map them (``H`` heads, key chunk ``c = k/H``,
    value chunk ``d/H``).

    ``qn, kn, vn`` ``[B, N, H, ·]``: the self-loop's query, key and value; ``q, k, v``: the same plus the edge
    biases ``b_q, b_k, b_v`` (``q̃, k̃, ṽ``, the node part of every edge message); ``qk`` ``[B, N, 2k]`` =
    ``[q | k]`` as node rows, ``qk_heads`` its view ``[B, N, 2H, c]``; ``w_v`` ``[H, d/H, d]`` and
    ``w_kq = [W_k | W_q]`` ``[2H, c, d]`` per head, so that ``bmm`` of head-major node terms gives ``G = W_vᵀ dout``
    and ``[P | R]`` (``P^h = (W_k^h)ᵀ q^h``, ``R^h = (W_q^h)ᵀ k^h``); ``w_gpr = [W_v | W_k | W_q]`` and
    ``w_prg = [W_k | W_q | W_v]`` ``[3H, max(c, d/H), d]`` (zero-padded rows) give ``[G | P | R]`` and
    ``[P | R | G]`` in one product of :meth:`stack` ed terms.  ``w_gemm`` ``[2k + h, d]`` =
    ``[W_q; W_k; W_u]`` and ``b_u`` in the GEMM dtype: the edge projection less its value rows;
    ``head_sum`` ``[k, H]`` (0/1, GEMM dtype) sums each head's ``c`` coordinates by a matrix product (no
    reduction over a strided inner axis).
    """

    def __init__(
        self, node_qkv: Tensor, weight: Tensor, bias: Tensor, incidence: LayeredIncidence, heads: int, gemm: torch.dtype
    ) -> None:
        width = weight.shape[1]
        self.key_width = (node_qkv.shape[1] - width) // 2
        self.sizes = [self.key_width, self.key_width, width, weight.shape[0] - 2 * self.key_width - width]
        shape = (incidence.batch, incidence.num_nodes, heads, -1)
        self.qn, self.kn, self.vn = (x.reshape(shape) for x in node_qkv.split(self.sizes[:3], -1))
        b_q, b_k, b_v, b_u = bias.split(self.sizes)
        w_q, w_k, w_v, w_u = weight.split(self.sizes)
        self.q, self.k = self.qn + b_q.view(heads, -1), self.kn + b_k.view(heads, -1)
        self.v = self.vn + b_v.view(heads, -1)
        self.qk_heads = torch.cat([self.q, self.k], 2)
        self.qk = self.qk_heads.flatten(2)
        self.w_v = w_v.view(heads, -1, width)
        self.w_kq = torch.cat([w_k, w_q]).view(2 * heads, -1, width)
        self.inner = max(self.w_v.shape[1], self.w_kq.shape[1])
        self.w_gemm = torch.cat([w_q, w_k, w_u]).to(gemm)
        self.b_u = b_u.to(gemm)
        eye = torch.eye(heads, dtype=gemm, device=weight.device)
        self.head_sum = eye.repeat_interleave(self.key_width // heads, dim=0)

    @cached_property
    def w_gpr(self) -> Tensor:
        """``[W_v | W_k | W_q]`` ``[3H, inner, d]``, rows zero-padded to the common inner width."""
        return torch.cat([self._padded(self.w_v), self._padded(self.w_kq)])

    @cached_property
    def w_prg(self) -> Tensor:
        """``[W_k | W_q | W_v]`` ``[3H, inner, d]``, rows zero-padded to the common inner width."""
        return torch.cat([self._padded(self.w_kq), self._padded(self.w_v)])

    def _padded(self, weight: Tensor) -> Tensor:
        return F.pad(weight, (0, 0, 0, self.inner - weight.shape[1]))

    def stack(self, *parts: Tensor) -> Tensor:
        """Head-major node terms ``[J_i, M, w_i]`` zero-padded to the common inner width and stacked, the left
        operand of ``w_gpr`` / ``w_prg``."""
        return torch.cat([F.pad(x, (0, self.inner - x.shape[-1])) for x in parts])


def _node_pairs(at_targets: Tensor, at_sources: Tensor) -> Tensor:
    """Per-head dot products of every target-source pair of a block: ``[..., O, B, H, w]`` and ``[..., B, I, H, w]``
    → ``[..., O, B, I, H]`` (one batched product over ``(b, h)``; a permuted view)."""
    lead = tuple(range(at_targets.dim() - 4))
    n = len(lead)
    left = at_targets.permute(*lead, n + 1, n + 2, n, n + 3)  # [..., B, H, O, w]
    right = at_sources.permute(*lead, n, n + 2, n + 3, n + 1)  # [..., B, H, w, I]
    return torch.matmul(left, right).permute(*lead, n + 2, n, n + 3, n + 1)


def _sum_to_targets(edge: Tensor, at_sources: Tensor) -> Tensor:
    """``Σ_i edge[..., o, b, i, h] x[..., b, i, h, :]`` for ``edge`` ``[..., O, B, I, H]`` and node terms at the
    sources ``[..., B, I, H, w]`` → ``[..., O, B, H, w]`` (a permuted view)."""
    lead = tuple(range(edge.dim() - 4))
    n = len(lead)
    left = edge.permute(*lead, n + 1, n + 3, n, n + 2)  # [..., B, H, O, I]
    right = at_sources.permute(*lead, n, n + 2, n + 1, n + 3)  # [..., B, H, I, w]
    return torch.matmul(left, right).permute(*lead, n + 2, n, n + 1, n + 3)


def _sum_to_sources(edge: Tensor, at_targets: Tensor) -> Tensor:
    """``Σ_o edge[..., o, b, i, h] x[..., o, b, h, :]`` for ``edge`` ``[..., O, B, I, H]`` and node terms at the
    targets ``[..., O, B, H, w]`` → ``[..., B, I, H, w]`` (a permuted view)."""
    lead = tuple(range(edge.dim() - 4))
    n = len(lead)
    left = edge.permute(*lead, n + 1, n + 3, n + 2, n)  # [..., B, H, I, O]
    right = at_targets.permute(*lead, n + 1, n + 2, n, n + 3)  # [..., B, H, O, w]
    return torch.matmul(left, right).permute(*lead, n, n + 2, n + 1, n + 3)


def _attention_forward(
    normed: Tensor,
    normed_gemm: Tensor,
    node_qkv: Tensor,
    weight: Tensor,
    bias: Tensor,
    incidence: LayeredIncidence,
    heads: int,
) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """Scores, neighbourhood softmax and values of :class:`LayeredAttention` (no autograd); the scores' and the
    values' edge passes run in :mod:`~weightflow.models.attention_kernels` where :func:`~.attention_kernels.usable`."""
    inc, batch, width = incidence, incidence.batch, normed.shape[1]
    nt = _NodeTerms(node_qkv, weight, bias, inc, heads, normed_gemm.dtype)
    key_width = nt.key_width
    usable = attention_kernels.usable(width, key_width, heads, normed, normed_gemm, node_qkv)
    ops = attention_kernels.load() if usable else None
    scale = (key_width // heads) ** -0.5
    projected = normed_gemm @ nt.w_gemm.t()  # [R, 2k + h] = [q_e | k_e | u_e]
    projected[:, 2 * key_width:].add_(nt.b_u)  # the only bias (on q, k: the node terms); addmm would copy [R, 2k + h]
    qk = projected[:, : 2 * key_width]  # no biases: they are on the node terms
    softmax_dtype = torch.promote_types(normed.dtype, torch.float32)  # scores and α: float32 or wider
    self_score = (nt.qn * nt.kn).sum(-1, dtype=softmax_dtype).mul_(scale)  # [B, N, H]
    # raw scores, then exp(score - max) in place, then α; t: the target attends to the source, s: the reverse
    alpha_t = torch.empty((normed.shape[0], heads), dtype=softmax_dtype, device=normed.device)
    alpha_s = torch.empty_like(alpha_t)
    quad = None if ops else torch.mul(qk[:, :key_width], qk[:, key_width:]) @ nt.head_sum  # <q_e, k_e>_h, [R, H]
    top = self_score.clone()  # per-node maximum, for a stable softmax
    for block in inc.blocks:
        pr_t = torch.bmm(inc.head_targets(nt.qk_heads, block), nt.w_kq)  # [2H, O*B, d]: P, R of each target
        pr_s = torch.bmm(inc.head_sources(nt.qk_heads, block), nt.w_kq)  # [2H, B*I, d]: P, R of each source
        score_t, score_s = alpha_t[block.rows], alpha_s[block.rows]
        if ops is not None:  # one pass over the block's edges, the running maximum into top
            ops.scores(inc.edges(normed, block), qk[block.rows], inc.node_targets(pr_t.transpose(0, 1), block),
                       inc.node_sources(pr_s.transpose(0, 1), block), nt.qk, score_t, score_s, top,
                       block.targets.start, block.sources.start, heads, scale)
        else:
            _block_scores(normed, quad, pr_t, pr_s, score_t, score_s, nt, inc, block, heads, scale)
            by_target = inc.edges(alpha_t, block).amax(2).transpose(0, 1)
            top[:, block.targets] = torch.maximum(top[:, block.targets], by_target)
            top[:, block.sources] = torch.maximum(top[:, block.sources], inc.edges(alpha_s, block).amax(0))
    alpha_self = (self_score - top).exp_()
    total = alpha_self.clone()
    for block in inc.blocks:
        if ops is not None:
            ops.softmax_exp(alpha_t[block.rows], alpha_s[block.rows], top, total, block.fan_out, block.fan_in,
                            block.targets.start, block.sources.start)
            continue
        score_t, score_s = inc.edges(alpha_t, block), inc.edges(alpha_s, block)
        score_t.sub_(inc.targets(top, block).unsqueeze(2)).exp_()
        score_s.sub_(inc.sources(top, block).unsqueeze(0)).exp_()
        inc.add_to_targets(total, score_t.sum(2), block)
        inc.add_to_sources(total, score_s.sum(0), block)
    inv_total = total.reciprocal_()
    alpha_self.mul_(inv_total)
    # values: Σ_e α^h ṽ_m (node part) and W_v^h A^h with A^h = Σ_e α^h ê_e (edge part), per target and source
    values = (alpha_self.to(normed.dtype).unsqueeze(-1) * nt.vn).contiguous()  # [B, N, H, d/H]
    w_v = nt.w_v.transpose(1, 2)  # [H, d, d/H]
    mixes = []
    for block in inc.blocks:
        if ops is not None:  # α normalized in place, A_t [O*B, H, d], A_s [B*I, H, d] and the node part, one pass
            mix_t = normed.new_empty(block.fan_out * batch, heads, width)
            mix_s = normed.new_empty(batch * block.fan_in, heads, width)
            ops.values(inc.edges(normed, block), alpha_t[block.rows], alpha_s[block.rows], inv_total,
                       nt.v.contiguous(), values, inc.node_targets(mix_t, block), inc.node_sources(mix_s, block),
                       block.targets.start, block.sources.start, heads)
        else:
            mix_t, mix_s = _block_values(normed, alpha_t, alpha_s, inv_total, values, nt, inc, block, heads)
        inc.add_head_targets(values, torch.bmm(mix_t.transpose(0, 1), w_v), block)  # mix_t [O*B, H, d]
        inc.add_head_sources(values, torch.bmm(mix_s.transpose(0, 1), w_v), block)  # mix_s [B*I, H, d]
        mixes += [mix_t, mix_s]
    edge_term = projected[:, 2 * key_width:]
    return values.view(node_qkv.shape[0], width), edge_term, (projected, alpha_t, alpha_s, alpha_self, *mixes)


def _block_scores(
    normed: Tensor,
    quad: Tensor,
    pr_t: Tensor,
    pr_s: Tensor,
    score_t: Tensor,
    score_s: Tensor,
    nt: _NodeTerms,
    inc: LayeredIncidence,
    block: LayerBlock,
    heads: int,
    scale: float,
) -> None:
    """The ATen path of one block's scores (``scores`` in :mod:`~weightflow.models.attention_kernels`):
    ``score_t = τ (<P_t + R_s, ê> + <q_e, k_e> + <q_t, k_s>)``, ``score_s = τ (<R_t + P_s, ê> + <q_e, k_e> +
    <k_t, q_s>)`` into the block's rows ``[O*B*I, H]``, from ``[P | R]`` per target and source (``pr_t``, ``pr_s``
    ``[2H, ·, d]``) and ``quad`` ``[R, H]`` = ``<q_e, k_e>_h``."""
    batch = inc.batch
    by_target = torch.bmm(inc.by_target(normed, block), pr_t.permute(1, 2, 0))  # [O*B, I, 2H]
    by_target = by_target.view(block.fan_out, batch, block.fan_in, -1)  # [<P_tgt, ê> | <R_tgt, ê>]
    by_source = torch.bmm(inc.by_source(normed, block), pr_s.permute(1, 2, 0))  # [B*I, O, 2H]
    by_source = by_source.view(batch, block.fan_in, block.fan_out, -1).permute(2, 0, 1, 3)
    # node-node terms <q_tgt, k_src> and <k_tgt, q_src> in one batched product
    node_t = inc.targets(nt.qk, block).unflatten(2, (2, heads, -1))
    node_s = inc.sources(nt.qk, block).unflatten(2, (2, heads, -1)).flip(2)
    node_node = _node_pairs(node_t.movedim(2, 0), node_s.movedim(2, 0))
    quad_block = inc.edges(quad, block)
    score_t, score_s = (x.view(block.fan_out, batch, block.fan_in, heads) for x in (score_t, score_s))
    torch.add(by_target[..., :heads], by_source[..., heads:], out=score_t)
    score_t.add_(quad_block).add_(node_node[0]).mul_(scale)
    torch.add(by_target[..., heads:], by_source[..., :heads], out=score_s)
    score_s.add_(quad_block).add_(node_node[1]).mul_(scale)


def _block_values(
    normed: Tensor,
    alpha_t: Tensor,
    alpha_s: Tensor,
    inv_total: Tensor,
    values: Tensor,
    nt: _NodeTerms,
    inc: LayeredIncidence,
    block: LayerBlock,
    heads: int,
) -> tuple[Tensor, Tensor]:
    """The ATen path of one block's values (``values`` in :mod:`~weightflow.models.attention_kernels`): normalizes
    ``α`` in place, adds the node part ``Σ α ṽ`` to ``values`` and returns ``A_t`` ``[O*B, H, d]``, ``A_s``
    ``[B*I, H, d]``."""
    a_t, a_s = inc.edges(alpha_t, block), inc.edges(alpha_s, block)
    a_t.mul_(inc.targets(inv_total, block).unsqueeze(2))
    a_s.mul_(inc.sources(inv_total, block).unsqueeze(0))
    a_t, a_s = a_t.to(normed.dtype), a_s.to(normed.dtype)
    mix_t = torch.bmm(a_t.view(-1, block.fan_in, heads).transpose(1, 2), inc.by_target(normed, block))
    mix_s = torch.bmm(a_s.view(block.fan_out, -1, heads).permute(1, 2, 0), inc.by_source(normed, block))
    inc.add_to_targets(values, _sum_to_targets(a_t, inc.sources(nt.v, block)), block)
    inc.add_to_sources(values, _sum_to_sources(a_s, inc.targets(nt.v, block)), block)
    return mix_t, mix_s


def _attention_backward(
    grad: Tensor,
    grad_edge_term: Tensor,
    normed: Tensor,
    normed_gemm: Tensor,
    node_qkv: Tensor,
    weight: Tensor,
    bias: Tensor,
    projected: Tensor,
    alpha_t: Tensor,
    alpha_s: Tensor,
    alpha_self: Tensor,
    *mixes: Tensor,
    incidence: LayeredIncidence,
    heads: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of :class:`LayeredAttention` w.r.t. ``normed``, ``node_qkv``, ``weight``, ``bias``.

    With ``G_n^h = (W_v^h)ᵀ dout_n^h``: ``dα_e^h = <dout_n^h, ṽ_m^h> + <G_n^h, ê_e>`` (:func:`_weight_gradients`);
    the softmax gives the score gradients ``σ = τ α (dα − Σ_nb α dα)``; then ``dê_e = [d q_e | d k_e | d u_e]
    [W_q; W_k; W_u]`` (one GEMM, with ``d<q_e, k_e>_h = σ_t + σ_s``) ``+ Σ_h α_t G_tgt + σ_t P_tgt + σ_s R_tgt``
    (one batched product per target) ``+ σ_s P_src + σ_t R_src + α_s G_src`` (one per source)
    (:func:`_score_gradients`).

    On the ATen path every buffer derives from the incoming gradients and no op writes through ``out=``, so that the
    function also runs under ``torch.autograd.grad(..., is_grads_batched=True)`` (a vmapped backward pass: the
    likelihoods' divergences use it); the kernels run only on plain tensors (:func:`.attention_kernels.usable`).
    """
    inc, width = incidence, normed.shape[1]
    nt = _NodeTerms(node_qkv, weight, bias, inc, heads, normed_gemm.dtype)
    key_width = nt.key_width
    scale = (key_width // heads) ** -0.5
    grad = grad.view(nt.vn.shape)  # [B, N, H, d/H]
    usable = attention_kernels.usable(width, nt.key_width, heads, normed, grad, grad_edge_term, normed_gemm, alpha_t)
    ops = attention_kernels.load() if usable else None
    d_alpha_self = (grad * nt.vn).sum(-1, dtype=alpha_self.dtype)
    dot = alpha_self * d_alpha_self  # Σ_nb α dα per node, completed by _weight_gradients
    d_alpha_t, d_alpha_s, d_v, grad_w_v, operands = _weight_gradients(
        grad, normed, alpha_t, alpha_s, mixes, dot, nt, inc, heads, ops
    )
    # softmax: dα → σ = τ α (dα − Σ_nb α dα), in place
    sigma_self = (d_alpha_self - dot).mul_(alpha_self).mul_(scale)
    for block in inc.blocks:
        inc.edges(d_alpha_t, block).sub_(inc.targets(dot, block).unsqueeze(2))
        inc.edges(d_alpha_s, block).sub_(inc.sources(dot, block).unsqueeze(0))
    sigma_t, sigma_s = d_alpha_t.mul_(alpha_t).mul_(scale), d_alpha_s.mul_(alpha_s).mul_(scale)
    # quadratic term <q_e, k_e>_h: its gradient σ_t + σ_s reaches q_e through k_e and k_e through q_e
    if ops is not None:  # [dq_e | dk_e | du_e] in one pass over the rows
        d_projected = ops.edge_gradients(projected, sigma_t, sigma_s, grad_edge_term.contiguous(), key_width, heads)
    else:
        sigma = (sigma_t + sigma_s).to(projected.dtype) @ nt.head_sum.t()  # [R, k]
        q_e, k_e = projected[:, :key_width], projected[:, key_width:2 * key_width]
        d_projected = torch.cat([k_e * sigma, q_e * sigma, grad_edge_term.to(projected.dtype)], 1)
    d_normed = (d_projected @ nt.w_gemm).to(normed.dtype)
    grad_w_gemm = (d_projected.t() @ normed_gemm).to(weight.dtype)
    d_qk, grad_w_kq = _score_gradients(
        d_normed, grad, normed, alpha_t, alpha_s, sigma_t, sigma_s, operands, nt, inc, heads, ops
    )
    # assembly: the edge projection's rows [W_q; W_k; W_v; W_u], the node terms [qn | kn | vn], the biases
    grad_w_q, grad_w_k, grad_w_u = grad_w_gemm.split([key_width, key_width, nt.sizes[3]])
    through_p, through_r = grad_w_kq.reshape(-1, width).chunk(2)  # P = W_kᵀ q̃ and R = W_qᵀ k̃ per head
    grad_w_q, grad_w_k = grad_w_q + through_r, grad_w_k + through_p
    d_q, d_k = d_qk.view(*nt.q.shape[:2], 2, heads, -1).unbind(2)
    sigma_self = sigma_self.to(normed.dtype).unsqueeze(-1)
    d_qn, d_kn = d_q + sigma_self * nt.kn, d_k + sigma_self * nt.qn
    d_vn = d_v + alpha_self.to(normed.dtype).unsqueeze(-1) * grad
    d_node_qkv = torch.cat([x.reshape(*x.shape[:2], -1) for x in (d_qn, d_kn, d_vn)], -1).view(node_qkv.shape)
    d_weight = torch.cat([grad_w_q, grad_w_k, grad_w_v.reshape(-1, width), grad_w_u])
    d_bias = torch.cat([*(x.sum((0, 1)).reshape(-1) for x in (d_q, d_k, d_v)), grad_edge_term.sum(0).to(bias.dtype)])
    return d_normed, d_node_qkv, d_weight, d_bias


def _weight_gradients(
    grad: Tensor,
    normed: Tensor,
    alpha_t: Tensor,
    alpha_s: Tensor,
    mixes: tuple[Tensor, ...],
    dot: Tensor,
    nt: _NodeTerms,
    inc: LayeredIncidence,
    heads: int,
    ops: object | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, list[tuple[Tensor, Tensor, Tensor, Tensor]]]:
    """The values' side of the backward pass, per block: the gradients of the attention weights
    ``dα = <dout_n, ṽ_m> + <G_n, ê_e>`` (``d_alpha_t``, ``d_alpha_s`` ``[R, H]``), of the values' node terms
    ``d_v`` ``[B, N, H, d/H]`` and of ``W_v`` (``Σ_n dout_n^h ⊗ A_n^h``, ``[H, d/H, d]``); adds ``Σ_nb α dα`` to
    ``dot`` in place.  Also returns, per block, the node operands the score gradients need: ``[G | P | R]`` of each
    target, ``[P | R | G]`` of each source and the head-major ``[q | k]`` of both.  ``ops``: the compiled kernels
    (``d_alpha``) or ``None`` for ATen ops."""
    d_v = grad.new_zeros(nt.v.shape)
    grad_w_v, d_alphas, operands = 0, ([], []), []
    if ops is not None:
        d_alpha_t, d_alpha_s, values = torch.empty_like(alpha_t), torch.empty_like(alpha_s), nt.v.contiguous()
    for block, mix_t, mix_s in zip(inc.blocks, mixes[::2], mixes[1::2]):
        grad_t, grad_s = inc.head_targets(grad, block), inc.head_sources(grad, block)  # [H, O*B | B*I, d/H]
        grad_w_v = grad_w_v + torch.bmm(grad_t.transpose(1, 2), mix_t.transpose(0, 1))
        grad_w_v = grad_w_v + torch.bmm(grad_s.transpose(1, 2), mix_s.transpose(0, 1))
        # node operands, one batched product each: [G | P | R] of each target, [P | R | G] of each source
        qk_t, qk_s = inc.head_targets(nt.qk_heads, block), inc.head_sources(nt.qk_heads, block)
        x_t = torch.bmm(nt.stack(grad_t, qk_t), nt.w_gpr).transpose(0, 1)  # [O*B, 3H, d]
        x_s = torch.bmm(nt.stack(qk_s, grad_s), nt.w_prg).transpose(0, 1)  # [B*I, 3H, d]
        operands.append((x_t, x_s, qk_t, qk_s))
        if ops is not None:  # dα, Σ α dα and d_v in one pass over the block's edges
            rows = block.rows
            g_t, g_s = inc.node_targets(x_t[:, :heads], block), inc.node_sources(x_s[:, 2 * heads:], block)
            ops.d_alpha(inc.edges(normed, block), g_t, g_s, grad, values, alpha_t[rows], alpha_s[rows],
                        d_alpha_t[rows], d_alpha_s[rows], dot, d_v, block.targets.start, block.sources.start, heads)
        else:
            da_t, da_s = _block_d_alpha(grad, normed, alpha_t, alpha_s, x_t, x_s, dot, d_v, nt, inc, block, heads)
            d_alphas[0].append(da_t)
            d_alphas[1].append(da_s)
    if ops is None:
        d_alpha_t, d_alpha_s = (torch.cat(pieces).to(alpha_t.dtype) for pieces in d_alphas)  # [R, H]
    return d_alpha_t, d_alpha_s, d_v, grad_w_v, operands


def _block_d_alpha(
    grad: Tensor,
    normed: Tensor,
    alpha_t: Tensor,
    alpha_s: Tensor,
    x_t: Tensor,
    x_s: Tensor,
    dot: Tensor,
    d_v: Tensor,
    nt: _NodeTerms,
    inc: LayeredIncidence,
    block: LayerBlock,
    heads: int,
) -> tuple[Tensor, Tensor]:
    """The ATen path of one block's ``dα_t``, ``dα_s`` (returned, ``[O*B*I, H]``) with ``Σ α dα`` added to ``dot``
    and ``Σ α dout`` to ``d_v`` (``d_alpha`` in :mod:`~weightflow.models.attention_kernels`)."""
    batch = inc.batch
    a_t, a_s = inc.edges(alpha_t, block), inc.edges(alpha_s, block)
    # dα: <G, ê> on each side, plus <dout_tgt, ṽ_src> and <ṽ_tgt, dout_src> in one batched product
    shape = (block.fan_out, batch, block.fan_in, heads)
    node_t = torch.stack([inc.targets(grad, block), inc.targets(nt.v, block)])  # [2, O, B, H, d/H]
    node_s = torch.stack([inc.sources(nt.v, block), inc.sources(grad, block)])  # [2, B, I, H, d/H]
    node_node = _node_pairs(node_t, node_s)
    da_t = torch.bmm(inc.by_target(normed, block), x_t[:, :heads].transpose(1, 2)).view(shape) + node_node[0]
    da_s = torch.bmm(inc.by_source(normed, block), x_s[:, 2 * heads:].transpose(1, 2))
    da_s = da_s.view(batch, block.fan_in, block.fan_out, heads).permute(2, 0, 1, 3) + node_node[1]
    low_t, low_s = a_t.to(normed.dtype), a_s.to(normed.dtype)
    inc.add_to_sources(d_v, _sum_to_sources(low_t, inc.targets(grad, block)), block)
    inc.add_to_targets(d_v, _sum_to_targets(low_s, inc.sources(grad, block)), block)
    inc.add_to_targets(dot, (a_t * da_t).sum(2), block)
    inc.add_to_sources(dot, (a_s * da_s).sum(0), block)
    return da_t.reshape(-1, heads), da_s.reshape(-1, heads)


def _score_gradients(
    d_normed: Tensor,
    grad: Tensor,
    normed: Tensor,
    alpha_t: Tensor,
    alpha_s: Tensor,
    sigma_t: Tensor,
    sigma_s: Tensor,
    operands: list[tuple[Tensor, Tensor, Tensor, Tensor]],
    nt: _NodeTerms,
    inc: LayeredIncidence,
    heads: int,
    ops: object | None,
) -> tuple[Tensor, Tensor]:
    """The scores' side of the backward pass, per block: adds the node operands' part of ``dê``
    (``α_t G_tgt + σ_t P_tgt + σ_s R_tgt + σ_s P_src + σ_t R_src + α_s G_src``) to ``d_normed`` in place and
    returns ``[dq | dk]`` of the node terms ``[B, N, 2k]`` (through the node-node terms and ``P, R``) and the
    gradient of ``[W_k | W_q]`` through ``P, R`` (``[2H, c, d]``).  ``ops``: the compiled kernels (``score_grads``)
    or ``None`` for ATen ops."""
    d_qk = grad.new_zeros(nt.qk.shape)  # [dq | dk] of the edge messages' node terms
    d_qk_heads = d_qk.view(nt.qk_heads.shape)
    grad_w_kq = 0
    w_kq = nt.w_kq.transpose(1, 2)  # [2H, d, c]
    for block, (x_t, x_s, qk_t, qk_s) in zip(inc.blocks, operands):
        if ops is not None:  # dê, [dP | dR] and the node-node terms' [dq | dk] in one pass over the block's edges
            rows, width = block.rows, normed.shape[1]
            d_pr_t = normed.new_empty(2 * heads, block.fan_out * inc.batch, width)
            d_pr_s = normed.new_empty(2 * heads, inc.batch * block.fan_in, width)
            ops.score_grads(inc.edges(normed, block), inc.edges(d_normed, block), alpha_t[rows], alpha_s[rows],
                            sigma_t[rows], sigma_s[rows], inc.node_targets(x_t, block), inc.node_sources(x_s, block),
                            nt.qk, d_qk, inc.node_targets(d_pr_t.transpose(0, 1), block),
                            inc.node_sources(d_pr_s.transpose(0, 1), block), block.targets.start,
                            block.sources.start, heads)
        else:
            d_pr_t, d_pr_s = _block_score_gradients(
                d_normed, normed, alpha_t, alpha_s, sigma_t, sigma_s, x_t, x_s, d_qk, nt, inc, block, heads
            )
        grad_w_kq = grad_w_kq + torch.bmm(qk_t.transpose(1, 2), d_pr_t) + torch.bmm(qk_s.transpose(1, 2), d_pr_s)
        inc.add_head_targets(d_qk_heads, torch.bmm(d_pr_t, w_kq), block)
        inc.add_head_sources(d_qk_heads, torch.bmm(d_pr_s, w_kq), block)
    return d_qk, grad_w_kq


def _block_score_gradients(
    d_normed: Tensor,
    normed: Tensor,
    alpha_t: Tensor,
    alpha_s: Tensor,
    sigma_t: Tensor,
    sigma_s: Tensor,
    x_t: Tensor,
    x_s: Tensor,
    d_qk: Tensor,
    nt: _NodeTerms,
    inc: LayeredIncidence,
    block: LayerBlock,
    heads: int,
) -> tuple[Tensor, Tensor]:
    """The ATen path of one block's score gradients (``score_grads`` in :mod:`~weightflow.models.attention_kernels`):
    adds to ``d_normed`` and the node-node terms' part to ``d_qk``; returns ``[dP | dR]`` ``[2H, O*B | B*I, d]``."""
    a_t, a_s = inc.edges(alpha_t, block), inc.edges(alpha_s, block)
    sig_t, sig_s = inc.edges(sigma_t, block), inc.edges(sigma_s, block)
    # node-node terms s_t = <q_tgt, k_src>, s_s = <q_src, k_tgt>
    sig = torch.stack([sig_t, sig_s]).to(normed.dtype)  # [2, O, B, I, H]
    node_t = inc.targets(nt.qk, block).unflatten(2, (2, heads, -1))
    node_s = inc.sources(nt.qk, block).unflatten(2, (2, heads, -1))
    d_t = _sum_to_targets(sig, node_s.flip(2).movedim(2, 0))  # [Σ_i σ_t k_src | Σ_i σ_s q_src]
    d_s = _sum_to_sources(sig, node_t.movedim(2, 0))  # [Σ_o σ_t q_tgt | Σ_o σ_s k_tgt] = [dk | dq]
    inc.add_to_targets(d_qk, d_t.movedim(0, 2).reshape(*d_t.shape[1:3], -1), block)
    inc.add_to_sources(d_qk, d_s.flip(0).movedim(0, 2).reshape(*d_s.shape[1:3], -1), block)
    # coefficients per edge [α_t | σ_t | σ_s | σ_t | α_s]: targets take [α_t | σ_t | σ_s] against
    # [G | P | R], sources [σ_s | σ_t | α_s] against [P | R | G]; [σ_t | σ_s] and [σ_s | σ_t] give [dP | dR]
    coef = torch.cat([a_t.expand_as(sig_t), sig_t, sig_s, sig_t, a_s.expand_as(sig_s)], -1).to(normed.dtype)
    coef_t = coef.view(-1, block.fan_in, 5 * heads)  # [O*B, I, 5H]
    coef_s = coef.view(block.fan_out, -1, 5 * heads).transpose(0, 1)  # [B*I, O, 5H]
    d_pr_t = torch.bmm(coef_t[..., heads:3 * heads].transpose(1, 2), inc.by_target(normed, block))
    d_pr_s = torch.bmm(coef_s[..., 2 * heads:4 * heads].transpose(1, 2), inc.by_source(normed, block))
    inc.by_target(d_normed, block).baddbmm_(coef_t[..., :3 * heads], x_t)  # in place: 0.5× add_(bmm) alone
    inc.by_source(d_normed, block).add_(torch.bmm(coef_s[..., 2 * heads:], x_s))
    return d_pr_t.transpose(0, 1), d_pr_s.transpose(0, 1)  # [2H, O*B | B*I, d]


class LayeredEdgeUpdate(torch.autograd.Function):
    """The edge MLP of :class:`weightflow.models.blocks.EdgeUpdate` on the layered order, fused, plus a residual.

    ``out = residual + W_o σ(z) + b_o`` with the pre-activation ``z = u_e + S[source] + T[target]`` ``[R, h]``
    (``σ`` = SiLU; ``u_e = W_u ê_e + b_u`` is the edge term from :class:`LayeredAttention`'s GEMM;
    ``node_terms = [S | T]`` ``[B*N, 2h]``, the node projection; ``residual`` ``[R, d]`` or ``None`` for none).  The
    node terms are added to each block by broadcasting and their gradients are sums over the block's other axis;
    the output GEMM runs in ``u_e``'s dtype and adds the residual when the dtypes agree.

    Saved for backward: ``z`` and ``σ(z)`` ``[R, h]`` (for ``σ'(z)`` and ``dW_o``; plain autograd keeps both too);
    the gathered node terms ``S[source] + T[target]`` are never stored.  ``z, σ(z)`` and, backward, ``σ'(z)`` with
    the node sums run in :mod:`~weightflow.models.attention_kernels` where :func:`~.attention_kernels.usable_edge_mlp`.
    """

    @staticmethod
    def forward(
        ctx,
        edge_term: Tensor,
        node_terms: Tensor,
        w_out: Tensor,
        b_out: Tensor,
        residual: Tensor | None,
        incidence: LayeredIncidence,
    ) -> Tensor:
        dtype = edge_term.dtype
        with torch.autocast(edge_term.device.type, enabled=False):
            node_terms, w_out, b_out = (x.to(dtype) for x in (node_terms, w_out, b_out))
            pre = torch.empty(edge_term.shape, dtype=dtype, device=edge_term.device)
            if attention_kernels.usable_edge_mlp(edge_term.shape[1], edge_term, node_terms):
                hidden, ops = torch.empty_like(pre), attention_kernels.load()
                nodes = node_terms.view(incidence.batch, incidence.num_nodes, -1)
                for block in incidence.blocks:  # pre and SiLU(pre) in one pass
                    ops.edge_mlp(edge_term[block.rows], nodes, pre[block.rows], hidden[block.rows], block.fan_out,
                                 block.fan_in, block.targets.start, block.sources.start)
            else:
                source, target = node_terms.view(incidence.batch, incidence.num_nodes, -1).chunk(2, dim=-1)
                for block in incidence.blocks:
                    z = incidence.edges(pre, block)
                    torch.add(incidence.edges(edge_term, block), incidence.sources(source, block).unsqueeze(0), out=z)
                    z.add_(incidence.targets(target, block).unsqueeze(2))
                hidden = F.silu(pre)
            if residual is not None and residual.dtype == dtype:
                out = torch.addmm(residual, hidden, w_out.t()).add_(b_out)
            else:
                out = torch.addmm(b_out, hidden, w_out.t())
                out = out if residual is None else residual + out
        ctx.incidence, ctx.has_residual = incidence, residual is not None
        ctx.save_for_backward(pre, hidden, w_out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        pre, hidden, w_out = ctx.saved_tensors
        inc = ctx.incidence
        with torch.autocast(pre.device.type, enabled=False):
            grad_update = grad.to(pre.dtype)
            grad_w_out = grad_update.t() @ hidden
            d_hidden = grad_update @ w_out
            d_nodes = d_hidden.new_zeros(inc.batch, inc.num_nodes, 2, pre.shape[1])  # batched under vmap, as d_hidden
            if attention_kernels.usable_edge_mlp(pre.shape[1], pre, d_hidden):
                ops = attention_kernels.load()
                for block in inc.blocks:  # SiLU's backward in place and the node sums, one pass
                    ops.edge_mlp_grad(d_hidden[block.rows], pre[block.rows], d_nodes, block.fan_out, block.fan_in,
                                      block.targets.start, block.sources.start)
                d_pre = d_hidden
            else:
                d_pre = torch.ops.aten.silu_backward(d_hidden, pre)
                for block in inc.blocks:
                    z = inc.edges(d_pre, block)
                    inc.add_to_sources(d_nodes[:, :, 0], z.sum(0), block)
                    inc.add_to_targets(d_nodes[:, :, 1], z.sum(2), block)
        d_nodes = d_nodes.view(inc.batch * inc.num_nodes, -1)
        grad_residual = grad if ctx.has_residual else None
        return d_pre, d_nodes, grad_w_out, grad_update.sum(0), grad_residual, None

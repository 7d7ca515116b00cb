"""Compiled attention kernels (weightflow.models.attention_kernels): the same function as the ATen path of the fused
NG-T attention and the plain-autograd reference, independent of the thread count, never run under vmap.

The kernels are built on first use (g++ and ninja, about a minute).  Where they cannot be built these tests skip with
the reason; CI sets ``WEIGHTFLOW_REQUIRE_KERNELS=1``, which turns that skip into a failure.
"""

from __future__ import annotations

import collections
import math
import os
import threading
import time

import pytest
import torch
import torch.nn.functional as F
from model_checks import assert_fused_matches_reference

from weightflow.align.permutations import apply_permutations, random_permutations
from weightflow.graph import NeuralGraph
from weightflow.models import attention_kernels, build_model
from weightflow.models.blocks import SparseIncidence
from weightflow.models.layered import LayeredAttention, LayeredEdgeUpdate, LayeredIncidence
from weightflow.weights import init_weights

KERNEL_OPS = {"scores", "softmax_exp", "values", "d_alpha", "edge_gradients", "score_grads"}


@pytest.fixture(scope="module")
def ops():
    built = attention_kernels.load()
    if built is None:
        reason = "the attention kernels could not be built here (no C++ compiler or ninja; the log says why)"
        if os.environ.get("WEIGHTFLOW_REQUIRE_KERNELS") == "1":
            pytest.fail(f"WEIGHTFLOW_REQUIRE_KERNELS=1 but {reason}")
        pytest.skip(reason)
    return built


class _Counting:
    """The kernels' op namespace, counting the calls of each op."""

    def __init__(self, ops) -> None:
        self.ops, self.calls = ops, collections.Counter()

    def __getattr__(self, name):
        op = getattr(self.ops, name)

        def counted(*args):
            self.calls[name] += 1
            return op(*args)

        return counted


def _attention(sizes, batch, heads, key_width, width, hidden, mode, monkeypatch, counting=None):
    """Outputs and input gradients of the attention: ``mode`` "reference" (F.linear + SparseIncidence.attend),
    "aten" (the fused function with the kernels off) or "kernels"."""
    graph = NeuralGraph(sizes)
    gen = torch.Generator().manual_seed(0)
    normed = torch.randn(batch * graph.num_edges, width, generator=gen)
    node_qkv = torch.randn(batch * graph.num_nodes, 2 * key_width + width, generator=gen)
    rows = 2 * key_width + width + hidden
    weight = torch.randn(rows, width, generator=gen) / math.sqrt(width)
    bias = torch.randn(rows, generator=gen)
    grad_out = torch.randn(batch * graph.num_nodes, width, generator=gen)
    grad_term = torch.randn(batch * graph.num_edges, hidden, generator=gen)
    inputs = [x.clone().requires_grad_() for x in (normed, node_qkv, weight, bias)]
    edges, qkv, w, b = inputs
    if mode == "reference":
        q, k, v, term = F.linear(edges, w, b).split([key_width, key_width, width, hidden], -1)
        out = SparseIncidence(graph.tiled_edge_index(batch), batch * graph.num_nodes).attend(qkv, (q, k, v), heads)
    else:
        with monkeypatch.context() as patch:
            if mode == "aten":
                patch.setattr(attention_kernels, "usable", lambda *args: False)
            else:
                patch.setattr(attention_kernels, "load", lambda: counting)
            layered = LayeredIncidence(graph, batch)
            out, term = LayeredAttention.apply(layered.to_layered(edges), qkv, w, b, layered, heads)
            term = layered.from_layered(term)
            torch.autograd.backward([out, term], [grad_out, grad_term])
        return [out.detach(), term.detach()] + [x.grad for x in inputs]
    torch.autograd.backward([out, term], [grad_out, grad_term])
    return [out.detach(), term.detach()] + [x.grad for x in inputs]


@pytest.mark.parametrize(
    "sizes, batch, heads, key_width, width, hidden",
    [
        ([3, 5, 4, 2], 3, 2, 16, 16, 5),  # three blocks; a head's keys within one vector of 16
        ([7, 16, 16, 2], 4, 4, 16, 32, 16),  # the default run's NG-T: 4 key coordinates per head
        ([6, 9, 3], 2, 1, 32, 128, 7),  # one head whose keys span two vectors; the widest instance
        ([30, 16, 2], 3, 4, 32, 64, 32),  # benchmark case (a)'s widths
    ],
)
def test_kernels_compute_the_attention_and_its_gradients(ops, monkeypatch, sizes, batch, heads, key_width, width,
                                                           hidden):
    """Forward and backward through every kernel agree with the plain-autograd reference as closely as the ATen
    path does (float32 rounding: sums run in another order), and every kernel ran."""
    counting = _Counting(ops)
    shape = (sizes, batch, heads, key_width, width, hidden)
    reference = _attention(*shape, "reference", monkeypatch)
    aten = _attention(*shape, "aten", monkeypatch)
    kernels = _attention(*shape, "kernels", monkeypatch, counting)
    assert set(counting.calls) == KERNEL_OPS
    names = ["out", "edge term", "d normed", "d node_qkv", "d weight", "d bias"]
    for name, ref, a, k in zip(names, reference, aten, kernels):
        tol = 2e-6 * ref.abs().max().item()
        torch.testing.assert_close(k, ref, rtol=1e-5, atol=tol, msg=name)
        torch.testing.assert_close(a, ref, rtol=1e-5, atol=tol, msg=name)  # the same tolerance holds for ATen


@pytest.mark.parametrize("hidden, residual", [(16, True), (32, False)])
def test_edge_mlp_kernels_compute_the_edge_update_and_its_gradients(ops, monkeypatch, hidden, residual):
    """The edge MLP (pre-activation by broadcasting, SiLU, output GEMM) on its kernels equals its ATen path, forward
    and backward, with and without the residual."""
    sizes, batch, width = [7, 16, 16, 3], 3, 16
    graph = NeuralGraph(sizes)
    layered = LayeredIncidence(graph, batch)
    gen = torch.Generator().manual_seed(2)
    rows, nodes = batch * graph.num_edges, batch * graph.num_nodes
    shapes = [(rows, hidden), (nodes, 2 * hidden), (width, hidden), (width,)] + [(rows, width)] * residual
    tensors = [3 * torch.randn(*shape, generator=gen) for shape in shapes]  # pre-activations well into SiLU's tails
    grad = torch.randn(rows, width, generator=gen)
    counting, results = _Counting(ops), []
    for rule in (lambda *args: False, attention_kernels.usable_edge_mlp):
        with monkeypatch.context() as patch:
            patch.setattr(attention_kernels, "usable_edge_mlp", rule)
            patch.setattr(attention_kernels, "load", lambda: counting)
            inputs = [x.clone().requires_grad_() for x in tensors]
            out = LayeredEdgeUpdate.apply(*inputs, *([] if residual else [None]), layered)
            out.backward(grad)
        results.append([out.detach()] + [x.grad for x in inputs])
    assert counting.calls["edge_mlp"] == counting.calls["edge_mlp_grad"] == len(layered.blocks)
    for aten, kernels in zip(*results):
        torch.testing.assert_close(kernels, aten, rtol=1e-5, atol=2e-6 * aten.abs().max().item())


def _block_inputs(width=32, heads=4, key_width=16, fan_out=5, batch=6, fan_in=7, seed=0):
    """Random inputs of every kernel for one block of a graph with layers [fan_in, fan_out] after 2 input nodes."""
    gen = torch.Generator().manual_seed(seed)
    nodes, t0, s0 = 2 + fan_in + fan_out, 2 + fan_in, 2
    edges = fan_out * batch * fan_in

    def rand(*shape):
        return torch.randn(*shape, generator=gen)

    inputs = dict(
        e=rand(fan_out, batch, fan_in, width), proj=rand(edges, 2 * key_width + 8),
        xt=rand(3 * heads, fan_out, batch, width).permute(1, 2, 0, 3),  # head-major, as the model's
        xs=rand(3 * heads, batch, fan_in, width).permute(1, 2, 0, 3),
        qk=rand(batch, nodes, 2 * key_width), a_t=rand(edges, heads).abs(), a_s=rand(edges, heads).abs(),
        s_t=rand(edges, heads), s_s=rand(edges, heads), top=rand(batch, nodes, heads) + 4,
        grad=rand(batch, nodes, heads, width // heads), v=rand(batch, nodes, heads, width // heads),
        du=rand(edges, 8), de=rand(fan_out, batch, fan_in, width), g_hidden=rand(edges, 16),
    )
    return inputs, (fan_out, batch, fan_in, nodes, t0, s0, heads, key_width, width)


def _run_every_kernel(ops, inputs, geometry):
    """Each kernel once on copies of ``inputs``; every output and accumulator, in order."""
    x = {name: value.clone() for name, value in inputs.items()}
    fan_out, batch, fan_in, nodes, t0, s0, heads, key_width, width = geometry
    score_t, score_s, top = torch.empty_like(x["a_t"]), torch.empty_like(x["a_s"]), x["top"]
    ops.scores(x["e"], x["proj"][:, : 2 * key_width], x["xt"][:, :, : 2 * heads], x["xs"][:, :, : 2 * heads], x["qk"],
               score_t, score_s, top, t0, s0, heads, 0.5)
    total = torch.ones(batch, nodes, heads)
    ops.softmax_exp(score_t, score_s, top, total, fan_out, fan_in, t0, s0)
    values = torch.zeros(batch, nodes, heads, width // heads)
    mix_t, mix_s = torch.empty(fan_out, batch, heads, width), torch.empty(batch, fan_in, heads, width)
    ops.values(x["e"], x["a_t"], x["a_s"], total.reciprocal(), x["v"], values, mix_t, mix_s, t0, s0, heads)
    d_t, d_s = torch.empty_like(x["a_t"]), torch.empty_like(x["a_s"])
    dot, d_v = torch.zeros_like(top), torch.zeros_like(x["v"])
    ops.d_alpha(x["e"], x["xt"][:, :, :heads], x["xs"][:, :, :heads], x["grad"], x["v"], x["a_t"], x["a_s"], d_t, d_s,
                dot, d_v, t0, s0, heads)
    d_proj = ops.edge_gradients(x["proj"][:, : 2 * key_width + 8].contiguous(), x["s_t"], x["s_s"], x["du"], key_width,
                                heads)
    d_qk = torch.zeros_like(x["qk"])
    d_pr_t, d_pr_s = torch.empty(fan_out, batch, 2 * heads, width), torch.empty(batch, fan_in, 2 * heads, width)
    ops.score_grads(x["e"], x["de"], x["a_t"], x["a_s"], x["s_t"], x["s_s"], x["xt"], x["xs"], x["qk"], d_qk, d_pr_t,
                    d_pr_s, t0, s0, heads)
    pre, hidden = torch.empty_like(x["g_hidden"]), torch.empty_like(x["g_hidden"])
    d_nodes = torch.zeros(batch, nodes, 2, 16)
    node_terms = x["qk"][..., :32].contiguous()  # [S | T], h = 16
    ops.edge_mlp(x["proj"][:, :16], node_terms, pre, hidden, fan_out, fan_in, t0, s0)
    d_hidden = x["g_hidden"]
    ops.edge_mlp_grad(d_hidden, pre, d_nodes, fan_out, fan_in, t0, s0)
    return [score_t, score_s, top, total, values, mix_t, mix_s, x["a_t"], x["a_s"], d_t, d_s, dot, d_v, d_proj,
            x["de"], d_qk, d_pr_t, d_pr_s, pre, hidden, d_hidden, d_nodes]


def test_kernels_give_the_same_bytes_on_any_number_of_threads(ops):
    """Every output element is written by one thread in a fixed order: 1 and 2 threads agree bit for bit (and a
    second run reproduces the first)."""
    inputs, geometry = _block_inputs()
    threads = torch.get_num_threads()
    try:
        runs = []
        for count in (1, 2, 2):
            torch.set_num_threads(count)
            runs.append(_run_every_kernel(ops, inputs, geometry))
    finally:
        torch.set_num_threads(threads)
    for one, two, again in zip(*runs):
        assert torch.equal(one, two) and torch.equal(two, again)


def test_softmax_and_values_kernels_against_their_definitions(ops):
    """Closed forms on one block: the running maximum, exp(score − max) with its per-node sums, and the
    α-weighted sums of ê at each target and source."""
    inputs, (fan_out, batch, fan_in, nodes, t0, s0, heads, key_width, width) = _block_inputs(seed=3)
    scores = [torch.randn(fan_out, batch, fan_in, heads, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    score_t, score_s = (x.clone().view(-1, heads) for x in scores)
    top = torch.full((batch, nodes, heads), -1e9)
    top[:, t0:] = torch.maximum(top[:, t0:], scores[0].amax(2).transpose(0, 1))  # targets: over their sources
    top[:, s0:t0] = torch.maximum(top[:, s0:t0], scores[1].amax(0))  # sources: over their targets
    total = torch.zeros(batch, nodes, heads)
    ops.softmax_exp(score_t, score_s, top, total, fan_out, fan_in, t0, s0)
    exp_t = (scores[0] - top[:, t0:].transpose(0, 1).unsqueeze(2)).exp()
    exp_s = (scores[1] - top[:, s0:t0].unsqueeze(0)).exp()
    torch.testing.assert_close(score_t.view_as(exp_t), exp_t)
    torch.testing.assert_close(score_s.view_as(exp_s), exp_s)
    torch.testing.assert_close(total[:, t0:], exp_t.sum(2).transpose(0, 1))
    torch.testing.assert_close(total[:, s0:t0], exp_s.sum(0))
    e, a_t, a_s = inputs["e"], inputs["a_t"].clone(), inputs["a_s"].clone()
    inv = torch.rand(batch, nodes, heads, generator=torch.Generator().manual_seed(4)) + 0.5
    values = torch.zeros(batch, nodes, heads, width // heads)
    mix_t, mix_s = torch.empty(fan_out, batch, heads, width), torch.empty(batch, fan_in, heads, width)
    ops.values(e, a_t, a_s, inv, inputs["v"], values, mix_t, mix_s, t0, s0, heads)
    alpha_t = inputs["a_t"].view(fan_out, batch, fan_in, heads) * inv[:, t0:].transpose(0, 1).unsqueeze(2)
    alpha_s = inputs["a_s"].view(fan_out, batch, fan_in, heads) * inv[:, s0:t0].unsqueeze(0)
    torch.testing.assert_close(a_t.view_as(alpha_t), alpha_t)
    torch.testing.assert_close(mix_t, torch.einsum("obih,obid->obhd", alpha_t, e))
    torch.testing.assert_close(mix_s, torch.einsum("obih,obid->bihd", alpha_s, e))
    v = inputs["v"]
    torch.testing.assert_close(values[:, t0:], torch.einsum("obih,bihw->bohw", alpha_t, v[:, s0:t0]))
    torch.testing.assert_close(values[:, s0:t0], torch.einsum("obih,bohw->bihw", alpha_s, v[:, t0:]))


def test_ops_name_the_argument_they_reject(ops):
    inputs, (fan_out, batch, fan_in, nodes, t0, s0, heads, key_width, width) = _block_inputs()
    mix_t, mix_s = torch.empty(fan_out, batch, heads, width), torch.empty(batch, fan_in, heads, width)
    values = torch.zeros(batch, nodes, heads, width // heads)
    inv = torch.ones(batch, nodes, heads)
    with pytest.raises(RuntimeError, match="edges: expected a contiguous float32"):
        ops.values(inputs["e"].double(), inputs["a_t"], inputs["a_s"], inv, inputs["v"], values, mix_t, mix_s, t0, s0,
                   heads)
    with pytest.raises(RuntimeError, match="edge width 48"):
        ops.values(torch.zeros(fan_out, batch, fan_in, 48), inputs["a_t"], inputs["a_s"], inv, inputs["v"], values,
                   mix_t, mix_s, t0, s0, heads)


def test_usable_only_where_the_kernels_apply(ops):
    x = torch.zeros(4, 32)
    assert attention_kernels.usable(32, 16, 4, x)
    assert not attention_kernels.usable(32, 16, 4, x.double())  # float32 only
    assert not attention_kernels.usable(48, 16, 4, x)  # no instance for this width
    assert not attention_kernels.usable(32, 8, 4, x)  # keys: a multiple of 16
    assert not attention_kernels.usable(32, 16, 3, x)  # heads must divide the widths
    assert not torch.func.vmap(lambda y: torch.tensor(attention_kernels.usable(32, 16, 4, y)))(x).any()


def test_kernels_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("WEIGHTFLOW_KERNELS", "0")
    assert attention_kernels.load.__wrapped__() is None


def test_build_lock_left_by_a_killed_build_is_removed(tmp_path):
    """PyTorch waits on its build lock file without bound: a lock older than the limit is removed, a live one (its
    build finishing) is waited for."""
    lock = tmp_path / "lock"
    lock.touch()
    old = time.time() - 1000
    os.utime(lock, (old, old))
    attention_kernels._wait_for_lock(lock, stale_after_s=300)
    assert not lock.exists()
    lock.touch()
    threading.Timer(0.3, lock.unlink).start()
    start = time.monotonic()
    attention_kernels._wait_for_lock(lock, stale_after_s=300)
    assert time.monotonic() - start >= 0.25 and not lock.exists()


def _ngt(sizes):
    return build_model("ngt", sizes, seed=0, width=32, depth=2, heads=4, time_size=8)


def test_ngt_on_kernels_is_equivariant_and_matches_the_reference(ops):
    """The whole model with the kernels (width 32, 4 heads): outputs and every parameter's gradient agree with the
    plain-autograd reference, and permuting hidden neurons permutes the output."""
    sizes = [4, 5, 6, 3]
    model = _ngt(sizes)
    x = init_weights(sizes, 3, init_std=0.5, bias_std=0.3, generator=torch.Generator().manual_seed(0))
    t = torch.rand(3, generator=torch.Generator().manual_seed(1))
    out = assert_fused_matches_reference(model, x, t)
    perms = random_permutations(3, sizes, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        permuted = model(apply_permutations(x, sizes, perms), t)
    assert (permuted - apply_permutations(out, sizes, perms)).abs().max() <= 1e-5


def test_vmapped_backward_runs_the_aten_path(ops, monkeypatch):
    """The likelihoods' divergences vmap the backward pass (is_grads_batched=True), which a custom op cannot run: the
    attention falls back to ATen there, and the batched products equal one-by-one products on the kernels."""
    sizes = [3, 4, 2]
    model = _ngt(sizes)
    x = init_weights(sizes, 2, init_std=0.5, bias_std=0.3, generator=torch.Generator().manual_seed(0))
    t = torch.rand(2, generator=torch.Generator().manual_seed(1))
    vectors = torch.randn(3, *x.shape, generator=torch.Generator().manual_seed(6))
    counting = _Counting(ops)
    monkeypatch.setattr(attention_kernels, "load", lambda: counting)
    inputs = x.clone().requires_grad_()
    (batched,) = torch.autograd.grad(model(inputs, t), inputs, grad_outputs=vectors, is_grads_batched=True)
    assert counting.calls["d_alpha"] == 0 and counting.calls["scores"] > 0  # forward on kernels, backward on ATen
    for vector, product in zip(vectors, batched):
        inputs = x.clone().requires_grad_()
        (single,) = torch.autograd.grad(model(inputs, t), inputs, grad_outputs=vector)
        torch.testing.assert_close(product, single, rtol=1e-4, atol=1e-5)
    assert counting.calls["d_alpha"] > 0

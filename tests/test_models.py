"""Vector-field models: hidden-neuron permutation equivariance, batch independence, any layout, attention reference."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from model_checks import assert_fused_matches_reference

from weightflow.align.permutations import apply_permutations, random_permutations
from weightflow.graph import NeuralGraph
from weightflow.models import MODELS, build_model
from weightflow.models.blocks import SparseIncidence
from weightflow.models.layered import LayeredAttention, LayeredEdgeUpdate, LayeredIncidence
from weightflow.weights import init_weights

LAYOUTS = [[4, 6, 3], [13, 8, 3], [4, 5, 6, 7, 3]]  # iris / wine sizes; three hidden layers
EQUIVARIANT = ["ngt", "ngt_dense", "pna"]
SMALL = dict(width=16, depth=2, heads=2, time_size=8)


def weights(sizes, num, seed=0):
    return init_weights(sizes, num, init_std=0.5, bias_std=0.3, generator=torch.Generator().manual_seed(seed))


def times(num, seed=1):
    return torch.rand(num, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("sizes", LAYOUTS)
@pytest.mark.parametrize("name", EQUIVARIANT)
def test_permuting_hidden_neurons_permutes_the_output(name, sizes):
    model = build_model(name, sizes, seed=0, **SMALL)
    x, t = weights(sizes, 3), times(3)
    perms = random_permutations(3, sizes, generator=torch.Generator().manual_seed(2))
    assert any(not torch.equal(p, torch.arange(p.shape[1]).expand_as(p)) for p in perms)
    with torch.no_grad():
        out, out_of_permuted = model(x, t), model(apply_permutations(x, sizes, perms), t)
    assert out.shape == x.shape and out.abs().mean() > 1e-2
    assert (out_of_permuted - apply_permutations(out, sizes, perms)).abs().max() <= 1e-5


def test_fourier_lifting_keeps_equivariance():
    sizes = [4, 5, 6, 7, 3]
    model = build_model("ngt", sizes, seed=0, fourier_features=8, fourier_scale=2.0, **SMALL)
    x, t = weights(sizes, 2), times(2)
    perms = random_permutations(2, sizes, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        diff = model(apply_permutations(x, sizes, perms), t) - apply_permutations(model(x, t), sizes, perms)
    assert diff.abs().max() <= 1e-5


def test_flat_mlp_baseline_is_not_equivariant():
    """The same check tells the flat MLP apart: it sees the neuron order."""
    sizes = [4, 6, 3]
    model = build_model("mlp", sizes, seed=0, **SMALL)
    x, t = weights(sizes, 3), times(3)
    perms = random_permutations(3, sizes, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        diff = model(apply_permutations(x, sizes, perms), t) - apply_permutations(model(x, t), sizes, perms)
    assert diff.abs().max() > 1e-3 and not model.equivariant


@pytest.mark.parametrize("name", sorted(MODELS))
def test_outputs_do_not_depend_on_the_rest_of_the_batch(name):
    sizes = [4, 5, 6, 7, 3]
    model = build_model(name, sizes, seed=0, **SMALL)
    x, t = weights(sizes, 4), times(4)
    other = weights(sizes, 4, seed=5)
    other[0] = x[0]
    with torch.no_grad():
        alone = model(x[:1], t[:1])  # batch of one
        together, with_others = model(x, t), model(other, torch.cat([t[:1], times(3, seed=7)]))
    torch.testing.assert_close(together[:1], alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(with_others[:1], alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_parameter_gets_a_gradient(name):
    sizes = [4, 5, 6, 3]
    model = build_model(name, sizes, seed=0, **SMALL)
    x, t = weights(sizes, 2), times(2)
    (model(x, t) ** 2).mean().backward()
    for pname, p in model.named_parameters():
        if pname.startswith("skip.time."):  # behind the skip's zero-initialized output layer: none at the first step
            assert p.grad is None or p.grad.abs().sum() == 0, pname
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname
    torch.optim.SGD(model.parameters(), lr=0.1).step()  # after one step every parameter gets a gradient
    model.zero_grad()
    (model(x, t) ** 2).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


def test_sparse_attention_matches_a_loop_over_neighbourhoods():
    """Each node's attention runs over exactly its in-edges, out-edges and itself, with edge-conditioned q/k/v
    (queries and keys narrower than values)."""
    graph = NeuralGraph([3, 4, 2])
    batch, heads, key_width, width = 2, 2, 4, 6
    incidence = SparseIncidence(graph.tiled_edge_index(batch), batch * graph.num_nodes)
    gen = torch.Generator().manual_seed(0)
    qn, kn, vn = (torch.randn(batch * graph.num_nodes, w, generator=gen) for w in (key_width, key_width, width))
    qe, ke, ve = (torch.randn(batch * graph.num_edges, w, generator=gen) for w in (key_width, key_width, width))
    out = incidence.attend(torch.cat([qn, kn, vn], 1), (qe, ke, ve), heads)
    source, target = incidence.source_index.tolist(), incidence.target_index.tolist()
    dk, dh = key_width // heads, width // heads
    for i in range(batch * graph.num_nodes):
        q = [qn[i]] + [qn[i] + qe[e] for e in range(len(source)) if target[e] == i or source[e] == i]
        k = [kn[i]] + [kn[source[e] if target[e] == i else target[e]] + ke[e] for e in range(len(source)) if i in (source[e], target[e])]
        v = [vn[i]] + [vn[source[e] if target[e] == i else target[e]] + ve[e] for e in range(len(source)) if i in (source[e], target[e])]
        q, k, v = torch.stack(q), torch.stack(k), torch.stack(v)
        assert len(q) == 1 + graph.degree[i % graph.num_nodes]
        expected = []
        for h in range(heads):
            keys = slice(h * dk, (h + 1) * dk)
            alpha = torch.softmax((q[:, keys] * k[:, keys]).sum(-1) / math.sqrt(dk), dim=0)
            expected.append(alpha @ v[:, h * dh:(h + 1) * dh])
        torch.testing.assert_close(out[i], torch.cat(expected))


@pytest.mark.parametrize("name", ["ngt", "ngt_dense"])
def test_ngt_query_key_and_edge_update_widths(name):
    """Defaults: d/2 for the sparse model, d for the dense baseline; explicit widths keep equivariance."""
    sizes = [4, 5, 6, 7, 3]
    default = build_model(name, sizes, seed=0, **SMALL).blocks[0]
    full = 16 if name == "ngt_dense" else 8
    assert default.edge_sizes == [full, full, 16, full]
    model = build_model(name, sizes, seed=0, **dict(SMALL, key_width=4, edge_hidden=12))
    assert model.blocks[0].edge_sizes == [4, 4, 16, 12] and model.blocks[0].edge_update.out.in_features == 12
    x, t = weights(sizes, 2), times(2)
    perms = random_permutations(2, sizes, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        diff = model(apply_permutations(x, sizes, perms), t) - apply_permutations(model(x, t), sizes, perms)
    assert diff.abs().max() <= 1e-5


def test_seed_makes_the_initialization_reproducible():
    state = torch.random.get_rng_state()
    a = build_model("ngt", [4, 6, 3], seed=11, fourier_features=4, **SMALL).state_dict()
    b = build_model("ngt", [4, 6, 3], seed=11, fourier_features=4, **SMALL).state_dict()
    c = build_model("ngt", [4, 6, 3], seed=12, fourier_features=4, **SMALL).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not all(torch.equal(a[key], c[key]) for key in a)


def test_time_is_broadcast_and_inputs_are_checked():
    sizes = [4, 6, 3]
    model = build_model("pna", sizes, seed=0, **SMALL)
    x = weights(sizes, 3)
    with torch.no_grad():
        torch.testing.assert_close(model(x, 0.3), model(x, torch.full((3,), 0.3)))
        assert not torch.allclose(model(x, 0.3), model(x, 0.7))
    with pytest.raises(ValueError, match=r"\[B, 51\]"):
        model(x[:, :-1], 0.3)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("gat", sizes)
    with pytest.raises(TypeError, match="unknown model options"):
        build_model("ngt", sizes, widht=3)


def test_bf16_autocast_is_close_to_float32():
    sizes = [13, 8, 3]
    model = build_model("ngt", sizes, seed=0, **SMALL)
    x, t = weights(sizes, 2), times(2)
    with torch.no_grad():
        full = model(x, t)
        model.bf16 = True
        half = model(x, t)
    assert half.dtype == torch.float32
    assert (half - full).norm() <= 0.05 * full.norm()


# ---- fused NG-T (layered edge order, custom autograd functions) against the plain-autograd reference ----


def _attention_inputs(sizes, batch, key_width, width, hidden, dtype=torch.float32, seed=0):
    """Random normalized edges (tiled order), node terms and edge projection ``[q | k | v | u]`` for the attention."""
    graph = NeuralGraph(sizes)
    gen = torch.Generator().manual_seed(seed)
    normed = torch.randn(batch * graph.num_edges, width, generator=gen, dtype=dtype)
    node_qkv = torch.randn(batch * graph.num_nodes, 2 * key_width + width, generator=gen, dtype=dtype)
    rows = 2 * key_width + width + hidden
    weight = torch.randn(rows, width, generator=gen, dtype=dtype) / math.sqrt(width)
    bias = torch.randn(rows, generator=gen, dtype=dtype)
    return graph, normed, node_qkv, weight, bias


def test_layered_attention_matches_the_sparse_reference():
    """Forward and backward of the fused attention equal plain autograd through F.linear and
    SparseIncidence.attend (keys narrower than values, three blocks of different shapes), and so does its edge term
    for the edge MLP."""
    sizes, batch, heads, key_width, width, hidden = [3, 5, 4, 2], 3, 2, 4, 6, 5
    graph, normed, node_qkv, weight, bias = _attention_inputs(sizes, batch, key_width, width, hidden)
    layered = LayeredIncidence(graph, batch)
    sparse = SparseIncidence(graph.tiled_edge_index(batch), batch * graph.num_nodes)
    gen = torch.Generator().manual_seed(1)
    grad_out = torch.randn(batch * graph.num_nodes, width, generator=gen)
    grad_term = torch.randn(batch * graph.num_edges, hidden, generator=gen)
    results = []
    for fused in (False, True):
        inputs = [x.clone().requires_grad_() for x in (normed, node_qkv, weight, bias)]
        edges, qkv, w, b = inputs
        if fused:
            out, term = LayeredAttention.apply(layered.to_layered(edges), qkv, w, b, layered, heads)
            term = layered.from_layered(term)
        else:
            q, k, v, term = F.linear(edges, w, b).split([key_width, key_width, width, hidden], -1)
            out = sparse.attend(qkv, (q, k, v), heads)
        torch.autograd.backward([out, term], [grad_out, grad_term])
        results.append([out.detach(), term.detach()] + [x.grad for x in inputs])
    for reference, fused in zip(*results):
        torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)


def test_layered_functions_pass_gradcheck():
    """float64 finite differences on a tiny graph: the attention (all four inputs, both outputs), the edge MLP with
    and without the residual, and the row permutation into the layered order."""
    sizes, batch, heads, key_width, width, hidden = [2, 3, 2], 2, 2, 2, 4, 3
    graph, normed, node_qkv, weight, bias = _attention_inputs(sizes, batch, key_width, width, hidden, torch.float64)
    layered = LayeredIncidence(graph, batch)
    inputs = [x.requires_grad_() for x in (normed, node_qkv, weight, bias)]
    assert torch.autograd.gradcheck(lambda *xs: LayeredAttention.apply(*xs, layered, heads), inputs)
    gen = torch.Generator().manual_seed(3)
    shapes = [(batch * graph.num_edges, hidden), (batch * graph.num_nodes, 2 * hidden), (width, hidden), (width,),
              (batch * graph.num_edges, width)]
    mlp = [torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_() for shape in shapes]
    assert torch.autograd.gradcheck(lambda *xs: LayeredEdgeUpdate.apply(*xs, layered), mlp)
    assert torch.autograd.gradcheck(lambda *xs: LayeredEdgeUpdate.apply(*xs, None, layered), mlp[:-1])
    assert torch.autograd.gradcheck(layered.to_layered, mlp[-1:])


@pytest.mark.parametrize("sizes", [[4, 5, 6, 7, 3], [13, 8, 3]])
def test_fused_ngt_matches_the_reference_path(sizes):
    """The whole model: outputs and every parameter's gradient agree between the fused path and fused=False."""
    model = build_model("ngt", sizes, seed=0, **dict(SMALL, key_width=4, edge_hidden=12))
    assert_fused_matches_reference(model, weights(sizes, 3), times(3))


def test_fused_ngt_with_dropout_trains_and_evaluates():
    """Dropout moves the residual out of the fused edge MLP in training; evaluation stays deterministic."""
    sizes = [4, 5, 3]
    model = build_model("ngt", sizes, seed=0, dropout=0.5, **SMALL)
    x, t = weights(sizes, 2), times(2)
    (model(x, t) ** 2).mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), model(x, t))


def test_ngt_state_dict_transfers_to_other_hidden_widths():
    """Architecture transfer: a model built for [6, 9, 3] strictly loads the weights of one built for [6, 4, 3],
    gives finite outputs and stays equivariant on its wider graph."""
    small, wide = [6, 4, 3], [6, 9, 3]
    source = build_model("ngt", small, seed=0, fourier_features=4, **SMALL)
    target = build_model("ngt", wide, seed=1, fourier_features=4, **SMALL)
    target.load_state_dict(source.state_dict(), strict=True)
    x, t = weights(wide, 3), times(3)
    perms = random_permutations(3, wide, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out, out_of_permuted = target(x, t), target(apply_permutations(x, wide, perms), t)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert (out_of_permuted - apply_permutations(out, wide, perms)).abs().max() <= 1e-5


def test_fused_ngt_supports_batched_vector_jacobian_products():
    """The likelihoods' divergences vmap the backward pass (is_grads_batched=True): the fused functions' backward
    runs under it and gives the reference path's vector-Jacobian products."""
    sizes = [3, 4, 2]
    model = build_model("ngt", sizes, seed=0, **SMALL)
    x, t = weights(sizes, 2), times(2)
    vectors = torch.randn(5, *x.shape, generator=torch.Generator().manual_seed(6))
    products = []
    for fused in (False, True):
        model.fused = fused
        inputs = x.clone().requires_grad_()
        (vjp,) = torch.autograd.grad(model(inputs, t), inputs, grad_outputs=vectors, is_grads_batched=True)
        products.append(vjp)
    torch.testing.assert_close(products[1], products[0], rtol=1e-4, atol=1e-5)


def test_compiled_ngt_trains_on_the_reference_path_and_evaluates_fused():
    """NGT.compile compiles the blocks' plain-autograd reference as one graph that they share (fullgraph: no graph
    breaks) and runs it in training mode, with the fused path's outputs and gradients; eval mode keeps the eager fused
    path, whose backward runs under is_grads_batched (a compiled one does not), and an EMA deep copy evaluates the
    same.  The aot_eager backend traces like Inductor without generating C++ (seconds instead of a minute)."""
    from torch._dynamo.utils import counters

    counters.clear()
    sizes = [4, 5, 6, 3]
    eager = build_model("ngt", sizes, seed=0, **SMALL)
    compiled = build_model("ngt", sizes, seed=0, **SMALL)
    compiled.compile(backend="aot_eager", fullgraph=True)
    x, t = weights(sizes, 3), times(3)
    results = []
    for model in (eager, compiled):
        out = model(x, t)
        (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
        results.append((out.detach(), {name: p.grad for name, p in model.named_parameters()}))
    (ref_out, ref_grads), (out, grads) = results
    assert counters["stats"]["unique_graphs"] == 1
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)
    vectors = torch.randn(4, *x.shape, generator=torch.Generator().manual_seed(7))
    products = []
    for model in (eager.eval(), compiled.eval()):
        inputs = x.clone().requires_grad_()
        (vjp,) = torch.autograd.grad(model(inputs, t), inputs, grad_outputs=vectors, is_grads_batched=True)
        products.append(vjp)
    torch.testing.assert_close(products[1], products[0])
    with torch.no_grad():
        torch.testing.assert_close(copy.deepcopy(compiled)(x, t), eager(x, t))
    assert counters["stats"]["unique_graphs"] == 1

"""Vector-field models: hidden-neuron permutation equivariance, batch independence, any layout, attention reference."""

from __future__ import annotations

import math

import pytest
import torch

from weightflow.align.permutations import apply_permutations, random_permutations
from weightflow.graph import NeuralGraph
from weightflow.models import MODELS, build_model
from weightflow.models.blocks import SparseIncidence
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

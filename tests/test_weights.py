"""The flat layout: views, round trips, and the batched forward against nn.Sequential."""

import pytest
import torch

from weightflow.weights import (MLPLayout, accuracy, cross_entropy, flatten, forward, from_sequential,
                                init_weights, to_sequential, unflatten)

LAYOUTS = [[30, 16, 16, 2], [4, 6, 3], [64, 16, 10], [5, 7, 3, 4, 2], [3, 1]]


@pytest.mark.parametrize("sizes", LAYOUTS)
def test_dim_and_offsets(sizes):
    layout = MLPLayout(tuple(sizes))
    assert layout.dim == sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    assert layout.offsets[0][0] == 0 and layout.offsets[-1][2] == layout.dim
    assert int(layout.is_bias.sum()) == sum(sizes[1:])


def test_known_dimensions():
    assert MLPLayout((30, 16, 16, 2)).dim == 802
    assert MLPLayout((784, 10, 10)).dim == 7960


@pytest.mark.parametrize("sizes", LAYOUTS)
def test_forward_matches_sequential(sizes):
    gen = torch.Generator().manual_seed(0)
    flat = init_weights(sizes, 5, init_std=0.5, bias_std=0.3, generator=gen)
    x = torch.randn(11, sizes[0], generator=gen)
    logits = forward(flat, sizes, x)
    assert logits.shape == (5, 11, sizes[-1])
    for i in range(5):
        ref = to_sequential(flat[i], sizes)(x)
        assert (logits[i] - ref).abs().max() <= 1e-5
    # per-network inputs [B, n, in] and a single network [D]
    xb = torch.randn(5, 7, sizes[0], generator=gen)
    per_net = forward(flat, sizes, xb)
    for i in range(5):
        assert (per_net[i] - to_sequential(flat[i], sizes)(xb[i])).abs().max() <= 1e-5
    assert (forward(flat[2], sizes, x) - logits[2]).abs().max() <= 1e-5


@pytest.mark.parametrize("sizes", LAYOUTS)
def test_unflatten_flatten_roundtrip_and_views(sizes):
    flat = torch.randn(3, MLPLayout(tuple(sizes)).dim)
    layers = unflatten(flat, sizes)
    assert [w.shape for w, _ in layers] == [(3, o, i) for i, o in zip(sizes[:-1], sizes[1:])]
    assert torch.equal(flatten(layers), flat)
    layers[0][0][1, 0, 0] = 42.0  # views share memory with flat
    assert flat[1, 0] == 42.0
    seq = to_sequential(flat[1], sizes)
    assert torch.equal(from_sequential(seq), flat[1])
    assert torch.equal(seq[0].weight, layers[0][0][1])  # W is out x in, like nn.Linear


def test_wrong_dimension_is_rejected():
    with pytest.raises(ValueError, match="D=802"):
        forward(torch.zeros(2, 800), [30, 16, 16, 2], torch.zeros(1, 30))
    with pytest.raises(ValueError):
        MLPLayout((4,))


def test_loss_and_accuracy_per_network():
    gen = torch.Generator().manual_seed(1)
    sizes = [4, 6, 3]
    flat = init_weights(sizes, 4, init_std=1.0, generator=gen).requires_grad_(True)
    x, y = torch.randn(20, 4, generator=gen), torch.randint(0, 3, (20,), generator=gen)
    losses = cross_entropy(flat, sizes, x, y)
    for i in range(4):
        ref = torch.nn.functional.cross_entropy(to_sequential(flat[i], sizes)(x), y)
        assert torch.allclose(losses[i], ref, atol=1e-6)
    losses[1].backward()
    assert flat.grad[[0, 2, 3]].abs().max() == 0 and flat.grad[1].abs().max() > 0
    acc = accuracy(flat, sizes, x, y)
    assert torch.allclose(acc, (forward(flat, sizes, x).argmax(-1) == y).float().mean(-1))

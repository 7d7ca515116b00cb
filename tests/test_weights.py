"""The flat layout: views, round trips, and the batched forward against nn.Sequential."""

import pytest
import torch

from weightflow.weights import (MLPLayout, accuracy, cross_entropy, flatten, forward, from_sequential,
                                init_weights, loss_and_accuracy, loss_and_grad, to_sequential, unflatten)

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


@pytest.mark.parametrize("sizes", LAYOUTS)
@pytest.mark.parametrize("shared", [True, False])
def test_loss_and_grad_equals_autograd(sizes, shared):
    """The hand-written backward pass gives the loss and per-network gradient of cross_entropy(...).sum()."""
    gen = torch.Generator().manual_seed(2)
    flat = init_weights(sizes, 4, init_std=0.7, bias_std=0.3, generator=gen, dtype=torch.float64)
    shape = (13, sizes[0]) if shared else (4, 13, sizes[0])
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, sizes[-1], shape[:-1], generator=gen)
    theta = flat.clone().requires_grad_(True)
    loss = cross_entropy(theta, sizes, x, y)
    loss.sum().backward()
    got_loss, got_grad = loss_and_grad(flat, sizes, x, y)
    assert torch.allclose(got_loss, loss.detach(), atol=1e-12)
    assert torch.allclose(got_grad, theta.grad, atol=1e-12)


def test_loss_and_grad_bfloat16_input_layer_is_close():
    gen = torch.Generator().manual_seed(3)
    sizes = [64, 16, 10]
    flat = init_weights(sizes, 6, init_std=0.3, bias_std=0.1, generator=gen)
    x, y = torch.randn(6, 32, 64, generator=gen), torch.randint(0, 10, (6, 32), generator=gen)
    loss, grad = loss_and_grad(flat, sizes, x, y)
    loss16, grad16 = loss_and_grad(flat, sizes, x.bfloat16(), y, matmul_dtype=torch.bfloat16)
    assert loss16.dtype == grad16.dtype == torch.float32
    assert (loss16 - loss).abs().max() < 0.02 * loss.abs().max()
    assert (grad16 - grad).norm() < 0.02 * grad.norm()


@pytest.mark.parametrize("sizes", LAYOUTS)
def test_loss_and_accuracy_equals_cross_entropy_and_argmax_accuracy(sizes):
    gen = torch.Generator().manual_seed(4)
    flat = init_weights(sizes, 5, init_std=0.7, bias_std=0.3, generator=gen)
    flat[0] = 0.0  # constant logits: every class ties, argmax (and accuracy) takes class 0
    x, y = torch.randn(50, sizes[0], generator=gen), torch.randint(0, sizes[-1], (50,), generator=gen)
    loss, acc = loss_and_accuracy(flat, sizes, x, y, chunk=16)  # several chunks of examples
    assert torch.allclose(loss, cross_entropy(flat, sizes, x, y), atol=1e-5)
    assert torch.equal(acc, accuracy(flat, sizes, x, y))
    assert acc[0] == (y == 0).float().mean()

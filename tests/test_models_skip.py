"""The time-gated affine skip: zero at initialization, the exact Gaussian field, equivariance when tied per layer."""

from __future__ import annotations

import torch

from weightflow.align.permutations import apply_permutations, random_permutations
from weightflow.models import build_model
from weightflow.models.mlp import FlatMLP
from weightflow.models.skip import AffineSkip, SkipField, layer_groups
from weightflow.weights import MLPLayout, init_weights

SIZES = [4, 5, 6, 3]


def _x(num: int = 3) -> torch.Tensor:
    return init_weights(SIZES, num, init_std=0.5, bias_std=0.3, generator=torch.Generator().manual_seed(0))


def _t(num: int = 3) -> torch.Tensor:
    return torch.rand(num, generator=torch.Generator().manual_seed(1))


def test_layer_groups_and_zero_start():
    layout = MLPLayout(tuple(SIZES))
    groups = layer_groups(layout)
    assert groups.tolist()[:20] == [0] * 20 and groups.tolist()[20:25] == [1] * 5  # W_1 (5x4), then b_1
    assert int(groups.max()) == 2 * layout.num_layers - 1
    skip = AffineSkip.per_layer(layout, time_size=8, hidden=16)
    assert torch.equal(skip(_x(), _t()), torch.zeros(3, layout.dim))


def test_the_skip_is_a_per_group_affine_map():
    """With gains g and shifts c per group (here constant in t) the skip is g[groups] ⊙ x + c[groups] — for
    g = (2t − 1)/((1 − t)² + t²), c = 1 − t g, the exact velocity of N(0, I) → N(1, I)."""
    layout = MLPLayout(tuple(SIZES))
    skip = AffineSkip.per_layer(layout, time_size=8, hidden=16)
    gains, shifts = torch.arange(6.0), 10 + torch.arange(6.0)
    with torch.no_grad():
        skip.out.bias.copy_(torch.cat([gains, shifts]))
    x = _x()
    groups = layer_groups(layout)
    assert torch.allclose(skip(x, _t()), gains[groups] * x + shifts[groups])


def test_a_per_layer_skip_keeps_a_graph_model_equivariant():
    model = SkipField(build_model("ngt", SIZES, seed=0, width=8, depth=1, heads=2, time_size=8),
                      AffineSkip.per_layer(SIZES, time_size=8, hidden=8))
    torch.nn.init.normal_(model.skip.out.weight, std=0.5)  # a non-zero skip
    assert model.equivariant
    x, t = _x(), _t()
    perms = random_permutations(3, SIZES, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out, out_of_permuted = model(x, t), model(apply_permutations(x, SIZES, perms), t)
    assert (out_of_permuted - apply_permutations(out, SIZES, perms)).abs().max() <= 1e-5
    per_coordinate = SkipField(model.field, AffineSkip.per_coordinate(SIZES, time_size=8, hidden=8))
    torch.nn.init.normal_(per_coordinate.skip.out.weight, std=0.5)
    with torch.no_grad():
        out, out_of_permuted = per_coordinate(x, t), per_coordinate(apply_permutations(x, SIZES, perms), t)
    assert (out_of_permuted - apply_permutations(out, SIZES, perms)).abs().max() > 1e-3  # not equivariant


def test_flat_mlp_loads_files_written_before_its_shift():
    """A state dict without ``shift.*`` (files from before the time-only shift) loads as a zero shift: the same
    function as the network that wrote it."""
    model = FlatMLP(SIZES, width=16, depth=1, time_size=8)
    torch.nn.init.normal_(model.skip.weight, std=0.1)
    old = {k: v for k, v in model.state_dict().items() if not k.startswith("shift.")}
    fresh = FlatMLP(SIZES, width=16, depth=1, time_size=8)
    fresh.load_state_dict(old)
    assert torch.equal(fresh.shift.weight, torch.zeros_like(fresh.shift.weight))
    with torch.no_grad():
        assert torch.equal(fresh(_x(), _t()), model(_x(), _t()))


def test_flat_mlp_without_its_shift_is_the_same_network_minus_the_shift():
    """``time_shift=False`` (the network before the shift, for before/after measurements) draws the same initial
    parameters as the default and has no ``shift.*``; with the shift at its zero start both compute one function,
    and after the shift is set they differ by exactly c(τ)."""
    before = build_model("mlp", SIZES, seed=3, width=16, depth=1, time_size=8, time_shift=False)
    after = build_model("mlp", SIZES, seed=3, width=16, depth=1, time_size=8)
    assert not any(k.startswith("shift.") for k in before.state_dict())
    for name, value in before.state_dict().items():
        assert torch.equal(value, after.state_dict()[name]), name
    x, t = _x(), _t()
    with torch.no_grad():
        assert torch.equal(before(x, t), after(x, t))
        torch.nn.init.normal_(after.shift.bias, std=0.1)
        assert torch.allclose(after(x, t) - before(x, t), after.shift.bias.expand(3, -1), atol=1e-6)


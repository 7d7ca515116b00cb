"""Samplers: x1-prediction velocity (the reference bug), manifold constraint, solvers, noise, guidance."""

import math

import pytest
import torch
from torch import nn

from weightflow.data import load_dataset
from weightflow.flow.model_file import FlowModel
from weightflow.flow.paths import build_path
from weightflow.flow.sampling import guidance_force, sample
from weightflow.models import build_model
from weightflow.weights import MLPLayout, forward, to_sequential

LAYOUT = MLPLayout((4, 5, 3))
PARAMS = {"prior_std": 1.0, "bias_prior_std": 1.0, "last_radius": math.sqrt(3)}


def make_flow(geometry: str, model: nn.Module, objective: str = "x1", layout: MLPLayout = LAYOUT) -> FlowModel:
    config = {"layer_sizes": list(layout.layer_sizes), "flow": {"objective": objective, "sigma": 0.0},
              "geometry": geometry}
    return FlowModel(build_path(geometry, layout, PARAMS), model, config, holdout_runs=[])


class Constant(nn.Module):
    """Predicts the same output for every input."""

    def __init__(self, value):
        super().__init__()
        self.value = nn.Parameter(value.clone())

    def forward(self, x, t):
        return self.value.expand_as(x)


class TwoPointDenoiser(nn.Module):
    """Exact E[x1 | x_t] for p1 = ½δ_a + ½δ_{-a}, p0 = N(0, I) on the path x_t = (1 − t) x0 + t x1."""

    def __init__(self, a):
        super().__init__()
        self.register_buffer("a", a)

    def forward(self, x, t):
        var = ((1 - t) ** 2).clamp_min(1e-12)[:, None]
        logit = ((x - t[:, None] * self.a) ** 2).sum(-1, keepdim=True) - ((x + t[:, None] * self.a) ** 2).sum(-1, keepdim=True)
        w_plus = torch.sigmoid(-logit / (2 * var))
        return (2 * w_plus - 1) * self.a


class Linear(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.a = nn.Parameter(a)

    def forward(self, x, t):
        return x @ self.a.T


@pytest.mark.parametrize("geometry", ["euclidean", "normalized", "geometric"])
@pytest.mark.parametrize("steps", [1, 3, 50])
def test_fixed_x1_prediction_lands_exactly_on_it(geometry, steps):
    flow = make_flow(geometry, Constant(torch.zeros(LAYOUT.dim)))
    target = flow.prior.sample_prior(1, generator=torch.Generator().manual_seed(1))[0]
    flow.model.value.data.copy_(target)
    x = sample(flow, 16, steps=steps, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(x, target.expand_as(x), atol=2e-5)


def test_x1_sampler_velocity_catches_average_of_predictions_bug():
    """With the exact denoiser of a two-point target every sample must land on one of the points; integrating
    x̂1 − x0 (the public reference's sampler) instead returns averages of predictions, between the points."""
    a = torch.zeros(LAYOUT.dim)
    a[:4] = 2.0
    flow = make_flow("euclidean", TwoPointDenoiser(a))
    gen = torch.Generator().manual_seed(0)
    x = sample(flow, 256, steps=200, generator=gen)
    dist_to_points = torch.minimum((x - a).norm(dim=1), (x + a).norm(dim=1))
    assert dist_to_points.max() < 1e-3
    assert 0.3 < (x[:, 0] > 0).float().mean() < 0.7  # both modes are reached

    # The buggy sampler x_{k+1} = x_k + h (x̂1(x_k, t_k) − x0) ends at the mean of the predictions.
    gen = torch.Generator().manual_seed(0)
    x0 = flow.sample_prior(256, generator=gen)
    xb, h = x0.clone(), 1 / 200
    for k in range(200):
        xb = xb + h * (flow.model(xb, torch.full((256,), k * h)) - x0)
    buggy = torch.minimum((xb - a).norm(dim=1), (xb + a).norm(dim=1))
    assert buggy.max() > 0.1


@pytest.mark.parametrize("steps", [1, 7, 100])
def test_geometric_samples_stay_on_the_manifold(steps):
    torch.manual_seed(0)
    model = build_model("mlp", LAYOUT.layer_sizes, width=32, depth=1, time_size=8)
    for objective in ("x1", "velocity"):
        flow = make_flow("geometric", model, objective)
        data = load_dataset("iris", seed=0)
        x = sample(flow, 32, steps=steps, noise=0.3, noise_range=(0.0, 0.7), guidance=0.5,
                   guidance_data=(data.x_train, data.y_train), generator=torch.Generator().manual_seed(0))
        assert flow.geometry.check_on_manifold(x, tol=1e-5), float(flow.geometry.norm_deviation(x).max())


def test_solvers_agree_on_a_linear_field():
    """dx/dt = A x has the solution expm(A) x0; rk4 and dopri5 match it, Euler converges to it."""
    gen = torch.Generator().manual_seed(0)
    a = 0.3 * torch.randn(LAYOUT.dim, LAYOUT.dim, generator=gen, dtype=torch.float64)
    flow = make_flow("euclidean", Linear(a), "velocity")
    flow.path.prior.prior_std = 1.0

    def run(method, steps):
        x0 = flow.sample_prior(8, generator=torch.Generator().manual_seed(3)).double()
        flow.path.sample_prior = lambda n, generator=None: x0  # noqa: E731
        return sample(flow, 8, method=method, steps=steps, generator=torch.Generator().manual_seed(3)), x0

    for method, steps, tol in (("rk4", 50, 1e-3), ("dopri5", 50, 1e-3), ("euler", 2000, 1e-2)):
        x, x0 = run(method, steps)
        exact = x0 @ torch.linalg.matrix_exp(a).T
        assert (x - exact).norm() / exact.norm() < tol, method


def test_solvers_refuse_spheres_and_noise():
    flow = make_flow("geometric", Constant(torch.zeros(LAYOUT.dim)))
    with pytest.raises(ValueError, match="euler"):
        sample(flow, 2, method="rk4")
    with pytest.raises(ValueError, match="euler"):
        sample(make_flow("euclidean", Constant(torch.zeros(LAYOUT.dim))), 2, method="dopri5", noise=0.1)


def test_noise_adds_brownian_variance_on_its_time_range():
    """Zero velocity + noise ε on [0, 0.5): x1 − x0 ~ N(0, ε² · 0.5 · I)."""
    flow = make_flow("euclidean", Constant(torch.zeros(LAYOUT.dim)), "velocity")
    gen = torch.Generator().manual_seed(0)
    x0 = flow.sample_prior(4000, generator=torch.Generator().manual_seed(5))
    flow.path.sample_prior = lambda n, generator=None: x0  # noqa: E731
    x = sample(flow, 4000, steps=40, noise=0.2, noise_range=(0.0, 0.5), generator=gen)
    var = (x - x0).var(dim=0)
    assert abs(float(var.mean()) - 0.2**2 * 0.5) < 0.002


def test_guidance_force_is_each_networks_own_loss_gradient():
    """The batched flat-layout force equals −∇ of each network's loss computed with nn.Linear modules."""
    data = load_dataset("iris", seed=0)
    flow = make_flow("euclidean", Constant(torch.zeros(LAYOUT.dim)))
    x = flow.sample_prior(3, generator=torch.Generator().manual_seed(0))
    force = guidance_force(flow, x, (data.x_train, data.y_train), batch=10**6)
    for b in range(3):
        net = to_sequential(x[b], LAYOUT)
        loss = nn.functional.cross_entropy(net(data.x_train), data.y_train)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in net.parameters()])
        assert torch.allclose(force[b], -grads, atol=1e-5)


def test_guidance_lowers_the_training_loss():
    data = load_dataset("iris", seed=0)
    flow = make_flow("euclidean", Constant(torch.zeros(LAYOUT.dim)), "velocity")

    def loss(x):
        logits = forward(x, LAYOUT, data.x_train)
        return nn.functional.cross_entropy(logits.flatten(0, 1), data.y_train.repeat(len(x))).item()

    plain = sample(flow, 32, steps=20, generator=torch.Generator().manual_seed(0))
    guided = sample(flow, 32, steps=20, guidance=2.0, guidance_data=(data.x_train, data.y_train),
                    generator=torch.Generator().manual_seed(0))
    assert loss(guided) < 0.5 * loss(plain)


class Elementwise(nn.Module):
    """``v = a(t) x + b``: every output coordinate depends on its own input only (no matmul), so a batch of any
    size computes each row with exactly the same floating-point operations."""

    def __init__(self, dim: int):
        super().__init__()
        gen = torch.Generator().manual_seed(7)
        self.a = nn.Parameter(torch.randn(dim, generator=gen))
        self.b = nn.Parameter(torch.randn(dim, generator=gen))

    def forward(self, x, t):
        return torch.sin(3 * t)[:, None] * self.a * x + self.b


@pytest.mark.parametrize("geometry", ["euclidean", "geometric"])
def test_chunked_sampling_is_bit_identical_to_unchunked(geometry):
    """Prior draws, noise and guidance minibatches depend on the sample index, not on batch_size."""
    data = load_dataset("iris", seed=0)
    flow = make_flow(geometry, Elementwise(LAYOUT.dim), "velocity")
    kwargs = dict(steps=12, noise=0.3, noise_range=(0.0, 0.6), guidance=0.5, guidance_batch=16,
                  guidance_data=(data.x_train, data.y_train))
    whole = sample(flow, 23, generator=torch.Generator().manual_seed(4), **kwargs)
    for batch_size in (1, 5, 8, 22):
        chunked = sample(flow, 23, generator=torch.Generator().manual_seed(4), batch_size=batch_size, **kwargs)
        assert torch.equal(chunked, whole), batch_size
    # the first rows of a larger draw are the rows of a smaller one only for the prior: later draws (noise,
    # minibatches) are per step for all networks, so the prefix property is not claimed; the prior is:
    prior = flow.sample_prior(23, generator=torch.Generator().manual_seed(4))
    free = sample(flow, 23, steps=1, generator=torch.Generator().manual_seed(4), batch_size=4)
    assert torch.equal(free, flow.geometry.exp(prior, flow.velocity(prior, torch.zeros(23))))


def test_real_model_chunked_sampling_matches_up_to_matmul_rounding():
    flow = make_flow("euclidean", build_model("mlp", LAYOUT, width=32, depth=2, seed=0).eval(), "velocity")
    whole = sample(flow, 50, steps=10, generator=torch.Generator().manual_seed(1))
    chunked = sample(flow, 50, steps=10, generator=torch.Generator().manual_seed(1), batch_size=7)
    assert torch.allclose(whole, chunked, atol=1e-5, rtol=0)


@pytest.mark.parametrize("geometry", ["euclidean", "normalized", "geometric"])
def test_guidance_alone_control_is_guidance_with_zero_velocity(geometry):
    """zero_velocity=True equals sampling a flow whose field is identically zero with the same guidance, prior
    draws and minibatches; with guidance 0 it returns the prior draws themselves."""
    data = load_dataset("iris", seed=0)
    flow = make_flow(geometry, Elementwise(LAYOUT.dim), "velocity")
    zero = make_flow(geometry, Constant(torch.zeros(LAYOUT.dim)), "velocity")
    kwargs = dict(steps=8, guidance=2.0, guidance_batch=32, guidance_data=(data.x_train, data.y_train))
    control = sample(flow, 9, generator=torch.Generator().manual_seed(2), zero_velocity=True, **kwargs)
    expect = sample(zero, 9, generator=torch.Generator().manual_seed(2), **kwargs)
    assert torch.equal(control, expect)
    guided = sample(flow, 9, generator=torch.Generator().manual_seed(2), **kwargs)
    assert not torch.allclose(guided, control)
    prior = flow.sample_prior(9, generator=torch.Generator().manual_seed(2))
    still = sample(flow, 9, steps=5, zero_velocity=True, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(still, prior, atol=1e-6, rtol=0)  # exp_x(0) = x (up to the sphere renormalization)


def test_guidance_needs_euler():
    data = load_dataset("iris", seed=0)
    flow = make_flow("euclidean", Constant(torch.zeros(LAYOUT.dim)), "velocity")
    with pytest.raises(ValueError, match="euler"):
        sample(flow, 2, method="rk4", guidance=1.0, guidance_data=(data.x_train, data.y_train))

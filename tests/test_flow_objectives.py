"""Flow-matching objectives: loss weightings in time, their registries, and what they are equal to."""

import math
from pathlib import Path

import pytest
import torch
import yaml

from weightflow.flow.objectives import (
    LOSS_WEIGHTINGS,
    MIN_REMAINING,
    OBJECTIVES,
    TIME_DISTRIBUTIONS,
    VelocityPrediction,
    X1Prediction,
    flow_loss,
)
from weightflow.manifold import Euclidean, ProductSpheres
from weightflow.weights import MLPLayout

REPO = Path(__file__).resolve().parents[1]
LAYOUT = MLPLayout((4, 5, 3))


def _batch(geometry, n=64, t_max=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x0 = geometry.sample_prior(n, generator=gen, dtype=torch.float64)
    x1 = geometry.project(geometry.sample_prior(n, generator=gen, dtype=torch.float64) + 0.7)
    t = t_max * torch.rand(n, generator=gen, dtype=torch.float64)
    x_t, u_t = geometry.interpolate(x0, x1, t)
    out = x1 + 0.3 * torch.randn(x1.shape, generator=gen, dtype=torch.float64)  # an imperfect x1-prediction
    return out, x_t, x1, u_t, t


def test_velocity_weighted_x1_loss_is_the_velocity_loss_in_euclidean_space():
    """(x̂1 − x_t)/(1 − t) − (x1 − x0) = (x̂1 − x1)/(1 − t): for t ≤ 1 − δ the sampler-velocity loss of an
    x1-predictor is its x1-loss weighted by 1/(1 − t)², batch for batch; above, the weight stops at 1/δ²."""
    geometry = Euclidean(LAYOUT)
    out, x_t, x1, u_t, t = _batch(geometry, t_max=1 - MIN_REMAINING)
    velocity_loss = flow_loss("x1", "velocity", geometry, out, x_t, x1, u_t, t)
    weighted_x1_loss = ((out - x1).pow(2) / (1 - t).pow(2).unsqueeze(-1)).mean()
    assert float(velocity_loss) == pytest.approx(float(weighted_x1_loss), rel=1e-12)
    assert float(velocity_loss) > 2 * float(flow_loss("x1", "none", geometry, out, x_t, x1, u_t, t))
    # Close to t = 1 the weight is capped at 1/δ².
    x0 = x_t - t.unsqueeze(-1) * u_t
    late = torch.full_like(t, 0.99)
    x_late, u_late = geometry.interpolate(x0, x1, late)
    capped = flow_loss("x1", "velocity", geometry, out, x_late, x1, u_late, late)
    assert float(capped) == pytest.approx(float((out - x1).pow(2).mean()) / MIN_REMAINING**2, rel=1e-9)
    # For the velocity objective (the sampler's velocity is its output) nothing changes below 1 − δ.
    v = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(flow_loss("velocity", "velocity", geometry, v, x_t, x1, u_t, t),
                       VelocityPrediction.loss(geometry, v, x_t, x1, u_t))


def test_velocity_weighted_x1_loss_on_spheres_uses_the_log_map():
    """On the product of spheres the geodesic's velocity is u_t = log_{x_t}(x1)/(1 − t), so the sampler-velocity
    loss of an x1-predictor is |log_{x_t} x̂1 − log_{x_t} x1|²/(1 − t)²; the ambient x1-error weighted by 1/(1 − t)²
    differs from it (the log map at x_t is no isometry) and agrees only as x_t → x1."""
    geometry = ProductSpheres(LAYOUT)
    out, x_t, x1, u_t, t = _batch(geometry, t_max=1 - MIN_REMAINING)
    x1_hat = geometry.project(out)
    expected = ((geometry.log(x_t, x1_hat) - geometry.log(x_t, x1)) / (1 - t).unsqueeze(-1)).pow(2).mean()
    assert float(flow_loss("x1", "velocity", geometry, out, x_t, x1, u_t, t)) == pytest.approx(float(expected),
                                                                                                rel=1e-9)
    ambient = ((out - x1).pow(2) / (1 - t).pow(2).unsqueeze(-1)).mean()
    assert abs(float(ambient) / float(expected) - 1) > 0.05


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_unweighted_loss_is_the_objective_loss_bit_for_bit(objective):
    for geometry in (Euclidean(LAYOUT), ProductSpheres(LAYOUT)):
        out, x_t, x1, u_t, t = _batch(geometry)
        out, x_t, x1, u_t, t = (v.float() for v in (out, x_t, x1, u_t, t))
        expected = OBJECTIVES[objective].loss(geometry, out, x_t, x1, u_t)
        assert torch.equal(flow_loss(objective, "none", geometry, out, x_t, x1, u_t, t), expected)


def test_weightings_values_and_unknown_names():
    """Per network, the velocity weighting of an x1-predictor is 1/max(1 − t, δ)² times its x1-error."""
    geometry = Euclidean(LAYOUT)
    out, _, x1, _, _ = _batch(geometry, n=5)
    x0 = geometry.sample_prior(5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    t = torch.tensor([0.0, 0.5, 0.9, 0.95, 0.99], dtype=torch.float64)
    x_t, u_t = geometry.interpolate(x0, x1, t)
    errors = {name: fn(X1Prediction, geometry, out, x_t, x1, u_t, t).sum(1) for name, fn in LOSS_WEIGHTINGS.items()}
    weights = errors["velocity"] / errors["none"]
    assert torch.allclose(weights, torch.tensor([1.0, 4.0, 100.0, 400.0, 400.0], dtype=torch.float64), rtol=1e-9)
    out, x_t, x1, u_t, t = _batch(geometry)
    with pytest.raises(ValueError, match="loss weighting"):
        flow_loss("x1", "snr", geometry, out, x_t, x1, u_t, t)
    with pytest.raises(ValueError, match="objective"):
        flow_loss("score", "none", geometry, out, x_t, x1, u_t, t)


def test_schema_enums_are_the_registries():
    flow = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())["$defs"]["flow"]["properties"]
    assert flow["loss_weighting"]["enum"] == list(LOSS_WEIGHTINGS)
    assert flow["time_distribution"]["enum"] == list(TIME_DISTRIBUTIONS)
    assert math.isclose(MIN_REMAINING, 0.05)

"""Probability paths: the σ-perturbed conditional path keeps its target velocity tangent on the spheres."""

import math

import pytest
import torch

from weightflow.flow.paths import build_path
from weightflow.weights import MLPLayout

LAYOUT = MLPLayout((6, 5, 4, 3))


@pytest.mark.parametrize("last_layer", ["free", "sphere"])
def test_perturbed_target_velocity_is_transported_to_the_perturbed_point(last_layer):
    """With σ > 0 the target u_t is parallel-transported from x_t to x'_t = exp_{x_t}(σ P ξ): it is tangent at x'_t
    (an untransported u_t has a normal component of a few % of |u_t| there) and keeps its norm."""
    params = {"prior_std": 0.5, "bias_prior_std": 0.5, "last_radius": math.sqrt(3), "last_layer": last_layer}
    path = build_path("geometric", LAYOUT, params, sigma=0.3)
    plain = build_path("geometric", LAYOUT, params, sigma=0.0)
    gen = torch.Generator().manual_seed(0)
    x0 = path.prior.sample_prior(256, generator=gen, dtype=torch.float64)
    x1 = path.prior.sample_prior(256, generator=gen, dtype=torch.float64)
    t = torch.rand(256, generator=gen, dtype=torch.float64)
    x_t, u_t = path.point_and_velocity(x0, x1, t, torch.Generator().manual_seed(1))
    x_plain, u_plain = plain.point_and_velocity(x0, x1, t)
    geom = path.geometry
    assert geom.check_on_manifold(x_t, tol=1e-10) and not torch.allclose(x_t, x_plain)
    assert torch.allclose(geom.proj_tangent(x_t, u_t), u_t, atol=1e-10)
    assert torch.allclose(u_t.norm(dim=-1), u_plain.norm(dim=-1), atol=1e-10)
    normal = (u_plain - geom.proj_tangent(x_t, u_plain)).norm(dim=-1) / u_plain.norm(dim=-1)
    assert normal.mean() > 0.01  # what the untransported target would have asked of a tangent field


def test_flat_perturbed_target_is_the_straight_line_velocity():
    params = {"prior_std": 0.5, "bias_prior_std": 0.5, "last_radius": None, "last_layer": "free"}
    path = build_path("euclidean", LAYOUT, params, sigma=0.3)
    gen = torch.Generator().manual_seed(0)
    x0, x1 = path.sample_prior(8, generator=gen), path.sample_prior(8, generator=gen)
    x_t, u_t = path.point_and_velocity(x0, x1, torch.rand(8, generator=gen), torch.Generator().manual_seed(1))
    assert torch.equal(u_t, x1 - x0)

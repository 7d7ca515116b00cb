"""Geometric identities of weightflow.manifold (Euclidean and the product of spheres)."""

from __future__ import annotations

import math

import geoopt
import pytest
import torch

from weightflow.manifold import (
    Euclidean,
    ProductSpheres,
    sphere_angle,
    sphere_log_area,
)
from weightflow.utils import generator
from weightflow.weights import MLPLayout, unflatten

LAYOUTS = [(4, 6, 3), (13, 5, 4, 3)]


def spheres(sizes=(13, 5, 4, 3), **kw) -> ProductSpheres:
    return ProductSpheres(sizes, **kw)


def points(geom, n, *keys, dtype=torch.float64):
    return geom.sample_prior(n, generator(0, "test_manifold", *keys), dtype=dtype)


def tangent(geom, x, *keys, scale=1.0):
    v = torch.randn(x.shape, generator=generator(0, "tangent", *keys), dtype=x.dtype) * scale
    return geom.proj_tangent(x, v)


def blocks(geom: ProductSpheres, x):
    """Per factor ``[B, K, d]`` lists (hidden rows, last layer flattened), for cross-checks."""
    layers = unflatten(x, geom.layout)
    return [w for w, _ in layers[:-1]] + [layers[-1][0].flatten(-2).unsqueeze(-2)]


# --- structure --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", LAYOUTS)
def test_factor_description(sizes):
    geom = ProductSpheres(sizes)
    layout = MLPLayout(sizes)
    hidden = sum(sizes[1:-1])
    assert geom.num_factors == hidden + 1
    assert geom.intrinsic_dim == layout.dim - hidden - 1
    assert torch.equal(geom.sphere_mask, ~layout.is_bias)
    counts = torch.bincount(geom.factor_index[geom.sphere_mask])
    assert counts.tolist() == list(geom.factor_dims)
    assert geom.factor_dims[-1] == sizes[-1] * sizes[-2]
    assert geom.factor_layers.tolist() == [l for l, n in enumerate(sizes[1:-1]) for _ in range(n)] + [len(sizes) - 2]
    assert geom.factor_radii[-1] == pytest.approx(math.sqrt(sizes[-1]))
    x = points(geom, 7, "structure")
    assert geom.check_on_manifold(x, tol=1e-12)
    norms = geom.factor_norms(x)
    assert torch.allclose(norms, torch.tensor(geom.factor_radii, dtype=x.dtype).expand_as(norms))
    assert not geom.check_on_manifold(1.01 * x, tol=1e-3)
    eu = Euclidean(sizes)
    assert eu.intrinsic_dim == layout.dim and eu.factor_norms(x).shape == (7, 0) and eu.check_on_manifold(x)


def test_project_is_idempotent_and_handles_zero_factors():
    geom = spheres()
    x = torch.randn(4, geom.dim, generator=generator(0, "project"), dtype=torch.float64) * 3
    x[0, : geom.layout.layer_sizes[0]] = 0.0  # first hidden neuron of network 0: zero incoming weights
    p = geom.project(x)
    assert torch.isfinite(p).all() and geom.check_on_manifold(p, tol=1e-12)
    assert torch.equal(p[0, : geom.layout.layer_sizes[0]], torch.eye(geom.layout.layer_sizes[0])[0].double())
    assert torch.allclose(geom.project(p), p, atol=1e-15)
    bias = geom.layout.is_bias
    assert torch.equal(p[:, bias], x[:, bias])


# --- exp / log / dist ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", LAYOUTS)
def test_exp_log_round_trip(sizes):
    geom = ProductSpheres(sizes, last_radius=2.5)
    x, y = points(geom, 16, "x"), points(geom, 16, "y")
    v = geom.log(x, y)
    assert torch.allclose(geom.proj_tangent(x, v), v, atol=1e-12)  # log is tangent
    assert torch.allclose(geom.exp(x, v), y, atol=1e-12)
    # log(exp(v)) = v for tangent v shorter than the injectivity radius on each factor (pi * r)
    w = tangent(geom, x, "w", scale=0.3)
    assert (geom.factor_norms(w) < math.pi * torch.tensor(geom.factor_radii, dtype=w.dtype)).all()
    z = geom.exp(x, w)
    assert geom.check_on_manifold(z, tol=1e-12)
    assert torch.allclose(geom.log(x, z), w, atol=1e-12)


@pytest.mark.parametrize("geom", [spheres(), Euclidean((13, 5, 4, 3), prior_std=0.5)], ids=["spheres", "euclid"])
def test_distance_symmetry_identity_triangle(geom):
    x, y, z = points(geom, 32, "a"), points(geom, 32, "b"), points(geom, 32, "c")
    dxy = geom.dist(x, y)
    assert torch.allclose(dxy, geom.dist(y, x), atol=1e-12)
    assert geom.dist(x, x).abs().max() < 1e-12
    assert (geom.dist(x, z) <= dxy + geom.dist(y, z) + 1e-12).all()
    # pairwise (OT cost) agrees with dist^2
    pair = geom.pairwise_sq_dist(x, y[:5])
    expect = geom.dist(x[:, None, :].expand(-1, 5, -1), y[None, :5, :].expand(32, -1, -1)) ** 2
    assert pair.shape == (32, 5)
    assert torch.allclose(pair, expect, rtol=1e-8, atol=1e-10)


def test_small_distances_are_accurate_in_float32():
    """atan2 angles resolve distances far below acos's float32 floor (~3e-4 rad, geoopt's ~1.4e-2)."""
    geom = spheres()
    x = points(geom, 8, "small")
    v = tangent(geom, x, "small")
    v = 1e-5 * v / v.norm(dim=-1, keepdim=True)
    y = geom.exp(x, v)
    d32 = geom.dist(x.float(), y.float())
    assert torch.allclose(d32.double(), torch.full((8,), 1e-5, dtype=torch.float64), rtol=2e-2)


# --- geodesics --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", LAYOUTS)
def test_geodesic_endpoints_and_constant_speed(sizes):
    geom = ProductSpheres(sizes)
    x0, x1 = points(geom, 16, "x0"), points(geom, 16, "x1")
    xa, ua = geom.interpolate(x0, x1, 0.0)
    xb, ub = geom.interpolate(x0, x1, torch.ones(16, dtype=torch.float64))
    assert torch.allclose(xa, x0, atol=1e-12) and torch.allclose(xb, x1, atol=1e-12)
    t = torch.rand(16, generator=generator(0, "t"), dtype=torch.float64)
    xt, ut = geom.interpolate(x0, x1, t)
    d = geom.dist(x0, x1)
    assert geom.check_on_manifold(xt, tol=1e-12)
    assert torch.allclose(geom.dist(x0, xt), t * d, atol=1e-10)
    assert torch.allclose(geom.dist(xt, x1), (1 - t) * d, atol=1e-10)
    assert torch.allclose(ut.norm(dim=-1), d, atol=1e-10)
    assert torch.allclose(ua, geom.log(x0, x1), atol=1e-12)
    column = geom.interpolate(x0, x1, t[:, None])  # t as [B, 1] is accepted too
    assert torch.equal(column[0], xt) and torch.equal(column[1], ut)
    assert torch.allclose(geom.proj_tangent(xt, ut), ut, atol=1e-12)


@pytest.mark.parametrize("geom", [spheres(last_radius=1.7), Euclidean((13, 5, 4, 3))], ids=["spheres", "euclid"])
def test_velocity_is_time_derivative(geom):
    x0, x1 = points(geom, 8, "fd0"), points(geom, 8, "fd1")
    t = torch.linspace(0.05, 0.95, 8, dtype=torch.float64)
    h = 1e-5
    _, ut = geom.interpolate(x0, x1, t)
    fd = (geom.interpolate(x0, x1, t + h)[0] - geom.interpolate(x0, x1, t - h)[0]) / (2 * h)
    assert torch.allclose(ut, fd, atol=1e-7)
    # velocity_from_x1 with the true endpoint recovers the path velocity
    assert torch.allclose(geom.velocity_from_x1(geom.interpolate(x0, x1, t)[0], x1, t), ut, atol=1e-9)


def test_float32_target_velocity_near_t1():
    """Issue 4: at t = 0.999 in float32, |log_{x_t}(x1)| / (1 - t) equals dist(x0, x1) within 1e-3 (relative)."""
    geom = ProductSpheres((64, 16, 10))
    x0, x1 = points(geom, 64, "f32a", dtype=torch.float32), points(geom, 64, "f32b", dtype=torch.float32)
    t = torch.full((64,), 0.999)
    xt, ut = geom.interpolate(x0, x1, t)
    v = geom.velocity_from_x1(xt, x1, t)
    d = geom.dist(x0.double(), x1.double()).float()
    assert ((v.norm(dim=-1) / d - 1).abs() < 1e-3).all()
    assert ((v - ut).norm(dim=-1) / d < 1e-3).all()
    # per factor too: the remaining angle is 1e-3 of the factor's distance
    per_factor = geom.factor_norms(v) / geom.factor_norms(geom.log(x0.double(), x1.double())).float()
    assert ((per_factor - 1).abs() < 1e-3).all()


def test_antipodal_pairs_are_explicit():
    geom = spheres()
    x = points(geom, 4, "anti")
    y = geom.project(torch.where(geom.sphere_mask, -x, x))  # every factor antipodal, same biases
    for dtype in (torch.float64, torch.float32):
        xd, yd = x.to(dtype), y.to(dtype)
        v = geom.log(xd, yd)
        radii = torch.tensor(geom.factor_radii, dtype=dtype)
        assert torch.isfinite(v).all()
        assert torch.allclose(geom.factor_norms(v), math.pi * radii.expand(4, -1), rtol=1e-5)
        assert torch.allclose(geom.proj_tangent(xd, v), v, atol=1e-5)
        assert torch.allclose(geom.exp(xd, v), yd, atol=1e-5)
        xt, ut = geom.interpolate(xd, yd, torch.full((4,), 0.5, dtype=dtype))
        assert geom.check_on_manifold(xt, tol=1e-5) and torch.isfinite(ut).all()
        assert torch.allclose(geom.dist(xd, xt), geom.dist(xt, yd), rtol=1e-5)


def test_gradients_are_finite_at_degenerate_pairs():
    geom = spheres()
    x = points(geom, 3, "grad")
    for y in (x.clone(), geom.project(torch.where(geom.sphere_mask, -x, x))):
        xr = x.clone().requires_grad_(True)
        geom.log(xr, y).pow(2).sum().backward()
        assert torch.isfinite(xr.grad).all()


def test_proj_tangent_is_differentiable():
    geom = ProductSpheres((4, 3, 3))
    x = points(geom, 2, "gc").requires_grad_(True)
    v = torch.randn(2, geom.dim, generator=generator(0, "gcv"), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(geom.proj_tangent, (x, v))


def test_parallel_transport_is_isometric():
    geom = spheres()
    x, y = points(geom, 16, "pt0"), points(geom, 16, "pt1")
    a, b = tangent(geom, x, "pa"), tangent(geom, x, "pb")
    ta, tb = geom.transport(x, y, a), geom.transport(x, y, b)
    assert torch.allclose(geom.proj_tangent(y, ta), ta, atol=1e-12)
    assert torch.allclose((ta * tb).sum(-1), (a * b).sum(-1), atol=1e-10)
    assert torch.allclose(geom.transport(x, y, geom.log(x, y)), -geom.log(y, x), atol=1e-10)
    t = torch.full((16,), 0.3, dtype=torch.float64)
    xt, ut = geom.interpolate(x, y, t)
    assert torch.allclose(geom.transport(x, xt, geom.log(x, y)), ut, atol=1e-10)


# --- cross-check against geoopt ----------------------------------------------------------------------------


def test_agrees_with_geoopt_sphere():
    """geoopt's Sphere (float64, angles well inside (0.1, 3)) gives the same exp, log, dist and tangent projection.

    (geoopt's ``transp`` is a projection, not parallel transport, so transport is tested by its identities.)"""
    geom = spheres(last_radius=1.0)
    x, y = points(geom, 16, "g0"), points(geom, 16, "g1")
    w = tangent(geom, x, "gw", scale=0.5)
    sphere = geoopt.Sphere()
    ours = {
        "exp": blocks(geom, geom.exp(x, w)),
        "log": blocks(geom, geom.log(x, y)),
        "proju": blocks(geom, geom.proj_tangent(x, 2 * y)),
    }
    for l, (bx, by, bw) in enumerate(zip(blocks(geom, x), blocks(geom, y), blocks(geom, w))):
        angles = sphere_angle(bx, by)
        assert ((angles > 0.1) & (angles < 3.0)).all()
        assert torch.allclose(sphere.dist(bx, by), angles, atol=1e-9)
        assert torch.allclose(sphere.expmap(bx, bw), ours["exp"][l], atol=1e-9)
        assert torch.allclose(sphere.logmap(bx, by), ours["log"][l], atol=1e-9)
        assert torch.allclose(sphere.proju(bx, 2 * by), ours["proju"][l], atol=1e-12)


# --- priors -----------------------------------------------------------------------------------------------


def test_sphere_log_area_closed_forms():
    assert sphere_log_area(2) == pytest.approx(math.log(2 * math.pi))
    assert sphere_log_area(3) == pytest.approx(math.log(4 * math.pi))
    assert sphere_log_area(4, 2.0) == pytest.approx(math.log(2 * math.pi**2 * 8))


def test_prior_log_probs():
    sizes = (4, 6, 3)
    eu = Euclidean(sizes, prior_std=0.3, bias_prior_std=0.7)
    x = points(eu, 5, "eu")
    std = torch.where(eu.layout.is_bias, 0.7, 0.3).double()
    expect = torch.distributions.Normal(0.0, std).log_prob(x).sum(-1)
    assert torch.allclose(eu.prior_log_prob(x), expect)
    geom = ProductSpheres(sizes, bias_prior_std=0.7)
    y = points(geom, 5, "ps")
    bias = torch.distributions.Normal(0.0, 0.7).log_prob(y[:, geom.layout.is_bias]).sum(-1)
    areas = 6 * math.log(2 * math.pi**2) + sphere_log_area(18, math.sqrt(3))  # 6 x S^3, 1 x S^17(sqrt 3)
    assert torch.allclose(geom.prior_log_prob(y), bias - areas)


def test_prior_samples_are_uniform_on_factors():
    geom = ProductSpheres((4, 6, 3), bias_prior_std=0.5)
    x = geom.sample_prior(20000, generator(0, "uniform"), dtype=torch.float64)
    hidden = blocks(geom, x)[0]  # [n, 6, 4]: uniform on S^3 -> mean 0, second moment I/4
    assert hidden.mean(0).abs().max() < 0.02
    second = torch.einsum("nki,nkj->kij", hidden, hidden) / x.shape[0]
    assert (second - torch.eye(4, dtype=x.dtype) / 4).abs().max() < 0.02
    assert x[:, geom.layout.is_bias].std().item() == pytest.approx(0.5, rel=0.02)
    again = geom.sample_prior(20000, generator(0, "uniform"), dtype=torch.float64)
    assert torch.equal(x, again)


# --- Euclidean and settings -----------------------------------------------------------------------------


def test_euclidean_paths():
    eu = Euclidean((4, 6, 3))
    x0, x1 = points(eu, 6, "e0"), points(eu, 6, "e1")
    t = torch.linspace(0, 1, 6, dtype=torch.float64)
    xt, ut = eu.interpolate(x0, x1, t)
    assert torch.allclose(xt, (1 - t[:, None]) * x0 + t[:, None] * x1)
    assert torch.allclose(ut, x1 - x0)
    assert torch.allclose(eu.velocity_from_x1(xt[:-1], x1[:-1], t[:-1]), (x1 - xt)[:-1] / (1 - t[:-1, None]))
    assert torch.isfinite(eu.velocity_from_x1(xt, x1, t)).all()  # t = 1 does not divide by zero


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError, match="S\\^0"):
        ProductSpheres((1, 4, 3))
    with pytest.raises(ValueError, match="last_radius"):
        ProductSpheres((4, 6, 3), last_radius=0.0)
    with pytest.raises(ValueError, match="prior_std"):
        Euclidean((4, 6, 3), prior_std=-1.0)


# --- the function-preserving form: a Euclidean last layer -------------------------------------------------


@pytest.mark.parametrize("sizes", LAYOUTS)
def test_free_last_layer_is_euclidean(sizes):
    geom = ProductSpheres(sizes, last_layer="free", bias_prior_std=0.7, weight_prior_std=1.3)
    layout = MLPLayout(sizes)
    hidden = sum(sizes[1:-1])
    w_start, b_start, _ = layout.offsets[-1]
    assert geom.num_factors == hidden and geom.intrinsic_dim == layout.dim - hidden
    mask = ~layout.is_bias
    mask[w_start:b_start] = False
    assert torch.equal(geom.sphere_mask, mask)
    x, y = points(geom, 16, "free-x"), points(geom, 16, "free-y")
    assert geom.check_on_manifold(x, tol=1e-12)
    # exp / log / geodesics: the last layer moves on straight lines, the spheres as before
    v = geom.log(x, y)
    assert torch.allclose(v[:, w_start:], y[:, w_start:] - x[:, w_start:], atol=1e-12)
    assert torch.allclose(geom.exp(x, v), y, atol=1e-12)
    t = torch.rand(16, generator=generator(0, "free-t"), dtype=torch.float64)
    xt, ut = geom.interpolate(x, y, t)
    assert torch.allclose(xt[:, w_start:b_start], (1 - t[:, None]) * x[:, w_start:b_start] + t[:, None] * y[:, w_start:b_start])
    assert torch.allclose(ut.norm(dim=-1), geom.dist(x, y), atol=1e-10)
    w = tangent(geom, x, "free-w", scale=0.4)
    assert torch.allclose(geom.transport(x, y, w).norm(dim=-1), w.norm(dim=-1), atol=1e-10)
    pair = geom.pairwise_sq_dist(x, y[:5])
    expect = geom.dist(x[:, None, :].expand(-1, 5, -1), y[None, :5, :].expand(16, -1, -1)) ** 2
    assert torch.allclose(pair, expect, rtol=1e-8, atol=1e-10)
    # prior: uniform spheres x N(0, 1.3^2) last layer x N(0, 0.7^2) biases, drawn and scored consistently
    draws = geom.sample_prior(20000, generator(0, "free-prior"), dtype=torch.float64)
    assert draws[:, w_start:b_start].std().item() == pytest.approx(1.3, rel=0.02)
    assert draws[:, layout.is_bias].std().item() == pytest.approx(0.7, rel=0.02)
    last = torch.distributions.Normal(0.0, 1.3).log_prob(x[:, w_start:b_start]).sum(-1)
    bias = torch.distributions.Normal(0.0, 0.7).log_prob(x[:, layout.is_bias]).sum(-1)
    log_area = sum(sphere_log_area(sizes[l]) * sizes[l + 1] for l in range(len(sizes) - 2))
    assert torch.allclose(geom.prior_log_prob(x), last + bias - log_area, atol=1e-10)

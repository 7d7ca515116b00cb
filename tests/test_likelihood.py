"""Change-of-variables log-densities (weightflow.likelihood) against closed forms, in flat space and on spheres."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from weightflow.likelihood import (
    draw_probes,
    field_and_divergence,
    log_likelihood,
    tangent_field,
    time_grid,
    trapezoid_weights,
)
from weightflow.manifold import Euclidean, ProductSpheres, sphere_log_area
from weightflow.utils import generator

F64 = torch.float64


def gaussian_target(dim: int):
    """``(mu, Sigma, L)``: a random mean and covariance with lower-triangular Cholesky factor ``L``."""
    g = generator(0, "test_likelihood", "target")
    a = torch.randn(dim, dim, generator=g, dtype=F64)
    sigma = a @ a.T / dim + 0.5 * torch.eye(dim, dtype=F64)
    return torch.randn(dim, generator=g, dtype=F64), sigma, torch.linalg.cholesky(sigma)


def linear_velocity(mu, chol):
    """The field of ``x_t = t mu + ((1 - t) I + t L) x0``: it maps N(0, I) at t=0 to N(mu, L L^T) at t=1.

    ``v(x, t) = mu + (L - I) A_t^{-1} (x - t mu)`` with ``A_t = (1 - t) I + t L`` (invertible: triangular with a
    positive diagonal); its divergence is ``tr((L - I) A_t^{-1})``.
    """
    eye = torch.eye(len(mu), dtype=F64)

    def velocity(x, t):
        a_t = (1 - t)[:, None, None] * eye + t[:, None, None] * chol
        m = torch.linalg.solve(a_t, (x - t[:, None] * mu).unsqueeze(-1))
        return mu + ((chol - eye) @ m).squeeze(-1)

    return velocity


def spheres_geometry() -> ProductSpheres:
    """Two S^2 factors (hidden rows), one S^3 of radius sqrt(2) (last layer), 4 Euclidean biases: D = 14."""
    return ProductSpheres((3, 2, 2), bias_prior_std=0.7)


def sphere_points(geom, n, key):
    return geom.sample_prior(n, generator(0, "test_likelihood", key), dtype=F64)


def gradient_field(geom, key):
    """``u(x) = P_x a`` (the Riemannian gradient of ``<a, x>``) on the spheres; zero on the biases.

    On a sphere of radius ``r`` in ``R^d``, ``div_M u = Δ_M <a, x> = -(d - 1) <a, x> / r^2``.
    """
    a = torch.randn(geom.dim, generator=generator(0, "test_likelihood", key), dtype=F64)
    a = a * geom.sphere_mask.to(F64)

    def velocity(x, t):
        return a.expand_as(x)

    def divergence(x):
        index = geom.factor_index
        dims = torch.tensor(geom.factor_dims, dtype=F64)[index.clamp_min(0)]
        radii = torch.tensor(geom.factor_radii, dtype=F64)[index.clamp_min(0)]
        per_coord = torch.where(index >= 0, -(dims - 1) * a * x / radii**2, torch.zeros_like(x))
        return per_coord.sum(-1)

    return velocity, divergence


def rotation_velocity(geom, key):
    """A skew-symmetric (divergence-free) linear field within every sphere factor; biases do not move."""
    d = geom.dim
    g = generator(0, "test_likelihood", key)
    a = torch.randn(d, d, generator=g, dtype=F64)
    index = geom.factor_index
    same = (index[:, None] == index[None, :]) & (index[:, None] >= 0)
    skew = (a - a.T) * same
    return lambda x, t: x @ skew.T, skew


# --------------------------------------------------------------------------------------------------------------
# Flat space


@pytest.mark.parametrize("kw", [dict(method="dopri5", atol=1e-9, rtol=1e-9), dict(method="rk4", steps=40)])
def test_linear_field_gives_analytic_gaussian_log_density(kw):
    geom = Euclidean((2, 2), prior_std=1.0, bias_prior_std=1.0)  # N(0, I) on D = 6
    mu, sigma, chol = gaussian_target(geom.dim)
    x = mu + torch.randn(8, geom.dim, generator=generator(0, "test_likelihood", "x"), dtype=F64) @ chol.T
    res = log_likelihood(linear_velocity(mu, chol), x, geom, **kw)
    expected = torch.distributions.MultivariateNormal(mu, sigma).log_prob(x)
    assert (res.logp - expected).abs().max() <= 1e-3
    # The backward trajectory ends at the prior point x0 = L^{-1} (x - mu).
    x0 = torch.linalg.solve_triangular(chol, (x - mu).T, upper=False).T
    torch.testing.assert_close(res.x0, x0, atol=1e-4, rtol=0)
    assert res.nfe > 0 and res.estimator == "exact" and res.probes == geom.dim


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_x1_prediction_field_near_t1_on_log_grid(method):
    """``v = (c - x)/(1 - t)`` from N(0, s^2) gives ``p_t = N(t c, ((1 - t) s)^2)``; div = -D/(1-t) is stiff at t -> 1."""
    std, delta = 0.3, 1e-3
    geom = Euclidean((3, 4), prior_std=std, bias_prior_std=std)
    c = torch.randn(geom.dim, generator=generator(0, "test_likelihood", "c"), dtype=F64)
    t1 = 1 - delta
    x = t1 * c + delta * std * torch.randn(5, geom.dim, generator=generator(0, "test_likelihood", "x1"), dtype=F64)
    res = log_likelihood(lambda x, t: (c - x) / (1 - t)[:, None], x, geom, method=method, steps=20, grid="log",
                         t_start=t1)
    expected = torch.distributions.Normal(t1 * c, delta * std).log_prob(x).sum(-1)
    assert (res.logp - expected).abs().max() <= 1e-3 * geom.dim
    assert res.t_start == t1


def test_time_grids_and_trapezoid_weights():
    for grid in ("uniform", "log"):
        times = time_grid(0.99, 50, grid)
        assert times[0] == 0.99 and times[-1] == 0.0 and (times[1:] < times[:-1]).all()
        w = trapezoid_weights(times, grid)
        assert w.sum().item() == pytest.approx(0.99, rel=1e-3)  # ∫ 1 dt
    # On the log grid the trapezoid rule is exact for 1/(1 - t): ∫_0^{t1} dt/(1 - t) = -log(1 - t1).
    times = time_grid(1 - 1e-4, 7, "log")
    integral = (trapezoid_weights(times, "log") / (1 - times)).sum().item()
    assert integral == pytest.approx(-math.log(1e-4), rel=1e-12)


def mlp_velocity(dim: int, key: str):
    """A fixed random nonlinear field ``v(x, t) = W2 tanh(W1 [x, t])`` (each network independent)."""
    g = generator(0, "test_likelihood", key)
    w1 = torch.randn(32, dim + 1, generator=g, dtype=F64) / math.sqrt(dim)
    w2 = torch.randn(dim, 32, generator=g, dtype=F64) / math.sqrt(32)

    def velocity(x, t):
        return torch.tanh(torch.cat([x, t[:, None]], -1) @ w1.T) @ w2.T

    return velocity


def exact_jacobian_trace(velocity, x, t):
    jac = torch.func.vmap(torch.func.jacrev(lambda xi, ti: velocity(xi[None], ti[None])[0]))(x, t)
    return jac.diagonal(dim1=-2, dim2=-1).sum(-1)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_for_the_divergence(probe):
    geom = Euclidean((4, 4), 1.0, 1.0)  # D = 20
    velocity = mlp_velocity(geom.dim, "mlp")
    x = torch.randn(3, geom.dim, generator=generator(0, "test_likelihood", "hx"), dtype=F64)
    t = torch.full((3,), 0.3, dtype=F64)
    field = tangent_field(velocity, geom)
    _, exact = field_and_divergence(field, x, t, geom)
    torch.testing.assert_close(exact[0], exact_jacobian_trace(velocity, x, t))
    probes = draw_probes(4000, 3, geom.dim, probe, generator=generator(0, "test_likelihood", probe), dtype=F64)
    _, est = field_and_divergence(field, x, t, geom, probes=probes, vjp_batch=512)
    se = est.std(0) / math.sqrt(est.shape[0])
    assert ((est.mean(0) - exact[0]).abs() <= 3 * se).all()


def test_hutchinson_log_likelihood_matches_exact_within_standard_error():
    """Same trajectory, k probes each integrated separately: the probe mean is within 3 standard errors of exact."""
    geom = Euclidean((4, 4), 0.5, 0.5)
    velocity = mlp_velocity(geom.dim, "mlp2")
    x = torch.randn(6, geom.dim, generator=generator(0, "test_likelihood", "hx2"), dtype=F64)
    exact = log_likelihood(velocity, x, geom, method="euler", steps=10)
    hutch = log_likelihood(velocity, x, geom, method="euler", steps=10, divergence="hutchinson", probes=64,
                           generator=generator(0, "test_likelihood", "probes"))
    torch.testing.assert_close(hutch.x0, exact.x0)
    assert hutch.logp_per_probe.shape == (64, 6) and hutch.probes == 64
    assert ((hutch.logp - exact.logp).abs() <= 3 * hutch.logp_se).all()
    assert (exact.logp_se == 0).all()


# --------------------------------------------------------------------------------------------------------------
# Product of spheres


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_zero_field_on_spheres_gives_exactly_the_uniform_log_density(divergence):
    geom = spheres_geometry()
    x = sphere_points(geom, 5, "zero")
    res = log_likelihood(lambda x, t: torch.zeros_like(x), x, geom, divergence=divergence, probes=3, steps=5,
                         generator=generator(0, "test_likelihood", "zp"))
    log_area = 2 * sphere_log_area(3) + sphere_log_area(4, math.sqrt(2))
    biases = x[:, geom.layout.is_bias]
    bias_prior = torch.distributions.Normal(torch.tensor(0.0, dtype=F64), torch.tensor(0.7, dtype=F64))
    gauss = bias_prior.log_prob(biases).sum(-1)
    torch.testing.assert_close(res.x0, x, atol=1e-14, rtol=0)
    torch.testing.assert_close(res.logp, gauss - log_area, atol=1e-12, rtol=0)
    torch.testing.assert_close(res.logp, geom.prior_log_prob(x), atol=1e-12, rtol=0)


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_rotation_field_keeps_the_uniform_log_density(method):
    geom = spheres_geometry()
    x = sphere_points(geom, 5, "rot")
    velocity, skew = rotation_velocity(geom, "skew")
    res = log_likelihood(velocity, x, geom, method=method, steps=40)
    torch.testing.assert_close(res.logp, geom.prior_log_prob(x), atol=1e-10, rtol=0)
    assert geom.check_on_manifold(res.x0, tol=1e-10)
    assert geom.dist(res.x0, x).min() > 0.1  # the points did move
    if method == "rk4":  # the backward flow is the rotation exp(-A)
        torch.testing.assert_close(res.x0, x @ torch.linalg.matrix_exp(-skew).T, atol=1e-6, rtol=0)


def test_riemannian_divergence_of_a_gradient_field_is_the_sphere_laplacian():
    """``div_M(P_x a) = -(d-1)<a,x>/r^2`` per factor: needs the curvature term from differentiating the projection."""
    geom = spheres_geometry()
    velocity, divergence = gradient_field(geom, "grad")
    x = sphere_points(geom, 4, "grad")
    t = torch.zeros(4, dtype=F64)
    field = tangent_field(velocity, geom)
    _, exact = field_and_divergence(field, x, t, geom, vjp_batch=5)
    torch.testing.assert_close(exact[0], divergence(x), atol=1e-10, rtol=0)
    probes = draw_probes(4000, 4, geom.dim, "rademacher", generator=generator(0, "test_likelihood", "sp"), dtype=F64)
    _, est = field_and_divergence(field, x, t, geom, probes=probes, vjp_batch=1000)
    se = est.std(0) / math.sqrt(est.shape[0])
    assert ((est.mean(0) - exact[0]).abs() <= 3 * se).all()


def fibonacci_sphere(n: int) -> torch.Tensor:
    """``[n, 3]`` nearly uniform points on S^2 (equal-area quadrature nodes)."""
    i = torch.arange(n, dtype=F64) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (3 - math.sqrt(5)) * i
    r = (1 - z**2).sqrt()
    return torch.stack([r * phi.cos(), r * phi.sin(), z], -1)


@pytest.mark.parametrize("method,steps,tol", [("rk4", 10, 1e-4), ("euler", 50, 1e-2)])
def test_flow_density_on_the_sphere_integrates_to_one(method, steps, tol):
    """A time-dependent gradient flow on S^2 (layout [3, 1], last radius 1): ∫ p_1 dA = 1 by quadrature."""
    geom = ProductSpheres((3, 1), last_radius=1.0, bias_prior_std=1.0)  # S^2 x R
    a = torch.tensor([0.5, -0.2, 0.4], dtype=F64)

    def velocity(x, t):  # moves the sphere coordinates only; the bias keeps its N(0, 1) prior
        return torch.cat([(1 + t)[:, None] * a + 0.3 * torch.sin(3 * x[:, :3]), torch.zeros_like(x[:, 3:])], -1)

    nodes = fibonacci_sphere(2000)
    x = torch.cat([nodes, torch.zeros(len(nodes), 1, dtype=F64)], -1)
    res = log_likelihood(velocity, x, geom, method=method, steps=steps, vjp_batch=4)
    sphere_logp = res.logp + 0.5 * math.log(2 * math.pi)  # minus log N(0; 0, 1) of the bias
    mass = 4 * math.pi * sphere_logp.exp().mean().item()
    assert mass == pytest.approx(1.0, abs=tol)
    assert sphere_logp.max() - sphere_logp.min() > 1.0  # far from uniform


# --------------------------------------------------------------------------------------------------------------
# The stage and the figure on tiny (untrained) flows


def _write_flow(tmp_path, flow_id, cfg, data):
    from weightflow.flow import save_flow
    from weightflow.flow.model_file import build_network
    from weightflow.flow.stages import flow_config

    config = flow_config(cfg, flow_id, data.weights)
    path = tmp_path / flow_id / "model.pt"
    save_flow(path, build_network(config), config, holdout_runs=[0, 1])
    return path


def test_likelihood_stage_and_figure(tmp_path):
    from weightflow.io import WeightsFile, save_weights
    from weightflow.flow.samples import save_candidates
    from weightflow.likelihood.stage import likelihood_stage
    from weightflow.plots.loglik import loglik_stage
    from weightflow.runner import StageJob

    sizes = (4, 3, 3)
    cfg = {"name": "tiny", "dataset": "iris", "seed": 0, "device": "cpu", "layer_sizes": list(sizes),
           "ensemble": {"init_std": 0.5}, "flow": {"holdout_fraction": 0.25}, "canonical": {"last_layer": "sphere"},
           "model": {"name": "mlp", "width": 16, "depth": 2, "time_size": 8},
           "likelihood": {"networks": 2, "probes": 3, "exact_networks": 2, "steps": 3}}
    spheres = ProductSpheres(sizes, bias_prior_std=0.5)
    runs = torch.arange(8).repeat_interleave(2)
    raw = WeightsFile(Euclidean(sizes, 0.5, 0.5).sample_prior(16, generator(0, "raw")), sizes, {"run": runs})
    canonical = WeightsFile(spheres.sample_prior(16, generator(0, "can")), sizes, {"run": runs})
    flows = {"euclidean-none-independent": raw, "geometric-none-independent": canonical,
             "normalized-none-ot": canonical}
    canonical_flows = {"geometric-none-independent", "normalized-none-ot"}
    files, samples = {}, {}
    for flow_id, data in flows.items():
        save_weights(tmp_path / flow_id / "data.pt", data)
        samples[flow_id] = (str(tmp_path / flow_id / "candidates.pt"), str(tmp_path / flow_id / "selection.csv"))
        save_candidates(samples[flow_id][0], {"euler": data.weights[:5] * 1.01},
                        [{"name": "euler", "sampler": "euler", "options": {}, "guidance": 0.0, "control": False}],
                        sizes, {"flow": flow_id})
        pd.DataFrame({"candidate": ["euler"], "selected": ["main"]}).to_csv(samples[flow_id][1], index=False)
        files[flow_id] = _write_flow(tmp_path, flow_id, cfg, data)
    csvs = []
    for flow_id in flows:
        others = [samples[f] for f in flows if f != flow_id and {f, flow_id} <= canonical_flows]
        csv = tmp_path / flow_id / "loglik.csv"
        likelihood_stage(StageJob(
            inputs={"model": str(files[flow_id]), "data": str(tmp_path / flow_id / "data.pt"),
                    "samples": samples[flow_id][0], "selection": samples[flow_id][1],
                    "others": [o[0] for o in others], "other_selections": [o[1] for o in others]},
            outputs={"csv": str(csv)}, params={"cfg": cfg}, wildcards={"flow": flow_id}))
        table = pd.read_csv(csv)
        hutch, exact = table[table.estimator == "hutchinson"], table[table.estimator == "exact"]
        assert set(hutch.source) == ({"holdout", "generated", "prior"} | ({"other_flow"} if others else set()))
        assert set(hutch[hutch.source == "other_flow"].source_flow) == (canonical_flows - {flow_id} if others else set())
        assert (hutch[hutch.source == "holdout"].run.isin([0, 1])).all()
        assert len(exact) == 2 and (exact.source == "holdout").all()
        assert table.logp.notna().all() and (table.t_start == 0.99).all()
        # Exact and Hutchinson rows of a network share the trajectory, hence x(0) and log p0(x(0)).
        paired = exact.merge(hutch, on=["source", "row"], suffixes=("_e", "_h"))
        assert len(paired) == 2
        assert ((paired.prior_logp_e - paired.prior_logp_h).abs() <= 1e-6 * paired.prior_logp_e.abs() + 1e-4).all()
        assert table.density.str.contains("Riemannian" if flow_id != "euclidean-none-independent" else "Lebesgue").all()
        csvs.append(str(csv))
    out = {"pdf": str(tmp_path / "fig" / "loglik.pdf"), "png": str(tmp_path / "fig" / "loglik.png"),
           "summary": str(tmp_path / "loglik_summary.csv")}
    loglik_stage(StageJob(inputs={"csvs": csvs}, outputs=out, params={"cfg": cfg}))
    summary = pd.read_csv(out["summary"])
    assert (summary.estimator == "hutchinson-exact").sum() == 3
    assert all(Path(p).stat().st_size > 0 for p in out.values())


@pytest.mark.parametrize("name", ["ngt", "pna"])
def test_exact_divergence_through_vector_field_models(name):
    """Batched VJPs through weightflow's models equal the trace of the full Jacobian (float64, per network);
    on the spheres, the trace of P J P of the tangent-projected field."""
    from weightflow.models import build_model

    sizes = (4, 3, 3)
    model = build_model(name, sizes, seed=0, width=8, depth=1, heads=2, time_size=8).double().eval()
    model.requires_grad_(False)
    for geom in (Euclidean(sizes, 0.5, 0.5), ProductSpheres(sizes)):
        x = geom.sample_prior(2, generator(0, "test_likelihood", name), dtype=F64)
        t = torch.tensor([0.2, 0.9], dtype=F64)
        field = tangent_field(model, geom)
        _, div = field_and_divergence(field, x, t, geom, vjp_batch=7)
        # Reference: full Jacobian and projection matrix of each network, one at a time.
        eye = torch.eye(geom.dim, dtype=F64)
        jac = torch.stack([torch.autograd.functional.jacobian(lambda xi: field(xi[None], t[b:b + 1])[0], x[b],
                                                              vectorize=True) for b in range(2)])
        proj = torch.stack([geom.proj_tangent(x[b].expand_as(eye), eye) for b in range(2)])  # rows P e_i
        expected = torch.einsum("bij,bjk,bki->b", proj, jac, proj)
        torch.testing.assert_close(div[0], expected, atol=1e-9, rtol=1e-9)

"""Log-densities of a continuous flow by the instantaneous change of variables, integrated backwards.

A flow transports the prior ``p0`` along ``dx/dt = u(x, t)``; along a trajectory
``d/dt log p_t(x_t) = -div u(x_t, t)``.  For a point ``x`` at time ``t_start`` (``1`` or ``1 - δ``, see
below) the augmented state ``[x, a]`` is integrated from ``t_start`` back to ``0``,

    dx/dt = u(x, t),    da/dt = -div u(x, t),    x(t_start) = x,  a(t_start) = 0,

so that ``a(0) = ∫_0^{t_start} div u(x_t, t) dt`` and

    log p_{t_start}(x) = log p0(x(0)) - a(0).

On a manifold the field is the tangent-projected one and ``div`` the Riemannian divergence
(:mod:`weightflow.likelihood.divergence`); ``log p0`` is ``geometry.prior_log_prob``, a density with respect to
the Riemannian volume (Lebesgue measure in flat space).

Integrators:

* ``method='euler'``: the Riemannian Euler scheme ``x_{k+1} = exp_{x_k}(-h_k u(x_k, t_k))`` (``geometry.exp``;
  plain Euler in flat space) on a fixed time grid; iterates stay on the manifold.  The divergence integral
  along these iterates uses the trapezoid rule in the grid variable (``t``, or ``s`` for the log grid), i.e.
  each grid point's divergence is computed once and shared by its two intervals (``steps + 1`` evaluations).
* any other torchdiffeq method (``rk4``, ``midpoint``, ``dopri5``, ...): ``torchdiffeq.odeint`` of the augmented
  state in the ambient space — fixed-step methods on the time grid, adaptive ones with ``atol``/``rtol``.  On a
  manifold the tangent field keeps exact solutions on it; the field is evaluated at the projected point and the
  end point ``x(0)`` is projected before ``log p0`` is taken.

Time grids (fixed-step methods): ``uniform`` in ``t``, or ``log`` — uniform in ``s = -log(1 - t)``.  For
x1-prediction models the velocity ``(x̂1 - x)/(1 - t)`` and its divergence (``≈ -D/(1 - t)``) blow up as
``t → 1``, hence ``t_start = 1 - δ`` and the log grid: in ``s`` the term ``-D/(1 - t) dt = -D ds`` is constant,
so the trapezoid rule integrates it exactly (a uniform grid with step ``h ≥ δ`` misestimates ``∫ dt/(1 - t)``
by ``O(D)`` nats), and an Euler step in ``t`` follows a geodesic towards a fixed ``x̂1`` exactly.
The reported density is then ``p_{1-δ}``, the flow's density at time ``1 - δ``.

Hutchinson probes are drawn once per trajectory (``[k, B, D]``) and projected onto the tangent space at every
evaluation; each probe's integral is kept separately, so every network gets ``k`` unbiased estimates of its
log-density from a single trajectory, their mean, and its standard error.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor
from torchdiffeq import odeint

from weightflow.likelihood.divergence import Velocity, draw_probes, field_and_divergence, tangent_field
from weightflow.utils import progress

__all__ = ["LogLikResult", "log_likelihood", "time_grid", "trapezoid_weights", "DIVERGENCES", "ADAPTIVE_METHODS",
           "FIXED_METHODS"]

log = logging.getLogger(__name__)

DIVERGENCES = ("exact", "hutchinson")
FIXED_METHODS = ("euler", "midpoint", "heun3", "rk4")
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
GRIDS = ("uniform", "log")


@dataclass
class LogLikResult:
    """Log-densities of ``B`` points under a flow.

    Attributes:
        logp: ``[B]`` ``log p_{t_start}(x)`` (Hutchinson: the mean of the ``k`` per-probe estimates); float64
            like the other log-densities (the Euler quadrature accumulates in float64).
        logp_se: ``[B]`` standard error of ``logp`` over the probes (0 for exact; NaN for one probe).
        logp_per_probe: ``[m, B]`` per-probe estimates (``m = 1`` for exact).
        prior_logp: ``[B]`` ``log p0(x(0))``.
        x0: ``[B, D]`` the end points ``x(0)`` of the backward trajectories.
        estimator: ``'exact'`` or ``'hutchinson'``.
        probes: probes per trajectory (``D`` for exact: one basis vector per coordinate).
        nfe: evaluations of the field (each one a forward pass and ``probes`` vector-Jacobian products).
        seconds: wall-clock time of the whole computation.
        t_start: time at which the density is evaluated.
    """

    logp: Tensor
    logp_se: Tensor
    logp_per_probe: Tensor
    prior_logp: Tensor
    x0: Tensor
    estimator: str
    probes: int
    nfe: int
    seconds: float
    t_start: float


def time_grid(t_start: float, steps: int, grid: str = "uniform", *, dtype: torch.dtype = torch.float64) -> Tensor:
    """``[steps + 1]`` decreasing times from ``t_start`` to ``0``: uniform in ``t`` or in ``s = -log(1 - t)``."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if grid == "uniform":
        return torch.linspace(t_start, 0.0, steps + 1, dtype=dtype)
    if grid == "log":
        if not t_start < 1.0:
            raise ValueError(f"the log time grid needs t_start < 1, got {t_start}")
        s = torch.linspace(-math.log1p(-t_start), 0.0, steps + 1, dtype=torch.float64)
        out = -torch.expm1(-s)
        out[0], out[-1] = t_start, 0.0
        return out.to(dtype)
    raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")


def trapezoid_weights(times: Tensor, grid: str = "uniform") -> Tensor:
    """``[N + 1]`` weights with ``sum_k w_k f(t_k) ≈ ∫_0^{t_start} f(t) dt`` on a grid from :func:`time_grid`.

    The trapezoid rule in the grid's own variable: ``t`` (uniform) or ``s = -log(1 - t)`` (log, where
    ``dt = (1 - t) ds``).
    """
    if grid == "log":
        tau, jac = -torch.log1p(-times), 1.0 - times
    else:
        tau, jac = times, torch.ones_like(times)
    steps = (tau[:-1] - tau[1:]).abs()
    w = torch.zeros_like(times)
    w[:-1] += steps / 2
    w[1:] += steps / 2
    return w * jac


def log_likelihood(
    velocity: Velocity,
    x1: Tensor,
    geometry,
    *,
    divergence: str = "exact",
    probes: int = 1,
    probe: str = "rademacher",
    method: str = "euler",
    steps: int = 100,
    grid: str = "uniform",
    atol: float = 1e-5,
    rtol: float = 1e-5,
    t_start: float = 1.0,
    generator: torch.Generator | None = None,
    vjp_batch: int = 64,
    show_progress: bool = False,
) -> LogLikResult:
    """``log p_{t_start}(x1)`` of the flow ``dx/dt = velocity(x, t)`` with prior ``geometry.prior_log_prob``.

    Args:
        velocity: ``velocity(x [B, D], t [B]) -> [B, D]`` (projected onto the tangent space here).
        x1: ``[B, D]`` points (projected onto the geometry's manifold first).
        geometry: a :mod:`weightflow.manifold` geometry (``project``, ``proj_tangent``, ``exp``, ``prior_log_prob``).
        divergence: ``'exact'`` (``D`` vector-Jacobian products per evaluation) or ``'hutchinson'``.
        probes, probe: number ``k`` and kind (``rademacher``/``gaussian``) of Hutchinson probes.
        method: ``'euler'`` (Riemannian Euler) or a torchdiffeq method (:data:`FIXED_METHODS`,
            :data:`ADAPTIVE_METHODS`); ``steps``/``grid`` for fixed-step methods, ``atol``/``rtol`` for adaptive.
        t_start: the time at which the density is evaluated (``1 - δ`` for x1-prediction fields).
        generator: random stream of the Hutchinson probes.
        vjp_batch: vectors per batched vector-Jacobian product.

    Returns:
        :class:`LogLikResult`.
    """
    _check_options(divergence, method, t_start, probes)
    start_clock = time.perf_counter()
    x = geometry.project(x1.detach())
    batch, dim = x.shape
    noise = None
    if divergence == "hutchinson":
        noise = draw_probes(probes, batch, dim, probe, generator=generator, dtype=x.dtype, device=x.device)
    field = tangent_field(velocity, geometry)
    nfe = 0

    def evaluate(xt: Tensor, t: float | Tensor) -> tuple[Tensor, Tensor]:
        nonlocal nfe
        nfe += 1
        tt = torch.as_tensor(t, dtype=xt.dtype, device=xt.device).expand(batch)
        return field_and_divergence(field, xt, tt, geometry, probes=noise, vjp_batch=vjp_batch)

    estimates = 1 if noise is None else noise.shape[0]
    with torch.no_grad():
        if method == "euler":
            x, acc = _integrate_euler(evaluate, geometry, x, estimates, t_start, steps, grid, show_progress)
        else:
            x, acc = _integrate_odeint(evaluate, geometry, x, estimates, t_start, steps, grid, method, atol, rtol)
        prior = geometry.prior_log_prob(x).double()
    return _result(prior, acc, x, divergence, dim if noise is None else estimates, nfe,
                   time.perf_counter() - start_clock, t_start)


def _check_options(divergence: str, method: str, t_start: float, probes: int) -> None:
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if method not in FIXED_METHODS + ADAPTIVE_METHODS:
        raise ValueError(f"method must be one of {FIXED_METHODS + ADAPTIVE_METHODS}, got {method!r}")
    if not 0.0 < t_start <= 1.0:
        raise ValueError(f"t_start must be in (0, 1], got {t_start}")
    if divergence == "hutchinson" and probes < 1:
        raise ValueError(f"probes must be >= 1, got {probes}")


def _integrate_euler(evaluate, geometry, x: Tensor, estimates: int, t_start: float, steps: int, grid: str,
                     show_progress: bool) -> tuple[Tensor, Tensor]:
    """Riemannian Euler backward from ``t_start`` to 0 (``geometry.exp``), the divergence integrated by the
    trapezoid rule on the same grid → ``(x(0), ∫ div [estimates, B])``."""
    times = time_grid(t_start, steps, grid)
    weights = trapezoid_weights(times, grid).tolist()
    times = times.tolist()
    acc = x.new_zeros(estimates, x.shape[0], dtype=torch.float64)
    for k in progress(range(steps + 1), desc="log-likelihood", disable=not show_progress):
        u, div = evaluate(x, times[k])
        acc = acc + weights[k] * div
        if k < steps:
            x = geometry.exp(x, -(times[k] - times[k + 1]) * u)
    return x, acc


def _integrate_odeint(evaluate, geometry, x: Tensor, estimates: int, t_start: float, steps: int, grid: str,
                      method: str, atol: float, rtol: float) -> tuple[Tensor, Tensor]:
    """The ambient augmented ODE ``d/dt [x, a] = [u, −div]`` with torchdiffeq from ``t_start`` to 0 (the state is
    projected onto the manifold before each evaluation) → ``(x(0), ∫ div [estimates, B])``."""

    def rhs(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        u, div = evaluate(geometry.project(state[0]), t)
        return u, -div

    acc0 = x.new_zeros(estimates, x.shape[0])
    if method in ADAPTIVE_METHODS:
        times = torch.tensor([t_start, 0.0], dtype=x.dtype, device=x.device)
    else:
        times = time_grid(t_start, steps, grid, dtype=x.dtype).to(x.device)
    xs, accs = odeint(rhs, (x, acc0), times, method=method, atol=atol, rtol=rtol)
    return geometry.project(xs[-1]), accs[-1]


def _result(prior: Tensor, acc: Tensor, x0: Tensor, divergence: str, probes: int, nfe: int, seconds: float,
            t_start: float) -> LogLikResult:
    """``log p = log p0(x(0)) − ∫ div`` per estimate, its mean and standard error over the probes."""
    per_probe = prior.unsqueeze(0) - acc.double()
    m = per_probe.shape[0]
    if divergence == "exact":
        se = torch.zeros_like(prior)
    elif m == 1:
        se = torch.full_like(prior, float("nan"))
    else:
        se = per_probe.std(dim=0) / math.sqrt(m)
    return LogLikResult(logp=per_probe.mean(dim=0), logp_se=se, logp_per_probe=per_probe, prior_logp=prior, x0=x0,
                        estimator=divergence, probes=probes, nfe=nfe, seconds=seconds, t_start=float(t_start))

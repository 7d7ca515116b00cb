"""Full-batch Hamiltonian Monte Carlo over many chains at once (the reference posterior).

``K`` chains live in one tensor ``θ [K, D]``; the potential ``U`` (:mod:`weightflow.posterior.target`) is evaluated
for all chains in one batched pass and differentiated once (row ``k`` of ``∇ Σ_k U_k`` is chain ``k``'s gradient),
exactly like the ensemble's vectorized training.  Everything else is per chain: its own step size, its own random
stream (``generator(seed, "chain", k)``: momenta, step-size jitter, Metropolis uniforms), its own accept/reject, so
running the chains together equals running them one by one.

**One transition** (identity mass matrix), for a chain at ``θ`` with step size ``ε`` and ``L`` leapfrog steps::

    p ~ N(0, I);  H(θ, p) = U(θ) + ‖p‖²/2
    p ← p − (ε/2) ∇U(θ);  repeat L times { θ ← θ + ε p;  p ← p − ε ∇U(θ) }  (the last momentum step is ε/2)
    accept (θ', p') with probability α = min(1, exp(H(θ, p) − H(θ', p')))           (Metropolis correction)

A non-finite energy is a rejection; ``H(θ', p') − H(θ, p) > 1000`` counts as a divergent transition.

**Trajectory length.** ``trajectory_length = null``: a fixed number ``L = leapfrog_steps`` of leapfrog steps (the
trajectory length ``L·ε`` is then fixed once ``ε`` is frozen).  ``trajectory_length = T``: ``L = ⌈T / ε⌉`` per chain
and transition, capped at ``leapfrog_steps`` (chains with fewer steps sit still while the others finish).  Each
transition's ``ε`` is the chain's step size times ``U(1 − jitter, 1 + jitter)`` (Neal 2011, §5.4: breaks the
periodic trajectories a fixed ``L·ε`` gives on near-Gaussian targets; ``jitter = 0`` turns it off).

**Step size.** A start ``ε_0`` per chain from the heuristic of Hoffman & Gelman (2014, Alg. 4: double or halve
``step_size`` until one leapfrog step's acceptance ratio crosses 1/2), then, during the ``warmup`` transitions,
dual averaging (their Alg. 5, Stan's constants γ = 0.05, t₀ = 10, κ = 0.75, μ = log 10ε₀) towards the acceptance
probability ``target_accept``::

    H̄_m = (1 − 1/(m + t₀)) H̄_{m−1} + (δ − α_m)/(m + t₀);   log ε_m = μ − √m/γ · H̄_m
    log ε̄_m = m^{−κ} log ε_m + (1 − m^{−κ}) log ε̄_{m−1}

after which ``ε = ε̄`` is frozen for the ``draws × thin`` sampling transitions (every ``thin``-th state is kept).
Gradient evaluations per chain: one at the start, ``1 + (number of heuristic trials)`` for the heuristic, and ``L``
per transition.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from weightflow.posterior.target import MLPPosterior, Potential, map_estimate, potential_and_grad, prior_draws
from weightflow.utils import generator, progress

__all__ = ["HMCConfig", "HMCResult", "DualAveraging", "leapfrog", "find_initial_step_size", "hmc_sample", "run_hmc"]

log = logging.getLogger(__name__)

DIVERGENCE_THRESHOLD = 1000.0
INITS = ("prior", "map")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class HMCConfig:
    """Settings of HMC (``posterior.hmc`` of an experiment; see config/README.md)."""

    chains: int = 16
    warmup: int = 300
    draws: int = 400
    thin: int = 2
    leapfrog_steps: int = 20
    trajectory_length: float | None = None
    step_size: float = 0.01
    target_accept: float = 0.8
    jitter: float = 0.1
    init: str = "prior"
    map_steps: int = 500
    map_lr: float = 0.01
    dtype: str = "float32"
    diagnostic_weights: int = 8

    def __post_init__(self) -> None:
        for name in ("chains", "draws", "thin", "leapfrog_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"posterior.hmc.{name}: must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"posterior.hmc.warmup: must be >= 0, got {self.warmup}")
        if self.trajectory_length is not None and self.trajectory_length <= 0:
            raise ValueError(f"posterior.hmc.trajectory_length: must be > 0 or null, got {self.trajectory_length}")
        if self.step_size <= 0:
            raise ValueError(f"posterior.hmc.step_size: must be > 0, got {self.step_size}")
        if not 0 < self.target_accept < 1:
            raise ValueError(f"posterior.hmc.target_accept: must be in (0, 1), got {self.target_accept}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"posterior.hmc.jitter: must be in [0, 1), got {self.jitter}")
        if self.init not in INITS:
            raise ValueError(f"posterior.hmc.init: unknown init {self.init!r}; use {' or '.join(INITS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"posterior.hmc.dtype: unknown dtype {self.dtype!r}; use {' or '.join(DTYPES)}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


@dataclass
class HMCResult:
    """Kept draws of ``K`` chains, draw-major.

    ``samples [S, K, D]``, ``potential [S, K]`` (``U`` of each kept state), ``accept_prob [S, K]`` (α of the
    transition that produced it), per chain ``step_size [K]`` (frozen ε), ``accept_rate [K]`` and
    ``warmup_accept_rate [K]`` (mean α over the sampling / warm-up transitions), ``divergences [K]`` (sampling
    phase) and ``leapfrog_steps [K]`` (mean L per sampling transition); ``grad_evals`` per chain, ``seconds`` wall
    time, ``cpu_seconds`` process CPU time."""

    samples: Tensor
    potential: Tensor
    accept_prob: Tensor
    step_size: Tensor
    accept_rate: Tensor
    warmup_accept_rate: Tensor
    divergences: Tensor
    leapfrog_steps: Tensor
    grad_evals: int
    seconds: float
    cpu_seconds: float

    @property
    def chains(self) -> int:
        return self.samples.shape[1]

    @property
    def draws(self) -> int:
        return self.samples.shape[0]


class DualAveraging:
    """Per-chain dual averaging of ``log ε`` (Hoffman & Gelman 2014, Alg. 5; Stan's constants)."""

    def __init__(self, step_size: Tensor, target: float, *, gamma: float = 0.05, t0: float = 10.0,
                 kappa: float = 0.75):
        self.mu = torch.log(10.0 * step_size.double())
        self.target, self.gamma, self.t0, self.kappa = target, gamma, t0, kappa
        self.h_bar = torch.zeros_like(self.mu)
        self.log_step = torch.log(step_size.double())
        self.log_step_bar = torch.zeros_like(self.mu)
        self.count = 0

    @property
    def step_size(self) -> Tensor:
        """The current (adapting) ``ε_m``."""
        return self.log_step.exp()

    @property
    def final_step_size(self) -> Tensor:
        """The averaged ``ε̄_m`` that is frozen after warm-up."""
        return self.log_step_bar.exp()

    def update(self, accept_prob: Tensor) -> Tensor:
        """One adaptation step with the transition's acceptance probabilities ``α [K]``; returns ``ε_m [K]``."""
        self.count += 1
        m = self.count
        eta = 1.0 / (m + self.t0)
        self.h_bar = (1.0 - eta) * self.h_bar + eta * (self.target - accept_prob.double())
        self.log_step = self.mu - math.sqrt(m) / self.gamma * self.h_bar
        weight = m ** (-self.kappa)
        self.log_step_bar = weight * self.log_step + (1.0 - weight) * self.log_step_bar
        return self.step_size


def _normals(gens: Sequence[torch.Generator], dim: int, like: Tensor) -> Tensor:
    """One ``N(0, I_dim)`` draw per chain from its own generator → ``[K, dim]``."""
    return torch.stack([torch.randn(dim, generator=g, dtype=like.dtype) for g in gens]).to(like.device)


def _uniforms(gens: Sequence[torch.Generator]) -> Tensor:
    """One ``U(0, 1)`` float64 draw per chain → ``[K]`` (CPU)."""
    return torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in gens])


def leapfrog(potential: Potential, theta: Tensor, momentum: Tensor, grad: Tensor, step_size: Tensor,
             steps: Tensor | int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``steps`` leapfrog steps of size ``step_size [K]`` (both per chain) from ``(θ, p)`` with ``∇U(θ) = grad``.

    Returns ``(θ', p', U(θ'), ∇U(θ'))``.  A chain whose ``steps`` is smaller than the largest stays put once done
    (its potential is recomputed at the same point, so every chain's result is that of its own ``steps``)."""
    num = theta.shape[0]
    steps = torch.as_tensor(steps).expand(num) if not isinstance(steps, Tensor) or steps.ndim == 0 else steps
    steps = steps.to(theta.device)
    eps = step_size.to(theta.device, theta.dtype).unsqueeze(-1)
    p = momentum - 0.5 * eps * grad
    u = None
    for step in range(int(steps.max())):
        moving = (step < steps).unsqueeze(-1)
        theta = torch.where(moving, theta + eps * p, theta)
        u, grad = potential_and_grad(potential, theta)
        kick = (step < steps - 1).unsqueeze(-1)
        p = torch.where(kick, p - eps * grad, p)
    p = p - 0.5 * eps * grad
    return theta, p, u, grad


def _energy(u: Tensor, p: Tensor) -> Tensor:
    return u.double() + 0.5 * p.double().square().sum(-1)


def _log_ratio(h0: Tensor, h1: Tensor) -> Tensor:
    """``H0 − H1`` with non-finite values as −∞ (a certain rejection)."""
    delta = (h0 - h1).cpu()
    return torch.where(torch.isfinite(delta), delta, torch.full_like(delta, -math.inf))


def find_initial_step_size(potential: Potential, theta: Tensor, u: Tensor, grad: Tensor, step_size: float,
                           gens: Sequence[torch.Generator], *, max_trials: int = 60) -> tuple[Tensor, int]:
    """Hoffman & Gelman (2014, Alg. 4) per chain: from ``step_size``, double (or halve) ``ε`` until the acceptance
    ratio of one leapfrog step from ``(θ, p ~ N(0, I))`` crosses 1/2.  Returns ``(ε [K], gradient evaluations)``."""
    p = _normals(gens, theta.shape[1], theta)
    h0 = _energy(u, p)
    eps = torch.full((theta.shape[0],), float(step_size), dtype=torch.float64)

    def ratio(eps: Tensor) -> Tensor:
        th1, p1, u1, _ = leapfrog(potential, theta, p, grad, eps, 1)
        return _log_ratio(h0, _energy(u1, p1))

    log_ratio, evals = ratio(eps), 1
    direction = torch.where(log_ratio > math.log(0.5), 1.0, -1.0).double()
    for _ in range(max_trials):
        active = direction * log_ratio > -direction * math.log(2.0)
        if not active.any():
            break
        eps = torch.where(active, eps * 2.0**direction, eps)
        log_ratio = torch.where(active, ratio(eps), log_ratio)
        evals += 1
    return eps, evals


def hmc_sample(potential: Potential, init: Tensor, cfg: HMCConfig, *, seed: int,
               chain_ids: Sequence[int] | None = None, desc: str = "hmc") -> HMCResult:
    """Run ``cfg.warmup`` adaptation and ``cfg.draws × cfg.thin`` sampling transitions of ``K = len(init)`` chains
    from ``init [K, D]`` (see the module docstring).  Chain ``k`` uses the random stream
    ``generator(seed, "chain", chain_ids[k])`` (default ``chain_ids = range(K)``)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    num, dim = init.shape
    chain_ids = list(range(num)) if chain_ids is None else list(chain_ids)
    if len(chain_ids) != num:
        raise ValueError(f"chain_ids has {len(chain_ids)} entries for {num} chains")
    gens = [generator(seed, "chain", c) for c in chain_ids]
    theta = init.detach().clone()
    u, grad = potential_and_grad(potential, theta)
    if not torch.isfinite(u).all():
        raise FloatingPointError("HMC: the potential is not finite at the initial state of some chain")
    step, evals = find_initial_step_size(potential, theta, u, grad, cfg.step_size, gens)
    evals += 1
    adapt = DualAveraging(step, cfg.target_accept)
    log.info("HMC: %d chains, D = %d; initial step sizes %.3g .. %.3g", num, dim, step.min(), step.max())

    def num_steps(eps: Tensor) -> Tensor:
        if cfg.trajectory_length is None:
            return torch.full(eps.shape, cfg.leapfrog_steps, dtype=torch.long)
        return torch.ceil(cfg.trajectory_length / eps).long().clamp(1, cfg.leapfrog_steps)

    def transition(theta, u, grad, eps):
        if cfg.jitter > 0:
            eps = eps * (1.0 + cfg.jitter * (2.0 * _uniforms(gens) - 1.0))
        p = _normals(gens, dim, theta)
        steps = num_steps(eps)
        th1, p1, u1, g1 = leapfrog(potential, theta, p, grad, eps, steps)
        log_ratio = _log_ratio(_energy(u, p), _energy(u1, p1))
        log_alpha = log_ratio.clamp(max=0.0)
        accept = torch.log(_uniforms(gens)) < log_alpha
        divergent = log_ratio < -DIVERGENCE_THRESHOLD
        keep = accept.to(theta.device)
        theta = torch.where(keep.unsqueeze(-1), th1, theta)
        u = torch.where(keep, u1, u)
        grad = torch.where(keep.unsqueeze(-1), g1, grad)
        return theta, u, grad, log_alpha.exp(), divergent, steps, int(steps.max())

    total = cfg.warmup + cfg.draws * cfg.thin
    samples = torch.empty(cfg.draws, num, dim, dtype=theta.dtype)
    potentials = torch.empty(cfg.draws, num, dtype=torch.float64)
    accepts = torch.empty(cfg.draws, num, dtype=torch.float64)
    warm_alpha = torch.zeros(num, dtype=torch.float64)
    alpha_sum = torch.zeros(num, dtype=torch.float64)
    divergences = torch.zeros(num, dtype=torch.long)
    steps_sum = torch.zeros(num, dtype=torch.float64)
    eps = adapt.step_size
    bar = progress(range(total), desc=f"{desc} ×{num}", unit="it")
    for it in bar:
        warm = it < cfg.warmup
        theta, u, grad, alpha, divergent, steps, evals_it = transition(theta, u, grad, eps)
        evals += evals_it
        if warm:
            warm_alpha += alpha
            eps = adapt.update(alpha)
            if it == cfg.warmup - 1:
                eps = adapt.final_step_size
                log.info("warm-up done: step sizes %.4g .. %.4g (frozen), warm-up acceptance %.3f",
                         eps.min(), eps.max(), (warm_alpha / cfg.warmup).mean())
            continue
        i = it - cfg.warmup
        alpha_sum += alpha
        divergences += divergent.long()
        steps_sum += steps.double()
        if (i + 1) % cfg.thin == 0:
            d = (i + 1) // cfg.thin - 1
            samples[d] = theta.detach().cpu()
            potentials[d] = u.detach().double().cpu()
            accepts[d] = alpha
        if (i + 1) % max(1, total // 20) == 0:
            bar.set_postfix(accept=f"{(alpha_sum / (i + 1)).mean():.3f}", eps=f"{eps.mean():.3g}", refresh=False)
    sampled = cfg.draws * cfg.thin
    result = HMCResult(
        samples=samples, potential=potentials, accept_prob=accepts, step_size=eps.clone(),
        accept_rate=alpha_sum / sampled, warmup_accept_rate=warm_alpha / max(cfg.warmup, 1),
        divergences=divergences, leapfrog_steps=steps_sum / sampled, grad_evals=evals,
        seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu_start,
    )
    log.info("HMC done: %d draws × %d chains, acceptance %.3f (min %.3f), %d divergent, %d gradient evaluations "
             "per chain, %.1f s (%.1f CPU s)", result.draws, num, result.accept_rate.mean(), result.accept_rate.min(),
             int(divergences.sum()), evals, result.seconds, result.cpu_seconds)
    return result


def run_hmc(posterior: MLPPosterior, cfg: HMCConfig, *, seed: int, chain_ids: Sequence[int] | None = None) -> HMCResult:
    """HMC on an MLP posterior: chain ``k`` starts from a prior draw of ``generator(seed, "init", k)`` (``init:
    prior``) or from the MAP estimate reached from it (``init: map``: :func:`map_estimate`)."""
    chain_ids = list(range(cfg.chains)) if chain_ids is None else list(chain_ids)
    dtype = cfg.torch_dtype
    theta0 = prior_draws(posterior.layout, len(chain_ids), posterior.prior_std,
                         [generator(seed, "init", k) for k in chain_ids], dtype=dtype).to(posterior.x.device)
    cpu_start = time.process_time()
    map_seconds = 0.0
    if cfg.init == "map":
        start = time.perf_counter()
        theta0 = map_estimate(posterior, theta0, steps=cfg.map_steps, lr=cfg.map_lr, num_data=posterior.num_data)
        map_seconds = time.perf_counter() - start
    map_cpu = time.process_time() - cpu_start
    result = hmc_sample(posterior, theta0, cfg, seed=seed, chain_ids=chain_ids)
    result.seconds += map_seconds
    result.cpu_seconds += map_cpu
    if cfg.init == "map":
        result.grad_evals += cfg.map_steps
    return result

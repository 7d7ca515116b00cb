"""Mean-field Gaussian variational inference (Bayes by backprop, Blundell et al. 2015), vectorized over members.

``M`` independent members, each a diagonal Gaussian ``q_m(θ) = N(μ_m, diag(σ_m²))`` with ``σ = softplus(ρ)``, live in
two tensors ``μ, ρ [M, D]``.  Member ``m`` maximizes its evidence lower bound against the prior
``p(θ) = N(0, σ_p² I)`` (:mod:`weightflow.posterior.target`)::

    ELBO_m = E_{q_m}[log p(y | x, θ)] − KL(q_m ‖ p),
    KL(q ‖ p) = Σ_d [ log(σ_p / σ_d) + (σ_d² + μ_d²) / (2σ_p²) − 1/2 ]                      (closed form)

The expectation is estimated with the reparameterization ``θ = μ + σ ⊙ ε``, ``ε ~ N(0, I)`` (``mc_samples`` draws
per member and step) on the full training set or on a minibatch (``N/|B| · Σ_{i∈B}``; each member its own
seeded shuffles).  One Adam optimizer over ``(μ, ρ)`` minimizes ``Σ_m −ELBO_m / N``; Adam is elementwise, so this
equals ``M`` separate fits.  The learning rate decays from ``lr`` to ``final_lr_fraction · lr`` (cosine).  Trained
members are sampled into weights: ``samples_per_member`` draws ``μ_m + σ_m ⊙ ε`` each.

When the true posterior is a product of Gaussians (e.g. the mean of Gaussian data with known variance), the
mean-field family contains it and the optimum of the ELBO is the posterior itself.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import pandas as pd
import torch
from torch import Tensor

from weightflow.posterior.target import MLPPosterior
from weightflow.utils import progress
from weightflow.weights import cross_entropy, init_weights

__all__ = ["VIConfig", "MeanFieldResult", "kl_to_prior", "fit_mean_field", "mlp_nll", "sample_mean_field", "run_vi"]

log = logging.getLogger(__name__)

# Data term of the ELBO: theta [M, S, D] (S reparameterized draws per member), step -> negative log-likelihood
# estimate [M, S] (row m may use member m's own minibatch).
NegLogLik = Callable[[Tensor, int], Tensor]


@dataclass
class VIConfig:
    """Settings of mean-field VI (``posterior.vi`` of an experiment; see config/README.md)."""

    members: int = 8
    steps: int = 3000
    batch_size: int | None = None
    lr: float = 0.01
    final_lr_fraction: float = 0.01
    mc_samples: int = 1
    init_sigma: float = 0.01
    samples_per_member: int = 25

    def __post_init__(self) -> None:
        for name in ("members", "steps", "mc_samples", "samples_per_member"):
            if getattr(self, name) < 1:
                raise ValueError(f"posterior.vi.{name}: must be >= 1, got {getattr(self, name)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"posterior.vi.batch_size: must be >= 1 or null, got {self.batch_size}")
        if self.lr <= 0 or self.init_sigma <= 0:
            raise ValueError(f"posterior.vi.lr and init_sigma must be > 0, got {self.lr} and {self.init_sigma}")
        if not 0 <= self.final_lr_fraction <= 1:
            raise ValueError(f"posterior.vi.final_lr_fraction: must be in [0, 1], got {self.final_lr_fraction}")


@dataclass
class MeanFieldResult:
    """``mean, std [M, D]`` of the fitted ``q_m``; ``history`` (step, member, elbo per data point: the last
    ``−loss`` estimate) every ~1 % of the steps; ``seconds``, ``cpu_seconds``."""

    mean: Tensor
    std: Tensor
    history: pd.DataFrame
    seconds: float
    cpu_seconds: float

    @property
    def final_elbo(self) -> Tensor:
        """``[M]`` the last recorded ELBO / N of each member."""
        last = self.history[self.history.step == self.history.step.max()].sort_values("member")
        return torch.tensor(last.elbo.to_numpy())


def kl_to_prior(mean: Tensor, std: Tensor, prior_std: float) -> Tensor:
    """``KL(N(μ, diag σ²) ‖ N(0, σ_p² I))`` → ``[...]`` (summed over the last dim)."""
    var_ratio = (std / prior_std).square()
    return 0.5 * (var_ratio + (mean / prior_std).square() - 1.0 - torch.log(var_ratio)).sum(-1)


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def fit_mean_field(nll: NegLogLik, init_mean: Tensor, prior_std: float, cfg: VIConfig, *, num_data: int,
                   generator: torch.Generator, desc: str = "vi") -> MeanFieldResult:
    """Fit ``M = len(init_mean)`` mean-field Gaussians from ``μ = init_mean [M, D]``, ``σ = cfg.init_sigma``
    (see the module docstring).  ``num_data`` only scales the loss (to a per-data-point ELBO)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    mean = init_mean.detach().clone().requires_grad_(True)
    rho = torch.full_like(mean, _inverse_softplus(cfg.init_sigma)).requires_grad_(True)
    opt = torch.optim.Adam([mean, rho], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps, eta_min=cfg.lr * cfg.final_lr_fraction)
    members, dim = mean.shape
    rows, every = [], max(1, cfg.steps // 100)
    bar = progress(range(cfg.steps), desc=f"{desc} ×{members}", unit="step")
    for step in bar:
        std = torch.nn.functional.softplus(rho)
        eps = torch.randn(members, cfg.mc_samples, dim, generator=generator, dtype=mean.dtype).to(mean.device)
        theta = mean.unsqueeze(1) + std.unsqueeze(1) * eps
        neg_elbo = nll(theta, step).mean(1) + kl_to_prior(mean, std, prior_std)  # [M]
        opt.zero_grad()
        (neg_elbo.sum() / num_data).backward()
        opt.step()
        sched.step()
        if not torch.isfinite(neg_elbo).all():
            raise FloatingPointError(f"VI diverged at step {step + 1} (non-finite ELBO); lower posterior.vi.lr")
        if (step + 1) % every == 0 or step + 1 == cfg.steps:
            elbo = (-neg_elbo.detach() / num_data).cpu()
            rows.append(pd.DataFrame({"step": step + 1, "member": range(members), "elbo": elbo.numpy()}))
            bar.set_postfix(elbo=f"{elbo.mean():.4f}", refresh=False)
    std = torch.nn.functional.softplus(rho).detach()
    history = pd.concat(rows, ignore_index=True)
    result = MeanFieldResult(mean.detach(), std, history, time.perf_counter() - start, time.process_time() - cpu_start)
    log.info("VI done: %d members, %d steps, final ELBO/N %.4f ± %.4f, mean σ %.4f, %.1f s (%.1f CPU s)", members,
             cfg.steps, result.final_elbo.mean(), result.final_elbo.std(correction=0), std.mean(), result.seconds,
             result.cpu_seconds)
    return result


def mlp_nll(posterior: MLPPosterior, members: int, batch_size: int | None, generator: torch.Generator) -> NegLogLik:
    """The data term of an MLP posterior: ``N · mean CE`` on the full training set (``batch_size`` null or ≥ N) or
    on member ``m``'s minibatch of the step (epochs of per-member seeded shuffles, like ensemble training)."""
    n = posterior.num_data
    layout, x, y = posterior.layout, posterior.x, posterior.y
    if batch_size is None or batch_size >= n:
        def full(theta: Tensor, step: int) -> Tensor:
            m, s, d = theta.shape
            return n * cross_entropy(theta.reshape(m * s, d), layout, x, y).view(m, s)

        return full
    per_epoch = -(-n // batch_size)
    state: dict[str, Tensor] = {}

    def minibatch(theta: Tensor, step: int) -> Tensor:
        m, s, d = theta.shape
        if step % per_epoch == 0:
            state["order"] = torch.argsort(torch.rand(members, n, generator=generator), dim=1).to(x.device)
        start = (step % per_epoch) * batch_size
        idx = state["order"][:, start:start + batch_size]  # [M, b]
        xb = x[idx].unsqueeze(1).expand(m, s, *idx.shape[1:], x.shape[-1]).reshape(m * s, idx.shape[1], x.shape[-1])
        yb = y[idx].unsqueeze(1).expand(m, s, idx.shape[1]).reshape(m * s, idx.shape[1])
        return n * cross_entropy(theta.reshape(m * s, d), layout, xb, yb).view(m, s)

    return minibatch


def sample_mean_field(mean: Tensor, std: Tensor, num: int, *, generator: torch.Generator) -> Tensor:
    """``num`` draws ``μ_m + σ_m ⊙ ε`` of every member → ``[M, num, D]``."""
    eps = torch.randn(mean.shape[0], num, mean.shape[1], generator=generator, dtype=mean.dtype).to(mean.device)
    return mean.unsqueeze(1) + std.unsqueeze(1) * eps


def run_vi(posterior: MLPPosterior, cfg: VIConfig, *, seed_generator: Callable[[str], torch.Generator]
           ) -> tuple[MeanFieldResult, Tensor]:
    """Mean-field VI of an MLP posterior, then ``cfg.samples_per_member`` draws per member → (fit, ``[M, S, D]``).

    ``μ`` starts like an ensemble run (weights ~ N(0, σ_p²), zero biases); ``seed_generator(key)`` gives the random
    stream of ``key`` (``init``, ``batches``, ``noise``, ``samples``)."""
    init = init_weights(posterior.layout, cfg.members, init_std=posterior.prior_std, bias_std=0.0,
                        generator=seed_generator("init"), dtype=posterior.x.dtype).to(posterior.x.device)
    nll = mlp_nll(posterior, cfg.members, cfg.batch_size, seed_generator("batches"))
    fit = fit_mean_field(nll, init, posterior.prior_std, cfg, num_data=posterior.num_data,
                         generator=seed_generator("noise"))
    samples = sample_mean_field(fit.mean, fit.std, cfg.samples_per_member, generator=seed_generator("samples"))
    return fit, samples

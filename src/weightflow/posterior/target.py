"""The Bayesian posterior of an MLP classifier over its flat weights (the target of HMC, VI and Laplace).

For ``θ ∈ R^D`` in the flat layout (:mod:`weightflow.weights`), training inputs ``x [N, n0]``, labels ``y [N]``::

    log p(y | x, θ) = Σ_i log softmax(f_θ(x_i))_{y_i}                       (= −N · mean cross-entropy)
    log p(θ)        = −‖θ‖² / (2σ²) − (D/2) log(2πσ²)                       (every coordinate, biases included)
    U(θ)            = −log p(y | x, θ) + ‖θ‖² / (2σ²)                        (potential energy; p(θ | D) ∝ e^{−U})

This is the prior that ``ensemble.weight_decay = 1 / (N σ²)`` turns Adam/SGD into MAP estimation under, and the
one SGLD/SGHMC sample (:mod:`weightflow.ensemble`).  The logged "log-posterior" of a draw is ``−U(θ)``, the
unnormalized log density (the data's log evidence and the prior's constant are left out).

All functions are batched over leading networks: ``theta [B, D] -> [B]``; row ``b``'s value depends on row ``b``
only, so the gradient of the sum is every row's own gradient.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from weightflow.weights import MLPLayout, as_layout, cross_entropy, init_weights

__all__ = ["Potential", "MLPPosterior", "potential_and_grad", "prior_draws", "map_estimate"]

log = logging.getLogger(__name__)

# A potential energy U: theta [B, D] -> [B] (differentiable; row b depends on theta[b] only).
Potential = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class MLPPosterior:
    """``p(θ | x, y) ∝ exp(−U(θ))`` for an MLP ``layout`` with the isotropic Gaussian prior ``N(0, prior_std² I)``."""

    layout: MLPLayout
    x: Tensor
    y: Tensor
    prior_std: float

    @classmethod
    def from_data(cls, layer_sizes: Sequence[int] | MLPLayout, x: Tensor, y: Tensor, prior_std: float, *,
                  dtype: torch.dtype = torch.float32) -> "MLPPosterior":
        layout = as_layout(layer_sizes)
        if x.ndim != 2 or x.shape[1] != layout.num_features:
            raise ValueError(f"inputs {list(x.shape)} do not fit layer_sizes {list(layout.layer_sizes)}")
        if prior_std <= 0:
            raise ValueError(f"posterior.prior_std: must be > 0, got {prior_std}")
        return cls(layout, x.to(dtype), y.long(), float(prior_std))

    @property
    def num_data(self) -> int:
        return int(self.y.shape[0])

    @property
    def dim(self) -> int:
        return self.layout.dim

    def log_likelihood(self, theta: Tensor) -> Tensor:
        """``Σ_i log p(y_i | x_i, θ)`` → ``[B]``."""
        return -self.num_data * cross_entropy(theta, self.layout, self.x, self.y)

    def prior_energy(self, theta: Tensor) -> Tensor:
        """``‖θ‖² / (2σ²)`` → ``[B]`` (minus the log prior, up to its constant)."""
        return theta.square().sum(-1) / (2.0 * self.prior_std**2)

    def potential(self, theta: Tensor) -> Tensor:
        """``U(θ) = −log p(y | x, θ) + ‖θ‖² / (2σ²)`` → ``[B]``."""
        return self.prior_energy(theta) - self.log_likelihood(theta)

    __call__ = potential


def potential_and_grad(potential: Potential, theta: Tensor) -> tuple[Tensor, Tensor]:
    """``(U(θ) [B], ∇U(θ) [B, D])`` by one reverse pass (the rows are independent, so ``∇ Σ_b U_b`` is per row)."""
    with torch.enable_grad():
        x = theta.detach().requires_grad_(True)
        u = potential(x)
        (grad,) = torch.autograd.grad(u.sum(), x)
    return u.detach(), grad


def prior_draws(layout: MLPLayout, num: int, prior_std: float, generators: Sequence[torch.Generator], *,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """``num`` draws from ``N(0, prior_std² I)`` (biases included), draw ``k`` from ``generators[k]`` → ``[num, D]``."""
    if len(generators) != num:
        raise ValueError(f"need one generator per draw ({num}), got {len(generators)}")
    return torch.cat([init_weights(layout, 1, init_std=prior_std, bias_std=prior_std, generator=g, dtype=dtype)
                      for g in generators])


def map_estimate(potential: Potential, theta0: Tensor, *, steps: int, lr: float, num_data: int) -> Tensor:
    """MAP estimates from ``theta0 [B, D]``: ``steps`` full-batch Adam steps on ``U(θ) / num_data`` for every row at
    once (Adam is elementwise, so this equals ``B`` independent runs).  ``U / N`` is the mean cross-entropy plus the
    weight decay ``‖θ‖² / (2Nσ²)``, i.e. the ensemble's MAP objective without minibatch noise."""
    if steps < 0 or lr <= 0:
        raise ValueError(f"posterior.hmc.map_steps must be >= 0 and map_lr > 0, got {steps} and {lr}")
    theta = theta0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        (potential(theta).sum() / num_data).backward()
        opt.step()
    theta = theta.detach()
    if not torch.isfinite(theta).all():
        raise FloatingPointError("MAP initialization diverged (non-finite weights); lower posterior.hmc.map_lr")
    log.info("MAP init: %d Adam steps, mean U/N %.4f", steps, (potential(theta) / num_data).mean())
    return theta

"""Log-likelihoods of networks under a trained flow (:class:`weightflow.flow.FlowModel`).

Which density is reported, per flow geometry (the measure is the one of the flow's *prior* geometry):

* **euclidean**: the flow's density ``p_{t_start}`` on ``R^D`` (Lebesgue measure), prior ``N(0, σ0²)``.
* **geometric**: the density on the product of spheres ``M`` (its Riemannian volume: the spheres' surface
  measures times Lebesgue measure on the biases), prior uniform on the spheres × Gaussian biases, Riemannian
  divergence of the (tangent) field.
* **normalized**: its field is Euclidean but its prior and its data live on ``M`` (the Euclidean flow from a
  measure on ``M`` has no density on ``R^D``).  We report the density on ``M`` of the *tangent-projected*
  Normalized field ``P_x v(x, t)`` — the manifold restriction of the flow, integrated exactly like the
  Geometric flow — so Normalized and Geometric log-likelihoods share one reference measure and one prior and
  are comparable.  Points are projected onto ``M`` first (Normalized samples are x̂1 predictions, on ``M``
  only up to the model's error).

Densities w.r.t. different measures (``R^D`` vs ``M``) must not be compared; the CSV says which one each row is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from weightflow.likelihood.ode import LogLikResult, log_likelihood
from weightflow.utils import from_section

__all__ = ["LikelihoodSettings", "flow_log_likelihood", "density_measure"]


@dataclass(frozen=True)
class LikelihoodSettings:
    """The ``likelihood`` config section (see config/README.md)."""

    networks: int = 8
    divergence: str = "hutchinson"
    probes: int = 4
    probe: str = "rademacher"
    exact_networks: int = 2
    method: str = "euler"
    steps: int = 20
    grid: str = "log"
    atol: float = 1e-5
    rtol: float = 1e-5
    t_start: float = 0.99
    batch_size: int = 64
    vjp_batch: int = 64

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> "LikelihoodSettings":
        return from_section(cls, section, "likelihood")

    def solver_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`weightflow.likelihood.log_likelihood` (without the divergence choice)."""
        return dict(method=self.method, steps=self.steps, grid=self.grid, atol=self.atol, rtol=self.rtol,
                    t_start=self.t_start, vjp_batch=self.vjp_batch)


def density_measure(geometry) -> str:
    """Which measure the log-densities of ``geometry.prior_log_prob`` refer to, in words."""
    if geometry.num_factors == 0:
        return f"Lebesgue measure on R^{geometry.dim}"
    flat = geometry.dim - int(geometry.sphere_mask.sum())
    return f"Riemannian volume of M = {geometry.num_factors} spheres x R^{flat} (dim {geometry.intrinsic_dim})"


def flow_log_likelihood(flow, x: Tensor, settings: LikelihoodSettings, *, divergence: str | None = None,
                        generator: torch.Generator | None = None) -> LogLikResult:
    """``log p_{t_start}`` of networks ``x [B, D]`` (in the flow's representation: raw weights for euclidean
    flows, canonical weights for normalized/geometric ones) under ``flow``, in batches of
    ``settings.batch_size``; the measure is that of ``flow.prior`` (module docstring)."""
    divergence = divergence or settings.divergence
    parts = []
    for start in range(0, x.shape[0], settings.batch_size):
        chunk = x[start:start + settings.batch_size].to(flow.device, torch.float32)
        parts.append(log_likelihood(flow.velocity, chunk, flow.prior, divergence=divergence,
                                    probes=settings.probes, probe=settings.probe, generator=generator,
                                    **settings.solver_options()))
    first = parts[0]
    cat = lambda name, dim=0: torch.cat([getattr(p, name).cpu() for p in parts], dim=dim)  # noqa: E731
    return LogLikResult(
        logp=cat("logp"), logp_se=cat("logp_se"), logp_per_probe=cat("logp_per_probe", 1),
        prior_logp=cat("prior_logp"), x0=cat("x0"), estimator=first.estimator, probes=first.probes,
        nfe=first.nfe, seconds=sum(p.seconds for p in parts), t_start=first.t_start,
    )

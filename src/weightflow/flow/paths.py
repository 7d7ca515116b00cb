"""Probability paths of the three flows: which geometry carries the path and which one the prior p0.

=============  ===================================  =====================================================
flow           path x_t, target velocity u_t         prior p0
=============  ===================================  =====================================================
euclidean      x_t = (1-t) x0 + t x1, u_t = x1 - x0  N(0, prior_std²) weights, N(0, bias_prior_std²) biases
normalized     same Euclidean path                   uniform on the sphere factors × Gaussian biases
geometric      x_t = exp_{x0}(t log_{x0} x1) on the  uniform on the sphere factors × Gaussian biases
               spheres, linear on the biases; u_t
               = d/dt x_t in closed form
=============  ===================================  =====================================================

With ``sigma > 0`` the path point is perturbed, ``x_t ← exp_{x_t}(σ · P_{x_t} ξ)`` with ``ξ ~ N(0, I)`` and
``P`` the tangent projection (Euclidean: ``x_t + σ ξ``); the target velocity is left unchanged
(conditional flow matching with a Gaussian tube around each path).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from weightflow.manifold import Euclidean, ProductSpheres
from weightflow.weights import MLPLayout

__all__ = ["FlowPath", "build_path", "PATH_GEOMETRY", "last_layer_radius"]

# Which geometry class carries the path and which one defines the prior, per flow geometry.
PATH_GEOMETRY = {
    "euclidean": ("euclidean", "euclidean"),
    "normalized": ("euclidean", "spheres"),
    "geometric": ("spheres", "spheres"),
}


def _make(kind: str, layout: MLPLayout, params: dict[str, float]):
    if kind == "euclidean":
        return Euclidean(layout, params["prior_std"], params["bias_prior_std"])
    return ProductSpheres(layout, params["last_radius"], params["bias_prior_std"])


@dataclass
class FlowPath:
    """A flow's path geometry (paths, exp/log, tangent projections) and its prior geometry (p0)."""

    name: str
    geometry: Any
    prior: Any
    params: dict[str, float]
    sigma: float = 0.0

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``[n, D]`` fresh draws from p0 (on the prior geometry's manifold)."""
        return self.prior.sample_prior(n, generator=generator)

    def point_and_velocity(
        self, x0: Tensor, x1: Tensor, t: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(x_t, u_t)`` for coupled pairs ``x0, x1 [B, D]`` at times ``t [B]`` (σ-perturbed x_t)."""
        x_t, u_t = self.geometry.interpolate(x0, x1, t)
        if self.sigma > 0:
            xi = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype).to(x_t.device)
            x_t = self.geometry.exp(x_t, self.sigma * self.geometry.proj_tangent(x_t, xi))
        return x_t, u_t


def last_layer_radius(weights: Tensor, layout: MLPLayout) -> float:
    """Median Frobenius norm of the last layer's weight matrix over the rows of ``weights [N, D]``.

    Canonical weights all share it (the canonicalization's last-layer radius); it sets the radius of the
    last sphere factor of the product manifold."""
    w_start, b_start, _ = layout.offsets[-1]
    return float(weights[:, w_start:b_start].norm(dim=1).median())


def build_path(name: str, layout: MLPLayout, params: dict[str, float], sigma: float = 0.0) -> FlowPath:
    """The :class:`FlowPath` of flow geometry ``name`` (a key of :data:`PATH_GEOMETRY`).

    Args:
        params: ``prior_std``, ``bias_prior_std`` (Gaussian parts of p0) and ``last_radius`` (radius of the
            last-layer sphere; used by the sphere geometries).
    """
    if name not in PATH_GEOMETRY:
        raise ValueError(f"unknown flow geometry {name!r}; use one of {sorted(PATH_GEOMETRY)}")
    path_kind, prior_kind = PATH_GEOMETRY[name]
    geometry = _make(path_kind, layout, params)
    prior = geometry if prior_kind == path_kind else _make(prior_kind, layout, params)
    return FlowPath(name, geometry, prior, dict(params), float(sigma))

"""Probability paths of the three flows: which geometry carries the path and which one the prior p0.

=============  ===================================  =====================================================
flow           path x_t, target velocity u_t         prior p0
=============  ===================================  =====================================================
euclidean      x_t = (1-t) x0 + t x1, u_t = x1 - x0  N(0, prior_std²) weights, N(0, bias_prior_std²) biases
normalized     same Euclidean path                   uniform on the sphere factors × Gaussian biases (and a
                                                     Gaussian last layer in the free canonical form)
geometric      x_t = exp_{x0}(t log_{x0} x1) on the  same as normalized
               spheres, linear on the Euclidean
               coordinates; u_t = d/dt x_t in
               closed form
=============  ===================================  =====================================================

The table is the registry :data:`weightflow.flow.spec.GEOMETRIES`; the geometry objects come from
:data:`weightflow.manifold.GEOMETRY_CLASSES` (``Geometry.from_params``).

With ``sigma > 0`` the path point is perturbed, ``x'_t = exp_{x_t}(σ · P_{x_t} ξ)`` with ``ξ ~ N(0, I)`` and
``P`` the tangent projection (Euclidean: ``x_t + σ ξ``), and the target velocity is carried to the perturbed
point by parallel transport along that geodesic, ``u'_t = Γ_{x_t → x'_t} u_t`` (conditional flow matching with
a tube of radius σ around each path).  In flat space the transport is the identity (``u'_t = x1 − x0``); on the
spheres it keeps ``u'_t`` tangent at ``x'_t`` — the velocity objective projects the model's output onto that
tangent space, so an untransported ``u_t`` would ask for a component the model cannot produce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from weightflow.flow.spec import GEOMETRIES
from weightflow.manifold import GEOMETRY_CLASSES
from weightflow.weights import MLPLayout

__all__ = ["FlowPath", "build_path", "last_layer_radius"]


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
            perturbed = self.geometry.exp(x_t, self.sigma * self.geometry.proj_tangent(x_t, xi))
            x_t, u_t = perturbed, self.geometry.transport(x_t, perturbed, u_t)
        return x_t, u_t


def last_layer_radius(weights: Tensor, layout: MLPLayout) -> float:
    """Median Frobenius norm of the last layer's weight matrix over the rows of ``weights [N, D]``.

    Canonical weights all share it (the canonicalization's last-layer radius); it sets the radius of the
    last sphere factor of the product manifold."""
    w_start, b_start, _ = layout.offsets[-1]
    return float(weights[:, w_start:b_start].norm(dim=1).median())


def build_path(name: str, layout: MLPLayout, params: dict[str, Any], sigma: float = 0.0) -> FlowPath:
    """The :class:`FlowPath` of flow geometry ``name`` (a key of :data:`weightflow.flow.spec.GEOMETRIES`).

    Args:
        params: ``prior_std``, ``bias_prior_std`` (Gaussian parts of p0), ``last_layer`` (the canonical form:
            ``free`` or ``sphere``) and ``last_radius`` (radius of the last-layer sphere in the sphere form).
    """
    if name not in GEOMETRIES:
        raise ValueError(f"unknown flow geometry {name!r}; use one of {sorted(GEOMETRIES)}")
    kind = GEOMETRIES[name]
    geometry = GEOMETRY_CLASSES[kind.path].from_params(layout, params)
    prior = geometry if kind.prior == kind.path else GEOMETRY_CLASSES[kind.prior].from_params(layout, params)
    return FlowPath(name, geometry, prior, dict(params), float(sigma))

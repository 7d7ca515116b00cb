"""Flow-matching objectives and the time distribution.

Two parametrizations of the vector-field network ``f(x_t, t)``, selectable by name:

* ``x1`` (x1-prediction, the thesis' choice): ``f`` predicts the endpoint, loss ``mean ‖f(x_t, t) − x1‖²``;
  the sampler's velocity is ``velocity_from_x1(x_t, project(f), t)`` = ``(x̂1 − x_t)/(1 − t)`` in Euclidean
  space and ``log_{x_t}(x̂1)/(1 − t)`` on spheres.  (Integrating ``x̂1 − x0`` instead — a bug of public code —
  returns the average of the predictions along the path, not a sample.)
* ``velocity``: ``f`` predicts ``u_t``, loss ``mean ‖P_{x_t} f(x_t, t) − u_t‖²`` with ``P`` the tangent
  projection (identity in Euclidean space); the sampler's velocity is ``P_{x_t} f``.

Times: ``t ~ Beta(1, 2)`` (density 2(1 − t), more weight near the prior) or ``U(0, 1)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["OBJECTIVES", "TIME_DISTRIBUTIONS", "sample_time", "X1Prediction", "VelocityPrediction"]


def _uniform(u: Tensor) -> Tensor:
    return u


def _beta_1_2(u: Tensor) -> Tensor:
    # Inverse CDF of Beta(1, 2): F(t) = 1 − (1 − t)², so t = 1 − sqrt(1 − u).
    return 1.0 - torch.sqrt(1.0 - u)


TIME_DISTRIBUTIONS = {"beta": _beta_1_2, "uniform": _uniform}


def sample_time(n: int, distribution: str, generator: torch.Generator | None = None) -> Tensor:
    """``[n]`` times in ``[0, 1)`` from ``'beta'`` (Beta(1, 2)) or ``'uniform'``."""
    if distribution not in TIME_DISTRIBUTIONS:
        raise ValueError(f"unknown time distribution {distribution!r}; use one of {sorted(TIME_DISTRIBUTIONS)}")
    return TIME_DISTRIBUTIONS[distribution](torch.rand(n, generator=generator))


class X1Prediction:
    """The network predicts the endpoint x1."""

    name = "x1"

    @staticmethod
    def velocity(geometry, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        return geometry.velocity_from_x1(x_t, geometry.project(out), t)

    @staticmethod
    def loss(geometry, out: Tensor, x_t: Tensor, x1: Tensor, u_t: Tensor) -> Tensor:
        return (out.float() - x1).pow(2).mean()


class VelocityPrediction:
    """The network predicts the velocity u_t (tangent-projected on the manifold)."""

    name = "velocity"

    @staticmethod
    def velocity(geometry, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        return geometry.proj_tangent(x_t, out)

    @staticmethod
    def loss(geometry, out: Tensor, x_t: Tensor, x1: Tensor, u_t: Tensor) -> Tensor:
        return (geometry.proj_tangent(x_t, out.float()) - u_t).pow(2).mean()


OBJECTIVES = {"x1": X1Prediction, "velocity": VelocityPrediction}

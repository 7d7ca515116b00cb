"""Flow-matching objectives, loss weightings in time and time distributions — registries by name.

Two parametrizations of the vector-field network ``f(x_t, t)`` (:data:`OBJECTIVES`):

* ``x1`` (x1-prediction, the thesis' choice): ``f`` predicts the endpoint, squared error ``‖f(x_t, t) − x1‖²``
  (ambient); the sampler's velocity is ``velocity_from_x1(x_t, project(f), t)`` = ``(x̂1 − x_t)/(1 − t)`` in
  Euclidean space and ``log_{x_t}(x̂1)/(1 − t)`` on spheres.  (Integrating ``x̂1 − x0`` instead — a bug of
  public code — returns the average of the predictions along the path, not a sample.)
* ``velocity``: ``f`` predicts ``u_t``, squared error ``‖P_{x_t} f(x_t, t) − u_t‖²`` with ``P`` the tangent
  projection (identity in Euclidean space); the sampler's velocity is ``P_{x_t} f``.

Loss weightings in time (:data:`LOSS_WEIGHTINGS`), the per-network squared error ``[B, D]`` that is averaged:

* ``none``: the objective's own error (above).
* ``velocity``: the error of the sampler's velocity ``v̂ = objective.velocity(f)``, ``‖v̂ − u_t‖²``, times
  ``min(1, (1 − t)/δ)²`` (δ = :data:`MIN_REMAINING`).  For x1-prediction in Euclidean space, with
  ``x_t = (1 − t) x0 + t x1``, ``v̂ − u_t = (x̂1 − x_t)/(1 − t) − (x1 − x0) = (x̂1 − x1)/(1 − t)``: the x1-error
  weighted by ``1/max(1 − t, δ)²``; on spheres ``(log_{x_t} x̂1 − log_{x_t} x1)/(1 − t)``, the same with the log
  map.  Unweighted, an x1-loss counts an error ``e`` at ``t = 0.95`` as much as at ``t = 0``, while the sampler
  turns it into a velocity error ``e/(1 − t)``, twenty times larger.  The cap δ = 0.05 (as in Li & He 2025,
  "Back to basics: let denoising generative models denoise") bounds the weight at 1/δ² = 400.  For the
  velocity objective the weighting only caps ``t > 1 − δ``.

Times (:data:`TIME_DISTRIBUTIONS`): ``t ~ Beta(1, 2)`` (density 2(1 − t), more weight near the prior) or
``U(0, 1)``; each is an inverse CDF applied to ``U(0, 1)`` draws of the training generator.
With Beta(1, 2) times and the ``velocity`` weighting, x1-prediction weighs the velocity error by the density
2(1 − t) — the velocity objective with Beta(1, 2) times — i.e. its x1-error by 2/(1 − t) per unit time.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["OBJECTIVES", "TIME_DISTRIBUTIONS", "LOSS_WEIGHTINGS", "MIN_REMAINING", "sample_time", "flow_loss",
           "X1Prediction", "VelocityPrediction"]


def _uniform(u: Tensor) -> Tensor:
    return u


def _beta_1_2(u: Tensor) -> Tensor:
    # Inverse CDF of Beta(1, 2): F(t) = 1 − (1 − t)², so t = 1 − sqrt(1 − u).
    return 1.0 - torch.sqrt(1.0 - u)


TIME_DISTRIBUTIONS: dict[str, Callable[[Tensor], Tensor]] = {"beta": _beta_1_2, "uniform": _uniform}


def sample_time(n: int, distribution: str, generator: torch.Generator | None = None) -> Tensor:
    """``[n]`` times in ``[0, 1)`` from ``'beta'`` (Beta(1, 2)) or ``'uniform'``."""
    if distribution not in TIME_DISTRIBUTIONS:
        raise ValueError(f"unknown time distribution {distribution!r}; use one of {sorted(TIME_DISTRIBUTIONS)}")
    return TIME_DISTRIBUTIONS[distribution](torch.rand(n, generator=generator))


MIN_REMAINING = 0.05
"""δ of the ``velocity`` weighting: ``1 − t`` is floored at δ (weights at most 1/δ² = 400)."""


class X1Prediction:
    """The network predicts the endpoint x1."""

    name = "x1"

    @staticmethod
    def velocity(geometry, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        return geometry.velocity_from_x1(x_t, geometry.project(out), t)

    @staticmethod
    def squared_error(geometry, out: Tensor, x_t: Tensor, x1: Tensor, u_t: Tensor) -> Tensor:
        """``[B, D]`` squared error of the prediction (ambient)."""
        return (out.to(x1.dtype) - x1).pow(2)

    @classmethod
    def loss(cls, geometry, out: Tensor, x_t: Tensor, x1: Tensor, u_t: Tensor) -> Tensor:
        """Unweighted loss ``mean ‖f − x1‖²`` (mean over networks and coordinates)."""
        return cls.squared_error(geometry, out, x_t, x1, u_t).mean()


class VelocityPrediction:
    """The network predicts the velocity u_t (tangent-projected on the manifold)."""

    name = "velocity"

    @staticmethod
    def velocity(geometry, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        return geometry.proj_tangent(x_t, out)

    @staticmethod
    def squared_error(geometry, out: Tensor, x_t: Tensor, x1: Tensor, u_t: Tensor) -> Tensor:
        """``[B, D]`` squared error of the tangent-projected prediction."""
        return (geometry.proj_tangent(x_t, out.to(u_t.dtype)) - u_t).pow(2)

    @classmethod
    def loss(cls, geometry, out: Tensor, x_t: Tensor, x1: Tensor, u_t: Tensor) -> Tensor:
        """Unweighted loss ``mean ‖P f − u_t‖²``."""
        return cls.squared_error(geometry, out, x_t, x1, u_t).mean()


OBJECTIVES = {"x1": X1Prediction, "velocity": VelocityPrediction}


ErrorFn = Callable[[type, object, Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


def _objective_error(objective, geometry, out: Tensor, x_t: Tensor, x1: Tensor, u_t: Tensor, t: Tensor) -> Tensor:
    return objective.squared_error(geometry, out, x_t, x1, u_t)


def _velocity_error(objective, geometry, out: Tensor, x_t: Tensor, x1: Tensor, u_t: Tensor, t: Tensor) -> Tensor:
    t = t.to(u_t.dtype)
    v = objective.velocity(geometry, out.to(u_t.dtype), x_t, t)
    remaining = 1.0 - t
    return ((v - u_t) * (remaining / remaining.clamp_min(MIN_REMAINING)).unsqueeze(-1)).pow(2)


LOSS_WEIGHTINGS: dict[str, ErrorFn] = {"none": _objective_error, "velocity": _velocity_error}


def flow_loss(
    objective: str, weighting: str, geometry, out: Tensor, x_t: Tensor, x1: Tensor, u_t: Tensor, t: Tensor
) -> Tensor:
    """The training loss: the mean over networks and coordinates of the squared error ``[B, D]`` of loss
    weighting ``weighting`` for objective ``objective`` (``'none'`` gives exactly the objective's :meth:`loss`)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; use one of {sorted(OBJECTIVES)}")
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {weighting!r}; use one of {sorted(LOSS_WEIGHTINGS)}")
    return LOSS_WEIGHTINGS[weighting](OBJECTIVES[objective], geometry, out, x_t, x1, u_t, t).mean()

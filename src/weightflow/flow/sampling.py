"""Sampling trained flows: (Riemannian) Euler, torchdiffeq solvers, stochastic sampling and loss guidance.

All methods integrate ``dx/dt = v(x, t)`` from prior draws at ``t = 0`` to ``t = 1`` on the uniform grid
``t_k = k/steps``, with ``v = flow.velocity`` (for x1-prediction ``log_{x_t}(x̂1)/(1 − t)``).

* ``euler``: ``x_{k+1} = exp_{x_k}(h v(x_k, t_k))`` — the Riemannian Euler step on the product of spheres
  (``v`` is tangent, so iterates stay on the manifold for any number of steps), the plain Euler step in
  Euclidean space.  For x1-prediction the last step lands exactly on the last prediction x̂1.
* ``rk4``, ``dopri5`` (flat paths only): torchdiffeq on ``[0, 1 − h]`` (fixed step ``h`` / adaptive with
  ``rtol``, ``atol``), then one Euler step to ``t = 1`` — the x1-prediction field is singular at ``t = 1``.
* **stochastic** (``noise = ε > 0``, Euler only): for ``t_k`` in ``noise_range = [lo, hi)`` the step becomes
  ``exp_{x_k}(h v + ε √h P_{x_k} ξ)``, ``ξ ~ N(0, I)`` with ``P`` the tangent projection.
* **guidance** (``guidance = λ > 0``, Euler only): ``v + λ P_{x_k} ∇_x(−loss)`` with ``loss`` the mean
  cross-entropy of each sampled network ``x`` on one random minibatch of ``guidance_data = (inputs, labels)``
  per step, computed for the whole batch of networks at once in the flat layout
  (:func:`weightflow.weights.forward`).
* **guidance-alone control** (``zero_velocity=True``): the same integration with the flow's velocity replaced
  by zero — what guidance does to the prior draws without any flow.  With the same generator it starts from
  the same prior draws and uses the same guidance minibatches as the guided sampler, so the difference between
  the two is what the flow contributes.

Random streams do not depend on ``batch_size``: all ``num`` prior draws are taken first, and every Euler step
draws its guidance minibatch and its noise ``[num, D]`` once, for all networks, before the chunks of
``batch_size`` networks are advanced in lockstep.  Network ``i`` therefore sees the same draws whatever the
chunking (the samples are equal up to the floating-point effect of the model's batch size on its matmuls).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchdiffeq import odeint

from weightflow.flow.model_file import FlowModel
from weightflow.weights import forward

__all__ = ["sample", "guidance_force", "METHODS"]

METHODS = ("euler", "rk4", "dopri5")


def guidance_force(
    flow: FlowModel, x: Tensor, data: tuple[Tensor, Tensor], batch: int, generator: torch.Generator | None = None
) -> Tensor:
    """``P_x ∇_x(−loss)`` ``[B, D]``: each network's own cross-entropy gradient on one shared minibatch of
    ``batch`` examples drawn with replacement (the whole set when ``batch >= len(data)``)."""
    inputs, labels = data
    if batch < len(labels):
        idx = torch.randint(len(labels), (batch,), generator=generator)
        inputs, labels = inputs[idx], labels[idx]
    xb, yb = inputs.to(x.device), labels.to(x.device)
    with torch.enable_grad():
        w = x.detach().requires_grad_(True)
        logits = forward(w, flow.layout, xb)  # [B, n, C]
        # Sum over networks of each network's mean loss: the gradient w.r.t. row b is row b's own gradient.
        loss = F.cross_entropy(logits.flatten(0, 1), yb.repeat(w.shape[0]), reduction="sum") / len(yb)
        (grad,) = torch.autograd.grad(loss, w)
    return flow.geometry.proj_tangent(x, -grad)


def _full(t: float, n: int, like: Tensor) -> Tensor:
    return torch.full((n,), float(t), dtype=like.dtype, device=like.device)


def _chunks(num: int, batch_size: int) -> list[slice]:
    return [slice(start, min(num, start + batch_size)) for start in range(0, num, batch_size)]


def _euler(flow, x, steps, noise, noise_range, drift, generator, batch_size):
    """Euler steps on all rows of ``x``, advanced chunk by chunk in lockstep (see the module docstring)."""
    x = x.clone()  # updated chunk by chunk in place
    h = 1.0 / steps
    lo, hi = noise_range
    for k in range(steps):
        t = k * h
        batch = drift.draw_batch()
        xi = None
        if noise > 0 and lo <= t < hi:
            xi = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        for rows in _chunks(x.shape[0], batch_size):
            xc = x[rows]
            step = h * drift(xc, _full(t, xc.shape[0], xc), batch)
            if xi is not None:
                step = step + noise * math.sqrt(h) * flow.geometry.proj_tangent(xc, xi[rows])
            x[rows] = flow.geometry.exp(xc, step)
    return x


def _odeint(flow, x, steps, method, drift, rtol, atol):
    if not flow.geometry.is_flat:
        raise ValueError(f"method {method!r} integrates in flat space; use method='euler' (Riemannian Euler) "
                         f"for the {flow.config.get('geometry', 'manifold')} flow")
    h = 1.0 / steps
    grid = torch.tensor([0.0, 1.0 - h], dtype=x.dtype, device=x.device)
    func = lambda t, y: drift(y, t.expand(y.shape[0]).to(y.dtype), None)  # noqa: E731
    options = {"step_size": h} if method == "rk4" else None
    if steps > 1:
        x = odeint(func, x, grid, method=method, rtol=rtol, atol=atol, options=options)[-1]
    return x + h * drift(x, _full(1.0 - h, x.shape[0], x), None)


class _Drift:
    """``v(x, t)`` (or 0 for the control) plus ``λ`` times the guidance force on a given minibatch."""

    def __init__(self, flow: FlowModel, guidance: float, data, guidance_batch: int, generator, zero_velocity: bool):
        self.flow, self.guidance, self.data = flow, guidance, data
        self.guidance_batch, self.generator, self.zero_velocity = guidance_batch, generator, zero_velocity

    def draw_batch(self) -> tuple[Tensor, Tensor] | None:
        """One guidance minibatch for all networks of this step (drawn with replacement; the whole set when
        ``guidance_batch`` covers it); None without guidance."""
        if self.guidance <= 0:
            return None
        inputs, labels = self.data
        if self.guidance_batch < len(labels):
            idx = torch.randint(len(labels), (self.guidance_batch,), generator=self.generator)
            inputs, labels = inputs[idx], labels[idx]
        return inputs, labels

    def __call__(self, x: Tensor, t: Tensor, batch: tuple[Tensor, Tensor] | None) -> Tensor:
        if self.zero_velocity:
            v = torch.zeros_like(x)
        else:
            with torch.no_grad():
                v = self.flow.velocity(x, t)
        if self.guidance > 0:
            v = v + self.guidance * guidance_force(self.flow, x, batch, len(batch[1]))
        return v


def sample(
    flow: FlowModel,
    num: int,
    *,
    method: str = "euler",
    steps: int = 100,
    noise: float = 0.0,
    noise_range: tuple[float, float] = (0.0, 1.0),
    guidance: float = 0.0,
    guidance_data: tuple[Tensor, Tensor] | None = None,
    guidance_batch: int = 256,
    zero_velocity: bool = False,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
) -> Tensor:
    """``num`` networks ``[num, D]`` (on the flow's device) sampled from ``flow``.

    Args:
        method: ``'euler'`` (Riemannian Euler on manifolds), ``'rk4'`` or ``'dopri5'`` (flat paths).
        steps: number of grid steps ``1/h`` (≥ 1).
        noise, noise_range: stochastic sampling strength ε and the times ``[lo, hi)`` it acts on (Euler only).
        guidance, guidance_data, guidance_batch: guidance strength λ, ``(inputs [n, n0], labels [n])`` and the
            minibatch size drawn per step (Euler only).
        zero_velocity: the guidance-alone control — the flow's velocity replaced by zero.
        rtol, atol: dopri5 tolerances.
        generator: CPU generator for prior draws, noise and guidance minibatches.
        batch_size: networks integrated at once (None: all ``num``); does not change any random draw.
    """
    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; use one of {METHODS}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if (noise > 0 or guidance > 0) and method != "euler":
        raise ValueError(f"stochastic sampling and guidance need method='euler', got {method!r} "
                         f"(noise={noise}, guidance={guidance})")
    if guidance > 0 and guidance_data is None:
        raise ValueError("guidance > 0 needs guidance_data=(inputs, labels)")
    drift = _Drift(flow, guidance, guidance_data, guidance_batch, generator, zero_velocity)
    x = flow.sample_prior(num, generator=generator)
    if method == "euler":
        x = _euler(flow, x, steps, noise, (float(noise_range[0]), float(noise_range[1])), drift, generator,
                   batch_size or num)
    else:
        x = torch.cat([_odeint(flow, x[rows], steps, method, drift, rtol, atol)
                       for rows in _chunks(num, batch_size or num)])
    return x.detach()

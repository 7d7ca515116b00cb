"""Sampling trained flows: (Riemannian) Euler, torchdiffeq solvers, stochastic sampling and loss guidance.

All methods integrate ``dx/dt = v(x, t)`` from prior draws at ``t = 0`` to ``t = 1`` on the uniform grid
``t_k = k/steps``, with ``v = flow.velocity`` (for x1-prediction ``log_{x_t}(x̂1)/(1 − t)``).

* ``euler``: ``x_{k+1} = exp_{x_k}(h v(x_k, t_k))`` — the Riemannian Euler step on the product of spheres
  (``v`` is tangent, so iterates stay on the manifold for any number of steps), the plain Euler step in
  Euclidean space.  For x1-prediction the last step lands exactly on the last prediction x̂1.
* ``rk4``, ``dopri5`` (Euclidean paths only): torchdiffeq on ``[0, 1 − h]`` (fixed step ``h`` / adaptive with
  ``rtol``, ``atol``), then one Euler step to ``t = 1`` — the x1-prediction field is singular at ``t = 1``.
* **stochastic** (``noise = ε > 0``, Euler only): for ``t_k`` in ``noise_range = [lo, hi)`` the step becomes
  ``exp_{x_k}(h v + ε √h P_{x_k} ξ)``, ``ξ ~ N(0, I)`` with ``P`` the tangent projection.
* **guidance** (``guidance = λ > 0``): ``v + λ P_{x_k} ∇_x(−loss)`` with ``loss`` the mean cross-entropy of each
  sampled network ``x`` on one random minibatch of ``guidance_data = (inputs, labels)`` per step, computed for
  the whole batch of networks at once in the flat layout (:func:`weightflow.weights.forward`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchdiffeq import odeint

from weightflow.flow.model_file import FlowModel
from weightflow.manifold import Euclidean
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


def _euler(flow, x, steps, noise, noise_range, drift, generator):
    h = 1.0 / steps
    lo, hi = noise_range
    for k in range(steps):
        t = k * h
        step = h * drift(x, _full(t, x.shape[0], x))
        if noise > 0 and lo <= t < hi:
            xi = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            step = step + noise * math.sqrt(h) * flow.geometry.proj_tangent(x, xi)
        x = flow.geometry.exp(x, step)
    return x


def _odeint(flow, x, steps, method, drift, rtol, atol):
    if not isinstance(flow.geometry, Euclidean):
        raise ValueError(f"method {method!r} integrates in Euclidean space; use method='euler' (Riemannian Euler) "
                         f"for the {flow.config.get('geometry', 'manifold')} flow")
    h = 1.0 / steps
    grid = torch.tensor([0.0, 1.0 - h], dtype=x.dtype, device=x.device)
    func = lambda t, y: drift(y, t.expand(y.shape[0]).to(y.dtype))  # noqa: E731
    options = {"step_size": h} if method == "rk4" else None
    if steps > 1:
        x = odeint(func, x, grid, method=method, rtol=rtol, atol=atol, options=options)[-1]
    return x + h * drift(x, _full(1.0 - h, x.shape[0], x))


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
    rtol: float = 1e-5,
    atol: float = 1e-5,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
) -> Tensor:
    """``num`` networks ``[num, D]`` (on the flow's device) sampled from ``flow``.

    Args:
        method: ``'euler'`` (Riemannian Euler on manifolds), ``'rk4'`` or ``'dopri5'`` (Euclidean paths).
        steps: number of grid steps ``1/h`` (≥ 1).
        noise, noise_range: stochastic sampling strength ε and the times ``[lo, hi)`` it acts on (Euler only).
        guidance, guidance_data, guidance_batch: guidance strength λ, ``(inputs [n, n0], labels [n])`` and the
            minibatch size drawn per step.
        rtol, atol: dopri5 tolerances.
        generator: CPU generator for prior draws, noise and guidance minibatches.
        batch_size: networks integrated at once (None: all ``num``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; use one of {METHODS}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if noise > 0 and method != "euler":
        raise ValueError(f"stochastic sampling (noise={noise}) needs method='euler', got {method!r}")
    if guidance > 0 and guidance_data is None:
        raise ValueError("guidance > 0 needs guidance_data=(inputs, labels)")
    lo, hi = float(noise_range[0]), float(noise_range[1])

    def drift(x: Tensor, t: Tensor) -> Tensor:
        with torch.no_grad():
            v = flow.velocity(x, t)
        if guidance > 0:
            v = v + guidance * guidance_force(flow, x, guidance_data, guidance_batch, generator)
        return v

    chunks = []
    batch_size = batch_size or num
    for start in range(0, num, batch_size):
        x = flow.sample_prior(min(batch_size, num - start), generator=generator)
        if method == "euler":
            x = _euler(flow, x, steps, noise, (lo, hi), drift, generator)
        else:
            x = _odeint(flow, x, steps, method, drift, rtol, atol)
        chunks.append(x.detach())
    return torch.cat(chunks)

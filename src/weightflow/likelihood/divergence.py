"""Divergences of a vector field on a geometry: exact (sum over a basis) and Hutchinson (random probes).

For a field ``u(x, t)`` on a Riemannian manifold ``M`` embedded in ``R^D`` (flat space: ``M = R^D``), the
Riemannian divergence at ``x`` is the trace of the covariant derivative restricted to ``T_x M``.  With the
*projected-field construction* (Chen & Lipman 2023) the field is extended off ``M`` as
``ũ(x) = P_{π(x)} u(π(x), t)`` (``π`` the closest-point projection, ``P`` the tangent projection), so that

    div_M u (x) = tr(P J P) = tr(J) - sum_k n_k^T J n_k,        J = ∂ũ/∂x  [D, D],

the embedding divergence with the normal components removed (``n_k`` are the unit normals of the sphere
factors; ``P = I`` in flat space).  Both estimators evaluate quadratic forms ``v^T J v`` with *tangent*
vectors ``v = P w``:

* **exact**: ``sum_i (P e_i)^T J (P e_i) = tr(P J P)`` over the ``D`` basis vectors ``e_i``;
* **Hutchinson**: ``(P z)^T J (P z)`` for probes ``z`` with ``E[z z^T] = I`` (Rademacher or Gaussian), an
  unbiased estimate of ``tr(P J P)``.

Every quadratic form needs one vector-Jacobian product; they are computed in batches with a single
``torch.autograd.grad(..., is_grads_batched=True)`` call (a vmapped backward pass) per batch of vectors, for
all ``B`` networks at once.  Networks must not interact inside the field (``ũ`` of network ``b`` depends
only on ``x_b``), which holds for every weightflow vector-field model.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["Velocity", "PROBES", "tangent_field", "draw_probes", "field_and_divergence"]

Velocity = Callable[[Tensor, Tensor], Tensor]
"""A vector field ``velocity(x [B, D], t [B]) -> [B, D]``."""

PROBES = ("rademacher", "gaussian")


def tangent_field(velocity: Velocity, geometry) -> Velocity:
    """The projected field ``ũ(x, t) = P_{π(x)} velocity(π(x), t)`` (identity wrapper in flat space).

    Differentiating ``ũ`` (not ``velocity``) is what makes ``tr(P J P)`` the Riemannian divergence: the
    projection's own derivative contributes the curvature term ``-(d-1) <x, u>`` of each unit sphere.
    """

    def field(x: Tensor, t: Tensor) -> Tensor:
        x = geometry.project(x)
        return geometry.proj_tangent(x, velocity(x, t))

    return field


def draw_probes(num: int, batch: int, dim: int, kind: str = "rademacher", *,
                generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                device: torch.device | str | None = None) -> Tensor:
    """``[num, batch, dim]`` Hutchinson probes with ``E[z z^T] = I``: Rademacher (±1) or standard Gaussian."""
    if kind not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {kind!r}")
    if device is None:
        device = generator.device if generator is not None else "cpu"
    shape = (num, batch, dim)
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)
    return torch.randint(0, 2, shape, generator=generator, device=device).to(dtype) * 2 - 1


def _quadratic_forms(u: Tensor, x: Tensor, vectors: Tensor) -> Tensor:
    """``[P, B]``: ``v_{p,b}^T J_b v_{p,b}`` for ``vectors [P, B, D]``, ``J_b = ∂u_b/∂x_b`` (one batched VJP)."""
    if not u.requires_grad:  # the field does not depend on x at all (e.g. a constant field)
        return vectors.new_zeros(vectors.shape[:2])
    (grads,) = torch.autograd.grad(u, x, grad_outputs=vectors, retain_graph=True, is_grads_batched=True,
                                   allow_unused=True)
    if grads is None:
        return vectors.new_zeros(vectors.shape[:2])
    return (grads * vectors).sum(-1)


def field_and_divergence(field: Velocity, x: Tensor, t: Tensor, geometry, *, probes: Tensor | None = None,
                         vjp_batch: int = 64) -> tuple[Tensor, Tensor]:
    """The field value and its divergence at ``x [B, D]``, ``t [B]``.

    Args:
        field: the (already tangent-projected, see :func:`tangent_field`) field.
        geometry: supplies ``project`` and ``proj_tangent`` (the tangent space the trace runs over).
        probes: ``None`` for the exact divergence, else ``[k, B, D]`` fixed Hutchinson probes.
        vjp_batch: vectors per batched vector-Jacobian product (memory ~ ``vjp_batch * B * D`` floats plus
            ``vjp_batch`` copies of the field's backward activations).

    Returns:
        ``(u [B, D], div [m, B])`` with ``m = 1`` (exact) or ``m = k`` (one estimate per probe).
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        u = field(x, t)
    base = geometry.project(x.detach())
    batch, dim = x.shape
    if probes is None:
        div = x.new_zeros(batch)
        eye = torch.eye(dim, dtype=x.dtype, device=x.device)
        for start in range(0, dim, vjp_batch):
            basis = eye[start:start + vjp_batch, None, :].expand(-1, batch, dim)
            vectors = geometry.proj_tangent(base.expand_as(basis), basis)
            div = div + _quadratic_forms(u, x, vectors).sum(0)
        return u.detach(), div.unsqueeze(0)
    parts = []
    for start in range(0, probes.shape[0], vjp_batch):
        chunk = probes[start:start + vjp_batch]
        vectors = geometry.proj_tangent(base.expand_as(chunk), chunk)
        parts.append(_quadratic_forms(u, x, vectors))
    return u.detach(), torch.cat(parts, dim=0)

"""Geometries of weight space: flat Euclidean space and the product of spheres of canonical ReLU MLPs.

Every geometry works on batches of networks in the flat layout of :mod:`weightflow.weights`: points, tangent
vectors ``[..., D]`` (usually ``[B, D]``) and times ``t`` of shape ``[...]`` (or a scalar).  A geometry is an
object handed to paths, couplings, solvers and likelihoods; code never branches on its name.

:class:`ProductSpheres` is the manifold of canonical networks (:mod:`weightflow.canonical`)::

    M = prod_{hidden l} prod_{k < n_l} S^{n_{l-1}-1}(1)  x  S^{n_L n_{L-1}-1}(R)  x  R^{#biases}

* each hidden neuron's incoming weight row ``W_l[k, :]`` is one unit sphere ``S^{fan_in-1}`` (one *factor*),
* the whole last-layer matrix ``W_L`` (all ``n_L * n_{L-1}`` entries) is one sphere of radius ``R = last_radius``
  (default ``sqrt(C)``, ``C`` = number of classes),
* every bias is a Euclidean coordinate.

The metric is the one induced by the flat ambient space ``R^D``, so tangent vectors are flat ``[..., D]``
vectors, ``dist(x, y) = |log_x y|`` and the Riemannian volume is the product of the spheres' surface measures
and Lebesgue measure on the biases.  The manifold has ``intrinsic_dim = D - num_factors`` dimensions (each
sphere factor of ambient dimension ``d`` has dimension ``d - 1``); :attr:`Geometry.factor_dims` lists the
ambient ``d`` of each factor, :attr:`Geometry.factor_index` says which factor each flat coordinate belongs to.

Internally each layer is a tensor ``[..., n_factors, d]`` (hidden: ``[..., n_out, fan_in]``; last layer:
``[..., 1, n_out * fan_in]``) and every sphere operation is vectorized over networks and neurons; only the few
layers are looped over.

Numerics: geoopt's ``Sphere`` takes angles as ``acos`` of a clamped inner product, which in float32 cannot
resolve angles below ~1e-2 rad, so ``log_{x_t}(x1) / (1 - t)`` built on it is wrong as ``t -> 1``.  Here
angles are ``theta = 2 atan2(|y - x|, |y + x|)`` (accurate for tiny and for near-pi angles), the direction of
``log_x y`` is the tangent part of ``y - x`` (no cancellation when ``y`` is close to ``x``), geodesic
velocities are closed-form, and an (almost) antipodal pair, whose geodesic direction is undefined, gets a
fixed deterministic direction (see :func:`sphere_log`).

Riemannian divergences (likelihoods): at ``x``, the tangent space of the product is the image of
:meth:`Geometry.proj_tangent` (an orthogonal projection ``P(x)`` of ``R^D``, differentiable in ``x``); the
divergence of a tangent field ``f`` is ``tr(P(x) d(P f)/dx)``, and a Gaussian ``N(0, P(x))`` probe is
``proj_tangent(x, randn)``.
"""

from __future__ import annotations

import abc
import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from weightflow.weights import MLPLayout, as_layout, flatten, unflatten

__all__ = [
    "Geometry",
    "Euclidean",
    "ProductSpheres",
    "sphere_project",
    "sphere_proj_tangent",
    "sphere_exp",
    "sphere_log",
    "sphere_angle",
    "sphere_interpolate",
    "sphere_transport",
    "sphere_log_area",
]


# ----------------------------------------------------------------------------------------------------------
# Unit-sphere operations along the last dimension ``d`` of ``[..., d]`` tensors.


def _tiny(x: Tensor) -> float:
    return torch.finfo(x.dtype).tiny


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1, keepdim=True)


def _first_axis(x: Tensor) -> Tensor:
    """The unit vector ``e_1 = (1, 0, ..., 0)`` shaped like ``x``."""
    e = torch.zeros_like(x)
    e[..., 0] = 1.0
    return e


def sphere_project(x: Tensor) -> Tensor:
    """Closest unit vector ``x / |x|``; a zero vector maps to ``e_1 = (1, 0, ..., 0)`` (never NaN)."""
    norm = x.norm(dim=-1, keepdim=True)
    out = x / norm.clamp_min(_tiny(x))
    zero = norm == 0
    return torch.where(zero, _first_axis(x), out) if zero.any() else out


def sphere_proj_tangent(x: Tensor, v: Tensor) -> Tensor:
    """Tangent part ``v - <x, v> x`` of ``v`` at the unit vector ``x`` (differentiable in ``x`` and ``v``)."""
    return v - _dot(x, v) * x


def _fallback_direction(x: Tensor) -> Tensor:
    """A deterministic unit tangent vector at ``x``: ``e_j - x_j x`` normalized, ``j = argmin_j |x_j|``.

    Since ``|x_j| <= 1/sqrt(d)``, the vector has norm ``sqrt(1 - x_j^2) >= sqrt(1 - 1/d) > 0`` for ``d >= 2``.
    """
    j = x.abs().argmin(dim=-1, keepdim=True)
    e = torch.zeros_like(x).scatter(-1, j, 1.0)
    f = e - x.gather(-1, j) * x
    return f / f.norm(dim=-1, keepdim=True).clamp_min(_tiny(x))


def _angle_direction(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``(theta [..., 1], e [..., d])`` with ``y = cos(theta) x + sin(theta) e``, ``e`` a unit tangent at ``x``.

    ``theta = 2 atan2(|y - x|, |y + x|)`` in ``[0, pi]``.  ``e`` is the normalized tangent part of ``y - x``;
    when that part vanishes to working precision (``y = x`` or ``y = -x``), ``e`` is
    :func:`_fallback_direction` (it is then multiplied by ``theta = 0`` or is one of the equally short
    geodesics to the antipode).
    """
    diff = y - x
    theta = 2.0 * torch.atan2(diff.norm(dim=-1, keepdim=True), (y + x).norm(dim=-1, keepdim=True))
    u = diff - _dot(x, diff) * x
    u_norm = u.norm(dim=-1, keepdim=True)
    e = u / u_norm.clamp_min(_tiny(x))
    degenerate = u_norm <= 16 * torch.finfo(x.dtype).eps
    if degenerate.any():  # rare: only then pay for the fallback directions
        e = torch.where(degenerate, _fallback_direction(x), e)
    return theta, e


def sphere_angle(x: Tensor, y: Tensor) -> Tensor:
    """Geodesic distance (angle) ``[...]`` between unit vectors ``x, y [..., d]``, accurate near 0 and near pi."""
    diff = y - x
    return 2.0 * torch.atan2(diff.norm(dim=-1), (y + x).norm(dim=-1))


def sphere_exp(x: Tensor, v: Tensor) -> Tensor:
    """``exp_x(v) = cos|v| x + sin|v| v/|v|`` on the unit sphere (``v`` is first projected onto ``T_x``)."""
    v = sphere_proj_tangent(x, v)
    n = v.norm(dim=-1, keepdim=True)
    y = torch.cos(n) * x + torch.sinc(n / math.pi) * v  # sinc(n/pi) = sin(n)/n, smooth at n = 0
    return y / y.norm(dim=-1, keepdim=True)


def sphere_log(x: Tensor, y: Tensor) -> Tensor:
    """``log_x(y) = theta e`` (see :func:`_angle_direction`); for ``y = -x`` a fixed geodesic of length pi."""
    theta, e = _angle_direction(x, y)
    return theta * e


def sphere_interpolate(x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Geodesic ``x_t = cos(t theta) x0 + sin(t theta) e`` and its exact velocity ``d/dt x_t``.

    ``t`` broadcasts against ``[..., 1]``.  Returns ``(x_t, u_t)`` with
    ``u_t = theta (-sin(t theta) x0 + cos(t theta) e)``, so ``|u_t| = theta = dist(x0, x1)`` for all ``t``.
    """
    theta, e = _angle_direction(x0, x1)
    a = t * theta
    cos, sin = torch.cos(a), torch.sin(a)
    return cos * x0 + sin * e, theta * (cos * e - sin * x0)


def sphere_transport(x: Tensor, y: Tensor, v: Tensor) -> Tensor:
    """Parallel transport of ``v in T_x`` to ``T_y`` along the geodesic from ``x`` to ``y``.

    With ``y = cos(theta) x + sin(theta) e``: ``v + <e, v> ((cos(theta) - 1) e - sin(theta) x)``; the part of
    ``v`` orthogonal to ``x`` and ``e`` is unchanged.  ``v`` is first projected onto ``T_x``.
    """
    v = sphere_proj_tangent(x, v)
    theta, e = _angle_direction(x, y)
    return v + _dot(e, v) * ((torch.cos(theta) - 1.0) * e - torch.sin(theta) * x)


def sphere_log_area(d: int, radius: float = 1.0) -> float:
    """``log`` of the surface area of the sphere of radius ``radius`` in ``R^d`` (``S^{d-1}``).

    ``area = 2 pi^{d/2} / Gamma(d/2) * radius^{d-1}``; the uniform density on it is ``-sphere_log_area``.
    """
    return math.log(2.0) + 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d) + (d - 1) * math.log(radius)


# ----------------------------------------------------------------------------------------------------------
# Geometries on the flat layout.


def _times(t: Tensor | float, x: Tensor) -> Tensor:
    """``t`` (scalar, ``[...]`` or ``[..., 1]``) as a tensor of shape ``x.shape[:-1]``, in ``x``'s dtype and device."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == x.ndim and t.shape[-1] == 1:  # accept [B, 1] as well as [B]
        t = t.squeeze(-1)
    return t.expand(x.shape[:-1])


def _gaussian_log_prob(x: Tensor, std: Tensor) -> Tensor:
    """Sum over the last dimension of ``log N(x; 0, std^2)`` (``std`` broadcasts against ``x``)."""
    return (-0.5 * (x / std) ** 2 - torch.log(std) - 0.5 * math.log(2.0 * math.pi)).sum(-1)


class Geometry(abc.ABC):
    """Shared interface (see the geometry table in docs/architecture.md); shapes ``x, y, v: [..., D]``, ``t: [...]``.

    Subclasses implement the abstract methods and, with sphere factors, the ``factor_*`` description.
    """

    name: str = "geometry"

    def __init__(self, layout: MLPLayout | Sequence[int]) -> None:
        self.layout = as_layout(layout)

    # --- description of the factors -------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Ambient (flat) dimension ``D``."""
        return self.layout.dim

    @property
    def factor_dims(self) -> tuple[int, ...]:
        """Ambient dimension ``d`` of each sphere factor (``S^{d-1}``), in flat order; empty for flat space."""
        return ()

    @property
    def factor_radii(self) -> tuple[float, ...]:
        """Radius of each sphere factor, in flat order."""
        return ()

    @property
    def num_factors(self) -> int:
        return len(self.factor_dims)

    @property
    def intrinsic_dim(self) -> int:
        """Manifold dimension: ``D`` minus one per sphere factor."""
        return self.dim - self.num_factors

    @property
    def factor_index(self) -> Tensor:
        """Long ``[D]``: the sphere factor of each coordinate, ``-1`` for Euclidean coordinates."""
        return torch.full((self.dim,), -1, dtype=torch.long)

    @property
    def factor_layers(self) -> Tensor:
        """Long ``[num_factors]``: the (0-based) layer of each sphere factor."""
        return torch.zeros(0, dtype=torch.long)

    @property
    def sphere_mask(self) -> Tensor:
        """Bool ``[D]``: True at coordinates that belong to a sphere factor."""
        return self.factor_index >= 0

    def factor_norms(self, x: Tensor) -> Tensor:
        """``[..., num_factors]`` Euclidean norm of each sphere factor of ``x`` (``[..., 0]`` in flat space)."""
        return x.new_zeros(*x.shape[:-1], 0)

    def norm_deviation(self, x: Tensor) -> Tensor:
        """``[...]`` largest relative deviation ``| |x_k| / r_k - 1 |`` over the sphere factors (0 for flat space)."""
        norms = self.factor_norms(x)
        if norms.shape[-1] == 0:
            return torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
        radii = torch.tensor(self.factor_radii, dtype=x.dtype, device=x.device)
        return (norms / radii - 1.0).abs().amax(dim=-1)

    def check_on_manifold(self, x: Tensor, tol: float = 1e-5) -> bool:
        """True when ``x`` is finite and every sphere factor has relative norm deviation ``<= tol``."""
        return bool(torch.isfinite(x).all()) and bool((self.norm_deviation(x) <= tol).all())

    # --- shared operations -----------------------------------------------------------------------------
    def dist(self, x: Tensor, y: Tensor) -> Tensor:
        """Geodesic distance ``[...]`` = ``|log_x y|``."""
        return self.log(x, y).norm(dim=-1)

    def velocity_from_x1(self, x_t: Tensor, x1_hat: Tensor, t: Tensor | float) -> Tensor:
        """Velocity at ``x_t`` of the geodesic that reaches ``x1_hat`` at time 1: ``log_{x_t}(x1_hat) / (1 - t)``.

        ``1 - t`` is floored at the dtype's machine epsilon so ``t = 1`` gives a large finite value, not inf.
        """
        remaining = (1.0 - _times(t, x_t)).clamp_min(torch.finfo(x_t.dtype).eps)
        return self.log(x_t, x1_hat) / remaining.unsqueeze(-1)

    # --- to implement ------------------------------------------------------------------------------------
    @abc.abstractmethod
    def project(self, x: Tensor) -> Tensor:
        """Closest point of the manifold to ``x``."""

    @abc.abstractmethod
    def proj_tangent(self, x: Tensor, v: Tensor) -> Tensor:
        """Orthogonal projection of ``v`` onto the tangent space at ``x``."""

    @abc.abstractmethod
    def exp(self, x: Tensor, v: Tensor) -> Tensor:
        """Exponential map ``exp_x(v)``."""

    @abc.abstractmethod
    def log(self, x: Tensor, y: Tensor) -> Tensor:
        """Logarithm map ``log_x(y)`` (a tangent vector at ``x``)."""

    @abc.abstractmethod
    def interpolate(self, x0: Tensor, x1: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """``(x_t, u_t)``: the geodesic from ``x0`` (t = 0) to ``x1`` (t = 1) and its velocity ``d/dt x_t``."""

    @abc.abstractmethod
    def transport(self, x: Tensor, y: Tensor, v: Tensor) -> Tensor:
        """Parallel transport of ``v`` from ``T_x`` to ``T_y`` along the geodesic."""

    @abc.abstractmethod
    def pairwise_sq_dist(self, x: Tensor, y: Tensor) -> Tensor:
        """``[B1, B2]`` squared geodesic distances between the rows of ``x [B1, D]`` and ``y [B2, D]``."""

    @abc.abstractmethod
    def sample_prior(self, n: int, generator: torch.Generator | None = None, *, device=None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
        """``[n, D]`` draws from the prior p0 (``device`` defaults to the generator's)."""

    @abc.abstractmethod
    def prior_log_prob(self, x: Tensor) -> Tensor:
        """``[...]`` log-density of p0 at ``x`` w.r.t. the Riemannian volume."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer_sizes={list(self.layout.layer_sizes)})"


def _randn(n: int, dim: int, generator, device, dtype) -> Tensor:
    """``[n, dim]`` standard normals drawn on the generator's device, returned on ``device`` (default: that one)."""
    source = generator.device if generator is not None else torch.device("cpu")
    z = torch.randn(n, dim, generator=generator, device=source, dtype=dtype)
    return z if device is None else z.to(device)


class Euclidean(Geometry):
    """Flat ``R^D`` with the Gaussian prior ``N(0, prior_std^2)`` on weights and ``N(0, bias_prior_std^2)`` on biases.

    Used by the ``euclidean`` and ``normalized`` flows.
    """

    name = "euclidean"

    def __init__(self, layout: MLPLayout | Sequence[int], prior_std: float = 1.0, bias_prior_std: float = 1.0):
        super().__init__(layout)
        if not (prior_std > 0 and bias_prior_std > 0):
            raise ValueError(f"prior_std and bias_prior_std must be > 0, got {prior_std}, {bias_prior_std}")
        self.prior_std = float(prior_std)
        self.bias_prior_std = float(bias_prior_std)

    def _std(self, x: Tensor) -> Tensor:
        """``[D]`` prior std of each coordinate."""
        is_bias = self.layout.is_bias.to(x.device)
        return torch.where(is_bias, self.bias_prior_std, self.prior_std).to(x.dtype)

    def project(self, x: Tensor) -> Tensor:
        return x

    def proj_tangent(self, x: Tensor, v: Tensor) -> Tensor:
        return v

    def exp(self, x: Tensor, v: Tensor) -> Tensor:
        return x + v

    def log(self, x: Tensor, y: Tensor) -> Tensor:
        return y - x

    def interpolate(self, x0: Tensor, x1: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """``x_t = x0 + t (x1 - x0)``, ``u_t = x1 - x0``."""
        u = x1 - x0
        return x0 + _times(t, x0).unsqueeze(-1) * u, u

    def transport(self, x: Tensor, y: Tensor, v: Tensor) -> Tensor:
        return v

    def pairwise_sq_dist(self, x: Tensor, y: Tensor) -> Tensor:
        """``[B1, B2]`` squared Euclidean distances of ``x [B1, D]`` and ``y [B2, D]`` (computed in float64)."""
        x64, y64 = x.double(), y.double()
        sq = (x64**2).sum(-1)[:, None] + (y64**2).sum(-1)[None, :] - 2.0 * x64 @ y64.T
        return sq.clamp_min(0).to(x.dtype)

    def sample_prior(self, n: int, generator: torch.Generator | None = None, *, device=None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
        z = _randn(n, self.dim, generator, device, dtype)
        return z * self._std(z)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        return _gaussian_log_prob(x, self._std(x))


class ProductSpheres(Geometry):
    """Product of spheres of canonical ReLU networks (see the module docstring) with Euclidean biases.

    Prior: uniform on every sphere factor (density ``-log area`` w.r.t. the sphere's surface measure) times
    ``N(0, bias_prior_std^2)`` on every bias.  ``last_radius`` (default ``sqrt(C)``) is the radius of the
    last-layer sphere; hidden spheres have radius 1.  Used by the ``geometric`` flows.
    """

    name = "product_spheres"

    def __init__(self, layout: MLPLayout | Sequence[int], last_radius: float | None = None,
                 bias_prior_std: float = 1.0):
        super().__init__(layout)
        sizes = self.layout.layer_sizes
        self.last_radius = math.sqrt(sizes[-1]) if last_radius is None else float(last_radius)
        if not self.last_radius > 0:
            raise ValueError(f"last_radius must be > 0, got {last_radius}")
        if not bias_prior_std > 0:
            raise ValueError(f"bias_prior_std must be > 0, got {bias_prior_std}")
        self.bias_prior_std = float(bias_prior_std)
        L = self.layout.num_layers
        # Per layer: (number of factors, ambient dimension of each, radius).
        self._blocks_spec = [(sizes[l + 1], sizes[l], 1.0) for l in range(L - 1)]
        self._blocks_spec.append((1, sizes[-1] * sizes[-2], self.last_radius))
        small = [l for l, (_, d, _) in enumerate(self._blocks_spec) if d < 2]
        if small:
            raise ValueError(
                f"layer_sizes {list(sizes)}: layer(s) {small} have 1-dimensional incoming weights; "
                "their 'sphere' S^0 is two points, which has no geodesics"
            )
        self._log_area = sum(k * sphere_log_area(d, r) for k, d, r in self._blocks_spec)

    # --- factors -----------------------------------------------------------------------------------------
    @property
    def factor_dims(self) -> tuple[int, ...]:
        return tuple(d for k, d, _ in self._blocks_spec for _ in range(k))

    @property
    def factor_radii(self) -> tuple[float, ...]:
        return tuple(r for k, _, r in self._blocks_spec for _ in range(k))

    @property
    def factor_index(self) -> Tensor:
        index = torch.full((self.dim,), -1, dtype=torch.long)
        first = 0
        for (k, d, _), (w_start, b_start, _) in zip(self._blocks_spec, self.layout.offsets):
            index[w_start:b_start] = torch.arange(first, first + k).repeat_interleave(d)
            first += k
        return index

    @property
    def factor_layers(self) -> Tensor:
        return torch.cat([torch.full((k,), l, dtype=torch.long) for l, (k, _, _) in enumerate(self._blocks_spec)])

    def _split(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Views: per layer the sphere block ``[..., k, d]`` (in units of its radius: divide by ``r`` yourself)
        and the bias ``[..., n_out]``."""
        layers = unflatten(x, self.layout)
        blocks = [w for w, _ in layers[:-1]] + [layers[-1][0].flatten(-2).unsqueeze(-2)]
        return blocks, [b for _, b in layers]

    def _join(self, blocks: list[Tensor], biases: list[Tensor]) -> Tensor:
        """Inverse of :meth:`_split`."""
        fan_out, fan_in = self.layout.layer_sizes[-1], self.layout.layer_sizes[-2]
        weights = blocks[:-1] + [blocks[-1].squeeze(-2).unflatten(-1, (fan_out, fan_in))]
        return flatten(zip(weights, biases))

    def _map(self, sphere_fn: Callable[..., Tensor], bias_fn: Callable[..., Tensor], *xs: Tensor) -> Tensor:
        """Apply ``sphere_fn`` to every layer's blocks (scaled to unit radius, result scaled back by ``r``) and
        ``bias_fn`` to its biases; ``xs`` are flat ``[..., D]`` tensors."""
        parts = [self._split(x) for x in xs]
        blocks, biases = [], []
        for l, (_, _, r) in enumerate(self._blocks_spec):
            blocks.append(r * sphere_fn(*[p[0][l] / r for p in parts]))
            biases.append(bias_fn(*[p[1][l] for p in parts]))
        return self._join(blocks, biases)

    def factor_norms(self, x: Tensor) -> Tensor:
        blocks, _ = self._split(x)
        return torch.cat([b.norm(dim=-1) for b in blocks], dim=-1)

    # --- geometry ----------------------------------------------------------------------------------------
    def project(self, x: Tensor) -> Tensor:
        """Normalize every sphere factor to its radius (a zero factor becomes ``r e_1``); biases unchanged."""
        return self._map(sphere_project, lambda b: b, x)

    def proj_tangent(self, x: Tensor, v: Tensor) -> Tensor:
        """Remove from every sphere factor of ``v`` its component along ``x``'s factor (differentiable).

        ``x`` need not be exactly on the manifold: its factors are normalized first.
        """
        return self._map(lambda xb, vb: sphere_proj_tangent(sphere_project(xb), vb), lambda xb, vb: vb, x, v)

    def exp(self, x: Tensor, v: Tensor) -> Tensor:
        """Exponential map per factor (``v`` projected onto ``T_x`` first); biases ``b + v_b``."""
        return self._map(sphere_exp, lambda xb, vb: xb + vb, x, v)

    def log(self, x: Tensor, y: Tensor) -> Tensor:
        """Logarithm map per factor (``theta e``, atan2 angle, antipodal fallback); biases ``y_b - x_b``."""
        return self._map(sphere_log, lambda xb, yb: yb - xb, x, y)

    def interpolate(self, x0: Tensor, x1: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Geodesic ``x_t`` and its exact velocity ``u_t = d/dt x_t`` (closed form per factor)."""
        tt = _times(t, x0)
        (b0, c0), (b1, c1) = self._split(x0), self._split(x1)
        xs, us, bx, bu = [], [], [], []
        for l, (_, _, r) in enumerate(self._blocks_spec):
            x_t, u_t = sphere_interpolate(b0[l] / r, b1[l] / r, tt[..., None, None])
            xs.append(r * x_t)
            us.append(r * u_t)
            bx.append(c0[l] + tt[..., None] * (c1[l] - c0[l]))
            bu.append(c1[l] - c0[l])
        return self._join(xs, bx), self._join(us, bu)

    def transport(self, x: Tensor, y: Tensor, v: Tensor) -> Tensor:
        """Parallel transport of ``v in T_x M`` to ``T_y M`` along the geodesic (per factor; biases unchanged)."""
        return self._map(sphere_transport, lambda xb, yb, vb: vb, x, y, v)

    def pairwise_sq_dist(self, x: Tensor, y: Tensor) -> Tensor:
        """``[B1, B2]`` squared geodesic distances of ``x [B1, D]`` and ``y [B2, D]`` (an OT cost).

        Computed in float64 from inner products: ``theta = acos(<x_k, y_k>)`` per factor, accurate to about
        ``1e-8`` rad (enough for costs; use :meth:`dist` for exact small distances).
        """
        (bx, cx), (by, cy) = self._split(x.double()), self._split(y.double())
        total = torch.zeros(x.shape[0], y.shape[0], dtype=torch.float64, device=x.device)
        for l, (_, _, r) in enumerate(self._blocks_spec):
            ux, uy = sphere_project(bx[l]), sphere_project(by[l])
            cos = torch.einsum("ikd,jkd->ijk", ux, uy).clamp(-1.0, 1.0)
            total += r**2 * (torch.arccos(cos) ** 2).sum(-1)
            total += ((cx[l][:, None, :] - cy[l][None, :, :]) ** 2).sum(-1)
        return total.to(x.dtype)

    def sample_prior(self, n: int, generator: torch.Generator | None = None, *, device=None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
        """``[n, D]``: uniform on each sphere factor (normalized Gaussians), ``N(0, bias_prior_std^2)`` biases."""
        z = _randn(n, self.dim, generator, device, dtype)
        return self._map(sphere_project, lambda b: self.bias_prior_std * b, z)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """``[...]``: ``-sum_k log area(S_k)`` plus the Gaussian log-density of the biases (w.r.t. the volume
        of ``M``); ``x`` is assumed to lie on ``M``."""
        biases = x[..., self.layout.is_bias.to(x.device)]
        std = torch.tensor(self.bias_prior_std, dtype=x.dtype, device=x.device)
        return _gaussian_log_prob(biases, std) - self._log_area

    def __repr__(self) -> str:
        return (f"ProductSpheres(layer_sizes={list(self.layout.layer_sizes)}, last_radius={self.last_radius:g}, "
                f"bias_prior_std={self.bias_prior_std:g})")

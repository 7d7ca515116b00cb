"""Geometries of weight space: flat Euclidean space and the product of spheres of canonical ReLU MLPs.

Every geometry works on batches of networks in the flat layout of :mod:`weightflow.weights`: points, tangent
vectors ``[..., D]`` (usually ``[B, D]``) and times ``t`` of shape ``[...]`` (or a scalar).  A geometry is an
object handed to paths, couplings, solvers and likelihoods; code never branches on its name.

:class:`ProductSpheres` is the manifold of canonical networks (:mod:`weightflow.canonical`)::

    M = prod_{hidden l} prod_{k < n_l} S^{n_{l-1}-1}(1)  x  W_L-factor  x  R^{#biases}

* each hidden neuron's incoming weight row ``W_l[k, :]`` is one unit sphere ``S^{fan_in-1}`` (one *factor*),
* the last-layer matrix ``W_L`` is either Euclidean, ``R^{n_L n_{L-1}}`` (``last_layer='free'``: the
  function-preserving canonical form, the default of the pipeline), or one sphere ``S^{n_L n_{L-1}-1}(R)`` of
  radius ``R = last_radius`` (``last_layer='sphere'``: the thesis' form; default ``R = sqrt(C)``),
* every bias is a Euclidean coordinate.

The metric is the one induced by the flat ambient space ``R^D``, so tangent vectors are flat ``[..., D]``
vectors, ``dist(x, y) = |log_x y|`` and the Riemannian volume is the product of the spheres' surface measures
and Lebesgue measure on the Euclidean coordinates.  The manifold has ``intrinsic_dim = D - num_factors``
dimensions (each sphere factor of ambient dimension ``d`` has dimension ``d - 1``); :attr:`Geometry.factor_dims`
lists the ambient ``d`` of each factor, :attr:`Geometry.factor_index` says which factor each flat coordinate
belongs to.

Internally each sphere layer is a tensor ``[..., n_factors, d]`` (hidden: ``[..., n_out, fan_in]``; a sphere
last layer: ``[..., 1, n_out * fan_in]``) and every sphere operation is vectorized over networks and neurons;
only the few layers are looped over.  The Euclidean coordinates are gathered into one ``[..., m]`` tensor.

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

from weightflow.names import CANONICAL_FORMS
from weightflow.weights import MLPLayout, as_layout, unflatten

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
    "GEOMETRY_CLASSES",
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
    def is_flat(self) -> bool:
        """True for flat space (no sphere factor): ambient ODE solvers integrate it directly."""
        return self.num_factors == 0

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

    @classmethod
    def from_params(cls, layout: MLPLayout | Sequence[int], params: dict) -> "Euclidean":
        """From a flow's path params: ``prior_std`` and ``bias_prior_std``."""
        return cls(layout, params["prior_std"], params["bias_prior_std"])

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

    ``last_layer`` says where the last layer's weight matrix ``W_L`` lives:

    * ``'sphere'`` (the thesis' form): one sphere of radius ``last_radius`` (default ``sqrt(C)``) — the
      canonical network computes the raw network's logits divided by ``s_L = |W_L|_F / R``;
    * ``'free'`` (function-preserving form): ``W_L`` is Euclidean, like the biases — it absorbs the pushed
      hidden scales and the canonical network computes exactly the raw network's logits.

    Prior: uniform on every sphere factor (density ``-log area`` w.r.t. the sphere's surface measure) times
    ``N(0, bias_prior_std^2)`` on every bias and, with ``last_layer='free'``, ``N(0, weight_prior_std^2)`` on
    every entry of ``W_L``.  Hidden spheres have radius 1.  Used by the ``normalized`` (prior only) and
    ``geometric`` flows.
    """

    name = "product_spheres"
    LAST_LAYER_FORMS = CANONICAL_FORMS

    def __init__(self, layout: MLPLayout | Sequence[int], last_radius: float | None = None,
                 bias_prior_std: float = 1.0, *, last_layer: str = "sphere", weight_prior_std: float = 1.0):
        super().__init__(layout)
        sizes = self.layout.layer_sizes
        if last_layer not in self.LAST_LAYER_FORMS:
            raise ValueError(f"last_layer must be one of {self.LAST_LAYER_FORMS}, got {last_layer!r}")
        self.last_layer = last_layer
        self.last_radius = math.sqrt(sizes[-1]) if last_radius is None else float(last_radius)
        if not self.last_radius > 0:
            raise ValueError(f"last_radius must be > 0, got {last_radius}")
        if not (bias_prior_std > 0 and weight_prior_std > 0):
            raise ValueError(f"bias_prior_std and weight_prior_std must be > 0, got {bias_prior_std}, {weight_prior_std}")
        self.bias_prior_std = float(bias_prior_std)
        self.weight_prior_std = float(weight_prior_std)
        L = self.layout.num_layers
        # Per sphere layer: (layer, number of factors, ambient dimension of each, radius).
        self._blocks_spec = [(l, sizes[l + 1], sizes[l], 1.0) for l in range(L - 1)]
        if last_layer == "sphere":
            self._blocks_spec.append((L - 1, 1, sizes[-1] * sizes[-2], self.last_radius))
        small = [l for l, _, d, _ in self._blocks_spec if d < 2]
        if small:
            raise ValueError(
                f"layer_sizes {list(sizes)}: layer(s) {small} have 1-dimensional incoming weights; "
                "their 'sphere' S^0 is two points, which has no geodesics"
            )
        self._log_area = sum(k * sphere_log_area(d, r) for _, k, d, r in self._blocks_spec)
        # Flat coordinates of the sphere blocks (layer by layer, row-major) and of the Euclidean part; `_order`
        # maps cat([block_1, ..., block_S, euclid]) back to the flat layout.
        sphere_index = torch.cat([torch.arange(self.layout.offsets[l][0], self.layout.offsets[l][1])
                                  for l, _, _, _ in self._blocks_spec]) if self._blocks_spec else torch.zeros(0, dtype=torch.long)
        is_sphere = torch.zeros(self.dim, dtype=torch.bool)
        is_sphere[sphere_index] = True
        self._euclid_index = torch.nonzero(~is_sphere).squeeze(1)
        order = torch.empty(self.dim, dtype=torch.long)
        order[torch.cat([sphere_index, self._euclid_index])] = torch.arange(self.dim)
        self._order = order
        is_bias = self.layout.is_bias[self._euclid_index]
        self._euclid_std = torch.full(is_bias.shape, self.weight_prior_std, dtype=torch.float64)
        self._euclid_std[is_bias] = self.bias_prior_std

    @classmethod
    def from_params(cls, layout: MLPLayout | Sequence[int], params: dict) -> "ProductSpheres":
        """From a flow's path params: ``last_radius``, ``bias_prior_std``, ``last_layer`` (default ``'sphere'``)
        and ``prior_std`` (the Gaussian prior of a free last layer)."""
        return cls(layout, params.get("last_radius"), params["bias_prior_std"],
                   last_layer=params.get("last_layer", "sphere"), weight_prior_std=params["prior_std"])

    # --- factors -----------------------------------------------------------------------------------------
    @property
    def factor_dims(self) -> tuple[int, ...]:
        return tuple(d for _, k, d, _ in self._blocks_spec for _ in range(k))

    @property
    def factor_radii(self) -> tuple[float, ...]:
        return tuple(r for _, k, _, r in self._blocks_spec for _ in range(k))

    @property
    def factor_index(self) -> Tensor:
        index = torch.full((self.dim,), -1, dtype=torch.long)
        first = 0
        for l, k, d, _ in self._blocks_spec:
            w_start, b_start, _ = self.layout.offsets[l]
            index[w_start:b_start] = torch.arange(first, first + k).repeat_interleave(d)
            first += k
        return index

    @property
    def factor_layers(self) -> Tensor:
        if not self._blocks_spec:
            return torch.zeros(0, dtype=torch.long)
        return torch.cat([torch.full((k,), l, dtype=torch.long) for l, k, _, _ in self._blocks_spec])

    def _split(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Views of the sphere blocks ``[..., k, d]`` (in units of their radius: divide by ``r`` yourself), one per
        sphere layer, and the Euclidean coordinates ``[..., m]`` (biases; ``W_L`` too when it is free)."""
        layers = unflatten(x, self.layout)
        blocks = [layers[l][0].reshape(*x.shape[:-1], k, d) for l, k, d, _ in self._blocks_spec]
        return blocks, x.index_select(-1, self._euclid_index.to(x.device))

    def _join(self, blocks: list[Tensor], euclid: Tensor) -> Tensor:
        """Inverse of :meth:`_split`."""
        parts = [b.flatten(-2) for b in blocks] + [euclid]
        return torch.cat(parts, dim=-1).index_select(-1, self._order.to(euclid.device))

    def _map(self, sphere_fn: Callable[..., Tensor], euclid_fn: Callable[..., Tensor], *xs: Tensor) -> Tensor:
        """Apply ``sphere_fn`` to every sphere block (scaled to unit radius, result scaled back by ``r``) and
        ``euclid_fn`` to the Euclidean coordinates; ``xs`` are flat ``[..., D]`` tensors."""
        parts = [self._split(x) for x in xs]
        blocks = [r * sphere_fn(*[p[0][i] / r for p in parts]) for i, (_, _, _, r) in enumerate(self._blocks_spec)]
        return self._join(blocks, euclid_fn(*[p[1] for p in parts]))

    def factor_norms(self, x: Tensor) -> Tensor:
        blocks, _ = self._split(x)
        if not blocks:
            return x.new_zeros(*x.shape[:-1], 0)
        return torch.cat([b.norm(dim=-1) for b in blocks], dim=-1)

    # --- geometry ----------------------------------------------------------------------------------------
    def project(self, x: Tensor) -> Tensor:
        """Normalize every sphere factor to its radius (a zero factor becomes ``r e_1``); the rest unchanged."""
        return self._map(sphere_project, lambda e: e, x)

    def proj_tangent(self, x: Tensor, v: Tensor) -> Tensor:
        """Remove from every sphere factor of ``v`` its component along ``x``'s factor (differentiable).

        ``x`` need not be exactly on the manifold: its factors are normalized first.
        """
        return self._map(lambda xb, vb: sphere_proj_tangent(sphere_project(xb), vb), lambda xe, ve: ve, x, v)

    def exp(self, x: Tensor, v: Tensor) -> Tensor:
        """Exponential map per factor (``v`` projected onto ``T_x`` first); Euclidean part ``x_e + v_e``."""
        return self._map(sphere_exp, lambda xe, ve: xe + ve, x, v)

    def log(self, x: Tensor, y: Tensor) -> Tensor:
        """Logarithm map per factor (``theta e``, atan2 angle, antipodal fallback); Euclidean part ``y_e - x_e``."""
        return self._map(sphere_log, lambda xe, ye: ye - xe, x, y)

    def interpolate(self, x0: Tensor, x1: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Geodesic ``x_t`` and its exact velocity ``u_t = d/dt x_t`` (closed form per factor, linear elsewhere)."""
        tt = _times(t, x0)
        (b0, e0), (b1, e1) = self._split(x0), self._split(x1)
        xs, us = [], []
        for i, (_, _, _, r) in enumerate(self._blocks_spec):
            x_t, u_t = sphere_interpolate(b0[i] / r, b1[i] / r, tt[..., None, None])
            xs.append(r * x_t)
            us.append(r * u_t)
        return self._join(xs, e0 + tt[..., None] * (e1 - e0)), self._join(us, e1 - e0)

    def transport(self, x: Tensor, y: Tensor, v: Tensor) -> Tensor:
        """Parallel transport of ``v in T_x M`` to ``T_y M`` along the geodesic (per factor; Euclidean part unchanged)."""
        return self._map(sphere_transport, lambda xe, ye, ve: ve, x, y, v)

    def pairwise_sq_dist(self, x: Tensor, y: Tensor) -> Tensor:
        """``[B1, B2]`` squared geodesic distances of ``x [B1, D]`` and ``y [B2, D]`` (an OT cost).

        Computed in float64 from inner products: ``theta = acos(<x_k, y_k>)`` per factor, accurate to about
        ``1e-8`` rad (enough for costs; use :meth:`dist` for exact small distances).
        """
        (bx, ex), (by, ey) = self._split(x.double()), self._split(y.double())
        total = torch.zeros(x.shape[0], y.shape[0], dtype=torch.float64, device=x.device)
        for i, (_, _, _, r) in enumerate(self._blocks_spec):
            ux, uy = sphere_project(bx[i]), sphere_project(by[i])
            cos = torch.einsum("ikd,jkd->ijk", ux, uy).clamp(-1.0, 1.0)
            total += r**2 * (torch.arccos(cos) ** 2).sum(-1)
        total += ((ex**2).sum(-1)[:, None] + (ey**2).sum(-1)[None, :] - 2.0 * ex @ ey.T).clamp_min(0)
        return total.to(x.dtype)

    def sample_prior(self, n: int, generator: torch.Generator | None = None, *, device=None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
        """``[n, D]``: uniform on each sphere factor (normalized Gaussians), Gaussian Euclidean coordinates."""
        z = _randn(n, self.dim, generator, device, dtype)
        return self._map(sphere_project, lambda e: e * self._euclid_std.to(e.device, e.dtype), z)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """``[...]``: ``-sum_k log area(S_k)`` plus the Gaussian log-density of the Euclidean coordinates
        (w.r.t. the volume of ``M``); ``x`` is assumed to lie on ``M``."""
        euclid = x.index_select(-1, self._euclid_index.to(x.device))
        return _gaussian_log_prob(euclid, self._euclid_std.to(x.device, x.dtype)) - self._log_area

    def __repr__(self) -> str:
        radius = f"last_radius={self.last_radius:g}, " if self.last_layer == "sphere" else ""
        return (f"ProductSpheres(layer_sizes={list(self.layout.layer_sizes)}, last_layer={self.last_layer!r}, "
                f"{radius}bias_prior_std={self.bias_prior_std:g})")


# Geometry classes by the kind name a flow's path table (weightflow.flow.spec.GEOMETRIES) refers to.
GEOMETRY_CLASSES: dict[str, type[Geometry]] = {"euclidean": Euclidean, "spheres": ProductSpheres}

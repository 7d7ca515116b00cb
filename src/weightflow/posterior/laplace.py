"""Laplace approximations around MAP networks, sampled into weights (written by hand; see below why).

Around a mode ``θ*`` of ``p(θ | D) ∝ exp(−U(θ))`` (:mod:`weightflow.posterior.target`), the Laplace approximation
is ``N(θ*, P⁻¹)`` with ``P = ∇²U(θ*) ≈ GGN + δI``, ``δ = 1/σ_p²`` the prior precision, and the generalized
Gauss–Newton matrix of the log-likelihood::

    GGN = Σ_i J_iᵀ Λ_i J_i,   J_i = ∂f_θ(x_i)/∂θ  [C × D],   Λ_i = −∇²_f log p(y_i | f) = diag(p_i) − p_i p_iᵀ

(softmax ``p_i``; for a Gaussian likelihood with noise std ``s``, ``Λ_i = I/s²``).  Λ is factored as
``Λ_i = L_i L_iᵀ``, ``L_i = diag(√p_i) − p_i √p_iᵀ`` (:func:`categorical_hessian_sqrt`; uses Σ p = 1).

* ``last_layer`` — only the last layer ``W̃ = [W_L | b_L]`` (``C × (H+1)``) is random, the rest stays at the MAP.
  With ``φ̃_i = [φ(x_i), 1]`` the last hidden activations, the logits ``f = W̃ φ̃`` are linear in ``W̃``, so the GGN
  is the exact Hessian of the negative log-likelihood there::

      P = Σ_i Λ_i ⊗ φ̃_i φ̃_iᵀ + δ I        (index (c, j) ↦ c·(H+1) + j; full ``C(H+1)`` square matrix)

  Draws ``W̃ = W̃* + R⁻ᵀ z`` with ``P = R Rᵀ`` (Cholesky), ``z ~ N(0, I)``.
* ``kron`` — every layer, block-diagonal over layers, each block Kronecker-factored (K-FAC; Martens & Grosse 2015,
  Ritter et al. 2018) with the exact GGN's backpropagated factors::

      P_l ≈ G_l ⊗ A_l + δ I,   A_l = (1/N) Σ_i ã_i ã_iᵀ   (ã = [layer input, 1]),
      G_l = Σ_i Σ_r g_{i,r} g_{i,r}ᵀ,   g_{i,r} = (∂f_i/∂s_l)ᵀ L_i[:, r]   (s_l the layer's pre-activations)

  Draws from the eigendecompositions ``G = U_G diag(λ_G) U_Gᵀ``, ``A = U_A diag(λ_A) U_Aᵀ``:
  ``ΔW̃_l = U_G [Z ⊘ √(λ_G λ_Aᵀ + δ)] U_Aᵀ`` (``Z`` a ``out × (in+1)`` standard normal matrix).  Where every
  ``Λ_i`` is the same matrix (a Gaussian likelihood), the last layer's block is exact:
  ``Σ_i Λ ⊗ A_i = (NΛ) ⊗ (ΣA_i/N)``.

Flat layout: ``W̃[o, j]`` is ``W_l[o, j]`` (``w_start + o·in + j``) for ``j < in`` and ``b_l[o]`` for ``j = in``.

laplace-torch (the library the issue names) is not used: ``pip install laplace-torch`` replaces torch 2.13 (its
dependency torchvision 0.29 pins torch 2.14 with CUDA wheels; with a ``torch==2.13.0`` constraint it resolves to
torchvision 0.28), so it is not a weightflow dependency; this module computes the same last-layer (full GGN) and
Kronecker-factored approximations directly on the flat, batched weights.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from weightflow.weights import MLPLayout, as_layout, unflatten

__all__ = ["LaplaceConfig", "categorical_hessian_sqrt", "gaussian_hessian_sqrt", "hidden_features",
           "last_layer_indices", "last_layer_precision", "sample_precision", "kron_factors", "sample_kron",
           "laplace_samples", "SUBSETS"]

log = logging.getLogger(__name__)

SUBSETS = ("last_layer", "kron")
# logits [..., C] -> L [..., C, C] with L Lᵀ = −∇²_f log p(y | f) (the output-space Hessian)
HessianSqrt = Callable[[Tensor], Tensor]


@dataclass
class LaplaceConfig:
    """Settings of the Laplace baseline (``posterior.laplace``; see config/README.md)."""

    subset: str = "last_layer"
    members: int | None = None
    samples_per_member: int = 20

    def __post_init__(self) -> None:
        if self.subset not in SUBSETS:
            raise ValueError(f"posterior.laplace.subset: unknown subset {self.subset!r}; use {' or '.join(SUBSETS)}")
        if self.members is not None and self.members < 1:
            raise ValueError(f"posterior.laplace.members: must be >= 1 or null, got {self.members}")
        if self.samples_per_member < 1:
            raise ValueError(f"posterior.laplace.samples_per_member: must be >= 1, got {self.samples_per_member}")


def categorical_hessian_sqrt(logits: Tensor) -> Tensor:
    """``L = diag(√p) − p √pᵀ`` with ``L Lᵀ = diag(p) − p pᵀ``, ``p = softmax(logits)`` → ``[..., C, C]``."""
    p = torch.softmax(logits, dim=-1)
    root = p.sqrt()
    return torch.diag_embed(root) - p.unsqueeze(-1) * root.unsqueeze(-2)


def gaussian_hessian_sqrt(noise_std: float) -> HessianSqrt:
    """The output-Hessian square root ``I / s`` of a Gaussian likelihood ``N(y; f, s² I)``."""
    def sqrt(logits: Tensor) -> Tensor:
        eye = torch.eye(logits.shape[-1], dtype=logits.dtype, device=logits.device)
        return (eye / noise_std).expand(*logits.shape, logits.shape[-1])

    return sqrt


def _activations(theta: Tensor, layout: MLPLayout, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """Layer inputs ``a_{l−1} [B, n, in]`` and pre-activations ``s_l [B, n, out]`` of every layer."""
    inputs, pre = [], []
    h = x.expand(theta.shape[0], *x.shape) if x.ndim == 2 else x
    for layer, (w, b) in enumerate(unflatten(theta, layout)):
        inputs.append(h)
        s = torch.matmul(h, w.transpose(-1, -2)) + b.unsqueeze(-2)
        pre.append(s)
        h = torch.relu(s) if layer < layout.num_layers - 1 else s
    return inputs, pre


def hidden_features(theta: Tensor, layer_sizes: Sequence[int] | MLPLayout, x: Tensor) -> Tensor:
    """The last layer's inputs ``φ(x)`` (last hidden ReLU activations) of every network → ``[B, n, H]``."""
    inputs, _ = _activations(theta, as_layout(layer_sizes), x)
    return inputs[-1]


def _augmented_indices(layout: MLPLayout, layer: int) -> Tensor:
    """Flat coordinates of ``W̃_l = [W_l | b_l]`` in row-major ``(o, j)`` order → ``[out·(in+1)]``."""
    w_start, b_start, _ = layout.offsets[layer]
    (out, fan_in), _ = layout.shapes(layer)
    o = torch.arange(out).unsqueeze(1)
    j = torch.arange(fan_in + 1).unsqueeze(0)
    return torch.where(j < fan_in, w_start + o * fan_in + j, b_start + o).reshape(-1)


def last_layer_indices(layer_sizes: Sequence[int] | MLPLayout) -> Tensor:
    """Flat coordinates of the last layer's ``W̃ = [W_L | b_L]`` in the order of :func:`last_layer_precision`."""
    layout = as_layout(layer_sizes)
    return _augmented_indices(layout, layout.num_layers - 1)


def _augment(a: Tensor) -> Tensor:
    return torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)


def last_layer_precision(features: Tensor, hessian_sqrt: Tensor, prior_precision: float) -> Tensor:
    """``Σ_i Λ_i ⊗ φ̃_i φ̃_iᵀ + δ I`` from ``features φ [B, n, H]`` and ``L [B, n, C, C]`` → ``[B, P, P]``,
    ``P = C(H+1)``, index ``(c, j) ↦ c(H+1) + j``."""
    phi = _augment(features)  # [B, n, H+1]
    # v_{i,r} = L_i[:, r] ⊗ φ̃_i : [B, n, r, C, H+1]
    v = hessian_sqrt.transpose(-1, -2).unsqueeze(-1) * phi.unsqueeze(-2).unsqueeze(-2)
    v = v.reshape(v.shape[0], -1, v.shape[-2] * v.shape[-1])  # [B, n·C, P]
    precision = v.transpose(-1, -2) @ v
    return precision + prior_precision * torch.eye(precision.shape[-1], dtype=v.dtype, device=v.device)


def sample_precision(mean: Tensor, precision: Tensor, num: int, *, generator: torch.Generator) -> Tensor:
    """``num`` draws of ``N(mean, precision⁻¹)`` per row: ``mean [B, P]``, ``precision [B, P, P]`` → ``[B, num, P]``."""
    chol = torch.linalg.cholesky(precision.double())  # P = R Rᵀ
    z = torch.randn(mean.shape[0], mean.shape[1], num, generator=generator, dtype=torch.float64).to(mean.device)
    delta = torch.linalg.solve_triangular(chol.transpose(-1, -2), z, upper=True)  # R⁻ᵀ z: covariance P⁻¹
    return mean.unsqueeze(1) + delta.transpose(-1, -2).to(mean.dtype)


def kron_factors(theta: Tensor, layer_sizes: Sequence[int] | MLPLayout, x: Tensor,
                 hessian_sqrt: HessianSqrt = categorical_hessian_sqrt) -> list[tuple[Tensor, Tensor]]:
    """K-FAC factors ``(A_l [B, in+1, in+1], G_l [B, out, out])`` of every layer (see the module docstring)."""
    layout = as_layout(layer_sizes)
    with torch.no_grad():
        inputs, pre = _activations(theta, layout, x)
        n = inputs[0].shape[-2]
        back = hessian_sqrt(pre[-1])  # [B, n, C, R]: column r of L_i, i.e. the output-space vectors
        back = back.transpose(-1, -2)  # [B, n, R, C]
        layers = unflatten(theta, layout)
        factors: list[tuple[Tensor, Tensor]] = [None] * layout.num_layers  # type: ignore[list-item]
        for layer in range(layout.num_layers - 1, -1, -1):
            a = _augment(inputs[layer])  # [B, n, in+1]
            a_factor = a.transpose(-1, -2) @ a / n
            g = back.reshape(back.shape[0], -1, back.shape[-1])  # [B, n·R, out]
            factors[layer] = (a_factor, g.transpose(-1, -2) @ g)
            if layer > 0:
                w = layers[layer][0]  # [B, out, in]
                back = (back @ w.unsqueeze(1)) * (pre[layer - 1] > 0).unsqueeze(-2).to(back.dtype)
    return factors


def sample_kron(theta: Tensor, layer_sizes: Sequence[int] | MLPLayout, factors: list[tuple[Tensor, Tensor]],
                prior_precision: float, num: int, *, generator: torch.Generator) -> Tensor:
    """``num`` draws of the block-diagonal Kronecker Laplace around every row of ``theta [B, D]`` → ``[B, num, D]``."""
    layout = as_layout(layer_sizes)
    out = theta.unsqueeze(1).repeat(1, num, 1)
    for layer, (a_factor, g_factor) in enumerate(factors):
        lam_a, u_a = torch.linalg.eigh(a_factor.double())
        lam_g, u_g = torch.linalg.eigh(g_factor.double())
        scale = (lam_g.clamp_min(0).unsqueeze(-1) * lam_a.clamp_min(0).unsqueeze(-2) + prior_precision).rsqrt()
        rows, cols = g_factor.shape[-1], a_factor.shape[-1]
        z = torch.randn(theta.shape[0], num, rows, cols, generator=generator, dtype=torch.float64).to(theta.device)
        delta = u_g.unsqueeze(1) @ (z * scale.unsqueeze(1)) @ u_a.transpose(-1, -2).unsqueeze(1)  # [B, num, out, in+1]
        idx = _augmented_indices(layout, layer).to(theta.device)
        out[..., idx] += delta.reshape(*delta.shape[:2], -1).to(theta.dtype)
    return out


def laplace_samples(theta_map: Tensor, layer_sizes: Sequence[int] | MLPLayout, x: Tensor, prior_std: float,
                    cfg: LaplaceConfig, *, generator: torch.Generator,
                    hessian_sqrt: HessianSqrt = categorical_hessian_sqrt) -> tuple[Tensor, float]:
    """``cfg.samples_per_member`` Laplace draws around each MAP network ``theta_map [M, D]`` on training inputs
    ``x`` → (``[M, S, D]``, CPU seconds)."""
    cpu_start = time.process_time()
    layout = as_layout(layer_sizes)
    delta = 1.0 / prior_std**2
    num = cfg.samples_per_member
    with torch.no_grad():
        if cfg.subset == "last_layer":
            inputs, pre = _activations(theta_map, layout, x)
            precision = last_layer_precision(inputs[-1].double(), hessian_sqrt(pre[-1].double()), delta)
            idx = last_layer_indices(layout).to(theta_map.device)
            draws = sample_precision(theta_map[:, idx], precision, num, generator=generator)
            out = theta_map.unsqueeze(1).repeat(1, num, 1)
            out[..., idx] = draws
        else:
            factors = kron_factors(theta_map.double(), layout, x.double(), hessian_sqrt)
            out = sample_kron(theta_map, layout, factors, delta, num, generator=generator)
    seconds = time.process_time() - cpu_start
    log.info("Laplace (%s): %d members × %d draws, %.2f CPU s", cfg.subset, theta_map.shape[0], num, seconds)
    return out, seconds

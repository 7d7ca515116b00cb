"""Sinkhorn re-basin (Peña et al., 2023): learn soft permutations by gradient descent, then harden them.

Each network ``i`` and hidden layer ``h`` gets a learnable score matrix ``S_h[i] [n_h, n_h]``.  The soft
permutation is the log-domain Sinkhorn operator with temperature ``τ`` and a fixed number of iterations,

    log P ← S / τ;   repeat: log P ← log P − logsumexp_rows(log P);  log P ← log P − logsumexp_cols(log P)

differentiated through the unrolled iterations (the implicit-differentiation linear solve goes singular at
high learning rates).  ``P`` acts on the network as in :func:`weightflow.align.soft_permute`.  Objectives,
summed over networks so that every network's scores get their own gradient:

* ``l2``:  ``‖θ_ref − π(θ)‖²``
* ``mid``: cross-entropy of the midpoint ``(θ_ref + π(θ)) / 2`` on a training minibatch
* ``rnd``: cross-entropy of ``(1 − λ) θ_ref + λ π(θ)``, ``λ ~ U(0, 1)`` drawn per network and step

All networks are aligned by one Adam optimization over the stack of score matrices ``[N, n_h, n_h]``.  The
scores start from a permutation (the weight-matching solution) as ``S = one_hot(p)``; at the end each score
matrix is hardened by a linear assignment.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import Tensor

from weightflow.align.permutations import identity_permutations, permutation_matrices, soft_permute
from weightflow.align.weight_matching import solve_assignments
from weightflow.utils import progress
from weightflow.weights import MLPLayout, as_layout, cross_entropy

__all__ = ["OBJECTIVES", "log_sinkhorn", "sinkhorn_rebasin"]

log = logging.getLogger(__name__)

OBJECTIVES = ("l2", "mid", "rnd")


def log_sinkhorn(scores: Tensor, tau: float, iterations: int) -> Tensor:
    """Doubly stochastic ``[..., n, n]`` from ``scores [..., n, n]``: ``iterations`` log-domain Sinkhorn steps on ``scores/τ``."""
    log_p = scores / tau
    for _ in range(iterations):
        log_p = log_p - torch.logsumexp(log_p, dim=-1, keepdim=True)
        log_p = log_p - torch.logsumexp(log_p, dim=-2, keepdim=True)
    return log_p.exp()


def _objective(
    name: str, reference: Tensor, permuted: Tensor, layout: MLPLayout, data, batch_size: int, generator
) -> Tensor:
    """Per-network objective ``[N]`` of the (soft or hard) permuted networks ``permuted [N, D]``."""
    if name == "l2":
        return (reference - permuted).pow(2).sum(-1)
    x, y = data
    idx = torch.randperm(x.shape[0], generator=generator)[:batch_size].to(x.device)
    if name == "mid":
        lam = torch.full((permuted.shape[0], 1), 0.5, device=permuted.device, dtype=permuted.dtype)
    else:
        lam = torch.rand(permuted.shape[0], 1, generator=generator).to(permuted)
    return cross_entropy((1 - lam) * reference + lam * permuted, layout, x[idx], y[idx])


def sinkhorn_rebasin(
    reference: Tensor,
    flat: Tensor,
    layer_sizes: Sequence[int] | MLPLayout,
    *,
    objective: str = "l2",
    init: Sequence[Tensor] | None = None,
    tau: float = 1.0,
    iterations: int = 20,
    steps: int = 100,
    lr: float = 0.1,
    data: tuple[Tensor, Tensor] | None = None,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    """Hard permutations ``[N, n_h]`` per hidden layer aligning ``flat [N, D]`` onto ``reference`` ``[D]`` or ``[N, D]``.

    Args:
        objective: ``l2``, ``mid`` or ``rnd`` (module docstring); ``mid``/``rnd`` need ``data = (x_train, y_train)``.
        init: starting permutations (e.g. from :func:`weight_matching`); default identity.
        tau: Sinkhorn temperature (scores start as a one-hot matrix, so ``τ`` sets how soft the start is).
        iterations: unrolled Sinkhorn iterations per step.
        steps, lr: Adam steps and learning rate on the scores.
        batch_size: training minibatch per step (``mid``/``rnd``).
        generator: seeds the minibatches and the λ draws.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown alignment objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if objective != "l2" and data is None:
        raise ValueError(f"alignment objective {objective!r} needs training data (data=(x, y))")
    layout = as_layout(layer_sizes)
    num = flat.shape[0]
    init = init if init is not None else identity_permutations(num, layout, flat.device)
    if not layout.hidden_sizes or num == 0 or steps == 0:
        return [p.clone() for p in init]
    flat, reference = flat.detach(), reference.detach()
    scores = [m.clone().requires_grad_(True) for m in permutation_matrices(init, flat.dtype)]
    opt = torch.optim.Adam(scores, lr=lr)
    bar = progress(range(steps), desc=f"sinkhorn-{objective}", leave=False)
    for _ in bar:
        opt.zero_grad(set_to_none=True)
        mats = [log_sinkhorn(s, tau, iterations) for s in scores]
        loss = _objective(objective, reference, soft_permute(flat, layout, mats), layout, data, batch_size, generator)
        loss.sum().backward()
        opt.step()
        bar.set_postfix(objective=f"{loss.mean().item():.4g}", refresh=False)
    log.info("sinkhorn-%s: %d networks, %d steps, final soft objective %.4g", objective, num, steps, loss.mean().item())
    return [solve_assignments(s) for s in scores]

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

Cost.  Only the ``P``'s are learned, and the input layer (``n1 × n0``, almost all weights for image inputs) enters
the objectives linearly, so it is never permuted as a matrix: ``l2`` uses ``‖W_ref − P W‖² = ‖W_ref‖² − 2⟨P, W_ref
W^T⟩ + ⟨P (W W^T), P⟩`` (``n1 × n1`` matrices computed once, biases appended as a column), and ``mid``/``rnd``
use the pre-activations ``P (W x + b)`` — one product of the unpermuted weights with the minibatch per step, without
gradient — interpolated with the reference's (the first layer is linear in its weights, so interpolating weights
interpolates pre-activations).  Only the small layers after it are permuted and interpolated as matrices.
For 784-10-10 this removes every ``[N, D]`` temporary and the backward pass through the ``[N·n1, n0]`` product:
measured 20 → 4 ms per network (4096 networks, 30 steps, 1 thread, shared machine).
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import Tensor

from weightflow.align.permutations import identity_permutations, permutation_matrices
from weightflow.align.weight_matching import solve_assignments
from weightflow.utils import progress
from weightflow.weights import MLPLayout, as_layout, unflatten

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


def _soft_layers(layers, mats, start: int = 1) -> list[tuple[Tensor, Tensor]]:
    """``(P_l W_l P_{l-1}^T, P_l b_l)`` for layers ``start`` … ``L − 1`` (``P`` = identity at the output layer)."""
    out = []
    for layer in range(start, len(layers)):
        w, b = layers[layer]
        if layer < len(mats):
            w = mats[layer] @ w
            b = (mats[layer] @ b.unsqueeze(-1)).squeeze(-1)
        if layer > 0:
            w = w @ mats[layer - 1].transpose(-1, -2)
        out.append((w, b))
    return out


def _with_bias(w: Tensor, b: Tensor) -> Tensor:
    """``[W | b]``: ``[..., out, in + 1]``."""
    return torch.cat([w, b.unsqueeze(-1)], dim=-1)


def _objective(
    name: str, reference: Tensor, flat: Tensor, layout: MLPLayout, mats: Sequence[Tensor], data, batch_size: int,
    generator, cache: dict,
) -> Tensor:
    """Per-network objective ``[N]`` of ``flat [N, D]`` under the soft permutations ``mats`` (module docstring)."""
    ref_layers, layers = unflatten(reference, layout), unflatten(flat, layout)
    p1 = mats[0]
    if name == "l2":
        if "cross" not in cache:  # the input layer's terms, once per call of sinkhorn_rebasin
            ref1, net1 = _with_bias(*ref_layers[0]), _with_bias(*layers[0])
            cache["const"] = ref1.pow(2).sum((-1, -2))
            cache["cross"] = ref1 @ net1.transpose(-1, -2)  # [N, n1, n1]: reference neuron k · network neuron j
            cache["gram"] = net1 @ net1.transpose(-1, -2)
        value = cache["const"] - 2 * (p1 * cache["cross"]).sum((-1, -2)) + (p1 @ cache["gram"] * p1).sum((-1, -2))
        for (w_ref, b_ref), (w, b) in zip(ref_layers[1:], _soft_layers(layers, mats)):
            value = value + (w_ref - w).pow(2).sum((-1, -2)) + (b_ref - b).pow(2).sum(-1)
        return value
    x, y = data
    idx = torch.randperm(x.shape[0], generator=generator)[:batch_size].to(x.device)
    xb, yb = x[idx], y[idx]
    num = flat.shape[0]
    if name == "mid":
        lam = torch.full((num, 1, 1), 0.5, device=flat.device, dtype=flat.dtype)
    else:
        lam = torch.rand(num, 1, 1, generator=generator).to(flat)
    if "w1" not in cache:
        cache["w1"] = layers[0][0].contiguous()  # [N, n1, n0]: one copy, then a free reshape per step
    w_ref, b_ref = ref_layers[0]
    with torch.no_grad():  # feature-major pre-activations [N, n1, bs] of the unpermuted networks and the reference
        w1 = cache["w1"]
        pre = torch.addmm(layers[0][1].reshape(-1, 1), w1.reshape(-1, w1.shape[-1]), xb.T).view(num, w1.shape[1], -1)
        pre_ref = w_ref @ xb.transpose(0, 1) + b_ref.unsqueeze(-1)
    h = torch.relu((1 - lam) * pre_ref + lam * (p1 @ pre))
    soft = _soft_layers(layers, mats)
    for layer, ((wr, br), (w, b)) in enumerate(zip(ref_layers[1:], soft), start=1):
        z = ((1 - lam) * wr + lam * w) @ h + ((1 - lam) * br.unsqueeze(-1) + lam * b.unsqueeze(-1))
        h = torch.relu(z) if layer < len(layers) - 1 else z
    logits = h  # [N, C, bs]
    picked = logits.gather(1, yb.view(1, 1, -1).expand(num, 1, -1)).squeeze(1)
    top = logits.detach().amax(1, keepdim=True)  # logsumexp over the classes (dim 1; torch's is slow there)
    lse = (logits - top).exp().sum(1).log() + top.squeeze(1)
    return (lse - picked).mean(-1)


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
    cache: dict = {}
    bar = progress(range(steps), desc=f"sinkhorn-{objective}", leave=False)
    for _ in bar:
        opt.zero_grad(set_to_none=True)
        mats = [log_sinkhorn(s, tau, iterations) for s in scores]
        loss = _objective(objective, reference, flat, layout, mats, data, batch_size, generator, cache)
        loss.sum().backward()
        opt.step()
        bar.set_postfix(objective=f"{loss.mean().item():.4g}", refresh=False)
    log.info("sinkhorn-%s: %d networks, %d steps, final soft objective %.4g", objective, num, steps, loss.mean().item())
    return [solve_assignments(s) for s in scores]

"""Hidden-neuron permutations of MLPs in the flat layout, batched over networks.

For ``layer_sizes = [n0, n1, ..., nL]`` a permutation of the network is one index tensor per hidden layer,
``perms[h]`` of shape ``[N, n_{h+1}]`` (``h = 0 .. L-2``).  Convention: neuron ``k`` of the permuted network is
neuron ``perms[h][k]`` of the original, i.e. for affine layer ``l`` with output permutation ``p`` and input
permutation ``q`` (identity at the input and output layers)::

    W_l' = W_l[p][:, q],    b_l' = b_l[p]

which leaves the function (the logits) unchanged.  The matching permutation matrix is ``P[k, p[k]] = 1``, so
``W_l' = P_l W_l P_{l-1}^T`` and ``b_l' = P_l b_l``; :func:`soft_permute` applies that formula to any
(e.g. doubly stochastic) matrices.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from weightflow.weights import MLPLayout, as_layout, flatten, unflatten

__all__ = [
    "apply_permutations",
    "permuted_layers",
    "soft_permute",
    "invert_permutations",
    "compose_permutations",
    "identity_permutations",
    "random_permutations",
    "permutation_matrices",
]


def _check_perms(perms: Sequence[Tensor], layout: MLPLayout, num: int, *, square: bool = False) -> None:
    hidden = layout.hidden_sizes
    if len(perms) != len(hidden):
        raise ValueError(f"need one permutation per hidden layer ({len(hidden)} for {list(layout.layer_sizes)}), got {len(perms)}")
    for h, (p, n) in enumerate(zip(perms, hidden)):
        want = (num, n, n) if square else (num, n)
        if tuple(p.shape) != want:
            raise ValueError(f"permutation of hidden layer {h} must have shape {list(want)}, got {list(p.shape)}")


def apply_permutations(flat: Tensor, layer_sizes: Sequence[int] | MLPLayout, perms: Sequence[Tensor]) -> Tensor:
    """Permute the hidden neurons of ``flat [N, D]`` by ``perms[h] [N, n_h]`` (long) → ``[N, D]`` (same function)."""
    layout = as_layout(layer_sizes)
    _check_perms(perms, layout, flat.shape[0])
    return flatten(permuted_layers(flat, layout, perms))


def permuted_layers(
    flat: Tensor, layer_sizes: Sequence[int] | MLPLayout, perms: Sequence[Tensor], *, start: int = 0
) -> list[tuple[Tensor, Tensor]]:
    """``[(W_l', b_l')]`` of the permuted networks (:func:`apply_permutations`) for layers ``start`` … ``L − 1`` only,
    so that a caller can permute the small layers without copying a large input layer."""
    layout = as_layout(layer_sizes)
    out = []
    for layer, (w, b) in enumerate(unflatten(flat, layout)):
        if layer < start:
            continue
        if layer < len(perms):  # rows: this layer's output neurons
            p = perms[layer]
            w = w.gather(1, p.unsqueeze(-1).expand_as(w))
            b = b.gather(1, p)
        if layer > 0:  # columns: the previous hidden layer's neurons
            q = perms[layer - 1]
            w = w.gather(2, q.unsqueeze(1).expand_as(w))
        out.append((w, b))
    return out


def soft_permute(flat: Tensor, layer_sizes: Sequence[int] | MLPLayout, mats: Sequence[Tensor]) -> Tensor:
    """``W_l' = P_l W_l P_{l-1}^T``, ``b_l' = P_l b_l`` for matrices ``mats[h] [N, n_h, n_h]`` → ``[N, D]``.

    With permutation matrices (:func:`permutation_matrices`) this equals :func:`apply_permutations`; with
    doubly stochastic matrices (Sinkhorn) it is the differentiable relaxation used by Sinkhorn re-basin.
    """
    layout = as_layout(layer_sizes)
    _check_perms(mats, layout, flat.shape[0], square=True)
    out = []
    for layer, (w, b) in enumerate(unflatten(flat, layout)):
        if layer < len(mats):
            w = mats[layer] @ w
            b = (mats[layer] @ b.unsqueeze(-1)).squeeze(-1)
        if layer > 0:
            w = w @ mats[layer - 1].transpose(-1, -2)
        out.append((w, b))
    return flatten(out)


def permutation_matrices(perms: Sequence[Tensor], dtype: torch.dtype = torch.float32) -> list[Tensor]:
    """One-hot matrices ``P [N, n, n]`` with ``P[k, p[k]] = 1`` for each ``p [N, n]``."""
    return [torch.nn.functional.one_hot(p, p.shape[-1]).to(dtype) for p in perms]


def invert_permutations(perms: Sequence[Tensor]) -> list[Tensor]:
    """The inverse permutations: ``apply(apply(x, p), invert(p)) == x``."""
    return [torch.argsort(p, dim=-1) for p in perms]


def compose_permutations(first: Sequence[Tensor], then: Sequence[Tensor]) -> list[Tensor]:
    """Permutations equal to applying ``first`` and then ``then``: ``apply(x, compose(f, t)) == apply(apply(x, f), t)``."""
    return [f.gather(-1, t) for f, t in zip(first, then)]


def identity_permutations(num: int, layer_sizes: Sequence[int] | MLPLayout, device=None) -> list[Tensor]:
    """Identity permutations ``[num, n_h]`` for every hidden layer."""
    layout = as_layout(layer_sizes)
    return [torch.arange(n, device=device).expand(num, n).clone() for n in layout.hidden_sizes]


def random_permutations(
    num: int, layer_sizes: Sequence[int] | MLPLayout, *, generator: torch.Generator | None = None
) -> list[Tensor]:
    """Uniformly random permutations ``[num, n_h]`` for every hidden layer (seeded by ``generator``)."""
    layout = as_layout(layer_sizes)
    return [torch.argsort(torch.rand(num, n, generator=generator), dim=-1) for n in layout.hidden_sizes]

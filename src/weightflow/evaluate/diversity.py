"""Functional diversity of a set of networks: pairwise Jensen–Shannon divergence and disagreement.

For networks ``i, j`` with predictive distributions ``p_i(x), p_j(x)`` on a fixed input set ``x_1..x_N``:

* ``JS(i, j) = mean_k [ H((p_i + p_j)/2) - (H(p_i) + H(p_j))/2 ]``  (nats, in [0, log 2])
* ``disagree(i, j) = mean_k [ argmax p_i(x_k) != argmax p_j(x_k) ]``

and the diversity of the set is the mean over the ``M (M - 1) / 2`` unordered pairs ``i < j``.  All pairs are
computed as ``[rows, M, N]`` blocks (rows chunked to bound memory), never one pair at a time.
"""

from __future__ import annotations

import torch
from torch import Tensor

from weightflow.evaluate.metrics import entropy

__all__ = ["pairwise_js", "pairwise_disagreement", "diversity"]

CHUNK_ELEMENTS = 1 << 25


def pairwise_js(log_probs: Tensor) -> Tensor:
    """``[M, M]`` Jensen–Shannon divergences (nats, averaged over inputs) of ``log_probs [M, N, C]``."""
    p = log_probs.exp()
    h = entropy(log_probs)  # [M, N]
    rows = max(1, CHUNK_ELEMENTS // max(1, log_probs.numel()))  # bounds the [rows, M, N, C] block
    blocks = []
    for pi, hi in zip(p.split(rows), h.split(rows)):
        mix = 0.5 * (pi[:, None] + p[None])  # [rows, M, N, C]
        h_mix = -torch.special.xlogy(mix, mix).sum(-1)
        blocks.append((h_mix - 0.5 * (hi[:, None] + h[None])).mean(-1))
    return torch.cat(blocks).clamp_min(0.0)


def pairwise_disagreement(log_probs: Tensor) -> Tensor:
    """``[M, M]`` fraction of inputs on which the argmax predictions of networks ``i`` and ``j`` differ."""
    pred = log_probs.argmax(-1)  # [M, N]
    return (pred[:, None] != pred[None]).to(log_probs.dtype).mean(-1)


def _mean_off_diagonal(matrix: Tensor) -> float:
    m = matrix.shape[0]
    if m < 2:
        return float("nan")
    return ((matrix.sum() - matrix.diagonal().sum()) / (m * (m - 1))).item()


def diversity(log_probs: Tensor) -> dict[str, float]:
    """``{'js': mean pairwise JS, 'disagreement': mean pairwise disagreement}`` over pairs ``i != j`` (NaN if M < 2)."""
    return {
        "js": _mean_off_diagonal(pairwise_js(log_probs)),
        "disagreement": _mean_off_diagonal(pairwise_disagreement(log_probs)),
    }

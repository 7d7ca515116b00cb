"""Classification metrics of many networks at once, and of their Bayesian model average (BMA).

Every function takes log-probabilities ``log_probs [..., n, C]`` (any leading batch dims, e.g. ``[B, n, C]`` for
``B`` networks on ``n`` inputs) and integer labels ``y [n]``, and returns one value per leading index
(``[...]``).  Metrics of the BMA predictive are the same functions applied to :func:`bma_log_probs`, i.e. to the
*averaged probabilities* — never the average of the members' metrics (Brier, NLL and ECE are not linear in
the predictive, so the two differ).

With ``p = exp(log_probs)`` and ``e_y`` the one-hot label:

* accuracy  = mean_i [argmax_c p_ic = y_i]
* NLL       = -mean_i log p_{i, y_i}                       (nats)
* Brier     = mean_i sum_c (p_ic - e_{y_i, c})²            (sum over classes; in [0, 2])
* ECE       = sum_b (n_b / n) |acc_b - conf_b|             (top-label confidence max_c p_ic, ``bins`` equal-width
  bins (k/bins, (k+1)/bins] of [0, 1], L1)
* entropy   = -sum_c p_ic log p_ic                         (per input, nats)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "log_probs_from_logits",
    "bma_log_probs",
    "accuracy",
    "nll",
    "brier",
    "Reliability",
    "reliability",
    "ece",
    "entropy",
    "METRICS",
    "score_all",
]


def log_probs_from_logits(logits: Tensor) -> Tensor:
    """``log_softmax`` over the class dim: ``[..., n, C] -> [..., n, C]``."""
    return torch.log_softmax(logits, dim=-1)


def bma_log_probs(log_probs: Tensor, dim: int = 0) -> Tensor:
    """Log of the averaged probabilities over members ``dim``: ``log (1/M) sum_m p_m`` (stable, via logsumexp)."""
    return torch.logsumexp(log_probs, dim=dim) - math.log(log_probs.shape[dim])


def _labels(log_probs: Tensor, y: Tensor) -> Tensor:
    if y.shape[-1] != log_probs.shape[-2]:
        raise ValueError(f"labels have {y.shape[-1]} entries but the predictions cover {log_probs.shape[-2]} inputs")
    return y.to(log_probs.device).expand(log_probs.shape[:-1])


def accuracy(log_probs: Tensor, y: Tensor) -> Tensor:
    """Fraction of inputs whose argmax class is the label → ``[...]``."""
    return (log_probs.argmax(-1) == _labels(log_probs, y)).to(log_probs.dtype).mean(-1)


def nll(log_probs: Tensor, y: Tensor) -> Tensor:
    """Mean negative log-likelihood of the labels (nats) → ``[...]``."""
    return -log_probs.gather(-1, _labels(log_probs, y).unsqueeze(-1)).squeeze(-1).mean(-1)


def brier(log_probs: Tensor, y: Tensor) -> Tensor:
    """Mean over inputs of ``sum_c (p_c - onehot_c)²`` → ``[...]``."""
    p = log_probs.exp()
    onehot = torch.nn.functional.one_hot(_labels(log_probs, y), p.shape[-1]).to(p.dtype)
    return (p - onehot).square().sum(-1).mean(-1)


@dataclass
class Reliability:
    """Per-bin sums of a reliability diagram, leading dims ``[...]`` then ``[bins]``.

    ``count`` inputs whose top-label confidence falls in the bin, ``correct`` how many of them are right,
    ``confidence`` the sum of their confidences.  Sums (not means) so that diagrams of many networks pool by
    adding."""

    count: Tensor
    correct: Tensor
    confidence: Tensor

    @property
    def edges(self) -> Tensor:
        """``[bins + 1]`` bin edges ``0, 1/bins, ..., 1``."""
        return torch.linspace(0.0, 1.0, self.count.shape[-1] + 1)

    def ece(self) -> Tensor:
        """``sum_b |correct_b - confidence_b| / n`` = ``sum_b (n_b/n) |acc_b - conf_b|`` → ``[...]``."""
        return (self.correct - self.confidence).abs().sum(-1) / self.count.sum(-1)


def reliability(log_probs: Tensor, y: Tensor, bins: int = 15) -> Reliability:
    """Top-label reliability bins of ``log_probs [..., n, C]``: bin ``k`` holds confidences in ``(k/bins, (k+1)/bins]``."""
    conf, pred = log_probs.exp().max(-1)
    correct = (pred == _labels(log_probs, y)).to(conf.dtype)
    index = (torch.ceil(conf * bins).long() - 1).clamp(0, bins - 1)
    zeros = conf.new_zeros((*conf.shape[:-1], bins))
    return Reliability(
        count=zeros.scatter_add(-1, index, torch.ones_like(conf)),
        correct=zeros.scatter_add(-1, index, correct),
        confidence=zeros.scatter_add(-1, index, conf),
    )


def ece(log_probs: Tensor, y: Tensor, bins: int = 15) -> Tensor:
    """Expected calibration error (``bins`` equal-width bins, L1, top label) → ``[...]``."""
    return reliability(log_probs, y, bins).ece()


def entropy(log_probs: Tensor) -> Tensor:
    """Predictive entropy per input (nats): ``[..., n, C] -> [..., n]``."""
    return -torch.special.xlogy(log_probs.exp(), log_probs.exp()).sum(-1)


METRICS = ("accuracy", "nll", "brier", "ece")


def score_all(log_probs: Tensor, y: Tensor, bins: int = 15) -> dict[str, Tensor]:
    """``{accuracy, nll, brier, ece, entropy}`` each ``[...]`` (entropy averaged over inputs)."""
    return {
        "accuracy": accuracy(log_probs, y),
        "nll": nll(log_probs, y),
        "brier": brier(log_probs, y),
        "ece": ece(log_probs, y, bins),
        "entropy": entropy(log_probs).mean(-1),
    }

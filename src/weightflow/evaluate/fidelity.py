"""Fidelity of a source of networks to a reference posterior (HMC): do their Bayesian model averages agree?

A source's predictive is its BMA ``p̄(c | x_i) = (1/M) Σ_m p_m(c | x_i)``
(:func:`weightflow.evaluate.metrics.bma_log_probs`); the reference's ``q̄`` likewise.  On ``N`` inputs:

* agreement        = (1/N) Σ_i [argmax_c p̄(c | x_i) = argmax_c q̄(c | x_i)]        (1 = same top-1 class everywhere)
* total variation  = (1/N) Σ_i ½ Σ_c |p̄(c | x_i) − q̄(c | x_i)|                    (0 = same predictive; ≤ 1)

plus the usual accuracy, NLL and ECE of the source's BMA (:mod:`weightflow.evaluate.metrics`).  Ties in the argmax
go to the lowest class index on both sides (``torch.argmax``).  All functions take log-probabilities.

The cost of a source (:func:`weightflow.runner.benchmark_seconds`) is read from the Snakemake benchmark files of
the jobs that made it.
"""

from __future__ import annotations

from torch import Tensor

from weightflow.evaluate.metrics import accuracy, bma_log_probs, ece, nll

__all__ = ["top1_agreement", "total_variation", "fidelity_scores", "FIDELITY_METRICS"]

FIDELITY_METRICS = ("agreement", "tv", "accuracy", "nll", "ece")


def _check(a: Tensor, b: Tensor) -> None:
    if a.shape[-2:] != b.shape[-2:]:
        raise ValueError(f"predictives cover different inputs or classes: {list(a.shape)} vs {list(b.shape)}")


def top1_agreement(log_probs: Tensor, reference: Tensor) -> Tensor:
    """Fraction of inputs where two predictives ``[..., N, C]`` have the same top-1 class → ``[...]``."""
    _check(log_probs, reference)
    return (log_probs.argmax(-1) == reference.argmax(-1)).to(log_probs.dtype).mean(-1)


def total_variation(log_probs: Tensor, reference: Tensor) -> Tensor:
    """Per-input total variation ``½ Σ_c |p_c − q_c|`` of two predictives ``[..., N, C]`` → ``[..., N]``."""
    _check(log_probs, reference)
    return 0.5 * (log_probs.exp() - reference.exp()).abs().sum(-1)


def fidelity_scores(log_probs: Tensor, reference_log_probs: Tensor, y: Tensor, *, bins: int = 15) -> dict[str, float]:
    """Fidelity of a source (``log_probs [M, N, C]``, M networks) to a reference (``[M', N, C]``) on labels ``y [N]``:
    ``agreement`` and mean ``tv`` of the two BMAs, and ``accuracy``, ``nll``, ``ece`` of the source's BMA."""
    _check(log_probs, reference_log_probs)
    source, ref = bma_log_probs(log_probs.double()), bma_log_probs(reference_log_probs.double())
    return {
        "agreement": float(top1_agreement(source, ref)),
        "tv": float(total_variation(source, ref).mean()),
        "accuracy": float(accuracy(source, y)),
        "nll": float(nll(source, y)),
        "ece": float(ece(source, y, bins)),
    }


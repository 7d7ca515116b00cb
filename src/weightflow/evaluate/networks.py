"""Evaluate one set of networks (an ensemble, a flow's samples, posterior draws) on one data split.

:func:`evaluate_networks` scores every network and the BMA predictive, batched over networks:

* per network: accuracy, NLL, Brier, ECE, mean predictive entropy;
* BMA curves (:func:`weightflow.evaluate.bma.bma_curve`);
* reliability diagrams pooled over single networks and of the BMA of ``max(bma_sizes)`` networks;
* diversity (pairwise JS divergence, disagreement) of ``diversity_networks`` networks;
* OOD AUROC of the entropy score, for every network and for the BMA, when OOD inputs are given;
* the same probability-based metrics after temperature scaling (suffix ``_cal``: NLL, Brier, ECE, BMA NLL /
  Brier / ECE, JS diversity) with one temperature per source fitted on the validation split
  (:mod:`weightflow.evaluate.temperature`), so that sources whose logits live on different scales (raw networks,
  networks in the thesis' canonical form) can be compared.  Accuracy and disagreement do not depend on it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import pandas as pd
import torch
from torch import Tensor

from weightflow.evaluate.bma import bma_curve, random_subsets
from weightflow.evaluate.diversity import diversity
from weightflow.evaluate.metrics import (
    Reliability,
    accuracy,
    bma_log_probs,
    entropy,
    log_probs_from_logits,
    nll,
    reliability,
    score_all,
)
from weightflow.evaluate.ood import auroc
from weightflow.evaluate.temperature import fit_temperature
from weightflow.weights import MLPLayout, as_layout, forward

__all__ = ["EvaluationSettings", "Evaluation", "logits_of", "log_probs_of", "collapsed_fraction", "evaluate_networks",
           "sampler_summary"]

log = logging.getLogger(__name__)

# Summary entries that get a temperature-calibrated twin (suffix _cal).
CALIBRATED = ("nll_mean", "nll_std", "brier_mean", "ece_mean", "bma_nll", "bma_brier", "bma_ece", "diversity_js")


@dataclass
class EvaluationSettings:
    """The ``evaluation`` config section's fields used here (defaults as in config/schema.yaml)."""

    ece_bins: int = 15
    bma_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32, 64)
    bma_subsets: int = 20
    diversity_networks: int = 64

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "EvaluationSettings":
        """From an experiment config's ``evaluation`` section."""
        section = cfg["evaluation"]
        return cls(**{k: section[k] for k in ("ece_bins", "bma_sizes", "bma_subsets", "diversity_networks")})


@dataclass
class Evaluation:
    """Results of :func:`evaluate_networks`.

    ``networks``: one row per network (metrics; ``*_cal`` after temperature scaling); ``bma``: the BMA curve
    (``n``, ``{metric}_mean/_std``); ``reliability``: rows ``kind`` (single | bma), ``bin``, ``lower``, ``upper``,
    ``count``, ``accuracy``, ``confidence``; ``summary``: scalars (means/stds over networks; ``bma_*``: the curve's
    mean at the largest size ``bma_n``; diversity; OOD; ``temperature`` and the ``*_cal`` twins)."""

    networks: pd.DataFrame
    bma: pd.DataFrame
    reliability: pd.DataFrame
    summary: dict[str, float] = field(default_factory=dict)


def logits_of(weights: Tensor, layer_sizes: Sequence[int] | MLPLayout, x: Tensor) -> Tensor:
    """``[M, N, C]`` logits of networks ``weights [M, D]`` on inputs ``x [N, n0]`` (no grad)."""
    with torch.no_grad():
        return forward(weights, layer_sizes, x.to(weights.device))


def log_probs_of(weights: Tensor, layer_sizes: Sequence[int] | MLPLayout, x: Tensor) -> Tensor:
    """``[M, N, C]`` log-probabilities of networks ``weights [M, D]`` on inputs ``x [N, n0]`` (no grad)."""
    return log_probs_from_logits(logits_of(weights, layer_sizes, x))


def collapsed_fraction(log_probs: Tensor) -> float:
    """Fraction of networks (``log_probs [M, N, C]``) that predict one class for every input (e.g. dead ReLU
    networks, or samples between two permutation modes of an unaligned ensemble)."""
    pred = log_probs.argmax(-1)
    return (pred == pred[:, :1]).all(-1).double().mean().item()


def _reliability_frame(kind: str, rel: Reliability) -> pd.DataFrame:
    edges = rel.edges.numpy()
    count = rel.count.cpu().double()
    return pd.DataFrame({
        "kind": kind,
        "bin": range(len(count)),
        "lower": edges[:-1],
        "upper": edges[1:],
        "count": count.numpy(),
        "accuracy": (rel.correct.cpu().double() / count).numpy(),
        "confidence": (rel.confidence.cpu().double() / count).numpy(),
    })


def _moments(scores: dict[str, Tensor]) -> dict[str, float]:
    out = {}
    for name, values in scores.items():
        out[f"{name}_mean"] = values.double().mean().item()
        out[f"{name}_std"] = values.double().std(unbiased=False).item()
    return out


def _bma_summary(curve: pd.DataFrame, top: int) -> dict[str, float]:
    at_top = curve.set_index("n").loc[top]
    out = {f"bma_{k}": at_top[f"{k}_mean"] for k in ("accuracy", "nll", "brier", "ece", "entropy")}
    out.update({f"bma_{k}_std": at_top[f"{k}_std"] for k in ("accuracy", "nll")})
    return out


def _ood(lp: Tensor, lp_ood: Tensor, bma_index: Tensor, bma_lp: Tensor) -> tuple[Tensor, dict[str, float]]:
    per_network = auroc(entropy(lp), entropy(lp_ood)).float()
    bma_ood = bma_log_probs(lp_ood[bma_index], dim=0)
    return per_network, {"ood_auroc_mean": per_network.double().mean().item(),
                         "bma_ood_auroc": auroc(entropy(bma_lp), entropy(bma_ood)).item(),
                         "bma_entropy_ood": entropy(bma_ood).mean().item()}


def evaluate_networks(
    weights: Tensor,
    layer_sizes: Sequence[int] | MLPLayout,
    x: Tensor,
    y: Tensor,
    settings: EvaluationSettings,
    *,
    generator: torch.Generator,
    x_ood: Tensor | None = None,
    val: tuple[Tensor, Tensor] | None = None,
) -> Evaluation:
    """Score networks ``weights [M, D]`` on ``(x [N, n0], y [N])``; see the module docstring.

    ``val = (x_val, y_val)`` fits the temperature of the ``*_cal`` metrics (``T = 1`` without it).
    ``generator`` drives every random choice (BMA subsets, the diversity subset), so results are reproducible;
    the calibrated BMA curve uses the same subsets as the raw one."""
    layout = as_layout(layer_sizes)
    num = weights.shape[0]
    if num < 1:
        raise ValueError("no networks to evaluate")
    y = y.to(weights.device)
    logits = logits_of(weights, layout, x)
    temperature = fit_temperature(logits_of(weights, layout, val[0]), val[1]) if val is not None else 1.0
    lp, lp_cal = log_probs_from_logits(logits), log_probs_from_logits(logits / temperature)
    scores = {k: v.cpu() for k, v in score_all(lp, y, settings.ece_bins).items()}
    calibrated = {k: v.cpu() for k, v in score_all(lp_cal, y, settings.ece_bins).items() if k in ("nll", "brier", "ece")}

    state = generator.get_state()
    curve = bma_curve(lp, y, list(settings.bma_sizes), subsets=settings.bma_subsets, generator=generator,
                      bins=settings.ece_bins)
    after = generator.get_state()
    generator.set_state(state)
    curve_cal = bma_curve(lp_cal, y, list(settings.bma_sizes), subsets=settings.bma_subsets, generator=generator,
                          bins=settings.ece_bins)
    generator.set_state(after)
    top = min(num, max(settings.bma_sizes))
    summary: dict[str, float] = {"num_networks": num, "bma_n": top, "temperature": temperature,
                                 **_moments(scores), **_bma_summary(curve, top)}
    summary.update({f"{k}_cal": v for k, v in _bma_summary(curve_cal, top).items() if k in CALIBRATED})
    summary.update({f"{k}_cal": v for k, v in _moments(calibrated).items() if k in CALIBRATED})
    # one BMA of `top` networks for the reliability diagram and OOD detection
    bma_index = random_subsets(num, top, 1, generator=generator)[0].to(weights.device)
    bma_lp = bma_log_probs(lp[bma_index], dim=0)
    if x_ood is not None:
        scores["ood_auroc"], ood_summary = _ood(lp, log_probs_of(weights, layout, x_ood), bma_index, bma_lp)
        summary.update(ood_summary)

    div_index = random_subsets(num, min(num, settings.diversity_networks), 1, generator=generator)[0].to(weights.device)
    summary.update({f"diversity_{k}": v for k, v in diversity(lp[div_index]).items()})
    summary["diversity_js_cal"] = diversity(lp_cal[div_index])["js"]
    summary["diversity_n"] = len(div_index)

    single = reliability(lp, y, settings.ece_bins)
    pooled = Reliability(single.count.sum(0), single.correct.sum(0), single.confidence.sum(0))
    rel = pd.concat([_reliability_frame("single", pooled),
                     _reliability_frame("bma", reliability(bma_lp, y, settings.ece_bins))], ignore_index=True)
    networks = pd.DataFrame({**{k: v.numpy() for k, v in scores.items()},
                             **{f"{k}_cal": v.numpy() for k, v in calibrated.items()}})
    log.info("%d networks: accuracy %.4f ± %.4f, NLL %.4f, BMA(n=%d) accuracy %.4f NLL %.4f, JS %.4f; "
             "temperature %.3f: NLL %.4f, BMA NLL %.4f", num, summary["accuracy_mean"], summary["accuracy_std"],
             summary["nll_mean"], top, summary["bma_accuracy"], summary["bma_nll"], summary["diversity_js"],
             temperature, summary["nll_mean_cal"], summary["bma_nll_cal"])
    return Evaluation(networks=networks, bma=curve, reliability=rel, summary=summary)


def sampler_summary(
    weights: Tensor, layer_sizes: Sequence[int] | MLPLayout, x: Tensor, y: Tensor, *, diversity_networks: int,
    generator: torch.Generator,
) -> dict[str, float]:
    """Quality of one sampler's networks ``weights [M, D]`` on ``(x [N, n0], y [N])``, for comparing samplers.

    ``accuracy``/``nll`` mean and std over networks; ``collapsed``: the fraction of networks that predict one
    class for every input (dead ReLU networks, e.g. samples between two permutation modes of an unaligned
    ensemble); ``disagreement``: mean pairwise disagreement of a seeded subset of ``diversity_networks``.
    """
    y = y.to(weights.device)
    lp = log_probs_of(weights, layer_sizes, x)
    acc, loss = accuracy(lp, y).double(), nll(lp, y).double()
    collapsed = collapsed_fraction(lp)
    num = weights.shape[0]
    subset = random_subsets(num, min(num, diversity_networks), 1, generator=generator)[0].to(weights.device)
    return {
        "networks": num,
        "accuracy": acc.mean().item(),
        "accuracy_std": acc.std(unbiased=False).item(),
        "nll": loss.mean().item(),
        "nll_std": loss.std(unbiased=False).item(),
        "collapsed": collapsed,
        "disagreement": diversity(lp[subset])["disagreement"],
    }

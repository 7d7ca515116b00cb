"""Evaluate one set of networks (an ensemble, a flow's samples, SGLD draws) on one data split.

:func:`evaluate_networks` scores every network and the BMA predictive, batched over networks:

* per network: accuracy, NLL, Brier, ECE, mean predictive entropy — and the NLL after mapping the network to
  the canonical last-layer scale ``||W_L||_F = R`` (``canonical.last_radius``, default ``sqrt(C)``;
  :func:`weightflow.canonical.canonicalize`; NLL depends on the
  logit scale, so raw NLLs of canonical and raw networks are not comparable — pitfall 9);
* BMA curves (:func:`weightflow.evaluate.bma.bma_curve`);
* reliability diagrams pooled over single networks and of the BMA of ``max(bma_sizes)`` networks;
* diversity (pairwise JS divergence, disagreement) of ``diversity_networks`` networks;
* OOD AUROC of the entropy score, for every network and for the BMA, when OOD inputs are given.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import pandas as pd
import torch
from torch import Tensor

from weightflow.canonical import canonicalize
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
from weightflow.weights import MLPLayout, as_layout, forward

__all__ = ["EvaluationSettings", "Evaluation", "log_probs_of", "evaluate_networks", "sampler_summary"]

log = logging.getLogger(__name__)


@dataclass
class EvaluationSettings:
    """The ``evaluation`` config section's fields used here (defaults as in config/schema.yaml)."""

    ece_bins: int = 15
    bma_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32, 64)
    bma_subsets: int = 20
    diversity_networks: int = 64
    last_radius: float | None = None  # canonical ||W_L||_F for nll_canonical (None = sqrt(C))

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "EvaluationSettings":
        """From an experiment config: its ``evaluation`` section and ``canonical.last_radius``."""
        section = cfg["evaluation"]
        return cls(**{k: section[k] for k in ("ece_bins", "bma_sizes", "bma_subsets", "diversity_networks")},
                   last_radius=cfg.get("canonical", {}).get("last_radius"))


@dataclass
class Evaluation:
    """Results of :func:`evaluate_networks`.

    ``networks``: one row per network (metrics); ``bma``: the BMA curve (``n``, ``{metric}_mean/_std``);
    ``reliability``: rows ``kind`` (single | bma), ``bin``, ``lower``, ``upper``, ``count``, ``accuracy``,
    ``confidence``; ``summary``: scalars (means/stds over networks; ``bma_*``: the curve's mean at the largest size ``bma_n``;
    diversity; OOD)."""

    networks: pd.DataFrame
    bma: pd.DataFrame
    reliability: pd.DataFrame
    summary: dict[str, float] = field(default_factory=dict)


def log_probs_of(weights: Tensor, layer_sizes: Sequence[int] | MLPLayout, x: Tensor) -> Tensor:
    """``[M, N, C]`` log-probabilities of networks ``weights [M, D]`` on inputs ``x [N, n0]`` (no grad)."""
    with torch.no_grad():
        return log_probs_from_logits(forward(weights, layer_sizes, x.to(weights.device)))


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


def evaluate_networks(
    weights: Tensor,
    layer_sizes: Sequence[int] | MLPLayout,
    x: Tensor,
    y: Tensor,
    settings: EvaluationSettings,
    *,
    generator: torch.Generator,
    x_ood: Tensor | None = None,
) -> Evaluation:
    """Score networks ``weights [M, D]`` on ``(x [N, n0], y [N])``; see the module docstring.

    ``generator`` drives every random choice (BMA subsets, the diversity subset), so results are reproducible."""
    layout = as_layout(layer_sizes)
    num = weights.shape[0]
    if num < 1:
        raise ValueError("no networks to evaluate")
    y = y.to(weights.device)
    lp = log_probs_of(weights, layout, x)
    scores = {k: v.cpu() for k, v in score_all(lp, y, settings.ece_bins).items()}
    with torch.no_grad():  # the same function on the canonical scale ||W_L||_F = R, hidden scales pushed in
        canonical = canonicalize(weights, layout, settings.last_radius)[0]
    scores["nll_canonical"] = nll(log_probs_of(canonical, layout, x), y).cpu()

    curve = bma_curve(lp, y, list(settings.bma_sizes), subsets=settings.bma_subsets, generator=generator,
                      bins=settings.ece_bins)
    top = min(num, max(settings.bma_sizes))
    summary: dict[str, float] = {"num_networks": num, "bma_n": top}
    for name, values in scores.items():
        summary[f"{name}_mean"] = values.double().mean().item()
        summary[f"{name}_std"] = values.double().std(unbiased=False).item()
    at_top = curve.set_index("n").loc[top]
    summary.update({f"bma_{k}": at_top[f"{k}_mean"] for k in ("accuracy", "nll", "brier", "ece", "entropy")})
    summary.update({f"bma_{k}_std": at_top[f"{k}_std"] for k in ("accuracy", "nll")})
    # one BMA of `top` networks for the reliability diagram and OOD detection
    bma_index = random_subsets(num, top, 1, generator=generator)[0].to(weights.device)
    bma_lp = bma_log_probs(lp[bma_index], dim=0)

    if x_ood is not None:
        lp_ood = log_probs_of(weights, layout, x_ood)
        scores["ood_auroc"] = auroc(entropy(lp), entropy(lp_ood)).float()
        bma_ood = bma_log_probs(lp_ood[bma_index], dim=0)
        summary["ood_auroc_mean"] = scores["ood_auroc"].double().mean().item()
        summary["bma_ood_auroc"] = auroc(entropy(bma_lp), entropy(bma_ood)).item()
        summary["bma_entropy_ood"] = entropy(bma_ood).mean().item()

    div_index = random_subsets(num, min(num, settings.diversity_networks), 1, generator=generator)[0]
    summary.update({f"diversity_{k}": v for k, v in diversity(lp[div_index.to(weights.device)]).items()})
    summary["diversity_n"] = len(div_index)

    single = reliability(lp, y, settings.ece_bins)
    pooled = Reliability(single.count.sum(0), single.correct.sum(0), single.confidence.sum(0))
    rel = pd.concat([_reliability_frame("single", pooled),
                     _reliability_frame("bma", reliability(bma_lp, y, settings.ece_bins))], ignore_index=True)
    networks = pd.DataFrame({k: v.numpy() for k, v in scores.items()})
    log.info("%d networks: accuracy %.4f ± %.4f, NLL %.4f, BMA(n=%d) accuracy %.4f NLL %.4f, JS %.4f", num,
             summary["accuracy_mean"], summary["accuracy_std"], summary["nll_mean"], top, summary["bma_accuracy"],
             summary["bma_nll"], summary["diversity_js"])
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
    pred = lp.argmax(-1)
    collapsed = (pred == pred[:, :1]).all(-1).double().mean().item()
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

"""Bayesian model averaging curves: metrics of the average of ``n`` networks as a function of ``n``.

For each size ``n`` we draw ``subsets`` random subsets of ``n`` distinct networks (seeded), average their
probabilities (:func:`weightflow.evaluate.metrics.bma_log_probs`) and score the averaged predictive; the curve
is the mean and std of each metric over the subsets.  All subsets of one size are scored at once
(``[S, n, N, C]`` gathered and reduced over ``n``), in chunks of subsets that bound the memory.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import Tensor

from weightflow.evaluate.metrics import METRICS, bma_log_probs, score_all

__all__ = ["random_subsets", "bma_curve"]

# Upper bound on gathered elements per chunk (S_chunk * n * N * C), ~256 MB in float32.
CHUNK_ELEMENTS = 1 << 26


def random_subsets(num: int, size: int, subsets: int, *, generator: torch.Generator) -> Tensor:
    """``[subsets, size]`` indices: each row ``size`` distinct draws from ``range(num)`` (uniform, seeded)."""
    if not 1 <= size <= num:
        raise ValueError(f"subset size {size} must be between 1 and the number of networks {num}")
    return torch.rand(subsets, num, generator=generator).argsort(dim=1)[:, :size]


def bma_curve(
    log_probs: Tensor,
    y: Tensor,
    sizes: list[int],
    *,
    subsets: int,
    generator: torch.Generator,
    bins: int = 15,
) -> pd.DataFrame:
    """BMA metrics vs ensemble size.

    Args:
        log_probs: ``[M, N, C]`` per-network log-probabilities on ``N`` inputs.
        y: ``[N]`` labels.
        sizes: ensemble sizes ``n``; sizes above ``M`` are replaced by ``M`` itself (all networks; one distinct
            subset, std 0).

    Returns:
        DataFrame with columns ``n``, ``{metric}_mean``, ``{metric}_std`` for accuracy, nll, brier, ece, entropy.
    """
    num, rows = log_probs.shape[0], []
    per_subset = log_probs[0].numel()
    for size in sorted({min(int(s), num) for s in sizes}):
        draws = 1 if size == num else subsets
        index = random_subsets(num, size, draws, generator=generator).to(log_probs.device)
        chunk = max(1, CHUNK_ELEMENTS // (size * per_subset))
        scores = [score_all(bma_log_probs(log_probs[part], dim=1), y, bins) for part in index.split(chunk)]
        row = {"n": size}
        for name in (*METRICS, "entropy"):
            values = torch.cat([s[name] for s in scores]).double()
            row[f"{name}_mean"] = values.mean().item()
            row[f"{name}_std"] = values.std(unbiased=False).item()
        rows.append(row)
    return pd.DataFrame(rows)

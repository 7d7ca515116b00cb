"""Out-of-distribution detection: OOD input sets and the AUROC of an uncertainty score.

The score is the predictive entropy (higher = more likely OOD).  AUROC = P(score_ood > score_in) +
P(tie)/2, which is the Mann–Whitney U statistic of the OOD scores divided by ``n_ood * n_in``
(:func:`scipy.stats.mannwhitneyu`, batched over leading dims).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from weightflow.data import Dataset, load_dataset

__all__ = ["NOISE_SOURCES", "ood_inputs", "auroc"]

NOISE_SOURCES = ("gaussian_noise", "uniform_noise")


def ood_inputs(source: str, data: Dataset, *, num: int, generator: torch.Generator, root: str | None = None) -> Tensor:
    """``[num', n0]`` OOD inputs for a model trained on ``data``.

    ``gaussian_noise``: N(0, 1) per feature (the features are standardized, so this matches their scale);
    ``uniform_noise``: U(-√3, √3) per feature (mean 0, variance 1); any other name: the test split of that dataset
    (same number of features required; e.g. ``mnist`` for a Fashion-MNIST model), the first ``num`` inputs.
    """
    n0 = data.num_features
    if source == "gaussian_noise":
        return torch.randn(num, n0, generator=generator)
    if source == "uniform_noise":
        return (torch.rand(num, n0, generator=generator) * 2.0 - 1.0) * 3.0 ** 0.5
    other = load_dataset(source, root=root)
    if other.num_features != n0:
        raise ValueError(f"evaluation.ood: dataset {source!r} has {other.num_features} features, the model takes {n0}")
    return other.x_test[:num]


def auroc(score_in: Tensor, score_out: Tensor) -> Tensor:
    """AUROC of separating OOD (positive) from in-distribution inputs by ``score``: ``[..., n_in]``, ``[..., n_out]`` → ``[...]``."""
    from scipy.stats import mannwhitneyu  # imported on use: scipy.stats loads slowly and few experiments need OOD

    u = mannwhitneyu(score_out.detach().cpu().double().numpy(), score_in.detach().cpu().double().numpy(),
                     axis=-1, method="asymptotic").statistic
    return torch.from_numpy(np.asarray(u / (score_in.shape[-1] * score_out.shape[-1])))

"""Sample quality vs the number of integration steps, with and without loss guidance.

For each ``steps`` value and guidance strength ``λ`` (0 = unguided) we draw ``num`` networks from a trained flow
(:func:`weightflow.flow.sampling.sample`, Riemannian Euler on manifolds) with a generator seeded by
``(seed, 'evaluation', 'steps', steps, λ)`` and score them on the evaluation split: accuracy, NLL as sampled and
NLL on the canonical last-layer scale (mean and std over networks).
"""

from __future__ import annotations

import logging
from typing import Sequence

import pandas as pd
import torch
from torch import Tensor

from weightflow.canonical import canonicalize
from weightflow.evaluate.metrics import accuracy, nll
from weightflow.evaluate.networks import log_probs_of
from weightflow.flow.model_file import FlowModel
from weightflow.flow.sampling import sample
from weightflow.utils import generator, progress

__all__ = ["quality_vs_steps"]

log = logging.getLogger(__name__)


def quality_vs_steps(
    flow: FlowModel,
    x: Tensor,
    y: Tensor,
    steps: Sequence[int],
    *,
    num: int,
    guidance: Sequence[float],
    guidance_data: tuple[Tensor, Tensor],
    seed: int,
    noise: float = 0.0,
    noise_range: tuple[float, float] = (0.0, 1.0),
    last_radius: float | None = None,
) -> pd.DataFrame:
    """Rows ``steps``, ``guidance``, ``{accuracy, nll, nll_canonical}_{mean, std}`` over ``num`` sampled networks
    (``nll_canonical``: on the last-layer scale ``||W_L||_F = last_radius``, None = sqrt(C))."""
    rows = []
    grid = [(int(s), float(g)) for g in guidance for s in steps]
    y = y.to(flow.device)
    for num_steps, lam in progress(grid, desc="quality vs steps", unit="setting"):
        nets = sample(flow, num, method="euler", steps=num_steps, noise=noise, noise_range=noise_range,
                      guidance=lam, guidance_data=guidance_data if lam > 0 else None,
                      generator=generator(seed, "evaluation", "steps", num_steps, lam))
        with torch.no_grad():
            canonical = canonicalize(nets, flow.layout, last_radius)[0]
        lp = log_probs_of(nets, flow.layout, x)
        scores = {"accuracy": accuracy(lp, y), "nll": nll(lp, y),
                  "nll_canonical": nll(log_probs_of(canonical, flow.layout, x), y)}
        row = {"steps": num_steps, "guidance": lam}
        for name, values in scores.items():
            row[f"{name}_mean"] = values.double().mean().item()
            row[f"{name}_std"] = values.double().std(unbiased=False).item()
        log.info("steps %d, guidance %g: accuracy %.4f ± %.4f, NLL %.4f", num_steps, lam, row["accuracy_mean"],
                 row["accuracy_std"], row["nll_mean"])
        rows.append(row)
    return pd.DataFrame(rows)

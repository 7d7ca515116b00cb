"""Sample quality vs the number of integration steps, with and without loss guidance.

For each ``steps`` value and guidance strength ``λ`` (0 = unguided) we draw ``num`` networks from a trained flow
(:func:`weightflow.flow.sampling.sample`, Riemannian Euler on manifolds) and score them on the evaluation split:
accuracy and NLL (mean and std over networks).  Every guided setting comes with its guidance-alone control
(``control = True``: the same prior draws and guidance minibatches, the flow's velocity replaced by zero), so the
figure shows what the flow adds to guidance.  All settings of one ``steps`` value share the prior draws
(generator seeded by ``(seed, 'evaluation', 'steps', steps)``).
"""

from __future__ import annotations

import logging
from typing import Sequence

import pandas as pd
from torch import Tensor

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
) -> pd.DataFrame:
    """Rows ``steps``, ``guidance``, ``control``, ``{accuracy, nll}_{mean, std}`` over ``num`` sampled networks."""
    rows = []
    grid = [(int(s), float(g), control) for g in guidance for control in ((False, True) if g > 0 else (False,))
            for s in steps]
    y = y.to(flow.device)
    for num_steps, lam, control in progress(grid, desc="quality vs steps", unit="setting"):
        nets = sample(flow, num, method="euler", steps=num_steps, noise=noise, noise_range=noise_range,
                      guidance=lam, guidance_data=guidance_data if lam > 0 else None, zero_velocity=control,
                      generator=generator(seed, "evaluation", "steps", num_steps))
        lp = log_probs_of(nets, flow.layout, x)
        row = {"steps": num_steps, "guidance": lam, "control": control}
        for name, values in {"accuracy": accuracy(lp, y), "nll": nll(lp, y)}.items():
            row[f"{name}_mean"] = values.double().mean().item()
            row[f"{name}_std"] = values.double().std(unbiased=False).item()
        log.info("steps %d, guidance %g%s: accuracy %.4f ± %.4f, NLL %.4f", num_steps, lam,
                 " (guidance only)" if control else "", row["accuracy_mean"], row["accuracy_std"], row["nll_mean"])
        rows.append(row)
    return pd.DataFrame(rows)

"""Choosing each flow's sampler (and guidance strength) on the validation split — never on the test split.

Candidates (:func:`sampler_candidates`), from the ``sampling`` config section:

* every configured sampler without guidance (``euler``, ``stochastic``, ...): candidates for the flow's **own**
  samples, the main rows of every table and figure;
* every configured sampler with guidance (``guidance > 0``), once per strength ``λ`` of ``sampling.guidance_grid``
  (or at its own ``guidance`` when the grid is empty), each with its **guidance-alone control**: the same
  sampler, prior draws and guidance minibatches with the flow's velocity replaced by zero
  (:func:`weightflow.flow.sampling.sample` ``zero_velocity=True``).

Every candidate is drawn from the same prior draws (one generator stream per flow) and scored on the
validation split: mean accuracy, mean NLL and the fraction of collapsed networks (one class for every input).
:func:`select` then picks, by the declared criterion (``sampling.select``: ``nll`` — lowest mean NLL — or
``accuracy`` — highest mean accuracy; ties go to the first candidate in config order):

* ``main``: the best unguided candidate, or the sampler pinned by ``sampling.main``;
* ``guided``: the best guided candidate (sampler and ``λ``), and ``control``: its control.

The function that scores receives only the validation split; the stage hands it nothing else.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import torch
from torch import Tensor

from weightflow.evaluate.metrics import accuracy, nll
from weightflow.evaluate.networks import collapsed_fraction, log_probs_of
from weightflow.data import Dataset
from weightflow.flow.model_file import FlowModel
from weightflow.flow.samples import save_candidates
from weightflow.flow.sampling import sample
from weightflow.names import SAMPLE_KINDS
from weightflow.weights import MLPLayout

__all__ = ["Candidate", "CRITERIA", "sampler_candidates", "draw_candidates", "score_networks", "select",
           "select_and_save"]

log = logging.getLogger(__name__)

# criterion name -> (score column, sign: +1 = larger is better)
CRITERIA: dict[str, tuple[str, float]] = {"nll": ("nll", -1.0), "accuracy": ("accuracy", 1.0)}


@dataclass(frozen=True)
class Candidate:
    """One way to sample a flow: a configured sampler, at guidance strength ``guidance``, with or without the
    flow's velocity (``control``)."""

    name: str
    sampler: str
    options: dict[str, Any] = field(hash=False)
    guidance: float = 0.0
    control: bool = False

    @property
    def guided(self) -> bool:
        return self.guidance > 0 and not self.control


def _lambda_tag(value: float) -> str:
    return f"{value:g}".replace(".", "p").replace("-", "m").replace("+", "")


def sampler_candidates(sampling: Mapping[str, Any]) -> list[Candidate]:
    """The candidates of the ``sampling`` config section, in config order (module docstring)."""
    out: list[Candidate] = []
    grid = [float(g) for g in sampling.get("guidance_grid") or []]
    for name, opts in sampling["samplers"].items():
        options = dict(opts)
        if "noise_range" in options:
            options["noise_range"] = tuple(options["noise_range"])
        strength = float(options.pop("guidance", 0.0))
        if strength <= 0:
            out.append(Candidate(name, name, options))
            continue
        for lam in grid or [strength]:
            tag = f"{name}_l{_lambda_tag(lam)}"
            out.append(Candidate(tag, name, options, guidance=lam))
            out.append(Candidate(f"{tag}_control", name, options, guidance=lam, control=True))
    return out


def draw_candidates(
    flow: FlowModel,
    candidates: Sequence[Candidate],
    num: int,
    *,
    seed_generator,
    guidance_data: tuple[Tensor, Tensor] | None,
    batch_size: int | None = None,
) -> dict[str, Tensor]:
    """``{candidate name: [num, D]}``: every candidate from a fresh ``seed_generator()`` — the same prior draws
    (and, for a guided candidate and its control, the same guidance minibatches)."""
    out = {}
    for cand in candidates:
        if cand.guidance > 0 and guidance_data is None:
            raise ValueError(f"sampler {cand.sampler!r} uses guidance but the task has no training data")
        out[cand.name] = sample(flow, num, generator=seed_generator(), batch_size=batch_size,
                                guidance=cand.guidance, guidance_data=guidance_data if cand.guidance > 0 else None,
                                zero_velocity=cand.control, **cand.options)
    return out


def score_networks(weights: Tensor, layout: MLPLayout | Sequence[int], x: Tensor, y: Tensor) -> dict[str, float]:
    """Mean accuracy, mean NLL and the collapsed fraction of networks ``[M, D]`` on ``(x, y)``; non-finite
    networks count as NLL = inf (so a diverged sampler is never chosen by NLL)."""
    lp = log_probs_of(weights, layout, x)
    y = y.to(lp.device)
    losses = nll(lp, y).double()
    losses = torch.where(torch.isfinite(losses), losses, torch.full_like(losses, math.inf))
    return {"accuracy": accuracy(lp, y).double().mean().item(), "nll": losses.mean().item(),
            "collapsed": collapsed_fraction(lp)}


def select(scores: pd.DataFrame, criterion: str, pinned_main: str | None = None) -> dict[str, str]:
    """``{'main': candidate, 'guided': candidate, 'control': candidate}`` from the rows of ``scores`` (columns
    ``candidate, sampler, guidance, control`` and the criterion's score column); ``guided``/``control`` only
    when guided candidates exist.  ``pinned_main`` (``sampling.main``) names the unguided sampler to use."""
    if criterion not in CRITERIA:
        raise ValueError(f"sampling.select: unknown criterion {criterion!r}; use one of {sorted(CRITERIA)}")
    column, sign = CRITERIA[criterion]

    def best(rows: pd.DataFrame) -> str:
        values = sign * rows[column].to_numpy(dtype=float)
        values[~(values == values)] = -math.inf  # NaN never wins
        return str(rows["candidate"].iloc[int(values.argmax())])

    unguided = scores[(scores["guidance"] <= 0) & ~scores["control"].astype(bool)]
    guided = scores[(scores["guidance"] > 0) & ~scores["control"].astype(bool)]
    if pinned_main is not None:
        hit = unguided[unguided["sampler"] == pinned_main]
        if hit.empty:
            raise ValueError(f"sampling.main: {pinned_main!r} is not an unguided sampler of sampling.samplers "
                             f"(unguided: {sorted(unguided['sampler'])}); the main rows are the flow's own samples")
        choice = {"main": str(hit["candidate"].iloc[0])}
    elif unguided.empty:
        raise ValueError("sampling.samplers has no sampler without guidance: the flow's own samples need one")
    else:
        choice = {"main": best(unguided)}
    if not guided.empty:
        choice["guided"] = best(guided)
        choice["control"] = choice["guided"] + "_control"
    assert set(choice) <= set(SAMPLE_KINDS)
    return choice


def select_and_save(
    flow: FlowModel,
    flow_id: str,
    sampling: Mapping[str, Any],
    data: Dataset,
    seed_generator: Callable[[], torch.Generator],
    candidates_path: str | Path,
    selection_path: str | Path,
    metadata: dict[str, Any],
) -> dict[str, str]:
    """Draw every candidate of ``sampling`` from ``flow`` (guidance from ``data``'s training split), score each on
    ``data``'s **validation** split, :func:`select` by ``sampling.select.criterion``, and write the candidates file
    and ``selection.csv`` (:mod:`weightflow.flow.samples`).  Returns the choice ``{set: candidate}``."""
    candidates = sampler_candidates(sampling)
    guidance_data = (data.x_train, data.y_train) if data.num_classes > 0 else None
    drawn = draw_candidates(flow, candidates, sampling["num_samples"], guidance_data=guidance_data,
                            batch_size=sampling.get("batch_size"), seed_generator=seed_generator)
    rows = []
    for cand in candidates:
        scores = score_networks(drawn[cand.name], flow.layout, data.x_val, data.y_val) if data.num_classes > 0 \
            else {"accuracy": math.nan, "nll": math.nan, "collapsed": math.nan}
        rows.append({"flow": flow_id, "candidate": cand.name, "sampler": cand.sampler, "guidance": cand.guidance,
                     "control": cand.control, **{f"val_{k}": v for k, v in scores.items()}})
    table = pd.DataFrame(rows)
    criterion = sampling.get("select", {}).get("criterion", "nll")
    choice = select(table.rename(columns=lambda c: c.removeprefix("val_")), criterion, sampling.get("main"))
    chosen_for = {name: kind for kind, name in choice.items()}
    table["criterion"] = criterion
    table["selected"] = [chosen_for.get(name, "") for name in table["candidate"]]
    table.to_csv(selection_path, index=False, float_format="%.6g")
    save_candidates(candidates_path, drawn,
                    [{"name": c.name, "sampler": c.sampler, "options": c.options, "guidance": c.guidance,
                      "control": c.control} for c in candidates],
                    flow.layout.layer_sizes, {**metadata, **flow.describe(), "holdout_runs": flow.holdout_runs})
    log.info("flow %s: selected on the validation split of %s (%s): %s\n%s", flow_id, data.name, criterion, choice,
             table.to_string(index=False))
    return choice

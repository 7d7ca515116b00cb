"""Flow training curves: sample quality against training steps and against wall-clock time.

Each flow's ``train_log.csv`` has one row every ``flow.val_every`` steps: the flow-matching loss on the held-out
runs (``val_loss``), the mean validation-split accuracy of ``flow.val_samples`` networks sampled with
``flow.val_steps`` Euler steps (``sample_acc``) and the seconds since training began (``seconds``).  Vector fields of
very different cost per step (a flat MLP at batch 128, a graph network at batch 16) are compared two ways: at equal
optimization steps and at equal wall time, with each flow's budget — field, steps × batch, seconds — in the legend
and in ``tables/training.csv``.  Only the validation split is read (the training log never sees the test split).
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from weightflow.flow.spec import GEOMETRY_NAMES, FlowSpec
from weightflow.plots.style import color_for, figure, save
from weightflow.runner import StageJob

__all__ = ["plot_training", "training_stage", "training_table"]

LINESTYLES = ("-", "--", ":", "-.")


def training_table(logs: Mapping[str, pd.DataFrame], budgets: Mapping[str, Mapping]) -> pd.DataFrame:
    """One row per flow: its vector field, steps × batch (the networks seen), wall seconds, seconds per step and the
    last logged validation loss and sample accuracy (columns ``final_val_loss``, ``final_sample_acc``), plus the
    best sample accuracy of the log and the step it was reached at."""
    rows = []
    for flow, log in logs.items():
        budget = budgets[flow]
        last = log.iloc[-1]
        scored = log.dropna(subset=["sample_acc"])  # no accuracy for flows over tasks without classes
        best = scored.loc[scored["sample_acc"].idxmax()] if len(scored) else {"sample_acc": float("nan"), "step": -1}
        steps = int(last["step"])
        rows.append({
            "flow": flow, "geometry": FlowSpec.parse(flow).geometry, "model": budget["model"],
            "width": budget["width"], "steps": steps, "batch_size": budget["batch_size"],
            "networks_seen": steps * int(budget["batch_size"]), "seconds": float(last["seconds"]),
            "seconds_per_step": float(last["seconds"]) / max(steps, 1),
            "final_val_loss": float(last["val_loss"]), "final_sample_acc": float(last["sample_acc"]),
            "best_sample_acc": float(best["sample_acc"]), "best_step": int(best["step"]),
        })
    return pd.DataFrame(rows)


def plot_training(logs: Mapping[str, pd.DataFrame], budgets: Mapping[str, Mapping], *, title: str = ""):
    """Three panels, one line per flow: validation sample accuracy vs training step, the same vs wall seconds, and the
    held-out flow-matching loss vs step.  Colour: geometry; line style: vector field (model name)."""
    models = list(dict.fromkeys(budgets[f]["model"] for f in logs))
    fig, axes = figure(ncols=3, width=3.0, height=2.6)
    acc_step, acc_time, loss_step = axes[0]
    for flow, log in logs.items():
        budget, spec = budgets[flow], FlowSpec.parse(flow)
        style = {"color": color_for(GEOMETRY_NAMES.index(spec.geometry)),
                 "linestyle": LINESTYLES[models.index(budget["model"]) % len(LINESTYLES)], "marker": "o",
                 "markersize": 3}
        label = (f"{flow} ({budget['model']} d={budget['width']}, {int(log['step'].iloc[-1])}×{budget['batch_size']}, "
                 f"{log['seconds'].iloc[-1]:.0f} s)")
        acc_step.plot(log["step"], log["sample_acc"], label=label, **style)
        acc_time.plot(log["seconds"], log["sample_acc"], **style)
        loss_step.plot(log["step"], log["val_loss"], **style)
    acc_step.set(xlabel="training step", ylabel="val. sample accuracy")
    acc_time.set(xlabel="wall time (s)", ylabel="val. sample accuracy")
    loss_step.set(xlabel="training step", ylabel="held-out flow-matching loss", yscale="log")
    fig.legend(*acc_step.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=7, frameon=False)
    fig.suptitle(f"{title}: flow training (colour: geometry; line style: vector field)".strip(": "))
    return fig


def training_stage(job: StageJob) -> None:
    """Snakemake stage: ``figures/training.pdf`` (+ ``.png``) and ``tables/training.csv`` from every flow's
    ``train_log.csv`` (``params.flows`` in the same order as ``input.logs``; ``params.budgets`` per flow)."""
    flows, budgets = job.params["flows"], job.params["budgets"]
    logs = {flow: pd.read_csv(path) for flow, path in zip(flows, job.inputs["logs"])}
    training_table(logs, budgets).to_csv(job.output_path("csv"), index=False, float_format="%.6g")
    save(plot_training(logs, budgets, title=str(job.params["cfg"]["name"]).replace("_", " ")),
         [job.output_path("pdf"), job.output_path("png")])

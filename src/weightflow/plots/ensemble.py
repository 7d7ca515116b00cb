"""Figure ``ensemble_training``: loss and accuracy curves of the base-network ensemble over epochs."""

from __future__ import annotations

import pandas as pd

from weightflow.plots.style import color_for, figure, save
from weightflow.runner import StageJob

__all__ = ["plot_ensemble_training", "training_stage"]


def plot_ensemble_training(history: pd.DataFrame, *, title: str = "", burn_in_epochs: int | None = None):
    """Two panels (cross-entropy, accuracy) vs epoch: mean over runs ± one std, per split.

    ``history`` has one row per (run, epoch) with ``{train,val,test}_{loss,acc}`` columns."""
    fig, axes = figure(ncols=2, width=3.3, height=2.5)
    stats = history.groupby("epoch").agg(["mean", "std"])
    for ax, metric, label in ((axes[0, 0], "loss", "cross-entropy (nats)"), (axes[0, 1], "acc", "accuracy")):
        for i, split in enumerate(("train", "val", "test")):
            col = f"{split}_{metric}"
            if col not in stats:
                continue
            mean, std = stats[col]["mean"], stats[col]["std"].fillna(0.0)
            ax.plot(stats.index, mean, color=color_for(i), label=split)
            ax.fill_between(stats.index, mean - std, mean + std, color=color_for(i), alpha=0.2, linewidth=0)
        if burn_in_epochs:
            ax.axvline(burn_in_epochs, color="0.4", linestyle=":", linewidth=1, label="burn-in end")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
    axes[0, 0].set_yscale("log")
    axes[0, 1].legend(loc="lower right", frameon=False)
    runs = history["run"].nunique()
    fig.suptitle(f"{title} ensemble: mean ± std over {runs} runs".strip())
    return fig


def training_stage(job: StageJob) -> None:
    """Snakemake stage: ``results/{experiment}/figures/ensemble_training.pdf`` (+ ``.png``)."""
    cfg = job.params["cfg"]
    history = pd.read_csv(job.inputs["metrics"])
    fig = plot_ensemble_training(history, title=cfg["name"], burn_in_epochs=cfg["ensemble"]["burn_in_epochs"])
    save(fig, [job.output_path("pdf"), job.output_path("png")])

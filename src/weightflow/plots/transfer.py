"""Figures of the transfer experiments: training from flow samples vs from the prior (``initialization``) and
sample quality against the vector field's size (``scaling``)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from weightflow.plots.style import color_for, figure, save
from weightflow.runner import StageJob

__all__ = ["plot_initialization", "plot_scaling", "initialization_figure_stage", "scaling_figure_stage"]


def plot_initialization(curves: pd.DataFrame, *, title: str = "", task: str = ""):
    """Test accuracy and loss of networks trained on the new task against optimization steps (log), mean ± std over
    seeds, one line per start (the prior, each flow's own samples, its guided samples)."""
    fig, axes = figure(ncols=2, width=3.4, height=2.7)
    groups = list(curves.groupby(["start", "flow"], sort=False))
    for i, ((start, flow), part) in enumerate(groups):
        stats = part.groupby("step")[["test_accuracy", "test_loss"]].agg(["mean", "std"]).fillna(0.0)
        label = "prior" if start == "prior" else f"{flow}: {start} samples"
        color = "0.2" if start == "prior" else color_for(i)
        for ax, metric in zip(axes[0], ("test_accuracy", "test_loss")):
            steps = stats.index.to_numpy().clip(min=0.5)  # step 0 on the log axis
            mean, std = stats[(metric, "mean")], stats[(metric, "std")]
            ax.plot(steps, mean, color=color, label=label if metric == "test_accuracy" else None,
                    linestyle="--" if start == "guided" else "-")
            ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.15, linewidth=0)
    for ax, name in zip(axes[0], ("test accuracy", "test loss (nats)")):
        ax.set_xscale("log")
        ax.set(xlabel="Adam steps on the new task (0 plotted at 0.5)", ylabel=name)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncols=2, frameon=False)
    fig.suptitle(f"{title}: training on {task} from flow samples vs from the prior\n(mean ± std over seeds)".strip(": "))
    return fig


def plot_scaling(table: pd.DataFrame, *, title: str = ""):
    """Sample accuracy and NLL (mean over networks) of the flows' own samples against the vector field's parameter
    count, one line per geometry."""
    fig, axes = figure(ncols=2, width=3.3, height=2.7)
    for i, (geometry, part) in enumerate(table.sort_values("parameters").groupby("geometry", sort=False)):
        for ax, metric in zip(axes[0], ("accuracy", "nll")):
            ax.errorbar(part["parameters"], part[metric], yerr=part.get(f"{metric}_std"), marker="o", capsize=2,
                        color=color_for(i), label=geometry if metric == "accuracy" else None)
            for _, row in part.iterrows():
                ax.annotate(f"d={int(row['width'])}", (row["parameters"], row[metric]), fontsize=6,
                            textcoords="offset points", xytext=(3, 3))
    for ax, name in zip(axes[0], ("sample accuracy", "sample NLL (nats)")):
        ax.set_xscale("log")
        ax.set(xlabel="vector-field parameters", ylabel=name)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncols=3, frameon=False)
    fig.suptitle(f"{title}: flow samples against vector-field size (fixed step budget)".strip(": "))
    return fig


def initialization_figure_stage(job: StageJob) -> None:
    """Snakemake stage: ``figures/initialization.pdf`` (+ ``.png``) from ``transfer/initialization.csv``."""
    cfg = job.params["cfg"]
    fig = plot_initialization(pd.read_csv(job.inputs["curves"], keep_default_na=False),
                              title=str(cfg["name"]).replace("_", " "), task=cfg["transfer"]["task"])
    save(fig, [job.output_path("pdf"), job.output_path("png")])


def scaling_figure_stage(job: StageJob) -> None:
    """Snakemake stage: ``figures/scaling.pdf`` (+ ``.png``) and ``tables/scaling.csv`` from the summaries of the
    scaling flows' own samples (each names its geometry, vector-field width and parameter count)."""
    rows = []
    for path in job.inputs["summaries"]:
        summary = json.loads(Path(path).read_text())
        rows.append({"flow": summary["source"], "geometry": summary["geometry"], "width": summary["model_width"],
                     "parameters": summary["parameters"],
                     "accuracy": summary["accuracy_mean"], "accuracy_std": summary["accuracy_std"],
                     "nll": summary["nll_mean"], "nll_std": summary["nll_std"]})
    table = pd.DataFrame(rows)
    table.to_csv(job.output_path("csv"), index=False, float_format="%.6g")
    fig = plot_scaling(table, title=str(job.params["cfg"]["name"]).replace("_", " "))
    save(fig, [job.output_path("pdf"), job.output_path("png")])

"""Evaluation figures: ``bma`` (BMA curves), ``calibration`` (reliability diagrams), ``diversity``, ``steps``.

Every figure compares *sources* of networks: the flows' own samples (ids
``{geometry}-{alignment}-{coupling}[-{variant}]``) and the baselines of :data:`weightflow.names.BASELINES` that are
drawn in figures (the ensemble snapshots — the flows' target —, the deep ensemble, SGLD, ...).  Flows are grouped
into one panel per geometry; each panel also shows the baselines in grey for reference.  A flow's colour is fixed
by its (alignment, coupling, variant), the same in every panel and figure.

Inputs are the files written by :mod:`weightflow.evaluate.stages` under ``results/{e}/evaluation/{source}/``;
each names its source in a ``source`` column or field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
from matplotlib.ticker import NullFormatter

from weightflow.evaluate.tables import source_label
from weightflow.flow.spec import GEOMETRY_NAMES, FlowSpec
from weightflow.names import BASELINES
from weightflow.plots.style import color_for, figure, save
from weightflow.runner import StageJob

__all__ = [
    "plot_bma",
    "plot_calibration",
    "plot_diversity",
    "plot_steps",
    "bma_stage",
    "calibration_stage",
    "diversity_stage",
    "steps_stage",
]

# Grey shades and line styles of the baselines drawn in figures, in BASELINES order.
_GREYS = [("0.15", "-"), ("0.45", "--"), ("0.45", ":"), ("0.6", "-."), ("0.3", (0, (5, 1))), ("0.6", (0, (1, 1))),
          ("0.3", (0, (3, 1, 1, 1))), ("0.6", (0, (5, 5)))]
BASELINE_STYLE = {name: {"color": grey, "linestyle": ls, "label": base.label}
                  for (name, base), (grey, ls) in zip(((n, b) for n, b in BASELINES.items() if b.in_figures), _GREYS)}
METRIC_LABELS = {
    "accuracy": "accuracy",
    "nll": "NLL (nats)",
    "brier": "Brier score",
    "ece": "ECE",
}


def _flow_key(source: str) -> str:
    spec = FlowSpec.parse(source)
    return " / ".join(p for p in (spec.alignment, spec.coupling, spec.variant) if p)


class _Styles:
    """Line styles per source: baselines in grey, flows coloured by (alignment, coupling)."""

    def __init__(self, sources: Iterable[str]):
        keys = sorted({_flow_key(s) for s in sources if s not in BASELINES})
        self.colors = {k: color_for(i) for i, k in enumerate(keys)}

    def __call__(self, source: str) -> dict:
        if source in BASELINES:
            return dict(BASELINE_STYLE[source], linewidth=1.2)
        return {"color": self.colors[_flow_key(source)], "linestyle": "-", "label": _flow_key(source),
                "linewidth": 1.4}


def _panels(sources: Iterable[str]) -> list[tuple[str, list[str]]]:
    """``[(title, sources)]``: one panel per geometry with flows (baselines added to each), or one baseline panel."""
    sources = list(sources)
    baselines = [s for s in BASELINES if s in sources]
    flows = [s for s in sources if s not in BASELINES]
    panels = []
    for geometry in GEOMETRY_NAMES:
        mine = sorted(s for s in flows if FlowSpec.parse(s).geometry == geometry)
        if mine:
            panels.append((f"{geometry.capitalize()} flows", mine + baselines))
    return panels or [("Baselines", baselines)]


def _legend(fig, axes) -> None:
    """One legend below the figure with every distinct label, baselines first."""
    handles = {}
    for ax in np.ravel(axes):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    baseline_labels = [style["label"] for style in BASELINE_STYLE.values()]
    handles = dict(sorted(handles.items(), key=lambda item: item[0] not in baseline_labels))
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=min(len(handles), 5),
               frameon=False, title="baselines (grey) and flows: alignment / coupling [/ variant]")


def plot_bma(curves: Mapping[str, pd.DataFrame], *, title: str = "", metrics=("accuracy", "nll", "ece")):
    """Rows ``metrics`` × one column per panel: BMA metric vs number of averaged networks, mean ± std over subsets."""
    panels, style = _panels(curves), _Styles(curves)
    fig, axes = figure(ncols=len(panels), nrows=len(metrics), width=3.0, height=2.2, sharex=True)
    for col, (panel_title, sources) in enumerate(panels):
        for row, metric in enumerate(metrics):
            ax = axes[row, col]
            for source in sources:
                curve, kw = curves[source], style(source)
                mean, std = curve[f"{metric}_mean"], curve[f"{metric}_std"]
                ax.plot(curve["n"], mean, marker="o", markersize=2.5, **kw)
                ax.fill_between(curve["n"], mean - std, mean + std, color=kw["color"], alpha=0.15, linewidth=0)
            ax.set_xscale("log", base=2)
            if col == 0:
                ax.set_ylabel(f"BMA {METRIC_LABELS[metric]}")
            if row == 0:
                ax.set_title(panel_title)
            if row == len(metrics) - 1:
                ax.set_xlabel("networks averaged $n$")
    _legend(fig, axes)
    fig.suptitle(f"{title}: BMA vs number of averaged networks\n(mean ± std over random subsets)".strip(": "))
    return fig


def plot_calibration(reliability: Mapping[str, pd.DataFrame], *, title: str = "", bma_n: int | None = None,
                     num_classes: int = 2):
    """Reliability diagrams: accuracy vs confidence per bin, single networks (pooled) and their BMA."""
    panels, style = _panels(reliability), _Styles(reliability)
    kinds = (("single", "single networks (pooled)"), ("bma", f"BMA of n = {bma_n} networks" if bma_n else "BMA"))
    fig, axes = figure(ncols=len(panels), nrows=2, width=2.8, height=2.6, sharex=True, sharey=True)
    lo = 1.0 / num_classes
    for col, (panel_title, sources) in enumerate(panels):
        for row, (kind, kind_label) in enumerate(kinds):
            ax = axes[row, col]
            ax.plot([lo, 1], [lo, 1], color="0.6", linestyle=(0, (1, 2)), linewidth=1)
            for source in sources:
                rel = reliability[source]
                rel = rel[(rel["kind"] == kind) & (rel["count"] > 0)]
                kw = style(source)
                ax.plot(rel["confidence"], rel["accuracy"], **kw)
                share = rel["count"] / rel["count"].sum()  # marker area ∝ share of inputs in the bin
                ax.scatter(rel["confidence"], rel["accuracy"], s=4 + 80 * share, color=kw["color"], zorder=3)
            ax.set_xlim(lo - 0.02, 1.01)
            ax.set_title(f"{panel_title}\n{kind_label}" if row == 0 else kind_label, fontsize=9)
            if col == 0:
                ax.set_ylabel("accuracy in bin")
            if row == 1:
                ax.set_xlabel("confidence (top-label probability)")
    _legend(fig, axes)
    fig.suptitle(f"{title}: reliability diagrams\n(marker area ∝ inputs in the bin; dotted: calibrated)".strip(": "))
    return fig


def plot_diversity(summaries: Mapping[str, Mapping], *, title: str = ""):
    """Horizontal bars per source: mean pairwise JS divergence, disagreement, and OOD AUROC or predictive entropy."""
    order = [s for s in summaries if s not in BASELINES] + [s for s in BASELINES if s in summaries]
    style = _Styles(summaries)
    has_ood = all("bma_ood_auroc" in summaries[s] for s in order)
    bars = [("diversity_js", "mean pairwise JS divergence (nats)"), ("diversity_disagreement", "disagreement rate")]
    bars.append(("bma_ood_auroc", "OOD AUROC, entropy of the BMA") if has_ood
                else ("bma_entropy", "BMA predictive entropy (nats)"))
    fig, axes = figure(ncols=len(bars), width=2.6, height=0.8 + 0.22 * len(order), sharey=True)
    ypos = np.arange(len(order))[::-1]
    for ax, (key, label) in zip(axes[0], bars):
        values = [summaries[s][key] for s in order]
        ax.barh(ypos, values, color=[style(s)["color"] for s in order], height=0.7)
        ax.set_xlabel(label)
        ax.grid(axis="y", visible=False)
        if key == "bma_ood_auroc":
            ax.scatter([summaries[s]["ood_auroc_mean"] for s in order], ypos, marker="o", facecolor="white",
                       edgecolor="black", s=22, zorder=3)
            ax.axvline(0.5, color="0.4", linestyle=":", linewidth=1)
            ax.set_xlim(0.0, 1.0)
            ax.set_xlabel("OOD AUROC by entropy\n(bars: BMA; circles: mean single network)")
    axes[0, 0].set_yticks(ypos, [source_label(s) for s in order])
    n_div = max(int(summaries[s]["diversity_n"]) for s in order)
    fig.suptitle(f"{title}: functional diversity (up to {n_div} networks per source)".strip(": "))
    return fig


def plot_steps(steps: Mapping[str, pd.DataFrame], ensemble: pd.DataFrame, *, title: str = "", split: str = "test"):
    """Sample accuracy and NLL vs integration steps (solid: the flow's own samples, dashed: guided, dotted: the
    guidance-alone control — same prior draws and λ, the flow's velocity replaced by zero), next to the ensemble's
    accuracy vs optimization steps (mean ± std over runs)."""
    fig, axes = figure(ncols=3, width=2.9, height=2.5)
    colors = {flow: color_for(i) for i, flow in enumerate(steps)}
    for flow, frame in steps.items():
        for (lam, control), part in frame.groupby(["guidance", "control"]):
            line = ":" if control else ("--" if lam > 0 else "-")
            color = "0.5" if control else colors[flow]
            kw = {"color": color, "linestyle": line, "marker": "o", "markersize": 2.5}
            for ax, metric in ((axes[0, 0], "accuracy"), (axes[0, 1], "nll")):
                mean, std = part[f"{metric}_mean"], part[f"{metric}_std"]
                ax.plot(part["steps"], mean, label=flow if lam == 0 else None, **kw)
                ax.fill_between(part["steps"], mean - std, mean + std, color=color, alpha=0.12, linewidth=0)
    for ax, metric in ((axes[0, 0], "accuracy"), (axes[0, 1], "nll")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("integration steps (Euler)")
        ax.set_ylabel(f"sample {METRIC_LABELS[metric]}")
        ax.set_title("flow samples")
    axes[0, 1].set_yscale("log")
    guided = sorted({(flow, lam) for flow, frame in steps.items() for lam in frame["guidance"] if lam > 0})
    if guided:  # line-style keys: solid = unguided, dashed = guided, dotted grey = guidance alone
        axes[0, 0].plot([], [], color="0.3", linestyle="-", label="no guidance")
        lams = ", ".join(sorted({f"{lam:g}" for _, lam in guided}))
        axes[0, 0].plot([], [], color="0.3", linestyle="--", label=f"guided (λ = {lams}, selected on val)")
        axes[0, 0].plot([], [], color="0.5", linestyle=":", label="guidance only (zero velocity), same λ")
    stats = ensemble.groupby("step")[f"{split}_acc"].agg(["mean", "std"]).fillna(0.0)
    ax = axes[0, 2]
    ax.plot(stats.index, stats["mean"], color="0.15", label="ensemble runs")
    ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"], color="0.15", alpha=0.15,
                    linewidth=0)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("optimization steps (minibatches)")
    ax.set_ylabel(f"{split} accuracy")
    ax.set_title("ensemble training")
    lo = min(axes[0, 0].get_ylim()[0], ax.get_ylim()[0])
    for a in (axes[0, 0], ax):
        a.set_ylim(lo, 1.0)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 3), frameon=False)
    fig.suptitle(f"{title}: sample quality vs integration steps ({split} split, mean ± std over networks)".strip(": "))
    return fig


def _by_source(paths: Iterable[str]) -> dict[str, pd.DataFrame]:
    """``{source: frame}`` of CSV files whose ``source`` column names their source."""
    frames = {}
    for path in paths:
        frame = pd.read_csv(path)
        frames[str(frame["source"].iloc[0])] = frame
    return frames


def _summaries(paths: Iterable[str]) -> dict[str, dict]:
    """``{source: summary}`` of ``summary.json`` files (each names its source)."""
    out = {}
    for path in paths:
        summary = json.loads(Path(path).read_text())
        out[summary["source"]] = summary
    return out


def _title(cfg: Mapping) -> str:
    return str(cfg["name"]).replace("_", " ")


def bma_stage(job: StageJob) -> None:
    """Snakemake stage: ``results/{experiment}/figures/bma.pdf`` (+ ``.png``)."""
    curves = _by_source(job.inputs["bma"])
    save(plot_bma(curves, title=_title(job.params["cfg"])), [job.output_path("pdf"), job.output_path("png")])


def calibration_stage(job: StageJob) -> None:
    """Snakemake stage: ``results/{experiment}/figures/calibration.pdf`` (+ ``.png``)."""
    cfg = job.params["cfg"]
    rel = _by_source(job.inputs["reliability"])
    bma_n = {s["bma_n"] for s in _summaries(job.inputs["summaries"]).values()}
    fig = plot_calibration(rel, title=_title(cfg), bma_n=max(bma_n), num_classes=cfg["layer_sizes"][-1])
    save(fig, [job.output_path("pdf"), job.output_path("png")])


def diversity_stage(job: StageJob) -> None:
    """Snakemake stage: ``results/{experiment}/figures/diversity.pdf`` (+ ``.png``)."""
    summaries = _summaries(job.inputs["summaries"])
    save(plot_diversity(summaries, title=_title(job.params["cfg"])), [job.output_path("pdf"), job.output_path("png")])


def steps_stage(job: StageJob) -> None:
    """Snakemake stage: ``results/{experiment}/figures/steps.pdf`` (+ ``.png``)."""
    cfg = job.params["cfg"]
    steps = {}
    for path in job.inputs["steps"]:
        frame = pd.read_csv(path)
        steps[str(frame["flow"].iloc[0])] = frame
    fig = plot_steps(steps, pd.read_csv(job.inputs["metrics"]), title=_title(cfg), split=cfg["evaluation"]["split"])
    save(fig, [job.output_path("pdf"), job.output_path("png")])

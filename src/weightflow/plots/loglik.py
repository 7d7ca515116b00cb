"""Figure ``loglik``: log-likelihoods under every flow, per source of networks, and the summary table.

One panel per flow (each with its own axis: euclidean flows report densities on ``R^D``, normalized and
geometric flows on the product of spheres ``M``; see :mod:`weightflow.likelihood.flows`).  Every dot is one
network (Hutchinson estimate); black crosses are exact-divergence values of the same networks.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np
import pandas as pd

from weightflow.plots.style import color_for, figure, save
from weightflow.runner import StageJob

__all__ = ["summarize_loglik", "plot_loglik", "loglik_stage"]

log = logging.getLogger(__name__)

SOURCE_LABELS = {"holdout": "held-out\nsnapshots", "generated": "own\nsamples", "other_flow": "other flows'\nsamples",
                 "prior": "prior\ndraws"}


def summarize_loglik(table: pd.DataFrame) -> pd.DataFrame:
    """Per flow, source and estimator: ``n, mean, std, sem`` of ``logp``; plus, per flow, one
    ``estimator = 'hutchinson-exact'`` row over the networks scored both ways: mean/std/sem of the difference,
    ``mean_abs_z`` (mean of ``|difference| / Hutchinson se``) and ``within_3se`` (fraction with ``|z| <= 3``)."""
    keys = ["flow", "source", "estimator", "density", "t_start"]
    summary = table.groupby(keys, sort=False).logp.agg(n="count", mean="mean", std="std").reset_index()
    summary["sem"] = summary["std"] / np.sqrt(summary["n"])
    pairs = table[table.estimator == "exact"].merge(
        table[table.estimator == "hutchinson"], on=["flow", "source", "row"], suffixes=("_exact", "_hutch"))
    rows = []
    for flow, group in pairs.groupby("flow", sort=False):
        diff = group.logp_hutch - group.logp_exact
        z = diff / group.logp_se_hutch
        rows.append({"flow": flow, "source": ",".join(group.source.unique()), "estimator": "hutchinson-exact",
                     "density": group.density_exact.iloc[0], "t_start": group.t_start_exact.iloc[0],
                     "n": len(diff), "mean": diff.mean(), "std": diff.std(), "sem": diff.std() / math.sqrt(len(diff)),
                     "mean_abs_z": z.abs().mean(), "within_3se": float((z.abs() <= 3).mean())})
    return pd.concat([summary, pd.DataFrame(rows)], ignore_index=True) if rows else summary


def plot_loglik(table: pd.DataFrame, paths: Sequence, *, seed: int = 0) -> None:
    """Strip plots of ``logp`` per source, one panel per flow, written to ``paths`` (PDF, PNG).

    Panels whose values span more than two decades use a symmetric-log axis (linear within ±1000 nats)."""
    from matplotlib.lines import Line2D

    flows = list(dict.fromkeys(table.flow))
    ncols = min(3, len(flows))
    nrows = math.ceil(len(flows) / ncols)
    fig, axes = figure(ncols, nrows, width=3.0, height=2.6)
    rng = np.random.default_rng(seed)
    colors = {source: color_for(i) for i, source in enumerate(SOURCE_LABELS)}
    for ax, flow in zip(axes.flat, flows):
        rows = table[table.flow == flow]
        sources = [s for s in SOURCE_LABELS if s in set(rows.source)]
        for i, source in enumerate(sources):
            hutch = rows[(rows.source == source) & (rows.estimator != "exact")]
            ax.scatter(i + rng.uniform(-0.18, 0.18, len(hutch)), hutch.logp, s=10, alpha=0.7, color=colors[source],
                       linewidths=0)
            if len(hutch):
                ax.plot([i - 0.3, i + 0.3], [hutch.logp.mean()] * 2, color=colors[source], lw=1.5)
            exact = rows[(rows.source == source) & (rows.estimator == "exact")]
            ax.scatter(np.full(len(exact), i + 0.25), exact.logp, marker="x", s=18, color="black", lw=0.8)
        ax.set_xticks(range(len(sources)), [SOURCE_LABELS[s] for s in sources])
        magnitude = rows.logp.abs()
        if magnitude.max() > 100 * max(magnitude.min(), 1000.0):
            ax.set_yscale("symlog", linthresh=1000.0)
            top = math.ceil(math.log10(magnitude.max()))
            lo, hi = rows.logp.min(), rows.logp.max()
            ticks = [-(10.0**k) for k in range(top, 2, -1)] + [0.0] + [10.0**k for k in range(3, top + 1)]
            ax.set_yticks([v for v in ticks if lo - 9 * abs(lo) <= v <= hi + 9 * abs(hi) or v == 0.0])
        measure = "on $M$" if "Riemannian" in rows.density.iloc[0] else "on $\\mathbb{R}^D$"
        ax.set_title(f"{flow}\n(density {measure}, $t$ = {rows.t_start.iloc[0]:g})", fontsize=8)
        ax.set_ylabel("log-likelihood (nats)")
    for ax in list(axes.flat)[len(flows):]:
        ax.set_visible(False)
    handles = [Line2D([], [], ls="", marker="o", ms=3, color="grey", label="one network (Hutchinson)"),
               Line2D([], [], color="grey", lw=1.5, label="mean per source"),
               Line2D([], [], ls="", marker="x", ms=4, color="black", label="exact divergence")]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
    save(fig, paths)


def loglik_stage(job: StageJob) -> None:
    """Read every flow's ``loglik.csv``; write the figure (PDF, PNG) and ``tables/loglik_summary.csv``."""
    csvs = job.inputs["csvs"]
    table = pd.concat([pd.read_csv(p) for p in ([csvs] if isinstance(csvs, str) else csvs)], ignore_index=True)
    summary = summarize_loglik(table)
    summary.to_csv(job.output_path("summary"), index=False)
    log.info("log-likelihood summary:\n%s", summary.to_string())
    plot_loglik(table, [job.output_path("pdf"), job.output_path("png")], seed=job.params["cfg"]["seed"])

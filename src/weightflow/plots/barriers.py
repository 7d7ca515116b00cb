"""Figure ``loss_barriers``: barrier curves and midpoint-barrier distributions before vs after alignment."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from weightflow.plots.style import color_for, figure, save
from weightflow.runner import StageJob

__all__ = ["plot_loss_barriers", "loss_barriers_stage"]

STATES = ("unaligned", "aligned")


def plot_loss_barriers(tables: Sequence[pd.DataFrame], *, title: str = ""):
    """One row per (reference, split): mean barrier curve ± std over pairs, and a histogram of the midpoint barrier.

    Each table is a ``barriers/{reference}.csv`` (columns ``reference, split, state, midpoint_barrier,
    barrier_{λ}``, see :func:`weightflow.barriers.barrier_table`).
    """
    rows = [(ref, split, grp) for table in tables for (ref, split), grp in table.groupby(["reference", "split"], sort=False)]
    fig, axes = figure(ncols=2, nrows=len(rows), width=3.4, height=2.4)
    for r, (ref, split, grp) in enumerate(rows):
        curve_cols = [c for c in grp.columns if c.startswith("barrier_")]
        lambdas = np.array([float(c.split("_", 1)[1]) for c in curve_cols])
        ax_curve, ax_hist = axes[r, 0], axes[r, 1]
        mids = grp["midpoint_barrier"].to_numpy()
        bins = np.linspace(mids.min(), mids.max(), 31) if mids.max() > mids.min() else 10
        for i, state in enumerate(STATES):
            sub = grp[grp.state == state]
            curves = sub[curve_cols].to_numpy()
            mean, std = curves.mean(0), curves.std(0)
            ax_curve.plot(lambdas, mean, color=color_for(i), marker=".", label=state)
            ax_curve.fill_between(lambdas, mean - std, mean + std, color=color_for(i), alpha=0.2, linewidth=0)
            m = sub["midpoint_barrier"]
            ax_hist.hist(m, bins=bins, color=color_for(i), alpha=0.55,
                         label=f"{state}: {m.mean():.3f} ± {m.std():.3f}")
        ax_curve.axhline(0.0, color="0.4", linewidth=0.8)
        ax_curve.set_xlabel("interpolation λ (0 = run a, 1 = run b)")
        ax_curve.set_ylabel("barrier B(λ) (nats)")
        ax_curve.set_title(f"reference {ref}, {split} split")
        ax_curve.legend(frameon=False)
        ax_hist.set_xlabel("midpoint barrier B(1/2) (nats)")
        ax_hist.set_ylabel("pairs")
        ax_hist.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax_hist.set_title(f"{len(grp) // len(STATES)} pairs, mean ± std")
        ax_hist.legend(frameon=False)
    if title:
        fig.suptitle(f"{title}: loss barriers before vs after alignment")
    return fig


def loss_barriers_stage(job: StageJob) -> None:
    """Stage: ``inputs.csvs`` (one per reference) → ``outputs.pdf`` and ``outputs.png``."""
    cfg = job.params["cfg"]
    acfg = cfg.get("alignment", {})
    method = acfg.get("method", "")
    if method == "sinkhorn":
        method = f"sinkhorn-{acfg.get('objective', '')}"
    tables = [pd.read_csv(path) for path in job.inputs["csvs"]]
    fig = plot_loss_barriers(tables, title=f"{cfg['name']} ({method})" if method else cfg["name"])
    save(fig, [job.output_path("pdf"), job.output_path("png")])

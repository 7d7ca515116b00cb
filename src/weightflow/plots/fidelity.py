"""Figure ``fidelity``: how close each source's predictive is to the HMC posterior's — agreement vs total variation,
one point per source (:func:`weightflow.evaluate.stages.fidelity_stage` writes the table it reads)."""

from __future__ import annotations

import pandas as pd

from weightflow.plots.style import color_for, figure, save
from weightflow.runner import StageJob

__all__ = ["plot_fidelity", "fidelity_figure_stage"]

# marker per kind of source: flows trained on the ensemble, flows trained on HMC draws, baselines
_MARKERS = {"ensemble": "o", "HMC draws": "*", "": "s"}


def plot_fidelity(table: pd.DataFrame, *, title: str = ""):
    """Left: top-1 agreement with HMC vs mean total variation from HMC's predictive (lower right is better: the
    HMC-split floor is the best any finite sample reaches).  Right: TV vs CPU seconds (log) — what fidelity costs."""
    floor = table[table["source"] == "hmc_split"]
    rows = table[~table["source"].isin(["hmc", "hmc_split"])]
    fig, axes = figure(ncols=2, width=3.6, height=3.0)
    for i, (_, row) in enumerate(rows.iterrows()):
        kw = {"color": color_for(i), "marker": _MARKERS.get(row["trained_on"], "s"), "s": 46, "zorder": 3}
        axes[0, 0].scatter(row["tv"], row["agreement"], label=row["label"], **kw)
        axes[0, 1].scatter(row["cpu_seconds_with_data"], row["tv"], **kw)
    for ax in axes[0]:
        ax.grid(True, alpha=0.3)
    if not floor.empty:
        axes[0, 0].axvline(float(floor["tv"].iloc[0]), color="0.4", linestyle=":", linewidth=1,
                           label="HMC split (Monte-Carlo floor)")
        axes[0, 1].axhline(float(floor["tv"].iloc[0]), color="0.4", linestyle=":", linewidth=1)
    axes[0, 0].set_xscale("log")
    axes[0, 0].set(xlabel="mean total variation from HMC's BMA predictive", ylabel="top-1 agreement with HMC",
                   title="predictive fidelity to HMC")
    axes[0, 1].set_xscale("log")
    axes[0, 1].set_yscale("log")
    axes[0, 1].set(xlabel="CPU seconds (including the training data)", ylabel="total variation from HMC",
                   title="fidelity vs cost")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncols=3, frameon=False,
               title="○ flow on the ensemble   ★ flow on HMC draws   □ baseline")
    fig.suptitle(f"{title}: every source against the HMC posterior".strip(": "))
    return fig


def fidelity_figure_stage(job: StageJob) -> None:
    """Snakemake stage: ``results/{experiment}/figures/fidelity.pdf`` (+ ``.png``) from ``tables/fidelity.csv``."""
    table = pd.read_csv(job.inputs["table"], keep_default_na=False)
    fig = plot_fidelity(table, title=str(job.params["cfg"]["name"]).replace("_", " "))
    save(fig, [job.output_path("pdf"), job.output_path("png")])

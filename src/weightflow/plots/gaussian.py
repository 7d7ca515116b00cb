"""The Gaussian sanity experiment: flow samples vs the target N(mean, std² I) over flat weights.

:func:`sanity_stats` summarizes a set of networks ``[N, D]`` against the target; :func:`sanity_figure`
draws (a) histograms of each network's mean weight and (b) histograms of the per-coordinate standard
deviations, for every sampler and for the target draws."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

from weightflow.data import load_dataset
from weightflow.io import load_weights
from weightflow.plots.style import color_for, figure, save
from weightflow.runner import StageJob

__all__ = ["sanity_stats", "sanity_figure", "sanity_stage"]

log = logging.getLogger(__name__)


def sanity_stats(x: Tensor, mean: float, std: float) -> dict[str, float]:
    """Moments of ``x [N, D]`` against N(mean, std² I).

    Returns ``grand_mean`` (over all networks and coordinates), ``max_abs_mean_error`` (worst coordinate mean),
    ``std_ratio_median/min/max`` (per-coordinate std / ``std``), ``frac_std_within_10pct`` and
    ``net_mean_std`` (std of per-network means; the target's is ``std/sqrt(D)``)."""
    x = x.double()
    ratio = x.std(dim=0) / std
    return {
        "networks": x.shape[0],
        "grand_mean": float(x.mean()),
        "max_abs_mean_error": float((x.mean(dim=0) - mean).abs().max()),
        "std_ratio_median": float(ratio.median()),
        "std_ratio_min": float(ratio.min()),
        "std_ratio_max": float(ratio.max()),
        "frac_std_within_10pct": float(((ratio - 1).abs() <= 0.1).double().mean()),
        "net_mean_std": float(x.mean(dim=1).std()),
        "net_mean_std_target": std / math.sqrt(x.shape[1]),
    }


def sanity_figure(sets: dict[str, Tensor], mean: float, std: float, paths) -> None:
    """Two histogram panels (per-network mean weight; per-coordinate std) of every named set ``[N, D]``."""
    fig, axes = figure(2, 1, width=3.4, height=2.6)
    ax_mean, ax_std = axes[0]
    for i, (name, x) in enumerate(sets.items()):
        style = dict(bins=40, histtype="step", density=True, lw=1.3, color=color_for(i), label=name)
        ax_mean.hist(x.mean(dim=1).numpy(), **style)
        ax_std.hist(x.std(dim=0).numpy(), **style)
    ax_mean.axvline(mean, color="0.3", ls="--", lw=0.8, label=f"target mean {mean:g}")
    ax_std.axvline(std, color="0.3", ls="--", lw=0.8, label=f"target std {std:g}")
    ax_mean.set(xlabel="mean weight of a network", ylabel="density", title="(a) per-network weight means")
    ax_std.set(xlabel="std of one weight coordinate", ylabel="density", title="(b) per-coordinate stds")
    for ax in (ax_mean, ax_std):
        ax.legend(frameon=False, loc="upper left", fontsize=7)
    save(fig, paths)


def sanity_stage(job: StageJob) -> None:
    """Figure ``gaussian_sanity.pdf``/``.png`` and table ``gaussian_sanity.csv`` from the target draws and the
    first flow's samples (one file per sampler)."""
    cfg = job.params["cfg"]
    target = load_dataset(cfg["dataset"], seed=cfg["seed"]).weight_target
    mean, std = float(target["mean"]), float(target["std"])
    samples = job.inputs["samples"]
    samples = [samples] if isinstance(samples, str) else list(samples)
    sets = {"target draws": load_weights(job.inputs["target"]).weights}
    for path in samples:
        wf = load_weights(path, layer_sizes=cfg["layer_sizes"])
        options = wf.metadata.get("sampler_options", {})
        label = f"{wf.metadata.get('sampler', Path(path).stem)} (ε = {options.get('noise', 0.0):g})"
        sets[label] = wf.weights
    table = pd.DataFrame([{"source": name, **sanity_stats(x, mean, std)} for name, x in sets.items()])
    out_csv = job.output_path("csv")
    table.to_csv(out_csv, index=False)
    log.info("Gaussian sanity:\n%s", table.to_string(index=False))
    sanity_figure(sets, mean, std, [job.output_path("pdf"), job.output_path("png")])

"""The Gaussian sanity experiment: flow samples vs the target N(mean, std² I) over flat weights.

:func:`sanity_stats` summarizes a set of networks ``[N, D]`` against the target — per-coordinate moments, the
per-network-mean std ratio and, given fresh target draws, the energy distance to them; :func:`noise_floor`
gives the same two statistics between independent target draw sets of the same size (the values a perfect
sampler of the target reaches, mean ± std over repeats) and :func:`fitted_reference` the energy distance a
perfect learner of the finite training draws reaches (a diagonal Gaussian fitted to them: 0.004 for 4500
training draws and 2000 samples, against the floor's 0 ± 0.0014); :func:`sanity_figure` draws (a) histograms of
each network's mean weight, (b) histograms of the per-coordinate standard deviations and (c) the energy
distances against both references, for every sampler and for the target draws.

Why the per-network mean: a flow can get every coordinate's mean and std right and still misstate the spread
along one direction — the mean direction ``1/sqrt(D)`` is the one the flat MLP got wrong (0.48× the target's
spread; ``weightflow.models.mlp``).  Its std is estimated with relative standard error ``≈ 1/sqrt(2(N − 1))``
(1.6 % for N = 2000).  The energy distance (Székely & Rizzo) of all D coordinates is the global check; it
barely sees one direction out of D = 802 (a 0.5× shrink along it moves ``E|X − Y|`` by about 1e-4 of its
value), hence both."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

from weightflow.data import load_dataset
from weightflow.flow.samples import load_candidates
from weightflow.io import load_weights
from weightflow.plots.style import color_for, figure, save
from weightflow.runner import StageJob
from weightflow.utils import generator

__all__ = ["sanity_stats", "energy_distance", "net_mean_std_ratio", "noise_floor", "fitted_reference", "target_draws",
           "sanity_figure", "sanity_stage"]

log = logging.getLogger(__name__)

FLOOR_REPEATS = 5
"""Pairs of independent target draw sets behind each noise floor (mean ± std over them)."""


def energy_distance(x: Tensor, y: Tensor) -> float:
    """Unbiased estimate of the (squared) energy distance ``2 E|X − Y| − E|X − X'| − E|Y − Y'|`` between the
    distributions of the rows of ``x [N, D]`` and ``y [M, D]`` (U-statistics: the within-set means leave out
    the diagonal), in float64.  Zero in expectation when both sets come from one distribution, positive otherwise."""
    x, y = x.double(), y.double()
    n, m = x.shape[0], y.shape[0]
    xy = torch.cdist(x, y).mean()
    xx = torch.cdist(x, x).sum() / (n * (n - 1))
    yy = torch.cdist(y, y).sum() / (m * (m - 1))
    return float(2 * xy - xx - yy)


def net_mean_std_ratio(x: Tensor, std: float) -> float:
    """Std of the per-network mean weights of ``x [N, D]`` over the target's ``std / sqrt(D)``."""
    return float(x.double().mean(dim=1).std() * math.sqrt(x.shape[1]) / std)


def target_draws(n: int, dim: int, mean: float, std: float, gen: torch.Generator) -> Tensor:
    """``[n, dim]`` fresh draws from N(mean, std² I)."""
    return mean + std * torch.randn(n, dim, generator=gen, dtype=torch.float64)


def noise_floor(n: int, dim: int, mean: float, std: float, *, repeats: int = FLOOR_REPEATS,
                gen: torch.Generator) -> dict[str, float]:
    """What a perfect sampler of ``n`` networks scores: the energy distance between two independent sets of
    ``n`` target draws and the per-network-mean std ratio of one, mean and std over ``repeats`` pairs."""
    energy, ratio = [], []
    for _ in range(repeats):
        a, b = target_draws(n, dim, mean, std, gen), target_draws(n, dim, mean, std, gen)
        energy.append(energy_distance(a, b))
        ratio.append(net_mean_std_ratio(a, std))
    energy_t, ratio_t = torch.tensor(energy), torch.tensor(ratio)
    return {"energy_floor_mean": float(energy_t.mean()), "energy_floor_std": float(energy_t.std()),
            "net_mean_ratio_floor_mean": float(ratio_t.mean()), "net_mean_ratio_floor_std": float(ratio_t.std())}


def fitted_reference(train: Tensor, n: int, *, repeats: int = FLOOR_REPEATS, gen: torch.Generator,
                     mean: float = 1.0, std: float = 1.0) -> dict[str, float]:
    """What a flow that learned its training draws ``train [M, D]`` perfectly, as far as the first two moments
    go, scores: the energy distance between ``n`` draws of the diagonal Gaussian fitted to ``train`` (each
    coordinate's mean and std) and ``n`` fresh target draws, mean and std over ``repeats``.  Above the noise floor
    by the finite training set (M = 4500: each coordinate's mean off by ~1/sqrt(M))."""
    mu, sigma = train.double().mean(dim=0), train.double().std(dim=0)
    values = []
    for _ in range(repeats):
        fitted = mu + sigma * torch.randn(n, train.shape[1], generator=gen, dtype=torch.float64)
        values.append(energy_distance(fitted, target_draws(n, train.shape[1], mean, std, gen)))
    values_t = torch.tensor(values)
    return {"energy_fit_mean": float(values_t.mean()), "energy_fit_std": float(values_t.std())}


def sanity_stats(x: Tensor, mean: float, std: float, fresh: Tensor | None = None) -> dict[str, float]:
    """Moments of ``x [N, D]`` against N(mean, std² I).

    Returns ``grand_mean`` (over all networks and coordinates), ``max_abs_mean_error`` (worst coordinate mean),
    ``std_ratio_median/min/max`` (per-coordinate std / ``std``), ``frac_std_within_10pct``,
    ``net_mean_std`` (std of per-network means; the target's is ``std/sqrt(D)``), ``net_mean_std_ratio`` (their
    ratio; 1 for the target) and, when ``fresh [M, D]`` target draws are given, ``energy_distance`` to them."""
    x = x.double()
    ratio = x.std(dim=0) / std
    stats = {
        "networks": x.shape[0],
        "grand_mean": float(x.mean()),
        "max_abs_mean_error": float((x.mean(dim=0) - mean).abs().max()),
        "std_ratio_median": float(ratio.median()),
        "std_ratio_min": float(ratio.min()),
        "std_ratio_max": float(ratio.max()),
        "frac_std_within_10pct": float(((ratio - 1).abs() <= 0.1).double().mean()),
        "net_mean_std": float(x.mean(dim=1).std()),
        "net_mean_std_target": std / math.sqrt(x.shape[1]),
        "net_mean_std_ratio": net_mean_std_ratio(x, std),
    }
    if fresh is not None:
        stats["energy_distance"] = energy_distance(x, fresh)
    return stats


def sanity_figure(sets: dict[str, Tensor], mean: float, std: float, paths, table: pd.DataFrame | None = None) -> None:
    """Histograms of every named set ``[N, D]`` — (a) per-network mean weight, (b) per-coordinate std — and, with
    ``table`` (rows of :func:`sanity_stats` plus the floor columns, in the order of ``sets``), (c) each set's
    energy distance to fresh target draws against the noise floor (mean ± 2 std) of its size."""
    panels = 3 if table is not None else 2
    fig, axes = figure(panels, 1, width=3.4, height=2.6)
    ax_mean, ax_std = axes[0][:2]
    for i, (name, x) in enumerate(sets.items()):
        ratio = net_mean_std_ratio(x, std)
        style = dict(bins=40, histtype="step", density=True, lw=1.3, color=color_for(i))
        ax_mean.hist(x.mean(dim=1).numpy(), label=f"{name} (spread {ratio:.2f}×)", **style)
        ax_std.hist(x.std(dim=0).numpy(), label=name, **style)
    ax_mean.axvline(mean, color="0.3", ls="--", lw=0.8, label=f"target mean {mean:g}")
    ax_std.axvline(std, color="0.3", ls="--", lw=0.8, label=f"target std {std:g}")
    ax_mean.set(xlabel="mean weight of a network", ylabel="density", title="(a) per-network weight means")
    ax_std.set(xlabel="std of one weight coordinate", ylabel="density", title="(b) per-coordinate stds")
    for ax in (ax_mean, ax_std):
        ax.legend(frameon=False, loc="upper left", fontsize=7)
    if table is not None:
        ax = axes[0][2]
        for i, row in enumerate(table.itertuples()):
            lo = row.energy_floor_mean - 2 * row.energy_floor_std
            hi = row.energy_floor_mean + 2 * row.energy_floor_std
            ax.fill_between([i - 0.4, i + 0.4], lo, hi, color="0.85", lw=0)
            if hasattr(row, "energy_fit_mean"):
                ax.plot([i - 0.4, i + 0.4], [row.energy_fit_mean] * 2, color="0.3", ls=":", lw=1.0)
            ax.plot([i], [row.energy_distance], "o", color=color_for(i))
        ax.axhline(0.0, color="0.3", lw=0.6)
        ax.set_xticks(range(len(table)), list(table["source"]), rotation=30, ha="right", fontsize=7)
        ax.set(ylabel="energy distance to fresh target draws",
               title="(c) energy distance (grey: floor ± 2σ;\ndotted: Gaussian fitted to the training draws)")
    save(fig, paths)


def sanity_stage(job: StageJob) -> None:
    """Figure ``gaussian_sanity.pdf``/``.png`` and table ``gaussian_sanity.csv`` from the target draws and every
    candidate sampler of the flows' candidate files (``inputs['samples']``: one path or a list).

    Each set is compared with as many fresh target draws (seeded from the experiment's seed) and with the noise
    floor of its size (:func:`noise_floor`)."""
    cfg = job.params["cfg"]
    target = load_dataset(cfg["dataset"], seed=cfg["seed"]).weight_target
    mean, std = float(target["mean"]), float(target["std"])
    sets = {"target draws": load_weights(job.inputs["target"]).weights}
    paths = job.inputs["samples"]
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    for path in paths:
        for name, wf in load_candidates(path, layer_sizes=cfg["layer_sizes"]).items():
            options = wf.metadata.get("sampler_options", {})
            prefix = f"{wf.metadata.get('flow', Path(path).parent.name)}: " if len(paths) > 1 else ""
            sets[f"{prefix}{name} (ε = {options.get('noise', 0.0):g})"] = wf.weights
    gen = generator(cfg["seed"], "gaussian-sanity")
    floors: dict[int, dict[str, float]] = {}
    rows = []
    for name, x in sets.items():
        n, dim = x.shape
        if n not in floors:
            floors[n] = {**noise_floor(n, dim, mean, std, gen=gen),
                         **fitted_reference(sets["target draws"], n, gen=gen, mean=mean, std=std)}
        rows.append({"source": name, **sanity_stats(x, mean, std, fresh=target_draws(n, dim, mean, std, gen)),
                     **floors[n]})
    table = pd.DataFrame(rows)
    out_csv = job.output_path("csv")
    table.to_csv(out_csv, index=False)
    log.info("Gaussian sanity:\n%s", table.to_string(index=False))
    sanity_figure(sets, mean, std, [job.output_path("pdf"), job.output_path("png")], table=table)

"""Figure ``canonical_geometry``: how spread canonical networks are on the product of spheres, per layer,
without and with permutation alignment, and the scale factors canonicalization removed.

The figure reads networks in the thesis' canonical form (``last_layer='sphere'``), where every layer, the last
included, is a product of spheres and has angles."""

from __future__ import annotations

import logging
from typing import Mapping

import numpy as np
import torch
from torch import Tensor

from weightflow.io import WeightsFile, load_weights
from weightflow.manifold import ProductSpheres
from weightflow.plots.style import color_for, figure, save
from weightflow.runner import StageJob

__all__ = ["layer_angles", "plot_canonical_geometry", "geometry_stage"]

log = logging.getLogger(__name__)


def layer_angles(canonical: Tensor, target: Tensor, geometry: ProductSpheres) -> Tensor:
    """``[N, L]``: per network of ``canonical [N, D]`` and per layer, the RMS over the layer's sphere factors of
    the angle (rad) between the network's factor and the same factor of ``target [D]`` (geodesic distance on
    the unit sphere; the last layer's is divided by its radius)."""
    radii = torch.tensor(geometry.factor_radii, dtype=canonical.dtype)
    angles = geometry.factor_norms(geometry.log(canonical, target.expand_as(canonical))) / radii  # [N, K]
    layers = geometry.factor_layers
    num_layers = geometry.layout.num_layers
    sq = torch.zeros(canonical.shape[0], num_layers, dtype=canonical.dtype).index_add_(1, layers, angles**2)
    counts = torch.bincount(layers, minlength=num_layers).to(canonical.dtype)
    return (sq / counts).sqrt()


def _boxes(ax, groups: Mapping[str, list[np.ndarray]], num_layers: int) -> None:
    """Grouped box plots: one group of boxes per layer, one colour per entry of ``groups``."""
    width = 0.8 / max(len(groups), 1)
    for i, (label, per_layer) in enumerate(groups.items()):
        pos = np.arange(1, num_layers + 1) - 0.4 + width * (i + 0.5)
        ax.boxplot(per_layer, positions=pos, widths=width * 0.85, patch_artist=True, showfliers=False,
                   boxprops=dict(facecolor=color_for(i), alpha=0.6, edgecolor=color_for(i)),
                   medianprops=dict(color="black", linewidth=1), whiskerprops=dict(color=color_for(i)),
                   capprops=dict(color=color_for(i)))
        ax.plot([], [], color=color_for(i), linewidth=6, alpha=0.6, label=label)
    ax.set_xticks(range(1, num_layers + 1), [f"{l}" for l in range(1, num_layers + 1)])
    ax.set_xlim(0.5, num_layers + 0.5)
    ax.set_xlabel("layer")


def _angle_groups(files: Mapping[str, WeightsFile], geometry: ProductSpheres) -> tuple[dict, str]:
    """Per-layer angle samples for panel (a) and the panel's y label.

    With aligned sets: for each reference, the angles of every other network to the reference network
    (row ``metadata['reference_row']``) before (``none``) and after alignment.  Without: the angles of the
    unaligned networks to their extrinsic mean (mean of the canonical points projected onto the manifold).
    """
    num_layers = geometry.layout.num_layers
    unaligned = files["none"].weights.double()
    groups = {}
    for name, wf in files.items():
        if name == "none":
            continue
        row = int(wf.metadata["reference_row"])
        others = torch.arange(len(wf)) != row
        for label, flat in (("unaligned", unaligned), ("aligned", wf.weights.double())):
            angles = layer_angles(flat[others], flat[row], geometry).numpy()
            groups[f"{name}: {label}"] = [angles[:, l] for l in range(num_layers)]
    if groups:
        return groups, "RMS angle to the reference (rad)"
    mean = geometry.project(unaligned.mean(0))
    angles = layer_angles(unaligned, mean, geometry).numpy()
    return {"unaligned": [angles[:, l] for l in range(num_layers)]}, "RMS angle to the ensemble mean (rad)"


def plot_canonical_geometry(files: Mapping[str, WeightsFile], *, last_radius: float | None, title: str = ""):
    """Two panels of canonical networks (``files``: reference name -> canonical weights; ``none`` = unaligned).

    Left: per layer, the RMS over the layer's sphere factors of the geodesic angle to the reference network,
    before and after alignment onto it (:func:`_angle_groups`).  Right: per layer, the scale factors removed
    by canonicalization (hidden: incoming norms ``|w_k|``; last: ``|W_L|_F / R``) of the unaligned set.
    """
    if "none" not in files:
        raise ValueError(f"canonical_geometry needs the unaligned canonical weights ('none'), got {sorted(files)}")
    layout = files["none"].layout
    geometry = ProductSpheres(layout, last_radius=last_radius, last_layer="sphere")
    num_layers = layout.num_layers
    fig, axes = figure(ncols=2, width=3.5, height=2.8)
    ax = axes[0, 0]
    groups, ylabel = _angle_groups(files, geometry)
    for name, per_layer in groups.items():
        log.info("%s: median RMS angle per layer %s", name, [round(float(np.median(a)), 3) for a in per_layer])
    _boxes(ax, groups, num_layers)
    ax.axhline(np.pi / 2, color="0.4", linestyle=":", linewidth=1, label="π/2 (orthogonal)")
    ax.set_ylim(bottom=0)
    ax.set_ylabel(ylabel)
    ax.set_title("distance on the spheres, per layer")
    ax.legend(frameon=False, loc="lower left", fontsize=7)
    ax = axes[0, 1]
    scales = files["none"].extras
    per_layer = [np.log10(scales[f"scale.{l}"].double().clamp_min(1e-30).flatten().numpy()) for l in range(num_layers)]
    _boxes(ax, {"removed scale": per_layer}, num_layers)
    ax.set_ylabel("log10 removed scale factor")
    ax.set_title("hidden: |w_k|;  last layer: |W_L|_F / R")
    fig.suptitle(f"{title}: {len(files['none'])} canonical networks, {geometry.num_factors} sphere factors each")
    return fig


def geometry_stage(job: StageJob) -> None:
    """Snakemake stage: ``results/{experiment}/figures/canonical_geometry.pdf`` (+ ``.png``) from the canonical
    weights of every input (named by reference; ``none`` = unaligned)."""
    cfg = job.params["cfg"]
    files = {name: load_weights(path, layer_sizes=cfg["layer_sizes"]) for name, path in job.inputs.items()}
    fig = plot_canonical_geometry(files, last_radius=cfg.get("canonical", {}).get("last_radius"), title=cfg["name"])
    save(fig, [job.output_path("pdf"), job.output_path("png")])

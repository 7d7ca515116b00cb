"""Loss barriers along linear paths between networks, batched over pairs and interpolation points.

For a pair ``(θ_a, θ_b)`` and ``λ ∈ [0, 1]`` the barrier is the loss on the linear path minus the linear
interpolation of the endpoint losses,

    B(λ) = L((1 − λ) θ_a + λ θ_b) − [(1 − λ) L(θ_a) + λ L(θ_b)],

with ``L`` the mean cross-entropy (nats) on a data split.  Reported per pair: the midpoint barrier ``B(1/2)``
(the thesis' number) and the maximum barrier ``max_λ B(λ)`` over the grid.  All ``P × G`` interpolated
networks of a call go through :func:`weightflow.weights.forward` in chunks of networks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import pandas as pd
import torch
from torch import Tensor

from weightflow.data import load_experiment_data
from weightflow.io import WeightsFile, WeightsFileError, load_weights
from weightflow.utils import generator, resolve_device
from weightflow.weights import MLPLayout, as_layout, cross_entropy

__all__ = ["BarrierResult", "lambda_grid", "path_losses", "loss_barriers", "sample_pairs", "barrier_table",
           "barriers_stage"]

log = logging.getLogger(__name__)


@dataclass
class BarrierResult:
    """Barriers of ``P`` pairs on a grid of ``G`` interpolation points."""

    lambdas: Tensor  # [G], contains 0, 1/2 and 1
    losses: Tensor  # [P, G] loss on the path
    barriers: Tensor  # [P, G] loss minus the endpoints' linear interpolation

    @property
    def midpoint(self) -> Tensor:
        """``B(1/2)`` per pair → ``[P]``."""
        return self.barriers[:, int(torch.nonzero(self.lambdas == 0.5)[0])]

    @property
    def maximum(self) -> Tensor:
        """``max_λ B(λ)`` per pair → ``[P]`` (≥ 0, since ``B(0) = B(1) = 0``)."""
        return self.barriers.max(dim=1).values


def lambda_grid(points: int) -> Tensor:
    """``points`` evenly spaced values in ``[0, 1]``, plus ``1/2`` if missing → sorted float64 ``[G]``."""
    if points < 2:
        raise ValueError(f"a barrier grid needs at least 2 points (0 and 1), got {points}")
    return torch.unique(torch.cat([torch.linspace(0, 1, points, dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)]))


def path_losses(
    theta_a: Tensor,
    theta_b: Tensor,
    layer_sizes: Sequence[int] | MLPLayout,
    x: Tensor,
    y: Tensor,
    lambdas: Tensor,
    *,
    chunk_size: int = 4096,
) -> Tensor:
    """Mean cross-entropy of ``(1 − λ) θ_a + λ θ_b`` on ``(x, y)`` for every pair and ``λ`` → ``[P, G]``.

    ``theta_a``, ``theta_b``: ``[P, D]``; ``lambdas``: ``[G]``.  Works in chunks of ``chunk_size`` networks.
    """
    layout = as_layout(layer_sizes)
    lam = lambdas.to(theta_a)
    pairs, grid = theta_a.shape[0], lam.shape[0]
    out = torch.empty(pairs * grid, dtype=theta_a.dtype, device=theta_a.device)
    pair_idx = torch.arange(pairs, device=theta_a.device).repeat_interleave(grid)
    lam_all = lam.repeat(pairs).unsqueeze(-1)
    with torch.no_grad():
        for start in range(0, pairs * grid, chunk_size):
            sl = slice(start, start + chunk_size)
            idx = pair_idx[sl]
            nets = (1 - lam_all[sl]) * theta_a[idx] + lam_all[sl] * theta_b[idx]
            out[sl] = cross_entropy(nets, layout, x, y)
    return out.view(pairs, grid)


def loss_barriers(
    theta_a: Tensor,
    theta_b: Tensor,
    layer_sizes: Sequence[int] | MLPLayout,
    x: Tensor,
    y: Tensor,
    *,
    grid_points: int = 11,
    chunk_size: int = 4096,
) -> BarrierResult:
    """Loss barriers of the pairs ``(theta_a[i], theta_b[i])`` (``[P, D]`` each) on ``(x, y)``; see the module docstring."""
    if theta_a.shape != theta_b.shape:
        raise ValueError(f"pair endpoints must have equal shapes, got {list(theta_a.shape)} and {list(theta_b.shape)}")
    lambdas = lambda_grid(grid_points)
    losses = path_losses(theta_a, theta_b, layer_sizes, x, y, lambdas, chunk_size=chunk_size)
    lam = lambdas.to(losses)
    chord = (1 - lam) * losses[:, :1] + lam * losses[:, -1:]
    return BarrierResult(lambdas=lambdas, losses=losses, barriers=losses - chord)


def sample_pairs(groups: Tensor, num: int, *, generator: torch.Generator | None = None) -> Tensor:
    """``min(num, #pairs)`` distinct unordered pairs of rows from different groups (e.g. runs) → long ``[P, 2]``.

    ``groups``: ``[N]`` group label per row.  Pairs are drawn uniformly without replacement.
    """
    i, j = torch.triu_indices(groups.shape[0], groups.shape[0], offset=1)
    keep = groups[i] != groups[j]
    candidates = torch.stack([i[keep], j[keep]], dim=1)
    if candidates.shape[0] == 0:
        raise ValueError("no pair of rows from different runs to compute barriers on (need at least 2 runs)")
    pick = torch.randperm(candidates.shape[0], generator=generator)[:num]
    return candidates[pick]


def barrier_table(
    unaligned: WeightsFile,
    aligned: WeightsFile,
    data,
    bcfg: dict[str, Any],
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> pd.DataFrame:
    """Barriers between the final weights of ``bcfg['pairs']`` seeded pairs of different runs, before and after alignment.

    One row per (split, state, pair) with ``state`` ∈ {unaligned, aligned}: rows/runs of both endpoints, endpoint
    losses, ``midpoint_barrier``, ``max_barrier`` and the barrier curve as columns ``barrier_{λ:.3f}``.
    ``unaligned`` and ``aligned`` must hold the same rows (the aligned file is the unaligned one permuted).  The pairs
    depend on ``seed`` only, so every reference of an experiment is scored on the same pairs.
    """
    final = torch.nonzero(unaligned.columns["final"] == 1).flatten()
    runs = unaligned.columns["run"][final]
    pairs = final[sample_pairs(runs, bcfg["pairs"], generator=generator(seed, "barriers"))]
    frames = []
    for split in bcfg["splits"]:
        x, y = (t.to(device) for t in data.split(split))
        for state, wf in (("unaligned", unaligned), ("aligned", aligned)):
            w = wf.weights.to(device)
            res = loss_barriers(w[pairs[:, 0]], w[pairs[:, 1]], wf.layout, x, y, grid_points=bcfg["grid_points"])
            frame = pd.DataFrame({
                "split": split, "state": state, "pair": range(len(pairs)),
                "row_a": pairs[:, 0].numpy(), "row_b": pairs[:, 1].numpy(),
                "run_a": unaligned.columns["run"][pairs[:, 0]].numpy(),
                "run_b": unaligned.columns["run"][pairs[:, 1]].numpy(),
                "loss_a": res.losses[:, 0].cpu().numpy(), "loss_b": res.losses[:, -1].cpu().numpy(),
                "midpoint_barrier": res.midpoint.cpu().numpy(), "max_barrier": res.maximum.cpu().numpy(),
            })
            curve = pd.DataFrame(res.barriers.cpu().numpy(), columns=[f"barrier_{lam:.3f}" for lam in res.lambdas.tolist()])
            frames.append(pd.concat([frame, curve], axis=1))
    return pd.concat(frames, ignore_index=True)


def barriers_stage(job) -> None:
    """Stage: ``inputs.ensemble`` + ``inputs.aligned`` → ``outputs.csv`` (:func:`barrier_table`)."""
    cfg = job.params["cfg"]
    reference = job.wildcards["reference"]
    unaligned = load_weights(job.inputs["ensemble"], layer_sizes=cfg["layer_sizes"])
    aligned = load_weights(job.inputs["aligned"], layer_sizes=cfg["layer_sizes"])
    if len(aligned) != len(unaligned) or not torch.equal(aligned.columns.get("run", torch.empty(0)), unaligned.columns["run"]):
        raise WeightsFileError(
            f"{job.inputs['aligned']}: column 'run' does not match {job.inputs['ensemble']} "
            f"({len(aligned)} vs {len(unaligned)} rows); rebuild the aligned file"
        )
    device = resolve_device(cfg.get("device", "auto"))
    table = barrier_table(unaligned, aligned, load_experiment_data(cfg), cfg["alignment"]["barriers"],
                          seed=cfg.get("seed", 0), device=device)
    table.insert(0, "reference", reference)
    for (split, state), grp in table.groupby(["split", "state"], sort=False):
        log.info("%s %s %s: midpoint barrier %.4f ± %.4f, max barrier %.4f ± %.4f (%d pairs)", reference, split, state,
                 grp.midpoint_barrier.mean(), grp.midpoint_barrier.std(), grp.max_barrier.mean(),
                 grp.max_barrier.std(), len(grp))
    table.to_csv(job.output_path("csv"), index=False, float_format="%.6g")

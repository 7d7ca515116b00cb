"""Reference networks, aligning a whole weights file onto one, and the ``align`` pipeline stage.

Reference names (config ``alignment.references``):

* ``ref{k}`` — the final weights (column ``final == 1``) of run ``k``;
* ``medoid`` — the final-weights network ``r`` minimizing ``Σ_k ‖θ_r − π_k(θ_k)‖²`` over the other runs' final
  weights ``θ_k``, each weight-matched onto ``θ_r`` (the medoid under the permutation-aligned L2 distance).

The aligned file keeps every row, column and extra of the input and adds, per row, the extras ``perm.{h}``
(long ``[N, n_h]``: the permutation of hidden layer ``h`` that was applied, convention of
:mod:`weightflow.align.permutations`) and the column ``align_objective`` (the objective at the returned
permutation, see :func:`hard_objective`; ``l2`` for weight matching).  Its metadata records reference, reference_row, method, objective.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from weightflow.align.permutations import apply_permutations
from weightflow.align.sinkhorn import sinkhorn_rebasin
from weightflow.align.weight_matching import weight_matching
from weightflow.data import Dataset, load_experiment_data
from weightflow.io import WeightsFile, WeightsFileError, load_weights, save_weights
from weightflow.utils import generator, progress, resolve_device
from weightflow.weights import MLPLayout, as_layout, cross_entropy

__all__ = [
    "METHODS",
    "RND_LAMBDAS",
    "reference_row",
    "medoid_index",
    "hard_objective",
    "align",
    "align_weights_file",
    "align_stage",
]

log = logging.getLogger(__name__)

METHODS = ("weight_matching", "sinkhorn")
# Deterministic stand-in for E_{λ~U(0,1)} in the reported `rnd` objective: the 8-point midpoint rule.
RND_LAMBDAS = (torch.arange(8, dtype=torch.float64) + 0.5) / 8


def medoid_index(final: Tensor, layer_sizes: Sequence[int] | MLPLayout, *, seed: int = 0, max_pairs: int = 50_000) -> int:
    """Index (into ``final [R, D]``) of the network with the smallest summed aligned squared L2 distance to the others.

    All ``R²`` weight matchings run batched, ``max_pairs`` networks per call.
    """
    layout = as_layout(layer_sizes)
    num = final.shape[0]
    totals = torch.empty(num, dtype=torch.float64)
    per_call = max(1, max_pairs // num)
    gen = generator(seed, "align", "medoid")
    for start in progress(range(0, num, per_call), desc="medoid", leave=False):
        cand = torch.arange(start, min(num, start + per_call))
        refs = final[cand].repeat_interleave(num, dim=0)  # [c*R, D]
        nets = final.repeat(cand.numel(), 1)
        perms = weight_matching(refs, nets, layout, generator=gen)
        dist = (refs - apply_permutations(nets, layout, perms)).pow(2).sum(-1)
        totals[cand] = dist.view(cand.numel(), num).sum(-1).double().cpu()
    return int(torch.argmin(totals))


def reference_row(wf: WeightsFile, name: str, *, source: str | Path = "<weights>", seed: int = 0) -> int:
    """Row of ``wf`` holding reference ``name`` (``ref{k}`` or ``medoid``; module docstring).

    Raises:
        WeightsFileError: naming ``source`` and the field when the reference does not exist in the file.
    """
    for col in ("run", "final"):
        if col not in wf.columns:
            raise WeightsFileError(f"{source}: column '{col}' is missing; references need each run's final weights")
    final_rows = torch.nonzero(wf.columns["final"] == 1).flatten()
    runs = wf.columns["run"][final_rows]
    match = re.fullmatch(r"ref(\d+)", name)
    if match:
        k = int(match.group(1))
        hit = final_rows[runs == k]
        if hit.numel() == 0:
            raise WeightsFileError(
                f"{source}: reference {name!r} (alignment.references) needs the final weights of run {k}, but column "
                f"'run' has final weights for runs {runs.min().item()}..{runs.max().item()} only"
            )
        return int(hit[0])
    if name == "medoid":
        if final_rows.numel() == 0:
            raise WeightsFileError(f"{source}: column 'final' marks no row; the medoid needs final weights")
        return int(final_rows[medoid_index(wf.weights[final_rows], wf.layout, seed=seed)])
    raise ValueError(f"unknown reference {name!r} (alignment.references): use ref<k> (run k's final weights) or medoid")


def hard_objective(
    objective: str, reference: Tensor, aligned: Tensor, layout: MLPLayout, data=None, *, chunk_size: int = 4096
) -> Tensor:
    """Objective of aligned networks ``[N, D]`` → ``[N]``: ``l2`` ``‖θ_ref − θ‖²``; ``mid`` the training loss of the
    midpoint; ``rnd`` the training loss on the path averaged over :data:`RND_LAMBDAS` (on ``data``)."""
    if objective == "l2":
        return (reference - aligned).pow(2).sum(-1)
    x, y = data
    lambdas = torch.tensor([0.5]) if objective == "mid" else RND_LAMBDAS
    out = torch.zeros(aligned.shape[0], dtype=aligned.dtype, device=aligned.device)
    with torch.no_grad():
        for start in range(0, aligned.shape[0], chunk_size):
            sl = slice(start, start + chunk_size)
            ref = reference if reference.ndim == 1 else reference[sl]
            for lam in lambdas.tolist():
                out[sl] += cross_entropy((1 - lam) * ref + lam * aligned[sl], layout, x, y) / len(lambdas)
    return out


def align(
    reference: Tensor,
    flat: Tensor,
    layer_sizes: Sequence[int] | MLPLayout,
    acfg: dict[str, Any],
    *,
    data: tuple[Tensor, Tensor] | None = None,
    seed: int = 0,
    key: str = "",
) -> tuple[list[Tensor], Tensor]:
    """Align ``flat [N, D]`` onto ``reference [D]`` with the ``alignment`` config ``acfg`` → ``(perms, objective [N])``.

    Weight matching first; for ``method: sinkhorn`` its solution initializes Sinkhorn re-basin, run in chunks of
    ``acfg['chunk_size']`` networks, and each network keeps whichever of the two permutations has the lower
    objective (so Sinkhorn never ends worse than its initialization).  Task objectives of hard permutations are
    scored on a fixed seeded subset of at most ``acfg['eval_samples']`` training examples.
    """
    layout = as_layout(layer_sizes)
    method, objective = acfg["method"], acfg["objective"]
    if method not in METHODS:
        raise ValueError(f"alignment.method: unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "weight_matching" and objective != "l2":
        raise ValueError(f"alignment.objective: weight_matching minimizes l2 only, got {objective!r} (use method: sinkhorn)")
    if data is not None and data[0].shape[0] > acfg["eval_samples"]:  # a fixed seeded subset scores hard permutations
        keep = torch.randperm(data[0].shape[0], generator=generator(seed, "align", "eval"))[: acfg["eval_samples"]]
        eval_data = (data[0][keep.to(data[0].device)], data[1][keep.to(data[1].device)])
    else:
        eval_data = data
    perms = weight_matching(reference, flat, layout, generator=generator(seed, "align", key, "wm"), max_sweeps=acfg["max_sweeps"])
    value = hard_objective(objective, reference, apply_permutations(flat, layout, perms), layout, eval_data)
    if method == "weight_matching":
        return perms, value
    gen = generator(seed, "align", key, "sinkhorn")
    chunk = acfg["chunk_size"]
    for start in progress(range(0, flat.shape[0], chunk), desc="sinkhorn chunks", leave=False):
        sl = slice(start, start + chunk)
        init = [p[sl] for p in perms]
        soft = sinkhorn_rebasin(
            reference, flat[sl], layout, objective=objective, init=init, tau=acfg["tau"],
            iterations=acfg["sinkhorn_iterations"], steps=acfg["steps"], lr=acfg["lr"], data=data,
            batch_size=acfg["batch_size"], generator=gen,
        )
        new_value = hard_objective(objective, reference, apply_permutations(flat[sl], layout, soft), layout, eval_data)
        better = new_value < value[sl]
        for p, s in zip(perms, soft):
            p[sl] = torch.where(better.unsqueeze(-1), s, p[sl])
        value[sl] = torch.where(better, new_value, value[sl])
        log.info("sinkhorn-%s chunk %d: %d of %d networks improved on weight matching",
                 objective, start // chunk, int(better.sum()), better.numel())
    return perms, value


def align_weights_file(
    wf: WeightsFile,
    reference: str,
    acfg: dict[str, Any],
    *,
    data: Dataset | None = None,
    seed: int = 0,
    source: str | Path = "<weights>",
    device: torch.device | str = "cpu",
) -> WeightsFile:
    """Every row of ``wf`` aligned onto reference ``reference`` (module docstring for the added fields)."""
    row = reference_row(wf, reference, source=source, seed=seed)
    layout = wf.layout
    flat = wf.weights.to(device)
    train = None
    if acfg["method"] == "sinkhorn" and acfg["objective"] != "l2":
        if data is None:
            raise ValueError(f"alignment.objective {acfg['objective']!r} needs the training data")
        train = (data.x_train.to(device), data.y_train.to(device))
    perms, value = align(flat[row], flat, layout, acfg, data=train, seed=seed, key=reference)
    aligned = apply_permutations(flat, layout, perms)
    extras = dict(wf.extras)
    extras.update({f"perm.{h}": p.cpu() for h, p in enumerate(perms)})
    columns = dict(wf.columns)
    columns["align_objective"] = value.detach().cpu()
    objective = acfg["objective"] if acfg["method"] == "sinkhorn" else "l2"
    metadata = dict(wf.metadata, reference=reference, reference_row=row, reference_run=int(wf.columns["run"][row]),
                    method=acfg["method"], objective=objective)
    return WeightsFile(aligned.cpu(), wf.layer_sizes, columns=columns, extras=extras, metadata=metadata)


def align_stage(job) -> None:
    """Stage: ``inputs.weights`` (ensemble file) → ``outputs.weights`` aligned onto ``wildcards.reference``."""
    cfg = job.params["cfg"]
    acfg, reference = cfg["alignment"], job.wildcards["reference"]
    source = job.inputs["weights"]
    wf = load_weights(source, layer_sizes=cfg["layer_sizes"])
    needs_data = acfg["method"] == "sinkhorn" and acfg["objective"] != "l2"
    data = load_experiment_data(cfg) if needs_data else None
    device = resolve_device(cfg.get("device", "auto"))
    log.info("aligning %d networks of %s onto %s (%s, %s) on %s", len(wf), source, reference, acfg["method"],
             acfg["objective"], device)
    out = align_weights_file(wf, reference, acfg, data=data, seed=cfg.get("seed", 0), source=source, device=device)
    log.info("reference row %d (run %d); mean objective %.4g", out.metadata["reference_row"],
             out.metadata["reference_run"], out.columns["align_objective"].mean().item())
    save_weights(job.output_path("weights"), out)

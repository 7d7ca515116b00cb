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
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from weightflow.align.permutations import apply_permutations, permuted_layers
from weightflow.align.sinkhorn import sinkhorn_rebasin
from weightflow.align.weight_matching import weight_matching
from weightflow.data import Dataset, load_experiment_data
from weightflow.io import WeightsFile, WeightsFileError, load_weights, save_weights
from weightflow.names import parse_reference
from weightflow.utils import generator, progress, resolve_device
from weightflow.weights import MLPLayout, as_layout, unflatten

__all__ = [
    "METHODS",
    "RND_LAMBDAS",
    "reference_row",
    "medoid_index",
    "hard_objective",
    "permutation_objectives",
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
    kind, k = parse_reference(name)  # a ValueError lists the reference kinds
    if kind == "ref":
        hit = final_rows[runs == k]
        if hit.numel() == 0:
            raise WeightsFileError(
                f"{source}: reference {name!r} (alignment.references) needs the final weights of run {k}, but column "
                f"'run' has final weights for runs {runs.min().item()}..{runs.max().item()} only"
            )
        return int(hit[0])
    if kind == "medoid":
        if final_rows.numel() == 0:
            raise WeightsFileError(f"{source}: column 'final' marks no row; the medoid needs final weights")
        return int(final_rows[medoid_index(wf.weights[final_rows], wf.layout, seed=seed)])
    raise AssertionError(f"reference kind {kind!r} of weightflow.names.REFERENCES has no row rule here")


# Cache-sized blocks for the task objectives on shared inputs: networks × hidden width × examples of one block
# (float32 elements: 4 MiB); the elementwise work on a block costs more than its matrix product once it leaves
# the cache.
_BLOCK_ELEMENTS = 2**20
_SAMPLE_CHUNK = 1024


def hard_objective(
    objective: str, reference: Tensor, aligned: Tensor, layout: MLPLayout, data=None, *, chunk_size: int = 4096
) -> Tensor:
    """Objective of aligned networks ``[N, D]`` → ``[N]``: ``l2`` ``‖θ_ref − θ‖²``; ``mid`` the training loss of the
    midpoint; ``rnd`` the training loss on the path averaged over :data:`RND_LAMBDAS` (on ``data``).  Memory is
    bounded whatever ``N`` (:func:`permutation_objectives`)."""
    return permutation_objectives(objective, reference, aligned, layout, [None], data, chunk_size=chunk_size)[0]


def permutation_objectives(
    objective: str,
    reference: Tensor,
    flat: Tensor,
    layout: MLPLayout,
    perm_sets: Sequence[Sequence[Tensor] | None],
    data=None,
    *,
    chunk_size: int = 4096,
) -> list[Tensor]:
    """``[hard_objective(objective, reference, apply_permutations(flat, perms), ...) for perms in perm_sets]``
    (``None`` = no permutation), without building the permuted networks.

    The task objectives (``mid``, ``rnd``) share one product of the unpermuted input layer with the data among all
    permutation sets and interpolation points: a permutation only reorders the pre-activations ``W x + b`` of the
    first layer, and interpolating the first layer's weights interpolates its pre-activations.  Networks are taken
    ``chunk_size`` at a time, for the task objectives in blocks of (networks × hidden width × 1024 examples) of
    4 MiB, so that the elementwise work stays in the cache."""
    num = flat.shape[0]
    outs = [torch.zeros(num, dtype=flat.dtype, device=flat.device) for _ in perm_sets]
    with torch.no_grad():
        if objective == "l2":
            for start in range(0, num, chunk_size):
                sl = slice(start, start + chunk_size)
                ref = reference if reference.ndim == 1 else reference[sl]
                for out, perms in zip(outs, perm_sets):
                    part = flat[sl] if perms is None else apply_permutations(flat[sl], layout, [p[sl] for p in perms])
                    out[sl] = (ref - part).pow(2).sum(-1)
            return outs
        x, y = data
        lambdas = [0.5] if objective == "mid" else RND_LAMBDAS.tolist()
        width = layout.layer_sizes[1] if layout.num_layers > 1 else layout.num_classes
        per_chunk = max(1, min(chunk_size, _BLOCK_ELEMENTS // (width * min(x.shape[0], _SAMPLE_CHUNK))))
        for start in range(0, num, per_chunk):
            sl = slice(start, start + per_chunk)
            part = flat[sl]
            ref_layers = unflatten(reference if reference.ndim == 1 else reference[sl], layout)
            layers = unflatten(part, layout)
            w1 = layers[0][0].reshape(-1, layout.num_features)  # one copy per chunk of networks
            rests = [unflatten(part, layout)[1:] if perms is None
                     else permuted_layers(part, layout, [p[sl] for p in perms], start=1) for perms in perm_sets]
            for s0 in range(0, x.shape[0], _SAMPLE_CHUNK):
                xc, yc = x[s0:s0 + _SAMPLE_CHUNK], y[s0:s0 + _SAMPLE_CHUNK]
                pre = torch.addmm(layers[0][1].reshape(-1, 1), w1, xc.T).view(part.shape[0], -1, xc.shape[0])
                pre_ref = torch.matmul(ref_layers[0][0], xc.T) + ref_layers[0][1].unsqueeze(-1)
                labels = yc.view(1, 1, -1).expand(part.shape[0], 1, -1)
                for out, perms, rest in zip(outs, perm_sets, rests):
                    first = pre if perms is None else pre.gather(1, perms[0][sl].unsqueeze(-1).expand_as(pre))
                    for lam in lambdas:
                        h = torch.lerp(pre_ref, first, lam)  # [B, n1, S]: the interpolated network's pre-activations
                        for (wr, br), (w, b) in zip(ref_layers[1:], rest):
                            h = torch.baddbmm(torch.lerp(br, b, lam).unsqueeze(-1), torch.lerp(wr, w, lam), h.relu_())
                        top = h.amax(1, keepdim=True)  # logsumexp over the classes (dim 1; torch's is slow there)
                        lse = (h - top).exp_().sum(1).log_() + top.squeeze(1)
                        out[sl] += (lse - h.gather(1, labels).squeeze(1)).sum(-1) / (x.shape[0] * len(lambdas))
    return outs


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

    The networks are aligned independently, ``acfg['chunk_size']`` at a time (memory is bounded by the chunk, not
    by ``N``).  Weight matching first; for ``method: sinkhorn`` its solution initializes Sinkhorn re-basin and each
    network keeps whichever of the two permutations has the lower objective (so Sinkhorn never ends worse than its
    initialization).  Task objectives of hard permutations are scored on a fixed seeded subset of at most
    ``acfg['eval_samples']`` training examples.  Weight matching restarts its seeded stream of layer orders in every
    chunk, so its result for a network does not depend on the chunk size.
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
    num, chunk = flat.shape[0], acfg["chunk_size"]
    perms = [torch.empty(num, n, dtype=torch.long, device=flat.device) for n in layout.hidden_sizes]
    value = torch.empty(num, dtype=flat.dtype, device=flat.device)
    gen = generator(seed, "align", key, "sinkhorn")
    improved = 0
    for start in progress(range(0, num, chunk), desc=f"align ({method})", leave=False):
        sl = slice(start, start + chunk)
        part = flat[sl]
        found = weight_matching(reference, part, layout, generator=generator(seed, "align", key, "wm"),
                                max_sweeps=acfg["max_sweeps"])
        if method == "weight_matching":
            (found_value,) = permutation_objectives(objective, reference, part, layout, [found], eval_data)
        else:
            soft = sinkhorn_rebasin(
                reference, part, layout, objective=objective, init=found, tau=acfg["tau"],
                iterations=acfg["sinkhorn_iterations"], steps=acfg["steps"], lr=acfg["lr"], data=data,
                batch_size=acfg["batch_size"], generator=gen,
            )
            found_value, new_value = permutation_objectives(objective, reference, part, layout, [found, soft],
                                                            eval_data)
            better = new_value < found_value
            found = [torch.where(better.unsqueeze(-1), s, p) for p, s in zip(found, soft)]
            found_value = torch.where(better, new_value, found_value)
            improved += int(better.sum())
            log.info("sinkhorn-%s chunk %d: %d of %d networks improved on weight matching",
                     objective, start // chunk, int(better.sum()), better.numel())
        for p, f in zip(perms, found):
            p[sl] = f
        value[sl] = found_value
    if method == "sinkhorn":
        log.info("sinkhorn-%s: %d of %d networks improved on weight matching", objective, improved, num)
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
    aligned = torch.empty(wf.weights.shape, dtype=wf.weights.dtype)  # filled chunk by chunk: no [N, D] temporaries
    for start in range(0, len(wf), acfg["chunk_size"]):
        sl = slice(start, start + acfg["chunk_size"])
        aligned[sl] = apply_permutations(flat[sl], layout, [p[sl] for p in perms]).cpu()
    extras = dict(wf.extras)
    extras.update({f"perm.{h}": p.cpu() for h, p in enumerate(perms)})
    columns = dict(wf.columns)
    columns["align_objective"] = value.detach().cpu()
    objective = acfg["objective"] if acfg["method"] == "sinkhorn" else "l2"
    metadata = dict(wf.metadata, reference=reference, reference_row=row, reference_run=int(wf.columns["run"][row]),
                    method=acfg["method"], objective=objective)
    return WeightsFile(aligned, wf.layer_sizes, columns=columns, extras=extras, metadata=metadata)


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

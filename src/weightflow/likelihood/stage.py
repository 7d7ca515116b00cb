"""The ``likelihood`` stage: log-likelihoods of held-out, generated, other-flow and prior networks under a flow.

Writes ``results/{experiment}/flows/{flow}/loglik.csv`` with one row per network and estimator:

==============  =================================================================================================
column          meaning
==============  =================================================================================================
flow            the flow whose density is evaluated
source          ``holdout`` (snapshots of the ensemble runs held out of the flow's training), ``generated`` (the
                flow's own samples: its unguided sampler selected on the validation split), ``other_flow``
                (the own samples of another flow of the same representation — raw weights, or canonical weights
                of the same form), ``prior`` (fresh draws from the flow's prior p0)
source_flow     the flow that generated the network (generated / other_flow rows)
row, run        row in the source file (and ensemble run id of held-out snapshots)
logp            ``log p_{t_start}(x)`` in nats (Hutchinson: mean over the probes)
logp_se         standard error over the probes (0 for exact)
prior_logp      ``log p0(x(0))`` at the end of the backward trajectory
estimator       ``exact`` or ``hutchinson``; ``probes``, ``probe`` its probe count and kind
nfe, seconds    field evaluations per trajectory; wall-clock seconds per network (batch time / batch size)
method ... t_s  solver, steps, time grid and the time ``t_start = 1 - δ`` at which the density is evaluated
density         the reference measure (see :mod:`weightflow.likelihood.flows`)
==============  =================================================================================================

The first ``exact_networks`` held-out networks are evaluated with the exact divergence as well; their
trajectories are the same as the Hutchinson ones (the state never depends on the probes), so the two
estimates differ only by the Hutchinson noise.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

from weightflow.flow import load_flow
from weightflow.flow.samples import load_samples
from weightflow.io import load_weights
from weightflow.likelihood.flows import LikelihoodSettings, density_measure, flow_log_likelihood
from weightflow.runner import StageJob
from weightflow.utils import generator, resolve_device

__all__ = ["likelihood_stage"]

log = logging.getLogger(__name__)


def _subset(n: int, k: int, gen: torch.Generator) -> Tensor:
    """``min(n, k)`` sorted row indices drawn without replacement."""
    return torch.randperm(n, generator=gen)[:k].sort().values


def _networks(job: StageJob, flow, settings: LikelihoodSettings, seed: int,
              flow_id: str) -> tuple[Tensor, pd.DataFrame]:
    """All networks to score, ``[N, D]``, and their ``source, source_flow, row, run`` columns."""
    layer_sizes = list(flow.layout.layer_sizes)
    k = settings.networks
    blocks, meta = [], []

    data = load_weights(job.inputs["data"], layer_sizes=layer_sizes)
    held = torch.isin(data.columns["run"], torch.tensor(flow.holdout_runs, dtype=data.columns["run"].dtype))
    rows = held.nonzero().squeeze(1)
    if len(rows) == 0:
        log.warning("flow %s has no held-out runs (flow.holdout_fraction = 0): no holdout rows", flow_id)
    rows = rows[_subset(len(rows), k, generator(seed, "likelihood", flow_id, "holdout"))]
    blocks.append(data.weights[rows])
    meta.append(pd.DataFrame({"source": "holdout", "source_flow": "", "row": rows.numpy(),
                              "run": data.columns["run"][rows].numpy()}))

    def as_list(value) -> list:
        return [value] if isinstance(value, (str, Path)) else list(value)

    others = list(zip(as_list(job.inputs.get("others", [])), as_list(job.inputs.get("other_selections", []))))
    per_other = max(1, k // max(1, len(others)))
    for name, (candidates, selection) in [("generated", (job.inputs["samples"], job.inputs["selection"]))] + [
            ("other_flow", pair) for pair in others]:
        wf = load_samples(candidates, selection, "main", layer_sizes=layer_sizes)
        take = min(k, len(wf)) if name == "generated" else min(per_other, len(wf))
        rows = _subset(len(wf), take, generator(seed, "likelihood", flow_id, name, wf.metadata["flow"]))
        blocks.append(wf.weights[rows])
        meta.append(pd.DataFrame({"source": name, "source_flow": wf.metadata["flow"], "row": rows.numpy(),
                                  "run": -1}))

    prior = flow.prior.sample_prior(k, generator=generator(seed, "likelihood", flow_id, "prior"))
    blocks.append(prior.cpu())
    meta.append(pd.DataFrame({"source": "prior", "source_flow": "", "row": range(k), "run": -1}))
    return torch.cat(blocks), pd.concat(meta, ignore_index=True)


def _rows(meta: pd.DataFrame, res, settings: LikelihoodSettings, flow_id: str, density: str) -> pd.DataFrame:
    n = len(meta)
    out = meta.copy()
    out.insert(0, "flow", flow_id)
    out["logp"] = res.logp.double().numpy()
    out["logp_se"] = res.logp_se.double().numpy()
    out["prior_logp"] = res.prior_logp.double().numpy()
    out["estimator"] = res.estimator
    out["probes"] = res.probes
    out["probe"] = settings.probe if res.estimator == "hutchinson" else "basis"
    out["nfe"] = res.nfe
    out["seconds"] = res.seconds / n
    out["method"] = settings.method
    out["steps"] = settings.steps
    out["grid"] = settings.grid
    out["t_start"] = res.t_start
    out["density"] = density
    return out


def likelihood_stage(job: StageJob) -> None:
    """Score held-out snapshots, own samples, other flows' samples and prior draws under flow ``{flow}``."""
    cfg, flow_id = job.params["cfg"], job.wildcards["flow"]
    settings = LikelihoodSettings.from_config(cfg["likelihood"])
    flow = load_flow(job.inputs["model"], device=resolve_device(cfg["device"]))
    x, meta = _networks(job, flow, settings, cfg["seed"], flow_id)
    density = density_measure(flow.prior)
    log.info("flow %s: scoring %d networks (%s) with %s divergence; density w.r.t. %s", flow_id, len(x),
             meta.source.value_counts().to_dict(), settings.divergence, density)
    res = flow_log_likelihood(flow, x, settings, generator=generator(cfg["seed"], "likelihood", flow_id, "probes"))
    tables = [_rows(meta, res, settings, flow_id, density)]
    log.info("%s: %.2f s per network, %d field evaluations per trajectory", settings.divergence,
             res.seconds / len(x), res.nfe)
    n_exact = min(settings.exact_networks, int((meta.source == "holdout").sum()))
    if settings.divergence != "exact" and n_exact > 0:
        exact = flow_log_likelihood(flow, x[:n_exact], settings, divergence="exact")
        tables.append(_rows(meta.iloc[:n_exact], exact, settings, flow_id, density))
        diff = (res.logp[:n_exact] - exact.logp).double()
        log.info("exact on %d held-out networks: %.1f s per network; Hutchinson - exact = %s (Hutchinson se %s)",
                 n_exact, exact.seconds / n_exact, diff.numpy().round(2), res.logp_se[:n_exact].numpy().round(2))
    table = pd.concat(tables, ignore_index=True)
    table.to_csv(job.output_path("csv"), index=False)
    summary = table.groupby(["source", "estimator"]).logp.agg(["count", "mean", "std"])
    log.info("flow %s log-likelihoods (nats):\n%s", flow_id, summary.to_string())

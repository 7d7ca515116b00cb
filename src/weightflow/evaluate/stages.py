"""Snakemake stages of the evaluation: score one source of networks, build the samples and samplers tables.

Sources (the ``{source}`` wildcard): ``ensemble`` (all snapshots: the flows' target), ``deep_ensemble`` (the final
weights of every run), ``sgld`` (the snapshots of the experiment named in ``evaluation.sgld``) and every flow id
(its samples from the main sampler, ``sampling.main``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch

from weightflow.data import load_experiment_data
from weightflow.evaluate.networks import EvaluationSettings, evaluate_networks, sampler_summary
from weightflow.evaluate.ood import ood_inputs
from weightflow.evaluate.steps import quality_vs_steps
from weightflow.flow.model_file import load_flow
from weightflow.evaluate.tables import (
    samplers_table,
    samples_table,
    source_label,
    write_samplers_table,
    write_table,
)
from weightflow.io import WeightsFile, WeightsFileError, load_weights
from weightflow.runner import StageJob
from weightflow.utils import derive_seed, generator, resolve_device

__all__ = ["load_split", "load_source", "evaluate_stage", "table_stage", "samplers_stage", "steps_stage"]

log = logging.getLogger(__name__)


def load_split(cfg: dict[str, Any]):
    """``(dataset, x, y)`` of the experiment's dataset and its ``evaluation.split``."""
    data = load_experiment_data(cfg)
    x, y = data.split(cfg["evaluation"]["split"])
    return data, x, y


def load_source(path: str, source: str, cfg: dict[str, Any]) -> WeightsFile:
    """The networks of ``source`` from weights file ``path``: all rows, or only ``final == 1`` for ``deep_ensemble``;
    at most ``evaluation.max_networks`` of them (a seeded random subset, in file order)."""
    wf = load_weights(path, layer_sizes=cfg["layer_sizes"])
    if source == "sgld":
        for key in ("dataset", "seed"):
            if wf.metadata.get(key) != cfg[key]:
                raise WeightsFileError(
                    f"{path}: metadata '{key}' is {wf.metadata.get(key)!r} but experiment {cfg['name']!r} has "
                    f"{cfg[key]!r}; evaluation.sgld must name an experiment with the same dataset and seed"
                )
    if source == "deep_ensemble":
        if "final" not in wf.columns:
            raise WeightsFileError(f"{path}: column 'final' is missing (needed for the deep ensemble)")
        wf = wf.select(wf.columns["final"] == 1)
    cap = cfg["evaluation"]["max_networks"]
    if len(wf) > cap:
        keep = torch.randperm(len(wf), generator=generator(cfg["seed"], "evaluation", "subset", source))[:cap]
        log.info("%s: scoring a random subset of %d of its %d networks", source, cap, len(wf))
        wf = wf.select(keep.sort().values)
    return wf


def evaluate_stage(job: StageJob) -> None:
    """``results/{e}/evaluation/{source}/``: ``networks.csv``, ``bma.csv``, ``reliability.csv``, ``summary.json``."""
    cfg = job.params["cfg"]
    source, section = job.wildcards["source"], cfg["evaluation"]
    device = resolve_device(cfg["device"])
    data, x, y = load_split(cfg)
    wf = load_source(job.inputs["weights"], source, cfg)
    x_ood = None
    if section["ood"] is not None:
        x_ood = ood_inputs(section["ood"], data, num=section["ood_samples"],
                           generator=generator(cfg["seed"], "evaluation", "ood"), root=cfg.get("data_root"))
    result = evaluate_networks(wf.weights.to(device), wf.layer_sizes, x, y, EvaluationSettings.from_config(cfg),
                               generator=generator(cfg["seed"], "evaluation", source), x_ood=x_ood)
    networks = result.networks
    for name, values in wf.columns.items():
        if name not in networks:
            networks.insert(len(networks.columns), name, values.numpy())
    networks.to_csv(job.output_path("networks"), index=False, float_format="%.6g")
    result.bma.to_csv(job.output_path("bma"), index=False, float_format="%.6g")
    result.reliability.to_csv(job.output_path("reliability"), index=False, float_format="%.6g")
    summary = {"source": source, "label": source_label(source), "split": section["split"], **result.summary}
    job.output_path("summary").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


def _write_tables(job: StageJob, kind: str, table, write, title: str, columns: str) -> None:
    """Write ``table`` with ``write`` to the job's ``csv`` and ``tex`` outputs, captioned
    ``"{title} on {experiment} ({split} split): mean ± std over networks of {columns}"`` and labelled
    ``tab:{experiment}-{kind}``; log it."""
    cfg = job.params["cfg"]
    caption = (f"{title} on {cfg['name'].replace('_', ' ')} ({cfg['evaluation']['split']} split): mean $\\pm$ std "
               f"over networks of {columns}")
    write(table, job.output_path("csv"), job.output_path("tex"), caption=caption, label=f"tab:{cfg['name']}-{kind}")
    log.info("%s table of %s:\n%s", kind, cfg["name"], table.to_string(index=False))


def table_stage(job: StageJob) -> None:
    """``results/{e}/tables/samples.csv`` and ``.tex`` from every source's ``summary.json``."""
    summaries = [json.loads(open(path).read()) for path in job.inputs["summaries"]]
    _write_tables(job, "samples", samples_table(summaries), write_table, "Sampled networks", (
        "accuracy and NLL (as sampled, and on the canonical last-layer scale), mean ECE, mean pairwise JS "
        "divergence and disagreement, and the BMA of $n$ networks."))


def samplers_stage(job: StageJob) -> None:
    """``results/{e}/tables/samplers.csv`` and ``.tex``: every flow's samples from every sampler, scored on the
    evaluation split (:func:`weightflow.evaluate.networks.sampler_summary`)."""
    cfg = job.params["cfg"]
    _, x, y = load_split(cfg)
    device = resolve_device(cfg["device"])
    rows = []
    for path in job.inputs["samples"]:
        wf = load_weights(path, layer_sizes=cfg["layer_sizes"])
        flow, sampler = wf.metadata.get("flow"), wf.metadata.get("sampler")
        if flow is None or sampler is None:
            raise WeightsFileError(f"{path}: metadata has no 'flow' and 'sampler' (not a samples file of sample_flow)")
        rows.append({"source": flow, "sampler": sampler, **sampler_summary(
            wf.weights.to(device), wf.layer_sizes, x, y, diversity_networks=cfg["evaluation"]["diversity_networks"],
            generator=generator(cfg["seed"], "evaluation", "samplers", flow, sampler))})
    _write_tables(job, "samplers", samplers_table(rows), write_samplers_table, "Samplers of every flow", (
        "accuracy and NLL, the fraction of collapsed networks (one class for every input) and the mean pairwise "
        "disagreement."))


def steps_stage(job: StageJob) -> None:
    """``results/{e}/evaluation/steps/{flow}.csv``: sample quality vs integration steps, unguided and guided."""
    cfg = job.params["cfg"]
    section = cfg["evaluation"]
    data, x, y = load_split(cfg)
    flow = load_flow(job.inputs["model"], device=resolve_device(cfg["device"]))
    guidance = [0.0] + ([section["steps_guidance"]] if section["steps_guidance"] > 0 else [])
    frame = quality_vs_steps(flow, x, y, section["steps"], num=section["steps_samples"], guidance=guidance,
                             guidance_data=(data.x_train, data.y_train),
                             seed=derive_seed(cfg["seed"], "evaluation", "steps", job.wildcards["flow"]),
                             last_radius=cfg["canonical"].get("last_radius"))
    frame.to_csv(job.output_path("csv"), index=False, float_format="%.6g")

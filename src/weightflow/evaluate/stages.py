"""Snakemake stages of the evaluation: choose each flow's samplers on the validation split, score every source of
networks, build the samples, samplers and selection tables, and the quality-vs-steps curves.

Sources (the ``{source}`` wildcard, :mod:`weightflow.names`): a baseline of :data:`~weightflow.names.BASELINES`, a
flow id (its own samples: the unguided sampler selected on the validation split), ``{flow}+guided`` (the guided
sampler and λ selected on the validation split) or ``{flow}+control`` (the guidance-alone control of those).

Which split each stage reads: :func:`select_stage` the **validation** split only (to choose); the temperatures of
:func:`evaluate_stage` the validation split; every reported score ``evaluation.split`` (default: test).
"""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from weightflow.data import load_experiment_data
from weightflow.evaluate.fidelity import FIDELITY_METRICS, fidelity_scores
from weightflow.evaluate.networks import EvaluationSettings, evaluate_networks, log_probs_of, sampler_summary
from weightflow.evaluate.ood import ood_inputs
from weightflow.evaluate.selection import select_and_save
from weightflow.evaluate.steps import quality_vs_steps
from weightflow.evaluate.tables import samplers_table, samples_table, source_label, write_samplers_table, write_table
from weightflow.flow.model_file import load_flow
from weightflow.flow.samples import load_candidates, load_samples
from weightflow.flow.spec import FlowSpec
from weightflow.io import WeightsFile, WeightsFileError, load_weights
from weightflow.names import BASELINES, split_source
from weightflow.runner import StageJob, benchmark_seconds
from weightflow.utils import derive_seed, generator, resolve_device

__all__ = ["load_split", "load_source", "select_stage", "evaluate_stage", "table_stage", "samplers_stage",
           "selection_table_stage", "steps_guidance", "steps_stage", "fidelity_stage"]

log = logging.getLogger(__name__)


def load_split(cfg: dict[str, Any]):
    """``(dataset, x, y)`` of the experiment's dataset and its ``evaluation.split``."""
    data = load_experiment_data(cfg)
    x, y = data.split(cfg["evaluation"]["split"])
    return data, x, y


def _stream(source: str) -> str:
    """The key of a source's random evaluation subsets (the ensemble's canonical copies share the ensemble's)."""
    name, kind = split_source(source)
    return BASELINES[name].stream if kind is None else source


def load_source(inputs: dict[str, Any], source: str, cfg: dict[str, Any]) -> WeightsFile:
    """The networks of ``source``: a flow's selected sample set (inputs ``candidates`` and ``selection``) or a
    baseline's weights file (input ``weights``: every row, or the ``final == 1`` rows for ``deep_ensemble``), at
    most ``evaluation.max_networks`` of them (a seeded random subset, in file order; the ensemble's canonical
    copies draw the same subset as the ensemble)."""
    name, kind = split_source(source)
    if kind is not None:
        wf = load_samples(inputs["candidates"], inputs["selection"], kind, layer_sizes=cfg["layer_sizes"])
    else:
        path = inputs["weights"]
        wf = load_weights(path, layer_sizes=cfg["layer_sizes"])
        for key in ("dataset", "seed"):  # baselines made by another experiment must share its data
            if key in wf.metadata and wf.metadata[key] != cfg[key]:
                raise WeightsFileError(
                    f"{path}: metadata '{key}' is {wf.metadata[key]!r} but experiment {cfg['name']!r} has "
                    f"{cfg[key]!r}; the experiments named in evaluation must have the same dataset and seed")
        if name == "deep_ensemble":
            if "final" not in wf.columns:
                raise WeightsFileError(f"{path}: column 'final' is missing (needed for the deep ensemble)")
            wf = wf.select(wf.columns["final"] == 1)
    cap = cfg["evaluation"]["max_networks"]
    if len(wf) > cap:
        keep = torch.randperm(len(wf), generator=generator(cfg["seed"], "evaluation", "subset", _stream(source)))[:cap]
        log.info("%s: scoring a random subset of %d of its %d networks", source, cap, len(wf))
        wf = wf.select(keep.sort().values)
    return wf


def _describe(wf: WeightsFile, source: str) -> dict[str, Any]:
    """What the tables say about a source, from its file's metadata (never from its path)."""
    meta = wf.metadata
    if split_source(source)[1] is None:
        canonical = meta.get("canonical") or {}
        return {"last_layer": canonical.get("last_layer", "sphere") if canonical else "raw"}
    keys = ("flow", "base_flow", "geometry", "model", "model_width", "parameters", "last_layer", "variant", "objective",
            "candidate", "sampler", "guidance", "control", "samples")
    return {k: meta[k] for k in keys if k in meta}


def evaluate_stage(job: StageJob) -> None:
    """``results/{e}/evaluation/{source}/``: ``networks.csv``, ``bma.csv``, ``reliability.csv``, ``summary.json``
    (scores on ``evaluation.split``; the temperature of the ``*_cal`` scores fitted on the validation split)."""
    cfg = job.params["cfg"]
    source, section = job.wildcards["source"], cfg["evaluation"]
    device = resolve_device(cfg["device"])
    data, x, y = load_split(cfg)
    wf = load_source(job.inputs, source, cfg)
    x_ood = None
    if section["ood"] is not None:
        x_ood = ood_inputs(section["ood"], data, num=section["ood_samples"],
                           generator=generator(cfg["seed"], "evaluation", "ood"), root=cfg.get("data_root"))
    result = evaluate_networks(wf.weights.to(device), wf.layer_sizes, x, y, EvaluationSettings.from_config(cfg),
                               generator=generator(cfg["seed"], "evaluation", _stream(source)), x_ood=x_ood,
                               val=(data.x_val, data.y_val))
    networks = result.networks
    for name, values in wf.columns.items():
        if name not in networks:
            networks.insert(len(networks.columns), name, values.numpy())
    networks.to_csv(job.output_path("networks"), index=False, float_format="%.6g")
    result.bma.assign(source=source).to_csv(job.output_path("bma"), index=False, float_format="%.6g")
    result.reliability.assign(source=source).to_csv(job.output_path("reliability"), index=False, float_format="%.6g")
    summary = {"source": source, "label": source_label(source), "split": section["split"], **_describe(wf, source),
               **result.summary}
    job.output_path("summary").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


def select_stage(job: StageJob) -> None:
    """``flows/{flow}/samples/candidates.pt`` and ``flows/{flow}/selection.csv``: draw every sampler candidate
    (:func:`weightflow.evaluate.selection.sampler_candidates`) from the same prior draws, score each on the
    **validation** split and select the flow's own sampler and its guided sampler (with control)."""
    cfg, flow_id = job.params["cfg"], job.wildcards["flow"]
    flow = load_flow(job.inputs["model"], device=resolve_device(cfg["device"]))
    # One prior stream per base flow: every candidate, and every variant of the flow, starts from the same x0.
    seed_generator = partial(generator, cfg["seed"], "sample", FlowSpec.parse(flow_id).base_id)
    select_and_save(flow, flow_id, cfg["sampling"], load_experiment_data(cfg), seed_generator,
                    job.output_path("candidates"), job.output_path("selection"),
                    {"experiment": cfg["name"], "dataset": cfg["dataset"]})


def _write_tables(job: StageJob, kind: str, table, write, title: str, columns: str, split: str | None = None) -> None:
    """Write ``table`` with ``write`` to the job's ``csv`` and ``tex`` outputs, captioned
    ``"{title} on {experiment} ({split} split): {columns}"`` and labelled ``tab:{experiment}-{kind}``; log it."""
    cfg = job.params["cfg"]
    split = split or cfg["evaluation"]["split"]
    caption = f"{title} on {cfg['name'].replace('_', ' ')} ({split} split): {columns}"
    write(table, job.output_path("csv"), job.output_path("tex"), caption=caption, label=f"tab:{cfg['name']}-{kind}")
    log.info("%s table of %s:\n%s", kind, cfg["name"], table.to_string(index=False))


def table_stage(job: StageJob) -> None:
    """``results/{e}/tables/samples.csv`` and ``.tex`` from every source's ``summary.json``."""
    summaries = [json.loads(open(path).read()) for path in job.inputs["summaries"]]
    _write_tables(job, "samples", samples_table(summaries), write_table, "Sampled networks", (
        "mean $\\pm$ std over single networks of accuracy; mean NLL, ECE; mean pairwise JS divergence; the BMA of $n$ "
        "networks. First block: each flow's own samples (its unguided sampler, chosen on the validation split); "
        "Field: the vector field; Last layer: the canonical form (free: the raw network's logits; sphere: the "
        "thesis' form, logits divided by $s_L$; raw: uncanonicalized weights). Then the baselines, and each guided "
        "sample set (sampler and $\\lambda$ chosen on the validation split) beside its guidance-only control "
        "(same sampler, prior draws and $\\lambda$; the flow's velocity set to zero). Columns marked $T$: the same "
        "metrics after dividing every network's logits by one temperature per row, fitted on the validation split "
        "(comparable across rows whatever the logit scale); the others on each row's own logits."))


def samplers_stage(job: StageJob) -> None:
    """``results/{e}/tables/samplers.csv`` and ``.tex``: every flow's sampler candidates scored on the evaluation
    split (:func:`weightflow.evaluate.networks.sampler_summary`), beside the validation scores that selected them."""
    cfg = job.params["cfg"]
    _, x, y = load_split(cfg)
    device = resolve_device(cfg["device"])
    rows = []
    for candidates_path, selection_path in zip(job.inputs["candidates"], job.inputs["selections"]):
        selection = pd.read_csv(selection_path, keep_default_na=False).set_index("candidate")
        for name, wf in load_candidates(candidates_path, layer_sizes=cfg["layer_sizes"]).items():
            flow = wf.metadata["flow"]
            picked = selection.loc[name]
            rows.append({"flow": flow, "model": wf.metadata.get("model", ""), "candidate": name,
                         "guidance": wf.metadata["guidance"], "control": wf.metadata["control"],
                         "selected": picked["selected"], "val_accuracy": picked["val_accuracy"],
                         "val_nll": picked["val_nll"], **sampler_summary(
                             wf.weights.to(device), wf.layer_sizes, x, y,
                             diversity_networks=cfg["evaluation"]["diversity_networks"],
                             generator=generator(cfg["seed"], "evaluation", "samplers", flow, name))})
    _write_tables(job, "samplers", samplers_table(rows), write_samplers_table, "Sampler candidates of every flow", (
        "accuracy and NLL (mean $\\pm$ std over networks), the fraction of collapsed networks (one class for every "
        "input) and the mean pairwise disagreement; Val.: the validation-split scores the selection used, and the "
        "sample set each candidate was selected for (the flow's own samples, guided, guidance-only control)."))


def selection_table_stage(job: StageJob) -> None:
    """``results/{e}/tables/selection.csv`` and ``.tex``: every flow's ``selection.csv`` (validation scores only)."""
    table = pd.concat([pd.read_csv(p, keep_default_na=False) for p in job.inputs["selections"]], ignore_index=True)

    def write(frame, csv_path, tex_path, *, caption, label):
        frame.to_csv(csv_path, index=False, float_format="%.6g")
        shown = frame[["flow", "candidate", "val_accuracy", "val_nll", "val_collapsed", "selected"]].copy()
        shown["flow"] = shown["flow"].str.replace("_", r"\_")
        shown["candidate"] = shown["candidate"].str.replace("_", r"\_")
        tex = shown.to_latex(index=False, caption=caption, label=label, escape=False, float_format="%.4f",
                             longtable=True)
        with open(tex_path, "w") as fh:
            fh.write(tex)

    _write_tables(job, "selection", table, write, "Sampler selection", (
        "every sampler candidate of every flow scored on the validation split (mean accuracy, mean NLL, collapsed "
        "fraction) and the sample set it was selected for by the criterion in column criterion."), split="val")


def steps_guidance(selection: pd.DataFrame, with_guidance: bool) -> list[float]:
    """Guidance strengths of the steps figure: 0 (the flow's own samples), then, when ``with_guidance`` and the
    flow's selection has a guided sampler, its λ selected on the validation split."""
    guided = selection.loc[selection["selected"] == "guided", "guidance"]
    return [0.0] + ([float(guided.iloc[0])] if with_guidance and not guided.empty else [])


def steps_stage(job: StageJob) -> None:
    """``results/{e}/evaluation/steps/{flow}.csv``: sample quality vs integration steps — the flow's own samples,
    and, when the flow has a guided sampler, guided at the λ selected on the validation split beside its control."""
    cfg = job.params["cfg"]
    section = cfg["evaluation"]
    data, x, y = load_split(cfg)
    flow = load_flow(job.inputs["model"], device=resolve_device(cfg["device"]))
    selection = pd.read_csv(job.inputs["selection"], keep_default_na=False)
    guidance = steps_guidance(selection, section["steps_guidance"])
    frame = quality_vs_steps(flow, x, y, section["steps"], num=section["steps_samples"], guidance=guidance,
                             guidance_data=(data.x_train, data.y_train),
                             seed=derive_seed(cfg["seed"], "evaluation", "steps", job.wildcards["flow"]))
    frame.insert(0, "flow", job.wildcards["flow"])
    frame.to_csv(job.output_path("csv"), index=False, float_format="%.6g")


def _chunked_log_probs(wf: WeightsFile, x, chunk: int = 1024):
    return torch.cat([log_probs_of(w, wf.layer_sizes, x) for w in wf.weights.split(chunk)]).double()


def fidelity_stage(job: StageJob) -> None:
    """``results/{e}/tables/fidelity.csv`` and ``.tex``: every source against the reference posterior (HMC draws,
    input ``reference``) on ``evaluation.split``: agreement and mean total variation of the two BMA predictives,
    the source's BMA accuracy / NLL / ECE (:mod:`weightflow.evaluate.fidelity`) and its cost.

    ``params.sources``: one dict per source — ``source`` (its id: a baseline or a flow id), ``experiment`` (whose
    networks), ``label``, ``trained_on`` (flows: the networks they learned), ``inputs`` (the input keys of its
    weights file, or of its candidates and selection), ``costs`` (benchmark files of the jobs that made it from
    its training data) and ``upstream`` (those that made its training data).  Two reference rows: the HMC draws
    themselves, and ``HMC split`` — chains [0, K/2) against [K/2, K): the Monte-Carlo floor of every metric."""
    cfg = job.params["cfg"]
    data, x, y = load_split(cfg)
    bins = cfg["evaluation"]["ece_bins"]
    reference = load_weights(job.inputs["reference"], layer_sizes=cfg["layer_sizes"])
    ref_lp = _chunked_log_probs(reference, x)
    rows = []

    def add(source: dict, lp, ref, networks: int) -> None:
        cpu, wall = benchmark_seconds(source.get("costs", []))
        upstream, _ = benchmark_seconds(source.get("upstream", []))
        rows.append({"source": source["source"], "experiment": source["experiment"], "label": source["label"],
                     "trained_on": source.get("trained_on", ""), "networks": networks,
                     **fidelity_scores(lp, ref, y, bins=bins), "cpu_seconds": cpu, "wall_seconds": wall,
                     "cpu_seconds_with_data": cpu + upstream if source.get("upstream") else cpu})

    add(job.params["reference"], ref_lp, ref_lp, len(reference))
    chains = torch.unique(reference.columns["run"])
    first = torch.isin(reference.columns["run"], chains[: len(chains) // 2])
    if 0 < first.sum() < len(reference):
        add({"source": "hmc_split", "experiment": job.params["reference"]["experiment"],
             "label": "HMC split (Monte-Carlo floor)"}, ref_lp[first], ref_lp[~first], int(first.sum()))
    for source in job.params["sources"]:
        keys = source["inputs"]
        if "weights" in keys:
            wf = load_source({"weights": job.inputs[keys["weights"]]}, source["source"], cfg)
        else:
            wf = load_samples(job.inputs[keys["candidates"]], job.inputs[keys["selection"]], "main",
                              layer_sizes=cfg["layer_sizes"])
        add(source, _chunked_log_probs(wf, x), ref_lp, len(wf))
    table = pd.DataFrame(rows)

    def write(frame, csv_path, tex_path, *, caption, label):
        frame.to_csv(csv_path, index=False, float_format="%.6g")
        shown = pd.DataFrame({
            "Source": frame["label"].str.replace("_", r"\_"), "Networks": frame["networks"],
            "Agreement": frame["agreement"].map("{:.3f}".format), "TV": frame["tv"].map("{:.4f}".format),
            "BMA acc.": frame["accuracy"].map("{:.4f}".format), "BMA NLL": frame["nll"].map("{:.3f}".format),
            "BMA ECE": frame["ece"].map("{:.3f}".format), "CPU s": frame["cpu_seconds"].map("{:.0f}".format),
            "CPU s (with data)": frame["cpu_seconds_with_data"].map("{:.0f}".format)})
        Path(tex_path).write_text(shown.to_latex(index=False, caption=caption, label=label, escape=False,
                                                 column_format="l" + "r" * (shown.shape[1] - 1), position="t"))

    _write_tables(job, "fidelity", table, write, "Fidelity to the HMC posterior", (
        "agreement (fraction of inputs where the top-1 class of the source's BMA predictive equals HMC's) and mean "
        "total variation between the two BMA predictives, the BMA's accuracy, NLL and ECE (all of a source's "
        "networks averaged), and the CPU seconds of the jobs that made the source (with data: including the "
        "ensemble, alignment and canonicalization its training data needed). HMC split: half of the chains "
        "against the other half, the Monte-Carlo floor of agreement and TV."))
    log.info("fidelity (%s):\n%s", cfg["evaluation"]["split"],
             table[["label", "networks", *FIDELITY_METRICS, "cpu_seconds"]].to_string(index=False))

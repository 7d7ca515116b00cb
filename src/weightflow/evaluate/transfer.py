"""Flows beyond their own task and architecture (the thesis' Tables 4.3 and 4.4).

* **Guided transfer**: a flow trained on the networks of task A is sampled with task-loss guidance from task B
  (same input and output sizes).  The candidates are those of ``transfer.sampling`` (unguided samplers; guided
  samplers at every λ of the grid and every number of steps configured, each with its guidance-alone control —
  the same prior draws and minibatches, the flow's velocity replaced by zero), scored and selected on **B's
  validation split** (:func:`weightflow.evaluate.selection.select_and_save`).  The table
  (:func:`transfer_table_stage`) scores the selected sets on B's test split beside the networks trained on B by
  Adam from the prior (the ensemble of the experiment ``transfer.task``).
* **Architecture transfer**: a flow whose vector field is a graph network (NG-T, PNA) does not depend on the
  number of hidden neurons: :func:`retarget` builds the same field for wider layer sizes and loads the trained
  parameters unchanged; its prior and path are those of the wider layout.  Sampled like the flow itself (guided
  from A's training split), selected on A's validation split and scored as wider networks — never cropped.  A flat
  MLP field maps R^D to R^D for one D and cannot be carried over: the table says so.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, Sequence

import pandas as pd

from weightflow.data import load_experiment_data
from weightflow.evaluate.selection import select_and_save
from weightflow.evaluate.stages import load_split
from weightflow.flow.model_file import FlowModel, build_network, load_flow
from weightflow.flow.paths import build_path
from weightflow.flow.samples import load_samples
from weightflow.flow.spec import FlowSpec
from weightflow.io import load_weights
from weightflow.names import SAMPLE_KINDS
from weightflow.runner import StageJob
from weightflow.utils import generator, resolve_device
from weightflow.weights import MLPLayout, forward

__all__ = ["retarget", "task_config", "transfer_stage", "architecture_stage", "transfer_table_stage",
           "architecture_table_stage"]

log = logging.getLogger(__name__)


def retarget(flow: FlowModel, layer_sizes: Sequence[int]) -> FlowModel:
    """The same flow for networks of ``layer_sizes`` (same input and output sizes, other hidden widths): its
    vector field rebuilt for the new neural graph with the trained parameters loaded unchanged (strictly), its path
    and prior built for the new layout with the same parameters.

    Raises:
        ValueError: when the vector field is not a graph network (a flat MLP's parameters fix D) or the sizes'
            number of layers, inputs or classes differ (the graph's positional embeddings are per input and output
            neuron and per layer).
    """
    old, new = flow.layout.layer_sizes, tuple(int(n) for n in layer_sizes)
    if not getattr(flow.model, "equivariant", False):
        raise ValueError(f"vector field {flow.config['model']['name']!r} is a flat MLP over D = {flow.layout.dim} "
                         "numbers: it cannot be carried to another architecture (use a graph field: ngt, pna)")
    if len(new) != len(old) or new[0] != old[0] or new[-1] != old[-1]:
        raise ValueError(f"layer sizes {list(new)} must keep the {len(old)} layers, {old[0]} inputs and {old[-1]} "
                         f"classes of {list(old)}; only hidden widths may change")
    config = dict(flow.config, layer_sizes=list(new))
    model = build_network(config, training=False)
    model.load_state_dict(flow.model.state_dict())
    model.eval().requires_grad_(False).to(flow.device)
    layout = MLPLayout(new)
    path = build_path(config["geometry"], layout, config["path_params"], config["flow"].get("sigma", 0.0))
    return FlowModel(path, model, config, flow.holdout_runs)


def task_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The data fields of task B (the experiment named in ``transfer.task``), as the rule hands them over in
    ``transfer.task_config``, for :func:`weightflow.data.load_experiment_data`."""
    return dict(cfg["transfer"]["task_config"])


def transfer_stage(job: StageJob) -> None:
    """``transfer/{flow}/candidates.pt`` and ``selection.csv``: flow ``{flow}`` sampled with guidance from task B,
    every candidate scored on B's validation split (module docstring)."""
    cfg, flow_id = job.params["cfg"], job.wildcards["flow"]
    flow = load_flow(job.inputs["model"], device=resolve_device(cfg["device"]))
    task = task_config(cfg)
    data = load_experiment_data(task)
    if (data.num_features, data.num_classes) != (flow.layout.num_features, flow.layout.num_classes):
        raise ValueError(f"transfer.task {task['name']!r}: dataset {task['dataset']!r} has {data.num_features} "
                         f"features and {data.num_classes} classes, the flow's networks {flow.layout.layer_sizes}")
    seed_generator = partial(generator, cfg["seed"], "transfer", task["name"], FlowSpec.parse(flow_id).base_id)
    select_and_save(flow, flow_id, cfg["transfer"]["sampling"], data, seed_generator, job.output_path("candidates"),
                    job.output_path("selection"), {"experiment": cfg["name"], "task": task["name"],
                                                   "dataset": task["dataset"]})


def architecture_stage(job: StageJob) -> None:
    """``architecture/{flow}/candidates.pt`` and ``selection.csv``: flow ``{flow}`` carried to
    ``transfer.architecture.layer_sizes`` (:func:`retarget`), sampled on its own task and selected on its
    validation split."""
    cfg, flow_id = job.params["cfg"], job.wildcards["flow"]
    flow = retarget(load_flow(job.inputs["model"], device=resolve_device(cfg["device"])),
                    cfg["transfer"]["architecture"]["layer_sizes"])
    seed_generator = partial(generator, cfg["seed"], "architecture", FlowSpec.parse(flow_id).base_id)
    select_and_save(flow, flow_id, cfg["transfer"]["sampling"], load_experiment_data(cfg), seed_generator,
                    job.output_path("candidates"), job.output_path("selection"),
                    {"experiment": cfg["name"], "dataset": cfg["dataset"]})


def _scores(weights, layer_sizes, x, y) -> dict[str, float]:
    logits = forward(weights, layer_sizes, x.to(weights.device))
    lp = logits.log_softmax(-1)
    acc = (lp.argmax(-1) == y.to(lp.device)).double().mean(-1)
    nll = -lp.gather(-1, y.to(lp.device).expand(len(weights), -1).unsqueeze(-1)).squeeze(-1).double().mean(-1)
    pred = lp.argmax(-1)
    return {"networks": len(weights), "accuracy": acc.mean().item(), "accuracy_std": acc.std(unbiased=False).item(),
            "nll": nll.mean().item(), "collapsed": (pred == pred[:, :1]).all(-1).double().mean().item()}


def _selected_rows(flow: str, candidates: str, selection: str, layer_sizes, x, y) -> list[dict]:
    rows = []
    for kind in SAMPLE_KINDS:
        chosen = pd.read_csv(selection, keep_default_na=False)
        if not (chosen["selected"] == kind).any():
            continue
        wf = load_samples(candidates, selection, kind, layer_sizes=layer_sizes)
        spec = FlowSpec.parse(flow)
        rows.append({"flow": flow, "geometry": spec.geometry, "model": wf.metadata.get("model", ""),
                     "samples": SAMPLE_KINDS[kind].label, "sampler": wf.metadata["candidate"],
                     "guidance": wf.metadata["guidance"], "steps": wf.metadata["sampler_options"].get("steps"),
                     **_scores(wf.weights, layer_sizes, x, y)})
    return rows


def transfer_table_stage(job: StageJob) -> None:
    """``tables/transfer.csv`` / ``.tex``: on task B's test split, the networks trained on B by Adam from the prior
    (the final weights of ``transfer.task``'s ensemble), then per flow its unguided samples, its guided samples and
    their guidance-only control (λ and steps chosen on B's validation split)."""
    cfg = job.params["cfg"]
    task = task_config(cfg)
    _, x, y = load_split({**task, "evaluation": {"split": "test"}})
    sizes = cfg["layer_sizes"]
    adam = load_weights(job.inputs["task_ensemble"], layer_sizes=sizes)
    adam = adam.select(adam.columns["final"] == 1)
    rows = [{"flow": f"Adam on {task['dataset']}", "geometry": "", "model": "", "samples": "trained from the prior",
             "sampler": "", "guidance": 0.0, "steps": None, **_scores(adam.weights, sizes, x, y)}]
    for flow, candidates, selection in zip(job.params["flows"], job.inputs["candidates"], job.inputs["selections"]):
        rows += _selected_rows(flow, candidates, selection, sizes, x, y)
    table = pd.DataFrame(rows)
    table["relative_accuracy"] = table["accuracy"] / rows[0]["accuracy"]
    _write(job, table, f"Guided transfer from {cfg['name'].replace('_', ' ')} to {task['name'].replace('_', ' ')}", (
        f"flows trained on the networks of {cfg['name']} sampled for {task['name']} (test split): their own samples, "
        "samples guided by the training loss of the new task (sampler, $\\lambda$ and steps chosen on its validation "
        "split) and the guidance-only control (same prior draws and $\\lambda$, the flow's velocity set to zero); "
        "mean $\\pm$ std over networks; relative: accuracy over the Adam networks'."))


def architecture_table_stage(job: StageJob) -> None:
    """``tables/architecture.csv`` / ``.tex``: per flow, its own samples on its own architecture, then its samples
    on the wider architecture (unguided, guided, control), all on the experiment's test split; flows whose field is
    a flat MLP get a row that says they cannot be carried over."""
    cfg = job.params["cfg"]
    _, x, y = load_split({**cfg, "evaluation": {"split": "test"}})
    wide = list(cfg["transfer"]["architecture"]["layer_sizes"])
    rows = []
    for flow, own_c, own_s, cand, sel in zip(job.params["flows"], job.inputs["own_candidates"],
                                             job.inputs["own_selections"], job.inputs["candidates"],
                                             job.inputs["selections"]):
        own = _selected_rows(flow, own_c, own_s, cfg["layer_sizes"], x, y)[0]
        rows.append({**own, "architecture": "-".join(map(str, cfg["layer_sizes"])), "samples": "flow (own size)"})
        for row in _selected_rows(flow, cand, sel, wide, x, y):
            rows.append({**row, "architecture": "-".join(map(str, wide))})
    for flow in job.params["flat_flows"]:
        rows.append({"flow": flow, "geometry": FlowSpec.parse(flow).geometry, "model": "mlp",
                     "architecture": "-".join(map(str, wide)), "samples": "not possible: a flat MLP field fixes D"})
    _write(job, pd.DataFrame(rows), f"Architecture transfer on {cfg['name'].replace('_', ' ')}", (
        f"flows trained on {'-'.join(map(str, cfg['layer_sizes']))} networks, their graph vector field built for "
        f"{'-'.join(map(str, wide))} with the same parameters, scored as {'-'.join(map(str, wide))} networks on the "
        "test split (sampler, $\\lambda$ and steps chosen on the validation split; guidance-only control beside each "
        "guided row); first row of each flow: its own samples on its own architecture."))


def _write(job: StageJob, table: pd.DataFrame, title: str, caption: str) -> None:
    table.to_csv(job.output_path("csv"), index=False, float_format="%.6g")
    shown = table.fillna("").astype(str)
    for column in ("accuracy", "accuracy_std", "nll", "collapsed", "relative_accuracy", "guidance"):
        if column in table:
            shown[column] = [f"{v:.4f}" if isinstance(v, float) and v == v else "" for v in table[column]]
    shown = shown.apply(lambda c: c.str.replace("_", r"\_"))
    job.output_path("tex").write_text(shown.to_latex(index=False, caption=f"{title}: {caption}",
                                                     label=f"tab:{job.params['cfg']['name']}-{job.output_path('csv').stem}",
                                                     escape=False, position="t"))
    log.info("%s:\n%s", title, table.to_string(index=False))

"""Snakemake stage of the flows: ``train_stage`` (model.pt, train_log.csv).

Sampling a trained flow with every sampler candidate, choosing on the validation split, and writing the
selected sample sets are evaluation stages (:mod:`weightflow.evaluate.stages`, :mod:`weightflow.evaluate.selection`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from weightflow.data import load_experiment_data
from weightflow.flow.model_file import FlowModel, build_network, save_flow
from weightflow.flow.paths import build_path, last_layer_radius
from weightflow.flow.sampling import sample
from weightflow.flow.spec import FlowSpec
from weightflow.flow.training import TrainSettings, train_flow
from weightflow.io import load_weights
from weightflow.runner import StageJob
from weightflow.utils import config_hash, derive_seed, generator, resolve_device
from weightflow.weights import MLPLayout, forward

__all__ = ["train_stage", "holdout_runs", "flow_config", "sample_accuracy"]

log = logging.getLogger(__name__)


def holdout_runs(runs: Tensor, fraction: float, gen: torch.Generator) -> list[int]:
    """A seeded subset of the distinct run ids in ``runs [N]``: ``round(fraction * R)`` of them (≥ 1 when
    ``fraction > 0`` and ``R > 1``; never all of them)."""
    distinct = torch.unique(runs)
    if fraction <= 0 or len(distinct) < 2:
        return []
    count = min(len(distinct) - 1, max(1, round(fraction * len(distinct))))
    chosen = distinct[torch.randperm(len(distinct), generator=gen)[:count]]
    return sorted(int(r) for r in chosen)


def flow_config(cfg: dict[str, Any], flow_id: str, data: Tensor) -> dict[str, Any]:
    """The JSON config stored in model.pt: flow id parts, layer sizes, model/flow sections and the path params.

    ``cfg`` is the flow's effective experiment config (its variant's overrides already merged,
    :func:`weightflow.config.flow_params`); ``path_params.last_layer`` is its canonical form
    (``canonical.last_layer``) and ``last_radius`` the median last-layer norm of ``data`` (the radius of the
    last-layer sphere in the sphere form)."""
    spec = FlowSpec.parse(flow_id)
    settings = TrainSettings.from_config(cfg["flow"])
    prior_std = settings.prior_std if settings.prior_std is not None else cfg["ensemble"]["init_std"]
    bias_prior_std = settings.bias_prior_std if settings.bias_prior_std is not None else prior_std
    layout = MLPLayout(tuple(cfg["layer_sizes"]))
    return {
        "flow_id": flow_id,
        "geometry": spec.geometry,
        "alignment": spec.alignment,
        "coupling": spec.coupling,
        "variant": spec.variant,
        "experiment": cfg["name"],
        "dataset": cfg["dataset"],
        "seed": cfg["seed"],
        "layer_sizes": list(cfg["layer_sizes"]),
        "model": dict(cfg["model"]),
        "model_seed": derive_seed(cfg["seed"], "flow", flow_id, "init"),
        "flow": asdict(settings),
        "path_params": {"prior_std": float(prior_std), "bias_prior_std": float(bias_prior_std),
                        "last_layer": cfg["canonical"]["last_layer"], "last_radius": last_layer_radius(data, layout)},
    }


def sample_accuracy(flow: FlowModel, x: Tensor, y: Tensor, num: int, steps: int, gen: torch.Generator) -> float:
    """Mean accuracy on ``(x, y)`` of ``num`` networks sampled from ``flow`` with ``steps`` Euler steps."""
    nets = sample(flow, num, steps=steps, generator=gen)
    logits = forward(nets, flow.layout, x.to(nets.device))
    return float((logits.argmax(-1) == y.to(nets.device)).float().mean())


def _load_task(cfg: dict[str, Any]):
    return load_experiment_data(cfg)


def train_stage(job: StageJob) -> None:
    """Train flow ``{flow}`` on its weights file; write ``model.pt`` (EMA weights) and ``train_log.csv``."""
    cfg, flow_id = job.params["cfg"], job.wildcards["flow"]
    spec = FlowSpec.parse(flow_id)
    settings = TrainSettings.from_config(cfg["flow"])
    wf = load_weights(job.inputs["weights"], layer_sizes=cfg["layer_sizes"])
    held_out = holdout_runs(wf.columns["run"], settings.holdout_fraction, generator(cfg["seed"], "flow", "holdout"))
    mask = torch.isin(wf.columns["run"], torch.tensor(held_out, dtype=wf.columns["run"].dtype))
    data, holdout = wf.weights[~mask], wf.weights[mask]
    config = flow_config(cfg, flow_id, data)
    path = build_path(spec.geometry, MLPLayout(tuple(cfg["layer_sizes"])), config["path_params"], settings.sigma)
    device = resolve_device(cfg["device"])
    log.info("flow %s: %d training rows, %d held-out rows (runs %s), device %s, path params %s",
             flow_id, len(data), len(holdout), held_out, device, config["path_params"])
    model = build_network(config)
    log.info("model %s: %d parameters", cfg["model"], sum(p.numel() for p in model.parameters()))

    task = _load_task(cfg)
    accuracy = None
    if task.num_classes > 0 and settings.val_samples > 0:
        def accuracy(ema: nn.Module, step: int) -> float:
            flow = FlowModel(path, ema, config, held_out)
            return sample_accuracy(flow, task.x_val, task.y_val, settings.val_samples, settings.val_steps,
                                   generator(cfg["seed"], "flow", flow_id, "val", step))

    out_model = job.output_path("model")
    checkpoint = out_model.parent / "checkpoint.pt"
    fingerprint = config_hash({"config": config, "data": [list(data.shape), float(data.double().sum())]})
    result = train_flow(
        path, model, data, coupling=spec.coupling, settings=settings,
        seed_generator=partial(generator, cfg["seed"], "flow", flow_id), holdout=holdout,
        sample_accuracy=accuracy, device=device, checkpoint=checkpoint, fingerprint=fingerprint,
        log_csv=job.output_path("log_csv"),
    )
    save_flow(out_model, result.ema_model, config, held_out)
    checkpoint.unlink(missing_ok=True)
    last = result.log.iloc[-1]
    log.info("flow %s trained: final train loss %.4g, val loss %.4g, sampled accuracy %.4f",
             flow_id, last.train_loss, last.val_loss, last.sample_acc)

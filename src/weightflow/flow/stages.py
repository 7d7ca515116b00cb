"""Snakemake stages of the flows: ``train_stage`` (model.pt, train_log.csv) and ``sample_stage`` (samples/{sampler}.pt)."""

from __future__ import annotations

import logging
from dataclasses import asdict
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from weightflow.data import load_experiment_data
from weightflow.flow.model_file import FlowModel, build_network, load_flow, save_flow
from weightflow.flow.paths import build_path, last_layer_radius
from weightflow.flow.sampling import sample
from weightflow.flow.spec import FlowSpec
from weightflow.flow.training import TrainSettings, train_flow
from weightflow.io import WeightsFile, load_weights, save_weights
from weightflow.runner import StageJob
from weightflow.utils import config_hash, derive_seed, generator, resolve_device
from weightflow.weights import MLPLayout, forward

__all__ = ["train_stage", "sample_stage", "holdout_runs", "flow_config", "sample_accuracy"]

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
    """The JSON config stored in model.pt: flow id parts, layer sizes, model/flow sections and the path params."""
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
        "experiment": cfg["name"],
        "dataset": cfg["dataset"],
        "seed": cfg["seed"],
        "layer_sizes": list(cfg["layer_sizes"]),
        "model": dict(cfg["model"]),
        "model_seed": derive_seed(cfg["seed"], "flow", flow_id, "init"),
        "flow": asdict(settings),
        "path_params": {"prior_std": float(prior_std), "bias_prior_std": float(bias_prior_std),
                        "last_radius": last_layer_radius(data, layout)},
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


def sample_stage(job: StageJob) -> None:
    """Sample ``sampling.num_samples`` networks from flow ``{flow}`` with sampler ``{sampler}``."""
    cfg, flow_id, name = job.params["cfg"], job.wildcards["flow"], job.wildcards["sampler"]
    sampling = cfg["sampling"]
    if name not in sampling["samplers"]:
        raise ValueError(f"experiments.{cfg['name']}.sampling.samplers has no sampler {name!r} "
                         f"(known: {sorted(sampling['samplers'])})")
    options = dict(sampling["samplers"][name])
    if "noise_range" in options:
        options["noise_range"] = tuple(options["noise_range"])
    flow = load_flow(job.inputs["model"], device=resolve_device(cfg["device"]))
    guidance_data = None
    if options.get("guidance", 0.0) > 0:
        task = _load_task(cfg)
        guidance_data = (task.x_train, task.y_train)
    # One prior stream per flow: every sampler of a flow starts from the same x0 (paired comparisons).
    gen = generator(cfg["seed"], "sample", flow_id)
    nets = sample(flow, sampling["num_samples"], generator=gen, batch_size=sampling["batch_size"],
                  guidance_data=guidance_data, **options)
    n = nets.shape[0]
    save_weights(job.output_path("samples"), WeightsFile(
        nets.cpu(), tuple(cfg["layer_sizes"]),
        columns={"sample": torch.arange(n)},
        metadata={"kind": "flow_samples", "experiment": cfg["name"], "dataset": cfg["dataset"], "flow": flow_id,
                  "sampler": name, "sampler_options": options, "geometry": flow.config["geometry"],
                  "holdout_runs": flow.holdout_runs},
    ))
    finite = torch.isfinite(nets).all(dim=1).float().mean()
    log.info("flow %s, sampler %s: %d networks (%.1f %% finite)", flow_id, name, n, 100 * float(finite))

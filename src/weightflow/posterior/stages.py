"""Snakemake stages of the reference posterior and the baselines (rules in workflow/rules/posterior.smk).

* :func:`hmc_stage` → ``results/{e}/posterior/hmc/weights.pt``: HMC draws, rows draw-major (all chains of draw 0,
  then draw 1, ...), columns ``run`` (= ``chain``), ``chain``, ``draw``, ``step`` (transition index, warm-up
  included), ``accept_prob`` (α of the transition that produced the draw), ``accept_rate`` and ``step_size`` (the
  chain's mean α over sampling and its frozen ε), ``log_posterior`` (``−U(θ)``), ``train_loss`` (mean training
  cross-entropy), ``final`` (1 on each chain's last draw: ``ref{k}`` = chain k's last draw).
* :func:`hmc_ensemble_stage` → the same draws as ``results/{e}/ensemble/weights.pt`` and ``metrics.csv``: an
  experiment whose "ensemble" is HMC (flows trained on true posterior samples).
* :func:`diagnostics_stage` → ``posterior/hmc/diagnostics.csv`` (ArviZ, :mod:`weightflow.posterior.diagnostics`)
  and ``summary.json`` (chains, draws, gradient evaluations, time, worst R-hat / ESS, BMA accuracy and NLL).
* :func:`laplace_stage` → ``posterior/laplace/weights.pt``: Laplace draws around the ensemble's final weights.
* :func:`vi_stage` → ``posterior/vi/weights.pt`` (+ ``history.csv``): mean-field VI draws.

Baseline files have columns ``run`` (member), ``member``, ``draw``, ``train_loss``, ``final`` (1 on each member's
last draw), rows draw-major.  Weights files hold no timings (same config, same bytes); HMC's wall and CPU seconds
go to ``posterior/hmc/run.json``, every stage's to its Snakemake benchmark file.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

import weightflow
from weightflow.data import load_experiment_data
from weightflow.ensemble import EnsembleConfig
from weightflow.evaluate.metrics import accuracy, bma_log_probs, log_probs_from_logits, nll
from weightflow.io import WeightsFile, WeightsFileError, load_weights, save_weights
from weightflow.posterior.diagnostics import mlp_diagnostics, summarize
from weightflow.posterior.hmc import HMCConfig, HMCResult, run_hmc
from weightflow.posterior.laplace import LaplaceConfig, laplace_samples
from weightflow.posterior.target import MLPPosterior
from weightflow.posterior.vi import VIConfig, run_vi
from weightflow.runner import StageJob, benchmark_seconds
from weightflow.utils import config_hash, derive_seed, from_section, generator, resolve_device
from weightflow.weights import cross_entropy, forward

__all__ = ["PosteriorSettings", "hmc_weights_file", "hmc_stage", "hmc_ensemble_stage", "diagnostics_stage",
           "laplace_stage", "vi_stage"]

log = logging.getLogger(__name__)


@dataclass
class PosteriorSettings:
    """The ``posterior`` section: the prior std (null → ``ensemble.init_std``) and one settings object per method."""

    prior_std: float
    hmc: HMCConfig
    laplace: LaplaceConfig
    vi: VIConfig

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "PosteriorSettings":
        section = dict(cfg.get("posterior") or {})
        unknown = sorted(set(section) - {"prior_std", "hmc", "laplace", "vi"})
        if unknown:
            raise ValueError(f"posterior: unknown setting(s) {unknown}; known: ['hmc', 'laplace', 'prior_std', 'vi']")
        prior_std = section.get("prior_std")
        if prior_std is None:
            prior_std = cfg.get("ensemble", {}).get("init_std", EnsembleConfig.init_std)
        return cls(
            prior_std=float(prior_std),
            hmc=from_section(HMCConfig, section.get("hmc") or {}, "posterior.hmc"),
            laplace=from_section(LaplaceConfig, section.get("laplace") or {}, "posterior.laplace"),
            vi=from_section(VIConfig, section.get("vi") or {}, "posterior.vi"),
        )


def _metadata(cfg: dict[str, Any], kind: str, settings: PosteriorSettings, **extra: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "experiment": cfg["name"],
        "dataset": cfg["dataset"],
        "seed": cfg["seed"],
        "prior_std": settings.prior_std,
        "config_hash": config_hash({k: v for k, v in cfg.items() if k != "device"}),
        "weightflow_version": weightflow.__version__,
        **extra,
    }


def _posterior(cfg: dict[str, Any], settings: PosteriorSettings, dtype: torch.dtype) -> MLPPosterior:
    data = load_experiment_data(cfg)
    if data.weight_target:
        raise ValueError(f"experiment {cfg['name']!r}: dataset {cfg['dataset']!r} has no data to condition on; "
                         "the posterior stages need a classification dataset")
    device = resolve_device(cfg["device"])
    return MLPPosterior.from_data(cfg["layer_sizes"], data.x_train.to(device), data.y_train.to(device),
                                  settings.prior_std, dtype=dtype)


def _train_loss(posterior: MLPPosterior, theta: Tensor, chunk: int = 1024) -> Tensor:
    with torch.no_grad():
        return torch.cat([cross_entropy(t.to(posterior.x), posterior.layout, posterior.x, posterior.y).cpu()
                          for t in theta.split(chunk)]).float()


def hmc_weights_file(result: HMCResult, posterior: MLPPosterior, *, warmup: int, thin: int) -> WeightsFile:
    """The HMC draws as a weights file (rows draw-major; columns in the module docstring)."""
    draws, chains = result.draws, result.chains
    flat = result.samples.reshape(draws * chains, -1).float()
    chain = torch.arange(chains).repeat(draws)
    draw = torch.arange(draws).repeat_interleave(chains)
    potential = result.potential.reshape(-1)
    prior_energy = result.samples.reshape(draws * chains, -1).double().square().sum(-1) / (2 * posterior.prior_std**2)
    columns = {
        "run": chain,
        "chain": chain,
        "draw": draw,
        "step": warmup + (draw + 1) * thin,
        "accept_prob": result.accept_prob.reshape(-1).float(),
        "accept_rate": result.accept_rate.float()[chain],
        "step_size": result.step_size.float()[chain],
        "log_posterior": (-potential).float(),
        "train_loss": ((potential - prior_energy) / posterior.num_data).float(),
        "final": (draw == draws - 1).long(),
    }
    return WeightsFile(flat, posterior.layout.layer_sizes, columns=columns)


def _run_hmc(cfg: dict[str, Any]) -> tuple[WeightsFile, dict[str, Any], MLPPosterior]:
    """HMC on the experiment's posterior → (weights file with metadata, run statistics incl. timings, posterior)."""
    settings = PosteriorSettings.from_config(cfg)
    hmc = settings.hmc
    posterior = _posterior(cfg, settings, hmc.torch_dtype)
    result = run_hmc(posterior, hmc, seed=derive_seed(cfg["seed"], "posterior", "hmc"))
    wf = hmc_weights_file(result, posterior, warmup=hmc.warmup, thin=hmc.thin)
    run = dict(chains=result.chains, draws=result.draws, transitions=hmc.warmup + hmc.draws * hmc.thin,
               grad_evals_per_chain=result.grad_evals, grad_evals=result.grad_evals * result.chains,
               accept_rate=float(result.accept_rate.mean()), warmup_accept_rate=float(result.warmup_accept_rate.mean()),
               divergences=int(result.divergences.sum()), mean_leapfrog_steps=float(result.leapfrog_steps.mean()),
               step_size_min=float(result.step_size.min()), step_size_max=float(result.step_size.max()))
    wf.metadata = _metadata(cfg, "hmc", settings, hmc=asdict(hmc), **run)
    run.update(seconds=result.seconds, cpu_seconds=result.cpu_seconds, threads=torch.get_num_threads())
    return wf, run, posterior


def hmc_stage(job: StageJob) -> None:
    """``results/{e}/posterior/hmc/weights.pt`` (+ ``run.json``: counts, wall and CPU seconds)."""
    wf, run, _ = _run_hmc(job.params["cfg"])
    save_weights(job.output_path("weights"), wf)
    if "run" in job.outputs:  # timings vary between runs: kept out of the (deterministic) weights file
        job.output_path("run").write_text(json.dumps(run, indent=2, sort_keys=True) + "\n")
    log.info("wrote %d HMC draws (%d chains × %d) to %s", len(wf), run["chains"], run["draws"], job.outputs["weights"])


def hmc_ensemble_stage(job: StageJob) -> None:
    """HMC draws in the place of an ensemble (rule ``train_ensemble``'s outputs ``weights`` and ``metrics``), so that
    alignment, canonicalization, flows and evaluation run on true posterior samples.  ``metrics.csv`` has the
    ensemble history's columns with one row per chain ("run") and kept draw ("epoch" = draw + 1): loss and accuracy
    on the train, val and test splits."""
    cfg = job.params["cfg"]
    wf, run, _ = _run_hmc(cfg)
    save_weights(job.output_path("weights"), wf)
    data = load_experiment_data(cfg)
    frame = {"run": wf.columns["run"].numpy(), "epoch": wf.columns["draw"].numpy() + 1,
             "step": wf.columns["step"].numpy()}
    with torch.no_grad():
        for split in ("train", "val", "test"):
            x, y = data.split(split)
            lp = _log_probs(wf, x)
            frame[f"{split}_loss"] = (-lp.gather(-1, y.expand(len(wf), -1).unsqueeze(-1)).squeeze(-1).mean(-1)).numpy()
            frame[f"{split}_acc"] = (lp.argmax(-1) == y).double().mean(-1).numpy()
    pd.DataFrame(frame).to_csv(job.output_path("metrics"), index=False, float_format="%.6g")
    log.info("wrote %d HMC draws as the ensemble of %s (%.1f CPU s)", len(wf), cfg["name"], run["cpu_seconds"])


def _bma_scores(wf: WeightsFile, x: Tensor, y: Tensor) -> dict[str, float]:
    with torch.no_grad():
        lp = torch.cat([log_probs_from_logits(forward(w, wf.layer_sizes, x)) for w in wf.weights.split(1024)])
    bma = bma_log_probs(lp.double())
    return {"bma_accuracy": float(accuracy(bma, y)), "bma_nll": float(nll(bma, y))}


def diagnostics_stage(job: StageJob) -> None:
    """``diagnostics.csv`` (one row per diagnosed quantity) and ``summary.json`` (with the sampler's counts from the
    weights file's metadata and its wall and CPU seconds: from input ``run`` of :func:`hmc_stage`, or from the
    benchmark file in ``params.benchmark`` of the job that ran HMC as an experiment's ensemble)."""
    cfg = job.params["cfg"]
    settings = PosteriorSettings.from_config(cfg)
    wf = load_weights(job.inputs["weights"], layer_sizes=cfg["layer_sizes"])
    data = load_experiment_data(cfg)
    table = mlp_diagnostics(wf, data.x_test, weights=settings.hmc.diagnostic_weights)
    table.to_csv(job.output_path("csv"), index=False, float_format="%.6g")
    meta = wf.metadata
    summary = {key: meta.get(key) for key in (
        "chains", "draws", "transitions", "grad_evals_per_chain", "grad_evals", "accept_rate", "warmup_accept_rate",
        "divergences", "step_size_min", "step_size_max", "mean_leapfrog_steps")}
    if "run" in job.inputs:
        run = json.loads(Path(job.inputs["run"]).read_text())
        summary.update({k: run.get(k) for k in ("seconds", "cpu_seconds", "threads")})
    elif job.params.get("benchmark"):  # HMC as an experiment's ensemble: the cost of its train_ensemble job
        summary["cpu_seconds"], summary["seconds"] = benchmark_seconds([job.params["benchmark"]])
    summary.update(summarize(table))
    summary.update({f"test_{k}": v for k, v in _bma_scores(wf, data.x_test, data.y_test).items()})
    summary["split"] = "test"
    if "summary" in job.outputs:
        job.output_path("summary").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    log.info("HMC diagnostics: %s", json.dumps(summary, sort_keys=True))
    if summary["predictive_r_hat_max"] > 1.01:
        log.warning("predictive R-hat %.4f > 1.01: HMC has not converged; raise posterior.hmc.draws or chains",
                    summary["predictive_r_hat_max"])


def _baseline_file(samples: Tensor, runs: Tensor, posterior: MLPPosterior) -> WeightsFile:
    """``samples [M, S, D]`` of members with ensemble run ids ``runs [M]`` → a draw-major weights file."""
    members, draws, dim = samples.shape
    flat = samples.transpose(0, 1).reshape(draws * members, dim).float().cpu()
    member = torch.arange(members).repeat(draws)
    draw = torch.arange(draws).repeat_interleave(members)
    columns = {"run": runs.long()[member], "member": member, "draw": draw,
               "train_loss": _train_loss(posterior, flat), "final": (draw == draws - 1).long()}
    return WeightsFile(flat, posterior.layout.layer_sizes, columns=columns)


def laplace_stage(job: StageJob) -> None:
    """``posterior/laplace/weights.pt``: Laplace draws around the final weights of the ensemble's runs (MAP)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    cfg = job.params["cfg"]
    settings = PosteriorSettings.from_config(cfg)
    lap = settings.laplace
    ensemble = load_weights(job.inputs["ensemble"], layer_sizes=cfg["layer_sizes"])
    if "final" not in ensemble.columns or "run" not in ensemble.columns:
        raise WeightsFileError(f"{job.inputs['ensemble']}: columns 'run' and 'final' are needed (the MAP members)")
    final = ensemble.select(ensemble.columns["final"] == 1)
    final = final.select(torch.argsort(final.columns["run"]))
    if lap.members is not None:
        if lap.members > len(final):
            raise ValueError(f"posterior.laplace.members: {lap.members} but the ensemble has {len(final)} runs")
        final = final.select(torch.arange(lap.members))
    posterior = _posterior(cfg, settings, torch.float64)
    theta = final.weights.to(posterior.x)
    samples, _ = laplace_samples(theta, posterior.layout, posterior.x, settings.prior_std, lap,
                                 generator=generator(cfg["seed"], "posterior", "laplace"))
    wf = _baseline_file(samples, final.columns["run"], posterior)
    wf.metadata = _metadata(cfg, "laplace", settings, laplace=asdict(lap), members=len(final),
                            map_train_loss=float(_train_loss(posterior, theta).mean()))
    save_weights(job.output_path("weights"), wf)
    log.info("wrote %d Laplace draws (%s, %d members); mean train loss %.4f (MAP %.4f); %.1f s, %.1f CPU s",
             len(wf), lap.subset, len(final), wf.columns["train_loss"].mean(), wf.metadata["map_train_loss"],
             time.perf_counter() - start, time.process_time() - cpu_start)


def vi_stage(job: StageJob) -> None:
    """``posterior/vi/weights.pt`` (+ ``history.csv`` of the ELBO when the rule names it): mean-field VI draws."""
    start, cpu_start = time.perf_counter(), time.process_time()
    cfg = job.params["cfg"]
    settings = PosteriorSettings.from_config(cfg)
    posterior = _posterior(cfg, settings, torch.float32)
    seed = derive_seed(cfg["seed"], "posterior", "vi")
    fit, samples = run_vi(posterior, settings.vi, seed_generator=lambda key: generator(seed, key))
    wf = _baseline_file(samples, torch.arange(settings.vi.members), posterior)
    wf.columns["elbo"] = fit.final_elbo.float()[wf.columns["member"]]
    wf.metadata = _metadata(cfg, "vi", settings, vi=asdict(settings.vi), members=settings.vi.members,
                            mean_sigma=float(fit.std.mean()))
    save_weights(job.output_path("weights"), wf)
    if "history" in job.outputs:
        fit.history.to_csv(job.output_path("history"), index=False, float_format="%.6g")
    log.info("wrote %d VI draws (%d members); mean train loss %.4f; %.1f s, %.1f CPU s", len(wf), settings.vi.members,
             wf.columns["train_loss"].mean(), time.perf_counter() - start, time.process_time() - cpu_start)


def _log_probs(wf: WeightsFile, x: Tensor) -> Tensor:
    with torch.no_grad():
        return torch.cat([log_probs_from_logits(forward(w, wf.layer_sizes, x.to(w.dtype)))
                          for w in wf.weights.split(1024)]).double()

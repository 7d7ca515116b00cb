"""Ensembles of base networks: ``R`` runs of one MLP trained as ONE vectorized computation.

All runs live in one parameter tensor ``theta [R, D]`` (flat layout).  A step draws one minibatch per run
(each run has its own seeded permutation of the training set), computes the per-run mean cross-entropy
``L_r(theta_r)`` with one batched forward (``X [R, bs, n0]``), and back-propagates ``sum_r L_r``: since run
``r``'s loss depends only on row ``r``, the gradient's row ``r`` is run ``r``'s own gradient.  Adam and SGD act
elementwise, so one optimizer over ``theta`` equals ``R`` independent optimizers.

SGLD (Welling & Teh 2011) samples the posterior ``p(theta | data) ∝ exp(-U)`` with
``U(theta) = N * mean_CE(theta) + ||theta||² / (2 init_std²)`` (the Gaussian prior used for the init):
``theta <- theta - (lr / 2) grad U + sqrt(lr * temperature) * eps``, ``eps ~ N(0, I)``.

Snapshots: after ``burn_in_epochs`` epochs, every ``snapshot_every`` iterations; each run's final weights are
always kept (column ``final`` = 1).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Sequence

import pandas as pd
import torch
from torch import Tensor

import weightflow
from weightflow.data import Dataset, load_experiment_data
from weightflow.io import WeightsFile, save_weights
from weightflow.runner import StageJob
from weightflow.utils import config_hash, derive_seed, generator, progress, resolve_device
from weightflow.weights import MLPLayout, accuracy, as_layout, cross_entropy, init_weights

__all__ = ["EnsembleConfig", "EnsembleResult", "train_ensemble", "gaussian_target_samples", "train_stage"]

log = logging.getLogger(__name__)


@dataclass
class EnsembleConfig:
    """Settings of ensemble training (the ``ensemble`` section of an experiment; see config/README.md)."""

    runs: int = 100
    epochs: int = 50
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    temperature: float = 1.0
    init_std: float = 0.31622777
    bias_init_std: float = 0.0
    burn_in_epochs: int = 10
    snapshot_every: int = 4

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "sgd", "sgld"):
            raise ValueError(f"ensemble.optimizer: unknown optimizer {self.optimizer!r}; use adam, sgd or sgld")
        for name in ("runs", "epochs", "batch_size", "snapshot_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"ensemble.{name}: must be >= 1, got {getattr(self, name)}")


@dataclass
class EnsembleResult:
    """``snapshots``: every kept network (columns run, step, epoch, train/val loss and accuracy, final).
    ``history``: one row per run and epoch with train/val/test loss and accuracy."""

    snapshots: WeightsFile
    history: pd.DataFrame


class _SGLD:
    """Langevin dynamics on one parameter tensor: ``theta -= lr/2 * grad U; theta += sqrt(lr*T) * N(0, I)``."""

    def __init__(self, theta: Tensor, *, lr: float, temperature: float, prior_std: float, num_data: int,
                 gen: torch.Generator):
        self.theta, self.lr, self.temperature = theta, lr, temperature
        self.prior_var, self.num_data, self.gen = prior_std**2, num_data, gen

    def step(self) -> None:
        with torch.no_grad():
            grad_u = self.num_data * self.theta.grad + self.theta / self.prior_var
            noise = torch.randn(self.theta.shape, generator=self.gen, device=self.gen.device).to(self.theta.device)
            self.theta.add_(-0.5 * self.lr * grad_u + (self.lr * self.temperature) ** 0.5 * noise)

    def zero_grad(self) -> None:
        self.theta.grad = None


def _optimizer(theta: Tensor, cfg: EnsembleConfig, num_data: int, gen: torch.Generator):
    if cfg.optimizer == "adam":
        return torch.optim.Adam([theta], lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD([theta], lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return _SGLD(theta, lr=cfg.lr, temperature=cfg.temperature, prior_std=cfg.init_std, num_data=num_data, gen=gen)


def _scores(theta: Tensor, layout: MLPLayout, data: Dataset, splits: Sequence[str]) -> dict[str, Tensor]:
    """Per-run loss and accuracy on whole splits → ``{'train_loss': [R], 'train_acc': [R], ...}`` (CPU)."""
    out = {}
    with torch.no_grad():
        for split in splits:
            x, y = data.split(split)
            out[f"{split}_loss"] = cross_entropy(theta, layout, x, y).cpu()
            out[f"{split}_acc"] = accuracy(theta, layout, x, y).cpu()
    return out


def train_ensemble(
    data: Dataset,
    layer_sizes: Sequence[int] | MLPLayout,
    cfg: EnsembleConfig,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> EnsembleResult:
    """Train ``cfg.runs`` networks at once; see the module docstring for the math and the snapshot rule."""
    layout = as_layout(layer_sizes)
    if (data.num_features, data.num_classes) != (layout.num_features, layout.num_classes):
        raise ValueError(
            f"layer_sizes {list(layout.layer_sizes)} do not fit dataset {data.name!r} "
            f"({data.num_features} features, {data.num_classes} classes)"
        )
    device = resolve_device(device)
    data = data.to(device)
    gen = generator(seed, "ensemble")
    theta = init_weights(layout, cfg.runs, init_std=cfg.init_std, bias_std=cfg.bias_init_std, generator=gen)
    theta = theta.to(device).requires_grad_(True)
    opt = _optimizer(theta, cfg, len(data.y_train), gen)

    runs = torch.arange(cfg.runs)
    n_train, bs = len(data.y_train), min(cfg.batch_size, len(data.y_train))
    snaps: list[Tensor] = []
    snap_cols: dict[str, list[Tensor]] = {k: [] for k in ("run", "step", "epoch")}
    snap_scores: list[dict[str, Tensor]] = []
    history: list[pd.DataFrame] = []

    def keep(step: int, epoch: int) -> None:
        snaps.append(theta.detach().cpu().clone())
        snap_cols["run"].append(runs)
        snap_cols["step"].append(torch.full((cfg.runs,), step))
        snap_cols["epoch"].append(torch.full((cfg.runs,), epoch))
        snap_scores.append(_scores(theta, layout, data, ("train", "val")))

    step = 0
    bar = progress(range(cfg.epochs), desc=f"ensemble {data.name} ×{cfg.runs}", unit="epoch")
    for epoch in bar:
        order = torch.argsort(torch.rand(cfg.runs, n_train, generator=gen), dim=1).to(device)
        for start in range(0, n_train, bs):
            idx = order[:, start:start + bs]  # [R, bs]: each run's own minibatch
            loss = cross_entropy(theta, layout, data.x_train[idx], data.y_train[idx]).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if epoch >= cfg.burn_in_epochs and step % cfg.snapshot_every == 0:
                keep(step, epoch + 1)
        scores = _scores(theta, layout, data, ("train", "val", "test"))
        if not torch.isfinite(scores["train_loss"]).all():
            raise FloatingPointError(f"ensemble training diverged at epoch {epoch + 1} (non-finite loss); lower lr")
        history.append(pd.DataFrame({"run": runs.numpy(), "epoch": epoch + 1, "step": step,
                                     **{k: v.numpy() for k, v in scores.items()}}))
        bar.set_postfix(loss=f"{scores['train_loss'].mean():.4f}", val_acc=f"{scores['val_acc'].mean():.3f}")
        log.info("epoch %d/%d step %d: train loss %.4f ± %.4f, val acc %.4f ± %.4f", epoch + 1, cfg.epochs, step,
                 scores["train_loss"].mean(), scores["train_loss"].std(correction=0), scores["val_acc"].mean(),
                 scores["val_acc"].std(correction=0))

    if not snap_cols["step"] or snap_cols["step"][-1][0] != step:
        keep(step, cfg.epochs)
    final = torch.zeros(len(snaps) * cfg.runs, dtype=torch.long)
    final[-cfg.runs:] = 1
    columns = {k: torch.cat(v) for k, v in snap_cols.items()}
    columns.update({k: torch.cat([s[k] for s in snap_scores]) for k in snap_scores[0]})
    columns["final"] = final
    snapshots = WeightsFile(torch.cat(snaps), layout.layer_sizes, columns=columns)
    return EnsembleResult(snapshots, pd.concat(history, ignore_index=True))


def gaussian_target_samples(layer_sizes: Sequence[int] | MLPLayout, num: int, *, mean: float, std: float,
                            seed: int) -> WeightsFile:
    """``num`` i.i.d. draws from the toy target N(mean, std² I) over the flat weights (one "run" each)."""
    layout = as_layout(layer_sizes)
    flat = mean + std * torch.randn(num, layout.dim, generator=generator(seed, "gaussian-target"))
    zeros = torch.zeros(num, dtype=torch.long)
    return WeightsFile(flat, layout.layer_sizes,
                       columns={"run": torch.arange(num), "step": zeros, "epoch": zeros, "final": zeros + 1})


def train_stage(job: StageJob) -> None:
    """Snakemake stage: ``results/{experiment}/ensemble/weights.pt`` and ``metrics.csv``."""
    cfg = job.params["cfg"]
    ens = EnsembleConfig(**cfg["ensemble"])
    data = load_experiment_data(cfg)
    if data.weight_target:
        snapshots = gaussian_target_samples(cfg["layer_sizes"], ens.runs, seed=cfg["seed"], **data.weight_target)
        history = pd.DataFrame({"run": [], "epoch": [], "step": []})
    else:
        result = train_ensemble(data, cfg["layer_sizes"], ens, seed=derive_seed(cfg["seed"], "ensemble"),
                                device=cfg["device"])
        snapshots, history = result.snapshots, result.history
        last = history[history.epoch == history.epoch.max()]
        log.info("final runs: test accuracy %.4f ± %.4f, test loss %.4f", last.test_acc.mean(), last.test_acc.std(),
                 last.test_loss.mean())
    snapshots.metadata = {
        "kind": "ensemble",
        "experiment": cfg["name"],
        "dataset": cfg["dataset"],
        "seed": cfg["seed"],
        "ensemble": asdict(ens),
        "config_hash": config_hash({k: v for k, v in cfg.items() if k != "device"}),
        "weightflow_version": weightflow.__version__,
    }
    save_weights(job.output_path("weights"), snapshots)
    history.to_csv(job.output_path("metrics"), index=False, float_format="%.6g")
    log.info("wrote %d networks (%d runs) to %s", len(snapshots), ens.runs, job.outputs["weights"])

"""Breast-cancer flows with x1-prediction: where the thesis' objective (x1, t ~ Beta(1, 2)) fails, and fixes.

Trains one flow exactly as ``weightflow.flow.stages.train_stage`` does (same held-out runs, path params, model
seed), on ``results/breast_cancer/aligned/ref0/weights.pt`` (euclidean) or ``canonical/ref0`` (normalized,
geometric), with the ``flow``/``model`` fields given on the command line, then measures

* samples (Euler, ``--steps``): per-weight std against the training data's (mean over coordinates and median
  ratio), mean validation-split accuracy, fraction of collapsed (one-class) networks;
* the predictor's error per time bin on held-out runs (fixed x0 and noise): ``x1_mse`` = mean over coordinates
  of ``|x̂1 − x1|²`` (x̂1 = the model's endpoint: ``exp_{x_t}((1 − t) v̂)`` for velocity models) against
  ``mean_mse`` (predicting the data mean), and ``vel_mse`` = ``|v̂ − u_t|² / D`` of the sampler's velocity;
* the spread of the sampler's predictions x̂1(x_t, t) along the sampling trajectories (per-weight std, mean
  over coordinates);
* with ``--oracle`` (euclidean): samples of hybrids that use the learned field on ``t < τ`` and the exact
  marginal field of the training rows (the minimizer of the training loss, computable for an empirical
  target) on ``t ≥ τ`` — which time range loses the spread.

    python benchmarks/flow_quality/x1_prediction.py --flow euclidean-ref0-independent --model mlp \
        --objective x1 --time beta --iterations 4000 --out /tmp/fq/x1_mlp_beta.json

Writes a JSON file (``--out``) and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import torch

from weightflow.data import load_dataset
from weightflow.flow.model_file import FlowModel, build_network, save_flow
from weightflow.flow.paths import build_path
from weightflow.flow.sampling import sample
from weightflow.flow.spec import FlowSpec
from weightflow.flow.stages import flow_config, holdout_runs
from weightflow.flow.training import TrainSettings, train_flow
from weightflow.io import load_weights
from weightflow.utils import generator
from weightflow.weights import MLPLayout, forward

REPO = Path(__file__).resolve().parents[2]


def _register_variants() -> None:
    """Scratch model name ``ngt_cskip``: NG-T with a per-coordinate affine skip (:mod:`weightflow.models.skip`) in
    place of its per-layer one.  The flat MLP without its time-only shift and the NG-T without its skip are the
    model options ``{"time_shift": false}`` and ``{"affine_skip": false}`` (``--model-options``)."""
    import weightflow.models as models
    from weightflow.models.ngt import NGT
    from weightflow.models.skip import AffineSkip, SkipField

    def ngt_cskip(layer_sizes, **kw):
        return SkipField(NGT(layer_sizes, **kw, affine_skip=False),
                         AffineSkip.per_coordinate(layer_sizes, time_size=kw.get("time_size", 64)))

    models.MODELS["ngt_cskip"] = ngt_cskip
    models._OPTIONS["ngt_cskip"] = models._OPTIONS["ngt"]


_register_variants()
LAYER_SIZES = [30, 16, 16, 2]
TIMES = [0.02, 0.1, 0.25, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99]


def x1_hat(flow: FlowModel, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The endpoint the sampler heads for: ``exp_{x_t}((1 − t) v(x_t, t))`` (= the x1-prediction itself)."""
    return flow.geometry.exp(x_t, (1 - t)[:, None] * flow.velocity(x_t, t))


@torch.no_grad()
def error_by_time(flow: FlowModel, path, holdout: torch.Tensor, mean: torch.Tensor, coupling: str, seed: int = 7):
    from weightflow.flow.couplings import couple

    gen = torch.Generator().manual_seed(seed)
    x1 = holdout[torch.randperm(len(holdout), generator=gen)[:512]]
    x0 = couple(coupling, path.sample_prior(len(x1), generator=gen), x1, path.geometry)
    rows = []
    for t_value in TIMES:
        t = torch.full((len(x1),), t_value)
        x_t, u_t = path.point_and_velocity(x0, x1, t)
        v = flow.velocity(x_t, t)
        pred = flow.geometry.exp(x_t, (1 - t)[:, None] * v)
        d = x1.shape[1]
        rows.append({
            "t": t_value,
            "x1_mse": float(flow.geometry.log(x1, pred).pow(2).sum(1).mean() / d),
            "mean_mse": float(flow.geometry.log(x1, flow.geometry.project(mean.expand_as(x1))).pow(2).sum(1).mean() / d),
            "vel_mse": float((v - u_t).pow(2).sum(1).mean() / d),
            "u_sq": float(u_t.pow(2).sum(1).mean() / d),
        })
    return rows


class OracleField(torch.nn.Module):
    """Exact marginal x1-prediction of the empirical target ``rows`` under the Euclidean path with independent
    coupling and prior N(0, diag(std²)): ``E[x1 | x_t] = Σ_i softmax_i(−|(x_t − t x1_i)/std|² / (2(1−t)²)) x1_i``."""

    def __init__(self, rows: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.rows, self.std = rows, std

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1, 1)
        a = (x / self.std).double()
        b = (self.rows / self.std).double()
        scale = (1 - t).clamp_min(1e-4).double()
        sq = (a.pow(2).sum(1, keepdim=True) - 2 * t.double() * a @ b.T + t.double() ** 2 * b.pow(2).sum(1)[None])
        w = torch.softmax(-sq / (2 * scale**2), dim=1)
        return (w @ self.rows.double()).float()


def scores(nets: torch.Tensor, data_std: torch.Tensor, x_val, y_val) -> dict[str, float]:
    logits = forward(nets, LAYER_SIZES, x_val)
    pred = logits.argmax(-1)
    acc = (pred == y_val).float().mean(1)
    collapsed = (pred == pred[:, :1]).all(1).float()
    std = nets.std(0)
    return {"acc_mean": float(acc.mean()), "acc_std": float(acc.std()), "collapsed": float(collapsed.mean()),
            "sample_std_mean": float(std.mean()), "data_std_mean": float(data_std.mean()),
            "std_ratio_median": float((std / data_std).median()), "finite": float(torch.isfinite(nets).all(1).float().mean())}


@torch.no_grad()
def trajectory_spread(flow: FlowModel, num: int, steps: int, seed: int) -> list[dict[str, float]]:
    """Per-weight std over ``num`` Euler trajectories of x_t and of the predictions x̂1(x_t, t)."""
    x = flow.sample_prior(num, generator=torch.Generator().manual_seed(seed))
    h = 1.0 / steps
    rows = []
    marks = {round(s * steps) for s in TIMES}
    for k in range(steps):
        t = torch.full((num,), k * h)
        v = flow.velocity(x, t)
        if k in marks:
            pred = flow.geometry.exp(x, (1 - t)[:, None] * v)
            rows.append({"t": k * h, "x_t_std": float(x.std(0).mean()), "x1_hat_std": float(pred.std(0).mean())})
        x = flow.geometry.exp(x, h * v)
    return rows


def load_data(spec: FlowSpec, last_layer: str):
    """The flow's training file: aligned/ref0 for raw flows; for canonical flows that file canonicalized here
    (``weightflow.canonical.canonicalize``, cached under /tmp/fq) unless results/ already holds it."""
    from weightflow.canonical import canonicalize
    from weightflow.io import WeightsFile, save_weights

    raw = REPO / "results/breast_cancer" / ("ensemble/weights.pt" if spec.alignment == "none"
                                             else f"aligned/{spec.alignment}/weights.pt")
    if spec.representation != "canonical":
        return load_weights(raw, layer_sizes=LAYER_SIZES)
    for candidate in (REPO / f"results/breast_cancer/canonical/{last_layer}/{spec.alignment}/weights.pt",
                      Path(f"/tmp/fq/canonical_{last_layer}_{spec.alignment}.pt")):
        if candidate.is_file():
            return load_weights(candidate, layer_sizes=LAYER_SIZES)
    wf = load_weights(raw, layer_sizes=LAYER_SIZES)
    flat, _ = canonicalize(wf.weights, wf.layout, None, last_layer=last_layer)
    out = WeightsFile(flat, wf.layer_sizes, columns=dict(wf.columns), metadata={"canonical": last_layer})
    save_weights(candidate, out)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--flow", default="euclidean-ref0-independent")
    p.add_argument("--model", default="mlp")
    p.add_argument("--model-options", default="{}", help="JSON, e.g. '{\"width\": 32, \"depth\": 3}'")
    p.add_argument("--objective", default="x1")
    p.add_argument("--time", default="beta")
    p.add_argument("--weighting", default=None)
    p.add_argument("--flow-options", default="{}", help="JSON of other flow fields (prior_std, ema_decay, ...)")
    p.add_argument("--iterations", type=int, default=4000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--oracle", action="store_true")
    p.add_argument("--last-layer", default="free", help="canonical form of normalized/geometric flows")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    spec = FlowSpec.parse(args.flow)
    defaults = {"mlp": {"width": 256, "depth": 3}, "ngt": {"width": 32, "depth": 3}}
    model = {"name": args.model, **defaults[args.model.split("_")[0]]}
    model.update(json.loads(args.model_options))
    flow_section = {"objective": args.objective, "time_distribution": args.time, "iterations": args.iterations,
                    "batch_size": args.batch, "lr": args.lr, "val_samples": 0, "val_every": args.iterations,
                    "checkpoint_every": 10**9, **json.loads(args.flow_options)}
    if args.weighting:
        flow_section["loss_weighting"] = args.weighting
    cfg = {"name": "breast_cancer", "dataset": "breast_cancer", "seed": 0, "layer_sizes": LAYER_SIZES,
           "ensemble": {"init_std": 0.31622777}, "canonical": {"last_layer": args.last_layer},
           "model": model, "flow": flow_section}
    settings = TrainSettings.from_config(flow_section)
    wf = load_data(spec, args.last_layer)
    held_out = holdout_runs(wf.columns["run"], settings.holdout_fraction, generator(0, "flow", "holdout"))
    mask = torch.isin(wf.columns["run"], torch.tensor(held_out, dtype=wf.columns["run"].dtype))
    data, holdout = wf.weights[~mask], wf.weights[mask]
    config = flow_config(cfg, args.flow, data)
    layout = MLPLayout(tuple(LAYER_SIZES))
    path = build_path(spec.geometry, layout, config["path_params"], settings.sigma)
    net = build_network(config)
    start = time.perf_counter()
    result = train_flow(path, net, data, coupling=spec.coupling, settings=settings,
                        seed_generator=partial(generator, 0, "flow", args.flow), holdout=holdout)
    seconds = time.perf_counter() - start
    out_path = Path(args.out)
    save_flow(out_path.with_suffix(".model.pt"), result.ema_model, config, held_out)
    flow = FlowModel(path, result.ema_model, config, held_out)

    task = load_dataset("breast_cancer", seed=0)
    data_std = data.std(0)
    nets = sample(flow, args.samples, steps=args.steps, generator=torch.Generator().manual_seed(11))
    report = {"flow": args.flow, "model": model, "flow_settings": flow_section, "train_seconds": round(seconds, 1),
              "train_loss_last": float(result.log.iloc[-1].train_loss), "val_loss_last": float(result.log.iloc[-1].val_loss),
              "samples": scores(nets, data_std, task.x_val, task.y_val),
              "data": scores(data[torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:args.samples]],
                             data_std, task.x_val, task.y_val),
              "error_by_time": error_by_time(flow, path, holdout, data.mean(0), spec.coupling),
              "trajectory": trajectory_spread(flow, args.samples, args.steps, 11)}
    if args.oracle:
        rows = data[torch.randperm(len(data), generator=torch.Generator().manual_seed(1))[:4000]]
        std = path.prior._std(rows)
        oracle = FlowModel(path, OracleField(rows, std), {**config, "flow": {**config["flow"], "objective": "x1"}}, [])
        hybrid = []
        for tau in (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 1.0):
            class Hybrid:
                geometry, layout = flow.geometry, flow.layout

                @staticmethod
                def velocity(x, t, tau=tau):
                    return flow.velocity(x, t) if float(t[0]) < tau else oracle.velocity(x, t)

                @staticmethod
                def sample_prior(n, generator=None):
                    return flow.sample_prior(n, generator=generator)

            h_nets = sample(Hybrid, 128, steps=args.steps, generator=torch.Generator().manual_seed(11))
            hybrid.append({"learned_below": tau, **scores(h_nets, data_std, task.x_val, task.y_val)})
        report["hybrid"] = hybrid
    out_path.write_text(json.dumps(report, indent=1))
    s = report["samples"]
    print(f"{args.flow} {args.model} {args.objective}/{args.time}/{args.weighting or 'none'} {flow_section}: "
          f"std {s['sample_std_mean']:.4f} (data {s['data_std_mean']:.4f}, median ratio {s['std_ratio_median']:.3f}), "
          f"acc {s['acc_mean']:.4f} (data {report['data']['acc_mean']:.4f}), collapsed {s['collapsed']:.3f}, "
          f"{seconds:.0f} s")
    for r in report["error_by_time"]:
        print("  t={t:.2f} x1_mse={x1_mse:.3g} mean_mse={mean_mse:.3g} vel_mse={vel_mse:.3g} u_sq={u_sq:.3g}".format(**r))
    for r in report["trajectory"]:
        print("  traj t={t:.2f} x_t_std={x_t_std:.4f} x1_hat_std={x1_hat_std:.4f}".format(**r))
    for r in report.get("hybrid", []):
        print("  hybrid learned<{learned_below}: std {sample_std_mean:.4f} ratio {std_ratio_median:.3f} acc {acc_mean:.4f}".format(**r))


if __name__ == "__main__":
    main()

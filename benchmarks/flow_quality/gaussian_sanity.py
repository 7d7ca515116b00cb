"""Gaussian sanity experiment (N(0, I) -> N(1, I) over the 802 weights of a 30-16-16-2 MLP): diagnostics.

Trains the flow of config/config.yaml's ``gaussian`` experiment (or a variant given on the command line) and
measures, against the exact answer:

* the per-network-mean std ratio (samples' std of ``x.mean(1)`` over the target's ``1/sqrt(D)``),
* the learned field's slope along the mean direction m = 1/sqrt(D) and across it, against the exact field
  ``v*(x, t) = 1 + a(t) (x - t 1)``, ``a(t) = (2t - 1) / ((1 - t)^2 + t^2)``, on exact marginal draws x_t,
* the exact field's own samples (sampler and statistic check).

    python benchmarks/flow_quality/gaussian_sanity.py --model mlp --iterations 500 --batch 256

Prints one JSON line per run (and the slope table with --slopes).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from functools import partial

import torch

from weightflow.flow.model_file import FlowModel, build_network
from weightflow.flow.paths import build_path
from weightflow.flow.sampling import sample
from weightflow.flow.training import TrainSettings, train_flow
from weightflow.utils import generator
from weightflow.weights import MLPLayout

LAYOUT = MLPLayout((30, 16, 16, 2))


def _register_variants() -> None:
    """Scratch variants of the flat MLP (measured here before any change to weightflow.models.mlp)."""
    from torch import nn

    import weightflow.models as models
    from weightflow.models.mlp import FlatMLP

    class AffineSkipMLP(FlatMLP):
        """FlatMLP plus a time-only per-coordinate shift c(τ): out = trunk + g(τ) ⊙ x + c(τ)."""

        def __init__(self, layer_sizes, **kw):
            super().__init__(layer_sizes, **kw)
            width = self.input.out_features
            self.shift = nn.Linear(width, self.dim)
            nn.init.zeros_(self.shift.weight)
            nn.init.zeros_(self.shift.bias)

        def forward(self, x, t):
            tau = self.time(torch.as_tensor(t, dtype=x.dtype).reshape(-1).expand(x.shape[0]))
            return super().forward(x, t) + self.shift(tau)

    class AffineSkipMLPZero(AffineSkipMLP):
        """AffineSkipMLP whose trunk read-out starts at zero (the affine part is fitted first)."""

        def __init__(self, layer_sizes, **kw):
            super().__init__(layer_sizes, **kw)
            nn.init.zeros_(self.output[1].weight)
            nn.init.zeros_(self.output[1].bias)

    models.MODELS["mlp_affine"] = AffineSkipMLP
    models.MODELS["mlp_affine0"] = AffineSkipMLPZero
    for name in ("mlp_affine", "mlp_affine0"):
        models._OPTIONS[name] = models._OPTIONS["mlp"]


_register_variants()
PARAMS = {"prior_std": 1.0, "bias_prior_std": 1.0, "last_radius": math.sqrt(2), "last_layer": "free"}


def exact_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.reshape(-1, 1).to(x.dtype)
    a = (2 * t - 1) / ((1 - t) ** 2 + t**2)
    return 1.0 + a * (x - t)


class ExactField(torch.nn.Module):
    def forward(self, x, t):
        return exact_velocity(x, torch.as_tensor(t).expand(x.shape[0]))


@torch.no_grad()
def slopes(model, times, n=2000, seed=5):
    """Least-squares slopes of the learned field along m (v̄ on x̄) and across it (per coordinate, mean removed)."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for t in times:
        s = math.sqrt((1 - t) ** 2 + t**2)
        x = t + s * torch.randn(n, LAYOUT.dim, generator=gen)
        tt = torch.full((n,), t)
        v = model(x, tt).double()
        xd = x.double()
        xm, vm = xd.mean(1), v.mean(1)
        slope_m = float(((xm - xm.mean()) * (vm - vm.mean())).sum() / ((xm - xm.mean()) ** 2).sum())
        xp, vp = xd - xm[:, None], v - vm[:, None]
        xp, vp = xp - xp.mean(0), vp - vp.mean(0)
        slope_perp = float((xp * vp).sum() / (xp * xp).sum())
        a = (2 * t - 1) / s**2
        rows.append({"t": t, "a_exact": a, "slope_mean_dir": slope_m, "slope_perp": slope_perp,
                     "mean_velocity": float(vm.mean())})
    return rows


def net_mean_ratio(x: torch.Tensor) -> float:
    return float(x.double().mean(1).std() * math.sqrt(x.shape[1]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="mlp")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--time-size", type=int, default=16)
    p.add_argument("--iterations", type=int, default=500)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--ema", type=float, default=0.99)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--objective", default="velocity")
    p.add_argument("--time-dist", default="beta")
    p.add_argument("--loss-weighting", default=None)
    p.add_argument("--rows", type=int, default=4500)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--method", default="euler")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extra", default="{}", help="JSON of extra model options")
    p.add_argument("--flow-extra", default="{}", help="JSON of extra TrainSettings fields")
    p.add_argument("--slopes", action="store_true")
    p.add_argument("--raw", action="store_true", help="also sample the raw (non-EMA) network")
    p.add_argument("--exact", action="store_true", help="sample the exact field only")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    path = build_path("euclidean", LAYOUT, PARAMS)
    if args.exact:
        flow = FlowModel(path, ExactField(), {"layer_sizes": list(LAYOUT.layer_sizes),
                                              "flow": {"objective": "velocity"}}, [])
        for steps in (10, 20, 50, 100):
            x = sample(flow, args.samples, steps=steps, generator=torch.Generator().manual_seed(1))
            print(json.dumps({"exact": True, "steps": steps, "net_mean_ratio": net_mean_ratio(x),
                              "coord_std": float(x.std(0).mean())}))
        return

    data = 1.0 + torch.randn(args.rows, LAYOUT.dim, generator=torch.Generator().manual_seed(args.seed))
    model_cfg = {"name": args.model, "width": args.width, "depth": args.depth, "time_size": args.time_size,
                 **json.loads(args.extra)}
    flow_fields = {"objective": args.objective, "time_distribution": args.time_dist, **json.loads(args.flow_extra)}
    if args.loss_weighting:
        flow_fields["loss_weighting"] = args.loss_weighting
    config = {"layer_sizes": list(LAYOUT.layer_sizes), "geometry": "euclidean", "path_params": PARAMS,
              "model": model_cfg, "model_seed": 3 + args.seed, "flow": {**flow_fields, "sigma": 0.0}}
    settings = TrainSettings(iterations=args.iterations, batch_size=args.batch, lr=args.lr, warmup_steps=args.warmup,
                             val_samples=0, val_every=args.iterations, ema_decay=args.ema, **flow_fields)
    start = time.perf_counter()
    result = train_flow(path, build_network(config), data, coupling="independent", settings=settings,
                        seed_generator=partial(generator, args.seed, "gaussian"))
    seconds = time.perf_counter() - start
    out = {"model": model_cfg, "flow": flow_fields, "iterations": args.iterations, "batch": args.batch, "lr": args.lr,
           "ema": args.ema, "seconds": round(seconds, 1)}
    nets = [("ema", result.ema_model)] + ([("raw", result.model.eval())] if args.raw else [])
    for which, net in nets:
        flow = FlowModel(path, net, config, [])
        x = sample(flow, args.samples, steps=args.steps, method=args.method, generator=torch.Generator().manual_seed(1))
        out[which] = {"net_mean_ratio": round(net_mean_ratio(x), 4), "grand_mean": round(float(x.mean()), 4),
                      "coord_std": round(float(x.std(0).mean()), 4)}
        if args.slopes:
            out[which]["slopes"] = [{k: round(v, 4) for k, v in r.items()}
                                    for r in slopes(net, [0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98], n=min(2000, args.samples))]
    print(json.dumps(out))


if __name__ == "__main__":
    main()

"""Before/after table of the Gaussian sanity experiment for each vector field, with the energy distance to fresh
target draws against its noise floor (weightflow.plots.gaussian).

    python benchmarks/flow_quality/gaussian_table.py --out benchmarks/flow_quality/gaussian_table.csv

Rows: the flat MLP of config/config.yaml's ``gaussian`` experiment before (no time-only shift) and after, and NG-T
(width 16, 2 blocks) without and with the per-layer affine skip; each trained on 4500 target draws with the
experiment's flow settings (velocity, Beta(1, 2) times, lr 0.003, EMA 0.99; MLP 500 steps of 256, NG-T 300 steps
of 64) and sampled like the experiment (2000 networks, 100 Euler steps; ``--stochastic`` adds ε = 0.05 on
t < 0.9).
"""

from __future__ import annotations

import argparse
import math
import time
from functools import partial

import pandas as pd
import torch

from weightflow.flow.model_file import FlowModel
from weightflow.flow.paths import build_path
from weightflow.flow.sampling import sample
from weightflow.flow.training import TrainSettings, train_flow
from weightflow.models import NGT
from weightflow.models.mlp import FlatMLP
from weightflow.plots.gaussian import noise_floor, sanity_stats, target_draws
from weightflow.utils import generator
from weightflow.weights import MLPLayout

LAYOUT = MLPLayout((30, 16, 16, 2))
PARAMS = {"prior_std": 1.0, "bias_prior_std": 1.0, "last_radius": math.sqrt(2), "last_layer": "free"}


class _ExactField(torch.nn.Module):
    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1, 1).to(x.dtype)
        return 1.0 + (2 * t - 1) / ((1 - t) ** 2 + t**2) * (x - t)


def networks():
    mlp = {"width": 128, "depth": 2, "time_size": 16}
    ngt = {"width": 16, "depth": 2, "time_size": 16}
    return {
        "mlp (before: no time-only shift)": (lambda: FlatMLP(LAYOUT, **mlp, time_shift=False), 500, 256),
        "mlp (after)": (lambda: FlatMLP(LAYOUT, **mlp), 500, 256),
        "ngt (before: no skip)": (lambda: NGT(LAYOUT, **ngt, affine_skip=False), 300, 64),
        "ngt (after: per-layer affine skip)": (lambda: NGT(LAYOUT, **ngt), 300, 64),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--only", nargs="*", default=None)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--stochastic", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    data = 1.0 + torch.randn(4500, LAYOUT.dim, generator=torch.Generator().manual_seed(0))
    path = build_path("euclidean", LAYOUT, PARAMS)
    gen = generator(0, "gaussian-table")
    floor = noise_floor(args.samples, LAYOUT.dim, 1.0, 1.0, gen=gen)
    rows = []
    for name, (make, iterations, batch) in networks().items():
        if args.only and not any(key in name for key in args.only):
            continue
        with torch.random.fork_rng():
            torch.manual_seed(3)
            net = make()
        settings = TrainSettings(objective="velocity", iterations=iterations, batch_size=batch, lr=3e-3, warmup_steps=20,
                                 val_samples=0, val_every=iterations, ema_decay=0.99)
        start = time.perf_counter()
        result = train_flow(path, net, data, coupling="independent", settings=settings,
                            seed_generator=partial(generator, 0, "gaussian"))
        seconds = time.perf_counter() - start
        flow = FlowModel(path, result.ema_model, {"layer_sizes": list(LAYOUT.layer_sizes),
                                                  "flow": {"objective": "velocity"}}, [])
        samplers = {"euler": {}}
        if args.stochastic:
            samplers["stochastic"] = {"noise": 0.05, "noise_range": (0.0, 0.9)}
        for sampler, options in samplers.items():
            start = time.perf_counter()
            x = sample(flow, args.samples, steps=100, generator=torch.Generator().manual_seed(1), **options)
            stats = sanity_stats(x, 1.0, 1.0, fresh=target_draws(args.samples, LAYOUT.dim, 1.0, 1.0, gen))
            rows.append({"vector_field": name, "sampler": sampler, "train_steps": iterations, "batch": batch,
                         "train_seconds": round(seconds, 1), "sample_seconds": round(time.perf_counter() - start, 1),
                         **stats, **floor})
            print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
    # Reference: the exact field v*(x, t) = 1 + a(t) (x − t), a = (2t − 1)/((1 − t)² + t²), with the same sampler.
    exact = FlowModel(path, _ExactField(), {"layer_sizes": list(LAYOUT.layer_sizes), "flow": {"objective": "velocity"}},
                      [])
    x = sample(exact, args.samples, steps=100, generator=torch.Generator().manual_seed(1))
    rows.append({"vector_field": "exact field", "sampler": "euler",
                 **sanity_stats(x, 1.0, 1.0, fresh=target_draws(args.samples, LAYOUT.dim, 1.0, 1.0, gen)), **floor})
    table = pd.DataFrame(rows)
    table.to_csv(args.out, index=False, float_format="%.4g")
    cols = ["vector_field", "sampler", "net_mean_std_ratio", "std_ratio_median", "energy_distance", "energy_floor_mean",
            "energy_floor_std", "train_seconds", "sample_seconds"]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main()

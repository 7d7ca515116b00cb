"""Cost and noise of the divergence estimators of weightflow.likelihood (issue 7).

For untrained vector-field networks (``weightflow.models.build_model``) over MLPs with D = 802 (30-16-16-2) and
D = 7,960 (784-10-10), times one field evaluation with its divergence — the unit of work of the backward ODE,
which costs ``nfe`` of them per trajectory — for the exact divergence (D vector-Jacobian products, batched) and
Hutchinson with k = 1 and 4 probes, and reports seconds per network per evaluation and per trajectory of
``--nfe`` evaluations (the default config's 20 log-grid Euler steps = 21).  The Hutchinson noise is measured at
the same point: the standard deviation over ``--noise-probes`` single-probe estimates (the k-probe estimate's is
that / sqrt(k)), next to the exact divergence.  The exact divergence is skipped (``-``) when one evaluation
would exceed ``--exact-budget-s`` (estimated from the time of one batch of vector-Jacobian products).

    python benchmarks/likelihood.py                     # mlp and ngt fields, both sizes
    python benchmarks/likelihood.py --models mlp --networks 4 --threads 2
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from weightflow.likelihood import draw_probes, field_and_divergence, tangent_field
from weightflow.manifold import Euclidean
from weightflow.models import build_model

CASES = {"802": [30, 16, 16, 2], "7960": [784, 10, 10]}
MODEL_OPTIONS = {"mlp": dict(width=256, depth=3), "ngt": dict(width=32, depth=3, heads=4)}


def timed(fn, repeats: int = 1) -> tuple[float, object]:
    """Median wall-clock seconds of ``repeats`` calls of ``fn`` (after one warm-up call) and its last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], out


def bench(model_name: str, sizes: list[int], args) -> list[dict]:
    geometry = Euclidean(sizes, prior_std=0.3, bias_prior_std=0.3)
    model = build_model(model_name, sizes, seed=0, **MODEL_OPTIONS[model_name]).eval().requires_grad_(False)
    field = tangent_field(lambda x, t: model(x, t), geometry)
    gen = torch.Generator().manual_seed(0)
    b = args.networks
    x = geometry.sample_prior(b, generator=gen)
    t = torch.full((b,), 0.5)
    rows = []
    for k in (1, 4):
        probes = draw_probes(k, b, geometry.dim, generator=gen)
        sec, _ = timed(lambda: field_and_divergence(field, x, t, geometry, probes=probes), args.repeats)
        rows.append(dict(estimator=f"hutchinson k={k}", sec=sec / b))
    # One batch of vjp_batch basis vectors, extrapolated to D, decides whether the exact divergence is run.
    eye = torch.eye(geometry.dim)[: args.vjp_batch, None, :].expand(-1, b, -1)
    sec_batch, _ = timed(lambda: field_and_divergence(field, x, t, geometry, probes=eye, vjp_batch=args.vjp_batch))
    estimate = sec_batch * math.ceil(geometry.dim / args.vjp_batch)
    exact = None
    if estimate <= args.exact_budget_s:
        sec, (_, exact) = timed(lambda: field_and_divergence(field, x, t, geometry, vjp_batch=args.vjp_batch))
        rows.append(dict(estimator="exact", sec=sec / b))
    else:
        rows.append(dict(estimator="exact", sec=None, estimate=estimate / b))
    noise = draw_probes(args.noise_probes, b, geometry.dim, generator=gen)
    _, single = field_and_divergence(field, x, t, geometry, probes=noise, vjp_batch=args.vjp_batch)
    std = single.std(0).mean().item()  # per network, averaged over the networks
    for row in rows:
        row.update(model=model_name, D=geometry.dim, std1=std,
                   exact_div=None if exact is None else exact[0].abs().mean().item())
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mlp", "ngt"], choices=sorted(MODEL_OPTIONS))
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--networks", type=int, default=4, help="networks per batch")
    parser.add_argument("--nfe", type=int, default=21, help="evaluations per trajectory for the per-trajectory column")
    parser.add_argument("--vjp-batch", type=int, default=64)
    parser.add_argument("--noise-probes", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--exact-budget-s", type=float, default=120.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.networks} networks per batch, "
          f"per-trajectory = {args.nfe} evaluations")
    header = f"{'model':5} {'D':>5} {'estimator':15} {'s/net/eval':>11} {'s/net/traj':>11} {'|div| exact':>11} " \
             f"{'std k=1':>9} {'std k=4':>9}"
    print(header)
    print("-" * len(header))
    for model_name in args.models:
        for case in args.cases:
            for row in bench(model_name, CASES[case], args):
                if row["sec"] is None:
                    per_eval = f"~{row['estimate']:.3g} (skip)"
                    per_traj = f"~{row['estimate'] * args.nfe:.3g}"
                else:
                    per_eval, per_traj = f"{row['sec']:.4g}", f"{row['sec'] * args.nfe:.4g}"
                exact = "-" if row["exact_div"] is None else f"{row['exact_div']:.4g}"
                print(f"{row['model']:5} {row['D']:>5} {row['estimator']:15} {per_eval:>11} {per_traj:>11} {exact:>11} "
                      f"{row['std1']:>9.4g} {row['std1'] / 2:>9.4g}", flush=True)


if __name__ == "__main__":
    main()

"""Alignment speed (seconds per network) and, optionally, loss barriers per method and objective.

    python benchmarks/alignment.py                       # timing table (30-16-16-2 x 1000, 784-10-10 x 100)
    python benchmarks/alignment.py --barriers results/breast_cancer/ensemble/weights.pt [--final-only]

Timing (wall and process CPU time; the CPU time is the better measure on a shared machine): networks drawn from the prior (N(0, 0.1) weights), aligned onto the first one with the default
``alignment`` config of config/schema.yaml (Sinkhorn includes its weight-matching initialization).  Task
objectives use breast_cancer (30-16-16-2) and Fashion-MNIST (784-10-10; random inputs if its files are absent).
Barriers: every network of the ensemble file aligned onto ``ref0`` with each method/objective, then the
midpoint/max barriers of the final weights of seeded run pairs (as the ``loss_barriers`` rule computes them).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
import yaml

from weightflow.align.references import align, align_weights_file
from weightflow.barriers import barrier_table
from weightflow.data import load_dataset
from weightflow.io import load_weights
from weightflow.utils import generator
from weightflow.weights import init_weights

SCHEMA = Path(__file__).resolve().parents[1] / "config" / "schema.yaml"
VARIANTS = [("weight_matching", "l2"), ("sinkhorn", "l2"), ("sinkhorn", "mid"), ("sinkhorn", "rnd")]


def default_alignment() -> dict:
    """The ``alignment`` defaults of config/schema.yaml."""
    props = yaml.safe_load(SCHEMA.read_text())["$defs"]["alignment"]["properties"]
    acfg = {k: v["default"] for k, v in props.items()}
    acfg["barriers"] = {k: v["default"] for k, v in props["barriers"]["properties"].items()}
    return acfg


def task_data(name: str):
    try:
        ds = load_dataset(name, seed=0)
        return ds.x_train, ds.y_train
    except FileNotFoundError:
        x = torch.randn(2000, 784, generator=generator(0, "bench-x"))
        return x, torch.randint(0, 10, (2000,), generator=generator(0, "bench-y"))


def timing(acfg: dict) -> None:
    print(f"{'network':<12} {'N':>5} {'method':<16} {'objective':<9} {'wall s':>8} {'ms/net':>8} {'cpu s':>8} {'cpu ms/net':>10}")
    for sizes, num, dataset in (([30, 16, 16, 2], 1000, "breast_cancer"), ([784, 10, 10], 100, "fashion_mnist")):
        flat = init_weights(sizes, num, init_std=0.1 ** 0.5, generator=generator(0, "bench", num))
        data = task_data(dataset)
        align(flat[0], flat[:2], sizes, dict(acfg, method="sinkhorn", objective="l2", steps=1))  # warm-up (imports)
        for method, objective in VARIANTS:
            cfg = dict(acfg, method=method, objective=objective)
            start, cpu = time.perf_counter(), time.process_time()
            align(flat[0], flat, sizes, cfg, data=data if objective != "l2" else None, seed=0)
            sec, cpu = time.perf_counter() - start, time.process_time() - cpu
            name = "-".join(map(str, sizes))
            print(f"{name:<12} {num:>5} {method:<16} {objective:<9} {sec:>8.2f} {1000 * sec / num:>8.2f} "
                  f"{cpu:>8.2f} {1000 * cpu / num:>10.2f}")


def barriers(path: str, acfg: dict, splits: list[str], final_only: bool) -> None:
    wf = load_weights(path)
    if final_only:  # barriers only use final weights; each network is aligned independently of the others
        wf = wf.select(wf.columns["final"] == 1)
    ds = load_dataset(wf.metadata.get("dataset", "breast_cancer"), seed=int(wf.metadata.get("seed", 0)))
    bcfg = dict(acfg["barriers"], splits=splits)
    print(f"{len(wf)} networks, {int(wf.columns['run'].max()) + 1} runs; pairs: {bcfg['pairs']} of final weights")
    print(f"{'method':<16} {'objective':<9} {'align s':>8} {'split':<6} {'midpoint unaligned':>19} {'aligned':>16} "
          f"{'ratio':>6} {'max unaligned':>14} {'max aligned':>12}")
    for method, objective in VARIANTS:
        cfg = dict(acfg, method=method, objective=objective)
        start = time.perf_counter()
        aligned = align_weights_file(wf, "ref0", cfg, data=ds, seed=0)
        sec = time.perf_counter() - start
        table = barrier_table(wf, aligned, ds, bcfg, seed=0)
        for split in splits:
            t = table[table.split == split]
            u, a = t[t.state == "unaligned"], t[t.state == "aligned"]
            print(f"{method:<16} {objective:<9} {sec:>8.1f} {split:<6} "
                  f"{u.midpoint_barrier.mean():>10.4f} ± {u.midpoint_barrier.std():.4f} "
                  f"{a.midpoint_barrier.mean():>7.4f} ± {a.midpoint_barrier.std():.4f} "
                  f"{a.midpoint_barrier.mean() / u.midpoint_barrier.mean():>6.2f} "
                  f"{u.max_barrier.mean():>14.4f} {a.max_barrier.mean():>12.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--barriers", metavar="ENSEMBLE_FILE", help="barrier table for this ensemble weights file")
    parser.add_argument("--splits", nargs="+", default=["test", "train"])
    parser.add_argument("--final-only", action="store_true", help="align only the final weights (what barriers use)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the align rule uses 1)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override alignment settings")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    acfg = default_alignment()
    for item in args.set:
        key, value = item.split("=", 1)
        acfg[key] = type(acfg[key])(yaml.safe_load(value))
    print("alignment settings:", {k: v for k, v in acfg.items() if k not in ("references", "barriers")})
    if args.barriers:
        barriers(args.barriers, copy.deepcopy(acfg), args.splits, args.final_only)
    else:
        timing(acfg)


if __name__ == "__main__":
    main()

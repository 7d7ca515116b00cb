"""Alignment speed (seconds per network) and, optionally, loss barriers per method and objective.

    python benchmarks/alignment.py                       # timing table (30-16-16-2 x 1000, 784-10-10 x 100)
    python benchmarks/alignment.py --large 20000 [--file ENSEMBLE_FILE] [--threads 2]
    python benchmarks/alignment.py --barriers results/breast_cancer/ensemble/weights.pt [--final-only]

``--large N``: tens of thousands of 784-10-10 snapshots (the first N rows of ``--file``, an ensemble weights file,
else draws from the prior) aligned onto one reference with weight matching and with Sinkhorn-mid (default
``alignment`` settings, ``--set`` overrides), then canonicalized; prints seconds per network, the peak resident
memory and the size of the weights file of the N networks.

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
from weightflow.utils import generator, keep_freed_memory
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


def large(num: int, acfg: dict, path: str | None) -> None:
    """Seconds per network to align and canonicalize ``num`` 784-10-10 networks, peak memory, file size."""
    import resource
    import tempfile

    from weightflow.canonical import canonicalize
    from weightflow.io import WeightsFile, save_weights

    sizes = [784, 10, 10]
    if path:
        flat = load_weights(path, layer_sizes=sizes).weights[:num]
    else:
        flat = init_weights(sizes, num, init_std=0.1, generator=generator(0, "bench-large"))
    num = flat.shape[0]
    data = task_data("fashion_mnist")
    print(f"784-10-10 x {num} ({'rows of ' + path if path else 'prior draws'}), {torch.get_num_threads()} threads")
    print(f"{'step':<22}{'wall s':>9}{'cpu s':>9}{'ms/net (wall)':>15}")

    def row(name: str, seconds: float, cpu: float) -> None:
        print(f"{name:<22}{seconds:>9.1f}{cpu:>9.1f}{1000 * seconds / num:>15.3f}", flush=True)

    for method, objective in (("weight_matching", "l2"), ("sinkhorn", "mid")):
        start, cpu = time.perf_counter(), time.process_time()
        perms, _ = align(flat[0], flat, sizes, dict(acfg, method=method, objective=objective),
                         data=data if objective != "l2" else None, seed=0)
        row(f"{method}-{objective}", time.perf_counter() - start, time.process_time() - cpu)
    start, cpu = time.perf_counter(), time.process_time()
    canonicalize(flat, sizes)
    row("canonicalize", time.perf_counter() - start, time.process_time() - cpu)
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "weights.pt"
        start = time.perf_counter()
        save_weights(target, WeightsFile(flat, sizes, columns={"run": torch.zeros(num, dtype=torch.long)},
                                         extras={f"perm.{h}": p for h, p in enumerate(perms)}))
        seconds = time.perf_counter() - start
        size = target.stat().st_size
        start = time.perf_counter()
        load_weights(target)
        loaded = time.perf_counter() - start
        print(f"weights file of {num} networks (+ permutations): {size / 2**20:.1f} MiB "
              f"({size / num / 1024:.1f} KiB per network); save {seconds:.1f} s, load {loaded:.1f} s")
    print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


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
    parser.add_argument("--large", type=int, metavar="N", help="seconds per network for N 784-10-10 snapshots")
    parser.add_argument("--file", help="ensemble weights file (784-10-10) whose first N rows --large aligns")
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
    elif args.large:
        keep_freed_memory()  # as every workflow stage does (weightflow.runner.run_stage)
        large(args.large, acfg, args.file)
    else:
        timing(acfg)


if __name__ == "__main__":
    main()

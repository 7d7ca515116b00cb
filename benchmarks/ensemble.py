"""Benchmark: ensemble training speed.

    python benchmarks/ensemble.py [--runs 100] [--epochs 50] [--threads 2]
    python benchmarks/ensemble.py --fashion [--runs 50] [--threads 1] [--rounds 8] [--epochs 1]

Default: R breast-cancer MLPs (30-16-16-2) as one vectorized computation vs a per-run loop (one ``nn.Sequential``
and one Adam per run, trained one run after another on the same minibatch schedule); prints both times and their
ratio.

``--fashion``: Fashion-MNIST 784-10-10, SGD (momentum 0.9, lr 0.1, weight decay 1e-5), batch 128 (the thesis'
base networks).  (1) Milliseconds per training iteration of R runs, the variants interleaved round by round (the
machine is shared: medians of wall and process CPU time): ``autograd`` is the iteration as weightflow ran it before
(advanced-index gather ``x[idx]``, autograd through the flat vector, unfused SGD), ``float32`` and ``bfloat16`` the
current one (:func:`weightflow.weights.loss_and_grad`, ``index_select`` gather, fused SGD; ``matmul_dtype``).
(2) ``--epochs`` epochs of :func:`weightflow.ensemble.train_ensemble` end to end (snapshot every 10 iterations,
per-snapshot scores on ``score_samples`` examples per split), with the test accuracy of the final runs.
"""

from __future__ import annotations

import argparse
import time

import torch

from weightflow.data import load_dataset
from weightflow.ensemble import EnsembleConfig, train_ensemble
from weightflow.utils import generator, keep_freed_memory
from weightflow.weights import cross_entropy, init_weights, loss_and_grad, to_sequential

SIZES = [30, 16, 16, 2]


def loop_baseline(data, cfg: EnsembleConfig, seed: int = 0) -> float:
    """Seconds to train ``cfg.runs`` nn.Sequential models one after another (no snapshots kept)."""
    gen = torch.Generator().manual_seed(seed)
    theta = init_weights(SIZES, cfg.runs, init_std=cfg.init_std, generator=gen)
    n = len(data.y_train)
    start = time.perf_counter()
    for r in range(cfg.runs):
        net = to_sequential(theta[r], SIZES)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=gen)
            for s in range(0, n, cfg.batch_size):
                idx = order[s:s + cfg.batch_size]
                loss = torch.nn.functional.cross_entropy(net(data.x_train[idx]), data.y_train[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    return time.perf_counter() - start


FASHION = [784, 10, 10]


def fashion_iterations(data, runs: int, rounds: int, per_round: int = 10) -> None:
    """Median ms per training iteration of ``runs`` Fashion-MNIST networks, variants interleaved round by round."""
    n, bs = len(data.y_train), 128
    x_bf16 = data.x_train.bfloat16()

    def variant(kind: str):
        gen = generator(0, "bench-fashion")
        theta = init_weights(FASHION, runs, init_std=0.1, generator=gen).requires_grad_(True)
        fused = kind != "autograd"
        opt = torch.optim.SGD([theta], lr=0.1, momentum=0.9, weight_decay=1e-5, fused=fused)
        order = torch.argsort(torch.rand(runs, n, generator=gen), dim=1)
        state = {"start": 0}

        def step() -> None:
            start = state["start"] = (state["start"] + bs) % (n - bs)
            idx = order[:, start:start + bs]
            opt.zero_grad()
            if kind == "autograd":  # the iteration before loss_and_grad
                cross_entropy(theta, FASHION, data.x_train[idx], data.y_train[idx]).sum().backward()
            else:
                flat_idx = idx.reshape(-1)
                src = x_bf16 if kind == "bfloat16" else data.x_train
                x = src.index_select(0, flat_idx).view(runs, bs, -1)
                y = data.y_train.index_select(0, flat_idx).view(runs, bs)
                theta.grad = loss_and_grad(theta, FASHION, x, y, matmul_dtype=src.dtype)[1]
            opt.step()
        return step

    steps = {kind: variant(kind) for kind in ("autograd", "float32", "bfloat16")}
    for step in steps.values():
        for _ in range(3):
            step()
    wall = {k: [] for k in steps}
    cpu = {k: [] for k in steps}
    for _ in range(rounds):
        for kind, step in steps.items():
            t, c = time.perf_counter(), time.process_time()
            for _ in range(per_round):
                step()
            wall[kind].append(1000 * (time.perf_counter() - t) / per_round)
            cpu[kind].append(1000 * (time.process_time() - c) / per_round)
    median = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    print(f"Fashion-MNIST {FASHION}, {runs} runs, batch 128, SGD; {rounds} interleaved rounds of {per_round} "
          "iterations")
    print(f"{'iteration':<12}{'wall ms':>10}{'cpu ms':>10}{'speed-up (cpu)':>16}")
    for kind in steps:
        print(f"{kind:<12}{median(wall[kind]):>10.2f}{median(cpu[kind]):>10.2f}"
              f"{median(cpu['autograd']) / median(cpu[kind]):>15.2f}x")


def fashion_training(data, runs: int, epochs: int) -> None:
    """End-to-end ``train_ensemble`` on Fashion-MNIST for both matmul dtypes."""
    print(f"\ntrain_ensemble: {runs} runs x {epochs} epoch(s), snapshot every 10 iterations, no burn-in")
    print(f"{'matmul_dtype':<14}{'seconds':>9}{'s/epoch':>9}{'networks':>10}{'test acc':>10}")
    for dtype in ("float32", "bfloat16"):
        cfg = EnsembleConfig(runs=runs, epochs=epochs, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9,
                             weight_decay=1e-5, init_std=0.1, burn_in_epochs=0, snapshot_every=10, matmul_dtype=dtype)
        start = time.perf_counter()
        result = train_ensemble(data, FASHION, cfg, seed=0)
        sec = time.perf_counter() - start
        acc = result.history[result.history.epoch == epochs].test_acc.mean()
        print(f"{dtype:<14}{sec:>9.1f}{sec / epochs:>9.1f}{len(result.snapshots):>10}{acc:>10.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=None, help="runs (default 100; 50 with --fashion)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default 50; 1 with --fashion)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fashion", action="store_true", help="Fashion-MNIST 784-10-10 iteration and epoch times")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds of the iteration timing (--fashion)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as every workflow stage does (weightflow.runner.run_stage)
    if args.fashion:
        data = load_dataset("fashion_mnist", seed=0)
        runs = args.runs or 50
        fashion_iterations(data, runs, args.rounds)
        fashion_training(data, runs, args.epochs or 1)
        return
    args.runs, args.epochs = args.runs or 100, args.epochs or 50
    data = load_dataset("breast_cancer", seed=0)
    cfg = EnsembleConfig(runs=args.runs, epochs=args.epochs, batch_size=32, lr=1e-3, burn_in_epochs=10,
                         snapshot_every=4)
    start = time.perf_counter()
    result = train_ensemble(data, SIZES, cfg, seed=0)
    vectorized = time.perf_counter() - start
    loop = loop_baseline(data, cfg)
    print(f"breast_cancer {SIZES}, {args.runs} runs x {args.epochs} epochs, batch 32, {args.threads} threads")
    print(f"{'method':<34}{'seconds':>10}")
    print(f"{'vectorized (weightflow.ensemble)':<34}{vectorized:>10.2f}   ({len(result.snapshots)} snapshots kept, "
          "with per-snapshot train/val scoring)")
    print(f"{'loop of nn.Sequential + Adam':<34}{loop:>10.2f}")
    print(f"speed-up: {loop / vectorized:.1f}x")


if __name__ == "__main__":
    main()

"""Benchmark: training R breast-cancer MLPs (30-16-16-2) as one vectorized computation vs a per-run loop.

    python benchmarks/ensemble.py [--runs 100] [--epochs 50] [--threads 2]

The loop baseline is what one would write without weightflow: one ``nn.Sequential`` and one Adam per run,
trained one run after another on the same minibatch schedule.  Prints both times and their ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from weightflow.data import load_dataset
from weightflow.ensemble import EnsembleConfig, train_ensemble
from weightflow.weights import init_weights, to_sequential

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
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

"""Benchmark: evaluating M networks at once (weightflow.evaluate) vs a per-network / per-pair loop.

    python benchmarks/evaluate.py [--networks 64 512 2000] [--threads 2]

Networks are digits MLPs (64-16-10) drawn from the prior N(0, 0.1), scored on the digits test split (360 inputs).
Columns: M; seconds of :func:`weightflow.evaluate.networks.evaluate_networks` (all metrics, canonical NLL, BMA
curve n = 1..64 with 20 subsets, diversity of 64 networks); seconds of the per-network metrics computed in a
Python loop over networks (``nn.Sequential`` forward, accuracy/NLL/Brier/ECE one network at a time); seconds of
the 64-network pairwise JS divergence batched vs looped over pairs.
"""

from __future__ import annotations

import argparse
import time

import torch

from weightflow.data import load_dataset
from weightflow.evaluate import metrics
from weightflow.evaluate.diversity import pairwise_js
from weightflow.evaluate.networks import EvaluationSettings, evaluate_networks, log_probs_of
from weightflow.weights import init_weights, to_sequential

LAYERS = [64, 16, 10]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def loop_metrics(nets, x, y) -> None:
    for flat in nets:
        lp = torch.log_softmax(to_sequential(flat, LAYERS)(x), -1)
        for fn in (metrics.accuracy, metrics.nll, metrics.brier, metrics.ece):
            fn(lp, y)


def loop_js(lp) -> None:
    m = lp.shape[0]
    for i in range(m):
        for j in range(i + 1, m):
            pairwise_js(lp[[i, j]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", type=int, nargs="+", default=[64, 512, 2000])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("digits", seed=0)
    x, y = data.x_test, data.y_test
    print(f"{'M':>6} {'evaluate_networks s':>20} {'loop metrics s':>15} {'JS batched s':>13} {'JS pair loop s':>15}")
    for m in args.networks:
        nets = init_weights(LAYERS, m, init_std=0.1 ** 0.5, generator=torch.Generator().manual_seed(0))
        t_all = timed(lambda: evaluate_networks(nets, LAYERS, x, y, EvaluationSettings(),
                                                generator=torch.Generator().manual_seed(1)))
        with torch.no_grad():
            t_loop = timed(lambda: loop_metrics(nets, x, y))
            lp = log_probs_of(nets[:64], LAYERS, x)
            t_js = timed(lambda: pairwise_js(lp))
            t_js_loop = timed(lambda: loop_js(lp))
        print(f"{m:>6} {t_all:>20.3f} {t_loop:>15.3f} {t_js:>13.4f} {t_js_loop:>15.3f}")


if __name__ == "__main__":
    main()

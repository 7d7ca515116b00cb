"""The fused NG-T attention of one layer on its compiled kernels against its ATen path (issue 15).

Times :func:`weightflow.models.layered._attention_forward` and ``_attention_backward`` (no autograd around them) on
the shapes of ``benchmarks/models.py``'s cases: (a) 30-16-16-2, batch 32, d = 64; (b) 784-10-10, batch 8, d = 32;
4 heads, key width and edge-MLP width d/2.  The two paths run alternately in one process (the machine's speed drifts
within minutes); each line is the median of ``--reps`` calls.  The kernels (``weightflow.models.attention_kernels``)
are built first if this machine has not built them yet; the script stops with the reason where they cannot be.
It also reports the largest difference between the two paths' outputs and gradients, relative to their scale.

Measured here (2 threads): see the closing notes of issue 15 and the module docstring of
:mod:`weightflow.models.layered`.

    python benchmarks/attention_kernel.py                  # cases (a) and (b), 2 threads
    python benchmarks/attention_kernel.py --cases a --threads 1 --reps 50
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import torch

CASES = {  # benchmarks/models.py
    "a": dict(layer_sizes=[30, 16, 16, 2], batch=32, width=64),
    "b": dict(layer_sizes=[784, 10, 10], batch=8, width=32),
}
HEADS = 4


def inputs(case: str) -> tuple:
    """A layer's attention inputs for ``case``: normed edges (layered order), node terms, the edge projection, the
    incoming gradients, and the incidence."""
    from weightflow.graph import NeuralGraph
    from weightflow.models.layered import LayeredIncidence

    spec = CASES[case]
    width, batch = spec["width"], spec["batch"]
    key, hidden = width // 2, width // 2
    graph = NeuralGraph(spec["layer_sizes"])
    gen = torch.Generator().manual_seed(0)
    normed = torch.randn(batch * graph.num_edges, width, generator=gen)
    node_qkv = torch.randn(batch * graph.num_nodes, 2 * key + width, generator=gen)
    weight = torch.randn(2 * key + width + hidden, width, generator=gen) / math.sqrt(width)
    bias = torch.randn(2 * key + width + hidden, generator=gen)
    grad = torch.randn(batch * graph.num_nodes, width, generator=gen)
    grad_term = torch.randn(batch * graph.num_edges, hidden, generator=gen)
    return normed, node_qkv, weight, bias, grad, grad_term, LayeredIncidence(graph, batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=30, help="timed calls per path and pass (median reported)")
    args = parser.parse_args()

    from weightflow.models import attention_kernels
    from weightflow.models.layered import _attention_backward, _attention_forward
    from weightflow.utils import keep_freed_memory

    keep_freed_memory()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if attention_kernels.load() is None:
        sys.exit("attention_kernel.py: the kernels could not be built here (see the warning above)")
    print(f"kernels loaded in {time.perf_counter() - start:.1f} s; {args.threads} threads, median of {args.reps}")
    usable = attention_kernels.usable
    paths = {"aten": lambda *a: False, "kernels": usable}
    print(f"{'case':4} {'pass':8} {'ATen ms':>8} {'kernels ms':>10} {'ratio':>6}  max |diff| / scale")
    for case in args.cases:
        normed, node_qkv, weight, bias, grad, grad_term, incidence = inputs(case)

        def forward():
            return _attention_forward(normed, normed, node_qkv, weight, bias, incidence, HEADS)

        results, saved = {}, {}
        for name, rule in paths.items():
            attention_kernels.usable = rule
            out, term, saved[name] = forward()
            grads = _attention_backward(grad, grad_term, normed, normed, node_qkv, weight, bias, *saved[name],
                                        incidence=incidence, heads=HEADS)
            results[name] = [out, term, *grads]
        diff = max(((a - k).abs().max() / a.abs().max()).item() for a, k in zip(results["aten"], results["kernels"]))

        def backward(name=None):
            return _attention_backward(grad, grad_term, normed, normed, node_qkv, weight, bias, *saved[name],
                                       incidence=incidence, heads=HEADS)

        for label, call in (("forward", lambda name: forward()), ("backward", lambda name: backward(name))):
            times = {name: [] for name in paths}
            for _ in range(args.reps + 3):
                for name, rule in paths.items():
                    attention_kernels.usable = rule
                    begin = time.perf_counter()
                    call(name)
                    times[name].append(time.perf_counter() - begin)
            aten, kernels = (1e3 * statistics.median(times[name][3:]) for name in paths)
            print(f"{case:4} {label:8} {aten:8.2f} {kernels:10.2f} {kernels / aten:6.2f}  {diff:.1e}")
    attention_kernels.usable = usable


if __name__ == "__main__":
    main()

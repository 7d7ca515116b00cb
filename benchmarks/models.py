"""Speed and memory of one training step of the vector-field models (issue 5).

One step = forward + backward + Adam update (fused, as in training) of ``mean((model(x, t) - target)^2)`` on a
batch of random networks.  Every (model, case) runs in its own worker process (``torch.set_num_threads(--threads)``)
so that its peak memory is its own: memory is the process's resident set size (RSS), ``ru_maxrss`` peak minus the RSS
just before the first step (model, optimizer and data already built), i.e. the step's activations, gradients
and Adam state.  The parent kills a worker whose RSS passes ``--mem-cap-gb`` or which runs past
``--time-cap-s``, and reports the case as not fitting.

Cases (issue 5): (a) 30-16-16-2, batch 32, d=64, 5 layers; (b) 784-10-10, batch 8, d=32, 5 layers.

With ``--compile`` the warm-up step includes the compilation (sparse NG-T: :meth:`weightflow.models.ngt.NGT.compile`,
its blocks' reference path; ``--cold-cache`` gives each worker an empty Inductor cache, as a fresh machine has) and
the step memory includes the compiler's own (about 100 MB).

    python benchmarks/models.py                    # the table for ngt, pna, ngt_dense on (a) and (b)
    python benchmarks/models.py --models ngt --cases a --steps 10
    python benchmarks/models.py --models ngt --reference   # sparse NG-T on its plain-autograd reference path
    python benchmarks/models.py --models ngt --no-kernels  # its fused path on ATen ops (no compiled kernels)
    python benchmarks/models.py --models ngt --compile --cold-cache   # compiled training step, compile time included
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import psutil
import torch

CASES = {
    "a": dict(layer_sizes=[30, 16, 16, 2], batch=32, width=64, depth=5),
    "b": dict(layer_sizes=[784, 10, 10], batch=8, width=32, depth=5),
}
MODELS = ["ngt_dense", "ngt", "pna"]  # dense first: the speed-ups refer to it


def worker(name: str, case: str, args: argparse.Namespace) -> dict:
    """Time ``args.steps`` training steps after one warm-up step; returns the row as a dict."""
    from weightflow.models import build_model
    from weightflow.utils import keep_freed_memory
    from weightflow.weights import init_weights

    if not args.system_malloc:
        keep_freed_memory()  # as every workflow stage does (weightflow.runner.run_stage)
    torch.set_num_threads(args.threads)
    spec = CASES[case]
    sizes, batch = spec["layer_sizes"], spec["batch"]
    widths = {"key_width": args.key_width, "edge_hidden": args.edge_hidden} if name.startswith("ngt") else {}
    model = build_model(name, sizes, width=spec["width"], depth=spec["depth"], heads=4, seed=0, bf16=args.bf16,
                        compile=args.compile, **widths)
    if args.reference and name == "ngt":
        model.fused = False  # plain-autograd gather/scatter path
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)  # as weightflow.flow.training does
    gen = torch.Generator().manual_seed(0)
    x = init_weights(sizes, batch, init_std=0.3, bias_std=0.1, generator=gen)
    target = torch.randn(x.shape, generator=gen)
    t = torch.rand(batch, generator=gen)
    rss_before = psutil.Process().memory_info().rss

    def step() -> tuple[float, float]:
        start, cpu_start = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        loss = (model(x, t) - target).pow(2).mean()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start, time.process_time() - cpu_start

    warmup, _ = step()
    probe = step()[0] if args.compile else warmup  # a compiled model's first step is mostly compilation
    times, cpu_times = zip(*[step() for _ in range(args.steps if probe < 10 else min(args.steps, 2))])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return dict(
        model=name, case=case, params=sum(p.numel() for p in model.parameters()), warmup_s=warmup,
        step_s=statistics.median(times), cpu_s=statistics.median(cpu_times), steps=len(times), peak_rss_mb=peak / 2**20,
        step_mem_mb=(peak - rss_before) / 2**20,
    )


def run_worker(name: str, case: str, args: argparse.Namespace) -> dict:
    """Run :func:`worker` in a child process under the memory and time caps."""
    cmd = [sys.executable, __file__, "--worker", name, case, "--steps", str(args.steps), "--threads", str(args.threads)]
    cmd += ["--bf16"] * args.bf16 + ["--compile"] * args.compile + ["--system-malloc"] * args.system_malloc
    cmd += ["--reference"] * args.reference
    cmd += [f"--{key.replace('_', '-')}={getattr(args, key)}" for key in ("key_width", "edge_hidden") if getattr(args, key)]
    env = dict(os.environ)
    if args.omp_wait_policy != "inherit":
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    cache = tempfile.mkdtemp(prefix="inductor-") if args.cold_cache else None
    if cache:
        env["TORCHINDUCTOR_CACHE_DIR"] = cache
    if args.no_kernels:
        env["WEIGHTFLOW_KERNELS"] = "0"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    child, start, peak, reason = psutil.Process(proc.pid), time.monotonic(), 0, None
    while proc.poll() is None:
        try:
            peak = max(peak, child.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        if peak > args.mem_cap_gb * 2**30:
            reason = f"RSS passed the {args.mem_cap_gb:g} GB cap after {time.monotonic() - start:.0f} s"
        elif time.monotonic() - start > args.time_cap_s:
            reason = f"ran past the {args.time_cap_s:g} s cap"
        if reason:
            proc.kill()
            break
        time.sleep(0.1)
    out, err = proc.communicate()
    if cache:
        shutil.rmtree(cache, ignore_errors=True)
    if reason or proc.returncode:
        return dict(model=name, case=case, skipped=reason or f"worker failed: {err.strip().splitlines()[-1:]}")
    return json.loads(out.strip().splitlines()[-1])


HEADER = (
    f"{'case':<4} {'model':<10} {'params':>8} {'step s':>8} {'CPU s':>7} {'warm-up s':>9} {'step mem MB':>11} "
    f"{'peak RSS MB':>11} {'dense/this (wall, CPU)':>22}"
)


def format_row(row: dict, dense: dict | None) -> str:
    """One table line; ``dense`` is the same case's dense NG-T row (for the speed-up), if it ran."""
    if "skipped" in row:
        return f"{row['case']:<4} {row['model']:<10} did not fit: {row['skipped']}"
    if dense and "step_s" in dense:
        speedup = f"{dense['step_s'] / row['step_s']:.1f}x, {dense['cpu_s'] / row['cpu_s']:.1f}x"
    else:
        speedup = "-"
    return (
        f"{row['case']:<4} {row['model']:<10} {row['params']:>8} {row['step_s']:>8.3f} {row['cpu_s']:>7.3f} "
        f"{row['warmup_s']:>9.3f} {row['step_mem_mb']:>11.0f} {row['peak_rss_mb']:>11.0f} {speedup:>22}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS, choices=["ngt", "pna", "ngt_dense", "mlp"])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--steps", type=int, default=10, help="timed steps after one warm-up step (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per worker")
    parser.add_argument("--mem-cap-gb", type=float, default=4.0, help="kill a worker whose RSS passes this")
    parser.add_argument("--time-cap-s", type=float, default=120.0, help="kill a worker running longer than this")
    parser.add_argument(
        "--omp-wait-policy", default="inherit", choices=["inherit", "PASSIVE", "ACTIVE"],
        help="OpenMP threads of a worker sleep (PASSIVE) or spin (ACTIVE) while waiting; inherit = this shell's "
        "setting (libgomp's default spins briefly, then sleeps: as fast as ACTIVE here). The workflow's stages "
        "run PASSIVE, since its jobs share the cores",
    )
    parser.add_argument("--system-malloc", action="store_true",
                        help="leave glibc's allocator at its defaults (no weightflow.utils.keep_freed_memory)")
    parser.add_argument("--key-width", type=int, help="NG-T query/key width (default: the model's, d/2 sparse, d dense)")
    parser.add_argument("--edge-hidden", type=int, help="NG-T edge-update hidden width (default: the model's)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--reference", action="store_true",
                        help="sparse NG-T on its plain-autograd gather/scatter path (fused=False) instead of the fused "
                        "layered kernels")
    parser.add_argument("--no-kernels", action="store_true",
                        help="sparse NG-T's fused attention on ATen ops only (WEIGHTFLOW_KERNELS=0), without the "
                        "compiled kernels of weightflow.models.attention_kernels")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the models (build_model(compile=True)); warm-up s includes the compilation")
    parser.add_argument("--cold-cache", action="store_true",
                        help="an empty Inductor cache (TORCHINDUCTOR_CACHE_DIR) per worker: the compile time of a fresh "
                        "machine")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args)))
        return
    load = ", ".join(f"{x:.1f}" for x in psutil.getloadavg())
    policy = os.environ.get("OMP_WAIT_POLICY", "unset") if args.omp_wait_policy == "inherit" else args.omp_wait_policy
    allocator = "glibc defaults" if args.system_malloc else "keep_freed_memory"
    print(f"torch {torch.__version__}, {args.threads} thread(s) per worker (OMP_WAIT_POLICY={policy}, allocator: "
          f"{allocator}), "
          f"{psutil.cpu_count()} CPUs, load average "
          f"{load}; step s = median wall time, CPU s = median process CPU time of one step; memory = RSS "
          f"(peak ru_maxrss; 'step mem' = peak minus RSS before the first step)")
    print(HEADER)
    print("-" * len(HEADER), flush=True)
    for case in args.cases:
        dense = None
        for name in args.models:
            row = run_worker(name, case, args)
            dense = row if name == "ngt_dense" else dense
            print(format_row(row, dense), flush=True)


if __name__ == "__main__":
    main()

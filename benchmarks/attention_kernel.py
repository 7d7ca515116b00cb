"""A hand-written CPU kernel for one pass of the fused NG-T attention, against the ATen ops it would replace (issue 15).

The pass: the edge part of the attention scores of one layer block (the first loop of
:func:`weightflow.models.layered._attention_forward`).  With ``ê`` the block's normalized edge states in the layered
order ``[O, B, I, d]``, the node operands ``[P | R]`` of each target ``X_t`` ``[O, B, 2H, d]`` and of each source
``X_s`` ``[B, I, 2H, d]`` and the quadratic term ``quad`` ``[O, B, I, H]``, per edge ``(o, b, i)`` and head ``h``

    score_t = τ (<P_t[o,b,h], ê> + <R_s[b,i,h], ê> + quad)     (the target attends to the source)
    score_s = τ (<R_t[o,b,h], ê> + <P_s[b,i,h], ê> + quad)     (the source attends to the target)

ATen (what the model runs): one ``bmm`` per side (the sources' side on a strided view), then adds into the score
buffers and a scale.  The kernel: one pass over ``ê`` with AVX-512 intrinsics, the two sides' operands summed per
head before the dot product, in two loop orders — targets outer (``(o, b)`` parallel, then ``i``: a source's
operands are re-read for every target) and sources outer (``b`` parallel, then ``i``, then ``o``: a source's
operands stay in L1 across its ``O`` edges, the batch element's targets' in L1/L2).

It answers one question for issue 15: how much a compiled kernel gains over ATen on this CPU, before anyone builds a
kernel library (forward and backward, a vmap fallback, dtypes and devices) into the model.  The kernel is compiled
with ``torch.utils.cpp_extension.load_inline`` (g++ with OpenMP, and ninja; 35–47 s on 2 cores), float32 only,
``d`` = 32 or 64 and 4 heads (template parameters: fully unrolled); the script stops with a message where the
compiler, ninja or AVX-512 are missing.  Measured here (2 threads, median of 50): case (a) 0.30× the ATen time with
warm caches, 0.35× with ``--cold``; case (b) 0.31×.  The targets-outer order gains about half of that.

    python benchmarks/attention_kernel.py               # cases (a) and (b) of benchmarks/models.py, 2 threads
    python benchmarks/attention_kernel.py --cold        # evict the caches before each repetition (as inside a step)
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time

import torch

CASES = {  # benchmarks/models.py: layer sizes, batch, width; 4 heads
    "a": dict(layer_sizes=[30, 16, 16, 2], batch=32, width=64),
    "b": dict(layer_sizes=[784, 10, 10], batch=8, width=32),
}
HEADS = 4

KERNEL = r"""
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>

namespace {
// one edge (o, b, i), every head: <P_t + R_s, ê> and <R_t + P_s, ê> over d = 16 * C floats, scaled, into ST / SS
template <int C, int H>
inline void edge(const float* er, const float* xt, const float* xs, const float* Q, float* ST, float* SS, int64_t r,
                 float scale) {
  constexpr int64_t d = 16 * C;
  __m512 e[C];
  for (int c = 0; c < C; ++c) e[c] = _mm512_loadu_ps(er + 16 * c);
  for (int h = 0; h < H; ++h) {
    const float *pt = xt + h * d, *rt = xt + (H + h) * d, *ps = xs + h * d, *rs = xs + (H + h) * d;
    __m512 a = _mm512_setzero_ps(), b = _mm512_setzero_ps();
    for (int c = 0; c < C; ++c) {
      a = _mm512_fmadd_ps(e[c], _mm512_add_ps(_mm512_loadu_ps(pt + 16 * c), _mm512_loadu_ps(rs + 16 * c)), a);
      b = _mm512_fmadd_ps(e[c], _mm512_add_ps(_mm512_loadu_ps(rt + 16 * c), _mm512_loadu_ps(ps + 16 * c)), b);
    }
    ST[r + h] = (_mm512_reduce_add_ps(a) + Q[r + h]) * scale;
    SS[r + h] = (_mm512_reduce_add_ps(b) + Q[r + h]) * scale;
  }
}

template <int C, int H>
void scores(const float* E, const float* XT, const float* XS, const float* Q, float* ST, float* SS, int64_t O,
            int64_t B, int64_t I, float tau, bool sources_outer) {
  constexpr int64_t d = 16 * C;
  if (sources_outer) {
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b)
        for (int64_t i = 0; i < I; ++i)
          for (int64_t o = 0; o < O; ++o) {
            const int64_t row = (o * B + b) * I + i;
            const float* xt = XT + (o * B + b) * 2 * H * d;
            edge<C, H>(E + row * d, xt, XS + (b * I + i) * 2 * H * d, Q, ST, SS, row * H, tau);
          }
    });
  } else {
    at::parallel_for(0, O * B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t ob = begin; ob < end; ++ob)
        for (int64_t i = 0; i < I; ++i) {
          const int64_t row = ob * I + i;
          edge<C, H>(E + row * d, XT + ob * 2 * H * d, XS + ((ob % B) * I + i) * 2 * H * d, Q, ST, SS, row * H, tau);
        }
    });
  }
}
}  // namespace

void edge_scores(const at::Tensor& e, const at::Tensor& xt, const at::Tensor& xs, const at::Tensor& quad,
                 at::Tensor& st, at::Tensor& ss, double scale, bool sources_outer) {
  const int64_t O = e.size(0), B = e.size(1), I = e.size(2), d = e.size(3), H = xt.size(2) / 2;
  TORCH_CHECK(e.is_contiguous() && xt.is_contiguous() && xs.is_contiguous());
  const float* E = e.data_ptr<float>();
  const float* XT = xt.data_ptr<float>();
  const float* XS = xs.data_ptr<float>();
  const float* Q = quad.data_ptr<float>();
  float* ST = st.data_ptr<float>();
  float* SS = ss.data_ptr<float>();
  TORCH_CHECK((d == 32 || d == 64) && H == 4, "the benchmark's kernel is instantiated for d = 32, 64 and 4 heads");
  auto run = d == 32 ? scores<2, 4> : scores<4, 4>;
  run(E, XT, XS, Q, ST, SS, O, B, I, static_cast<float>(scale), sources_outer);
}

TORCH_LIBRARY(weightflow_bench, m) {
  m.def("edge_scores(Tensor e, Tensor xt, Tensor xs, Tensor quad, Tensor(a!) st, Tensor(b!) ss, float scale, "
        "bool sources_outer) -> ()");
}
TORCH_LIBRARY_IMPL(weightflow_bench, CPU, m) { m.impl("edge_scores", &edge_scores); }
"""


def build() -> float:
    """Compile and load the kernel; returns the seconds it took.  Exits with a message where it cannot."""
    from torch.utils.cpp_extension import is_ninja_available, load_inline

    missing = [what for what, ok in (("g++", shutil.which("g++")), ("ninja", is_ninja_available())) if not ok]
    if missing:
        sys.exit(f"attention_kernel.py: needs {' and '.join(missing)} to compile the kernel (pip install ninja; "
                 "apt install g++)")
    if "AVX512" not in torch.backends.cpu.get_cpu_capability():
        capability = torch.backends.cpu.get_cpu_capability()
        sys.exit(f"attention_kernel.py: the kernel uses AVX-512; this CPU has {capability}")
    start = time.perf_counter()
    load_inline("weightflow_bench_attention", cpp_sources=[KERNEL], extra_cflags=["-O3", "-march=native", "-fopenmp"],
                is_python_module=False)
    return time.perf_counter() - start


def aten_scores(e: torch.Tensor, xt: torch.Tensor, xs: torch.Tensor, quad: torch.Tensor, st: torch.Tensor,
                ss: torch.Tensor, scale: float) -> None:
    """The model's ops for this pass (``_attention_forward``): a ``bmm`` per side, adds into the buffers, scale."""
    fan_out, batch, fan_in, d = e.shape
    heads = xt.shape[2] // 2
    targets, sources = fan_out * batch, batch * fan_in
    by_target = torch.bmm(e.view(targets, fan_in, d), xt.view(targets, 2 * heads, d).transpose(1, 2))
    by_target = by_target.view(fan_out, batch, fan_in, -1)
    by_source = torch.bmm(e.view(fan_out, sources, d).transpose(0, 1), xs.view(sources, 2 * heads, d).transpose(1, 2))
    by_source = by_source.view(batch, fan_in, fan_out, -1).permute(2, 0, 1, 3)
    torch.add(by_target[..., :heads], by_source[..., heads:], out=st)
    st.add_(quad).mul_(scale)
    torch.add(by_target[..., heads:], by_source[..., :heads], out=ss)
    ss.add_(quad).mul_(scale)


def median_ms(fn, reps: int, evict: torch.Tensor | None) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        if evict is not None:
            evict.add_(1.0)  # touch 64 MB: the operands leave the caches
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=50, help="timed repetitions per block (median reported)")
    parser.add_argument("--cold", action="store_true", help="evict the caches before each repetition")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seconds = build()
    print(f"kernel compiled in {seconds:.1f} s; {args.threads} threads, {'cold' if args.cold else 'warm'} caches")
    evict = torch.zeros(16 * 2**20) if args.cold else None
    kernel = torch.ops.weightflow_bench.edge_scores
    header = ["case", "block", "edges", "ATen ms", "targets-outer", "sources-outer"]
    print(f"{header[0]:4} {header[1]:>9} {header[2]:>7} {header[3]:>8} {header[4]:>14} {header[5]:>14}  max |diff|")
    for case in args.cases:
        spec = CASES[case]
        sizes, batch, width = spec["layer_sizes"], spec["batch"], spec["width"]
        totals = [0.0, 0.0, 0.0]
        gen = torch.Generator().manual_seed(0)
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            e = torch.randn(fan_out, batch, fan_in, width, generator=gen)
            xt = torch.randn(fan_out, batch, 2 * HEADS, width, generator=gen)
            xs = torch.randn(batch, fan_in, 2 * HEADS, width, generator=gen)
            quad = torch.randn(fan_out, batch, fan_in, HEADS, generator=gen)
            scale = (width // 2 // HEADS) ** -0.5
            ref = [torch.empty_like(quad), torch.empty_like(quad)]
            out = [torch.empty_like(quad), torch.empty_like(quad)]
            aten_scores(e, xt, xs, quad, *ref, scale)
            diff = 0.0
            for outer in (False, True):
                kernel(e, xt, xs, quad, *out, scale, outer)
                diff = max(diff, *((a - b).abs().max().item() for a, b in zip(out, ref)))
            row = [
                median_ms(lambda: aten_scores(e, xt, xs, quad, *ref, scale), args.reps, evict),
                median_ms(lambda: kernel(e, xt, xs, quad, *out, scale, False), args.reps, evict),
                median_ms(lambda: kernel(e, xt, xs, quad, *out, scale, True), args.reps, evict),
            ]
            totals = [t + r for t, r in zip(totals, row)]
            print(f"{case:4} {f'{fan_in}→{fan_out}':>9} {e.shape[0] * batch * fan_in:7d} {row[0]:8.3f} "
                  f"{row[1]:8.3f} ({row[1] / row[0]:.2f}×) {row[2]:8.3f} ({row[2] / row[0]:.2f}×)  {diff:.1e}")
        print(f"{case:4} {'all':>9} {'':7} {totals[0]:8.3f} {totals[1]:8.3f} ({totals[1] / totals[0]:.2f}×) "
              f"{totals[2]:8.3f} ({totals[2] / totals[0]:.2f}×)")


if __name__ == "__main__":
    main()

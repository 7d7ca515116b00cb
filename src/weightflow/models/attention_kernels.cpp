// CPU kernels for the fused NG-T attention (weightflow.models.layered): one pass over a layer block's edges each.
//
// Built and loaded by weightflow/models/attention_kernels.py (torch.utils.cpp_extension.load; ops registered as
// torch.ops.weightflow_attention.*).  The math of each pass is in that module's docstring and in the Python path of
// weightflow/models/layered.py, which the tests compare these kernels against.
//
// Layout.  A layer block's edges are the rows [O, B, I] of the layered edge tensor (row r = (o B + b) I + i, O
// targets, B graphs, I sources); node tensors are [B, N, ...] (target o of graph b: node row b N + t0 + o, source
// i: b N + s0 + i); node operands of a block are node-major views [O B | B I, J, D] with any strides on the first
// two axes and a contiguous last one.  Every kernel runs over graphs b in parallel (at::parallel_for) and, within a
// graph, over sources i and then targets o: a source's operands stay in L1 across its O edges, the graph's targets'
// in L1/L2.  Every output element is written by one thread in a fixed order, so results do not depend on the number
// of threads.  float32 only; the edge width D is a template parameter (16, 32, 64, 128), heads and chunks are not.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <utility>
#include <cmath>
#include <cstring>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

using at::Tensor;

// 16 floats: one AVX-512 register, two AVX2 ones, four SSE/NEON ones (GCC/Clang vector extension, portable).
typedef float vec __attribute__((vector_size(64)));
constexpr int L = 16;     // lanes of a vec
constexpr int MAXC = 8;   // D ≤ 128
constexpr int MAXK = 8;   // key width ≤ 128
constexpr int MAXH = 16;  // heads

inline vec load(const float* p) {
  vec v;
  std::memcpy(&v, p, sizeof(vec));
  return v;
}
inline void store(float* p, vec v) { std::memcpy(p, &v, sizeof(vec)); }
inline float hsum(vec v) {
#if defined(__AVX512F__)
  return _mm512_reduce_add_ps(reinterpret_cast<__m512>(v));
#else
  float s = 0.f;
  for (int k = 0; k < L; ++k) s += v[k];
  return s;
#endif
}

struct Block {  // one layer block: O targets, B graphs, I sources; N nodes per graph, first target / source node
  int64_t O, B, I, N, t0, s0;
};

struct Rows {  // node operands of a block as [O, B, J, D] (targets) or [B, I, J, D] (sources), any strides but the last
  float* p;
  int64_t s1, s2, sj;
  float* at(int64_t n1, int64_t n2, int64_t j) const { return p + n1 * s1 + n2 * s2 + j * sj; }
};

Rows rows(const Tensor& t, int64_t width, const char* name) {
  TORCH_CHECK(t.dim() == 4 && t.scalar_type() == at::kFloat && t.size(3) == width && t.stride(3) == 1, name,
              ": expected a float32 [O | B, B | I, J, ", width, "] view with a contiguous last axis, got ", t.sizes(),
              " ", t.scalar_type(), " strides ", t.strides());
  return {t.data_ptr<float>(), t.stride(0), t.stride(1), t.stride(2)};
}

float* data(const Tensor& t, const char* name) {
  TORCH_CHECK(t.is_contiguous() && t.scalar_type() == at::kFloat, name, ": expected a contiguous float32 tensor");
  return t.data_ptr<float>();
}

// Heads over a row of `width` floats split into chunks of `chunk` (= width / H) floats: for head h, the vec
// indices [lo[h], hi[h]) that overlap it and the 0/1 masks of its lanes there.  Adding mask ⊙ x to a head's
// accumulator adds the head's segment of x to its dot product; Σ_h coef_h mask_h spreads per-head coefficients
// over the lanes.
struct Heads {
  int64_t H, lo[MAXH], hi[MAXH];
  vec mask[MAXH][MAXC];
  Heads(int64_t heads, int64_t width) : H(heads) {
    const int64_t chunk = width / heads;
    for (int64_t h = 0; h < H; ++h) {
      lo[h] = h * chunk / L;
      hi[h] = ((h + 1) * chunk + L - 1) / L;
      for (int64_t j = 0; j < width / L; ++j)
        for (int k = 0; k < L; ++k) mask[h][j][k] = (j * L + k) / chunk == h ? 1.f : 0.f;
    }
  }
};

// Scores: per edge and head, score_t = τ (<P_t + R_s, ê> + <q_e, k_e> + <q_t, k_s>) and
// score_s = τ (<R_t + P_s, ê> + <q_e, k_e> + <k_t, q_s>); xt, xs = [P | R] of each target, source.
template <int C>
void scores(const float* E, const float* QE, int64_t qe_stride, Rows xt, Rows xs, const float* QK, float* ST,
            float* SS, float* TOP, Block g, const Heads& hk, int64_t key, float tau) {
  constexpr int64_t D = C * L;
  const int64_t H = hk.H, KC = key / L, qk_row = 2 * key;
  at::parallel_for(0, g.B, 1, [&](int64_t begin, int64_t end) {
    vec e[C], u[MAXK], w[MAXK];
    float top_src[MAXH];
    for (int64_t b = begin; b < end; ++b)
      for (int64_t i = 0; i < g.I; ++i) {
        const int64_t srow = b * g.N + g.s0 + i;
        const float* qs = QK + srow * qk_row;
        std::copy_n(TOP + srow * H, H, top_src);
        for (int64_t o = 0; o < g.O; ++o) {
          const int64_t r = (o * g.B + b) * g.I + i, trow = b * g.N + g.t0 + o;
          const float *er = E + r * D, *qe = QE + r * qe_stride, *qt = QK + (b * g.N + g.t0 + o) * qk_row;
          for (int c = 0; c < C; ++c) e[c] = load(er + c * L);
          for (int64_t j = 0; j < KC; ++j) {  // <q_e, k_e> + <q_t, k_s> and <q_e, k_e> + <k_t, q_s>, lane-wise
            const vec quad = load(qe + j * L) * load(qe + key + j * L);
            u[j] = quad + load(qt + j * L) * load(qs + key + j * L);
            w[j] = quad + load(qt + key + j * L) * load(qs + j * L);
          }
          for (int64_t h = 0; h < H; ++h) {
            const float *pt = xt.at(o, b, h), *rt = xt.at(o, b, H + h), *ps = xs.at(b, i, h), *rs = xs.at(b, i, H + h);
            vec a = {}, s = {};
            for (int c = 0; c < C; ++c) {
              a += e[c] * (load(pt + c * L) + load(rs + c * L));
              s += e[c] * (load(rt + c * L) + load(ps + c * L));
            }
            for (int64_t j = hk.lo[h]; j < hk.hi[h]; ++j) {
              a += u[j] * hk.mask[h][j];
              s += w[j] * hk.mask[h][j];
            }
            const float score_t = tau * hsum(a), score_s = tau * hsum(s);
            ST[r * H + h] = score_t;
            SS[r * H + h] = score_s;
            TOP[trow * H + h] = std::max(TOP[trow * H + h], score_t);
            top_src[h] = std::max(top_src[h], score_s);
          }
        }
        std::copy_n(top_src, H, TOP + srow * H);
      }
  });
}

// exp(x) lane-wise: 2^n exp(r) with n = round(x / ln 2) and r = x − n ln 2 (ln 2 split in two for exactness),
// exp(r) by its degree-7 Taylor polynomial (|r| ≤ ln 2 / 2: truncation below 2e-9, a float32 ulp or two in all);
// 0 below −87 (under float32's normal range).
inline vec exp_lanes(vec x) {
  typedef int32_t ivec __attribute__((vector_size(64)));
  const vec lo = x < -87.f ? vec{} + 0.f : vec{} + 1.f;
  x = x < -87.f ? vec{} - 87.f : x;
  x = x > 88.f ? vec{} + 88.f : x;
  const vec shifter = vec{} + 12582912.f;  // 1.5 · 2^23: adding and subtracting it rounds to an integer
  const vec n = (x * 1.44269504f + shifter) - shifter;
  const vec r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  vec p = vec{} + 1.f / 5040.f;
  p = p * r + 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const ivec bits = (__builtin_convertvector(n, ivec) + 127) << 23;  // 2^n
  vec scale;
  std::memcpy(&scale, &bits, sizeof(vec));
  return p * scale * lo;
}

// Softmax numerators in place, α ← exp(score − top[node]), and their sums per node added to TOTAL [B, N, H] (each
// target's over its sources, each source's over its targets).
void softmax_exp(float* ST, float* SS, const float* TOP, float* TOTAL, Block g, int64_t H) {
  const int64_t n = g.I * H, whole = n / L * L;
  at::parallel_for(0, g.B, 1, [&](int64_t begin, int64_t end) {
    float sum_t[MAXH];
    std::vector<float> top_t(L % H ? n : 0);  // the target's maxima repeated over its sources, [I, H]
    for (int64_t b = begin; b < end; ++b) {
      const float* top_s = TOP + (b * g.N + g.s0) * H;  // the graph's sources, [I, H], contiguous
      float* total_s = TOTAL + (b * g.N + g.s0) * H;
      for (int64_t o = 0; o < g.O; ++o) {
        const int64_t trow = b * g.N + g.t0 + o;
        float *st = ST + (o * g.B + b) * n, *ss = SS + (o * g.B + b) * n;
        vec pattern, acc = {};  // with H | 16, a vector's lanes repeat the heads: one pattern, one accumulator
        for (int k = 0; k < L; ++k) pattern[k] = TOP[trow * H + k % H];
        if (L % H)
          for (int64_t k = 0; k < n; ++k) top_t[k] = TOP[trow * H + k % H];
        for (int64_t k = 0; k < whole; k += L) {
          const vec a = exp_lanes(load(st + k) - (L % H ? load(top_t.data() + k) : pattern));
          store(st + k, a);
          store(ss + k, exp_lanes(load(ss + k) - load(top_s + k)));
          acc += a;
        }
        for (int64_t k = whole; k < n; ++k) {
          st[k] = std::exp(st[k] - TOP[trow * H + k % H]);
          ss[k] = std::exp(ss[k] - top_s[k]);
        }
        std::fill_n(sum_t, H, 0.f);
        if (L % H)
          for (int64_t k = 0; k < whole; ++k) sum_t[k % H] += st[k];
        else
          for (int k = 0; k < L; ++k) sum_t[k % H] += acc[k];
        for (int64_t k = whole; k < n; ++k) sum_t[k % H] += st[k];
        for (int64_t h = 0; h < H; ++h) TOTAL[trow * H + h] += sum_t[h];
        for (int64_t k = 0; k < whole; k += L) store(total_s + k, load(total_s + k) + load(ss + k));
        for (int64_t k = whole; k < n; ++k) total_s[k] += ss[k];
      }
    }
  });
}

// One node's share of `values`: over its edges k (edge(k) = {row r, the other end's node row}), α ← α · inv in
// place, Σ_k α ê into the node's mix rows and Σ_k α ṽ_other added to its value row `val`.
template <int C, class EdgeOf>
inline void node_values(int64_t edges, EdgeOf edge, float* A, const float* inv, const float* E, const float* V,
                        float* val, float* const* mix, const Heads& hv, std::vector<vec>& acc) {
  constexpr int64_t D = C * L;
  const int64_t H = hv.H;
  vec e[C], node[C] = {}, lane[C];
  std::fill(acc.begin(), acc.end(), vec{});
  for (int64_t k = 0; k < edges; ++k) {
    const auto [r, other] = edge(k);
    for (int c = 0; c < C; ++c) e[c] = load(E + r * D + c * L), lane[c] = vec{};
    for (int64_t h = 0; h < H; ++h) {
      const float a = A[r * H + h] *= inv[h];
      for (int c = 0; c < C; ++c) acc[h * C + c] += a * e[c];
      for (int64_t c = hv.lo[h]; c < hv.hi[h]; ++c) lane[c] += a * hv.mask[h][c];
    }
    for (int c = 0; c < C; ++c) node[c] += lane[c] * load(V + other * D + c * L);
  }
  for (int64_t h = 0; h < H; ++h)
    for (int c = 0; c < C; ++c) store(mix[h] + c * L, acc[h * C + c]);
  for (int c = 0; c < C; ++c) store(val + c * L, load(val + c * L) + node[c]);
}

// Values: α ← α / total[node] in place (the softmax's normalization, the α saved for backward), then the edge part
// A_t[o, b, h] = Σ_i α_t ê, A_s[b, i, h] = Σ_o α_s ê and the node part Σ_i α_t ṽ_s, Σ_o α_s ṽ_t added to VAL.
template <int C>
void values(const float* E, float* AT, float* AS, const float* INV, const float* V, float* VAL, Rows mt, Rows ms,
            Block g, const Heads& hv) {
  constexpr int64_t D = C * L;
  const int64_t H = hv.H;
  at::parallel_for(0, g.B, 1, [&](int64_t begin, int64_t end) {
    std::vector<vec> acc(H * C);
    std::vector<float*> mix(H);
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t o = 0; o < g.O; ++o) {  // targets, over their contiguous edges
        const int64_t trow = b * g.N + g.t0 + o;
        for (int64_t h = 0; h < H; ++h) mix[h] = mt.at(o, b, h);
        auto edge = [&](int64_t i) { return std::pair<int64_t, int64_t>{(o * g.B + b) * g.I + i, b * g.N + g.s0 + i}; };
        node_values<C>(g.I, edge, AT, INV + trow * H, E, V, VAL + trow * D, mix.data(), hv, acc);
      }
      for (int64_t i = 0; i < g.I; ++i) {  // then sources (the graph's edges in L2)
        const int64_t srow = b * g.N + g.s0 + i;
        for (int64_t h = 0; h < H; ++h) mix[h] = ms.at(b, i, h);
        auto edge = [&](int64_t o) { return std::pair<int64_t, int64_t>{(o * g.B + b) * g.I + i, b * g.N + g.t0 + o}; };
        node_values<C>(g.O, edge, AS, INV + srow * H, E, V, VAL + srow * D, mix.data(), hv, acc);
      }
    }
  });
}

// Attention weights' gradients: dα_t = <G_t, ê> + <dout_t, ṽ_s>, dα_s = <G_s, ê> + <ṽ_t, dout_s>; accumulates
// Σ α dα per node into DOT [B, N, H] and the values' node-term gradients Σ α dout into DV [B, N, H, w].
template <int C>
void d_alpha(const float* E, Rows gt, Rows gs, const float* DOUT, const float* V, const float* AT, const float* AS,
             float* DAT, float* DAS, float* DOT, float* DV, Block g, const Heads& hv) {
  constexpr int64_t D = C * L;
  const int64_t H = hv.H;
  at::parallel_for(0, g.B, 1, [&](int64_t begin, int64_t end) {
    vec e[C], dout_t[C], v_t[C], dout_s[C], v_s[C], dv_src[C], prod_t[C], prod_s[C], lane_t[C], lane_s[C];
    float dot_src[MAXH];
    for (int64_t b = begin; b < end; ++b)
      for (int64_t i = 0; i < g.I; ++i) {
        const int64_t srow = b * g.N + g.s0 + i;
        for (int c = 0; c < C; ++c) {
          dout_s[c] = load(DOUT + srow * D + c * L);
          v_s[c] = load(V + srow * D + c * L);
          dv_src[c] = vec{};
        }
        std::fill_n(dot_src, H, 0.f);
        for (int64_t o = 0; o < g.O; ++o) {
          const int64_t r = (o * g.B + b) * g.I + i, trow = b * g.N + g.t0 + o;
          for (int c = 0; c < C; ++c) {
            e[c] = load(E + r * D + c * L);
            dout_t[c] = load(DOUT + trow * D + c * L);
            v_t[c] = load(V + trow * D + c * L);
            prod_t[c] = dout_t[c] * v_s[c];
            prod_s[c] = v_t[c] * dout_s[c];
            lane_t[c] = lane_s[c] = vec{};
          }
          for (int64_t h = 0; h < H; ++h) {
            const float *g_t = gt.at(o, b, h), *g_s = gs.at(b, i, h);
            vec a = {}, s = {};
            for (int c = 0; c < C; ++c) {
              a += e[c] * load(g_t + c * L);
              s += e[c] * load(g_s + c * L);
            }
            const float a_t = AT[r * H + h], a_s = AS[r * H + h];
            for (int64_t c = hv.lo[h]; c < hv.hi[h]; ++c) {
              a += prod_t[c] * hv.mask[h][c];
              s += prod_s[c] * hv.mask[h][c];
              lane_t[c] += a_t * hv.mask[h][c];
              lane_s[c] += a_s * hv.mask[h][c];
            }
            const float da_t = hsum(a), da_s = hsum(s);
            DAT[r * H + h] = da_t;
            DAS[r * H + h] = da_s;
            DOT[trow * H + h] += a_t * da_t;
            dot_src[h] += a_s * da_s;
          }
          for (int c = 0; c < C; ++c) {
            dv_src[c] += lane_t[c] * dout_t[c];
            float* dv = DV + trow * D + c * L;
            store(dv, load(dv) + lane_s[c] * dout_s[c]);
          }
        }
        for (int64_t h = 0; h < H; ++h) DOT[srow * H + h] += dot_src[h];
        for (int c = 0; c < C; ++c) store(DV + srow * D + c * L, load(DV + srow * D + c * L) + dv_src[c]);
      }
  });
}

// Score side of the backward pass: dê += Σ_h α_t G_t + σ_t P_t + σ_s R_t + σ_s P_s + σ_t R_s + α_s G_s
// (xt = [G | P | R] of each target, xs = [P | R | G] of each source); [dP_t | dR_t] = Σ_i [σ_t | σ_s] ê and
// [dP_s | dR_s] = Σ_o [σ_s | σ_t] ê (written); the node terms' [dq | dk] through <q_t, k_s>, <k_t, q_s> (added).
template <int C>
void score_grads(const float* E, float* DE, const float* AT, const float* AS, const float* SGT, const float* SGS,
                 Rows xt, Rows xs, const float* QK, float* DQK, Rows dpt, Rows dps, Block g, const Heads& hk,
                 int64_t key) {
  constexpr int64_t D = C * L;
  const int64_t H = hk.H, KC = key / L, qk_row = 2 * key;
  at::parallel_for(0, g.B, 1, [&](int64_t begin, int64_t end) {
    std::vector<vec> dp_src(2 * H * C);
    vec e[C], de[C], q_s[MAXK], k_s[MAXK], dq_s[MAXK], dk_s[MAXK], lane_t[MAXK], lane_s[MAXK];
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t o = 0; o < g.O; ++o) {  // targets' sums first, over the target's contiguous edges
        std::fill(dp_src.begin(), dp_src.end(), vec{});
        for (int64_t i = 0; i < g.I; ++i) {
          const int64_t r = (o * g.B + b) * g.I + i;
          for (int c = 0; c < C; ++c) e[c] = load(E + r * D + c * L);
          for (int64_t h = 0; h < H; ++h) {
            const float s_t = SGT[r * H + h], s_s = SGS[r * H + h];
            for (int c = 0; c < C; ++c) {
              dp_src[h * C + c] += s_t * e[c];
              dp_src[(H + h) * C + c] += s_s * e[c];
            }
          }
        }
        for (int64_t j = 0; j < 2 * H; ++j)
          for (int c = 0; c < C; ++c) store(dpt.at(o, b, j) + c * L, dp_src[j * C + c]);
      }
      for (int64_t i = 0; i < g.I; ++i) {  // then the sources' side and dê, source by source (the graph's edges in L2)
        const int64_t srow = b * g.N + g.s0 + i;
        std::fill(dp_src.begin(), dp_src.end(), vec{});
        for (int64_t j = 0; j < KC; ++j) {
          q_s[j] = load(QK + srow * qk_row + j * L);
          k_s[j] = load(QK + srow * qk_row + key + j * L);
          dq_s[j] = dk_s[j] = vec{};
        }
        for (int64_t o = 0; o < g.O; ++o) {
          const int64_t r = (o * g.B + b) * g.I + i, trow = b * g.N + g.t0 + o;
          for (int c = 0; c < C; ++c) {
            e[c] = load(E + r * D + c * L);
            de[c] = load(DE + r * D + c * L);
          }
          for (int64_t j = 0; j < KC; ++j) lane_t[j] = lane_s[j] = vec{};
          for (int64_t h = 0; h < H; ++h) {
            const float a_t = AT[r * H + h], a_s = AS[r * H + h], s_t = SGT[r * H + h], s_s = SGS[r * H + h];
            const float *g_t = xt.at(o, b, h), *p_t = xt.at(o, b, H + h), *r_t = xt.at(o, b, 2 * H + h);
            const float *p_s = xs.at(b, i, h), *r_s = xs.at(b, i, H + h), *g_s = xs.at(b, i, 2 * H + h);
            for (int c = 0; c < C; ++c) {
              const int k = c * L;
              de[c] += a_t * load(g_t + k) + s_t * (load(p_t + k) + load(r_s + k)) +
                       s_s * (load(r_t + k) + load(p_s + k)) + a_s * load(g_s + k);
              dp_src[h * C + c] += s_s * e[c];
              dp_src[(H + h) * C + c] += s_t * e[c];
            }
            for (int64_t j = hk.lo[h]; j < hk.hi[h]; ++j) {
              lane_t[j] += s_t * hk.mask[h][j];
              lane_s[j] += s_s * hk.mask[h][j];
            }
          }
          for (int c = 0; c < C; ++c) store(DE + r * D + c * L, de[c]);
          float *dq_t = DQK + trow * qk_row, *dk_t = dq_t + key;
          const float *q_t = QK + trow * qk_row, *k_t = q_t + key;
          for (int64_t j = 0; j < KC; ++j) {
            const int64_t k = j * L;
            store(dq_t + k, load(dq_t + k) + lane_t[j] * k_s[j]);  // dq_t += σ_t k_s
            store(dk_t + k, load(dk_t + k) + lane_s[j] * q_s[j]);  // dk_t += σ_s q_s
            dk_s[j] += lane_t[j] * load(q_t + k);                   // dk_s += σ_t q_t
            dq_s[j] += lane_s[j] * load(k_t + k);                   // dq_s += σ_s k_t
          }
        }
        for (int64_t j = 0; j < 2 * H; ++j)
          for (int c = 0; c < C; ++c) store(dps.at(b, i, j) + c * L, dp_src[j * C + c]);
        float* dq = DQK + srow * qk_row;
        for (int64_t j = 0; j < KC; ++j) {
          store(dq + j * L, load(dq + j * L) + dq_s[j]);
          store(dq + key + j * L, load(dq + key + j * L) + dk_s[j]);
        }
      }
    }
  });
}

// Gradient of the edge GEMM's output [q_e | k_e | u_e]: [σ k_e | σ q_e | du_e] with σ = σ_t + σ_s spread over each
// head's key coordinates (the quadratic term <q_e, k_e>_h enters both scores).
void edge_gradients(const float* P, int64_t p_row, const float* SGT, const float* SGS, const float* DU, int64_t hidden,
                    float* OUT, int64_t rows, const Heads& hk, int64_t key) {
  const int64_t H = hk.H, KC = key / L;
  at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
    vec lane[MAXK];
    for (int64_t r = begin; r < end; ++r) {
      const float* q = P + r * p_row;
      float* out = OUT + r * p_row;
      for (int64_t j = 0; j < KC; ++j) lane[j] = vec{};
      for (int64_t h = 0; h < H; ++h) {
        const float s = SGT[r * H + h] + SGS[r * H + h];
        for (int64_t j = hk.lo[h]; j < hk.hi[h]; ++j) lane[j] += s * hk.mask[h][j];
      }
      for (int64_t j = 0; j < KC; ++j) {
        store(out + j * L, lane[j] * load(q + key + j * L));
        store(out + key + j * L, lane[j] * load(q + j * L));
      }
      std::memcpy(out + 2 * key, DU + r * hidden, hidden * sizeof(float));
    }
  });
}

// The edge MLP's hidden layer on one block: pre = u_e + S[source] + T[target] and hidden = SiLU(pre) = pre σ(pre)
// (NS: the node terms [S | T], [B, N, 2 h]).
void edge_mlp(const float* U, int64_t u_row, const float* NS, float* PRE, float* HID, Block g, int64_t h) {
  const int64_t HC = h / L;
  at::parallel_for(0, g.B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      for (int64_t o = 0; o < g.O; ++o) {
        const float* t = NS + (b * g.N + g.t0 + o) * 2 * h + h;
        for (int64_t i = 0; i < g.I; ++i) {
          const int64_t r = (o * g.B + b) * g.I + i;
          const float* s = NS + (b * g.N + g.s0 + i) * 2 * h;
          for (int64_t j = 0; j < HC; ++j) {
            const vec z = load(U + r * u_row + j * L) + load(s + j * L) + load(t + j * L);
            store(PRE + r * h + j * L, z);
            store(HID + r * h + j * L, z / (1.f + exp_lanes(-z)));
          }
        }
      }
  });
}

// Its backward pass: d_pre = g SiLU'(pre) = g σ (1 + pre (1 − σ)) in place of g = dL/d hidden, and the node terms'
// gradients Σ_o d_pre per source and Σ_i d_pre per target added to DN [B, N, 2, h].
void edge_mlp_grad(float* G, const float* PRE, float* DN, Block g, int64_t h) {
  const int64_t HC = h / L;
  at::parallel_for(0, g.B, 1, [&](int64_t begin, int64_t end) {
    vec acc[MAXK];
    for (int64_t b = begin; b < end; ++b)
      for (int64_t i = 0; i < g.I; ++i) {
        for (int64_t j = 0; j < HC; ++j) acc[j] = vec{};
        for (int64_t o = 0; o < g.O; ++o) {
          const int64_t r = (o * g.B + b) * g.I + i;
          float* dt = DN + ((b * g.N + g.t0 + o) * 2 + 1) * h;
          for (int64_t j = 0; j < HC; ++j) {
            const vec z = load(PRE + r * h + j * L), sig = 1.f / (1.f + exp_lanes(-z));
            const vec d = load(G + r * h + j * L) * sig * (1.f + z * (1.f - sig));
            store(G + r * h + j * L, d);
            store(dt + j * L, load(dt + j * L) + d);
            acc[j] += d;
          }
        }
        float* ds = DN + (b * g.N + g.s0 + i) * 2 * h;
        for (int64_t j = 0; j < HC; ++j) store(ds + j * L, load(ds + j * L) + acc[j]);
      }
  });
}

Block block(const Tensor& edges, int64_t nodes, int64_t t0, int64_t s0) {
  TORCH_CHECK(edges.dim() == 4, "edges: expected the block's edge states as [O, B, I, D], got ", edges.sizes());
  return {edges.size(0), edges.size(1), edges.size(2), nodes, t0, s0};
}

#define WEIGHTFLOW_DISPATCH_WIDTH(width, KERNEL, ...)                                                     \
  switch (width) {                                                                                        \
    case 16: KERNEL<1>(__VA_ARGS__); break;                                                               \
    case 32: KERNEL<2>(__VA_ARGS__); break;                                                               \
    case 64: KERNEL<4>(__VA_ARGS__); break;                                                               \
    case 128: KERNEL<8>(__VA_ARGS__); break;                                                              \
    default: TORCH_CHECK(false, "attention kernels: edge width ", width, " is not one of 16, 32, 64, 128"); \
  }

Heads heads_of(int64_t heads, int64_t width, const char* what) {
  TORCH_CHECK(heads >= 1 && heads <= MAXH && width % L == 0 && width / L <= MAXC && width % heads == 0,
              "attention kernels: ", what, " width ", width, " with ", heads, " heads (need a multiple of 16, at most ",
              MAXC * L, ", divisible by at most ", MAXH, " heads)");
  return Heads(heads, width);
}

void scores_op(const Tensor& edges, const Tensor& edge_qk, const Tensor& xt, const Tensor& xs, const Tensor& qk,
               Tensor& score_t, Tensor& score_s, Tensor& top, int64_t t0, int64_t s0, int64_t heads, double scale) {
  const Block g = block(edges, qk.size(1), t0, s0);
  const int64_t D = edges.size(3), key = qk.size(2) / 2;
  TORCH_CHECK(edge_qk.dim() == 2 && edge_qk.stride(1) == 1 && edge_qk.scalar_type() == at::kFloat,
              "edge_qk: expected float32 rows [q_e | k_e | ...] with a contiguous last axis");
  WEIGHTFLOW_DISPATCH_WIDTH(D, scores, data(edges, "edges"), edge_qk.data_ptr<float>(), edge_qk.stride(0),
                            rows(xt, D, "xt"), rows(xs, D, "xs"), data(qk, "qk"), data(score_t, "score_t"),
                            data(score_s, "score_s"), data(top, "top"), g, heads_of(heads, key, "key"), key,
                            static_cast<float>(scale));
}

void softmax_exp_op(Tensor& score_t, Tensor& score_s, const Tensor& top, Tensor& total, int64_t fan_out,
                    int64_t fan_in, int64_t t0, int64_t s0) {
  const int64_t heads = top.size(2);
  TORCH_CHECK(score_t.numel() == score_s.numel() && score_t.numel() % (fan_out * fan_in * heads) == 0,
              "softmax_exp: scores do not match the block");
  const Block g = {fan_out, score_t.numel() / (fan_out * fan_in * heads), fan_in, top.size(1), t0, s0};
  softmax_exp(data(score_t, "score_t"), data(score_s, "score_s"), data(top, "top"), data(total, "total"), g, heads);
}

void values_op(const Tensor& edges, Tensor& alpha_t, Tensor& alpha_s, const Tensor& inv_total,
               const Tensor& node_values, Tensor& out, Tensor& mix_t, Tensor& mix_s, int64_t t0, int64_t s0,
               int64_t heads) {
  const Block g = block(edges, out.size(1), t0, s0);
  const int64_t D = edges.size(3);
  WEIGHTFLOW_DISPATCH_WIDTH(D, values, data(edges, "edges"), data(alpha_t, "alpha_t"), data(alpha_s, "alpha_s"),
                            data(inv_total, "inv_total"), data(node_values, "values"), data(out, "out"),
                            rows(mix_t, D, "mix_t"), rows(mix_s, D, "mix_s"), g, heads_of(heads, D, "value"));
}

void d_alpha_op(const Tensor& edges, const Tensor& g_t, const Tensor& g_s, const Tensor& grad, const Tensor& values,
                const Tensor& alpha_t, const Tensor& alpha_s, Tensor& d_alpha_t, Tensor& d_alpha_s, Tensor& dot,
                Tensor& d_values, int64_t t0, int64_t s0, int64_t heads) {
  const Block g = block(edges, grad.size(1), t0, s0);
  const int64_t D = edges.size(3);
  WEIGHTFLOW_DISPATCH_WIDTH(D, d_alpha, data(edges, "edges"), rows(g_t, D, "g_t"), rows(g_s, D, "g_s"),
                            data(grad, "grad"), data(values, "values"), data(alpha_t, "alpha_t"),
                            data(alpha_s, "alpha_s"), data(d_alpha_t, "d_alpha_t"), data(d_alpha_s, "d_alpha_s"),
                            data(dot, "dot"), data(d_values, "d_values"), g, heads_of(heads, D, "value"));
}

void score_grads_op(const Tensor& edges, Tensor& d_edges, const Tensor& alpha_t, const Tensor& alpha_s,
                    const Tensor& sigma_t, const Tensor& sigma_s, const Tensor& xt, const Tensor& xs, const Tensor& qk,
                    Tensor& d_qk, Tensor& d_pr_t, Tensor& d_pr_s, int64_t t0, int64_t s0, int64_t heads) {
  const Block g = block(edges, qk.size(1), t0, s0);
  const int64_t D = edges.size(3), key = qk.size(2) / 2;
  WEIGHTFLOW_DISPATCH_WIDTH(D, score_grads, data(edges, "edges"), data(d_edges, "d_edges"), data(alpha_t, "alpha_t"),
                            data(alpha_s, "alpha_s"), data(sigma_t, "sigma_t"), data(sigma_s, "sigma_s"),
                            rows(xt, D, "xt"), rows(xs, D, "xs"), data(qk, "qk"), data(d_qk, "d_qk"),
                            rows(d_pr_t, D, "d_pr_t"), rows(d_pr_s, D, "d_pr_s"), g, heads_of(heads, key, "key"),
                            key);
}

Tensor edge_gradients_op(const Tensor& projected, const Tensor& sigma_t, const Tensor& sigma_s,
                         const Tensor& grad_edge_term, int64_t key, int64_t heads) {
  const int64_t rows = projected.size(0), hidden = grad_edge_term.size(1);
  TORCH_CHECK(projected.dim() == 2 && projected.size(1) == 2 * key + hidden, "projected: expected [R, 2 key + hidden]");
  Tensor out = at::empty_like(projected);
  edge_gradients(data(projected, "projected"), projected.size(1), data(sigma_t, "sigma_t"), data(sigma_s, "sigma_s"),
                 data(grad_edge_term, "grad_edge_term"), hidden, out.data_ptr<float>(), rows,
                 heads_of(heads, key, "key"), key);
  return out;
}

Block edge_block(int64_t rows, int64_t fan_out, int64_t fan_in, int64_t nodes, int64_t t0, int64_t s0) {
  TORCH_CHECK(rows % (fan_out * fan_in) == 0, "edge MLP: ", rows, " rows do not tile blocks of ", fan_out, " x ",
              fan_in);
  return {fan_out, rows / (fan_out * fan_in), fan_in, nodes, t0, s0};
}

int64_t hidden_width(int64_t h) {
  TORCH_CHECK(h % L == 0 && h / L <= MAXK, "edge MLP: hidden width ", h, " is not a multiple of 16 up to ", MAXK * L);
  return h;
}

void edge_mlp_op(const Tensor& edge_term, const Tensor& node_terms, Tensor& pre, Tensor& hidden, int64_t fan_out,
                 int64_t fan_in, int64_t t0, int64_t s0) {
  const int64_t h = hidden_width(pre.size(1));
  TORCH_CHECK(edge_term.dim() == 2 && edge_term.stride(1) == 1 && edge_term.scalar_type() == at::kFloat &&
              edge_term.size(1) == h, "edge_term: expected float32 rows [R, h] with a contiguous last axis");
  const Block g = edge_block(pre.size(0), fan_out, fan_in, node_terms.size(1), t0, s0);
  edge_mlp(edge_term.data_ptr<float>(), edge_term.stride(0), data(node_terms, "node_terms"), data(pre, "pre"),
           data(hidden, "hidden"), g, h);
}

void edge_mlp_grad_op(Tensor& grad, const Tensor& pre, Tensor& d_nodes, int64_t fan_out, int64_t fan_in, int64_t t0,
                      int64_t s0) {
  const int64_t h = hidden_width(pre.size(1));
  const Block g = edge_block(pre.size(0), fan_out, fan_in, d_nodes.size(1), t0, s0);
  edge_mlp_grad(data(grad, "grad"), data(pre, "pre"), data(d_nodes, "d_nodes"), g, h);
}

}  // namespace

TORCH_LIBRARY(weightflow_attention, m) {
  m.def("scores(Tensor edges, Tensor edge_qk, Tensor xt, Tensor xs, Tensor qk, Tensor(a!) score_t, "
        "Tensor(b!) score_s, Tensor(c!) top, int t0, int s0, int heads, float scale) -> ()");
  m.def("softmax_exp(Tensor(a!) score_t, Tensor(b!) score_s, Tensor top, Tensor(c!) total, int fan_out, int fan_in, "
        "int t0, int s0) -> ()");
  m.def("values(Tensor edges, Tensor(a!) alpha_t, Tensor(b!) alpha_s, Tensor inv_total, Tensor values, "
        "Tensor(c!) out, Tensor(d!) mix_t, Tensor(e!) mix_s, int t0, int s0, int heads) -> ()");
  m.def("d_alpha(Tensor edges, Tensor g_t, Tensor g_s, Tensor grad, Tensor values, Tensor alpha_t, Tensor alpha_s, "
        "Tensor(a!) d_alpha_t, Tensor(b!) d_alpha_s, Tensor(c!) dot, Tensor(d!) d_values, int t0, int s0, "
        "int heads) -> ()");
  m.def("score_grads(Tensor edges, Tensor(a!) d_edges, Tensor alpha_t, Tensor alpha_s, Tensor sigma_t, "
        "Tensor sigma_s, Tensor xt, Tensor xs, Tensor qk, Tensor(b!) d_qk, Tensor(c!) d_pr_t, Tensor(d!) d_pr_s, "
        "int t0, int s0, int heads) -> ()");
  m.def("edge_mlp(Tensor edge_term, Tensor node_terms, Tensor(a!) pre, Tensor(b!) hidden, int fan_out, int fan_in, "
        "int t0, int s0) -> ()");
  m.def("edge_mlp_grad(Tensor(a!) grad, Tensor pre, Tensor(b!) d_nodes, int fan_out, int fan_in, int t0, "
        "int s0) -> ()");
  m.def("edge_gradients(Tensor projected, Tensor sigma_t, Tensor sigma_s, Tensor grad_edge_term, int key, "
        "int heads) -> Tensor");
}

TORCH_LIBRARY_IMPL(weightflow_attention, CPU, m) {
  m.impl("scores", &scores_op);
  m.impl("softmax_exp", &softmax_exp_op);
  m.impl("values", &values_op);
  m.impl("d_alpha", &d_alpha_op);
  m.impl("score_grads", &score_grads_op);
  m.impl("edge_gradients", &edge_gradients_op);
  m.impl("edge_mlp", &edge_mlp_op);
  m.impl("edge_mlp_grad", &edge_mlp_grad_op);
}

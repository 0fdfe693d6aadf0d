// cpu_matmul_avx512.cpp — the packed GEMM on 512-bit registers (cpu_matmul_avx512.h), after BLIS:
//   task (parallel): up to kNC output columns x a block of rows of T
//   k0: K in blocks of kKC — pack W[n-block, k-block] to panels of kNR = 32 columns
//       (f32: [kc][32] floats; bf16 dot: [kc/2][32] pairs of bf16), 16x16 in-register transposes
//   t0: kMR = 8 rows of T — an 8x32 register tile (16 zmm accumulators) over the panel
// Ragged columns are masked loads and stores, not copies. Every function carries its own target
// attribute: the file builds with any -march and only runs where cpu_path() chose it.
#include "cpu_matmul_avx512.h"
#include "cpu_features.h"
#include "cpu_matmul_amx.h"
#include "cpu_matvec.h"
#include "cpu_scratch.h"
#include "cpu_transpose16.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>

// GCC 12's intrinsics headers trip -Wmaybe-uninitialized (their _mm512_undefined_ps) when the
// file is built without -mavx512f; the values are always written.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#define KF_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#define KF_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c,avx512bf16")))

namespace kf {

namespace {

constexpr int kMR = 8, kNR = 32;
constexpr int64_t kKC = 256, kNC = 256;  // f32 panels of one task: kKC * kNC * 4 = 256 KiB of scratch
static_assert(kKC * kNC * 4 <= int64_t(ThreadPool::scratch_bytes()), "panels fit the pool's scratch");

KF_AVX512 inline __mmask16 first_n(int n) { return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1u); }

// Elements k .. k + n - 1 (n <= 16) of a row in dtype D widened to f32; lanes past n are 0 and unread.
template <DType D>
KF_AVX512 inline __m512 load16(const uint8_t *row, int64_t k, int n) {
  const __mmask16 m = first_n(n);
  if constexpr (D == DType::F32) {
    return _mm512_maskz_loadu_ps(m, reinterpret_cast<const float *>(row) + k);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(m, reinterpret_cast<const uint16_t *>(row) + k);
    if constexpr (D == DType::BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    else return _mm512_cvtph_ps(h);
  }
}

// bp[p][k][32] = W[n0 + 32p + j][k0 + k] as f32 (0 past nv columns), k < kc.
template <DType D>
KF_AVX512 void pack_f32(const uint8_t *W, size_t rb, int64_t n0, int64_t nv, int64_t k0, int64_t kc, float *bp) {
  for (int64_t p = 0; p * kNR < nv; p++) {
    float *panel = bp + p * kc * kNR;
    for (int h = 0; h < 2; h++)
      for (int64_t k = 0; k < kc; k += 16) {
        const int n = int(std::min<int64_t>(16, kc - k));
        __m512 r[16];
        for (int i = 0; i < 16; i++) {
          const int64_t j = p * kNR + h * 16 + i;
          r[i] = j < nv ? load16<D>(W + size_t(n0 + j) * rb, k0 + k, n) : _mm512_setzero_ps();
        }
        transpose16(r);
        for (int kk = 0; kk < n; kk++) _mm512_store_ps(panel + (k + kk) * kNR + h * 16, r[kk]);
      }
  }
}

// bf16 pairs: bp[p][q][32] = (W[.][k0 + 2q], W[.][k0 + 2q + 1]) as one 32-bit lane, q < ceil(kc / 2); an odd
// kc's last pair has 0 as its second value. Panels are `rows` >= ceil(kc / 2) pairs apart, the rows
// past ceil(kc / 2) zero (AMX tiles take 16 pairs at a time).
KF_AVX512 void pack_bf16_pairs(const uint8_t *W, size_t rb, int64_t n0, int64_t nv, int64_t k0, int64_t kc,
                               int64_t rows, uint32_t *bp) {
  const int64_t full = kc / 2, pairs = (kc + 1) / 2;
  for (int64_t p = 0; p * kNR < nv; p++) {
    uint32_t *panel = bp + p * rows * kNR;
    std::memset(panel + pairs * kNR, 0, size_t(rows - pairs) * kNR * 4);
    for (int h = 0; h < 2; h++)
      for (int64_t q = 0; q < full; q += 16) {
        const int n = int(std::min<int64_t>(16, full - q));
        __m512 r[16];
        for (int i = 0; i < 16; i++) {
          const int64_t j = p * kNR + h * 16 + i;
          const uint8_t *src = W + size_t(n0 + j) * rb + size_t(k0 + 2 * q) * 2;
          r[i] = j < nv ? _mm512_castsi512_ps(_mm512_maskz_loadu_epi32(first_n(n), src)) : _mm512_setzero_ps();
        }
        transpose16(r);
        for (int kk = 0; kk < n; kk++)
          _mm512_store_si512(reinterpret_cast<__m512i *>(panel + (q + kk) * kNR + h * 16), _mm512_castps_si512(r[kk]));
      }
    if (pairs > full)
      for (int j = 0; j < kNR; j++) {
        uint16_t v = 0;
        if (p * kNR + j < nv) std::memcpy(&v, W + size_t(n0 + p * kNR + j) * rb + size_t(k0 + kc - 1) * 2, 2);
        panel[full * kNR + j] = v;
      }
  }
}

// c[r][0:32] (masked to m0 | m1 << 16) = acc (+ bias when first, else + c).
template <int M>
KF_AVX512 inline void store_tile(__m512 (&acc)[M][2], float *c, int64_t ldc, bool first, const float *bias,
                                 __mmask16 m0, __mmask16 m1) {
  for (int r = 0; r < M; r++) {
    float *cr = c + r * ldc;
    const float *add = first ? bias : cr;
    if (add) {
      acc[r][0] = _mm512_add_ps(acc[r][0], _mm512_maskz_loadu_ps(m0, add));
      acc[r][1] = _mm512_add_ps(acc[r][1], _mm512_maskz_loadu_ps(m1, add + 16));
    }
    _mm512_mask_storeu_ps(cr, m0, acc[r][0]);
    _mm512_mask_storeu_ps(cr + 16, m1, acc[r][1]);
  }
}

// C[M, 32] (+)= A[M, kc] · panel[kc, 32] in f32; a rows lda apart.
template <int M>
KF_AVX512 void kernel_f32(int64_t kc, const float *a, int64_t lda, const float *bp, float *c, int64_t ldc, bool first,
                          const float *bias, __mmask16 m0, __mmask16 m1) {
  __m512 acc[M][2];
  for (int r = 0; r < M; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; k++) {
    const __m512 b0 = _mm512_load_ps(bp + k * kNR), b1 = _mm512_load_ps(bp + k * kNR + 16);
    for (int r = 0; r < M; r++) {
      const __m512 av = _mm512_set1_ps(a[r * lda + k]);
      acc[r][0] = _mm512_fmadd_ps(av, b0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(av, b1, acc[r][1]);
    }
  }
  store_tile<M>(acc, c, ldc, first, bias, m0, m1);
}

// The same with bf16 pairs: a rows (bf16, lda elements apart, from an even k) times panel pairs.
template <int M>
KF_AVX512BF16 void kernel_bf16(int64_t pairs, const uint16_t *a, int64_t lda, const uint32_t *bp, float *c,
                               int64_t ldc, bool first, const float *bias, __mmask16 m0, __mmask16 m1) {
  __m512 acc[M][2];
  for (int r = 0; r < M; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t q = 0; q < pairs; q++) {
    const __m512i b0 = _mm512_load_si512(bp + q * kNR), b1 = _mm512_load_si512(bp + q * kNR + 16);
    for (int r = 0; r < M; r++) {
      uint32_t pr;
      std::memcpy(&pr, a + r * lda + 2 * q, 4);
      const __m512i av = _mm512_set1_epi32(int32_t(pr));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], (__m512bh)av, (__m512bh)b0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], (__m512bh)av, (__m512bh)b1);
    }
  }
  store_tile<M>(acc, c, ldc, first, bias, m0, m1);
}

using KernelF32 = void (*)(int64_t, const float *, int64_t, const float *, float *, int64_t, bool, const float *,
                           __mmask16, __mmask16);
using KernelBf16 = void (*)(int64_t, const uint16_t *, int64_t, const uint32_t *, float *, int64_t, bool,
                            const float *, __mmask16, __mmask16);
constexpr KernelF32 kKernelsF32[kMR + 1] = {nullptr,       kernel_f32<1>, kernel_f32<2>, kernel_f32<3>, kernel_f32<4>,
                                            kernel_f32<5>, kernel_f32<6>, kernel_f32<7>, kernel_f32<8>};
constexpr KernelBf16 kKernelsBf16[kMR + 1] = {nullptr,          kernel_bf16<1>, kernel_bf16<2>,
                                              kernel_bf16<3>,   kernel_bf16<4>, kernel_bf16<5>,
                                              kernel_bf16<6>,   kernel_bf16<7>, kernel_bf16<8>};

struct Gemm {
  const float *x;
  int64_t lda;
  const uint16_t *xb;  // bf16 dot: x rounded to bf16, [T, kp], kp = K rounded up to even, zero padded
  int64_t kp;
  const uint8_t *W;
  size_t rb;
  DType dt;
  float *y;
  int64_t T, K, N;
  const float *bias;
  bool bf16_dot;
  bool amx;  // bf16 dot through AMX tiles (cpu_matmul_amx.h)
  int64_t m_blocks, m_step;
  int64_t nc;  // output columns per task, at most kNC
};

template <DType D>
KF_AVX512 void pack_panels(const Gemm &g, int64_t n0, int64_t nv, int64_t k0, int64_t kc, void *bp) {
  pack_f32<D>(g.W, g.rb, n0, nv, k0, kc, static_cast<float *>(bp));
}

KF_AVX512 void gemm_task(const Gemm &g, int64_t task, void *scratch) {
  const int64_t n0 = (task / g.m_blocks) * g.nc, nv = std::min(g.nc, g.N - n0);
  const int64_t m0 = (task % g.m_blocks) * g.m_step, m1 = std::min(g.T, m0 + g.m_step);
  if (g.amx) amx_bf16_begin();
  for (int64_t k0 = 0; k0 < g.K; k0 += kKC) {
    const int64_t kc = std::min(kKC, g.K - k0), pairs = (kc + 1) / 2;
    const bool first = k0 == 0;
    if (g.amx) {  // 32 rows x 32 columns per tile call, 16 pairs per step
      const int64_t steps = (pairs + 15) / 16;
      pack_bf16_pairs(g.W, g.rb, n0, nv, k0, kc, 16 * steps, static_cast<uint32_t *>(scratch));
      for (int64_t t0 = m0; t0 < m1; t0 += 32)
        for (int64_t p = 0; p * kNR < nv; p++) {
          const int64_t j0 = n0 + p * kNR;
          const int jv = int(std::min<int64_t>(kNR, nv - p * kNR));
          amx_bf16_tile(steps, g.xb + t0 * g.kp + k0, g.kp, static_cast<const uint32_t *>(scratch) + p * 16 * steps * kNR,
                        g.y + t0 * g.N + j0, g.N, int(std::min<int64_t>(32, m1 - t0)), first,
                        g.bias ? g.bias + j0 : nullptr, first_n(jv), jv > 16 ? first_n(jv - 16) : __mmask16(0));
        }
      continue;
    }
    if (g.bf16_dot) pack_bf16_pairs(g.W, g.rb, n0, nv, k0, kc, pairs, static_cast<uint32_t *>(scratch));
    else if (g.dt == DType::F32) pack_panels<DType::F32>(g, n0, nv, k0, kc, scratch);
    else if (g.dt == DType::F16) pack_panels<DType::F16>(g, n0, nv, k0, kc, scratch);
    else pack_panels<DType::BF16>(g, n0, nv, k0, kc, scratch);
    for (int64_t t0 = m0; t0 < m1; t0 += kMR) {
      const int mr = int(std::min<int64_t>(kMR, m1 - t0));
      for (int64_t p = 0; p * kNR < nv; p++) {
        const int64_t j0 = n0 + p * kNR;
        const int jv = int(std::min<int64_t>(kNR, nv - p * kNR));
        const __mmask16 mk0 = first_n(jv), mk1 = jv > 16 ? first_n(jv - 16) : __mmask16(0);
        float *c = g.y + t0 * g.N + j0;
        const float *b = g.bias ? g.bias + j0 : nullptr;
        if (g.bf16_dot) {
          const uint32_t *panel = static_cast<const uint32_t *>(scratch) + p * pairs * kNR;
          kKernelsBf16[mr](pairs, g.xb + t0 * g.kp + k0, g.kp, panel, c, g.N, first, b, mk0, mk1);
        } else {
          const float *panel = static_cast<const float *>(scratch) + p * kc * kNR;
          kKernelsF32[mr](kc, g.x + t0 * g.lda + k0, g.lda, panel, c, g.N, first, b, mk0, mk1);
        }
      }
    }
  }
  if (g.amx) amx_end();
}

// xb[t][0:kp] = bf16(x[t][0:K]) rounded to nearest even, then zeros.
KF_AVX512BF16 void round_rows_bf16(const float *x, int64_t lda, int64_t K, int64_t kp, uint16_t *xb, int64_t t0,
                                   int64_t t1) {
  for (int64_t t = t0; t < t1; t++) {
    const float *src = x + t * lda;
    uint16_t *dst = xb + t * kp;
    for (int64_t i = 0; i < K; i += 16) {
      const __mmask16 m = first_n(int(std::min<int64_t>(16, K - i)));
      const __m256bh h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + i));
      _mm256_mask_storeu_epi16(dst + i, m, (__m256i)h);
    }
    for (int64_t i = K; i < kp; i++) dst[i] = 0;
  }
}

// S rows of 16-bit weights read in lockstep, each with two accumulators per activation row (even and
// odd steps): what the bf16 and f16 decode kernels below share.
template <int T, int S>
struct RowSums {
  static_assert(S == 1 || T == 1, "two streams take one activation row");
  const uint16_t *w[S];
  __m512 acc[S][T][2];

  KF_AVX512 RowSums(const uint8_t *W, size_t rb, const int64_t *r) {
    for (int s = 0; s < S; s++) {
      w[s] = reinterpret_cast<const uint16_t *>(W + size_t(r[s]) * rb);
      for (int t = 0; t < T; t++) acc[s][t][0] = acc[s][t][1] = _mm512_setzero_ps();
    }
  }
  // y[t][r[s]] = the row's two accumulators summed (+ bias).
  KF_AVX512 void store(float *y, int64_t N, const int64_t *r, const float *bias) const {
    for (int s = 0; s < S; s++)
      for (int t = 0; t < T; t++)
        y[t * N + r[s]] =
            _mm512_reduce_add_ps(_mm512_add_ps(acc[s][t][0], acc[s][t][1])) + (bias ? bias[r[s]] : 0.0f);
  }
};

// y[t][r[s]] = xb[t] · W[r[s]] (+ bias) for S rows read in lockstep (S = 2: two streams, T = 1), W
// bf16: 32 products per vdpbf16ps, two accumulators per (row, t) (even and odd 64-byte steps), each row
// one sequential stream prefetched kDecodePrefetchBytes ahead into L2 or L1 as
// cpu_decode_reads().prefetch_l2 says (it went to L1 alone until measured on the Xeon VM: the 1.1B
// rows read 74-79% of a plain read, now 97%; 1.1B bf16 decode +11% and +9%, bench/decode_ab.ts both
// orders). Every output is summed the same way whatever T and S are, so batching rows changes no bit.
template <int T, int S, bool L2>
KF_AVX512BF16 void matvec_bf16_dot_at(const uint16_t *xb, int64_t kp, int64_t K, const uint8_t *W, size_t rb,
                                      float *y, int64_t N, const int64_t *r, const float *bias) {
  RowSums<T, S> rs(W, rb, r);
  const uint16_t *const *w = rs.w;
  auto &acc = rs.acc;
  int64_t i = 0;
  for (; i + 64 <= K; i += 64)
    for (int s = 0; s < S; s++) {
      decode_prefetch<L2>(w[s] + i);
      decode_prefetch<L2>(w[s] + i + 32);
      const __m512bh w0 = (__m512bh)_mm512_loadu_si512(w[s] + i), w1 = (__m512bh)_mm512_loadu_si512(w[s] + i + 32);
      for (int t = 0; t < T; t++) {
        acc[s][t][0] = _mm512_dpbf16_ps(acc[s][t][0], (__m512bh)_mm512_loadu_si512(xb + t * kp + i), w0);
        acc[s][t][1] = _mm512_dpbf16_ps(acc[s][t][1], (__m512bh)_mm512_loadu_si512(xb + t * kp + i + 32), w1);
      }
    }
  for (; i < K; i += 32) {  // the tail, masked: x's padding and W's lanes past K are zeros
    const __mmask32 m = K - i >= 32 ? __mmask32(0xffffffffu) : __mmask32((1u << (K - i)) - 1u);
    for (int s = 0; s < S; s++) {
      const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(m, w[s] + i);
      for (int t = 0; t < T; t++)
        acc[s][t][0] = _mm512_dpbf16_ps(acc[s][t][0], (__m512bh)_mm512_maskz_loadu_epi16(m, xb + t * kp + i), wv);
    }
  }
  rs.store(y, N, r, bias);
}

// Rows [r0, r1) one at a time, or at T = 1 with two_streams (cpu_decode_reads) row i of the first half
// beside row i of the second: two streams far apart read more per core than one (the Zen 5 EPYC VM).
// at(S, rows) runs S rows in lockstep.
template <int T, class At>
inline void stream_rows(int64_t r0, int64_t r1, bool two_streams, At &&at) {
  int64_t r = r0;
  if constexpr (T == 1)
    if (two_streams) {
      const int64_t half = (r1 - r0) / 2;
      for (; r < r0 + half; r++) {
        const int64_t rs[2] = {r, r + half};
        at(std::integral_constant<int, 2>{}, rs);
      }
      r += half;
    }
  for (; r < r1; r++) at(std::integral_constant<int, 1>{}, &r);
}

// f(std::integral_constant<int, T>{}) for T = 1..8: the matrix-vector kernels are templates on T.
template <class F>
void with_rows(int64_t T, F &&f) {
  switch (T) {
  case 1: return f(std::integral_constant<int, 1>{});
  case 2: return f(std::integral_constant<int, 2>{});
  case 3: return f(std::integral_constant<int, 3>{});
  case 4: return f(std::integral_constant<int, 4>{});
  case 5: return f(std::integral_constant<int, 5>{});
  case 6: return f(std::integral_constant<int, 6>{});
  case 7: return f(std::integral_constant<int, 7>{});
  default: return f(std::integral_constant<int, 8>{});
  }
}

// Short bf16 rows (under kMvShortRowBytes): a row's dot product is too short to pay for its own
// horizontal sum, so 16 (t, row) pairs keep one accumulator each, R = 16 / T rows at a time, and
// reduce16 sums all 16 at once (134M bf16 decode +25%, decode_ab both orders; the same for f16 rows
// measured 0.85x of matvec_f16_rows, which keeps them). A group's rows go two at a time (two
// dependency chains even at T = 1) or one, as cpu_decode_reads().short_rows_paired says; one stream
// (two groups far apart in lockstep measured 0.97x on the Zen 5 VM's 134M bf16, where two streams
// gain 1.2-1.3x on long rows). An accumulator's steps and its reduction tree depend on neither T,
// the pairing nor its slot: batching changes no bit.
//
// P rows' chunks: a[p * T + t] += x[t] · row p (32 bf16 products per vdpbf16ps; x rounded to bf16).
template <int T, int P, bool L2>
KF_AVX512BF16 inline void short_rows_bf16(const uint16_t *xb, int64_t kp, int64_t K, const uint16_t *w, size_t rw,
                                          __m512 *a) {
  int64_t i = 0;
  for (; i + 32 <= K; i += 32)
    for (int p = 0; p < P; p++) {
      decode_prefetch<L2>(w + p * rw + i);
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + p * rw + i);
      for (int t = 0; t < T; t++)
        a[p * T + t] = _mm512_dpbf16_ps(a[p * T + t], (__m512bh)_mm512_loadu_si512(xb + t * kp + i), wv);
    }
  if (i < K) {  // masked: x's padding and W's lanes past K are zeros
    const __mmask32 m = __mmask32((1u << (K - i)) - 1u);
    for (int p = 0; p < P; p++) {
      const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(m, w + p * rw + i);
      for (int t = 0; t < T; t++)
        a[p * T + t] = _mm512_dpbf16_ps(a[p * T + t], (__m512bh)_mm512_maskz_loadu_epi16(m, xb + t * kp + i), wv);
    }
  }
}

// P rows from row r of a group: their accumulators live in registers, their totals go to slots
// t * R + r + p of `acc` (memory: a register array indexed by the row would be kept on the stack anyway).
template <int T, int P, bool L2>
KF_AVX512BF16 inline void short_pair(const uint16_t *xb, int64_t kp, int64_t K, const uint16_t *w, int r,
                                     __m512 *acc) {
  constexpr int R = 16 / T;
  __m512 a[P * T];
  for (auto &v : a) v = _mm512_setzero_ps();
  short_rows_bf16<T, P, L2>(xb, kp, K, w, size_t(K), a);
  for (int p = 0; p < P; p++)
    for (int t = 0; t < T; t++) acc[t * R + r + p] = a[p * T + t];
}

// y[t][r] for rows [r0, r1) of short bf16 rows of K values, R = 16 / T rows per group, reduce16 summing
// the group's 16 slots.
template <int T, bool L2>
KF_AVX512BF16 void short_rows(const uint16_t *xb, int64_t kp, int64_t K, const uint8_t *W, float *y, int64_t N,
                              int64_t r0, int64_t r1, const float *bias, bool paired) {
  constexpr int R = 16 / T;
  for (int64_t g = r0; g < r1; g += R) {
    const int n = int(std::min<int64_t>(R, r1 - g));
    const uint16_t *wg = reinterpret_cast<const uint16_t *>(W) + size_t(g) * size_t(K);
    alignas(64) __m512 acc[16];
    for (auto &v : acc) v = _mm512_setzero_ps();
    int r = 0;
    if (paired)
      for (; r + 2 <= n; r += 2) short_pair<T, 2, L2>(xb, kp, K, wg + size_t(r) * size_t(K), r, acc);
    for (; r < n; r++) short_pair<T, 1, L2>(xb, kp, K, wg + size_t(r) * size_t(K), r, acc);
    alignas(64) float sums[16];
    _mm512_store_ps(sums, reduce16(acc, [](__m512 u, __m512 v) KF_AVX512 { return _mm512_add_ps(u, v); }));
    for (int t = 0; t < T; t++)
      for (int q = 0; q < n; q++) y[t * N + g + q] = sums[t * R + q] + (bias ? bias[g + q] : 0.0f);
  }
}

// y[t][r[s]] = x[t] · W[r[s]] (+ bias) for S rows in lockstep (as matvec_bf16_dot_at), W f16: 16
// weights widened per vcvtph2ps zmm, FMAs in f32 (x is not rounded: f16 keeps 11 significant bits,
// rounding x to bf16 would lose more), two accumulators per (row, t), each row one sequential stream
// prefetched kDecodePrefetchBytes ahead. Summed the same way whatever T and S are. Measured (1.1B
// shapes, 1 thread, cold): the AVX2 kernel's 8 interleaved 4 KiB rows read 15.5 GB/s; one stream here
// reads at bf16's rate.
template <int T, int S, bool L2>
KF_AVX512 void matvec_f16_at(const float *x, int64_t K, const uint8_t *W, size_t rb, float *y, int64_t N,
                             const int64_t *r, const float *bias) {
  RowSums<T, S> rs(W, rb, r);
  const uint16_t *const *w = rs.w;
  auto &acc = rs.acc;
  int64_t i = 0;
  for (; i + 32 <= K; i += 32)
    for (int s = 0; s < S; s++) {
      decode_prefetch<L2>(w[s] + i);
      const __m512 w0 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(w[s] + i)));
      const __m512 w1 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(w[s] + i + 16)));
      for (int t = 0; t < T; t++) {
        acc[s][t][0] = _mm512_fmadd_ps(_mm512_loadu_ps(x + t * K + i), w0, acc[s][t][0]);
        acc[s][t][1] = _mm512_fmadd_ps(_mm512_loadu_ps(x + t * K + i + 16), w1, acc[s][t][1]);
      }
    }
  for (; i < K; i += 16) {  // the tail, masked: lanes past K are zeros
    const __mmask16 m = first_n(int(std::min<int64_t>(16, K - i)));
    for (int s = 0; s < S; s++) {
      const __m512 wv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w[s] + i));
      for (int t = 0; t < T; t++)
        acc[s][t][0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + t * K + i), wv, acc[s][t][0]);
    }
  }
  rs.store(y, N, r, bias);
}

}  // namespace

void bf16_round_rows(const float *x, int64_t K, int64_t T, int64_t kp, uint16_t *xb) {
  round_rows_bf16(x, K, K, kp, xb, 0, T);
}

void matvec_bf16_dot_range(const uint16_t *xb, int64_t kp, const void *W, float *y, int64_t T, int64_t K, int64_t N,
                           int64_t r0, int64_t r1, const float *bias) {
  const uint8_t *Wb = static_cast<const uint8_t *>(W);
  const DecodeReads &reads = cpu_decode_reads();
  with_decode_prefetch([&](auto l2) {
    with_rows(T, [&](auto t) {
      constexpr int Tv = decltype(t)::value;
      constexpr bool L2 = decltype(l2)::value;
      if (size_t(K) * 2 < kMvShortRowBytes)
        return short_rows<Tv, L2>(xb, kp, K, Wb, y, N, r0, r1, bias, reads.short_rows_paired);
      stream_rows<Tv>(r0, r1, reads.two_streams, [&](auto s, const int64_t *r) {
        matvec_bf16_dot_at<Tv, decltype(s)::value, L2>(xb, kp, K, Wb, size_t(K) * 2, y, N, r, bias);
      });
    });
  });
}

void matvec_f16_range(const float *x, const void *W, float *y, int64_t T, int64_t K, int64_t N, int64_t r0, int64_t r1,
                      const float *bias) {
  const uint8_t *Wb = static_cast<const uint8_t *>(W);
  const bool two = cpu_decode_reads().two_streams;
  with_decode_prefetch([&](auto l2) {
    with_rows(T, [&](auto t) {
      constexpr int Tv = decltype(t)::value;
      stream_rows<Tv>(r0, r1, two, [&](auto s, const int64_t *r) {
        matvec_f16_at<Tv, decltype(s)::value, decltype(l2)::value>(x, K, Wb, size_t(K) * 2, y, N, r, bias);
      });
    });
  });
}

void gemm_avx512(ThreadPool &pool, const float *x, int64_t lda, const void *W, DType dt, float *y, int64_t T,
                 int64_t K, int64_t N, const float *bias, bool bf16_dot) {
  const bool dot = bf16_dot && dt == DType::BF16;
  Gemm g{x, lda, nullptr, 0, static_cast<const uint8_t *>(W), size_t(K) * dtype_size(dt), dt, y, T, K, N, bias,
         dot, dot && cpu_bf16_amx(), 1, T, 0};  // nc: set below
  // bf16 dot: x rounded once per call into a lent buffer, reused call after call (cpu_scratch.h). AMX
  // tiles read 32 rows of 32 values from any row and column they start at: rows padded to a
  // multiple of 32 values with zeros, and 32 rows past T (their results are dropped).
  const int64_t kp = g.amx ? (K + 31) / 32 * 32 : (K + 1) / 2 * 2, rows = g.amx ? T + 32 : T;
  ScratchLease lease(g.bf16_dot ? size_t(rows * kp) * sizeof(uint16_t) : 0);
  uint16_t *xb = lease.as<uint16_t>();
  if (g.bf16_dot) {
    g.kp = kp;
    g.xb = xb;
    if (rows > T) std::memset(xb + T * kp, 0, size_t((rows - T) * kp) * sizeof(uint16_t));
    if (T * K >= (int64_t(1) << 16) && pool.size() > 1) {
      const int64_t per = (T + pool.size() - 1) / pool.size();
      pool.run_per_thread([&](int th, int) {
        round_rows_bf16(x, lda, K, g.kp, xb, std::min<int64_t>(T, th * per), std::min<int64_t>(T, (th + 1) * per));
      });
    } else {
      round_rows_bf16(x, lda, K, g.kp, xb, 0, T);
    }
  }
  // Tasks: column blocks of at most kNC, aiming at a multiple of the thread count (768 columns in
  // three blocks of 256 left one of two threads idle for a third of every q/k/v/o/down product),
  // times row blocks of T when there are too few column blocks to give every thread two (each row
  // block packs its panels again, so T is split only when needed).
  const int nth = pool.size();
  const int64_t aim = ((N + kNC - 1) / kNC + nth - 1) / nth * nth;
  g.nc = std::min(kNC, ((N + aim - 1) / aim + kNR - 1) / kNR * kNR);
  const int64_t n_blocks = (N + g.nc - 1) / g.nc;
  int64_t m_blocks = 1;
  if (n_blocks < 2 * int64_t(nth)) m_blocks = std::min((2 * int64_t(nth) + n_blocks - 1) / n_blocks, (T + 31) / 32);
  m_blocks = std::max<int64_t>(1, m_blocks);
  const int64_t unit = g.amx ? 32 : kMR;  // rows per tile call
  g.m_step = ((T + m_blocks - 1) / m_blocks + unit - 1) / unit * unit;
  g.m_blocks = (T + g.m_step - 1) / g.m_step;
  pool.parallel_for(n_blocks * g.m_blocks, [&](int64_t task, int th) { gemm_task(g, task, pool.scratch(th)); });
}

}  // namespace kf

#else  // not x86-64: never chosen (cpu_path() is scalar there)

namespace kf {
void gemm_avx512(ThreadPool &, const float *, int64_t, const void *, DType, float *, int64_t, int64_t, int64_t,
                 const float *, bool) {
  raise(KF_ERR_INTERNAL, "cannot run matmul: no AVX-512 on this architecture");
}
void bf16_round_rows(const float *, int64_t, int64_t, int64_t, uint16_t *) {
  raise(KF_ERR_INTERNAL, "cannot run matmul: no AVX-512 on this architecture");
}
// Never chosen off x86-64 (cpu_matvec.cpp asks cpu_path() first); nothing may throw inside a region.
void matvec_bf16_dot_range(const uint16_t *, int64_t, const void *, float *, int64_t, int64_t, int64_t, int64_t,
                           int64_t, const float *) {}
void matvec_f16_range(const float *, const void *, float *, int64_t, int64_t, int64_t, int64_t, int64_t,
                      const float *) {}
}  // namespace kf

#endif

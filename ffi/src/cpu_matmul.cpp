// cpu_matmul.cpp — the CPU matrix products (cpu_ops.h): the matrix-vector path for small T, the packed
// GEMM for larger T, and the LoRA segments (lora_add). Every AVX2 block has a scalar twin right after
// it, and the scalar twins are also the tail loops of the vector code.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>
#include <type_traits>
#include <vector>

#include "cpu_features.h"
#include "cpu_matmul_avx512.h"
#include "cpu_matvec.h"
#include "cpu_ops.h"
#include "cpu_quant.h"
#include "cpu_simd.h"

namespace kf {

namespace {

// ---------------------------------------------------------------------------------------------
// matmul, small T: matrix-vector products streaming W once

// Each W element is loaded (and widened) once and used for all T rows of x, so up to T = 8 the
// pass stays bound by memory, not FMAs (measured faster than the GEMM, whose packing costs more
// than it saves at small T). Two kernels, chosen per call by T and the length of a W row (never by
// the thread split, so results do not depend on the thread count):
// - T <= 3 and long rows (>= 3 KiB): 8 (T = 1) or 4 rows at once, one accumulator per (t, row).
//   Several rows give independent load streams and amortise each x load over the rows.
// - otherwise (short rows, e.g. bf16 with in = 768, or T > 3): one row at a time with several
//   accumulators per t and a software prefetch 1 KiB ahead, so each thread reads its block as one
//   sequential stream. Measured on Zen 3 (bf16 768x32000, 1 thread): 4 interleaved streams of
//   1.5 KiB rows reach 55% of the read bandwidth (the hardware prefetcher does not follow them),
//   one stream 85%.
constexpr int64_t kMvPrefetchBytes = 1024;

// y[t][r0 + r] = x[t] · W[r0 + r] (+ bias) for t < T, r < R.
//   x: [T, in]; W: [out, in] dtype D, row_bytes apart; y: [T, out]
// Every output is summed the same way whatever R is (one chain per output), so row blocks of any
// size give identical bits.
template <DType D, int T, int R>
void matvec_rows(const float *x, int64_t in, const uint8_t *W, size_t row_bytes, float *y, int64_t out, int64_t r0,
                 const float *bias) {
  const void *rows[R];
  for (int r = 0; r < R; r++) rows[r] = W + size_t(r0 + r) * row_bytes;
  float sums[T][R];
  int64_t i = 0;
#ifdef KF_AVX2
  __m256 acc[T][R];
  for (int t = 0; t < T; t++)
    for (int r = 0; r < R; r++) acc[t][r] = _mm256_setzero_ps();
  for (; i + 8 <= in; i += 8) {
    // Each row's stream kMvPrefetchBytes ahead, one prefetch per 64-byte line (the hardware
    // prefetcher alone leaves these R interleaved streams well short of the read bandwidth). Near
    // a row's end the stream continues into the same row of the next block of R (the one this
    // thread reads next), not into row r + 1, which another stream already fetched.
    if (((size_t(i) * dtype_size(D)) & 63) == 0) {
      size_t ahead = size_t(i) * dtype_size(D) + kMvPrefetchBytes;
      if (ahead >= row_bytes) ahead += size_t(R - 1) * row_bytes;
      for (int r = 0; r < R; r++) _mm_prefetch(static_cast<const char *>(rows[r]) + ahead, _MM_HINT_T0);
    }
    __m256 xv[T];
    for (int t = 0; t < T; t++) xv[t] = _mm256_loadu_ps(x + t * in + i);
    for (int r = 0; r < R; r++) {
      const __m256 w = load8<D>(rows[r], i);
      for (int t = 0; t < T; t++) acc[t][r] = _mm256_fmadd_ps(xv[t], w, acc[t][r]);
    }
  }
  for (int t = 0; t < T; t++)
    for (int r = 0; r < R; r++) sums[t][r] = hsum(acc[t][r]);
#else
  for (int t = 0; t < T; t++)
    for (int r = 0; r < R; r++) sums[t][r] = 0.0f;
#endif
  for (; i < in; i++)
    for (int r = 0; r < R; r++) {
      const float w = load1<D>(rows[r], i);
      for (int t = 0; t < T; t++) sums[t][r] += x[t * in + i] * w;
    }
  for (int t = 0; t < T; t++)
    for (int r = 0; r < R; r++) y[t * out + r0 + r] = sums[t][r] + (bias ? bias[r0 + r] : 0.0f);
}

// y[t][r] = x[t] · W[r] (+ bias) for one row r, prefetching the row stream ahead.
// U accumulators per t (4 for T <= 3, 2 for T <= 6, else 1: at most 12 registers) hide the FMA
// latency; each W element is loaded and widened once for all T rows of x.
template <DType D, int T>
void matvec_row_stream(const float *x, int64_t in, const uint8_t *W, size_t row_bytes, float *y, int64_t out,
                       int64_t r, const float *bias) {
  const uint8_t *row = W + size_t(r) * row_bytes;
  float sums[T];
  int64_t i = 0;
#ifdef KF_AVX2
  constexpr int U = T <= 3 ? 4 : T <= 6 ? 2 : 1;
  constexpr int64_t step = 8 * U;                           // elements per iteration
  constexpr size_t step_bytes = size_t(step) * elem_bytes<D>();  // 16 .. 128
  __m256 acc[T][U];
  for (int t = 0; t < T; t++)
    for (int u = 0; u < U; u++) acc[t][u] = _mm256_setzero_ps();
  for (; i + step <= in; i += step) {
    // One prefetch per 64-byte line, kMvPrefetchBytes ahead. Past the row's end it runs into the
    // next row, which is exactly what this thread reads next.
    const char *pf = reinterpret_cast<const char *>(row) + size_t(i) * dtype_size(D) + kMvPrefetchBytes;
    if constexpr (step_bytes >= 64) {
      for (size_t off = 0; off < step_bytes; off += 64) _mm_prefetch(pf + off, _MM_HINT_T0);
    } else if (((size_t(i) * dtype_size(D)) & 63) == 0) {
      _mm_prefetch(pf, _MM_HINT_T0);
    }
    for (int u = 0; u < U; u++) {
      const __m256 w = load8<D>(row, i + 8 * u);
      for (int t = 0; t < T; t++) acc[t][u] = _mm256_fmadd_ps(_mm256_loadu_ps(x + t * in + i + 8 * u), w, acc[t][u]);
    }
  }
  for (; i + 8 <= in; i += 8) {
    const __m256 w = load8<D>(row, i);
    for (int t = 0; t < T; t++) acc[t][0] = _mm256_fmadd_ps(_mm256_loadu_ps(x + t * in + i), w, acc[t][0]);
  }
  for (int t = 0; t < T; t++) {
    __m256 a = acc[t][0];
    for (int u = 1; u < U; u++) a = _mm256_add_ps(a, acc[t][u]);
    sums[t] = hsum(a);
  }
#else
  for (int t = 0; t < T; t++) sums[t] = 0.0f;
#endif
  for (; i < in; i++) {
    const float w = load1<D>(row, i);
    for (int t = 0; t < T; t++) sums[t] += x[t * in + i] * w;
  }
  for (int t = 0; t < T; t++) y[t * out + r] = sums[t] + (bias ? bias[r] : 0.0f);
}

// Rows [r0, r1) of y = x · W^T.
template <DType D, int T>
void matvec_range(const float *x, int64_t in, const uint8_t *W, size_t row_bytes, float *y, int64_t out, int64_t r0,
                  int64_t r1, const float *bias) {
  if (T > 3 || row_bytes < kMvShortRowBytes) {
    for (int64_t r = r0; r < r1; r++) matvec_row_stream<D, T>(x, in, W, row_bytes, y, out, r, bias);
    return;
  }
  // T = 1 affords 8 rows (8 accumulators); T = 2, 3 take 4 (8 or 12 of the 16 ymm registers).
  constexpr int R = T == 1 ? 8 : 4;
  int64_t r = r0;
  for (; r + R <= r1; r += R) matvec_rows<D, T, R>(x, in, W, row_bytes, y, out, r, bias);
  for (; r < r1; r++) matvec_rows<D, T, 1>(x, in, W, row_bytes, y, out, r, bias);
}

// ---------------------------------------------------------------------------------------------
// matmul, large T: packed, cache-blocked GEMM (after BLIS / llm.c)
//
// C[T, N] = A[T, K] · B[K, N] with A = x, B = W^T (W is [N, K], rows contiguous in K).
// Loops, outermost first:
//   task (parallel): a block of up to kNC output columns x a block of rows of T
//   pc: K in blocks of kKC   — pack B[pc, block] to f32: kKC x kNC floats (192 KiB, stays in L2)
//   ir: kMR = 6 rows of T    — A rows read in place: 6 x kKC floats (9 KiB, stays in L1)
//   jr: kNR = 16 columns     — packed micro-panels kKC x 16, streamed from L2 in address order
//   micro-kernel: 6 x 16 tile of C in 12 ymm accumulators; per k 2 loads of B, 6 broadcasts of A,
//                 12 FMAs (the classic Haswell/Zen shape: 15 of 16 registers).
// Packing converts f16/bf16 once per panel and transposes 8x8 blocks in registers, so its cost is
// amortised over all T rows. Block sizes and the ir-outside-jr order were picked by measurement on
// Zen 3 (32 KiB L1d, 512 KiB L2 per core): packing A as well, other kKC (128..512) and kNC (64..256)
// were equal or slower, within the ~10% noise of the machine.
constexpr int kMR = 6, kNR = 16;
constexpr int64_t kKC = 384, kNC = 128;
static_assert(kKC * kNC * sizeof(float) + kMR * kNR * sizeof(float) * 2 <= ThreadPool::kScratchBytes,
              "packed panel must fit the pool's scratch");

// Packs columns [n0, n0 + nv) x rows [k0, k0 + kc) of B = W^T into micro-panels of 16 columns:
//   bp[p][k][j] = W[n0 + 16p + j][k0 + k], zero for columns past nv.   bp: [ceil(nv/16), kc, 16]
template <DType D>
void pack_b(const uint8_t *W, size_t row_bytes, int64_t n0, int64_t nv, int64_t k0, int64_t kc, float *bp) {
  for (int64_t p = 0; p * kNR < nv; p++) {
    const int jv = int(std::min<int64_t>(kNR, nv - p * kNR));
    const void *rows[kNR];
    for (int j = 0; j < kNR; j++) rows[j] = W + size_t(n0 + p * kNR + std::min(j, jv - 1)) * row_bytes;
    float *dst = bp + p * kc * kNR;
    int64_t k = 0;
#ifdef KF_AVX2
    for (; k + 8 <= kc; k += 8) {
      for (int half = 0; half < 2; half++) {
        __m256 r[8];
        for (int j = 0; j < 8; j++) {
          const int jj = half * 8 + j;
          r[j] = jj < jv ? load8<D>(rows[jj], k0 + k) : _mm256_setzero_ps();
        }
        transpose8(r);  // r[kk] = 8 columns' values at k + kk
        for (int kk = 0; kk < 8; kk++) _mm256_store_ps(dst + (k + kk) * kNR + half * 8, r[kk]);
      }
    }
#endif
    for (; k < kc; k++)
      for (int j = 0; j < kNR; j++) dst[k * kNR + j] = j < jv ? load1<D>(rows[j], k0 + k) : 0.0f;
  }
}

// The same micro-panels from B stored as it is used, W: [K, N] row-major (the backward pass's
// dx = dy · W reads a Linear weight [out, in] this way):
//   bp[p][k][j] = W[k0 + k][n0 + 16p + j], zero for columns past nv.   bp: [ceil(nv/16), kc, 16]
template <DType D>
void pack_b_nn(const uint8_t *W, size_t row_bytes, int64_t n0, int64_t nv, int64_t k0, int64_t kc, float *bp) {
  for (int64_t p = 0; p * kNR < nv; p++) {
    const int jv = int(std::min<int64_t>(kNR, nv - p * kNR));
    float *dst = bp + p * kc * kNR;
    for (int64_t k = 0; k < kc; k++) {
      const uint8_t *row = W + size_t(k0 + k) * row_bytes;
      const int64_t c0 = n0 + p * kNR;
#ifdef KF_AVX2
      if (jv == kNR) {
        _mm256_store_ps(dst + k * kNR, load8<D>(row, c0));
        _mm256_store_ps(dst + k * kNR + 8, load8<D>(row, c0 + 8));
        continue;
      }
#endif
      for (int j = 0; j < kNR; j++) dst[k * kNR + j] = j < jv ? load1<D>(row, c0 + j) : 0.0f;
    }
  }
}

// C[0..M, 0..16) (+)= A[0..M, 0..kc) · bp[0..kc, 0..16)
//   a: rows lda apart; bp: packed micro-panel [kc, 16]; c: rows ldc apart.
//   first: overwrite C (adding bias[0..16) when given) instead of accumulating into it.
template <int M>
void micro_kernel(int64_t kc, const float *a, int64_t lda, const float *bp, float *c, int64_t ldc, bool first,
                  const float *bias) {
#ifdef KF_AVX2
  __m256 c0[M], c1[M];
#pragma GCC unroll 6
  for (int r = 0; r < M; r++) c0[r] = c1[r] = _mm256_setzero_ps();
#pragma GCC unroll 2
  for (int64_t k = 0; k < kc; k++) {
    const __m256 b0 = _mm256_load_ps(bp + k * kNR), b1 = _mm256_load_ps(bp + k * kNR + 8);
#pragma GCC unroll 6
    for (int r = 0; r < M; r++) {
      const __m256 av = _mm256_broadcast_ss(a + r * lda + k);
      c0[r] = _mm256_fmadd_ps(av, b0, c0[r]);
      c1[r] = _mm256_fmadd_ps(av, b1, c1[r]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < M; r++) {
    float *cr = c + r * ldc;
    if (first) {
      if (bias) {
        c0[r] = _mm256_add_ps(c0[r], _mm256_loadu_ps(bias));
        c1[r] = _mm256_add_ps(c1[r], _mm256_loadu_ps(bias + 8));
      }
    } else {
      c0[r] = _mm256_add_ps(c0[r], _mm256_loadu_ps(cr));
      c1[r] = _mm256_add_ps(c1[r], _mm256_loadu_ps(cr + 8));
    }
    _mm256_storeu_ps(cr, c0[r]);
    _mm256_storeu_ps(cr + 8, c1[r]);
  }
#else
  float acc[M][kNR] = {};
  for (int64_t k = 0; k < kc; k++)
    for (int r = 0; r < M; r++)
      for (int j = 0; j < kNR; j++) acc[r][j] += a[r * lda + k] * bp[k * kNR + j];
  for (int r = 0; r < M; r++)
    for (int j = 0; j < kNR; j++)
      c[r * ldc + j] = acc[r][j] + (first ? (bias ? bias[j] : 0.0f) : c[r * ldc + j]);
#endif
}

using MicroKernel = void (*)(int64_t, const float *, int64_t, const float *, float *, int64_t, bool, const float *);
constexpr MicroKernel kMicroKernels[kMR + 1] = {nullptr,         micro_kernel<1>, micro_kernel<2>, micro_kernel<3>,
                                                micro_kernel<4>, micro_kernel<5>, micro_kernel<6>};

// y[T, N] = x[T, K] · B with B = W^T (W: [N, K], Linear layout) or, when kNN, B = W ([K, N]).
template <DType D, bool kNN = false>
void gemm(ThreadPool &pool, const float *x, int64_t lda, const void *Wv, float *y, int64_t T, int64_t K, int64_t N,
          const float *bias, int64_t ldw = 0) {
  const uint8_t *W = static_cast<const uint8_t *>(Wv);
  // W's row stride: K (Linear layout) or N (NN), unless the caller's rows overlap (an implicit im2col).
  const size_t row_bytes = size_t(ldw > 0 ? ldw : kNN ? N : K) * dtype_size(D);
  const int nth = pool.size();
  // Tasks: column blocks of kNC, times row blocks of T when there are too few column blocks to
  // give every thread two (each row block re-packs its panels, so split T only when needed).
  const int64_t n_blocks = (N + kNC - 1) / kNC;
  int64_t m_blocks = 1;
  if (n_blocks < 2 * int64_t(nth)) m_blocks = std::min((2 * int64_t(nth) + n_blocks - 1) / n_blocks, (T + 23) / 24);
  m_blocks = std::max<int64_t>(1, m_blocks);
  const int64_t m_step = ((T + m_blocks - 1) / m_blocks + kMR - 1) / kMR * kMR;
  m_blocks = (T + m_step - 1) / m_step;

  pool.parallel_for(n_blocks * m_blocks, [&](int64_t task, int th) {
    const int64_t n0 = (task / m_blocks) * kNC, nv = std::min(kNC, N - n0);
    const int64_t m0 = (task % m_blocks) * m_step, m1 = std::min(T, m0 + m_step);
    float *bp = static_cast<float *>(pool.scratch(th));  // [kKC * kNC] packed panel
    float *edge = bp + kKC * kNC;                          // [kMR, 16] tile for ragged columns
    float *edge_bias = edge + kMR * kNR;                   // [16]
    for (int64_t k0 = 0; k0 < K; k0 += kKC) {
      const int64_t kc = std::min(kKC, K - k0);
      const bool first = k0 == 0;
      if constexpr (kNN) pack_b_nn<D>(W, row_bytes, n0, nv, k0, kc, bp);
      else pack_b<D>(W, row_bytes, n0, nv, k0, kc, bp);
      for (int64_t t0 = m0; t0 < m1; t0 += kMR) {
        const int mr = int(std::min<int64_t>(kMR, m1 - t0));
        const float *a = x + t0 * lda + k0;
        for (int64_t p = 0; p * kNR < nv; p++) {
          const int64_t j0 = n0 + p * kNR;
          const int jv = int(std::min<int64_t>(kNR, nv - p * kNR));
          const float *panel = bp + p * kc * kNR;
          float *c = y + t0 * N + j0;
          if (jv == kNR) {
            kMicroKernels[mr](kc, a, lda, panel, c, N, first, bias ? bias + j0 : nullptr);
            continue;
          }
          // Ragged last panel: run on a full 16-wide tile, then copy the valid columns back.
          if (!first)
            for (int r = 0; r < mr; r++) std::memcpy(edge + r * kNR, c + r * N, size_t(jv) * sizeof(float));
          if (bias && first) {
            std::fill(edge_bias, edge_bias + kNR, 0.0f);
            std::memcpy(edge_bias, bias + j0, size_t(jv) * sizeof(float));
          }
          kMicroKernels[mr](kc, a, lda, panel, edge, kNR, first, bias && first ? edge_bias : nullptr);
          for (int r = 0; r < mr; r++) std::memcpy(c + r * N, edge + r * kNR, size_t(jv) * sizeof(float));
        }
      }
    }
  });
}

}  // namespace

void matvec_float_range(DType dt, const float *x, int64_t in, const void *W, float *y, int64_t T, int64_t out,
                        int64_t r0, int64_t r1, const float *bias) {
  const uint8_t *Wb = static_cast<const uint8_t *>(W);
  auto run = [&](auto d) {
    constexpr DType D = decltype(d)::value;
    const size_t rb = size_t(in) * dtype_size(D);
    switch (T) {
    case 1: return matvec_range<D, 1>(x, in, Wb, rb, y, out, r0, r1, bias);
    case 2: return matvec_range<D, 2>(x, in, Wb, rb, y, out, r0, r1, bias);
    case 3: return matvec_range<D, 3>(x, in, Wb, rb, y, out, r0, r1, bias);
    case 4: return matvec_range<D, 4>(x, in, Wb, rb, y, out, r0, r1, bias);
    case 5: return matvec_range<D, 5>(x, in, Wb, rb, y, out, r0, r1, bias);
    case 6: return matvec_range<D, 6>(x, in, Wb, rb, y, out, r0, r1, bias);
    case 7: return matvec_range<D, 7>(x, in, Wb, rb, y, out, r0, r1, bias);
    default: return matvec_range<D, 8>(x, in, Wb, rb, y, out, r0, r1, bias);
    }
  };
  static_assert(kMatvecMaxT == 8, "matvec_float_range dispatches T = 1..8");
  if (dt == DType::F16) run(std::integral_constant<DType, DType::F16>{});
  else if (dt == DType::BF16) run(std::integral_constant<DType, DType::BF16>{});
  else run(std::integral_constant<DType, DType::F32>{});
}

void matmul(ThreadPool &pool, const float *x, const void *W, DType dt, float *y, int64_t T, int64_t in, int64_t out,
            const float *bias) {
  if (T < 0 || in < 0 || out < 0)
    raise(KF_ERR_INTERNAL, "cannot run matmul: negative shape T=%lld in=%lld out=%lld", (long long)T, (long long)in,
          (long long)out);
  if (T == 0 || out == 0) return;
  if (in == 0) {  // empty sum
    for (int64_t t = 0; t < T; t++)
      for (int64_t o = 0; o < out; o++) y[t * out + o] = bias ? bias[o] : 0.0f;
    return;
  }
  if (!x || !W || !y) raise(KF_ERR_INTERNAL, "cannot run matmul: null x, W or y");
  // Decode-sized T: the matrix-vector path (cpu_matvec.cpp) where it applies. Otherwise kernels by
  // cpu_path() (cpu_features.h): quantized weights have their own; the scalar path is plain loops;
  // AVX-512 takes the GEMM, where it pays.
  if (T <= kMatvecMaxT) {
    const MatmulProduct p{W, dt, y, out, bias};
    if (matvec_products(pool, x, T, in, &p, 1)) return;
  }
  if (dtype_quantized(dt)) return matmul_quant(pool, x, in, W, dt, y, T, in, out, bias);
  if (dt != DType::F32 && dt != DType::F16 && dt != DType::BF16)
    raise(KF_ERR_INTERNAL, "cannot run matmul: unknown weight dtype %d", int(dt));
  const CpuPath path = cpu_path();
  if (path == CpuPath::Scalar) return matmul_portable(pool, x, in, W, dt, y, T, in, out, bias);
  if (int32_t(path) >= int32_t(CpuPath::Avx512))
    return gemm_avx512(pool, x, in, W, dt, y, T, in, out, bias, int32_t(path) >= int32_t(CpuPath::Avx512Bf16));
  switch (dt) {
  case DType::F32: gemm<DType::F32>(pool, x, in, W, y, T, in, out, bias); return;
  case DType::F16: gemm<DType::F16>(pool, x, in, W, y, T, in, out, bias); return;
  default: gemm<DType::BF16>(pool, x, in, W, y, T, in, out, bias); return;
  }
}

void matmul_strided(ThreadPool &pool, const float *x, int64_t x_stride, const void *W, DType dt, float *y, int64_t T,
                    int64_t in, int64_t out, const float *bias) {
  if (x_stride == in || T <= 1) return matmul(pool, x, W, dt, y, T, in, out, bias);
  if (dtype_quantized(dt)) return matmul_quant(pool, x, x_stride, W, dt, y, T, in, out, bias);
  if (x_stride < 1 || in < 1 || out < 1 || !x || !W || !y)
    raise(KF_ERR_INTERNAL, "cannot run strided matmul: bad shape in=%lld out=%lld stride=%lld", (long long)in,
          (long long)out, (long long)x_stride);
  if (T <= kMatvecMaxT) {  // few rows: one matrix-vector pass each
    for (int64_t t = 0; t < T; t++) matmul(pool, x + t * x_stride, W, dt, y + t * out, 1, in, out, bias);
    return;
  }
  switch (dt) {
  case DType::F32: gemm<DType::F32>(pool, x, x_stride, W, y, T, in, out, bias); return;
  case DType::F16: gemm<DType::F16>(pool, x, x_stride, W, y, T, in, out, bias); return;
  case DType::BF16: gemm<DType::BF16>(pool, x, x_stride, W, y, T, in, out, bias); return;
  default: break;  // quantized: handled above
  }
}

void matmul_nn(ThreadPool &pool, const float *x, const void *W, DType dt, float *y, int64_t T, int64_t K, int64_t N,
               int64_t w_stride) {
  if (T < 0 || K < 0 || N < 0) raise(KF_ERR_INTERNAL, "cannot run matmul_nn: negative shape");
  if (T == 0 || N == 0) return;
  if (K == 0) {
    std::fill(y, y + T * N, 0.0f);
    return;
  }
  if (!x || !W || !y) raise(KF_ERR_INTERNAL, "cannot run matmul_nn: null x, W or y");
  if (dtype_quantized(dt))
    raise(KF_ERR_UNSUPPORTED, "cannot run the backward matmul: %s weights have none yet; load the model in f32 or bf16 "
          "to train", dtype_name(dt));
  switch (dt) {
  case DType::F32: gemm<DType::F32, true>(pool, x, K, W, y, T, K, N, nullptr, w_stride); return;
  case DType::F16: gemm<DType::F16, true>(pool, x, K, W, y, T, K, N, nullptr, w_stride); return;
  case DType::BF16: gemm<DType::BF16, true>(pool, x, K, W, y, T, K, N, nullptr, w_stride); return;
  default: break;  // quantized: handled above
  }
}

// ---------------------------------------------------------------------------------------------
// LoRA: y += B (A x) per segment of rows

void lora_add(ThreadPool &pool, const float *x, int64_t in, float *y, int64_t out, const LoraSegment *segs,
              int32_t n_segs, float *tmp, int64_t tmp_stride) {
  // work: bytes of A and B the call streams, scaled up by rows per eighth (compute grows with rows).
  int64_t n_a_tasks = 0, work = 0;
  for (int32_t s = 0; s < n_segs; s++) {
    if (segs[s].col < 0 || int64_t(segs[s].col) + segs[s].rank > tmp_stride)
      raise(KF_ERR_INTERNAL, "cannot apply LoRA: columns %d + rank %d are past the scratch stride %lld", segs[s].col,
            segs[s].rank, (long long)tmp_stride);
    n_a_tasks += segs[s].rank;
    work += int64_t(segs[s].rank) * (in + out) * int64_t(sizeof(float)) * std::max(1, segs[s].n_rows / 8);
  }
  if (n_a_tasks == 0) return;
  // Pass 1: tmp[r, col + j] = A[j] . x[r]; one task per (segment, j), looping over the segment's rows.
  auto pass_a = [&](int64_t task, int) {
    int32_t s = 0;
    while (task >= segs[s].rank) task -= segs[s++].rank;
    const LoraSegment &g = segs[s];
    const float *a = g.a + task * in;
    for (int32_t r = g.row0; r < g.row0 + g.n_rows; r++) tmp[r * tmp_stride + g.col + task] = dot_f32(a, x + r * in, in);
  };
  // Pass 2: y[r, o0:o1] += weight · sum_j tmp[r, col + j] Bt[j, o0:o1], in blocks of output features.
  // Segments over the same rows (a composition's terms) add into the same block one after another.
  constexpr int64_t kBlock = 256;
  auto pass_b = [&](int64_t blk, int) {
    const int64_t o0 = blk * kBlock, n = std::min(out, o0 + kBlock) - o0;
    for (int32_t s = 0; s < n_segs; s++) {
      const LoraSegment &g = segs[s];
      for (int32_t r = g.row0; r < g.row0 + g.n_rows; r++) {
        const float *t = tmp + r * tmp_stride + g.col;
        for (int32_t j = 0; j < g.rank; j++) axpy_f32(g.weight * t[j], g.bt + j * out + o0, y + r * out + o0, n);
      }
    }
  };
  const int64_t n_blocks = (out + kBlock - 1) / kBlock;
  // A decode step's pair is a few dozen KiB: waking the pool twice would cost more than the work.
  if (work <= (int64_t(KF_LORA_INLINE_KB) << 10)) {
    for (int64_t t = 0; t < n_a_tasks; t++) pass_a(t, 0);
    for (int64_t b = 0; b < n_blocks; b++) pass_b(b, 0);
    return;
  }
  pool.parallel_for(n_a_tasks, pass_a);
  pool.parallel_for(n_blocks, pass_b);
}

}  // namespace kf

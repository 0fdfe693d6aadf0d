// cpu_quant.cpp — Q8_0 / Q4_0 quantization and the matmul over quantized weights (cpu_quant.h).
//
// The matmul quantizes each activation row to blocks of 32 int8 with an f32 scale (and the block's
// int sum, for Q4_0's offset of 8), then every output is sum over blocks of
// d_w * d_x * (exact int dot of the block). Row kernels compute that dot for 8 (or 4, 1) weight rows
// against one or two activation rows: vpdpbusd (AVX512-VNNI on ymm, or AVX-VNNI), AVX2 maddubs +
// madd, and plain loops. From 3 activation rows on, AVX512-VNNI runs a GEMM over repacked panels
// instead (5x the row kernels at T = 128), with the same bits. Each kernel has its own target
// attribute, so the file builds and runs on any x86-64.
#include "cpu_quant.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "cpu_ops.h"
#include "cpu_quant_amx.h"
#include "cpu_quant_vnni512.h"
#include "cpu_scratch.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define KF_QUANT_X86 1
#endif

namespace kf {

void quantize_row(const float *src, DType dt, void *dst, int64_t n) {
  const int64_t nb = n / kQuantBlock;
  if (dt == DType::Q8_0) {
    BlockQ8_0 *y = static_cast<BlockQ8_0 *>(dst);
    for (int64_t b = 0; b < nb; b++) {
      const float *x = src + b * kQuantBlock;
      float amax = 0.0f;
      for (int j = 0; j < 32; j++) amax = std::max(amax, std::fabs(x[j]));
      const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
      y[b].d = f32_to_f16(d);
      for (int j = 0; j < 32; j++) y[b].qs[j] = int8_t(std::roundf(x[j] * id));
    }
    return;
  }
  BlockQ4_0 *y = static_cast<BlockQ4_0 *>(dst);
  for (int64_t b = 0; b < nb; b++) {
    const float *x = src + b * kQuantBlock;
    // ggml: the value of largest magnitude, with its sign, maps to -8.
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < 32; j++)
      if (amax < std::fabs(x[j])) amax = std::fabs(x[j]), max = x[j];
    const float d = max / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = f32_to_f16(d);
    for (int j = 0; j < 16; j++) {
      const uint8_t lo = uint8_t(std::min<int>(15, int8_t(x[j] * id + 8.5f)));
      const uint8_t hi = uint8_t(std::min<int>(15, int8_t(x[16 + j] * id + 8.5f)));
      y[b].qs[j] = uint8_t(lo | (hi << 4));
    }
  }
}

// Sub-block j's 6-bit scale and min of a Q4_K block: j < 4 in the low 6 bits of bytes j and j + 4;
// j >= 4 split into the low / high nibble of byte j + 4 and the top 2 bits of bytes j - 4 / j.
void q4_k_scale_min(const uint8_t *q, int j, uint8_t *sc, uint8_t *m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = uint8_t((q[j + 4] & 15) | ((q[j - 4] >> 6) << 4));
    *m = uint8_t((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// Value l's code: 4 low bits from ql, 2 high bits from qh. Per 128 values (ql[64], qh[32]): value l <
// 32 takes ql[l]'s low nibble and qh[l]'s bits 0-1; l + 32 ql[l + 32]'s low nibble, bits 2-3; l + 64
// ql[l]'s high nibble, bits 4-5; l + 96 ql[l + 32]'s high nibble, bits 6-7.
void q6_k_codes(const BlockQ6_K &x, uint8_t *q) {
  for (int half = 0; half < 2; half++) {
    const uint8_t *ql = x.ql + 64 * half, *qh = x.qh + 32 * half;
    uint8_t *o = q + 128 * half;
    for (int l = 0; l < 32; l++) {
      o[l] = uint8_t((ql[l] & 15) | ((qh[l] & 3) << 4));
      o[l + 32] = uint8_t((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4));
      o[l + 64] = uint8_t((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
      o[l + 96] = uint8_t((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
    }
  }
}

namespace {

void dequantize_q4_k(const BlockQ4_K *x, float *y, int64_t nb) {
  for (int64_t b = 0; b < nb; b++, y += kKQuantBlock) {
    const float d = f16_to_f32(x[b].d), dmin = f16_to_f32(x[b].dmin);
    for (int pair = 0; pair < 4; pair++) {  // 64 values from 32 bytes: low nibbles, then high
      const uint8_t *q = x[b].qs + 32 * pair;
      uint8_t sc, m;
      q4_k_scale_min(x[b].scales, 2 * pair, &sc, &m);
      const float d1 = d * sc, m1 = dmin * m;
      q4_k_scale_min(x[b].scales, 2 * pair + 1, &sc, &m);
      const float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; l++) y[64 * pair + l] = d1 * float(q[l] & 15) - m1;
      for (int l = 0; l < 32; l++) y[64 * pair + 32 + l] = d2 * float(q[l] >> 4) - m2;
    }
  }
}

void dequantize_q6_k(const BlockQ6_K *x, float *y, int64_t nb) {
  uint8_t q[kKQuantBlock];
  for (int64_t b = 0; b < nb; b++, y += kKQuantBlock) {
    q6_k_codes(x[b], q);
    const float d = f16_to_f32(x[b].d);
    for (int j = 0; j < 16; j++)
      for (int l = 0; l < 16; l++) y[16 * j + l] = d * float(x[b].scales[j]) * float(int(q[16 * j + l]) - 32);
  }
}

}  // namespace

void dequantize_row(const void *src, DType dt, float *dst, int64_t n) {
  if (dtype_rows16(dt))
    raise(KF_ERR_INTERNAL, "cannot dequantize a row of interleaved %s weights in place: deinterleave_row16 first",
          dtype_name(dt));
  if (dt == DType::Q4_K) return dequantize_q4_k(static_cast<const BlockQ4_K *>(src), dst, n / kKQuantBlock);
  if (dt == DType::Q6_K) return dequantize_q6_k(static_cast<const BlockQ6_K *>(src), dst, n / kKQuantBlock);
  const int64_t nb = n / kQuantBlock;
  if (dt == DType::Q8_0) {
    const BlockQ8_0 *x = static_cast<const BlockQ8_0 *>(src);
    for (int64_t b = 0; b < nb; b++) {
      const float d = f16_to_f32(x[b].d);
      for (int j = 0; j < 32; j++) dst[b * 32 + j] = d * float(x[b].qs[j]);
    }
    return;
  }
  const BlockQ4_0 *x = static_cast<const BlockQ4_0 *>(src);
  for (int64_t b = 0; b < nb; b++) {
    const float d = f16_to_f32(x[b].d);
    for (int j = 0; j < 16; j++) {
      dst[b * 32 + j] = d * float((x[b].qs[j] & 15) - 8);
      dst[b * 32 + 16 + j] = d * float((x[b].qs[j] >> 4) - 8);
    }
  }
}

namespace {

using quant::ActBlock;

// out[r] = sum_b d_w[r][b] * x.d[b] * dot(W[r] block b, x block b), r < R; rows `rb` bytes apart.
template <DType D, int R>
void rows_scalar(const uint8_t *w, size_t rb, const ActBlock *x, int64_t nb, float *out) {
  float acc[R] = {};
  for (int64_t b = 0; b < nb; b++)
    for (int r = 0; r < R; r++) {
      int32_t s = 0;
      float dw;
      if constexpr (D == DType::Q8_0) {
        const BlockQ8_0 &q = reinterpret_cast<const BlockQ8_0 *>(w + size_t(r) * rb)[b];
        for (int j = 0; j < 32; j++) s += int32_t(q.qs[j]) * x[b].qs[j];
        dw = f16_to_f32(q.d);
      } else {
        const BlockQ4_0 &q = reinterpret_cast<const BlockQ4_0 *>(w + size_t(r) * rb)[b];
        for (int j = 0; j < 16; j++) s += int32_t(q.qs[j] & 15) * x[b].qs[j] + int32_t(q.qs[j] >> 4) * x[b].qs[16 + j];
        s -= 8 * x[b].sum;
        dw = f16_to_f32(q.d);
      }
      acc[r] += float(s) * (dw * x[b].d);
    }
  for (int r = 0; r < R; r++) out[r] = acc[r];
}

#ifdef KF_QUANT_X86
// The same with 256-bit int8 dots. DOT(u, s) returns 8 int32 lanes summing to sum_j u[j] * s[j]
// (u unsigned, s signed bytes); Q8_0 weights go through the sign trick (|w| times x with w's sign).
#define KF_QUANT_ROWS(NAME, TARGET, DOT)                                                                         \
  template <DType D, int R>                                                                                      \
  __attribute__((target(TARGET))) void NAME(const uint8_t *w, size_t rb, const ActBlock *x, int64_t nb,         \
                                            float *out) {                                                        \
    __m256 acc[R];                                                                                               \
    for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();                                                    \
    const __m256i low4 = _mm256_set1_epi8(15);                                                                   \
    for (int64_t b = 0; b < nb; b++) {                                                                           \
      const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x[b].qs));                         \
      for (int r = 0; r < R; r++) {                                                                              \
        __m256i dot;                                                                                             \
        uint16_t dh;                                                                                             \
        if constexpr (D == DType::Q8_0) {                                                                        \
          const BlockQ8_0 &q = reinterpret_cast<const BlockQ8_0 *>(w + size_t(r) * rb)[b];                       \
          const __m256i wq = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(q.qs));                        \
          dot = DOT(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xq, wq));                                         \
          dh = q.d;                                                                                              \
        } else {                                                                                                 \
          const BlockQ4_0 &q = reinterpret_cast<const BlockQ4_0 *>(w + size_t(r) * rb)[b];                       \
          const __m128i p = _mm_loadu_si128(reinterpret_cast<const __m128i *>(q.qs));                            \
          const __m256i nib = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(p, 4), p), low4);                 \
          dot = _mm256_sub_epi32(DOT(nib, xq), _mm256_setr_epi32(8 * x[b].sum, 0, 0, 0, 0, 0, 0, 0));                           \
          dh = q.d;                                                                                              \
        }                                                                                                        \
        const float dd = _cvtsh_ss(dh) * x[b].d;                                                                 \
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(dd), acc[r]);                           \
      }                                                                                                          \
    }                                                                                                            \
    for (int r = 0; r < R; r++) {                                                                                \
      __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[r]), _mm256_extractf128_ps(acc[r], 1));                   \
      s = _mm_add_ps(s, _mm_movehl_ps(s, s));                                                                    \
      s = _mm_add_ss(s, _mm_movehdup_ps(s));                                                                     \
      out[r] = _mm_cvtss_f32(s);                                                                                 \
    }                                                                                                            \
  }

// 8 rows against NT (1 or 2) activation rows, one block at a time: the 8 rows' int dots are summed
// into one vector (lane r = row r) by a tree of hadds, so the int-to-float conversion, the scales
// (8 f16 loads) and the FMA are paid once per 8 rows; with NT = 2 each weight block is loaded and
// prepared once for both activation rows. Every activation row's outputs are summed exactly as with
// NT = 1, so batching rows never changes a bit.
//   x[j]: activation row j's blocks; out[j]: its 8 outputs
#define KF_QUANT_ROWS8(NAME, TARGET, DOT)                                                                        \
  template <DType D, int NT>                                                                                     \
  __attribute__((target(TARGET))) void NAME(const uint8_t *w, size_t rb, const ActBlock *const *x, int64_t nb,  \
                                            float *const *out, const uint8_t *pf, int64_t pf_lines) {            \
    constexpr size_t bs = quant_block_bytes(D);                                                                    \
    __m256 acc[NT];                                                                                              \
    for (int j = 0; j < NT; j++) acc[j] = _mm256_setzero_ps();                                                   \
    const __m256i low4 = _mm256_set1_epi8(15);                                                                   \
    for (int64_t b = 0; b < nb; b++) {                                                                           \
      for (int64_t l = b * pf_lines / nb; l < (b + 1) * pf_lines / nb; l++)                                      \
        _mm_prefetch(reinterpret_cast<const char *>(pf + 64 * l), _MM_HINT_T0);                                  \
      __m256i xq[NT], d[NT][8];                                                                                  \
      for (int j = 0; j < NT; j++) xq[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x[j][b].qs));    \
      uint16_t dh[8];                                                                                            \
      for (int r = 0; r < 8; r++) {                                                                              \
        const uint8_t *blk = w + size_t(r) * rb + size_t(b) * bs;                                                \
        std::memcpy(&dh[r], blk, 2);                                                                             \
        if constexpr (D == DType::Q8_0) {                                                                        \
          const __m256i wq = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(blk + 2));                     \
          const __m256i aw = _mm256_sign_epi8(wq, wq);                                                           \
          for (int j = 0; j < NT; j++) d[j][r] = DOT(aw, _mm256_sign_epi8(xq[j], wq));                           \
        } else {                                                                                                 \
          const __m128i p = _mm_loadu_si128(reinterpret_cast<const __m128i *>(blk + 2));                         \
          const __m256i nib = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(p, 4), p), low4);                 \
          for (int j = 0; j < NT; j++) d[j][r] = DOT(nib, xq[j]);                                                \
        }                                                                                                        \
      }                                                                                                          \
      const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(dh)));                 \
      for (int j = 0; j < NT; j++) {                                                                             \
        const __m256i u0 = _mm256_hadd_epi32(_mm256_hadd_epi32(d[j][0], d[j][1]), _mm256_hadd_epi32(d[j][2], d[j][3])); \
        const __m256i u1 = _mm256_hadd_epi32(_mm256_hadd_epi32(d[j][4], d[j][5]), _mm256_hadd_epi32(d[j][6], d[j][7])); \
        __m256i sums = _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20),                                 \
                                        _mm256_permute2x128_si256(u0, u1, 0x31));                                \
        if constexpr (D == DType::Q4_0) sums = _mm256_sub_epi32(sums, _mm256_set1_epi32(8 * x[j][b].sum));       \
        acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_mul_ps(dw, _mm256_set1_ps(x[j][b].d)), acc[j]); \
      }                                                                                                          \
    }                                                                                                            \
    for (int j = 0; j < NT; j++) _mm256_storeu_ps(out[j], acc[j]);                                               \
  }

#define KF_DOT_AVX2(u, s) _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
#define KF_DOT_VNNI512(u, s) _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
#define KF_DOT_AVXVNNI(u, s) _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s)
KF_QUANT_ROWS(rows_avx2, "avx2,fma,f16c", KF_DOT_AVX2)
KF_QUANT_ROWS(rows_vnni512, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", KF_DOT_VNNI512)
KF_QUANT_ROWS(rows_avxvnni, "avx2,fma,f16c,avxvnni", KF_DOT_AVXVNNI)
KF_QUANT_ROWS8(rows8_avx2, "avx2,fma,f16c", KF_DOT_AVX2)
KF_QUANT_ROWS8(rows8_vnni512, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", KF_DOT_VNNI512)
KF_QUANT_ROWS8(rows8_avxvnni, "avx2,fma,f16c,avxvnni", KF_DOT_AVXVNNI)
#undef KF_QUANT_ROWS
#undef KF_QUANT_ROWS8
#endif

enum class Kernel { Scalar, Avx2, Vnni512, AvxVnni };

template <DType D, int R>
void rows(Kernel k, const uint8_t *w, size_t rb, const ActBlock *x, int64_t nb, float *out) {
  switch (k) {
#ifdef KF_QUANT_X86
  case Kernel::Vnni512: return rows_vnni512<D, R>(w, rb, x, nb, out);
  case Kernel::AvxVnni: return rows_avxvnni<D, R>(w, rb, x, nb, out);
  case Kernel::Avx2: return rows_avx2<D, R>(w, rb, x, nb, out);
#endif
  default: return rows_scalar<D, R>(w, rb, x, nb, out);
  }
}

// 8 weight rows against NT activation rows where a vector kernel runs; false: the caller takes rows
// 4 and 1 at a time.
template <DType D, int NT>
bool rows8(Kernel k, const uint8_t *w, size_t rb, const ActBlock *const *x, int64_t nb, float *const *out,
           const uint8_t *pf, int64_t pf_lines) {
  switch (k) {
#ifdef KF_QUANT_X86
  case Kernel::Vnni512: rows8_vnni512<D, NT>(w, rb, x, nb, out, pf, pf_lines); return true;
  case Kernel::AvxVnni: rows8_avxvnni<D, NT>(w, rb, x, nb, out, pf, pf_lines); return true;
  case Kernel::Avx2: rows8_avx2<D, NT>(w, rb, x, nb, out, pf, pf_lines); return true;
#endif
  default: return false;
  }
}

std::atomic<int> g_forced_kernel{-1};
std::atomic<bool> g_gemm_off{false};  // tests: the row kernels even where the GEMM would run
std::atomic<int> g_amx{-1};           // tests: 0 / 1 turn the AMX GEMM off / on; -1: as cpu_int8_amx()

// Whether matmul_rows16 takes the AMX GEMM for T activation rows of nb blocks (matmul_quant pads the
// activation blocks to whole tiles exactly then).
bool amx_gemm_applies(DType dt, int64_t T, int64_t nb) {
  const int a = g_amx.load(std::memory_order_relaxed);
  // Q6_K_R16 has no AMX kernel: the AVX512-VNNI group kernel runs it on AMX CPUs too.
  return dtype_rows16(dt) && dt != DType::Q6_K_R16 && T >= quant::kAmxMinTokens && (a < 0 ? cpu_int8_amx() : a == 1) &&
         quant::amx_panel_bytes(dt, nb) <= ThreadPool::scratch_bytes();
}

Kernel choose_kernel() {
  if (const int k = g_forced_kernel.load(std::memory_order_relaxed); k >= 0) return Kernel(k);
  const CpuPath p = cpu_path();
  const CpuFeatures &f = cpu_features();
  if (cpu_int8_vnni()) return f.avx512_vnni ? Kernel::Vnni512 : Kernel::AvxVnni;
  if (p != CpuPath::Scalar && f.avx2) return Kernel::Avx2;
  return Kernel::Scalar;
}

// Weight rows per task: a block stays in L1/L2 while every activation row passes over it.
constexpr int64_t kRowsPerTask = 16;

// y[t][o] += bias[o] for every t < T and o in [r0, r1) (rows `out` apart); nothing without a bias.
void add_bias_rows(float *y, int64_t T, int64_t out, const float *bias, int64_t r0, int64_t r1) {
  if (bias)
    for (int64_t t = 0; t < T; t++)
      for (int64_t o = r0; o < r1; o++) y[t * out + o] += bias[o];
}

// Rows [r0, r1) of y[T, out] over row-major weights W (rows `rb` bytes apart) by the row kernels:
// whole groups of 8 rows with the activation rows in pairs (then a last single one), the rest 4 and 1
// at a time. r0 a multiple of 8, so every row is summed by the same kernel however the rows are
// split; prefetching reads no further than row `stop`.
template <DType D>
void row_block(Kernel k, const uint8_t *W, size_t rb, const ActBlock *xq, int64_t nb, float *y, int64_t T, int64_t out,
               const float *bias, int64_t r0, int64_t r1, int64_t stop) {
  int64_t r8 = r0;
  for (; r8 + 8 <= r1; r8 += 8) {
    const uint8_t *w = W + size_t(r8) * rb;
    // Decode streams W once from DRAM: while one group of 8 rows is summed, ask for the group two
    // ahead, spread over the blocks (the hardware prefetcher alone keeps one core at a third of
    // its bandwidth over these 8 interleaved row streams). Prefill rereads W: no prefetch.
    const int64_t ahead = std::max<int64_t>(0, std::min<int64_t>(8, stop - (r8 + 16)));
    const uint8_t *next = w + 16 * rb;
    const int64_t next_lines = T <= 2 ? int64_t(size_t(ahead) * rb / 64) : 0;
    int64_t t = 0;
    bool vector = true;
    for (; vector && t + 2 <= T; t += 2) {
      const ActBlock *xs[2] = {xq + t * nb, xq + (t + 1) * nb};
      float *ys[2] = {y + t * out + r8, y + (t + 1) * out + r8};
      vector = rows8<D, 2>(k, w, rb, xs, nb, ys, next, next_lines);
    }
    if (vector && t < T) {
      const ActBlock *xs[1] = {xq + t * nb};
      float *ys[1] = {y + t * out + r8};
      vector = rows8<D, 1>(k, w, rb, xs, nb, ys, next, next_lines);
    }
    if (!vector) break;  // no vector kernel: every row from r8 on goes below, 4 and 1 at a time
  }
  for (int64_t t = 0; t < T; t++) {
    const ActBlock *x = xq + t * nb;
    float *yt = y + t * out;
    int64_t r = r8;
    for (; r + 4 <= r1; r += 4) rows<D, 4>(k, W + size_t(r) * rb, rb, x, nb, yt + r);
    for (; r < r1; r++) rows<D, 1>(k, W + size_t(r) * rb, rb, x, nb, yt + r);
  }
  add_bias_rows(y, T, out, bias, r0, r1);
}

}  // namespace

bool matmul_quant_rows_apply(DType dt, int64_t T, int64_t in, int64_t out) {
  const int64_t per = dtype_block_values(dt);
  if (!dtype_quantized(dt) || T < 1 || T > kQuantMatvecMaxT || in < 1 || in % per != 0) return false;
  return !dtype_rows16(dt) || (cpu_features().avx512_vnni && out % 16 == 0);
}

void matmul_quant_rows(const ActBlock *xq, int64_t nb, const void *Wv, DType dt, float *y, int64_t T, int64_t out,
                       const float *bias, int64_t r0, int64_t r1) {
  const uint8_t *W = static_cast<const uint8_t *>(Wv);
  const size_t rb = dtype_row_bytes(dt, nb * kQuantBlock);
  if (dtype_rows16(dt)) {  // 16-row groups, activation rows in pairs
    int64_t r = r0;
    if (T == 1 && cpu_decode_reads().two_streams) {
      // Two streams: group i of the run's first half beside group i of its second half.
      const int64_t half = (r1 - r0) / 32 * 16;
      for (; r < r0 + half; r += 16) {
        const uint8_t *gs[2] = {W + size_t(r) * rb, W + size_t(r + half) * rb};
        float *ys[2] = {y + r, y + r + half};
        quant::rows16_groups(dt, gs, 2, nb, &xq, 1, ys);
      }
      r += half;  // past the second half; an odd last group goes alone below
    }
    // Activation rows 4 at a time, then 2 and 1: each group's weights (in L1) are put together for
    // more rows at once (the k-quants' prefill; Q6_K's codes take a dozen instructions per 64 bytes).
    for (; r < r1; r += 16) {
      const uint8_t *g = W + size_t(r) * rb;
      for (int64_t t = 0; t < T;) {
        const int nt = T - t >= 4 ? 4 : int(std::min<int64_t>(2, T - t));
        const ActBlock *xs[4];
        float *ys[4];
        for (int j = 0; j < nt; j++) xs[j] = xq + (t + j) * nb, ys[j] = y + (t + j) * out + r;
        quant::rows16_groups(dt, &g, 1, nb, xs, nt, ys);
        t += nt;
      }
    }
    add_bias_rows(y, T, out, bias, r0, r1);
    return;
  }
  const Kernel k = choose_kernel();
  for (int64_t r = r0; r < r1; r += kRowsPerTask) {
    const int64_t e = std::min(r1, r + kRowsPerTask);
    if (dt == DType::Q8_0) row_block<DType::Q8_0>(k, W, rb, xq, nb, y, T, out, bias, r, e, r1);
    else row_block<DType::Q4_0>(k, W, rb, xq, nb, y, T, out, bias, r, e, r1);
  }
}

namespace {

template <DType D>
void matmul_quant_dt(ThreadPool &pool, const ActBlock *xq, int64_t nb, const void *Wv, float *y, int64_t T,
                     int64_t out, const float *bias) {
  const uint8_t *W = static_cast<const uint8_t *>(Wv);
  const size_t rb = dtype_row_bytes(D, nb * kQuantBlock);
  const Kernel k = choose_kernel();
  // Rows [0, r_gemm) go through the GEMM in panels of 32 (then one of 16); the rest, and everything
  // when the GEMM does not apply, through the row kernels in tasks of kRowsPerTask.
  int64_t r_gemm = 0, n_panels = 0;
  if (k == Kernel::Vnni512 && T >= quant::kGemmMinTokens && !g_gemm_off.load(std::memory_order_relaxed) &&
      quant::gemm_panel_bytes(nb) <= ThreadPool::scratch_bytes()) {
    r_gemm = out / 16 * 16;
    n_panels = out / 32 + (r_gemm % 32 != 0);
  }
  auto panel_task = [&](int64_t p, int thread) {
    const int64_t r0 = p * 32;
    const int C = r0 + 32 <= r_gemm ? 2 : 1;
    quant::gemm_panel(D, W + size_t(r0) * rb, rb, C, nb, xq, y, T, out, r0, static_cast<uint8_t *>(pool.scratch(thread)));
    add_bias_rows(y, T, out, bias, r0, r0 + 16 * C);
  };
  auto task = [&](int64_t blk, int) {
    const int64_t r0 = r_gemm + blk * kRowsPerTask;
    row_block<D>(k, W, rb, xq, nb, y, T, out, bias, r0, std::min(out, r0 + kRowsPerTask), out);
  };
  const int64_t n_tasks = (out - r_gemm + kRowsPerTask - 1) / kRowsPerTask;
  // Decode: one contiguous run of rows per thread, so the group each thread prefetches is its own
  // next one (with tasks handed out in turn, it was mostly the other thread's).
  if (n_panels == 0 && T <= kQuantMatvecMaxT) {
    pool.run_row_blocks(out, kRowsPerTask, size_t(out) * rb * size_t(T),
                        [&](int64_t r0, int64_t r1) { matmul_quant_rows(xq, nb, W, D, y, T, out, bias, r0, r1); });
    return;
  }
  auto any_task = [&](int64_t i, int thread) {
    if (i < n_panels) return panel_task(i, thread);
    task(i - n_panels, thread);
  };
  // Below ~64 KiB of weights, waking the pool costs more than it saves. The GEMM always takes a
  // region: its panels live in the pool's per-thread scratch, which only a region owns.
  if (n_panels == 0 && (pool.size() == 1 || size_t(out) * rb * size_t(T) < ThreadPool::kInlineBytes)) {
    for (int64_t i = 0; i < n_tasks; i++) task(i, 0);
    return;
  }
  pool.parallel_for(n_panels + n_tasks, any_task);
}

// Interleaved weights (Q8_0_R16, Q4_0_R16, Q4_K_R16, Q6_K_R16): the GEMM from kGemmMinTokens activation
// rows on (panels of two groups), else the group kernels over activation rows 4, 2 or 1 at a time, one
// contiguous run of groups per thread (decode streams W once, sequentially). A one-thread bench on one hot matrix had
// the pair kernel ahead of the GEMM at every T, but whole models say otherwise (134M q4_0, 2 threads,
// alternating builds: prefill 128 2,800-3,500 tok/s with the GEMM, 2,000-2,100 without).
void matmul_rows16(ThreadPool &pool, const ActBlock *xq, int64_t nb, DType dt, const uint8_t *W, float *y, int64_t T,
                   int64_t out, const float *bias) {
  if (!cpu_features().avx512_vnni || out % 16 != 0)
    raise(KF_ERR_INTERNAL, "cannot run matmul: interleaved %s weights need AVX512-VNNI and whole 16-row groups",
          dtype_name(dt));
  const size_t rb = dtype_row_bytes(dt, nb * kQuantBlock);
  const int64_t groups = out / 16;
  if (amx_gemm_applies(dt, T, nb)) {
    // One contiguous run of groups per thread, in steps of G groups (their panels in the thread's
    // scratch, each tile of activations read once for all G); while a step computes, the next step's
    // weights are fetched into L2 (with one step after another on a thread, reading them when their
    // panels are unpacked stalled the step: 134M q8_0 prefill 128 spent a quarter of its GEMM there).
    // Pieces claimed dynamically, stolen when a thread finished its run first, measured no better (134M
    // q4_0 prefill 128 0.98-1.00x) or worse (q8_0 0.90-0.97x).
    const int64_t fit = int64_t(ThreadPool::scratch_bytes() / quant::amx_panel_bytes(dt, nb));
    const int64_t G = std::max<int64_t>(1, std::min<int64_t>(4, fit));
    const int64_t parts = std::min<int64_t>(pool.size(), groups);
    ScratchLease lease(quant::amx_scale_bytes(T, nb));
    float *scales = lease.as<float>();
    quant::amx_act_scales(xq, T, nb, dt, scales);
    pool.parallel_for(parts, [&](int64_t part, int thread) {
      const int64_t lo = groups * part / parts, hi = groups * (part + 1) / parts;
      for (int64_t g0 = lo; g0 < hi; g0 += G) {
        const int64_t n = std::min(G, hi - g0), next = std::min(G, hi - g0 - n);
        quant::amx_gemm_groups(dt, W + size_t(16 * g0) * rb, 16 * rb, int(n), nb, xq, scales, y, T, out, 16 * g0,
                               static_cast<uint8_t *>(pool.scratch(thread)), W + size_t(16 * (g0 + n)) * rb,
                               size_t(16 * next) * rb);
        add_bias_rows(y, T, out, bias, 16 * g0, 16 * (g0 + n));
      }
    });
    return;
  }
  // The k-quants' per-sub-block scales (and Q4_K's mins) have no place in the GEMM's panels: their
  // prefill goes through the group kernels, 4 activation rows at a time.
  if (T >= quant::kGemmMinTokens && dtype_block_values(dt) == kQuantBlock &&
      quant::gemm_panel_bytes(nb) <= ThreadPool::scratch_bytes()) {
    pool.parallel_for((out / 16 + 1) / 2, [&](int64_t p, int thread) {
      const int64_t r0 = p * 32;
      const int C = r0 + 32 <= out ? 2 : 1;
      quant::gemm_panel(dt, W + size_t(r0) * rb, rb, C, nb, xq, y, T, out, r0,
                        static_cast<uint8_t *>(pool.scratch(thread)));
      add_bias_rows(y, T, out, bias, r0, r0 + 16 * C);
    });
    return;
  }
  pool.run_row_blocks(out, 16, size_t(out) * rb * size_t(T),
                      [&](int64_t r0, int64_t r1) { matmul_quant_rows(xq, nb, W, dt, y, T, out, bias, r0, r1); });
}

}  // namespace

bool quant_rows16_wanted() { return choose_kernel() == Kernel::Vnni512; }

bool quant_force_kernel(const char *name) {
  const CpuFeatures &f = cpu_features();
  if (!name) {
    g_forced_kernel = -1;
    g_gemm_off = false;
    g_amx = -1;
    return true;
  }
  const std::string n = name;
  Kernel k;
  if (n == "amx" && f.amx_int8) k = Kernel::Vnni512;
  else if (n == "scalar") k = Kernel::Scalar;
  else if (n == "vnni512-rows" && f.avx512_vnni) k = Kernel::Vnni512;
  else if (n == "maddubs" && f.avx2) k = Kernel::Avx2;
  else if (n == "vnni512" && f.avx512_vnni) k = Kernel::Vnni512;
  else if (n == "avxvnni" && f.avx_vnni) k = Kernel::AvxVnni;
  else return false;
#ifndef KF_QUANT_X86
  if (k != Kernel::Scalar) return false;
#endif
  g_forced_kernel = int(k);
  g_gemm_off = n == "vnni512-rows";
  g_amx = n == "amx" ? 1 : 0;
  return true;
}

namespace {

void check_quant_shape(DType dt, int64_t in) {
  const int64_t per = dtype_block_values(dt);
  if (!dtype_quantized(dt) || in % per != 0)
    raise(KF_ERR_INTERNAL, "cannot run matmul: %s weights need rows of a multiple of %lld values, not %lld",
          dtype_name(dt), (long long)per, (long long)in);
}

// The products p[0..n) over x [T, in] quantized once into a lent buffer (cpu_scratch.h), reused call
// after call. The AMX GEMM loads activation rows 16 at a time: zero blocks past T, to whole tiles.
void quant_products(ThreadPool &pool, const float *x, int64_t lda, int64_t T, int64_t in, const MatmulProduct *p,
                    int n) {
  const int64_t nb = in / kQuantBlock;
  bool amx = false;
  for (int i = 0; i < n; i++) {
    check_quant_shape(p[i].dt, in);
    amx |= amx_gemm_applies(p[i].dt, T, nb);
  }
  const int64_t padded = amx ? (T + quant::kAmxRows - 1) / quant::kAmxRows * quant::kAmxRows : T;
  ScratchLease lease(size_t(padded * nb) * sizeof(ActBlock));
  ActBlock *xb = lease.as<ActBlock>();
  if (padded > T) std::memset(static_cast<void *>(xb + T * nb), 0, size_t((padded - T) * nb) * sizeof(ActBlock));
  if (T * in >= (int64_t(1) << 16) && pool.size() > 1) {
    pool.parallel_for(T, [&](int64_t t, int) { quantize_act_row(x + t * lda, in, xb + t * nb); });
  } else {
    quantize_act_rows(x, lda, in, T, xb);
  }
  for (int i = 0; i < n; i++) {
    const DType dt = p[i].dt;
    const uint8_t *W = static_cast<const uint8_t *>(p[i].W);
    if (dtype_rows16(dt)) matmul_rows16(pool, xb, nb, dt, W, p[i].y, T, p[i].out, p[i].bias);
    else if (dt == DType::Q8_0) matmul_quant_dt<DType::Q8_0>(pool, xb, nb, W, p[i].y, T, p[i].out, p[i].bias);
    else matmul_quant_dt<DType::Q4_0>(pool, xb, nb, W, p[i].y, T, p[i].out, p[i].bias);
  }
}

}  // namespace

void matmul_quant(ThreadPool &pool, const float *x, int64_t lda, const void *W, DType dt, float *y, int64_t T,
                  int64_t in, int64_t out, const float *bias) {
  const MatmulProduct p{W, dt, y, out, bias};
  quant_products(pool, x, lda, T, in, &p, 1);
}

void matmul_quant_products(ThreadPool &pool, const float *x, int64_t T, int64_t in, const MatmulProduct *p, int n) {
  quant_products(pool, x, in, T, in, p, n);
}

}  // namespace kf

// cpu_attention_avx512.cpp — attention's tiles on 512-bit registers (cpu_ops.h: attn_*), chosen by
// cpu_path() at run time. Every output is summed in the order of the AVX2 kernels (scores: one FMA per
// head dimension, ascending, then the scale; values: one FMA per value row, ascending), so the path
// changes no bit; only more rows share each load.
#include <algorithm>
#include <type_traits>

#include "cpu_features.h"
#include "cpu_matvec.h"
#include "cpu_ops.h"
#include "cpu_transpose16.h"

#if defined(__x86_64__)

#define KF_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
// GCC 12's headers trip -Wmaybe-uninitialized (their _mm512_undefined_ps) outside -mavx512f builds.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace kf {

bool attn_avx512() { return int32_t(cpu_path()) >= int32_t(CpuPath::Avx512); }

// Rows [0, nr / 4 * 4) of attn_scores_tile: 4 rows x 32 keys per register tile (8 accumulators), per
// head dimension two key loads and four broadcasts. Keys past jb are computed from whatever kt holds
// there and not stored.
KF_AVX512 int32_t attn_scores_rows4_avx512(const float *q, int64_t q_stride, int32_t nr, const float *kt,
                                           int64_t kt_stride, int64_t jb, int64_t hd, float scale, float *s,
                                           int64_t s_stride) {
  if (kt_stride % 32 != 0) return 0;
  const __m512 vs = _mm512_set1_ps(scale);
  int32_t i = 0;
  for (; i + 4 <= nr; i += 4)
    for (int64_t j = 0; j < jb; j += 32) {
      __m512 acc[4][2];
      for (auto &r : acc) r[0] = r[1] = _mm512_setzero_ps();
      for (int64_t d = 0; d < hd; d++) {
        const __m512 k0 = _mm512_loadu_ps(kt + d * kt_stride + j), k1 = _mm512_loadu_ps(kt + d * kt_stride + j + 16);
        for (int r = 0; r < 4; r++) {
          const __m512 qd = _mm512_set1_ps(q[(i + r) * q_stride + d]);
          acc[r][0] = _mm512_fmadd_ps(qd, k0, acc[r][0]);
          acc[r][1] = _mm512_fmadd_ps(qd, k1, acc[r][1]);
        }
      }
      const int64_t n = std::min<int64_t>(32, jb - j);
      const __mmask16 m0 = n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1u);
      const __mmask16 m1 = n >= 32 ? __mmask16(0xffff) : n > 16 ? __mmask16((1u << (n - 16)) - 1u) : __mmask16(0);
      for (int r = 0; r < 4; r++) {
        _mm512_mask_storeu_ps(s + (i + r) * s_stride + j, m0, _mm512_mul_ps(acc[r][0], vs));
        _mm512_mask_storeu_ps(s + (i + r) * s_stride + j + 16, m1, _mm512_mul_ps(acc[r][1], vs));
      }
    }
  return i;
}

// out_r[d0 : d0 + 16 NV] += sum_{j < n} p_r[j] v_j[d0 : ...] for 4 rows sharing the value rows: per
// value row, NV loads feed 4 NV FMAs. NV is a template argument so the 4 x NV accumulators stay in
// registers (a run-time count made GCC keep them on the stack: a store and a load per FMA).
template <int NV>
KF_AVX512 static void values_rows4_cols(const float *const p[4], const float *v, int64_t v_stride, int64_t n,
                                        int64_t d0, float *const out[4]) {
  __m512 acc[4][NV];
  for (int r = 0; r < 4; r++)
    for (int c = 0; c < NV; c++) acc[r][c] = _mm512_loadu_ps(out[r] + d0 + 16 * c);
  for (int64_t j = 0; j < n; j++) {
    const float *vj = v + j * v_stride + d0;
    __m512 vv[NV];
    for (int c = 0; c < NV; c++) vv[c] = _mm512_loadu_ps(vj + 16 * c);
    for (int r = 0; r < 4; r++) {
      const __m512 pj = _mm512_set1_ps(p[r][j]);
      for (int c = 0; c < NV; c++) acc[r][c] = _mm512_fmadd_ps(pj, vv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < 4; r++)
    for (int c = 0; c < NV; c++) _mm512_storeu_ps(out[r] + d0 + 16 * c, acc[r][c]);
}

// out_r[:hd] += sum_{j < n} p_r[j] v_j for 4 rows sharing the value rows, 64 output values per row at a
// time. hd a multiple of 16.
KF_AVX512 void attn_values_rows4_avx512(const float *const p[4], const float *v, int64_t v_stride, int64_t n,
                                        int64_t hd, float *const out[4]) {
  int64_t d0 = 0;
  for (; d0 + 64 <= hd; d0 += 64) values_rows4_cols<4>(p, v, v_stride, n, d0, out);
  switch ((hd - d0) / 16) {
    case 3: return values_rows4_cols<3>(p, v, v_stride, n, d0, out);
    case 2: return values_rows4_cols<2>(p, v, v_stride, n, d0, out);
    case 1: return values_rows4_cols<1>(p, v, v_stride, n, d0, out);
    default: return;
  }
}

// kt[d][jj] = k[jj][d] (k rows k_stride apart) for jj < jb, d < hd, 16 x 16 at a time; columns of kt
// from jb to the next multiple of 16 get zeros.
KF_AVX512 void transpose_keys_avx512(const float *k, int64_t k_stride, int64_t jb, int64_t hd, float *kt,
                                     int64_t kt_stride) {
  for (int64_t j = 0; j < jb; j += 16)
    for (int64_t d = 0; d < hd; d += 16) {
      const int nd = int(std::min<int64_t>(16, hd - d));
      const __mmask16 md = nd >= 16 ? __mmask16(0xffff) : __mmask16((1u << nd) - 1u);
      __m512 r[16];
      for (int i = 0; i < 16; i++)
        r[i] = j + i < jb ? _mm512_maskz_loadu_ps(md, k + (j + i) * k_stride + d) : _mm512_setzero_ps();
      transpose16(r);
      for (int i = 0; i < nd; i++) _mm512_storeu_ps(kt + (d + i) * kt_stride + j, r[i]);
    }
}

// attn_rows_alone's chunk (cpu_attention_decode.cpp) on 512-bit registers, NV = hd / 16: a
// position's keys (then values) of each KV head loaded once for the group's query heads. The bits of
// its dot_f32 / axpy_f32 loops, as the tiles above keep the AVX2 kernels' bits. A chunk's keys are
// one contiguous stream, prefetched as decode's weight kernels prefetch theirs (the
// hardware prefetcher stops at every 4 KiB page, 1.3 positions of the 134M's cache): 134M bf16 decode
// after 1920 positions +6% / +12% (bench/decode_ab.ts --context 1920, both orders), 1.1B q4_0 +-1%
// (its GQA cache is 1/7 of a step's bytes there); the L1 near prefetch on top lost 11%.
// s[h * nj + jj] = scale * q[h] · k[j0 + jj][h / group]
template <int NV, bool L2>
KF_AVX512 static void chunk_scores(const float *q, const float *k, int64_t kv_dim, int64_t j0, int64_t nj, int64_t nh,
                                   int64_t group, float scale, float *s) {
  constexpr int64_t hd = 16 * NV;
  for (int64_t jj = 0; jj < nj; jj++) {
    const float *kj = k + (j0 + jj) * kv_dim;
    for (int64_t kvh = 0; kvh < nh / group; kvh++) {
      for (int c = 0; c < NV; c++) decode_prefetch<L2>(kj + kvh * hd + 16 * c);
      __m512 kv[NV];
      for (int c = 0; c < NV; c++) kv[c] = _mm512_loadu_ps(kj + kvh * hd + 16 * c);
      for (int64_t h = kvh * group; h < (kvh + 1) * group; h++) {
        // dot_f32's sums exactly: its two 8-lane accumulators are this one's halves, then its hsum.
        __m512 acc = _mm512_setzero_ps();
        for (int c = 0; c < NV; c++) acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + h * hd + 16 * c), kv[c], acc);
        const __m256 v8 = _mm256_add_ps(_mm512_castps512_ps256(acc), _mm512_extractf32x8_ps(acc, 1));
        __m128 v4 = _mm_add_ps(_mm256_castps256_ps128(v8), _mm256_extractf128_ps(v8, 1));
        v4 = _mm_add_ps(v4, _mm_movehl_ps(v4, v4));
        v4 = _mm_add_ss(v4, _mm_movehdup_ps(v4));
        s[h * nj + jj] = _mm_cvtss_f32(v4) * scale;
      }
    }
  }
}

// o[h] += sum_jj p[h * nj + jj] v[j0 + jj][h / group]  (o rows hd + 2 apart, at o + 2), in blocks of 16
// positions (re-read from L1 by each pass of heads: 16 KiB for the 1.1B's 4 KV heads, all of L1 for the
// 134M's 12, which measured 2% slower than before there), H = 16 / NV query heads of a
// KV head at a time with their outputs in registers: each value row loaded once for the H heads, one
// FMA per (head, 16 dimensions) and position, ascending, as axpy_f32's (the same bits). Each row one
// load and H x NV independent FMAs: the FMA pipes, not their latency nor a store per FMA (the kernel
// before stored each head's output per position: 1.7 ns per head and position on the Zen 5 VM, hot).
template <int NV, bool L2>
KF_AVX512 static void chunk_values(const float *p, const float *v, int64_t kv_dim, int64_t j0, int64_t nj, int64_t nh,
                                   int64_t group, float *o, int64_t o_stride) {
  constexpr int64_t hd = 16 * NV, kBlock = 16;
  constexpr int H = 16 / NV;  // 4 (hd 64) or 2 (hd 128): 16 accumulators
  for (int64_t b = 0; b < nj; b += kBlock) {
    const int64_t n = std::min(kBlock, nj - b);
    const float *vb = v + (j0 + b) * kv_dim;
    // the next block's lines, into L2 or L1 (the hardware prefetcher stops at each 4 KiB page)
    const float *next = vb + kBlock * kv_dim;
    const int64_t next_lines = std::min(kBlock, nj - b - n) * kv_dim / 16;
    for (int64_t l = 0; l < next_lines; l++)
      _mm_prefetch(reinterpret_cast<const char *>(next + 16 * l), L2 ? _MM_HINT_T1 : _MM_HINT_T0);
    for (int64_t h0 = 0; h0 < nh;) {
      const int64_t kvh = h0 / group, run = std::min<int64_t>(H, (kvh + 1) * group - h0);  // heads of one KV head
      const float *vh = vb + kvh * hd;
      __m512 acc[H][NV];
      for (int e = 0; e < H; e++)
        for (int c = 0; c < NV; c++) acc[e][c] = e < run ? _mm512_loadu_ps(o + (h0 + e) * o_stride + 16 * c) : _mm512_setzero_ps();
      for (int64_t jj = 0; jj < n; jj++) {
        __m512 row[NV];
        for (int c = 0; c < NV; c++) row[c] = _mm512_loadu_ps(vh + jj * kv_dim + 16 * c);
        for (int e = 0; e < H; e++) {
          if (e >= run) break;
          const __m512 w = _mm512_set1_ps(p[(h0 + e) * nj + b + jj]);
          for (int c = 0; c < NV; c++) acc[e][c] = _mm512_fmadd_ps(w, row[c], acc[e][c]);
        }
      }
      for (int e = 0; e < run; e++)
        for (int c = 0; c < NV; c++) _mm512_storeu_ps(o + (h0 + e) * o_stride + 16 * c, acc[e][c]);
      h0 += run;
    }
  }
}

// f(std::integral_constant<int, hd / 16>) for the head sizes the chunk kernels are built for.
template <class F>
static bool with_registers_per_row(int64_t hd, F &&f) {
  if (hd == 64) return f(std::integral_constant<int, 4>{}), true;
  if (hd == 128) return f(std::integral_constant<int, 8>{}), true;
  return false;
}

bool attn_chunk_scores_avx512(const float *q, const float *k, int64_t kv_dim, int64_t j0, int64_t nj, int64_t nh,
                              int64_t group, int64_t hd, float scale, float *s) {
  return with_registers_per_row(hd, [&](auto nv) {
    with_decode_prefetch([&](auto l2) { chunk_scores<nv(), l2()>(q, k, kv_dim, j0, nj, nh, group, scale, s); });
  });
}

bool attn_chunk_values_avx512(const float *p, const float *v, int64_t kv_dim, int64_t j0, int64_t nj, int64_t nh,
                              int64_t group, int64_t hd, float *o, int64_t o_stride) {
  return with_registers_per_row(hd, [&](auto nv) {
    with_decode_prefetch([&](auto l2) { chunk_values<nv(), l2()>(p, v, kv_dim, j0, nj, nh, group, o, o_stride); });
  });
}

}  // namespace kf

#else

namespace kf {
bool attn_avx512() { return false; }
int32_t attn_scores_rows4_avx512(const float *, int64_t, int32_t, const float *, int64_t, int64_t, int64_t, float,
                                 float *, int64_t) {
  return 0;
}
void attn_values_rows4_avx512(const float *const[4], const float *, int64_t, int64_t, int64_t, float *const[4]) {}
void transpose_keys_avx512(const float *, int64_t, int64_t, int64_t, float *, int64_t) {}
bool attn_chunk_scores_avx512(const float *, const float *, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float,
                              float *) {
  return false;
}
bool attn_chunk_values_avx512(const float *, const float *, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                              float *, int64_t) {
  return false;
}
}  // namespace kf

#endif

// cpu_quant_act.cpp — activation rows as int8 blocks (cpu_quant.h: quantize_act_row(s)), what every
// matmul on quantized weights multiplies: per block of 32 values, d = max |x| / 127 and q = round(x / d)
// (to nearest even), with the int sum of q (Q4_0's offset of 8 and Q4_K's mins need it). The AVX-512
// form writes the scalar loop's bytes.
#include "cpu_features.h"
#include "cpu_quant.h"
#include "cpu_quant_vnni512.h"
#include "cpu_transpose16.h"

#include <algorithm>
#include <cmath>

#if defined(__x86_64__)
#include <immintrin.h>
#define KF_QUANT_X86 1
#endif

namespace kf {

using quant::ActBlock;

namespace {

void quantize_act_row_scalar(const float *x, int64_t n, ActBlock *y) {
  for (int64_t b = 0; b < n / kQuantBlock; b++) {
    const float *v = x + b * kQuantBlock;
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) amax = std::max(amax, std::fabs(v[j]));
    const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    int32_t s = 0;
    for (int j = 0; j < 32; j++) {
      y[b].qs[j] = int8_t(std::nearbyintf(v[j] * id));
      s += y[b].qs[j];
      if (j == 15) y[b].sum16 = s;
    }
    y[b].d = d;
    y[b].sum = s;
  }
}

#ifdef KF_QUANT_X86
// The same blocks 16 lanes at a time, the same bits: a NaN lane leaves the max as the scalar loop's
// std::max does (vmaxps returns its second operand), and vcvtps2dq rounds to nearest even as
// nearbyintf does in the default rounding mode. Prefill quantizes T x in values per matmul.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12's _mm512_undefined_* in its own headers
#define KF_Q512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

// One block: its max |v| (NaN lanes skipped), as the scalar loop's std::max leaves it.
KF_Q512 inline __m512 block_abs_max(const float *v) {
  const __m512 sign = _mm512_set1_ps(-0.0f);
  const __m512 v0 = _mm512_loadu_ps(v), v1 = _mm512_loadu_ps(v + 16);
  return _mm512_max_ps(_mm512_andnot_ps(sign, v1), _mm512_max_ps(_mm512_andnot_ps(sign, v0), _mm512_setzero_ps()));
}

// Writes block y's 32 values at scale id; *first = the first 16 (int32 lanes), returns the 16
// pairwise sums of all 32.
KF_Q512 inline __m512i quantize_block(const float *v, float id, ActBlock *y, __m512i *first) {
  const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(v), _mm512_set1_ps(id)));
  const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(v + 16), _mm512_set1_ps(id)));
  _mm_storeu_si128(reinterpret_cast<__m128i *>(y->qs), _mm512_cvtepi32_epi8(q0));
  _mm_storeu_si128(reinterpret_cast<__m128i *>(y->qs + 16), _mm512_cvtepi32_epi8(q1));
  *first = q0;
  return _mm512_add_epi32(q0, q1);
}

KF_Q512 void quantize_act_row_avx512(const float *x, int64_t n, ActBlock *y) {
  const int64_t nb = n / kQuantBlock;
  int64_t b = 0;
  // 16 blocks at a time: their maxima and sums reduced together, the scales divided as one vector.
  for (; b + 16 <= nb; b += 16) {
    const float *xb = x + 32 * b;
    __m512 m[16];
    for (int i = 0; i < 16; i++) m[i] = block_abs_max(xb + 32 * i);
    const __m512 d = _mm512_div_ps(reduce16(m, [](__m512 u, __m512 w) KF_Q512 { return _mm512_max_ps(u, w); }),
                                   _mm512_set1_ps(127.0f));
    alignas(64) float dv[16], idv[16];
    _mm512_store_ps(dv, d);
    _mm512_store_ps(idv, _mm512_maskz_div_ps(_mm512_cmp_ps_mask(d, _mm512_setzero_ps(), _CMP_NEQ_UQ),
                                             _mm512_set1_ps(1.0f), d));
    __m512 sums[16], firsts[16];
    for (int i = 0; i < 16; i++) {
      __m512i f;
      sums[i] = _mm512_castsi512_ps(quantize_block(xb + 32 * i, idv[i], y + b + i, &f));
      firsts[i] = _mm512_castsi512_ps(f);
    }
    const auto add = [](__m512 u, __m512 w) KF_Q512 {
      return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(u), _mm512_castps_si512(w)));
    };
    alignas(64) int32_t sv[16], fv[16];
    _mm512_store_si512(sv, _mm512_castps_si512(reduce16(sums, add)));
    _mm512_store_si512(fv, _mm512_castps_si512(reduce16(firsts, add)));
    for (int i = 0; i < 16; i++) y[b + i].d = dv[i], y[b + i].sum = sv[i], y[b + i].sum16 = fv[i];
  }
  for (; b < nb; b++) {
    const float amax = _mm512_reduce_max_ps(block_abs_max(x + 32 * b));
    const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = d;
    __m512i f;
    y[b].sum = _mm512_reduce_add_epi32(quantize_block(x + 32 * b, id, y + b, &f));
    y[b].sum16 = _mm512_reduce_add_epi32(f);
  }
}
#pragma GCC diagnostic pop
#endif

}  // namespace

void quantize_act_row(const float *x, int64_t n, ActBlock *y) {
#ifdef KF_QUANT_X86
  if (int32_t(cpu_path()) >= int32_t(CpuPath::Avx512)) return quantize_act_row_avx512(x, n, y);
#endif
  quantize_act_row_scalar(x, n, y);
}

void quantize_act_rows(const float *x, int64_t lda, int64_t in, int64_t T, ActBlock *xq) {
  for (int64_t t = 0; t < T; t++) quantize_act_row(x + t * lda, in, xq + t * (in / kQuantBlock));
}

}  // namespace kf

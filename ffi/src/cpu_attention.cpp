// cpu_attention.cpp — the CPU attention tiles (cpu_ops.h): one block of query rows against one tile of
// keys (scores) or values (weighted sums).
#include "cpu_ops.h"

#include <algorithm>

#include "cpu_simd.h"

namespace kf {

// ---------------------------------------------------------------------------------------------
// Attention tiles

void attn_scores_tile(const float *q, int64_t q_stride, int32_t nr, const float *kt, int64_t kt_stride, int64_t jb,
                      int64_t hd, float scale, float *s, int64_t s_stride) {
  int32_t i = attn_avx512() ? attn_scores_rows4_avx512(q, q_stride, nr, kt, kt_stride, jb, hd, scale, s, s_stride) : 0;
#ifdef KF_AVX2
  // 4 rows x 16 keys of accumulators: per d, two key loads and four broadcasts feed eight FMAs.
  const __m256 vs = _mm256_set1_ps(scale);
  for (; i + 4 <= nr; i += 4) {
    for (int64_t j = 0; j < jb; j += 16) {
      __m256 acc[4][2];
      for (auto &r : acc) r[0] = r[1] = _mm256_setzero_ps();
      for (int64_t d = 0; d < hd; d++) {
        const __m256 k0 = _mm256_loadu_ps(kt + d * kt_stride + j), k1 = _mm256_loadu_ps(kt + d * kt_stride + j + 8);
        for (int r = 0; r < 4; r++) {
          const __m256 qd = _mm256_broadcast_ss(q + (i + r) * q_stride + d);
          acc[r][0] = _mm256_fmadd_ps(qd, k0, acc[r][0]);
          acc[r][1] = _mm256_fmadd_ps(qd, k1, acc[r][1]);
        }
      }
      const int64_t n = std::min<int64_t>(16, jb - j);
      for (int r = 0; r < 4; r++) {
        float tmp[16];
        _mm256_storeu_ps(tmp, _mm256_mul_ps(acc[r][0], vs));
        _mm256_storeu_ps(tmp + 8, _mm256_mul_ps(acc[r][1], vs));
        std::memcpy(s + (i + r) * s_stride + j, tmp, size_t(n) * sizeof(float));
      }
    }
  }
#endif
  for (; i < nr; i++) {
    float *si = s + i * s_stride;
    std::fill(si, si + jb, 0.0f);
    for (int64_t d = 0; d < hd; d++) {
      const float qd = q[i * q_stride + d];
      const float *ktd = kt + d * kt_stride;
      for (int64_t jj = 0; jj < jb; jj++) si[jj] += qd * ktd[jj];
    }
    for (int64_t jj = 0; jj < jb; jj++) si[jj] *= scale;
  }
}

void attn_values_row(const float *p, const float *v, int64_t v_stride, int64_t n, int64_t hd, float *out) {
  int64_t d0 = 0;
#ifdef KF_AVX2
  // 32 output values stay in registers across all n values rows.
  for (; d0 + 32 <= hd; d0 += 32) {
    __m256 a0 = _mm256_loadu_ps(out + d0), a1 = _mm256_loadu_ps(out + d0 + 8);
    __m256 a2 = _mm256_loadu_ps(out + d0 + 16), a3 = _mm256_loadu_ps(out + d0 + 24);
    for (int64_t j = 0; j < n; j++) {
      const float *vj = v + j * v_stride + d0;
      const __m256 pj = _mm256_broadcast_ss(p + j);
      a0 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj), a0);
      a1 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 8), a1);
      a2 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 16), a2);
      a3 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 24), a3);
    }
    _mm256_storeu_ps(out + d0, a0);
    _mm256_storeu_ps(out + d0 + 8, a1);
    _mm256_storeu_ps(out + d0 + 16, a2);
    _mm256_storeu_ps(out + d0 + 24, a3);
  }
#endif
  for (int64_t j = 0; j < n; j++)
    for (int64_t d = d0; d < hd; d++) out[d] += p[j] * v[j * v_stride + d];
}

void attn_values_rows(const float *const *p, int32_t nr, const float *v, int64_t v_stride, int64_t n, int64_t hd,
                      float *const *out) {
  int32_t i = 0;
  if (hd % 32 == 0 && attn_avx512())  // hd % 32: attn_values_row has no scalar tail, so the same bits
    for (; i + 4 <= nr; i += 4) attn_values_rows4_avx512(p + i, v, v_stride, n, hd, out + i);
  for (; i < nr; i++) attn_values_row(p[i], v, v_stride, n, hd, out[i]);
}

void attn_key_tile(const float *k, int64_t k_stride, int64_t jb, int64_t hd, float *kt, int64_t kt_stride) {
  if (attn_avx512() && kt_stride % 16 == 0 && (jb + 15) / 16 * 16 <= kt_stride)
    return transpose_keys_avx512(k, k_stride, jb, hd, kt, kt_stride);
  for (int64_t jj = 0; jj < jb; jj++)
    for (int64_t d = 0; d < hd; d++) kt[d * kt_stride + jj] = k[jj * k_stride + d];
}

}  // namespace kf

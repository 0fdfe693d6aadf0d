// cpu_transpose16.h — a 16x16 transpose of 32-bit lanes in zmm registers, shared by the GEMM's panel
// packing (cpu_matmul_avx512.cpp) and attention's key tiles (cpu_attention_avx512.cpp), and its reducing
// form (activation blocks' maxima and sums, cpu_quant.cpp; short rows' dot products, decode).
#pragma once

#if defined(__x86_64__)
#include <immintrin.h>

namespace kf {

// r[i][j] <- r[j][i] for a 16x16 block of 32-bit lanes.
__attribute__((target("avx512f"))) inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; i++) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; i++) {
    r[4 * i + 0] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], 0x44);
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], 0xee);
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xee);
  }
  for (int h = 0; h < 2; h++)
    for (int i = 0; i < 4; i++) {
      t[8 * h + i] = _mm512_shuffle_f32x4(r[8 * h + i], r[8 * h + 4 + i], 0x88);
      t[8 * h + 4 + i] = _mm512_shuffle_f32x4(r[8 * h + i], r[8 * h + 4 + i], 0xdd);
    }
  for (int i = 0; i < 8; i++) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88);
    r[8 + i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0xdd);
  }
}

// Lane b := op over the 16 lanes of v[b], for 16 vectors at once: a transpose that combines as it goes,
// 15 steps of two shuffles and one op where 16 separate reductions take 4 x 16. Every lane is reduced
// by the same tree (lane j with j + 8, then + 4, + 2, + 1), so a float sum does not depend on which
// lane a vector's total lands in.
template <class Op>
__attribute__((target("avx512f"))) inline __m512 reduce16(__m512 v[16], Op op) {
  __m512 c[8], e[4], f[2];
  for (int i = 0; i < 8; i++)  // quarters 0-1: v[2i]'s halves combined; 2-3: v[2i+1]'s
    c[i] = op(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44), _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
  for (int i = 0; i < 4; i++)  // quarter q: v[4i + q], 4 lanes
    e[i] = op(_mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0x88), _mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0xDD));
  for (int i = 0; i < 2; i++)  // quarter q: lanes 0-1 v[8i + q], lanes 2-3 v[8i + 4 + q]
    f[i] = op(_mm512_shuffle_ps(e[2 * i], e[2 * i + 1], 0x44), _mm512_shuffle_ps(e[2 * i], e[2 * i + 1], 0xEE));
  // lane 4q + k: v[4k + q]; put lane b at b
  const __m512 g = op(_mm512_shuffle_ps(f[0], f[1], 0x88), _mm512_shuffle_ps(f[0], f[1], 0xDD));
  return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), g);
}

}  // namespace kf

#endif

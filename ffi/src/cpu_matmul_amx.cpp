// cpu_matmul_amx.cpp — the AMX-BF16 tile kernel (cpu_matmul_amx.h).
//
// Per 16-pair step of the panel: A tiles = 2 x 16 activation rows x 32 bf16, B tiles = the panel's
// 16 pair rows x 16 columns, twice (columns 0-15, 16-31); four tdpbf16ps into four C tiles
// (rows 0-15 / 16-31 x columns 0-15 / 16-31). After the last step the C tiles are stored and added
// to c (or the bias) with the same masked stores as the AVX-512 kernels.
#include "cpu_matmul_amx.h"

#include "common.h"

#if defined(__x86_64__)
#include <immintrin.h>

namespace kf {

namespace {

#define KF_AMXBF16 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,amx-tile,amx-bf16")))

// ldtilecfg's 64 bytes, palette 1: tmm0-3 C (16 x 16 f32), tmm4-5 A (16 rows x 32 bf16), tmm6-7 B
// (16 pair rows x 16 columns).
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};
static_assert(sizeof(TileConfig) == 64, "ldtilecfg reads 64 bytes");

}  // namespace

KF_AMXBF16 void amx_bf16_begin() {
  static const TileConfig cfg;
  _tile_loadconfig(&cfg);
}

KF_AMXBF16 void amx_end() { _tile_release(); }

KF_AMXBF16 void amx_bf16_tile(int64_t steps, const uint16_t *a, int64_t lda, const uint32_t *bp, float *c, int64_t ldc,
                              int mr, bool first, const float *bias, uint16_t m0, uint16_t m1) {
  const long sa = long(lda * 2), sb = 32 * 4;  // bytes between A rows; between panel pair rows
  const uint16_t *a1 = a + 16 * lda;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t s = 0; s < steps; s++) {
    const uint32_t *b = bp + s * 16 * 32;
    _tile_loadd(6, b, sb);
    _tile_loadd(7, b + 16, sb);
    _tile_loadd(4, a + 32 * s, sa);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    if (mr > 16) {
      _tile_loadd(5, a1 + 32 * s, sa);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  alignas(64) float out[4][16][16];
  _tile_stored(0, out[0], 64);
  _tile_stored(1, out[1], 64);
  if (mr > 16) {
    _tile_stored(2, out[2], 64);
    _tile_stored(3, out[3], 64);
  }
  for (int r = 0; r < mr; r++) {
    float *cr = c + r * ldc;
    const float *add = first ? bias : cr;
    __m512 v0 = _mm512_load_ps(out[r < 16 ? 0 : 2][r % 16]), v1 = _mm512_load_ps(out[r < 16 ? 1 : 3][r % 16]);
    if (add) {
      v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, add));
      v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, add + 16));
    }
    _mm512_mask_storeu_ps(cr, m0, v0);
    _mm512_mask_storeu_ps(cr + 16, m1, v1);
  }
}

}  // namespace kf

#else  // not x86-64: never chosen (cpu_bf16_amx() is false there)

namespace kf {
void amx_bf16_begin() {}
void amx_end() {}
void amx_bf16_tile(int64_t, const uint16_t *, int64_t, const uint32_t *, float *, int64_t, int, bool, const float *,
                   uint16_t, uint16_t) {}
}  // namespace kf

#endif

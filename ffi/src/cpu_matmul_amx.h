// cpu_matmul_amx.h — the AMX-BF16 tile kernel of the bf16 GEMM (cpu_matmul_avx512.cpp), run where
// cpu_bf16_amx() holds: one tdpbf16ps multiplies 16 activation rows by 16 pairs of bf16 of 16 weight
// columns, accumulating in f32 inside the tile for a whole panel (no per-step scaling, unlike int8).
#pragma once

#include <cstdint>

namespace kf {

// Load this thread's tile configuration for amx_bf16_tile / release it (the OS then saves no tile state).
void amx_bf16_begin();
void amx_end();

// c[r][0:32) for r < mr (rows ldc apart; columns masked by m0, m1 << 16) = (first ? bias (or 0) : c) +
// a[r] · panel, where a holds 32 rows of bf16 (lda elements apart) of which rows past mr are read
// (their results dropped), each 32 * steps values long; panel: [16 * steps][32] pairs of bf16 as the
// GEMM packs them (zero pairs past K, so a's padding beyond K must be finite: the GEMM writes zeros).
void amx_bf16_tile(int64_t steps, const uint16_t *a, int64_t lda, const uint32_t *bp, float *c, int64_t ldc, int mr,
                   bool first, const float *bias, uint16_t m0, uint16_t m1);

}  // namespace kf

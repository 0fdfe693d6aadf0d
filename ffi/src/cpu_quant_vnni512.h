// cpu_quant_vnni512.h — inside the quantized matmul (cpu_quant.cpp): the activation blocks, and the
// AVX512-VNNI kernels that read 16 weight rows per instruction: the prefill GEMM over repacked panels
// (cpu_quant_vnni512.cpp) and the decode kernels over the 16-row interleaved layouts
// (cpu_quant_rows16.cpp).
#pragma once

#include <cstddef>
#include <cstdint>

#include "cpu_quant.h"

// The target of those kernels' functions (x86-64 builds; each file guards its kernels).
#define KF_VNNI512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))

namespace kf::quant {

// One activation block: 32 int8 with an f32 scale (not rounded to f16: a little closer to x than
// ggml's q8_0 activations, same int math), the sum of the 32 values, and that of the first 16 (Q6_K's
// sub-blocks are 16 values: its kernel would otherwise sum them again for every 16 weight rows).
struct ActBlock {
  float d;
  int32_t sum;
  int8_t qs[32];
  int32_t sum16;
};

// Q4_K_R16, per group and 256-value block (kQ4kGroupBlock bytes): f16 d[16], f16 dmin[16], u8 sc[8][16]
// and u8 m[8][16] (sub-block j's scale / min of row r at 16j + r), then the values as 32 chunks of
// 64 bytes: chunk 8i + k holds row r's qs[32i + 4k, +4) at 4r (low nibbles: sub-block 2i, high: 2i + 1).
constexpr size_t kQ4kScales = 64, kQ4kMins = 192, kQ4kValues = 320, kQ4kGroupBlock = 320 + 32 * 64;
static_assert(kQ4kGroupBlock == 16 * 148, "Q4_K_R16 rows are 148 bytes per 256 values");
// Q6_K_R16, per group and 256-value block (kQ6kGroupBlock bytes): f16 d[16], i8 sc[16][16] (sub-block
// j's scale of row r at 16j + r), then the codes' low 4 bits as Q4_K_R16's values are (chunk 8i + k:
// row r's codes 64i + 4k + e in the low nibble, 64i + 32 + 4k + e in the high one, at 4r + e), then
// their high 2 bits as 16 chunks of 64 bytes: chunk 4i + c, byte 4r + e holds those two codes' bits
// of low-bit chunk 8i + 2c (bits 0-1 and 2-3), then of chunk 8i + 2c + 1 (bits 4-5 and 6-7).
constexpr size_t kQ6kScales = 32, kQ6kLow = 288, kQ6kHigh = 288 + 32 * 64, kQ6kGroupBlock = kQ6kHigh + 16 * 64;
static_assert(kQ6kGroupBlock == 16 * 210, "Q6_K_R16 rows are 210 bytes per 256 values, as Q6_K's");

// The GEMM runs from this many activation rows on (below, the row kernels are as fast).
constexpr int64_t kGemmMinTokens = 3;
// Scratch one GEMM task packs its panel of up to 32 rows into, for rows of nb blocks.
size_t gemm_panel_bytes(int64_t nb);

// y[t][r0, r0 + 16C) for every t < T (rows `out` floats apart), C = 1 or 2: packs the 16C weight rows
// into `panel` (gemm_panel_bytes) and runs the register tiles over it. `w` is the first of the rows:
// row-major rows `rb` bytes apart (Q8_0, Q4_0), or C consecutive 16-row groups (Q8_0_R16, Q4_0_R16).
void gemm_panel(DType dt, const uint8_t *w, size_t rb, int C, int64_t nb, const ActBlock *xq, float *y, int64_t T,
                int64_t out, int64_t r0, uint8_t *panel);

// 16-row groups of Q8_0_R16 / Q4_0_R16 / Q4_K_R16 / Q6_K_R16 weights (nb blocks of 32 values): ng = 1 group against
// nt = 1, 2 or 4 activation rows, or ng = 2 groups (two streams read in lockstep) against nt = 1:
// y[g * nt + j][0, 16) = group g's 16 outputs for x[j]. The bits do not depend on ng or nt; Q8_0 /
// Q4_0: the same bits as the row kernels and the GEMM.
void rows16_groups(DType dt, const uint8_t *const *groups, int ng, int64_t nb, const ActBlock *const *x, int nt,
                   float *const *y);

}  // namespace kf::quant

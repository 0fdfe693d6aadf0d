// cpu_quant_amx.h — the prefill GEMM on 16-row interleaved quantized weights (Q8_0_R16, Q4_0_R16,
// Q4_K_R16) through AMX-INT8 tiles (cpu_quant_amx.cpp), where cpu_int8_amx() says the CPU and OS have
// them. One tdpbssd multiplies 16 activation rows by one 32-value block of 16 weight rows; the exact
// int dots then get the block's scales in f32, block by block, as the VNNI kernels do, so every
// output has the bits of the row kernels and the VNNI GEMM.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cpu_quant_vnni512.h"

namespace kf::quant {

// The AMX GEMM runs from this many activation rows on (a tile holds 16; below 8 the VNNI GEMM,
// which pays nothing for absent rows, is as fast).
constexpr int64_t kAmxMinTokens = 8;
// Activation rows the caller pads the activation blocks to (zero blocks past T): tiles load 16.
constexpr int64_t kAmxRows = 16;

// Scratch bytes one group's unpacked panel takes, for rows of nb blocks of 32 values; bytes of the
// activation scales of T rows (amx_act_scales).
size_t amx_panel_bytes(DType dt, int64_t nb);
size_t amx_scale_bytes(int64_t T, int64_t nb);

// The activation scales as the GEMM reads them, once per matmul: per token tile of 16 rows, dx[16i + r]
// = row r's block i scale, then (Q4_K_R16) dm[16i + r] = that scale times the block's sum of values.
// xq as amx_gemm_groups takes it; scales: amx_scale_bytes(T, nb).
void amx_act_scales(const ActBlock *xq, int64_t T, int64_t nb, DType dt, float *scales);

// y[t][r0, r0 + 16G) for every t < T (rows `out` floats apart): G consecutive 16-row groups of dt
// (Q8_0_R16, Q4_0_R16, Q4_K_R16) starting at `groups`, `group_bytes` apart, nb blocks of 32 values per
// row. xq holds T activation rows of nb blocks, padded with zero blocks to a multiple of kAmxRows rows,
// `scales` their amx_act_scales. `scratch` holds G panels (amx_panel_bytes each). Runs on the calling
// thread; sets and releases its tile configuration. While it computes, the `fetch_bytes` at `fetch`
// (the caller's next weights; 0 for none) are prefetched into L2, a few lines per block.
void amx_gemm_groups(DType dt, const uint8_t *groups, size_t group_bytes, int G, int64_t nb, const ActBlock *xq,
                     const float *scales, float *y, int64_t T, int64_t out, int64_t r0, uint8_t *scratch,
                     const uint8_t *fetch, size_t fetch_bytes);

}  // namespace kf::quant

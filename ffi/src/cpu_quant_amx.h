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

// Scratch bytes one group's unpacked panel takes, for rows of nb blocks of 32 values, and those of
// the activation scales laid out per token tile.
size_t amx_panel_bytes(DType dt, int64_t nb);
size_t amx_scale_bytes(int64_t nb);

// y[t][r0, r0 + 16G) for every t < T (rows `out` floats apart): G consecutive 16-row groups of dt
// (Q8_0_R16, Q4_0_R16, Q4_K_R16) starting at `groups`, `group_bytes` apart, nb blocks of 32 values per
// row. xq holds T activation rows of nb blocks, padded with zero blocks to a multiple of kAmxRows rows.
// `scratch` holds G panels (amx_panel_bytes each), then amx_scale_bytes. Runs on the calling thread;
// sets and releases its tile configuration.
void amx_gemm_groups(DType dt, const uint8_t *groups, size_t group_bytes, int G, int64_t nb, const ActBlock *xq,
                     float *y, int64_t T, int64_t out, int64_t r0, uint8_t *scratch);

}  // namespace kf::quant

// cpu_features.h — which CPU kernels run: the features cpuid reports, narrowed by KVFOLD_CPU.
//
// The library is built for the machine it is built on (-march=native), but its AVX-512 and VNNI
// kernels live in their own translation units with per-function target attributes, so one build runs
// on CPUs with and without them: the kernels are chosen here, once per process, from cpuid.
//
// KVFOLD_CPU (read once, at the first matmul) forces a lower path so every one can be tested on one
// machine: "scalar", "avx2", "avx512" (AVX-512F/BW/VL f32 GEMM, no bf16 dot products) or
// "avx512bf16", or "amx" (the best this CPU has; also "auto" or unset): avx512bf16 plus AMX tiles for
// prefill (where the OS grants the tile state): the bf16 GEMM through AMX-BF16, the int8 GEMM on
// quantized weights through AMX-INT8. Asking for more than the CPU has gives the best it has. Int8
// dot products (quantized weights) use VNNI (AVX512-VNNI or AVX-VNNI) on the avx512 paths, maddubs on
// avx2, plain loops on scalar.
#pragma once

#include <cstdint>

namespace kf {

enum class CpuPath : int32_t { Scalar = 0, Avx2 = 1, Avx512 = 2, Avx512Bf16 = 3, Amx = 4 };

struct CpuFeatures {
  bool avx2 = false;         // AVX2 + FMA + F16C (and the OS saves ymm state)
  bool avx512 = false;       // AVX-512 F + BW + VL (and the OS saves zmm state)
  bool avx512_bf16 = false;  // vdpbf16ps
  bool avx512_vnni = false;  // vpdpbusd on zmm/ymm (with VL)
  bool avx_vnni = false;     // vpdpbusd, VEX encoded
  bool amx_int8 = false;     // AMX-TILE + AMX-INT8 (tdpbssd), the tile state granted by the OS
  bool amx_bf16 = false;     // AMX-TILE + AMX-BF16 (tdpbf16ps), the same
  bool intel = false;        // vendor GenuineIntel
};

// What cpuid says (cached).
const CpuFeatures &cpu_features();
// The path the kernels take: the best the CPU and this build have, lowered by KVFOLD_CPU.
CpuPath cpu_path();
// Int8 dot products through vpdpbusd on this path.
bool cpu_int8_vnni();
// "scalar", "avx2", "avx512", "avx512-bf16", "amx".
const char *cpu_path_name(CpuPath p);
// Prefill GEMMs through AMX tiles on this path: int8 (quantized weights), bf16 (bf16 weights).
bool cpu_int8_amx();
bool cpu_bf16_amx();
// Whether decode's interleaved int8 kernels prefetch their stream into L2 rather than L1: on Intel
// (measured on a Xeon VM: q4_0 1.1B decode +13-23% over L1, where the loads still missed behind the L1
// prefetches), not on AMD (L1 measured best there). KVFOLD_PREFETCH=l1|l2 overrides it (read once).
bool cpu_decode_prefetch_l2();
// Whether decode's short bf16 rows (cpu_matmul_avx512.cpp short_rows) are read two at a time (two
// dependency chains at T = 1) or one: two on Intel (the Xeon VM: +3.5% on 134M bf16 decode), one on
// AMD (the Zen 5 EPYC VM: bench/decode_chain 134M bf16 steps/s +30-40%, two rows' streams read at once
// ran far below the probe there). The same bits either way. KVFOLD_SHORT_ROWS=pair|one overrides it.
bool cpu_short_rows_paired();
// A description for the engine name, e.g. "avx512-bf16, int8 vnni".
const char *cpu_kernels_name();
// Tests only: forces cpu_short_rows_paired() (1 or 0), or gives it back to the CPU and KVFOLD_SHORT_ROWS (-1).
void cpu_force_short_rows_paired(int paired);
// Tests only: forces a path (lowered to what the CPU has) for the whole process; returns the one set.
CpuPath cpu_force_path(CpuPath p);

}  // namespace kf

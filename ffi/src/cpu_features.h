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
// How decode's memory-bound kernels read their weights on this CPU. Each choice was measured per
// vendor (bench/decode_chain, bench/decode_ab.ts) and changes no bit of the results; each can be
// overridden by an environment variable (read once):
// - prefetch_l2 (KVFOLD_PREFETCH=l1|l2): the far prefetch goes to L2, not L1. Intel: yes (a Xeon VM: q4_0
//   1.1B decode +13-23% over L1, where the loads still missed behind the L1 prefetches); AMD: no.
// - short_rows_paired (KVFOLD_SHORT_ROWS=pair|one): short bf16 rows read two at a time (two dependency
//   chains at T = 1) or one. Intel: pairs (the Xeon VM: +3.5% on 134M bf16 decode); AMD: one (a Zen 5
//   EPYC VM: 134M bf16 decode 1.27 and 1/0.76, two nearby rows' streams read far below the probe).
// - two_streams (KVFOLD_DECODE_STREAMS=1|2): at T = 1 a thread reads its rows as two streams far apart
//   in lockstep (the first and second half of its run) rather than one: f16 and long bf16 rows, the
//   16-row int8 groups (short bf16 rows measured 0.97x, f32's AVX2 kernel ~1.0x with an AVX-512 two-
//   stream one: left as they were). AMD: two (the Zen 5 VM, bench/decode_chain steps/s two over one,
//   median of 6-8 alternating pairs: 1.1B q4_0 1.25, q8_0 1.24, bf16 1.28, f16 1.18; 134M q4_0 1.21,
//   f16 1.30); Intel: one (unmeasured there).
struct DecodeReads {
  bool prefetch_l2 = false;
  bool short_rows_paired = false;
  bool two_streams = false;
};
const DecodeReads &cpu_decode_reads();
// Tests only: forces the choices (nullptr: back to this CPU's and the environment's).
void cpu_force_decode_reads(const DecodeReads *reads);
// A description for the engine name, e.g. "avx512-bf16, int8 vnni".
const char *cpu_kernels_name();
// Tests only: forces a path (lowered to what the CPU has) for the whole process; returns the one set.
CpuPath cpu_force_path(CpuPath p);

}  // namespace kf

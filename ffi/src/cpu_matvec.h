// cpu_matvec.h — inside the CPU matmul: decode's matrix-vector path (cpu_matvec.cpp) and the AVX2
// float kernel it shares with cpu_matmul.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>
#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

#include "cpu_features.h"
#include "cpu_ops.h"

namespace kf {

// W rows shorter than this take the one-row-stream kernels (see cpu_matmul.cpp).
constexpr size_t kMvShortRowBytes = 3072;

// How far ahead decode's one-stream kernels (bf16 dot, f16, the 16-row int8 groups) prefetch their
// weights. The hardware prefetcher alone leaves DRAM latency exposed on one sequential stream per
// thread. Measured (1.1B decode, 2 threads, the 2-core EPYC VM, bench/decode_ab.ts, one build with
// the distance switched, median of 8-10 rounds): 4 KiB against 1 KiB bf16 +8%, f16 +11%; against
// no prefetch q8_0 +7% (at 2 KiB; 4 KiB +4% more), q4_0 +7%, q4_k_m +3%; 8 KiB no better.
constexpr size_t kDecodePrefetchBytes = 4096;

// The line kDecodePrefetchBytes past `at`, into L2 or L1 (cpu_decode_reads().prefetch_l2 says which the
// kernels take: a template argument, given by with_decode_prefetch).
template <bool L2>
inline void decode_prefetch(const void *at) {
#if defined(__x86_64__)
  _mm_prefetch(static_cast<const char *>(at) + kDecodePrefetchBytes, L2 ? _MM_HINT_T1 : _MM_HINT_T0);
#else
  (void)at;
#endif
}

// decode_prefetch, and where that goes to L2, the line kDecodeNearPrefetchBytes past `at` into L1
// as well: the int8 group kernels (cpu_quant_vnni512.cpp) then wait less on L2. Measured on the
// 2-core Xeon VM (bench/decode_ab.ts, one build, the near prefetch switched, both orders, 5-6
// rounds): 1.1B q4_0 +5.5%, q4_k_m +4.6%, q8_0 +3.6%; 256 or 1024 bytes ahead no better than 512.
// The bf16 and f16 kernels gained nothing (134M bf16 -3%, f16 and 1.1B bf16 +-1%; bf16's long rows
// again +1-4% once their far prefetch went to L2, within noise): they take decode_prefetch alone.
constexpr size_t kDecodeNearPrefetchBytes = 512;
template <bool L2>
inline void decode_prefetch_near_too(const void *at) {
  decode_prefetch<L2>(at);
#if defined(__x86_64__)
  if constexpr (L2) _mm_prefetch(static_cast<const char *>(at) + kDecodeNearPrefetchBytes, _MM_HINT_T0);
#endif
}

// f(std::true_type{}) where decode prefetches into L2, else f(std::false_type{}).
template <class F>
void with_decode_prefetch(F &&f) {
  if (cpu_decode_reads().prefetch_l2) f(std::true_type{});
  else f(std::false_type{});
}

// Rows [r0, r1) of y[T, out] = x[T, in] · W^T (+ bias), W f32 / f16 / bf16, T in 1..kMatvecMaxT, by the
// AVX2 (or plain) matrix-vector kernels of cpu_matmul.cpp. Same bits whatever r0 and r1 are.
void matvec_float_range(DType dt, const float *x, int64_t in, const void *W, float *y, int64_t T, int64_t out,
                        int64_t r0, int64_t r1, const float *bias);

// The products p[0..n) of one x [T, in] on the matrix-vector path (T <= kMatvecMaxT): x converted
// once for the kernels that read it converted, then one parallel region over all the products' rows.
// False, having done nothing, where a product takes another path (the scalar path, quantized weights
// at T > kQuantMatvecMaxT, a bad shape): the caller runs matmul for each.
bool matvec_products(ThreadPool &pool, const float *x, int64_t T, int64_t in, const MatmulProduct *p, int n);

}  // namespace kf

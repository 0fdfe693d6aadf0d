// cpu_matmul_avx512.h — the AVX-512 GEMM (cpu_matmul_avx512.cpp) and the portable matmul
// (cpu_matmul_scalar.cpp) that cpu_matmul.cpp's matmul dispatches to by cpu_path().
#pragma once

#include <cstdint>

#include "common.h"
#include "threadpool.h"

namespace kf {

// y[T, N] = x[T, K] · W^T (+ bias), x rows lda floats apart, W: [N, K] f32 / f16 / bf16.
// bf16_dot (W bf16 only): x is rounded to bf16 and pairs of products summed by vdpbf16ps (as
// llama.cpp does for bf16 weights); otherwise W is widened to f32 panels and FMAs run in f32.
// Needs AVX-512F/BW/VL (and AVX512-BF16 for bf16_dot): the caller checks cpu_features().
// Accumulates in a fixed order per element: results do not depend on the thread count.
void gemm_avx512(ThreadPool &pool, const float *x, int64_t lda, const void *W, DType dt, float *y, int64_t T,
                 int64_t K, int64_t N, const float *bias, bool bf16_dot);

// Decode's product for bf16 W and T <= 8 rows of x (contiguous, K floats each): x rounded to bf16 as
// the GEMM's bf16_dot does, 32 products per vdpbf16ps, each W row streamed once. Needs AVX512-BF16.
// Each output is summed in the same order whatever T and the thread count are.
void matvec_bf16_dot(ThreadPool &pool, const float *x, const void *W, float *y, int64_t T, int64_t K, int64_t N,
                     const float *bias);

// Decode's product for f16 W and T <= 8 rows of x (contiguous, K floats each): W widened to f32, FMAs
// in f32, each W row streamed once. Needs AVX-512F. Summed the same way whatever T and the thread
// count are.
void matvec_f16(ThreadPool &pool, const float *x, const void *W, float *y, int64_t T, int64_t K, int64_t N,
                const float *bias);

// The same product in plain C++ loops (any T, any float dtype): KVFOLD_CPU=scalar's path.
void matmul_portable(ThreadPool &pool, const float *x, int64_t lda, const void *W, DType dt, float *y, int64_t T,
                     int64_t K, int64_t N, const float *bias);

}  // namespace kf

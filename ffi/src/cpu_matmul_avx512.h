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

// Decode's products (T <= 8 rows of x) as row ranges, which cpu_matvec.cpp runs alone or several
// in one parallel region: rows [r0, r1) of y[T, N] = x · W^T (+ bias), W [N, K], each W row streamed
// once. Every output is summed in the same order whatever T, r0, r1 and the thread split are.
// - bf16 W (AVX512-BF16): x rounded to bf16 first (bf16_round_rows: T rows of kp = K rounded up to
//   even, zero-padded), 32 products per vdpbf16ps, as llama.cpp and the GEMM's bf16_dot do;
// - f16 W (AVX-512F): W widened to f32, FMAs in f32 on x as it is (T rows of K floats).
// The caller checks cpu_features().
void bf16_round_rows(const float *x, int64_t K, int64_t T, int64_t kp, uint16_t *xb);
void matvec_bf16_dot_range(const uint16_t *xb, int64_t kp, const void *W, float *y, int64_t T, int64_t K, int64_t N,
                           int64_t r0, int64_t r1, const float *bias);
void matvec_f16_range(const float *x, const void *W, float *y, int64_t T, int64_t K, int64_t N, int64_t r0, int64_t r1,
                      const float *bias);

// The same product in plain C++ loops (any T, any float dtype): KVFOLD_CPU=scalar's path.
void matmul_portable(ThreadPool &pool, const float *x, int64_t lda, const void *W, DType dt, float *y, int64_t T,
                     int64_t K, int64_t N, const float *bias);

}  // namespace kf

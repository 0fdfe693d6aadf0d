// cpu_matmul_scalar.cpp — the portable matmul (cpu_matmul_avx512.h): what KVFOLD_CPU=scalar runs, so
// the fallback a CPU without AVX2 takes is tested on every machine.
#include <algorithm>

#include "cpu_matmul_avx512.h"
#include "cpu_simd.h"

namespace kf {

namespace {

template <DType D>
void rows_portable(const float *x, int64_t lda, const uint8_t *W, float *y, int64_t T, int64_t K, int64_t N,
                   const float *bias, int64_t o0, int64_t o1) {
  const size_t rb = size_t(K) * elem_bytes<D>();
  for (int64_t o = o0; o < o1; o++) {
    const uint8_t *w = W + size_t(o) * rb;
    for (int64_t t = 0; t < T; t++) {
      const float *xt = x + t * lda;
      float s = 0.0f;
      for (int64_t i = 0; i < K; i++) s += xt[i] * load1<D>(w, i);
      y[t * N + o] = s + (bias ? bias[o] : 0.0f);
    }
  }
}

}  // namespace

void matmul_portable(ThreadPool &pool, const float *x, int64_t lda, const void *Wv, DType dt, float *y, int64_t T,
                     int64_t K, int64_t N, const float *bias) {
  const uint8_t *W = static_cast<const uint8_t *>(Wv);
  constexpr int64_t kRows = 32;
  auto task = [&](int64_t b, int) {
    const int64_t o0 = b * kRows, o1 = std::min(N, o0 + kRows);
    switch (dt) {
    case DType::F32: return rows_portable<DType::F32>(x, lda, W, y, T, K, N, bias, o0, o1);
    case DType::F16: return rows_portable<DType::F16>(x, lda, W, y, T, K, N, bias, o0, o1);
    default: return rows_portable<DType::BF16>(x, lda, W, y, T, K, N, bias, o0, o1);
    }
  };
  const int64_t n = (N + kRows - 1) / kRows;
  if (pool.size() == 1 || N * K * T < (int64_t(1) << 15)) {
    for (int64_t b = 0; b < n; b++) task(b, 0);
    return;
  }
  pool.parallel_for(n, task);
}

}  // namespace kf

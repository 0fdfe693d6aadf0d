// gemm.cu — y[M, N] (+)= x[M, K] · W[N, K]^T, the matrix products of every projection and the LM head.
//
// W is a torch Linear weight (rows = output features) in 16-bit; x is 16-bit activations; y is f32.
// Paths, chosen per call by matmul():
// - cuBLAS cublasGemmEx (f32 compute) when loaded and M > kGemvRows: the library's tuned kernels.
// - gemv_kernel for M <= kGemvRows (decode): bandwidth-bound, each warp streams one weight row with
//   16-byte loads and keeps the M dot products in registers, so W is read once per call.
// - gemm_wmma_kernel otherwise: 64x64 output tiles, K in steps of 32 through shared memory, four warps
//   each on a 32x32 quarter with 16x16x16 tensor-core fragments (WMMA), f32 accumulation. A fallback
//   that is correct everywhere, not tuned (no cp.async pipeline, no wgmma on sm_90).
#include <mma.h>

#include "kernels.cuh"

namespace kf::cuda {

namespace {

// Eight 16-bit values from p as four float2 (one 16-byte load).
template <class T>
__device__ __forceinline__ void load8(const T *p, float2 (&out)[4]) {
  const uint4 raw = *reinterpret_cast<const uint4 *>(p);
  const T *h = reinterpret_cast<const T *>(&raw);
#pragma unroll
  for (int i = 0; i < 4; i++) out[i] = pair_to_f32(h + 2 * i);
}

constexpr int kGemvWarps = 8;

// grid: ceil(N / kGemvWarps); block: kGemvWarps warps, one output feature n each.
// x: [R, K]; W: [N, K]; y: [R, N]. R = rows (1..kGemvRows), compile-time so acc[] lives in registers.
template <class T, int R>
__global__ void __launch_bounds__(32 * kGemvWarps)
    gemv_kernel(const T *__restrict__ x, const T *__restrict__ W, float *__restrict__ y, int32_t N, int32_t K,
                int accumulate) {
  const int32_t n = blockIdx.x * kGemvWarps + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (n >= N) return;
  const T *w = W + int64_t(n) * K;
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; r++) acc[r] = 0.0f;
  int32_t k0 = 0;
  if ((K & 7) == 0) {
    // 16-byte steps: 256 elements of the weight row per warp iteration, several loads in flight.
#pragma unroll 4
    for (int32_t k = lane * 8; k < K; k += 32 * 8) {
      float2 wf[4];
      load8(w + k, wf);
#pragma unroll
      for (int r = 0; r < R; r++) {
        float2 xf[4];
        load8(x + int64_t(r) * K + k, xf);
#pragma unroll
        for (int i = 0; i < 4; i++) acc[r] = fmaf(wf[i].x, xf[i].x, fmaf(wf[i].y, xf[i].y, acc[r]));
      }
    }
    k0 = K;
  }
  for (int32_t k = k0 + lane; k < K; k += 32) {  // K not a multiple of 8: element by element
    const float wk = to_f32(w[k]);
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = fmaf(wk, to_f32(x[int64_t(r) * K + k]), acc[r]);
  }
#pragma unroll
  for (int r = 0; r < R; r++) {
    const float s = warp_sum(acc[r]);
    if (lane == 0) {
      float *dst = y + int64_t(r) * N + n;
      *dst = accumulate ? *dst + s : s;
    }
  }
}

constexpr int kBM = 64, kBN = 64, kBK = 32, kLd = kBK + 8, kLdc = kBN + 4;

// Eight consecutive elements of row `row` from column k of a [rows, K] matrix with row stride ld into
// dst, zeros past the edges. 16-byte path when rows are 16-byte aligned (ld % 8 == 0) and all eight
// are inside.
template <class T>
__device__ __forceinline__ void stage8(const T *__restrict__ src, int64_t ld, int32_t row, int32_t rows, int32_t k,
                                       int32_t K, T *dst) {
  if (row < rows && (ld & 7) == 0 && k + 8 <= K) {
    *reinterpret_cast<uint4 *>(dst) = *reinterpret_cast<const uint4 *>(src + int64_t(row) * ld + k);
  } else {
#pragma unroll
    for (int i = 0; i < 8; i++)
      dst[i] = row < rows && k + i < K ? src[int64_t(row) * ld + k + i] : from_f32<T>(0.0f);
  }
}

// grid: (ceil(N / 64), ceil(M / 64), batch); block: 128 threads (2 x 2 warps, 32 x 32 outputs each).
// A: [M, K] with row stride lda (lda < K reads overlapping rows: the implicit im2col of LoCoCo's
// Conv1d); W: [N, K] row-major = B^T, read as a col-major K x N fragment; C: [M, N] f32. Batch b
// offsets A, W, C by b times sA, sW, sC elements.
template <class T>
__global__ void __launch_bounds__(128)
    gemm_wmma_kernel(const T *__restrict__ A, const T *__restrict__ W, float *__restrict__ C, int32_t M, int32_t N,
                     int32_t K, int64_t lda, int64_t sA, int64_t sW, int64_t sC, int accumulate) {
  using namespace nvcuda;
  A += blockIdx.z * sA;
  W += blockIdx.z * sW;
  C += blockIdx.z * sC;
  __shared__ __align__(32) T As[kBM * kLd];   // [64 rows of A, 32 k (+8 pad)]
  __shared__ __align__(32) T Bs[kBN * kLd];   // [64 rows of W, 32 k (+8 pad)]
  __shared__ __align__(32) float Cs[kBM * kLdc];
  const int32_t m0 = blockIdx.y * kBM, n0 = blockIdx.x * kBN;
  const int32_t warp = threadIdx.x >> 5, wm = warp >> 1, wn = warp & 1;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; i++)
#pragma unroll
    for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[i][j], 0.0f);

  for (int32_t k0 = 0; k0 < K; k0 += kBK) {
    // 64 rows x 4 chunks of 8 = 256 chunks per operand: two per thread each.
#pragma unroll
    for (int c = threadIdx.x; c < kBM * (kBK / 8); c += 128) {
      const int32_t r = c / (kBK / 8), kc = (c % (kBK / 8)) * 8;
      stage8(A, lda, m0 + r, M, k0 + kc, K, As + r * kLd + kc);
      stage8(W, int64_t(K), n0 + r, N, k0 + kc, K, Bs + r * kLd + kc);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b[2];
#pragma unroll
      for (int i = 0; i < 2; i++) wmma::load_matrix_sync(a[i], As + (wm * 32 + i * 16) * kLd + kk, kLd);
#pragma unroll
      for (int j = 0; j < 2; j++) wmma::load_matrix_sync(b[j], Bs + (wn * 32 + j * 16) * kLd + kk, kLd);
#pragma unroll
      for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; i++)
#pragma unroll
    for (int j = 0; j < 2; j++)
      wmma::store_matrix_sync(Cs + (wm * 32 + i * 16) * kLdc + wn * 32 + j * 16, acc[i][j], kLdc,
                              wmma::mem_row_major);
  __syncthreads();
  for (int e = threadIdx.x; e < kBM * kBN; e += 128) {
    const int32_t r = e / kBN, c = e % kBN, gm = m0 + r, gn = n0 + c;
    if (gm < M && gn < N) {
      float *dst = C + int64_t(gm) * N + gn;
      *dst = accumulate ? *dst + Cs[r * kLdc + c] : Cs[r * kLdc + c];
    }
  }
}

template <class T>
void gemv(const T *x, const T *W, float *y, int32_t M, int32_t N, int32_t K, bool accumulate, cudaStream_t s) {
  const unsigned grid = blocks_for(N, kGemvWarps);
  switch (M) {
  case 1: gemv_kernel<T, 1><<<grid, 32 * kGemvWarps, 0, s>>>(x, W, y, N, K, accumulate); break;
  case 2: gemv_kernel<T, 2><<<grid, 32 * kGemvWarps, 0, s>>>(x, W, y, N, K, accumulate); break;
  case 3: gemv_kernel<T, 3><<<grid, 32 * kGemvWarps, 0, s>>>(x, W, y, N, K, accumulate); break;
  default: gemv_kernel<T, 4><<<grid, 32 * kGemvWarps, 0, s>>>(x, W, y, N, K, accumulate); break;
  }
  KF_LAUNCHED("gemv");
}

// uniform [-scale, scale) from a 32-bit hash of (seed, index): reproducible, no RNG state.
template <class T>
__global__ void fill_random_kernel(T *p, int64_t n, uint32_t seed, float scale) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 0x9e3779b1u ^ seed ^ uint32_t(i >> 32) * 0x85ebca6bu;
    h ^= h >> 16;
    h *= 0x7feb352du;
    h ^= h >> 15;
    h *= 0x846ca68bu;
    h ^= h >> 16;
    p[i] = from_f32<T>((float(h >> 8) * (1.0f / 16777216.0f) * 2.0f - 1.0f) * scale);
  }
}

}  // namespace

void matmul_builtin(const void *x, const void *W, DType dt, float *y, int32_t M, int32_t N, int32_t K,
                    bool accumulate, cudaStream_t s) {
  if (M <= 0 || N <= 0 || K <= 0) return;
  KF_WITH_16BIT(dt, T, {
    const T *xt = static_cast<const T *>(x);
    const T *wt = static_cast<const T *>(W);
    if (M <= kGemvRows) {
      gemv<T>(xt, wt, y, M, N, K, accumulate, s);
    } else {
      const dim3 grid(blocks_for(N, kBN), blocks_for(M, kBM));
      gemm_wmma_kernel<T><<<grid, 128, 0, s>>>(xt, wt, y, M, N, K, int64_t(K), 0, 0, 0, accumulate ? 1 : 0);
      KF_LAUNCHED("gemm_wmma");
    }
  });
}

void matmul(Engine &e, const void *x, const void *W, DType dt, float *y, int32_t M, int32_t N, int32_t K,
            bool accumulate, cudaStream_t s) {
  if (M <= 0 || N <= 0 || K <= 0) return;
  if (M <= kGemvRows || !e.blas_handle) {
    matmul_builtin(x, W, dt, y, M, N, K, accumulate, s);
    return;
  }
  // Column-major view: y^T [N, M] = (W viewed as K x N)^T · (x viewed as K x M).
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  const int ab = dt == DType::F16 ? kCudaR16F : kCudaR16BF;
  const int st = e.blas.gemm_ex(e.blas_handle, kCublasOpT, kCublasOpN, N, M, K, &alpha, W, ab, K, x, ab, K, &beta, y,
                                kCudaR32F, N, kCublasCompute32F, kCublasGemmDefault);
  if (st != kCublasStatusSuccess)
    raise(KF_ERR_BACKEND, "cannot %s: cublasGemmEx (m=%d, n=%d, k=%d) failed: %s", doing(), N, M, K,
          cublas_status_name(st));
}

void matmul_batched(const void *x, int64_t ldx, int64_t sx, const void *W, int64_t sw, DType dt, float *y, int64_t sy,
                    int32_t M, int32_t N, int32_t K, int32_t batch, cudaStream_t s) {
  if (M <= 0 || N <= 0 || K <= 0 || batch <= 0) return;
  const dim3 grid(blocks_for(N, kBN), blocks_for(M, kBM), unsigned(batch));
  KF_WITH_16BIT(dt, T, gemm_wmma_kernel<T><<<grid, 128, 0, s>>>(static_cast<const T *>(x), static_cast<const T *>(W), y,
                                                                 M, N, K, ldx, sx, sw, sy, 0));
  KF_LAUNCHED("gemm_wmma batched");
}

void fill_random(void *p, DType dt, int64_t n, uint32_t seed, float scale, cudaStream_t s) {
  const unsigned grid = unsigned(std::min<int64_t>(blocks_for(n, 256), 8192));
  KF_WITH_16BIT(dt, T, fill_random_kernel<T><<<grid, 256, 0, s>>>(static_cast<T *>(p), n, seed, scale));
  KF_LAUNCHED("fill_random");
}

}  // namespace kf::cuda

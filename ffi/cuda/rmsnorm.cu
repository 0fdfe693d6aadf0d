// rmsnorm.cu — RMSNorm of f32 rows into the dtype the next stage reads (16-bit for a matrix product,
// f32 for hidden states handed back to the caller).
#include "kernels.cuh"

namespace kf::cuda {

namespace {

constexpr int kThreads = 256;

// grid: T blocks (one row each); block: kThreads. x: [T, H] f32; w: [H] f32; out: [T, H] in O.
// The sum of squares is f32, reduced per warp then across warps, as the CPU reference does in f32.
template <class O>
__global__ void __launch_bounds__(kThreads) rmsnorm_kernel(const float *__restrict__ x, const float *__restrict__ w,
                                                           int32_t H, float eps, O *__restrict__ out) {
  __shared__ float warp_sums[kThreads / 32];
  const int64_t t = blockIdx.x;
  const float *xr = x + t * H;
  float ss = 0.0f;
  for (int32_t i = threadIdx.x; i < H; i += kThreads) ss += xr[i] * xr[i];
  ss = warp_sum(ss);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = ss;
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int i = 0; i < kThreads / 32; i++) total += warp_sums[i];
  const float inv = rsqrtf(total / float(H) + eps);
  for (int32_t i = threadIdx.x; i < H; i += kThreads) out[t * H + i] = from_f32<O>(xr[i] * inv * w[i]);
}

}  // namespace

void rmsnorm(const float *x, const float *w, int32_t T, int32_t H, float eps, void *out, DType out_dt, cudaStream_t s) {
  if (out_dt == DType::F32) {
    rmsnorm_kernel<float><<<T, kThreads, 0, s>>>(x, w, H, eps, static_cast<float *>(out));
  } else {
    KF_WITH_16BIT(out_dt, O, rmsnorm_kernel<O><<<T, kThreads, 0, s>>>(x, w, H, eps, static_cast<O *>(out)));
  }
  KF_LAUNCHED("rmsnorm");
}

}  // namespace kf::cuda

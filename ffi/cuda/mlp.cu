// mlp.cu — SwiGLU's elementwise part and bias addition (the matrix products are gemm.cu's).
#include "kernels.cuh"

namespace kf::cuda {

namespace {

// grid-stride over n. gate, up: [n] f32 (matrix-product outputs); out: [n] in T (next product's input).
template <class T>
__global__ void swiglu_kernel(const float *__restrict__ gate, const float *__restrict__ up, int64_t n,
                              T *__restrict__ out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    out[i] = from_f32<T>(g / (1.0f + __expf(-g)) * up[i]);
  }
}

// grid-stride over T * N. y: [T, N] f32; b: [N].
__global__ void add_bias_kernel(float *__restrict__ y, const float *__restrict__ b, int64_t n, int32_t N) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] += b[i % N];
}

}  // namespace

void swiglu(const float *gate, const float *up, int64_t n, void *out, DType dt, cudaStream_t s) {
  const unsigned grid = unsigned(std::min<int64_t>(blocks_for(n, 256), 8192));
  KF_WITH_16BIT(dt, T, swiglu_kernel<T><<<grid, 256, 0, s>>>(gate, up, n, static_cast<T *>(out)));
  KF_LAUNCHED("swiglu");
}

void add_bias(float *y, const float *b, int32_t T, int32_t N, cudaStream_t s) {
  const int64_t n = int64_t(T) * N;
  add_bias_kernel<<<unsigned(std::min<int64_t>(blocks_for(n, 256), 8192)), 256, 0, s>>>(y, b, n, N);
  KF_LAUNCHED("add_bias");
}

}  // namespace kf::cuda

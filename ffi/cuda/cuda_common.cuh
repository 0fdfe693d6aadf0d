// cuda_common.cuh — what every CUDA source shares: turning CUDA errors into kf::Error, 16-bit type
// traits, device buffers charged to an engine's memory budget, and the engine itself.
//
// Errors: no CUDA call's status is ever ignored. KF_CUDA(call) throws kf::Error naming the call, the
// source line and the operation in progress ("cannot load model: cudaMalloc(...) failed at
// ffi/cuda/device.cu:88: out of memory"); kf::cuda::launched("rmsnorm") does the same for the launch
// just made. Entry points set the operation with a Doing scope.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../src/common.h"
#include "cublas_loader.h"
#include "cuda_backend.h"

namespace kf::cuda {

// The operation an entry point is running ("load model"), for error messages. Thread-local: calls on
// different sessions may run on different threads.
const char *doing() noexcept;
struct Doing {
  const char *prev;
  explicit Doing(const char *what);
  ~Doing();
  Doing(const Doing &) = delete;
  Doing &operator=(const Doing &) = delete;
};

// Throws kf::Error for a failed CUDA call: KF_ERR_OUT_OF_MEMORY for allocation failures, else
// KF_ERR_BACKEND. Clears the runtime's (non-sticky) last error first.
[[noreturn]] void fail(cudaError_t err, const char *call, const char *file, int line);
inline void check(cudaError_t err, const char *call, const char *file, int line) {
  if (err != cudaSuccess) fail(err, call, file, line);
}
#define KF_CUDA(call) ::kf::cuda::check((call), #call, __FILE__, __LINE__)
// After every kernel launch: a bad configuration (too many threads, too much shared memory) shows here.
#define KF_LAUNCHED(kernel) ::kf::cuda::check(cudaGetLastError(), kernel " launch", __FILE__, __LINE__)

// 16-bit storage types and their conversions; arithmetic is always f32.
template <class T> __device__ __forceinline__ float to_f32(T v);
template <> __device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Two adjacent 16-bit values as a float2 (one 32-bit load).
template <class T> __device__ __forceinline__ float2 pair_to_f32(const T *p);
template <> __device__ __forceinline__ float2 pair_to_f32<__half>(const __half *p) {
  return __half22float2(*reinterpret_cast<const __half2 *>(p));
}
template <> __device__ __forceinline__ float2 pair_to_f32<__nv_bfloat16>(const __nv_bfloat16 *p) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(p));
}

// Warp-wide reductions (all 32 lanes take part).
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Runs `body` with `T` bound to the storage type of a 16-bit dtype (F16 -> __half, else __nv_bfloat16).
#define KF_WITH_16BIT(dt, T, ...)          \
  do {                                     \
    if ((dt) == ::kf::DType::F16) {        \
      using T = __half;                    \
      __VA_ARGS__;                         \
    } else {                               \
      using T = __nv_bfloat16;             \
      __VA_ARGS__;                         \
    }                                      \
  } while (0)

inline unsigned blocks_for(int64_t n, int threads) { return unsigned((n + threads - 1) / threads); }

struct Engine;

// One device allocation, charged to its engine's budget while it lives. Move-only.
class DevBuf {
 public:
  DevBuf() = default;
  DevBuf(Engine &e, size_t bytes, const char *what);  // throws KF_ERR_OUT_OF_MEMORY
  ~DevBuf() { reset(); }
  DevBuf(DevBuf &&o) noexcept : e_(o.e_), p_(o.p_), bytes_(o.bytes_) { o.p_ = nullptr; o.bytes_ = 0; }
  DevBuf &operator=(DevBuf &&o) noexcept;
  DevBuf(const DevBuf &) = delete;
  DevBuf &operator=(const DevBuf &) = delete;
  void reset() noexcept;
  void *get() const { return p_; }
  template <class T> T *as() const { return static_cast<T *>(p_); }
  size_t bytes() const { return bytes_; }

 private:
  Engine *e_ = nullptr;
  void *p_ = nullptr;
  size_t bytes_ = 0;
};

// Pinned host memory (staging for the small per-forward uploads). Not charged to the device budget.
class HostBuf {
 public:
  HostBuf() = default;
  explicit HostBuf(size_t bytes);
  ~HostBuf();
  HostBuf(const HostBuf &) = delete;
  HostBuf &operator=(const HostBuf &) = delete;
  HostBuf(HostBuf &&o) noexcept : p_(o.p_), bytes_(o.bytes_) { o.p_ = nullptr; o.bytes_ = 0; }
  HostBuf &operator=(HostBuf &&o) noexcept;
  void *get() const { return p_; }
  size_t bytes() const { return bytes_; }

 private:
  void *p_ = nullptr;
  size_t bytes_ = 0;
};

struct Engine : BackendState {
  int32_t device = 0;
  int32_t cc_major = 0, cc_minor = 0, sm_count = 0;
  size_t shared_per_block_optin = 0;
  int64_t budget = 0;               // bytes; 0 = none
  std::atomic<int64_t> used{0};     // bytes held by live DevBufs of this engine
  cudaStream_t stream = nullptr;
  CublasLib blas;                   // empty when no cuBLAS was found (own kernels run)
  void *blas_handle = nullptr;      // cublasHandle_t bound to `stream`
  std::string device_name;
  ~Engine() override;
};

// Makes the engine's device current on this thread (every entry point: the runtime's current device
// is per thread, and nonblocking FFI calls arrive on worker threads).
void use_device(const Engine &e);

}  // namespace kf::cuda

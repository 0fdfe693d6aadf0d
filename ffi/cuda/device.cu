// device.cu — devices and engines: discovery, opening (driver checks, cuBLAS), the memory budget,
// error translation, and the two ceilings benchmarks compare against.
#include <dlfcn.h>

#include <cstdio>
#include <vector>

#include "kernels.cuh"

namespace kf::cuda {

// ---- errors ----

namespace {
thread_local const char *t_doing = "use the cuda backend";
}

const char *doing() noexcept { return t_doing; }
Doing::Doing(const char *what) : prev(t_doing) { t_doing = what; }
Doing::~Doing() { t_doing = prev; }

void fail(cudaError_t err, const char *call, const char *file, int line) {
  cudaGetLastError();  // clear a non-sticky error so the next call starts clean
  const char *base = std::strrchr(file, '/');
  raise(err == cudaErrorMemoryAllocation ? KF_ERR_OUT_OF_MEMORY : KF_ERR_BACKEND, "cannot %s: %s failed at %s:%d: %s (%s)",
        doing(), call, base ? base + 1 : file, line, cudaGetErrorString(err), cudaGetErrorName(err));
}

// ---- memory ----

DevBuf::DevBuf(Engine &e, size_t bytes, const char *what) : e_(&e) {
  if (bytes == 0) return;
  const double gib = 1073741824.0;
  if (e.budget > 0 && e.used.load() + int64_t(bytes) > e.budget)
    raise(KF_ERR_OUT_OF_MEMORY, "cannot %s: %s needs %.3f GiB of device memory, but the engine's budget of %.3f GiB has "
          "%.3f GiB left", doing(), what, double(bytes) / gib, double(e.budget) / gib,
          double(e.budget - e.used.load()) / gib);
  const cudaError_t err = cudaMalloc(&p_, bytes);
  if (err != cudaSuccess) {
    cudaGetLastError();
    p_ = nullptr;
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    cudaGetLastError();
    raise(KF_ERR_OUT_OF_MEMORY, "cannot %s: cudaMalloc of %.3f GiB for %s failed on cuda:%d: %s (%.3f of %.3f GiB free)",
          doing(), double(bytes) / gib, what, e.device, cudaGetErrorString(err), double(free_b) / gib,
          double(total_b) / gib);
  }
  bytes_ = bytes;
  e.used += int64_t(bytes);
}

DevBuf &DevBuf::operator=(DevBuf &&o) noexcept {
  if (this != &o) {
    reset();
    e_ = o.e_;
    p_ = o.p_;
    bytes_ = o.bytes_;
    o.p_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

void DevBuf::reset() noexcept {
  if (p_) {
    cudaFree(p_);  // frees are synchronous; a failure here has nowhere to go
    cudaGetLastError();
    e_->used -= int64_t(bytes_);
  }
  p_ = nullptr;
  bytes_ = 0;
}

HostBuf::HostBuf(size_t bytes) {
  if (bytes == 0) return;
  KF_CUDA(cudaMallocHost(&p_, bytes));
  bytes_ = bytes;
}

HostBuf::~HostBuf() {
  if (p_) cudaFreeHost(p_);
}

HostBuf &HostBuf::operator=(HostBuf &&o) noexcept {
  if (this != &o) {
    if (p_) cudaFreeHost(p_);
    p_ = o.p_;
    bytes_ = o.bytes_;
    o.p_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

// ---- engine ----

void use_device(const Engine &e) {
  int cur = -1;
  if (cudaGetDevice(&cur) != cudaSuccess || cur != e.device) KF_CUDA(cudaSetDevice(e.device));
}

Engine::~Engine() {
  cudaSetDevice(device);
  if (blas_handle && blas.destroy) blas.destroy(blas_handle);
  if (stream) cudaStreamDestroy(stream);
  cudaGetLastError();
}

namespace {

// The CUDA driver (libcuda.so.1) is what the statically linked runtime talks to. Looking for it first
// tells "no NVIDIA driver installed" apart from the runtime's vaguer codes, and keeps a machine
// without one from ever initialising the runtime.
bool driver_library_present() {
  static const bool present = [] {
    void *h = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
    if (!h) return false;
    dlclose(h);
    return true;
  }();
  return present;
}

// Why no device is usable, as a sentence, or "" when devices are present.
std::string no_device_reason(int *count) {
  *count = 0;
  if (!driver_library_present())
    return "no NVIDIA driver is installed (libcuda.so.1 cannot be loaded)";
  const cudaError_t err = cudaGetDeviceCount(count);
  if (err == cudaSuccess) return *count > 0 ? "" : "the driver reports no CUDA device";
  cudaGetLastError();
  *count = 0;
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  cudaGetLastError();
  char buf[256];
  if (err == cudaErrorInsufficientDriver) {
    std::snprintf(buf, sizeof buf, "the NVIDIA driver supports CUDA %d.%d, older than the CUDA %d.%d runtime this "
                  "library was built with; update the driver", driver / 1000, driver % 1000 / 10, runtime / 1000,
                  runtime % 1000 / 10);
  } else if (err == cudaErrorNoDevice) {
    std::snprintf(buf, sizeof buf, "no CUDA device is visible (check CUDA_VISIBLE_DEVICES)");
  } else {
    std::snprintf(buf, sizeof buf, "cudaGetDeviceCount failed: %s (%s)", cudaGetErrorString(err),
                  cudaGetErrorName(err));
  }
  return buf;
}

}  // namespace

int32_t device_count() noexcept {
  int n = 0;
  no_device_reason(&n);
  // Only devices the kernels are built for count as usable (compute capability 8.0 or newer).
  int usable = 0;
  for (int d = 0; d < n; d++) {
    int major = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, d) == cudaSuccess && major >= 8) usable++;
    cudaGetLastError();
  }
  return usable;
}

EnginePtr engine_open(int32_t device, int64_t budget_bytes, std::string &name) {
  Doing op("open engine");
  if (budget_bytes < 0) raise(KF_ERR_INVALID_ARGUMENT, "cannot open engine: the memory budget is negative");
  int n = 0;
  const std::string why = no_device_reason(&n);
  if (n == 0) raise(KF_ERR_BACKEND, "cannot open engine: cuda backend: %s", why.c_str());
  if (device < 0 || device >= n)
    raise(KF_ERR_INVALID_ARGUMENT, "cannot open engine: device %d is outside [0, %d) (the visible CUDA devices)", device,
          n);
  EnginePtr e(new Engine());
  e->device = device;
  e->budget = budget_bytes;
  KF_CUDA(cudaSetDevice(device));
  cudaDeviceProp prop{};
  KF_CUDA(cudaGetDeviceProperties(&prop, device));
  e->cc_major = prop.major;
  e->cc_minor = prop.minor;
  e->sm_count = prop.multiProcessorCount;
  e->shared_per_block_optin = prop.sharedMemPerBlockOptin;
  e->device_name = prop.name;
  if (prop.major < 8)
    raise(KF_ERR_UNSUPPORTED, "cannot open engine: cuda:%d (%s) has compute capability %d.%d; kvfold's kernels need "
          "8.0 or newer (A100, RTX 30xx, L4/L40, H100 ...)", device, prop.name, prop.major, prop.minor);
  KF_CUDA(cudaStreamCreateWithFlags(&e->stream, cudaStreamNonBlocking));
  cublas_load(e->blas);
  if (e->blas.loaded()) {
    const int st = e->blas.create(&e->blas_handle);
    if (st != kCublasStatusSuccess) {
      e->blas_handle = nullptr;
      raise(KF_ERR_BACKEND, "cannot open engine: cublasCreate from %s failed: %s", e->blas.path.c_str(),
            cublas_status_name(st));
    }
    const int st2 = e->blas.set_stream(e->blas_handle, e->stream);
    if (st2 != kCublasStatusSuccess)
      raise(KF_ERR_BACKEND, "cannot open engine: cublasSetStream failed: %s", cublas_status_name(st2));
  }
  char buf[256];
  // Short enough for kf_engine_info's 64 bytes: what ran the matrix products goes last.
  const std::string blas = e->blas.loaded() ? e->blas.path.substr(e->blas.path.rfind('/') + 1) : "own GEMM";
  std::snprintf(buf, sizeof buf, "cuda:%d (%s, sm_%d%d, %.0f GiB, %s)", device, prop.name, prop.major, prop.minor,
                double(prop.totalGlobalMem) / 1073741824.0, blas.c_str());
  name = buf;
  return e;
}

std::string blas_probe() {
  CublasLib lib;
  cublas_load(lib);
  return lib.loaded() ? lib.path : std::string();
}

double measure_copy_bandwidth(Engine &e, int64_t bytes, int32_t repeats, kf_control *ctl) {
  Doing op("measure bandwidth");
  use_device(e);
  DevBuf a(e, size_t(bytes), "the source buffer"), b(e, size_t(bytes), "the destination buffer");
  KF_CUDA(cudaMemsetAsync(a.get(), 1, size_t(bytes), e.stream));
  cudaEvent_t t0, t1;
  KF_CUDA(cudaEventCreate(&t0));
  KF_CUDA(cudaEventCreate(&t1));
  double best = 0.0;
  try {
    KF_CUDA(cudaMemcpyAsync(b.get(), a.get(), size_t(bytes), cudaMemcpyDeviceToDevice, e.stream));  // warm-up
    progress_start(ctl, repeats);
    for (int32_t r = 0; r < repeats; r++) {
      check_cancel(ctl, "measure read bandwidth");
      KF_CUDA(cudaEventRecord(t0, e.stream));
      KF_CUDA(cudaMemcpyAsync(b.get(), a.get(), size_t(bytes), cudaMemcpyDeviceToDevice, e.stream));
      KF_CUDA(cudaEventRecord(t1, e.stream));
      KF_CUDA(cudaEventSynchronize(t1));
      float ms = 0.0f;
      KF_CUDA(cudaEventElapsedTime(&ms, t0, t1));
      if (ms > 0) best = std::max(best, 2.0 * double(bytes) / (double(ms) * 1e6));  // read + write
      progress_set(ctl, r + 1);
    }
  } catch (...) {
    cudaEventDestroy(t0);
    cudaEventDestroy(t1);
    throw;
  }
  cudaEventDestroy(t0);
  cudaEventDestroy(t1);
  return best;
}

double measure_matmul_rate(Engine &e, int32_t m, int32_t n, int32_t k, int32_t repeats, kf_control *ctl) {
  Doing op("measure matmul rate");
  use_device(e);
  DevBuf x(e, size_t(m) * size_t(k) * 2, "the x operand"), w(e, size_t(n) * size_t(k) * 2, "the W operand");
  DevBuf y(e, size_t(m) * size_t(n) * 4, "the product");
  // Random operands: zeros would run faster than real data (METHOD.md).
  fill_random(x.get(), DType::BF16, int64_t(m) * k, 1, 1.0f, e.stream);
  fill_random(w.get(), DType::BF16, int64_t(n) * k, 2, 0.05f, e.stream);
  cudaEvent_t t0, t1;
  KF_CUDA(cudaEventCreate(&t0));
  KF_CUDA(cudaEventCreate(&t1));
  double best = 0.0;
  try {
    matmul(e, x.get(), w.get(), DType::BF16, y.as<float>(), m, n, k, false, e.stream);  // warm-up
    progress_start(ctl, repeats);
    for (int32_t r = 0; r < repeats; r++) {
      check_cancel(ctl, "measure matmul rate");
      KF_CUDA(cudaEventRecord(t0, e.stream));
      matmul(e, x.get(), w.get(), DType::BF16, y.as<float>(), m, n, k, false, e.stream);
      KF_CUDA(cudaEventRecord(t1, e.stream));
      KF_CUDA(cudaEventSynchronize(t1));
      float ms = 0.0f;
      KF_CUDA(cudaEventElapsedTime(&ms, t0, t1));
      if (ms > 0) best = std::max(best, 2.0 * double(m) * double(n) * double(k) / (double(ms) * 1e9));
      progress_set(ctl, r + 1);
    }
  } catch (...) {
    cudaEventDestroy(t0);
    cudaEventDestroy(t1);
    throw;
  }
  cudaEventDestroy(t0);
  cudaEventDestroy(t1);
  return best;
}

}  // namespace kf::cuda

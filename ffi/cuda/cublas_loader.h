// cublas_loader.h — cuBLAS found at run time with dlopen, so the library builds without cuBLAS headers
// or libraries and loads on machines that have none (the built-in GEMM kernels run instead).
//
// Where it looks: $KVFOLD_CUBLAS when set (a path or a soname; "0", "none" or "off" turns cuBLAS off,
// which is how bench/gpu times the built-in kernels), else libcublas.so.13, libcublas.so.12,
// libcublas.so in the loader's search path. An explicit $KVFOLD_CUBLAS that cannot be loaded, or that
// lacks a symbol below, is an error (KF_ERR_BACKEND naming the path and dlerror()), never a silent
// fallback: the user asked for that library.
//
// Only the few entry points the forward uses are declared, with cuBLAS's C ABI: handles and streams
// are pointers, enums are ints (the values are cuBLAS's and CUDA's published constants).
#pragma once

#include <string>

namespace kf::cuda {

// Published enum values (cublas_api.h, library_types.h) that the calls below take as ints.
constexpr int kCublasOpN = 0, kCublasOpT = 1;         // cublasOperation_t
constexpr int kCudaR32F = 0, kCudaR16F = 2, kCudaR16BF = 14;  // cudaDataType_t
constexpr int kCublasCompute32F = 68;                 // cublasComputeType_t CUBLAS_COMPUTE_32F
constexpr int kCublasGemmDefault = -1;                // cublasGemmAlgo_t CUBLAS_GEMM_DEFAULT
constexpr int kCublasStatusSuccess = 0;

struct CublasLib {
  void *dl = nullptr;      // dlopen handle; NULL = not loaded
  std::string path;        // what was opened (the name tried, or $KVFOLD_CUBLAS)
  int (*create)(void **handle) = nullptr;                     // cublasCreate_v2
  int (*destroy)(void *handle) = nullptr;                     // cublasDestroy_v2
  int (*set_stream)(void *handle, void *stream) = nullptr;    // cublasSetStream_v2
  int (*get_version)(void *handle, int *version) = nullptr;   // cublasGetVersion_v2
  // cublasGemmEx(handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C, Ctype,
  //              ldc, computeType, algo)
  int (*gemm_ex)(void *, int, int, int, int, int, const void *, const void *, int, int, const void *, int, int,
                 const void *, void *, int, int, int, int) = nullptr;

  bool loaded() const { return dl != nullptr; }
  CublasLib() = default;
  ~CublasLib();
  CublasLib(const CublasLib &) = delete;
  CublasLib &operator=(const CublasLib &) = delete;
};

// Loads per the rules above into `lib` (left empty when nothing is found). Throws kf::Error
// (KF_ERR_BACKEND) for a bad explicit $KVFOLD_CUBLAS.
void cublas_load(CublasLib &lib);

// cuBLAS status as text ("CUBLAS_STATUS_NOT_SUPPORTED").
const char *cublas_status_name(int status);

}  // namespace kf::cuda

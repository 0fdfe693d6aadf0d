// cublas_loader.cu — dlopen of cuBLAS (see cublas_loader.h for the rules). Host code only.
#include "cublas_loader.h"

#include <dlfcn.h>

#include <cstdlib>
#include <cstring>

#include "../src/common.h"

namespace kf::cuda {

CublasLib::~CublasLib() {
  if (dl) dlclose(dl);
}

namespace {

// Resolves every symbol; returns the first missing one's name, or NULL when all were found.
const char *bind(CublasLib &lib) {
  struct Sym {
    const char *name;
    void **slot;
  } syms[] = {
      {"cublasCreate_v2", reinterpret_cast<void **>(&lib.create)},
      {"cublasDestroy_v2", reinterpret_cast<void **>(&lib.destroy)},
      {"cublasSetStream_v2", reinterpret_cast<void **>(&lib.set_stream)},
      {"cublasGetVersion_v2", reinterpret_cast<void **>(&lib.get_version)},
      {"cublasGemmEx", reinterpret_cast<void **>(&lib.gemm_ex)},
  };
  for (const Sym &s : syms) {
    *s.slot = dlsym(lib.dl, s.name);
    if (!*s.slot) return s.name;
  }
  return nullptr;
}

void unload(CublasLib &lib) {
  if (lib.dl) dlclose(lib.dl);
  lib.dl = nullptr;
  lib.path.clear();
  lib.create = nullptr;
  lib.destroy = nullptr;
  lib.set_stream = nullptr;
  lib.get_version = nullptr;
  lib.gemm_ex = nullptr;
}

}  // namespace

void cublas_load(CublasLib &lib) {
  unload(lib);
  const char *env = std::getenv("KVFOLD_CUBLAS");
  if (env && *env) {
    if (!std::strcmp(env, "0") || !std::strcmp(env, "none") || !std::strcmp(env, "off")) return;
    // RTLD_LOCAL: cuBLAS's symbols stay out of the process's global namespace.
    lib.dl = dlopen(env, RTLD_NOW | RTLD_LOCAL);
    if (!lib.dl) {
      const char *why = dlerror();
      raise(KF_ERR_BACKEND, "cannot load cuBLAS: KVFOLD_CUBLAS=%s cannot be loaded: %s (unset KVFOLD_CUBLAS to "
            "search the standard names, or set it to 0 to use kvfold's own kernels)", env, why ? why : "unknown");
    }
    lib.path = env;
    if (const char *missing = bind(lib)) {
      unload(lib);
      raise(KF_ERR_BACKEND, "cannot load cuBLAS: KVFOLD_CUBLAS=%s lacks the symbol %s; is it libcublas?", env, missing);
    }
    return;
  }
  for (const char *name : {"libcublas.so.13", "libcublas.so.12", "libcublas.so"}) {
    lib.dl = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (!lib.dl) continue;
    lib.path = name;
    if (!bind(lib)) return;
    unload(lib);  // an unrelated or broken library of that name: try the next
  }
  dlerror();  // leave no stale message behind
}

const char *cublas_status_name(int status) {
  switch (status) {
  case 0: return "CUBLAS_STATUS_SUCCESS";
  case 1: return "CUBLAS_STATUS_NOT_INITIALIZED";
  case 3: return "CUBLAS_STATUS_ALLOC_FAILED";
  case 7: return "CUBLAS_STATUS_INVALID_VALUE";
  case 8: return "CUBLAS_STATUS_ARCH_MISMATCH";
  case 11: return "CUBLAS_STATUS_MAPPING_ERROR";
  case 13: return "CUBLAS_STATUS_EXECUTION_FAILED";
  case 14: return "CUBLAS_STATUS_INTERNAL_ERROR";
  case 15: return "CUBLAS_STATUS_NOT_SUPPORTED";
  case 16: return "CUBLAS_STATUS_LICENSE_ERROR";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}

}  // namespace kf::cuda

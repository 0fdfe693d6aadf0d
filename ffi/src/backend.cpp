// backend.cpp — the registry of backends built into this library (backend.h).
#include "backend.h"

namespace kf {

const Backend *backend_find(int32_t kind) {
  switch (kind) {
  case KF_BACKEND_CPU: return &backend_cpu();
#ifdef KVFOLD_HAVE_CUDA
  case KF_BACKEND_CUDA: return &backend_cuda();
#endif
  default: return nullptr;
  }
}

}  // namespace kf

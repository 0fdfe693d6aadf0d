// cuda_stub.cpp — the CUDA backend's interface when the library is built without it (no nvcc, or
// KVFOLD_CUDA=0): no devices, and every call that would need one refused as unsupported.
#ifndef KVFOLD_HAVE_CUDA

#include "../cuda/cuda_backend.h"
#include "common.h"

namespace kf::cuda {

namespace {
[[noreturn]] void not_built(const char *what) {
  raise(KF_ERR_UNSUPPORTED, "cannot %s: the cuda backend is not built into this library (rebuild where nvcc is on "
        "PATH, without KVFOLD_CUDA=0)", what);
}
}  // namespace

// Nothing of these types is ever created without the backend, so the deleters have nothing to free.
void EngineDeleter::operator()(Engine *) const noexcept {}
void ModelDeleter::operator()(Model *) const noexcept {}
void SessionDeleter::operator()(Session *) const noexcept {}
void AdapterDeleter::operator()(Adapter *) const noexcept {}
void HeadsDeleter::operator()(Heads *) const noexcept {}

int32_t device_count() noexcept { return 0; }
EnginePtr engine_open(int32_t, int64_t, std::string &) { not_built("open engine"); }
std::string blas_probe() { not_built("probe cuBLAS"); }
double measure_copy_bandwidth(Engine &, int64_t, int32_t) { not_built("measure bandwidth"); }
double measure_matmul_rate(Engine &, int32_t, int32_t, int32_t, int32_t) { not_built("measure matmul rate"); }
ModelPtr model_upload(kf_model &) { not_built("load model"); }
SessionPtr session_alloc(kf_session &) { not_built("create session"); }
int64_t session_kv_bytes(const Session &) noexcept { return 0; }
int64_t session_scratch_bytes(const Session &) noexcept { return 0; }
AdapterPtr adapter_upload(kf_adapter &) { not_built("load adapter"); }
HeadsPtr heads_upload(kf_lococo_heads &) { not_built("load LoCoCo heads"); }
void forward(const kf_model &, kf_session *, const Rows &, const ChunkInput &, float *, bool, kf_control *) {
  not_built("run the model");
}
void read_cache(const kf_session &, int32_t, float *, float *, float *, int32_t) { not_built("read cache"); }
void cache_shrink(kf_session &) { not_built("compress the cache"); }
void cache_checkpoint(kf_session &) { not_built("run the model"); }
void cache_restore(kf_session &) { not_built("roll the cache back"); }

}  // namespace kf::cuda

#endif  // KVFOLD_HAVE_CUDA

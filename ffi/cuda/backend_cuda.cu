// backend_cuda.cu — the CUDA backend behind kf::Backend (ffi/src/backend.h): the core's calls
// translated to the device functions of cuda_backend.h. Built only with nvcc; the registry
// (ffi/src/backend.cpp) lists it when KVFOLD_HAVE_CUDA is defined.
#include "../src/model.h"
#include "cuda_common.cuh"

namespace kf::cuda {

namespace {

class CudaBackend final : public Backend {
 public:
  int32_t kind() const override { return KF_BACKEND_CUDA; }
  int32_t device_count() const noexcept override { return cuda::device_count(); }
  std::string blas_library() const override { return blas_probe(); }

  void engine_open(kf_engine &e, int32_t device, int64_t budget_bytes) const override {
    e.state = cuda::engine_open(device, budget_bytes, e.name);
  }
  double measure_read_bandwidth(kf_engine &e, int64_t bytes, int32_t repeats, kf_control *ctl) const override {
    return measure_copy_bandwidth(dev(e), bytes, repeats, ctl);
  }
  double measure_matmul_rate(kf_engine &e, int32_t m, int32_t n, int32_t k, int32_t repeats,
                             kf_control *ctl) const override {
    return cuda::measure_matmul_rate(dev(e), m, n, k, repeats, ctl);
  }

  DType weight_dtype(DType want, int32_t requested) const override {
    // No device kernels read llama.cpp's blocks yet (a later GPU issue): refuse before any work.
    if (dtype_quantized(want))
      raise(KF_ERR_UNSUPPORTED, "cannot load model: the cuda backend has no kernels for %s weights yet (%s); load "
            "with weight_dtype f16 or bf16, or use the cpu backend", dtype_name(want),
            requested == KF_DTYPE_AUTO ? "what auto picks for this file" : "as asked");
    if (want != DType::F32) return want;
    // The device kernels read 16-bit weights (tensor cores, half the bytes per decoded token): an f32
    // file is converted to bf16 (same exponent range, so no overflow); asking for f32 is refused.
    if (requested != KF_DTYPE_AUTO)
      raise(KF_ERR_UNSUPPORTED, "cannot load model: the cuda backend holds weights in f16 or bf16, not f32; load with "
            "weight_dtype auto, f16 or bf16");
    return DType::BF16;
  }
  void model_upload(kf_model &m) const override { m.device = cuda::model_upload(m); }
  void adapter_upload(kf_adapter &a) const override { a.device = cuda::adapter_upload(a); }
  void heads_upload(kf_lococo_heads &h) const override { h.device = cuda::heads_upload(h); }

  void session_alloc(kf_session &s, const kf_session_params &p, int32_t capacity) const override {
    // Slots, scores, scratch and their budget checks live on the device; the host keeps the cache's
    // counters and policy and the row table forward fills.
    cache_init(s.cache, *s.model, p, capacity, false);
    const size_t B = size_t(s.n_batch);
    s.ws.rows = s.n_batch;
    s.ws.row_session.assign(B, nullptr);
    s.ws.row_pos.assign(B, 0);
    s.ws.row_slot.assign(B, 0);
    s.ws.row_mix.assign(B, nullptr);
    s.device = cuda::session_alloc(s);
  }
  int64_t session_kv_bytes(const kf_session &s) const override { return cuda::session_kv_bytes(dev(s)); }
  int64_t session_device_scratch_bytes(const kf_session &s) const override {
    return session_scratch_bytes(dev(s));
  }

  void batch_workspace(Workspace &ws, const kf_model &, int32_t rows, int32_t, bool, int32_t) const override {
    // The row table only: the scratch is the model's own on the device (forward grows it).
    ws.rows = rows;
    ws.row_session.assign(size_t(rows), nullptr);
    ws.row_pos.assign(size_t(rows), 0);
    ws.row_slot.assign(size_t(rows), 0);
    ws.row_mix.assign(size_t(rows), nullptr);
  }

  void forward(const kf_model &m, Workspace &ws, int32_t n, kf_session *session, const ChunkInput &in, float *logits,
               bool all_logits, kf_control *ctl) const override {
    Rows rows;
    rows.n = n;
    rows.session = ws.row_session.data();
    rows.pos = ws.row_pos.data();
    rows.slot = ws.row_slot.data();
    rows.mix = ws.row_mix.data();
    cuda::forward(m, session, rows, in, logits, all_logits, ctl);
  }

  void cache_checkpoint(kf_session &s) const override {
    if (s.cache.compressing()) cuda::cache_checkpoint(s);
  }
  void cache_restore(kf_session &s) const override {
    if (s.cache.compressing()) cuda::cache_restore(s);
  }
  void cache_shrink(kf_session &s) const override { cuda::cache_shrink(s); }
  void read_cache(const kf_session &s, int32_t layer, float *keys, float *values, float *scores,
                  int32_t n_slots) const override {
    cuda::read_cache(s, layer, keys, values, scores, n_slots);
  }
};

}  // namespace

}  // namespace kf::cuda

namespace kf {

const Backend &backend_cuda() {
  static const cuda::CudaBackend backend;
  return backend;
}

}  // namespace kf

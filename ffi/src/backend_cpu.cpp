// backend_cpu.cpp — the CPU backend (backend.h): weights stay where model_load bound them, caches and
// scratch are host vectors, and the forward is forward_rows (forward_cpu.cpp) on the engine's pool.
#include <algorithm>
#include <chrono>
#include <vector>

#include "backend.h"
#include "cpu_features.h"
#include "cpu_ops.h"
#include "model.h"

namespace kf {

namespace {

class CpuBackend final : public Backend {
 public:
  int32_t kind() const override { return KF_BACKEND_CPU; }
  int32_t device_count() const noexcept override { return 1; }
  std::string blas_library() const override { return ""; }

  void engine_open(kf_engine &e, int32_t, int64_t) const override {
    std::string isa;
#ifdef __AVX2__
    isa += "avx2";
#endif
#ifdef __FMA__
    isa += isa.empty() ? "fma" : "+fma";
#endif
#ifdef __F16C__
    isa += isa.empty() ? "f16c" : "+f16c";
#endif
    // The build's ISA, then the kernels chosen at run time (cpu_features.h).
    e.name = "cpu (" + (isa.empty() ? std::string("scalar") : isa) + "; kernels " + cpu_kernels_name() + ")";
  }

  double measure_read_bandwidth(kf_engine &e, int64_t bytes, int32_t repeats, kf_control *ctl) const override {
    return kf::measure_read_bandwidth(*e.pool, bytes, repeats, ctl);
  }

  double measure_matmul_rate(kf_engine &e, int32_t m, int32_t n, int32_t k, int32_t repeats,
                             kf_control *ctl) const override {
    // x: [m, k] f32 (the CPU matmul's activations); W: [n, k] bf16; y: [m, n]. Random, never zeros.
    std::vector<float> x(size_t(m) * size_t(k)), y(size_t(m) * size_t(n));
    std::vector<uint16_t> w(size_t(n) * size_t(k));
    uint32_t h = 12345;
    for (float &v : x) v = float((h = h * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f;
    for (uint16_t &v : w) v = f32_to_bf16(float((h = h * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f);
    double best = 0;
    progress_start(ctl, repeats);
    for (int32_t r = 0; r <= repeats; r++) {  // the first pass warms up
      check_cancel(ctl, "measure matmul rate");
      const auto t0 = std::chrono::steady_clock::now();
      matmul(*e.pool, x.data(), w.data(), DType::BF16, y.data(), m, k, n, nullptr);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (r > 0 && s > 0) best = std::max(best, 2.0 * m * double(n) * k / s / 1e12);
      if (ctl && r > 0) progress_set(ctl, r);
    }
    return best;
  }

  DType weight_dtype(DType want, int32_t) const override { return want; }
  void model_upload(kf_model &) const override {}
  void adapter_upload(kf_adapter &) const override {}
  void heads_upload(kf_lococo_heads &) const override {}

  void session_alloc(kf_session &s, const kf_session_params &p, int32_t capacity) const override {
    const kf_model &m = *s.model;
    const ModelConfig &c = m.cfg;
    const size_t kv_dim = size_t(c.n_kv_heads) * size_t(c.head_dim);
    // Refuse what cannot fit before touching it (see available_memory_bytes).
    const double kv_bytes = 2.0 * c.n_layers * double(capacity) * double(kv_dim) * sizeof(float);
    const double scratch_bytes = Workspace::estimate_bytes(m, s.n_batch, capacity) + 2.0 * 4 * c.vocab_size;
    const double available = available_memory_bytes();
    if (available > 0 && kv_bytes + scratch_bytes > 0.9 * available) {
      raise(KF_ERR_OUT_OF_MEMORY,
            "cannot create session: %d KV slots per layer need %.2f GiB of KV cache and %.2f GiB of scratch, but only "
            "%.2f GiB of memory is available; lower the context size",
            capacity, kv_bytes / 1073741824.0, scratch_bytes / 1073741824.0, available / 1073741824.0);
    }
    cache_init(s.cache, m, p, capacity);
    s.ws.init(m, s.n_batch, capacity, s.cache.needs_scores());
  }

  int64_t session_kv_bytes(const kf_session &s) const override { return s.cache.bytes(); }
  int64_t session_device_scratch_bytes(const kf_session &) const override { return 0; }

  void batch_workspace(Workspace &ws, const kf_model &m, int32_t rows, int32_t max_ctx, bool with_scores,
                       int32_t max_rank) const override {
    ws.init(m, rows, max_ctx, with_scores);
    ws.reserve_lora(max_rank);
  }

  void forward(const kf_model &m, Workspace &ws, int32_t rows, kf_session *, const ChunkInput &in, float *logits,
               bool all_logits, kf_control *ctl) const override {
    forward_rows(ws, m, rows, in, logits, all_logits, ctl);
  }

  // The host cache is the whole cache: kv_cache.cpp's checkpoint and restore (run by the session
  // layer for every backend) already cover it.
  void cache_checkpoint(kf_session &) const override {}
  void cache_restore(kf_session &) const override {}

  void cache_shrink(kf_session &s) const override {
    cache_save_slots(s.cache);
    kf::cache_shrink(s.cache, *s.model->engine->pool);
  }

  void read_cache(const kf_session &s, int32_t layer, float *keys, float *values, float *scores,
                  int32_t n_slots) const override {
    const KvCache &c = s.cache;
    const int64_t kv = int64_t(n_slots) * c.n_kv * c.head_dim;
    if (keys) std::copy_n(c.k[size_t(layer)].begin(), kv, keys);
    if (values) std::copy_n(c.v[size_t(layer)].begin(), kv, values);
    if (scores) std::copy_n(c.score[size_t(layer)].begin(), int64_t(n_slots) * c.n_kv, scores);
  }
};

}  // namespace

const Backend &backend_cpu() {
  static const CpuBackend cpu;
  return cpu;
}

}  // namespace kf

// api.cpp — the C ABI: argument checks, exception-to-status translation, ownership rules.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <new>
#include <thread>

#include "api_guard.h"
#include "cpu_ops.h"
#include "model.h"
#include "sampler.h"

#ifndef KVFOLD_VERSION
#define KVFOLD_VERSION "0.1.0"
#endif

namespace {

using kf::api::g_last_error;
using kf::api::guarded;
using kf::api::report;

int hardware_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : int(n);
}

void copy_name(char *dst, size_t cap, const std::string &src) {
  std::snprintf(dst, cap, "%s", src.c_str());
}

}  // namespace

extern "C" {

const char *kf_last_error(void) { return g_last_error.c_str(); }

const char *kf_status_name(int32_t status) {
  switch (status) {
  case KF_OK: return "KF_OK";
  case KF_ERR_INVALID_ARGUMENT: return "KF_ERR_INVALID_ARGUMENT";
  case KF_ERR_IO: return "KF_ERR_IO";
  case KF_ERR_FORMAT: return "KF_ERR_FORMAT";
  case KF_ERR_UNSUPPORTED: return "KF_ERR_UNSUPPORTED";
  case KF_ERR_OUT_OF_MEMORY: return "KF_ERR_OUT_OF_MEMORY";
  case KF_ERR_CANCELLED: return "KF_ERR_CANCELLED";
  case KF_ERR_INVALID_STATE: return "KF_ERR_INVALID_STATE";
  case KF_ERR_BACKEND: return "KF_ERR_BACKEND";
  case KF_ERR_INTERNAL: return "KF_ERR_INTERNAL";
  }
  return "KF_ERR_UNKNOWN";
}

int32_t kf_abi_version(void) { return KF_ABI_VERSION; }
const char *kf_version(void) { return KVFOLD_VERSION; }

size_t kf_struct_size(const char *name) {
  if (!name) return 0;
  const std::string n(name);
  if (n == "kf_control") return sizeof(kf_control);
  if (n == "kf_engine_params") return sizeof(kf_engine_params);
  if (n == "kf_engine_info") return sizeof(kf_engine_info);
  if (n == "kf_model_params") return sizeof(kf_model_params);
  if (n == "kf_model_info") return sizeof(kf_model_info);
  if (n == "kf_session_params") return sizeof(kf_session_params);
  if (n == "kf_session_info") return sizeof(kf_session_info);
  if (n == "kf_sampler_params") return sizeof(kf_sampler_params);
  if (n == "kf_adapter_info") return sizeof(kf_adapter_info);
  if (n == "kf_lococo_heads_info") return sizeof(kf_lococo_heads_info);
  if (n == "kf_lora_train_params") return sizeof(kf_lora_train_params);
  if (n == "kf_trainer_info") return sizeof(kf_trainer_info);
  if (n == "kf_train_step_info") return sizeof(kf_train_step_info);
  if (n == "kf_lococo_train_params") return sizeof(kf_lococo_train_params);
  return 0;
}

int32_t kf_backend_built(int32_t kind) {
  if (kind == KF_BACKEND_CPU) return 1;
#ifdef KVFOLD_HAVE_CUDA
  if (kind == KF_BACKEND_CUDA) return 1;
#endif
  return 0;
}

int32_t kf_backend_device_count(int32_t kind) {
  if (kind == KF_BACKEND_CPU) return 1;
  if (kind == KF_BACKEND_CUDA) return kf::cuda::device_count();
  return 0;
}

kf_status kf_backend_blas_library(int32_t kind, char *out, int32_t cap) {
  return guarded("probe the BLAS library", [&] {
    KF_REQUIRE(out && cap > 0, "probe the BLAS library", "out is NULL or cap %d is not positive", cap);
    out[0] = 0;
    KF_REQUIRE(kind == KF_BACKEND_CPU || kind == KF_BACKEND_CUDA, "probe the BLAS library",
               "backend %d is not one of 1 (cpu), 2 (cuda)", kind);
    if (kind == KF_BACKEND_CPU) return;
    std::snprintf(out, size_t(cap), "%s", kf::cuda::blas_probe().c_str());
  });
}

// ---- engine ----

kf_engine_params kf_engine_default_params(void) {
  kf_engine_params p{};
  p.backend = KF_BACKEND_AUTO;
  p.n_threads = 0;
  p.device = 0;
  p.memory_mib = 0;
  return p;
}

kf_status kf_engine_open(const kf_engine_params *params, kf_engine **out) {
  if (out) *out = nullptr;
  return guarded("open engine", [&] {
    KF_REQUIRE(out, "open engine", "out is NULL");
    const kf_engine_params p = params ? *params : kf_engine_default_params();
    KF_REQUIRE(p.backend >= KF_BACKEND_AUTO && p.backend <= KF_BACKEND_CUDA, "open engine",
               "backend %d is not one of 0 (auto), 1 (cpu), 2 (cuda)", p.backend);
    KF_REQUIRE(p.n_threads >= 0 && p.n_threads <= 1024, "open engine", "n_threads %d is outside [0, 1024]",
               p.n_threads);
    KF_REQUIRE(p.device >= 0, "open engine", "device %d is negative", p.device);
    KF_REQUIRE(p.memory_mib >= 0, "open engine", "memory_mib %d is negative", p.memory_mib);
    if (p.backend == KF_BACKEND_CUDA && !kf_backend_built(KF_BACKEND_CUDA))
      kf::raise(KF_ERR_UNSUPPORTED, "cannot open engine: the cuda backend is not built into this library (it is built "
                "when nvcc is on PATH at build time, unless KVFOLD_CUDA=0)");
    // AUTO takes the GPU only when one is there to take; every error of an explicit CUDA request surfaces.
    const bool use_cuda = p.backend == KF_BACKEND_CUDA ||
                          (p.backend == KF_BACKEND_AUTO && kf_backend_built(KF_BACKEND_CUDA) &&
                           kf::cuda::device_count() > p.device);
    auto e = std::make_unique<kf_engine>();
    e->backend = KF_BACKEND_CPU;
    const int n = p.n_threads > 0 ? p.n_threads : hardware_threads();
    e->pool = std::make_unique<kf::ThreadPool>(n);
    if (use_cuda) {
      e->cuda = kf::cuda::engine_open(p.device, int64_t(p.memory_mib) << 20, e->name);
      e->backend = KF_BACKEND_CUDA;
      *out = e.release();
      return;
    }
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
    e->name = "cpu (" + (isa.empty() ? std::string("scalar") : isa) + ")";
    *out = e.release();
  });
}

kf_status kf_engine_free(kf_engine *engine) {
  return guarded("free engine", [&] {
    if (!engine) return;
    if (engine->n_models.load() > 0)
      kf::raise(KF_ERR_INVALID_STATE, "cannot free engine: %d model(s) of it are still alive", engine->n_models.load());
    delete engine;
  });
}

kf_status kf_engine_get_info(const kf_engine *engine, kf_engine_info *out) {
  return guarded("get engine info", [&] {
    KF_REQUIRE(engine && out, "get engine info", "engine or out is NULL");
    *out = kf_engine_info{};
    out->backend = engine->backend;
    out->n_threads = engine->pool->size();
    copy_name(out->name, sizeof out->name, engine->name);
  });
}

kf_status kf_engine_measure_read_bandwidth(kf_engine *engine, int64_t bytes, int32_t repeats, double *gbytes_per_s) {
  return guarded("measure read bandwidth", [&] {
    KF_REQUIRE(engine && gbytes_per_s, "measure read bandwidth", "engine or gbytes_per_s is NULL");
    KF_REQUIRE(bytes >= (1 << 20) && bytes <= (int64_t(1) << 36), "measure read bandwidth",
               "bytes %lld is outside [1 MiB, 64 GiB]", (long long)bytes);
    KF_REQUIRE(repeats >= 1 && repeats <= 1000, "measure read bandwidth", "repeats %d is outside [1, 1000]", repeats);
    std::lock_guard<std::mutex> lock(engine->pool_mutex);
    *gbytes_per_s = engine->cuda ? kf::cuda::measure_copy_bandwidth(*engine->cuda, bytes, repeats)
                                 : kf::measure_read_bandwidth(*engine->pool, bytes, repeats);
  });
}

kf_status kf_engine_measure_matmul_rate(kf_engine *engine, int32_t m, int32_t n, int32_t k, int32_t repeats,
                                        double *tflops) {
  return guarded("measure matmul rate", [&] {
    KF_REQUIRE(engine && tflops, "measure matmul rate", "engine or tflops is NULL");
    KF_REQUIRE(m >= 1 && m <= 65536 && n >= 1 && n <= 65536 && k >= 1 && k <= 65536, "measure matmul rate",
               "m %d, n %d, k %d must each be in [1, 65536]", m, n, k);
    KF_REQUIRE(repeats >= 1 && repeats <= 1000, "measure matmul rate", "repeats %d is outside [1, 1000]", repeats);
    std::lock_guard<std::mutex> lock(engine->pool_mutex);
    if (engine->cuda) {
      *tflops = kf::cuda::measure_matmul_rate(*engine->cuda, m, n, k, repeats);
      return;
    }
    // x: [m, k] f32 (the CPU matmul's activations); W: [n, k] bf16; y: [m, n]. Random, never zeros.
    std::vector<float> x(size_t(m) * size_t(k)), y(size_t(m) * size_t(n));
    std::vector<uint16_t> w(size_t(n) * size_t(k));
    uint32_t h = 12345;
    for (float &v : x) v = float((h = h * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f;
    for (uint16_t &v : w) v = kf::f32_to_bf16(float((h = h * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f);
    double best = 0;
    for (int32_t r = 0; r <= repeats; r++) {  // the first pass warms up
      const auto t0 = std::chrono::steady_clock::now();
      kf::matmul(*engine->pool, x.data(), w.data(), kf::DType::BF16, y.data(), m, k, n, nullptr);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (r > 0 && s > 0) best = std::max(best, 2.0 * m * double(n) * k / s / 1e12);
    }
    *tflops = best;
  });
}

// ---- model ----

kf_model_params kf_model_default_params(void) {
  kf_model_params p{};
  p.control = nullptr;
  p.weight_dtype = KF_DTYPE_AUTO;
  p.use_mmap = 0;  // owned memory: a file truncated underneath cannot fault (see kvfold.h)
  return p;
}

kf_status kf_model_load(kf_engine *engine, const char *dir, const kf_model_params *params, kf_model **out) {
  if (out) *out = nullptr;
  return report(params ? params->control : nullptr, guarded("load model", [&] {
    KF_REQUIRE(engine, "load model", "engine is NULL");
    KF_REQUIRE(dir && *dir, "load model", "the model folder path is empty");
    KF_REQUIRE(out, "load model", "out is NULL");
    const kf_model_params p = params ? *params : kf_model_default_params();
    auto m = std::make_unique<kf_model>();
    m->engine = engine;
    {
      std::lock_guard<std::mutex> lock(engine->pool_mutex);
      kf::model_load(*m, dir, p);
      if (engine->cuda) m->cuda = kf::cuda::model_upload(*m);  // on failure m's destructor frees the device side
    }
    engine->n_models++;
    *out = m.release();
  }));
}

kf_status kf_model_free(kf_model *model) {
  return guarded("free model", [&] {
    if (!model) return;
    if (model->n_sessions.load() > 0)
      kf::raise(KF_ERR_INVALID_STATE, "cannot free model: %d session(s) of it are still alive",
                model->n_sessions.load());
    if (model->n_adapters.load() > 0)
      kf::raise(KF_ERR_INVALID_STATE, "cannot free model: %d adapter(s) of it are still loaded",
                model->n_adapters.load());
    if (model->n_lococo_heads.load() > 0)
      kf::raise(KF_ERR_INVALID_STATE, "cannot free model: %d set(s) of LoCoCo heads of it are still loaded",
                model->n_lococo_heads.load());
    model->engine->n_models--;
    delete model;
  });
}

kf_status kf_model_get_info(const kf_model *model, kf_model_info *out) {
  return guarded("get model info", [&] {
    KF_REQUIRE(model && out, "get model info", "model or out is NULL");
    const kf::ModelConfig &c = model->cfg;
    *out = kf_model_info{};
    out->vocab_size = c.vocab_size;
    out->hidden_size = c.hidden_size;
    out->intermediate_size = c.intermediate_size;
    out->n_layers = c.n_layers;
    out->n_heads = c.n_heads;
    out->n_kv_heads = c.n_kv_heads;
    out->head_dim = c.head_dim;
    out->max_position_embeddings = c.max_position_embeddings;
    out->weight_dtype = model->weight_dtype;
    out->tied_embeddings = model->lm_head.data == model->embed.data ? 1 : 0;
    out->n_params = model->n_params;
    out->weight_bytes = model->weight_bytes;
    copy_name(out->model_type, sizeof out->model_type, c.model_type);
  });
}

// ---- session ----

kf_session_params kf_session_default_params(void) {
  kf_session_params p{};
  p.n_ctx = 0;
  p.n_batch = 256;
  p.cache_kind = KF_CACHE_FULL;
  p.sinks = 4;  // StreamingLLM's attention sinks
  return p;
}

kf_status kf_session_create(kf_model *model, const kf_session_params *params, kf_session **out) {
  if (out) *out = nullptr;
  return guarded("create session", [&] {
    KF_REQUIRE(model && out, "create session", "model or out is NULL");
    const kf_session_params p = params ? *params : kf_session_default_params();
    auto s = std::make_unique<kf_session>();
    kf::session_init(*s, *model, p);
    model->n_sessions++;
    if (s->cache.heads) const_cast<kf_lococo_heads *>(s->cache.heads)->n_users++;
    *out = s.release();
  });
}

kf_status kf_session_free(kf_session *session) {
  return guarded("free session", [&] {
    if (!session) return;
    if (session->adapter) session->adapter->n_users--;
    if (session->cache.heads) const_cast<kf_lococo_heads *>(session->cache.heads)->n_users--;
    session->model->n_sessions--;
    delete session;
  });
}

kf_status kf_session_reset(kf_session *session) {
  return guarded("reset session", [&] {
    KF_REQUIRE(session, "reset session", "session is NULL");
    session->n_past = 0;
    session->has_logits = false;
    kf::cache_clear(session->cache);
  });
}

int32_t kf_session_n_past(const kf_session *session) { return session ? session->n_past : 0; }

kf_status kf_session_truncate(kf_session *session, int32_t n) {
  return guarded("truncate session", [&] {
    KF_REQUIRE(session, "truncate session", "session is NULL");
    KF_REQUIRE(n >= 0 && n <= session->n_past, "truncate session", "n %d is outside [0, n_past %d]", n,
               session->n_past);
    if (n < session->n_past && session->cache.compressions > 0)
      kf::raise(KF_ERR_INVALID_STATE, "cannot truncate session: its %s cache was compressed, so positions no longer "
                "have slots of their own; reset it instead", session->cache.kind == KF_CACHE_LOCOCO ? "lococo"
                : session->cache.kind == KF_CACHE_H2O ? "h2o" : "streaming");
    if (n < session->n_past) session->has_logits = false;  // the kept logits belonged to a dropped position
    session->n_past = n;
    session->cache.n_slots = n;  // uncompressed: slot = position
  });
}

namespace {

void check_ids(const kf_session &s, const int32_t *ids, int32_t n, const char *what) {
  const int32_t vocab = s.model->cfg.vocab_size;
  for (int32_t i = 0; i < n; i++)
    if (ids[i] < 0 || ids[i] >= vocab)
      kf::raise(KF_ERR_INVALID_ARGUMENT, "cannot %s: token id %d at index %d is outside [0, %d)", what, ids[i], i,
                vocab);
  if (int64_t(s.n_past) + n > s.n_ctx)
    kf::raise(KF_ERR_INVALID_STATE, "cannot %s: %d position(s) in the cache plus %d new exceed n_ctx %d", what,
              s.n_past, n, s.n_ctx);
}

// Puts a session's cache back as it was when constructed unless commit() is called: the slot count
// and scores, and the slots themselves when a shrink ran in between.
class CacheUndo {
 public:
  explicit CacheUndo(kf_session &s) : s_(s) {
    kf::cache_checkpoint(s.cache);
    if (s.cuda && s.cache.compressing()) kf::cuda::cache_checkpoint(s);
  }
  ~CacheUndo() {
    if (committed_) return;
    kf::cache_restore(s_.cache);
    if (s_.cuda && s_.cache.compressing()) {
      // A destructor lets nothing escape; the call that failed reports its own error.
      try {
        kf::cuda::cache_restore(s_);
      } catch (...) {
      }
    }
  }
  // Shrinks the cache when its policy says so, first saving what the shrink overwrites (a cuda session
  // saves and shrinks its device slots).
  void shrink_if_needed() {
    if (!kf::cache_over_limit(s_.cache)) return;
    if (s_.cuda) {
      kf::cuda::cache_shrink(s_);
      return;
    }
    kf::cache_save_slots(s_.cache);
    kf::cache_shrink(s_.cache, *s_.model->engine->pool);
  }
  void commit() { committed_ = true; }
  CacheUndo(const CacheUndo &) = delete;
  CacheUndo &operator=(const CacheUndo &) = delete;

 private:
  kf_session &s_;
  bool committed_ = false;
};

// One forward of T rows at position pos0 after the cache policy had its turn; appends T slots.
void forward_segment(kf_session &s, CacheUndo &undo, const kf::ChunkInput &in, int32_t T, int32_t pos0,
                     float *logits, kf_control *control) {
  undo.shrink_if_needed();
  kf::forward_chunk(s, in, T, pos0, logits, control);
  s.cache.n_slots += T;
  s.cache.peak = std::max(s.cache.peak, s.cache.n_slots);
}

// Runs n inputs at the next positions in chunks of n_batch (a compressing cache's segment B);
// input_at(off) gives the chunk starting at input off. Commits only after every chunk succeeded, so a
// failure leaves nothing half-added.
extern "C++" template <class InputAt>
void run_chunks(kf_session &s, int32_t n, float *logits, kf_control *control, InputAt &&input_at) {
  if (control) {
    control->total = n;
    control->done = 0;
  }
  const int64_t V = s.model->cfg.vocab_size;
  const int32_t start = s.n_past;
  std::lock_guard<std::mutex> lock(s.model->engine->pool_mutex);
  CacheUndo undo(s);
  s.has_logits = false;
  for (int32_t off = 0; off < n; off += s.n_batch) {
    const int32_t T = std::min(s.n_batch, n - off);
    forward_segment(s, undo, input_at(off), T, start + off, logits ? logits + int64_t(off) * V : nullptr, control);
    if (control) control->done = off + T;
  }
  undo.commit();
  s.n_past = start + n;
  s.has_logits = true;
}

}  // namespace

kf_status kf_session_prefill(kf_session *session, const int32_t *ids, int32_t n_ids, float *logits,
                             kf_control *control) {
  return report(control, guarded("prefill", [&] {
    KF_REQUIRE(session, "prefill", "session is NULL");
    KF_REQUIRE(ids && n_ids > 0, "prefill", "no token ids given (ids NULL or n_ids %d)", n_ids);
    check_ids(*session, ids, n_ids, "prefill");
    run_chunks(*session, n_ids, logits, control, [&](int32_t off) {
      kf::ChunkInput in;
      in.tokens = ids + off;
      return in;
    });
  }));
}

kf_status kf_session_prefill_embeddings(kf_session *session, const void *embeddings, int32_t dtype, int32_t n_rows,
                                        int32_t hidden, float *logits, float *hidden_out, kf_control *control) {
  return report(control, guarded("prefill embeddings", [&] {
    KF_REQUIRE(session, "prefill embeddings", "session is NULL");
    KF_REQUIRE(embeddings && n_rows > 0, "prefill embeddings", "the embedding block is empty (NULL or %d rows)", n_rows);
    KF_REQUIRE(dtype >= KF_DTYPE_F32 && dtype <= KF_DTYPE_BF16, "prefill embeddings",
               "dtype %d is not one of 0 (f32), 1 (f16), 2 (bf16)", dtype);
    const int32_t H = session->model->cfg.hidden_size;
    KF_REQUIRE(hidden == H, "prefill embeddings", "rows have %d values, the model's hidden size is %d", hidden, H);
    if (int64_t(session->n_past) + n_rows > session->n_ctx)
      kf::raise(KF_ERR_INVALID_STATE,
                "cannot prefill embeddings: %d position(s) in the cache plus %d new exceed n_ctx %d", session->n_past,
                n_rows, session->n_ctx);
    // Every value must be finite: one NaN would silently poison every later position.
    const kf::DType dt = kf::DType(dtype);
    const size_t row_bytes = size_t(H) * kf::dtype_size(dt);
    std::vector<float> row(static_cast<size_t>(H));
    for (int32_t r = 0; r < n_rows; r++) {
      kf::convert_row_to_f32(static_cast<const uint8_t *>(embeddings) + size_t(r) * row_bytes, dt, row.data(), H);
      for (int32_t i = 0; i < H; i++)
        if (!std::isfinite(row[size_t(i)]))
          kf::raise(KF_ERR_INVALID_ARGUMENT, "cannot prefill embeddings: row %d, column %d is %s", r, i,
                    std::isnan(row[size_t(i)]) ? "NaN" : "infinite");
    }
    run_chunks(*session, n_rows, logits, control, [&](int32_t off) {
      kf::ChunkInput in;
      in.embeds = static_cast<const uint8_t *>(embeddings) + size_t(off) * row_bytes;
      in.embeds_dtype = dt;
      in.hidden_out = hidden_out ? hidden_out + int64_t(off) * H : nullptr;
      return in;
    });
  }));
}

kf_status kf_session_decode(kf_session *session, int32_t id, kf_control *control) {
  return report(control, guarded("decode", [&] {
    KF_REQUIRE(session, "decode", "session is NULL");
    check_ids(*session, &id, 1, "decode");
    std::lock_guard<std::mutex> lock(session->model->engine->pool_mutex);
    // The session's logits are replaced only on success: decode into scratch rows first.
    const bool had = session->has_logits;
    std::vector<float> &keep = session->logits_saved;
    if (had) keep.assign(session->logits.begin(), session->logits.end());
    try {
      CacheUndo undo(*session);
      kf::ChunkInput in;
      in.tokens = &id;
      forward_segment(*session, undo, in, 1, session->n_past, nullptr, control);
      undo.commit();
    } catch (...) {
      if (had) std::copy(keep.begin(), keep.end(), session->logits.begin());
      throw;
    }
    session->n_past += 1;
    session->has_logits = true;
  }));
}

kf_status kf_session_get_logits(const kf_session *session, float *out, int32_t n) {
  return guarded("get logits", [&] {
    KF_REQUIRE(session && out, "get logits", "session or out is NULL");
    KF_REQUIRE(n == session->model->cfg.vocab_size, "get logits", "buffer holds %d floats, vocab_size is %d", n,
               session->model->cfg.vocab_size);
    if (!session->has_logits)
      kf::raise(KF_ERR_INVALID_STATE, "cannot get logits: nothing has been run in this session yet");
    std::copy(session->logits.begin(), session->logits.end(), out);
  });
}

kf_status kf_session_get_info(const kf_session *session, kf_session_info *out) {
  return guarded("get session info", [&] {
    KF_REQUIRE(session && out, "get session info", "session or out is NULL");
    *out = kf_session_info{};
    out->n_past = session->n_past;
    out->n_ctx = session->n_ctx;
    const kf::KvCache &c = session->cache;
    out->cache_kind = c.kind;
    out->has_logits = session->has_logits ? 1 : 0;
    out->kv_bytes = session->cuda ? kf::cuda::session_kv_bytes(*session->cuda) : c.bytes();
    out->kv_slots = c.capacity;
    const auto sz = [](const std::vector<float> &v) { return int64_t(v.capacity()) * 4; };
    out->scratch_bytes = session->ws.bytes() + c.scratch_bytes() + sz(session->logits) + sz(session->logits_saved);
    if (session->cuda) out->scratch_bytes += kf::cuda::session_scratch_bytes(*session->cuda);
    out->kv_slots_used = c.n_slots;
    out->kv_slots_peak = c.peak;
    out->compressions = c.compressions;
    out->compress_ns = c.compress_ns;
    out->slots = c.kind == KF_CACHE_STREAMING ? c.sinks + c.window : c.slots;
    out->segment = session->n_batch;
  });
}

kf_status kf_session_read_cache(const kf_session *session, int32_t layer, float *keys, float *values, float *scores,
                                int32_t n_slots) {
  return guarded("read cache", [&] {
    KF_REQUIRE(session, "read cache", "session is NULL");
    const kf::KvCache &c = session->cache;
    KF_REQUIRE(layer >= 0 && layer < c.n_layers, "read cache", "layer %d is outside [0, %d)", layer, c.n_layers);
    KF_REQUIRE(n_slots == c.n_slots, "read cache", "n_slots %d is not the %d slots in use", n_slots, c.n_slots);
    KF_REQUIRE(!scores || c.needs_scores(), "read cache", "this cache keeps no slot scores (only lococo and h2o do)");
    if (session->cuda) {
      kf::cuda::read_cache(*session, layer, keys, values, scores, n_slots);
      return;
    }
    const int64_t kv = int64_t(n_slots) * c.n_kv * c.head_dim;
    if (keys) std::copy_n(c.k[size_t(layer)].begin(), kv, keys);
    if (values) std::copy_n(c.v[size_t(layer)].begin(), kv, values);
    if (scores) std::copy_n(c.score[size_t(layer)].begin(), int64_t(n_slots) * c.n_kv, scores);
  });
}

// ---- adapters ----

kf_status kf_adapter_load(kf_model *model, const char *dir, kf_control *control, kf_adapter **out) {
  if (out) *out = nullptr;
  return report(control, guarded("load adapter", [&] {
    KF_REQUIRE(model && out, "load adapter", "model or out is NULL");
    KF_REQUIRE(dir && *dir, "load adapter", "the adapter folder path is empty");
    auto a = std::make_unique<kf_adapter>();
    kf::adapter_load(*a, *model, dir, control);
    if (model->cuda) a->cuda = kf::cuda::adapter_upload(*a);
    model->n_adapters++;
    *out = a.release();
  }));
}

kf_status kf_adapter_free(kf_adapter *adapter) {
  return guarded("free adapter", [&] {
    if (!adapter) return;
    if (adapter->n_users.load() > 0)
      kf::raise(KF_ERR_INVALID_STATE, "cannot free adapter: %d session(s) are using it", adapter->n_users.load());
    adapter->model->n_adapters--;
    delete adapter;
  });
}

kf_status kf_adapter_get_info(const kf_adapter *adapter, kf_adapter_info *out) {
  return guarded("get adapter info", [&] {
    KF_REQUIRE(adapter && out, "get adapter info", "adapter or out is NULL");
    *out = kf_adapter_info{};
    out->max_rank = adapter->max_rank;
    out->proj_mask = adapter->proj_mask;
    out->n_users = adapter->n_users.load();
    out->rslora = adapter->rslora ? 1 : 0;
    out->alpha = adapter->alpha;
    out->n_params = adapter->n_params;
    out->bytes = adapter->bytes;
  });
}

kf_status kf_session_set_adapter(kf_session *session, kf_adapter *adapter) {
  return guarded("set adapter", [&] {
    KF_REQUIRE(session, "set adapter", "session is NULL");
    if (adapter && adapter->model != session->model)
      kf::raise(KF_ERR_INVALID_ARGUMENT, "cannot set adapter: it was loaded for another model than the session's");
    if (adapter == session->adapter) return;
    if (adapter) session->ws.reserve_lora(adapter->max_rank);  // may throw: nothing changed yet
    if (session->adapter) session->adapter->n_users--;
    if (adapter) adapter->n_users++;
    session->adapter = adapter;
  });
}

kf_status kf_batch_decode(kf_session *const *sessions, const int32_t *ids, int32_t n, kf_control *control) {
  return report(control, guarded("batch decode", [&] {
    KF_REQUIRE(sessions && ids, "batch decode", "sessions or ids is NULL");
    KF_REQUIRE(n >= 1 && n <= 4096, "batch decode", "n %d is outside [1, 4096]", n);
    kf_model *m = nullptr;
    int32_t max_ctx = 0, max_rank = 0;
    bool any_scores = false;
    for (int32_t i = 0; i < n; i++) {
      kf_session *s = sessions[i];
      KF_REQUIRE(s, "batch decode", "session %d is NULL", i);
      if (!m) m = s->model;
      KF_REQUIRE(s->model == m, "batch decode", "session %d belongs to another model than session 0", i);
      for (int32_t j = 0; j < i; j++) KF_REQUIRE(sessions[j] != s, "batch decode", "session %d appears twice (at %d)", i, j);
      check_ids(*s, ids + i, 1, "batch decode");
      max_ctx = std::max(max_ctx, s->cache.capacity);
      any_scores = any_scores || s->cache.needs_scores();
      if (s->adapter) max_rank = std::max(max_rank, s->adapter->max_rank);
    }
    // Rows grouped by adapter (first appearance order), so each adapter's rows form one segment.
    std::vector<int32_t> order;
    order.reserve(size_t(n));
    std::vector<bool> taken(size_t(n), false);
    for (int32_t i = 0; i < n; i++) {
      if (taken[size_t(i)]) continue;
      for (int32_t j = i; j < n; j++)
        if (!taken[size_t(j)] && sessions[j]->adapter == sessions[i]->adapter) {
          order.push_back(j);
          taken[size_t(j)] = true;
        }
    }
    std::lock_guard<std::mutex> lock(m->engine->pool_mutex);
    // Each cache policy has its turn first; every session is put back if the step fails.
    std::vector<std::unique_ptr<CacheUndo>> undo;
    for (int32_t i = 0; i < n; i++) {
      undo.push_back(std::make_unique<CacheUndo>(*sessions[i]));
      undo.back()->shrink_if_needed();
    }
    // The row table only, for a cuda model: its scratch and slots are on the device.
    kf::Workspace ws;
    if (m->cuda) {
      ws.rows = n;
      ws.row_session.assign(size_t(n), nullptr);
      ws.row_pos.assign(size_t(n), 0);
      ws.row_slot.assign(size_t(n), 0);
      ws.row_adapter.assign(size_t(n), nullptr);
    } else {
      ws.init(*m, n, max_ctx, any_scores);
      ws.reserve_lora(max_rank);
    }
    std::vector<int32_t> row_ids(static_cast<size_t>(n));
    for (int32_t r = 0; r < n; r++) {
      kf_session *s = sessions[order[size_t(r)]];
      ws.row_session[size_t(r)] = s;
      ws.row_pos[size_t(r)] = s->n_past;
      ws.row_slot[size_t(r)] = s->cache.n_slots;
      ws.row_adapter[size_t(r)] = s->adapter;
      row_ids[size_t(r)] = ids[order[size_t(r)]];
    }
    const int64_t V = m->cfg.vocab_size;
    std::vector<float> logits(size_t(n) * size_t(V));
    if (control) {
      control->total = n;
      control->done = 0;
    }
    kf::ChunkInput in;
    in.tokens = row_ids.data();
    if (m->cuda) {
      kf::cuda::Rows rows;
      rows.n = n;
      rows.session = ws.row_session.data();
      rows.pos = ws.row_pos.data();
      rows.slot = ws.row_slot.data();
      rows.adapter = ws.row_adapter.data();
      kf::cuda::forward(*m, nullptr, rows, in, logits.data(), true, control);
    } else {
      kf::forward_rows(ws, *m, n, in, logits.data(), true, control);
    }
    // Commit only after the whole step succeeded.
    for (int32_t r = 0; r < n; r++) {
      kf_session *s = ws.row_session[size_t(r)];
      std::copy_n(logits.begin() + int64_t(r) * V, V, s->logits.begin());
      s->n_past += 1;
      s->has_logits = true;
      s->cache.n_slots += 1;
      s->cache.peak = std::max(s->cache.peak, s->cache.n_slots);
    }
    for (auto &u : undo) u->commit();
    if (control) control->done = n;
  }));
}

// ---- LoCoCo heads ----

kf_status kf_lococo_heads_load(kf_model *model, const char *path, kf_lococo_heads **out) {
  if (out) *out = nullptr;
  return guarded("load LoCoCo heads", [&] {
    KF_REQUIRE(model && out, "load LoCoCo heads", "model or out is NULL");
    KF_REQUIRE(path && *path, "load LoCoCo heads", "the heads file path is empty");
    auto h = std::make_unique<kf_lococo_heads>();
    kf::lococo_heads_load(*h, *model, path);
    if (model->cuda) h->cuda = kf::cuda::heads_upload(*h);
    model->n_lococo_heads++;
    *out = h.release();
  });
}

kf_status kf_lococo_heads_free(kf_lococo_heads *heads) {
  return guarded("free LoCoCo heads", [&] {
    if (!heads) return;
    if (heads->n_users.load() > 0)
      kf::raise(KF_ERR_INVALID_STATE, "cannot free LoCoCo heads: %d session(s) are using them", heads->n_users.load());
    heads->model->n_lococo_heads--;
    delete heads;
  });
}

kf_status kf_lococo_heads_get_info(const kf_lococo_heads *heads, kf_lococo_heads_info *out) {
  return guarded("get LoCoCo heads info", [&] {
    KF_REQUIRE(heads && out, "get LoCoCo heads info", "heads or out is NULL");
    *out = kf_lococo_heads_info{};
    out->slots = heads->slots;
    out->fused_slots = heads->fused;
    out->kernel = heads->kernel;
    out->segment = heads->segment;
    out->keep_rate = heads->keep_rate;
    out->n_layers = int32_t(heads->layers.size());
    out->head_dim = heads->head_dim;
    out->n_users = heads->n_users.load();
    out->bytes = heads->bytes;
  });
}

// ---- sampler ----

kf_sampler_params kf_sampler_default_params(void) {
  kf_sampler_params p{};
  p.seed = 0x6b76666f6c64ull;
  p.temperature = 0.8f;
  p.top_p = 0.95f;
  p.top_k = 40;
  p.repetition_penalty = 1.0f;
  p.repeat_last_n = 64;
  p.min_p = 0.0f;
  return p;
}

kf_status kf_sampler_create(const kf_sampler_params *params, kf_sampler **out) {
  if (out) *out = nullptr;
  return guarded("create sampler", [&] {
    KF_REQUIRE(out, "create sampler", "out is NULL");
    const kf_sampler_params p = params ? *params : kf_sampler_default_params();
    *out = new kf_sampler(p);
  });
}

kf_status kf_sampler_free(kf_sampler *sampler) {
  return guarded("free sampler", [&] { delete sampler; });
}

kf_status kf_sampler_accept(kf_sampler *sampler, const int32_t *ids, int32_t n_ids) {
  return guarded("accept tokens", [&] {
    KF_REQUIRE(sampler, "accept tokens", "sampler is NULL");
    KF_REQUIRE(n_ids >= 0 && (ids || n_ids == 0), "accept tokens", "ids NULL or n_ids %d negative", n_ids);
    sampler->history.insert(sampler->history.end(), ids, ids + n_ids);
  });
}

kf_status kf_sampler_sample(kf_sampler *sampler, const kf_session *session, int32_t *out) {
  return guarded("sample", [&] {
    KF_REQUIRE(sampler && session && out, "sample", "sampler, session or out is NULL");
    if (!session->has_logits) kf::raise(KF_ERR_INVALID_STATE, "cannot sample: the session has no logits yet");
    *out = sampler->sample(session->logits.data(), session->model->cfg.vocab_size);
  });
}

kf_status kf_sampler_sample_logits(kf_sampler *sampler, const float *logits, int32_t n_vocab, int32_t *out) {
  return guarded("sample", [&] {
    KF_REQUIRE(sampler && logits && out, "sample", "sampler, logits or out is NULL");
    *out = sampler->sample(logits, n_vocab);
  });
}

}  // extern "C"

// api.cpp — the C ABI of errors, versions, backends, engines, models and samplers: argument checks,
// exception-to-status translation, ownership rules (sessions, adapters, heads: api_session.cpp).
#if defined(__linux__)
#include <sched.h>
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

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

// The cores this process may run on (taskset, cgroup cpusets), not every core of the machine: a pool
// larger than its CPU set spins threads against each other.
int hardware_threads() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
#endif
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
  if (n == "kf_generate_params") return sizeof(kf_generate_params);
  if (n == "kf_adapter_info") return sizeof(kf_adapter_info);
  if (n == "kf_lococo_heads_info") return sizeof(kf_lococo_heads_info);
  if (n == "kf_lora_train_params") return sizeof(kf_lora_train_params);
  if (n == "kf_lora_trainer_info") return sizeof(kf_lora_trainer_info);
  if (n == "kf_train_step_info") return sizeof(kf_train_step_info);
  if (n == "kf_lococo_train_params") return sizeof(kf_lococo_train_params);
  if (n == "kf_model_train_params") return sizeof(kf_model_train_params);
  if (n == "kf_model_trainer_info") return sizeof(kf_model_trainer_info);
  return 0;
}

int32_t kf_backend_built(int32_t kind) { return kf::backend_find(kind) ? 1 : 0; }

int32_t kf_backend_device_count(int32_t kind) {
  const kf::Backend *b = kf::backend_find(kind);
  return b ? b->device_count() : 0;
}

kf_status kf_backend_blas_library(int32_t kind, char *out, int32_t cap) {
  return guarded("probe the BLAS library", [&] {
    KF_REQUIRE(out && cap > 0, "probe the BLAS library", "out is NULL or cap %d is not positive", cap);
    out[0] = 0;
    KF_REQUIRE(kind == KF_BACKEND_CPU || kind == KF_BACKEND_CUDA, "probe the BLAS library",
               "backend %d is not one of 1 (cpu), 2 (cuda)", kind);
    const kf::Backend *b = kf::backend_find(kind);
    if (!b)
      kf::raise(KF_ERR_UNSUPPORTED, "cannot probe cuBLAS: the cuda backend is not built into this library (rebuild "
                "where nvcc is on PATH, without KVFOLD_CUDA=0)");
    std::snprintf(out, size_t(cap), "%s", b->blas_library().c_str());
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
    const kf::Backend *cuda = kf::backend_find(KF_BACKEND_CUDA);
    if (p.backend == KF_BACKEND_CUDA && !cuda)
      kf::raise(KF_ERR_UNSUPPORTED, "cannot open engine: the cuda backend is not built into this library (it is built "
                "when nvcc is on PATH at build time, unless KVFOLD_CUDA=0)");
    // AUTO takes the GPU only when one is there to take; every error of an explicit CUDA request surfaces.
    const bool use_cuda = p.backend == KF_BACKEND_CUDA ||
                          (p.backend == KF_BACKEND_AUTO && cuda && cuda->device_count() > p.device);
    auto e = std::make_unique<kf_engine>();
    e->backend = use_cuda ? cuda : &kf::backend_cpu();
    const int n = p.n_threads > 0 ? p.n_threads : hardware_threads();
    e->pool = std::make_unique<kf::ThreadPool>(n);
    e->backend->engine_open(*e, p.device, int64_t(p.memory_mib) << 20);
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
    out->backend = engine->backend->kind();
    out->n_threads = engine->pool->size();
    copy_name(out->name, sizeof out->name, engine->name);
  });
}

kf_status kf_engine_measure_read_bandwidth(kf_engine *engine, int64_t bytes, int32_t repeats, double *gbytes_per_s,
                                           kf_control *control) {
  return report(control, guarded("measure read bandwidth", [&] {
    KF_REQUIRE(engine && gbytes_per_s, "measure read bandwidth", "engine or gbytes_per_s is NULL");
    KF_REQUIRE(bytes >= (1 << 20) && bytes <= (int64_t(1) << 36), "measure read bandwidth",
               "bytes %lld is outside [1 MiB, 64 GiB]", (long long)bytes);
    KF_REQUIRE(repeats >= 1 && repeats <= 1000, "measure read bandwidth", "repeats %d is outside [1, 1000]", repeats);
    std::lock_guard<std::mutex> lock(engine->pool_mutex);
    *gbytes_per_s = engine->backend->measure_read_bandwidth(*engine, bytes, repeats, control);
  }));
}

kf_status kf_engine_measure_matmul_rate(kf_engine *engine, int32_t m, int32_t n, int32_t k, int32_t repeats,
                                        double *tflops, kf_control *control) {
  return report(control, guarded("measure matmul rate", [&] {
    KF_REQUIRE(engine && tflops, "measure matmul rate", "engine or tflops is NULL");
    KF_REQUIRE(m >= 1 && m <= 65536 && n >= 1 && n <= 65536 && k >= 1 && k <= 65536, "measure matmul rate",
               "m %d, n %d, k %d must each be in [1, 65536]", m, n, k);
    KF_REQUIRE(repeats >= 1 && repeats <= 1000, "measure matmul rate", "repeats %d is outside [1, 1000]", repeats);
    std::lock_guard<std::mutex> lock(engine->pool_mutex);
    *tflops = engine->backend->measure_matmul_rate(*engine, m, n, k, repeats, control);
  }));
}

// ---- model ----

kf_model_params kf_model_default_params(void) {
  kf_model_params p{};
  p.weight_dtype = KF_DTYPE_AUTO;
  p.use_mmap = 0;  // owned memory: a file truncated underneath cannot fault (see kvfold.h)
  return p;
}

kf_status kf_model_load(kf_engine *engine, const char *dir, const kf_model_params *params, kf_model **out,
                        kf_control *control) {
  if (out) *out = nullptr;
  return report(control, guarded("load model", [&] {
    KF_REQUIRE(engine, "load model", "engine is NULL");
    KF_REQUIRE(dir && *dir, "load model", "the model folder path is empty");
    KF_REQUIRE(out, "load model", "out is NULL");
    const kf_model_params p = params ? *params : kf_model_default_params();
    auto m = std::make_unique<kf_model>();
    m->engine = engine;
    {
      std::lock_guard<std::mutex> lock(engine->pool_mutex);
      kf::model_load(*m, dir, p, control);
      engine->backend->model_upload(*m);  // on failure m's destructor frees the device side
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

kf_status kf_sampler_sample_batch(kf_sampler *const *samplers, const kf_session *const *sessions, int32_t n,
                                  int32_t *out) {
  return guarded("sample a batch", [&] {
    KF_REQUIRE(n >= 1 && n <= 4096, "sample a batch", "n %d is outside [1, 4096]", n);
    KF_REQUIRE(samplers && sessions && out, "sample a batch", "samplers, sessions or out is NULL");
    for (int32_t i = 0; i < n; i++) {
      KF_REQUIRE(samplers[i] && sessions[i], "sample a batch", "row %d has a NULL sampler or session", i);
      if (!sessions[i]->has_logits)
        kf::raise(KF_ERR_INVALID_STATE, "cannot sample a batch: row %d's session has no logits yet", i);
    }
    // Rows run in parallel, each on its own sampler's scratch and state: a repeat would race.
    std::vector<const kf_sampler *> sorted(samplers, samplers + n);
    std::sort(sorted.begin(), sorted.end());
    KF_REQUIRE(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end(), "sample a batch",
               "a sampler appears in two rows");
    // What each row's sampler was, so that a failing row leaves every sampler as it found it.
    struct Saved {
      uint64_t rng[4];
      size_t history;
    };
    std::vector<Saved> saved(static_cast<size_t>(n));
    for (int32_t i = 0; i < n; i++) {
      std::copy(samplers[i]->rng, samplers[i]->rng + 4, saved[size_t(i)].rng);
      saved[size_t(i)].history = samplers[i]->history.size();
    }
    std::vector<std::exception_ptr> failed(static_cast<size_t>(n));
    auto row = [&](int64_t i, int) {
      try {
        const kf_session &s = *sessions[i];
        out[i] = samplers[i]->sample(s.logits.data(), s.model->cfg.vocab_size);
      } catch (...) {
        failed[size_t(i)] = std::current_exception();  // never out of a worker thread
      }
    };
    // Rows that sort candidates (temperature > 0: ~0.3 ms and up for a 32k vocabulary) go to the
    // engine's pool; greedy rows (~20 µs) are cheaper than waking it. A busy pool (another
    // session's long call) must not stall the caller, who then samples on its own thread.
    int32_t sorting = 0;
    for (int32_t i = 0; i < n; i++) sorting += samplers[i]->params.temperature != 0.0f;
    kf_engine &engine = *sessions[0]->model->engine;
    std::unique_lock<std::mutex> lock(engine.pool_mutex, std::defer_lock);
    if (sorting >= 2 && engine.pool && engine.pool->size() > 1 && lock.try_lock()) engine.pool->parallel_for(n, row);
    else
      for (int32_t i = 0; i < n; i++) row(i, 0);
    for (int32_t i = 0; i < n; i++) {
      if (!failed[size_t(i)]) continue;
      for (int32_t j = 0; j < n; j++) {
        std::copy(saved[size_t(j)].rng, saved[size_t(j)].rng + 4, samplers[j]->rng);
        samplers[j]->history.resize(saved[size_t(j)].history);
      }
      try {
        std::rethrow_exception(failed[size_t(i)]);
      } catch (const kf::Error &e) {
        kf::raise(e.code, "cannot sample a batch: row %d: %s", i, e.what());
      }
    }
  });
}

kf_status kf_sampler_set_allowed(kf_sampler *sampler, const uint8_t *mask, int32_t n_vocab) {
  return guarded("set allowed tokens", [&] {
    KF_REQUIRE(sampler, "set allowed tokens", "sampler is NULL");
    if (!mask) {
      sampler->allowed.clear();
      sampler->allowed_vocab = 0;
      return;
    }
    KF_REQUIRE(n_vocab > 0, "set allowed tokens", "n_vocab %d is not positive", n_vocab);
    sampler->allowed.assign(mask, mask + (size_t(n_vocab) + 7) / 8);
    sampler->allowed_vocab = n_vocab;
  });
}

kf_status kf_sampler_sample_logits(kf_sampler *sampler, const float *logits, int32_t n_vocab, int32_t *out) {
  return guarded("sample", [&] {
    KF_REQUIRE(sampler && logits && out, "sample", "sampler, logits or out is NULL");
    *out = sampler->sample(logits, n_vocab);
  });
}

}  // extern "C"

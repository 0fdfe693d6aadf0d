// api_session.cpp — the C ABI of sessions, adapters, batches and LoCoCo heads: argument checks,
// exception-to-status translation and the in-use counts that keep handles alive; the work itself is
// the session layer's (session.h).
#include <algorithm>
#include <cmath>
#include <memory>

#include "api_guard.h"
#include "cpu_ops.h"
#include "model.h"
#include "session.h"

using kf::api::guarded;
using kf::api::report;

extern "C" {

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
    kf::session_release_adapters(*session);
    if (session->cache.heads) const_cast<kf_lococo_heads *>(session->cache.heads)->n_users--;
    session->model->n_sessions--;
    delete session;
  });
}

kf_status kf_session_reset(kf_session *session) {
  return guarded("reset session", [&] {
    KF_REQUIRE(session, "reset session", "session is NULL");
    kf::session_reset(*session);
  });
}

int32_t kf_session_n_past(const kf_session *session) { return session ? session->n_past : 0; }

kf_status kf_session_truncate(kf_session *session, int32_t n) {
  return guarded("truncate session", [&] {
    KF_REQUIRE(session, "truncate session", "session is NULL");
    KF_REQUIRE(n >= 0 && n <= session->n_past, "truncate session", "n %d is outside [0, n_past %d]", n,
               session->n_past);
    kf::session_truncate(*session, n);
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

}  // namespace

kf_status kf_session_prefill(kf_session *session, const int32_t *ids, int32_t n_ids, float *logits,
                             kf_control *control) {
  return report(control, guarded("prefill", [&] {
    KF_REQUIRE(session, "prefill", "session is NULL");
    KF_REQUIRE(ids && n_ids > 0, "prefill", "no token ids given (ids NULL or n_ids %d)", n_ids);
    check_ids(*session, ids, n_ids, "prefill");
    kf::session_run(*session, n_ids, logits, control, [&](int32_t off) {
      kf::ChunkInput in;
      in.tokens = ids + off;
      return in;
    });
  }));
}

kf_status kf_session_prefill_hidden(kf_session *session, const int32_t *ids, int32_t n_ids, float *logits,
                                    float *hidden_out, kf_control *control) {
  return report(control, guarded("prefill with hidden states", [&] {
    KF_REQUIRE(session, "prefill with hidden states", "session is NULL");
    KF_REQUIRE(ids && n_ids > 0, "prefill with hidden states", "no token ids given (ids NULL or n_ids %d)", n_ids);
    KF_REQUIRE(hidden_out, "prefill with hidden states", "hidden_out is NULL");
    check_ids(*session, ids, n_ids, "prefill with hidden states");
    const int64_t H = session->model->cfg.hidden_size;
    kf::session_run(*session, n_ids, logits, control, [&](int32_t off) {
      kf::ChunkInput in;
      in.tokens = ids + off;
      in.hidden_out = hidden_out + int64_t(off) * H;
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
    kf::session_run(*session, n_rows, logits, control, [&](int32_t off) {
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
    kf::session_decode(*session, id, control);
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
    *out = kf::session_info(*session);
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
    session->model->engine->backend->read_cache(*session, layer, keys, values, scores, n_slots);
  });
}

// ---- adapters ----

kf_status kf_adapter_load(kf_model *model, const char *dir, kf_adapter **out, kf_control *control) {
  if (out) *out = nullptr;
  return report(control, guarded("load adapter", [&] {
    KF_REQUIRE(model && out, "load adapter", "model or out is NULL");
    KF_REQUIRE(dir && *dir, "load adapter", "the adapter folder path is empty");
    auto a = std::make_unique<kf_adapter>();
    kf::adapter_load(*a, *model, dir, control);
    model->engine->backend->adapter_upload(*a);
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
    kf::AdapterMix mix;  // one adapter with weight 1, or none
    if (adapter) {
      mix.n = 1;
      mix.adapter[0] = adapter;
      mix.weight[0] = 1.0f;
    }
    kf::session_set_adapters(*session, mix);
  });
}

kf_status kf_session_set_adapters(kf_session *session, kf_adapter *const *adapters, const float *weights, int32_t n) {
  return guarded("set adapters", [&] {
    KF_REQUIRE(session, "set adapters", "session is NULL");
    KF_REQUIRE(n >= 0 && n <= KF_MAX_ADAPTERS, "set adapters", "n %d is outside [0, %d]", n, KF_MAX_ADAPTERS);
    KF_REQUIRE(n == 0 || (adapters && weights), "set adapters", "adapters or weights is NULL for %d adapters", n);
    kf::AdapterMix mix;
    for (int32_t i = 0; i < n; i++) {
      KF_REQUIRE(adapters[i], "set adapters", "adapter %d of the list is NULL", i);
      if (adapters[i]->model != session->model)
        kf::raise(KF_ERR_INVALID_ARGUMENT,
                  "cannot set adapters: adapter %d was loaded for another model than the session's", i);
      KF_REQUIRE(std::isfinite(weights[i]), "set adapters", "weight %d is %g, not a finite number", i,
                 double(weights[i]));
      mix.adapter[i] = adapters[i];
      mix.weight[i] = weights[i];
    }
    mix.n = n;
    kf::session_set_adapters(*session, mix);
  });
}

kf_status kf_batch_decode(kf_session *const *sessions, const int32_t *ids, int32_t n, kf_control *control) {
  return report(control, guarded("batch decode", [&] {
    KF_REQUIRE(sessions && ids, "batch decode", "sessions or ids is NULL");
    KF_REQUIRE(n >= 1 && n <= 4096, "batch decode", "n %d is outside [1, 4096]", n);
    const kf_model *m = nullptr;
    for (int32_t i = 0; i < n; i++) {
      const kf_session *s = sessions[i];
      KF_REQUIRE(s, "batch decode", "session %d is NULL", i);
      if (!m) m = s->model;
      KF_REQUIRE(s->model == m, "batch decode", "session %d belongs to another model than session 0", i);
      for (int32_t j = 0; j < i; j++) KF_REQUIRE(sessions[j] != s, "batch decode", "session %d appears twice (at %d)", i, j);
      check_ids(*s, ids + i, 1, "batch decode");
    }
    kf::batch_decode(sessions, ids, n, control);
  }));
}

kf_status kf_batch_prefill(kf_session *const *sessions, const int32_t *ids, const int32_t *counts, int32_t n,
                           kf_control *control) {
  return report(control, guarded("batch prefill", [&] {
    KF_REQUIRE(n >= 1 && n <= 4096, "batch prefill", "n %d is outside [1, 4096]", n);
    KF_REQUIRE(sessions && ids && counts, "batch prefill", "sessions, ids or counts is NULL");
    const kf_model *m = nullptr;
    int64_t total = 0;
    for (int32_t i = 0; i < n; i++) {
      const kf_session *s = sessions[i];
      KF_REQUIRE(s, "batch prefill", "session %d is NULL", i);
      if (!m) m = s->model;
      KF_REQUIRE(s->model == m, "batch prefill", "session %d belongs to another model than session 0", i);
      for (int32_t j = 0; j < i; j++) KF_REQUIRE(sessions[j] != s, "batch prefill", "session %d appears twice (at %d)", i, j);
      KF_REQUIRE(counts[i] >= 1, "batch prefill", "count %d of session %d is not positive", counts[i], i);
      if (s->cache.kind != KF_CACHE_FULL)
        kf::raise(KF_ERR_UNSUPPORTED, "cannot batch prefill: session %d has a compressing cache (full caches only)", i);
      check_ids(*s, ids + total, counts[i], "batch prefill");
      total += counts[i];
      KF_REQUIRE(total <= 65536, "batch prefill", "more than 65536 tokens in all");
    }
    if (m->engine->state)
      kf::raise(KF_ERR_UNSUPPORTED, "cannot batch prefill: only the cpu backend runs several sessions' prefill at once");
    kf::batch_prefill(sessions, ids, counts, n, control);
  }));
}

// ---- LoCoCo heads ----

kf_status kf_lococo_heads_load(kf_model *model, const char *path, kf_lococo_heads **out, kf_control *control) {
  if (out) *out = nullptr;
  return report(control, guarded("load LoCoCo heads", [&] {
    KF_REQUIRE(model && out, "load LoCoCo heads", "model or out is NULL");
    KF_REQUIRE(path && *path, "load LoCoCo heads", "the heads file path is empty");
    auto h = std::make_unique<kf_lococo_heads>();
    kf::lococo_heads_load(*h, *model, path, control);
    model->engine->backend->heads_upload(*h);
    model->n_lococo_heads++;
    *out = h.release();
  }));
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

}  // extern "C"

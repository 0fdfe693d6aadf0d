// session.cpp — the session layer (session.h): limits, chunking, rollback and batching over the
// engine's backend.
#include "session.h"

#include <algorithm>
#include <climits>
#include <memory>

#include "backend.h"

namespace kf {

namespace {

const Backend &backend_of(const kf_session &s) { return *s.model->engine->backend; }

}  // namespace

void session_init(kf_session &s, kf_model &m, const kf_session_params &p_in) {
  const ModelConfig &c = m.cfg;
  kf_session_params p = p_in;
  if (p.n_ctx < 0) raise(KF_ERR_INVALID_ARGUMENT, "cannot create session: n_ctx %d is negative", p.n_ctx);
  if (p.n_batch < 1 || p.n_batch > 65536)
    raise(KF_ERR_INVALID_ARGUMENT, "cannot create session: n_batch %d is outside [1, 65536]", p.n_batch);
  if (p.cache_kind < KF_CACHE_FULL || p.cache_kind > KF_CACHE_STREAMING)
    raise(KF_ERR_INVALID_ARGUMENT, "cannot create session: cache kind %d is not one of 0 (full), 1 (lococo), 2 (h2o), "
          "3 (streaming)", p.cache_kind);
  if (p.heads && p.cache_kind != KF_CACHE_LOCOCO)
    raise(KF_ERR_INVALID_ARGUMENT, "cannot create session: LoCoCo heads were given for a cache that is not lococo");
  if (p.slots < 0 || p.segment < 0 || p.sinks < 0 || p.window < 0)
    raise(KF_ERR_INVALID_ARGUMENT, "cannot create session: slots %d, segment %d, sinks %d and window %d must not be "
          "negative", p.slots, p.segment, p.sinks, p.window);
  if (p.segment > 65536)
    raise(KF_ERR_INVALID_ARGUMENT, "cannot create session: segment %d is above 65536", p.segment);
  switch (p.cache_kind) {
  case KF_CACHE_LOCOCO:
    if (!p.heads) raise(KF_ERR_INVALID_ARGUMENT, "cannot create session: a lococo cache needs LoCoCo heads");
    if (p.heads->model != &m)
      raise(KF_ERR_INVALID_ARGUMENT, "cannot create session: the LoCoCo heads were loaded for another model");
    if (p.slots == 0) p.slots = p.heads->slots;
    if (p.segment == 0) p.segment = p.heads->segment;
    // Mc is fixed by the convolution's output channels; another M changes only the heavy hitters.
    if (p.slots < p.heads->fused)
      raise(KF_ERR_INVALID_ARGUMENT, "cannot create session: %d slots are fewer than the %d slots the heads fuse "
            "into (Mc); use at least %d", p.slots, p.heads->fused, p.heads->fused);
    break;
  case KF_CACHE_H2O:
    if (p.slots < 1) raise(KF_ERR_INVALID_ARGUMENT, "cannot create session: an h2o cache needs slots (M) >= 1");
    break;
  case KF_CACHE_STREAMING:
    if (p.window < 1) raise(KF_ERR_INVALID_ARGUMENT, "cannot create session: a streaming cache needs window >= 1");
    break;
  default: break;
  }
  const bool compressing = p.cache_kind != KF_CACHE_FULL;
  if (compressing && p.segment == 0) p.segment = p.n_batch;
  if (compressing && int64_t(p.slots) + p.sinks + p.window + p.segment > (1 << 24))
    raise(KF_ERR_INVALID_ARGUMENT, "cannot create session: slots, window and segment add up past 16777216");
  s.model = &m;
  s.n_ctx = compressing ? (p.n_ctx > 0 ? p.n_ctx : INT32_MAX) : (p.n_ctx > 0 ? p.n_ctx : c.max_position_embeddings);
  if (!compressing && s.n_ctx > (1 << 24))
    raise(KF_ERR_INVALID_ARGUMENT, "cannot create session: n_ctx %d is above 16777216", s.n_ctx);
  s.n_batch = compressing ? p.segment : std::min(p.n_batch, s.n_ctx);
  s.n_past = 0;
  s.has_logits = false;
  p.n_ctx = s.n_ctx;
  backend_of(s).session_alloc(s, p, cache_capacity(p, s.n_batch));
  s.logits.assign(size_t(c.vocab_size), 0.0f);
  s.logits_saved.assign(size_t(c.vocab_size), 0.0f);
}

namespace {

// Puts a session's cache back as it was when constructed unless commit() is called: the slot count
// and scores, and the slots themselves when a shrink ran in between.
class CacheUndo {
 public:
  explicit CacheUndo(kf_session &s) : s_(s) {
    cache_checkpoint(s.cache);
    backend_of(s).cache_checkpoint(s);
  }
  ~CacheUndo() {
    if (committed_) return;
    cache_restore(s_.cache);
    // A destructor lets nothing escape; the call that failed reports its own error.
    try {
      backend_of(s_).cache_restore(s_);
    } catch (...) {
    }
  }
  // Shrinks the cache when its policy says so (the backend first saves what the shrink overwrites).
  void shrink_if_needed() {
    if (cache_over_limit(s_.cache)) backend_of(s_).cache_shrink(s_);
  }
  void commit() { committed_ = true; }
  CacheUndo(const CacheUndo &) = delete;
  CacheUndo &operator=(const CacheUndo &) = delete;

 private:
  kf_session &s_;
  bool committed_ = false;
};

// Appends n slots to a cache after a forward wrote them.
void cache_append(KvCache &c, int32_t n) {
  c.n_slots += n;
  c.peak = std::max(c.peak, c.n_slots);
}

// One forward of T rows at positions pos0.. with the session's adapters, after the cache policy had its
// turn; appends T slots. logits_out: NULL or [T, vocab]; the session's logits get the last row's.
void forward_segment(kf_session &s, CacheUndo &undo, const ChunkInput &in, int32_t T, int32_t pos0,
                     float *logits_out, kf_control *ctl) {
  undo.shrink_if_needed();
  Workspace &ws = s.ws;
  for (int32_t t = 0; t < T; t++) {
    ws.row_session[size_t(t)] = &s;
    ws.row_pos[size_t(t)] = pos0 + t;
    ws.row_slot[size_t(t)] = s.cache.n_slots + t;
    ws.row_mix[size_t(t)] = s.adapters.n > 0 ? &s.adapters : nullptr;
  }
  const int64_t V = s.model->cfg.vocab_size;
  const Backend &b = backend_of(s);
  if (logits_out) {
    b.forward(*s.model, ws, T, &s, in, logits_out, true, ctl);
    std::copy(logits_out + (T - 1) * V, logits_out + T * V, s.logits.begin());
  } else {
    b.forward(*s.model, ws, T, &s, in, s.logits.data(), false, ctl);
  }
  cache_append(s.cache, T);
}

}  // namespace

void session_run(kf_session &s, int32_t n, float *logits, kf_control *ctl, const ChunkSource &input_at) {
  progress_start(ctl, n);
  const int64_t V = s.model->cfg.vocab_size;
  const int32_t start = s.n_past;
  std::lock_guard<std::mutex> lock(s.model->engine->pool_mutex);
  CacheUndo undo(s);
  s.has_logits = false;
  for (int32_t off = 0; off < n; off += s.n_batch) {
    const int32_t T = std::min(s.n_batch, n - off);
    forward_segment(s, undo, input_at(off), T, start + off, logits ? logits + int64_t(off) * V : nullptr, ctl);
    progress_set(ctl, off + T);
  }
  undo.commit();
  s.n_past = start + n;
  s.has_logits = true;
}

void session_decode(kf_session &s, int32_t id, kf_control *ctl) {
  std::lock_guard<std::mutex> lock(s.model->engine->pool_mutex);
  // The session's logits are replaced only on success: decode into scratch rows first.
  const bool had = s.has_logits;
  std::vector<float> &keep = s.logits_saved;
  if (had) keep.assign(s.logits.begin(), s.logits.end());
  try {
    CacheUndo undo(s);
    ChunkInput in;
    in.tokens = &id;
    forward_segment(s, undo, in, 1, s.n_past, nullptr, ctl);
    undo.commit();
  } catch (...) {
    if (had) std::copy(keep.begin(), keep.end(), s.logits.begin());
    throw;
  }
  s.n_past += 1;
  s.has_logits = true;
}
// Session indices grouped by adapter composition, in first-appearance order (equal adapters and
// weights group together whichever session holds them), so a composition's rows form one run.
static std::vector<int32_t> order_by_composition(kf_session *const *sessions, int32_t n) {
  std::vector<int32_t> order;
  order.reserve(size_t(n));
  std::vector<bool> taken(size_t(n), false);
  for (int32_t i = 0; i < n; i++) {
    if (taken[size_t(i)]) continue;
    for (int32_t j = i; j < n; j++)
      if (!taken[size_t(j)] && sessions[j]->adapters.same_as(sessions[i]->adapters)) {
        order.push_back(j);
        taken[size_t(j)] = true;
      }
  }
  return order;
}


void batch_decode(kf_session *const *sessions, const int32_t *ids, int32_t n, kf_control *ctl) {
  kf_model *m = sessions[0]->model;
  int32_t max_ctx = 0, max_rank = 0;
  bool any_scores = false;
  for (int32_t i = 0; i < n; i++) {
    const kf_session *s = sessions[i];
    max_ctx = std::max(max_ctx, s->cache.capacity);
    any_scores = any_scores || s->cache.needs_scores();
    max_rank = std::max(max_rank, s->adapters.rank_sum());
  }
  // Rows grouped by composition, so each composition's rows form one segment per term.
  const std::vector<int32_t> order = order_by_composition(sessions, n);
  const Backend &b = *m->engine->backend;
  std::lock_guard<std::mutex> lock(m->engine->pool_mutex);
  // Each cache policy has its turn first; every session is put back if the step fails.
  std::vector<std::unique_ptr<CacheUndo>> undo;
  for (int32_t i = 0; i < n; i++) {
    undo.push_back(std::make_unique<CacheUndo>(*sessions[i]));
    undo.back()->shrink_if_needed();
  }
  Workspace ws;
  b.batch_workspace(ws, *m, n, max_ctx, any_scores, max_rank);
  std::vector<int32_t> row_ids(static_cast<size_t>(n));
  for (int32_t r = 0; r < n; r++) {
    kf_session *s = sessions[order[size_t(r)]];
    ws.row_session[size_t(r)] = s;
    ws.row_pos[size_t(r)] = s->n_past;
    ws.row_slot[size_t(r)] = s->cache.n_slots;
    ws.row_mix[size_t(r)] = s->adapters.n > 0 ? &s->adapters : nullptr;
    row_ids[size_t(r)] = ids[order[size_t(r)]];
  }
  const int64_t V = m->cfg.vocab_size;
  std::vector<float> logits(size_t(n) * size_t(V));
  progress_start(ctl, n);
  ChunkInput in;
  in.tokens = row_ids.data();
  b.forward(*m, ws, n, nullptr, in, logits.data(), true, ctl);
  // Commit only after the whole step succeeded.
  for (int32_t r = 0; r < n; r++) {
    kf_session *s = ws.row_session[size_t(r)];
    std::copy_n(logits.begin() + int64_t(r) * V, V, s->logits.begin());
    s->n_past += 1;
    s->has_logits = true;
    cache_append(s->cache, 1);
  }
  for (auto &u : undo) u->commit();
  progress_set(ctl, n);
}

void batch_prefill(kf_session *const *sessions, const int32_t *ids, const int32_t *counts, int32_t n,
                   kf_control *ctl) {
  kf_model *m = sessions[0]->model;
  int32_t max_ctx = 0, max_rank = 0;
  std::vector<int64_t> first(static_cast<size_t>(n));
  int64_t rows = 0;
  for (int32_t i = 0; i < n; i++) {
    first[size_t(i)] = rows;
    rows += counts[i];
    max_ctx = std::max(max_ctx, sessions[i]->cache.capacity);
    max_rank = std::max(max_rank, sessions[i]->adapters.rank_sum());
  }
  // Sessions grouped by composition (first appearance order), each session's rows kept together:
  // the attention takes a session's consecutive rows as one causal chunk, LoRA a mix's rows as runs.
  const std::vector<int32_t> order = order_by_composition(sessions, n);
  const Backend &b = *m->engine->backend;
  std::lock_guard<std::mutex> lock(m->engine->pool_mutex);
  Workspace ws;
  b.batch_workspace(ws, *m, int32_t(rows), max_ctx, false, max_rank);
  std::vector<int32_t> row_ids(static_cast<size_t>(rows)), last_rows(static_cast<size_t>(n));
  int64_t r = 0;
  for (int32_t k = 0; k < n; k++) {
    kf_session *s = sessions[order[size_t(k)]];
    for (int32_t j = 0; j < counts[order[size_t(k)]]; j++, r++) {
      ws.row_session[size_t(r)] = s;
      ws.row_pos[size_t(r)] = s->n_past + j;
      ws.row_slot[size_t(r)] = s->cache.n_slots + j;
      ws.row_mix[size_t(r)] = s->adapters.n > 0 ? &s->adapters : nullptr;
      row_ids[size_t(r)] = ids[first[size_t(order[size_t(k)])] + j];
    }
    last_rows[size_t(k)] = int32_t(r - 1);
  }
  const int64_t V = m->cfg.vocab_size;
  std::vector<float> logits(size_t(n) * size_t(V));
  progress_start(ctl, rows);
  ChunkInput in;
  in.tokens = row_ids.data();
  in.logit_rows = last_rows.data();
  in.n_logit_rows = n;
  b.forward(*m, ws, int32_t(rows), nullptr, in, logits.data(), false, ctl);
  // Commit only after the whole pass succeeded (slots past n_slots written by a failed one are unused).
  for (int32_t k = 0; k < n; k++) {
    kf_session *s = sessions[order[size_t(k)]];
    const int32_t c = counts[order[size_t(k)]];
    std::copy_n(logits.begin() + int64_t(k) * V, V, s->logits.begin());
    s->n_past += c;
    s->has_logits = true;
    cache_append(s->cache, c);
  }
  progress_set(ctl, rows);
}

void session_reset(kf_session &s) {
  s.n_past = 0;
  s.has_logits = false;
  cache_clear(s.cache);
}

void session_truncate(kf_session &s, int32_t n) {
  if (n < s.n_past && s.cache.compressions > 0)
    raise(KF_ERR_INVALID_STATE, "cannot truncate session: its %s cache was compressed, so positions no longer have "
          "slots of their own; reset it instead", s.cache.kind == KF_CACHE_LOCOCO ? "lococo"
          : s.cache.kind == KF_CACHE_H2O ? "h2o" : "streaming");
  if (n < s.n_past) s.has_logits = false;  // the kept logits belonged to a dropped position
  s.n_past = n;
  s.cache.n_slots = n;  // uncompressed: slot = position
}

void session_set_adapters(kf_session &s, const AdapterMix &next) {
  s.ws.reserve_lora(next.rank_sum());  // may throw: nothing changed yet
  // n_users counts sessions: each distinct adapter once, however many terms name it.
  for (int32_t i = 0; i < next.n; i++)
    if (!next.repeats(i)) next.adapter[i]->n_users++;
  for (int32_t i = 0; i < s.adapters.n; i++)
    if (!s.adapters.repeats(i)) s.adapters.adapter[i]->n_users--;
  s.adapters = next;
}

void session_release_adapters(kf_session &s) { session_set_adapters(s, AdapterMix{}); }

kf_session_info session_info(const kf_session &s) {
  kf_session_info out{};
  const Backend &b = backend_of(s);
  out.n_past = s.n_past;
  out.n_ctx = s.n_ctx;
  const KvCache &c = s.cache;
  out.cache_kind = c.kind;
  out.has_logits = s.has_logits ? 1 : 0;
  out.kv_bytes = b.session_kv_bytes(s);
  out.kv_slots = c.capacity;
  const auto sz = [](const std::vector<float> &v) { return int64_t(v.capacity()) * 4; };
  out.scratch_bytes = s.ws.bytes() + c.scratch_bytes() + sz(s.logits) + sz(s.logits_saved) +
                      b.session_device_scratch_bytes(s);
  out.kv_slots_used = c.n_slots;
  out.kv_slots_peak = c.peak;
  out.compressions = c.compressions;
  out.compress_ns = c.compress_ns;
  out.slots = c.kind == KF_CACHE_STREAMING ? c.sinks + c.window : c.slots;
  out.segment = s.n_batch;
  return out;
}

}  // namespace kf

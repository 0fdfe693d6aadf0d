// session.h — the session layer: what a session does with its backend, between the C ABI (api*.cpp,
// which validates arguments and translates errors) and the backend (backend.h, which runs rows).
// It owns the session's limits (session_init), chunking (session_run), rollback (a failed call leaves
// the session as it found it) and batching (batch_decode: one row per session, rows grouped by adapter composition).
#pragma once

#include <functional>

#include "model.h"

namespace kf {

// Validates the parameters and allocates every buffer of a session through its engine's backend.
// Throws kf::Error / std::bad_alloc.
void session_init(kf_session &s, kf_model &m, const kf_session_params &p);

// The input rows of the chunk starting at input `off` of a call.
using ChunkSource = std::function<ChunkInput(int32_t off)>;

// Runs n inputs at the next positions in chunks of n_batch (a compressing cache's segment B).
// logits: NULL or [n, vocab]. Commits (n_past, logits) only after every chunk succeeded, so a failure
// leaves nothing half-added. The caller checked that n positions fit in n_ctx.
void session_run(kf_session &s, int32_t n, float *logits, kf_control *ctl, const ChunkSource &input_at);

// One token at the next position; the session's logits are replaced only on success.
void session_decode(kf_session &s, int32_t id, kf_control *ctl);

// One token for each of n distinct sessions of one model, in one forward; all or nothing.
void batch_decode(kf_session *const *sessions, const int32_t *ids, int32_t n, kf_control *ctl);
// Several sessions' prefill chunks in one forward pass (full caches, CPU): session i takes counts[i]
// ids from ids (concatenated in session order) at its next positions; each keeps its last row's logits.
void batch_prefill(kf_session *const *sessions, const int32_t *ids, const int32_t *counts, int32_t n, kf_control *ctl);

void session_reset(kf_session &s);
// Keeps the first n positions (n <= n_past); refused once a compressing cache was compressed.
void session_truncate(kf_session &s, int32_t n);
// Makes `mix` (n = 0: none) the adapters of every later call; nothing changes when it fails. The
// caller validated the terms (kf_session_set_adapters).
void session_set_adapters(kf_session &s, const AdapterMix &mix);
// Drops the session's adapters (their user counts), as a session being freed does. Never throws.
void session_release_adapters(kf_session &s);
kf_session_info session_info(const kf_session &s);

}  // namespace kf

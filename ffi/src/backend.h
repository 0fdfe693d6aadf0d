// backend.h — the one interface between the engine core (ffi/src) and a compute backend, in the spirit
// of ggml's backend table: everything that differs between running on the CPU and on a device goes
// through a kf::Backend, which the engine picks once at kf_engine_open.
//
// Implementations: backend_cpu.cpp (always built) and ffi/cuda/backend_cuda.cu (when nvcc built it).
// The core never includes a backend's own headers; a backend may include core headers (this one,
// model.h). When a backend is not built, the registry (backend.cpp) simply has no entry for it.
//
// Ownership: what a backend keeps for a handle (its device, a model's uploaded weights, a session's
// device cache) is a BackendState held by that handle (kf_engine::state, kf_model::device, ...), so a
// failure part-way through a create/load frees whatever the backend had allocated. Every function
// throws kf::Error (never aborts).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "common.h"

struct kf_engine;
struct kf_model;
struct kf_session;
struct kf_adapter;
struct kf_lococo_heads;

namespace kf {

struct AdapterMix;
struct ChunkInput;
struct Workspace;

// A backend's own data for one handle; the backend casts it back to its own type.
struct BackendState {
  virtual ~BackendState() = default;
};
using BackendStatePtr = std::unique_ptr<BackendState>;

class Backend {
 public:
  virtual ~Backend() = default;
  virtual int32_t kind() const = 0;  // KF_BACKEND_CPU, KF_BACKEND_CUDA

  // ---- the backend itself ----
  // Usable devices: never throws, never touches a device's memory.
  virtual int32_t device_count() const noexcept = 0;
  // The BLAS library an engine opened now would use ("" when none). Needs no device.
  virtual std::string blas_library() const = 0;

  // ---- engine ----
  // Opens device `device` for e (its thread pool exists) with at most budget_bytes of device memory
  // (0 = no limit); sets e.name and e.state.
  virtual void engine_open(kf_engine &e, int32_t device, int64_t budget_bytes) const = 0;
  // The ceilings of kvfold.h's kf_engine_measure_*; ctl (may be NULL) is polled between passes,
  // which it counts as progress.
  virtual double measure_read_bandwidth(kf_engine &e, int64_t bytes, int32_t repeats, kf_control *ctl) const = 0;
  virtual double measure_matmul_rate(kf_engine &e, int32_t m, int32_t n, int32_t k, int32_t repeats,
                                     kf_control *ctl) const = 0;

  // ---- model, adapters, heads ----
  // The dtype weights are held in, given the one model_load would choose (`want`) and what the caller
  // asked for (KF_DTYPE_AUTO or a dtype). Throws KF_ERR_UNSUPPORTED for a dtype the backend cannot hold.
  virtual DType weight_dtype(DType want, int32_t requested) const = 0;
  // After model_load bound the weights on the host: copies them where the backend runs (m.device).
  virtual void model_upload(kf_model &m) const = 0;
  // After adapter_load / lococo_heads_load: the same for an adapter (a.device) and heads (h.device).
  virtual void adapter_upload(kf_adapter &a) const = 0;
  virtual void heads_upload(kf_lococo_heads &h) const = 0;

  // ---- sessions ----
  // Allocates the cache slots and scratch of a session whose limits session_init settled (s.n_ctx,
  // s.n_batch; `capacity` slots per layer, p with n_ctx resolved): s.cache, s.ws (at least its row
  // table for s.n_batch rows), s.device.
  virtual void session_alloc(kf_session &s, const kf_session_params &p, int32_t capacity) const = 0;
  // Bytes of KV cache, and of scratch held outside the host structures, of a session.
  virtual int64_t session_kv_bytes(const kf_session &s) const = 0;
  virtual int64_t session_device_scratch_bytes(const kf_session &s) const = 0;
  // Sizes ws for one batch step of `rows` rows (one per session) over caches of up to max_ctx slots;
  // max_rank: the largest rank sum of the rows' compositions (LoRA scratch columns).
  virtual void batch_workspace(Workspace &ws, const kf_model &m, int32_t rows, int32_t max_ctx, bool with_scores,
                               int32_t max_rank) const = 0;

  // ---- the forward ----
  // Runs `rows` rows (<= ws.rows) of ws's row table: row r at position ws.row_pos[r], writing its key
  // and value at slot ws.row_slot[r] of ws.row_session[r]'s cache and attending to that cache's slots
  // [0, slot], with the adapters of ws.row_mix[r] (or none). Rows of one session at consecutive positions must be
  // contiguous (a chunk), rows of one composition should be (LoRA runs segments); rows of different sessions never see
  // each other. logits: [rows, vocab] when all_logits, else [vocab] for the last row. session: the one
  // session all rows belong to (its scratch may be used), or NULL for a batch of sessions.
  virtual void forward(const kf_model &m, Workspace &ws, int32_t rows, kf_session *session, const ChunkInput &in,
                       float *logits, bool all_logits, kf_control *ctl) const = 0;

  // ---- the cache (the host counters in s.cache are the session layer's) ----
  // Start of a call: keep what a failed call must put back. Failed call: put it back.
  virtual void cache_checkpoint(kf_session &s) const = 0;
  virtual void cache_restore(kf_session &s) const = 0;
  // Shrinks per the cache's policy (cache_over_limit was true), first saving the slots it overwrites
  // once per call; updates n_slots, compressions, compress_ns.
  virtual void cache_shrink(kf_session &s) const = 0;
  // Copies n_slots slots of one layer to the host as f32 ([n_slots, n_kv, head_dim]; scores
  // [n_slots, n_kv]; any may be NULL).
  virtual void read_cache(const kf_session &s, int32_t layer, float *keys, float *values, float *scores,
                          int32_t n_slots) const = 0;
};

// The registry: the backend of a kind, or NULL when it is not built into this library.
const Backend *backend_find(int32_t kind);

// The implementations the registry knows (backend_cuda is defined only when nvcc built ffi/cuda).
const Backend &backend_cpu();
#ifdef KVFOLD_HAVE_CUDA
const Backend &backend_cuda();
#endif

}  // namespace kf

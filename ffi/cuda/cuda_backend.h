// cuda_backend.h — the CUDA backend's functions, as backend_cuda.cu puts them behind kf::Backend
// (ffi/src/backend.h). Plain C++: no CUDA header is included here. Built only with nvcc (ffi/cuda/*.cu,
// KVFOLD_HAVE_CUDA defined for the C++ side); the core (ffi/src) never includes this file.
//
// Ownership: each device object is a kf::BackendState held by the handle that owns it (kf_engine::state,
// kf_model::device, kf_session::device, kf_adapter::device, kf_lococo_heads::device), so a failure
// part-way through any create/load frees whatever the device side had allocated; each one's destructor
// makes its device current first. Every function throws kf::Error (never aborts); CUDA failures become
// KF_ERR_BACKEND / KF_ERR_OUT_OF_MEMORY with the call named.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "../include/kvfold.h"
#include "../src/backend.h"

// kf_engine, kf_model, ... and kf::ChunkInput are declared by backend.h.

namespace kf::cuda {

struct Engine;   // a device, its stream, cuBLAS handle (when loaded) and memory budget
struct Model;    // the weights on the device
struct Session;  // a session's device KV cache and scratch
struct Adapter;  // a LoRA adapter's pairs on the device
struct Heads;    // LoCoCo heads' convolutions on the device

using EnginePtr = std::unique_ptr<Engine>;

// The device object of a handle (it must have one).
Engine &dev(const kf_engine &e);
Model &dev(const kf_model &m);
Session &dev(const kf_session &s);
Adapter &dev(const kf_adapter &a);
Heads &dev(const kf_lococo_heads &h);

// Usable CUDA devices: 0 when no driver is installed, the driver is too old or no device is visible. Never throws, never touches a device's memory.
int32_t device_count() noexcept;

// Opens device `device` (index among the visible ones) with at most `budget_bytes` of device memory
// for this engine's weights, caches and scratch (0 = limited only by the device). Loads cuBLAS when it
// can (cublas_loader.h). Writes a description such as "cuda:0 (NVIDIA H100 80GB HBM3, sm_90, 79.1 GiB,
// cublas libcublas.so.13)" to `name`. Throws KF_ERR_BACKEND (no driver, driver older than the
// runtime, no such device), KF_ERR_UNSUPPORTED (compute capability below 8.0) or KF_ERR_INVALID_ARGUMENT.
EnginePtr engine_open(int32_t device, int64_t budget_bytes, std::string &name);

// The cuBLAS library an engine opened now would use: its path, or "" when none loads (own kernels).
// Needs no device. Throws KF_ERR_BACKEND when $KVFOLD_CUBLAS names a library that cannot be loaded
// or lacks a needed symbol.
std::string blas_probe();

// Device-to-device copy bandwidth, (bytes read + bytes written) / time, best of `repeats`, in GB/s.
// ctl (may be NULL), here and below: cancel between passes, progress in passes.
double measure_copy_bandwidth(Engine &e, int64_t bytes, int32_t repeats, kf_control *ctl);
// Rate of the forward's own matrix product y[m, n] = x[m, k] · W[n, k]^T on random bf16 operands with
// f32 output (cuBLAS when loaded, else the built-in kernels), best of `repeats`, in TFLOP/s.
double measure_matmul_rate(Engine &e, int32_t m, int32_t n, int32_t k, int32_t repeats, kf_control *ctl);

// Uploads a loaded model's weights (after kf::model_load bound them on the host). Weights must be F16
// or BF16 (model_load converts f32 files to bf16 for the cuda backend). Throws KF_ERR_OUT_OF_MEMORY
// when the device or the budget has no room; nothing stays allocated on failure.
BackendStatePtr model_upload(kf_model &m);  // a Model

// Allocates a session's device KV cache ([n_layers, capacity, n_kv, head_dim] keys and values in the
// model's 16-bit dtype), slot scores for lococo and h2o, and scratch for s.n_batch rows.
BackendStatePtr session_alloc(kf_session &s);  // a Session
int64_t session_kv_bytes(const Session &s) noexcept;
int64_t session_scratch_bytes(const Session &s) noexcept;

// Uploads an adapter's pairs (f32, scale folded into B, as kf::adapter_load left them).
BackendStatePtr adapter_upload(kf_adapter &a);  // an Adapter
// Uploads LoCoCo heads (weights in the model's dtype, tap-major [Mc, k·2·hd]; biases f32).
BackendStatePtr heads_upload(kf_lococo_heads &h);  // a Heads

// The device forward with forward_rows' semantics: row r runs at position pos[r], writes its key and
// value at cache slot slot[r] of session[r]'s cache and attends to that cache's slots [0, slot[r]]
// (Mistral's sliding window applied), with the adapters of mix[r] (NULL: none). Rows of one session at consecutive
// positions must be contiguous (a prefill chunk); rows of different sessions never see each other.
// logits: [n, vocab] when all_logits, else [vocab] for the last row. scratch: the session whose
// scratch the call may use (single-session calls) or NULL (batch decode: the engine's own, grown as
// needed). in.hidden_out receives [n, hidden] final-normed rows when set.
struct Rows {
  int32_t n = 0;
  kf_session *const *session = nullptr;  // [n]
  const int32_t *pos = nullptr;          // [n]
  const int32_t *slot = nullptr;         // [n]
  const AdapterMix *const *mix = nullptr;  // [n]
};
void forward(const kf_model &m, kf_session *scratch, const Rows &rows, const ChunkInput &in, float *logits,
             bool all_logits, kf_control *ctl);

// Copies `n_slots` slots of one layer of a session's device cache to the host as f32
// ([n_slots, n_kv, head_dim] each, scores [n_slots, n_kv]; any may be NULL).
void read_cache(const kf_session &s, int32_t layer, float *keys, float *values, float *scores, int32_t n_slots);

// Compressing caches (lococo, h2o, streaming) shrink on the device with kv_cache.cpp's semantics: per
// layer the scores come to the host, where top_slots ranks them (the slots themselves never leave the
// device); lococo then fuses (lococo.cu), h2o and streaming gather the kept slots. cache_shrink updates
// the host counters (n_slots, compressions, compress_ns) and, before a call's first shrink, saves the
// slots in device copies. cache_checkpoint (start of a call) keeps a device copy of the scores;
// cache_restore (failed call) puts scores and slots back.
void cache_shrink(kf_session &s);
void cache_checkpoint(kf_session &s);
void cache_restore(kf_session &s);


}  // namespace kf::cuda

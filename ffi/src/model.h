// model.h — the engine, model and session objects behind the opaque C handles.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common.h"
#include "model_config.h"
#include "safetensors.h"
#include "threadpool.h"

struct kf_engine {
  int32_t backend = KF_BACKEND_CPU;
  std::unique_ptr<kf::ThreadPool> pool;
  // The pool serves one caller at a time: sessions (and loads) of one engine take turns on it.
  std::mutex pool_mutex;
  std::atomic<int> n_models{0};
  std::string name;
};

namespace kf {

// A matrix as stored: rows = output features, cols = input features (torch Linear layout).
struct Weight {
  const void *data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0, cols = 0;
  const uint8_t *row(int64_t r) const {
    return static_cast<const uint8_t *>(data) + size_t(r) * size_t(cols) * dtype_size(dtype);
  }
};

inline int64_t numel(const Weight &w) { return w.rows * w.cols; }

struct LayerWeights {
  std::vector<float> attn_norm, ffn_norm;  // [hidden], converted to f32 at load
  Weight wq, wk, wv, wo;                   // [n_heads*hd, hidden], [n_kv*hd, hidden] x2, [hidden, n_heads*hd]
  std::vector<float> bq, bk, bv, bo;       // empty when the model has no such bias
  Weight w_gate, w_up, w_down;             // [inter, hidden] x2, [hidden, inter]
};

// Rotary frequencies after rope_scaling, one per pair: inv_freq[i] for i in [0, head_dim/2).
std::vector<double> rope_inv_freq(const ModelConfig &cfg);

}  // namespace kf

struct kf_model {
  kf_engine *engine = nullptr;
  kf::ModelConfig cfg;
  kf::TensorIndex files;
  std::vector<std::unique_ptr<uint8_t[]>> owned;  // converted copies (weight_dtype != file dtype)
  kf::Weight embed;                               // [vocab, hidden]
  kf::Weight lm_head;                             // [vocab, hidden]; aliases embed when tied
  std::vector<float> final_norm;                  // [hidden]
  std::vector<kf::LayerWeights> layers;
  std::vector<double> inv_freq;                   // [head_dim/2]
  int32_t weight_dtype = KF_DTYPE_F32;
  int64_t n_params = 0, weight_bytes = 0;
  std::atomic<int> n_sessions{0};
};

struct kf_session {
  kf_model *model = nullptr;
  int32_t n_ctx = 0, n_batch = 0, n_past = 0;
  bool has_logits = false;
  // KV cache, per layer: k, v [n_ctx, n_kv, head_dim] f32, keys post-RoPE.
  std::vector<std::vector<float>> k_cache, v_cache;
  // Scratch sized for n_batch tokens, allocated once.
  std::vector<float> x;        // [n_batch, hidden] residual stream
  std::vector<float> xn;       // [n_batch, hidden] normed input of a sub-block
  std::vector<float> q;        // [n_batch, n_heads*hd]
  std::vector<float> k, v;     // [n_batch, n_kv*hd]
  std::vector<float> attn;     // [n_batch, n_heads*hd]
  std::vector<float> proj;     // [n_batch, max(hidden, ...)] output of o/down projections
  std::vector<float> gate, up; // [n_batch, inter]
  std::vector<float> scores;   // [n_threads, n_ctx] per-thread attention rows
  std::vector<float> rope_cs;  // [n_batch, head_dim/2, 2] cos, sin of this chunk's positions
  std::vector<float> logits;   // [vocab] last position
  std::vector<float> logits_saved; // [vocab] the logits before a decode, restored if it fails
};

namespace kf {

// Loads config.json + safetensors, validates, binds (or converts) weights. Throws kf::Error.
void model_load(kf_model &m, const std::string &dir, const kf_model_params &p);
// Allocates every buffer of a session. Throws kf::Error / std::bad_alloc.
void session_init(kf_session &s, kf_model &m, const kf_session_params &p);
// The input rows of one chunk: token ids (looked up in embed_tokens) or ready embeddings.
struct ChunkInput {
  const int32_t *tokens = nullptr;  // [T] ids, or
  const void *embeds = nullptr;     // [T, hidden] rows in embeds_dtype
  DType embeds_dtype = DType::F32;
  float *hidden_out = nullptr;      // NULL, or [T, hidden] receiving the final-normed hidden states
};

// Runs T inputs at positions pos0.. (T <= n_batch). logits_out: NULL or [T, vocab].
// Does not advance n_past; the caller commits after the whole call succeeds.
void forward_chunk(kf_session &s, const ChunkInput &in, int32_t T, int32_t pos0, float *logits_out,
                   kf_control *ctl);

}  // namespace kf

// model.h — the engine, model and session objects behind the opaque C handles.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "backend.h"
#include "common.h"
#include "cpu_ops.h"
#include "gguf.h"
#include "kv_cache.h"
#include "model_config.h"
#include "safetensors.h"
#include "threadpool.h"
#include "weight_arena.h"

struct kf_engine {
  const kf::Backend *backend = nullptr;  // chosen at open (backend.h); never NULL once open
  std::unique_ptr<kf::ThreadPool> pool;
  // The pool serves one caller at a time: sessions (and loads) of one engine take turns on it.
  std::mutex pool_mutex;
  std::atomic<int> n_models{0};
  std::string name;
  // The backend's device (a CUDA device, stream and cuBLAS handle; NULL for the CPU, whose pool above
  // then serves host-side work only: weight conversion at load). Declared last: freed first.
  kf::BackendStatePtr state;
};

namespace kf {

// A matrix as stored: rows = output features, cols = input features (torch Linear layout).
struct Weight {
  const void *data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0, cols = 0;
  // Row r's bytes in a row-major layout (not the interleaved Q8_0_R16 / Q4_0_R16: weight_row_to_f32).
  const uint8_t *row(int64_t r) const {
    return static_cast<const uint8_t *>(data) + size_t(r) * dtype_row_bytes(dtype, cols);
  }
};

inline int64_t numel(const Weight &w) { return w.rows * w.cols; }
// dst: [w.cols] f32, row r of w in any layout.
void weight_row_to_f32(const Weight &w, int64_t r, float *dst);

struct LayerWeights {
  std::vector<float> attn_norm, ffn_norm;  // [hidden], converted to f32 at load
  Weight wq, wk, wv, wo;                   // [n_heads*hd, hidden], [n_kv*hd, hidden] x2, [hidden, n_heads*hd]
  std::vector<float> bq, bk, bv, bo;       // empty when the model has no such bias
  Weight w_gate, w_up, w_down;             // [inter, hidden] x2, [hidden, inter]
};

// The seven projections of a layer, in the order LoRA tensors and masks use.
enum Proj : int { kProjQ = 0, kProjK, kProjV, kProjO, kProjGate, kProjUp, kProjDown, kNumProj };
// PEFT module names of the projections, indexed by Proj ("q_proj", ...).
extern const char *const kProjNames[kNumProj];

// One LoRA pair for one projection: y += B (A x), with the scale s already folded into B.
// rank 0 means the adapter leaves this projection alone.
struct LoraPair {
  int32_t rank = 0;
  std::vector<float> a;   // [rank, in]
  std::vector<float> bt;  // [rank, out]: B transposed, times s, so B (A x) is rank contiguous axpys
};

struct LoraLayer {
  LoraPair proj[kNumProj];
};

// Rotary frequencies after rope_scaling, one per pair: inv_freq[i] for i in [0, head_dim/2).
std::vector<double> rope_inv_freq(const ModelConfig &cfg);

}  // namespace kf

struct kf_model {
  kf_engine *engine = nullptr;
  kf::ModelConfig cfg;
  kf::TensorIndex files;
  std::unique_ptr<kf::GgufModelFile> gguf;        // instead of files when loaded from a GGUF file
  kf::WeightArena owned;                          // converted copies (weight_dtype != file dtype)
  kf::Weight embed;                               // [vocab, hidden]
  kf::Weight lm_head;                             // [vocab, hidden]; aliases embed when tied
  std::vector<float> final_norm;                  // [hidden]
  std::vector<kf::LayerWeights> layers;
  std::vector<double> inv_freq;                   // [head_dim/2]
  int32_t weight_dtype = KF_DTYPE_F32;
  int64_t n_params = 0, weight_bytes = 0;
  std::atomic<int> n_sessions{0};
  std::atomic<int> n_adapters{0};
  std::atomic<int> n_lococo_heads{0};
  kf::BackendStatePtr device;  // the weights where the backend runs (NULL on the CPU); the host copies stay bound
};

// A loaded PEFT LoRA adapter: f32 copies of every pair, bound to one model. Immutable after load;
// sessions point at it (n_users counts them) and switching adapters is a pointer change.
struct kf_adapter {
  kf_model *model = nullptr;
  std::vector<kf::LoraLayer> layers;  // [n_layers]
  int32_t max_rank = 0;
  uint32_t proj_mask = 0;             // bit p set when some layer adapts projection p
  double alpha = 0;                   // lora_alpha of adapter_config.json
  bool rslora = false;
  int64_t n_params = 0, bytes = 0;    // bytes held (f32)
  std::atomic<int> n_users{0};        // sessions whose current adapter this is
  kf::BackendStatePtr device;         // the pairs where the backend runs (NULL on the CPU)
};

namespace kf {

// Most adapters one session composes (KF_MAX_ADAPTERS of kvfold.h).
constexpr int32_t kMaxAdapterTerms = KF_MAX_ADAPTERS;

// The adapters a session applies, each with its weight: y = W x + sum_i w_i s_i B_i (A_i x).
// Fixed size, so choosing one allocates nothing; n = 0 is the base model. One adapter with weight 1
// is kf_session_set_adapter's case (the weight multiplies exactly, so both give the same bits).
struct AdapterMix {
  int32_t n = 0;
  kf_adapter *adapter[kMaxAdapterTerms] = {};
  float weight[kMaxAdapterTerms] = {};

  // Columns of LoRA scratch a row needs: the terms' A x side by side, one block per term.
  int32_t rank_sum() const {
    int32_t r = 0;
    for (int32_t i = 0; i < n; i++) r += adapter[i]->max_rank;
    return r;
  }
  // Same adapters with the same weights in the same order (rows that may share LoRA segments).
  bool same_as(const AdapterMix &o) const {
    if (n != o.n) return false;
    for (int32_t i = 0; i < n; i++)
      if (adapter[i] != o.adapter[i] || weight[i] != o.weight[i]) return false;
    return true;
  }
  // Whether term i's adapter appeared in an earlier term (users are counted once per session).
  bool repeats(int32_t i) const {
    for (int32_t j = 0; j < i; j++)
      if (adapter[j] == adapter[i]) return true;
    return false;
  }
};

// Rows of two mixes (NULL: none) may share a LoRA segment.
inline bool same_mix(const AdapterMix *a, const AdapterMix *b) {
  return a == b || (a && b && a->same_as(*b));
}

// Query rows of one session that attend together: each key/value row is read (and each key tile
// transposed) once per block. At most kAttnRows; Workspace::attn_rows halves it, down to kAttnMinRows,
// where a thread's score rows would pass kAttnScoreBytes, and a forward halves it again while its blocks
// give the pool's threads fewer than 4 tasks each. 64 rather than 16: the key transposes were 5% of 134M
// q8_0 prefill 512, and its attention went from 25.8% to 23.3% of the samples (A/B 1.00 and 1/0.92); 128
// measured no better than 64.
constexpr int32_t kAttnRows = 64, kAttnMinRows = 16;
constexpr size_t kAttnScoreBytes = size_t(8) << 20;
// Keys per tile of the score GEMM (q_block · K_tile^T), transposed so the inner loop is contiguous.
constexpr int32_t kAttnKeys = 64;

// Scratch of one forward call, sized for `rows` rows, allocated once (per session, or per batch).
struct Workspace {
  int32_t rows = 0;
  std::vector<float> x;        // [rows, hidden] residual stream
  std::vector<float> xn;       // [rows, hidden] normed input of a sub-block
  std::vector<float> q;        // [rows, n_heads*hd]
  std::vector<float> k, v;     // [rows, n_kv*hd]
  std::vector<float> attn;     // [rows, n_heads*hd]
  std::vector<float> proj;     // [rows, hidden] output of o/down projections
  std::vector<float> gate, up; // [rows, inter]
  int32_t attn_rows = kAttnMinRows;  // most rows of an attention block (attn_block_rows)
  std::vector<float> scores;   // [n_threads, attn_rows, n_ctx] per-thread attention rows of one block
  int32_t score_cols = 0;      // n_ctx the scores were sized for
  std::vector<float> key_tile; // [n_threads, head_dim, kAttnKeys] a block of keys, transposed
  // Attention work units: runs of up to attn_rows consecutive rows of one session, which share
  // every key and value row they read (first row, row count).
  std::vector<std::pair<int32_t, int32_t>> attn_blocks;
  std::vector<AttnRow> attn_alone;  // [blocks] when every block is one row (attn_rows_alone)
  std::vector<float> rope_cs;  // [rows, head_dim/2, 2] cos, sin of each row's position
  std::vector<float> lora_tmp; // [rows, lora_rank] A x of the rows, one column block per adapter term
  int32_t lora_rank = 0;       // row stride of lora_tmp (>= the rank sum of every row's mix)
  std::vector<LoraSegment> lora_segments;  // [<= rows * kMaxAdapterTerms] this projection's runs of rows per term
  // Per row: the session whose cache it reads and writes, its absolute position (RoPE), the cache
  // slot it writes (it attends to slots 0..slot), its adapters (NULL: none).
  std::vector<kf_session *> row_session;
  std::vector<int32_t> row_pos;
  std::vector<int32_t> row_slot;
  std::vector<const AdapterMix *> row_mix;
  // Slot scores: per (attention block, query head) the column sums of the block's probabilities over
  // the slots it saw, reduced into the session's cache scores after each layer's attention.
  // [max blocks, n_heads, n_cols]; empty unless some session's cache ranks slots by score.
  std::vector<float> col_sums;
  std::vector<std::pair<int64_t, int64_t>> block_keys;  // per block: slots [lo, hi) it read

  // Allocates every buffer for n_rows rows over caches of up to n_ctx slots; with_scores sizes the
  // slot score buffers too.
  void init(const kf_model &m, int32_t n_rows, int32_t n_ctx, bool with_scores = false);
  // Grows lora_tmp for mixes up to rank_sum columns (called when adapters are chosen, never per token).
  void reserve_lora(int32_t rank_sum);
  int64_t bytes() const;
  static double estimate_bytes(const kf_model &m, int32_t n_rows, int32_t n_ctx);
};

}  // namespace kf

struct kf_session {
  kf_model *model = nullptr;
  // n_ctx: most positions the session may see; n_batch: rows per forward (a compressing cache's
  // segment B); n_past: positions seen (the next row's absolute position).
  int32_t n_ctx = 0, n_batch = 0, n_past = 0;
  bool has_logits = false;
  kf::AdapterMix adapters;        // applied to every projection they adapt; n = 0: the base model
  kf::KvCache cache;              // keys post-RoPE; slot = position for KF_CACHE_FULL
  kf::Workspace ws;            // scratch for n_batch rows, allocated once
  std::vector<float> logits;   // [vocab] last position
  std::vector<float> logits_saved; // [vocab] the logits before a decode, restored if it fails
  // A device backend's KV cache and scratch (NULL on the CPU). `cache` then keeps only its counters
  // (no host slots) and `ws` only its row table.
  kf::BackendStatePtr device;
};

namespace kf {

// Loads config.json + safetensors, validates, binds (or converts) weights. Throws kf::Error.
void model_load(kf_model &m, const std::string &dir, const kf_model_params &p, kf_control *ctl);
// The input rows of one chunk: token ids (looked up in embed_tokens) or ready embeddings.
struct ChunkInput {
  const int32_t *tokens = nullptr;  // [T] ids, or
  const void *embeds = nullptr;     // [T, hidden] rows in embeds_dtype
  DType embeds_dtype = DType::F32;
  float *hidden_out = nullptr;      // NULL, or [T, hidden] receiving the final-normed hidden states
  // NULL, or the rows whose logits are wanted ([n_logit_rows] ascending; the CPU forward only):
  // logits then receives [n_logit_rows, vocab], row by row, instead of the last row's.
  const int32_t *logit_rows = nullptr;
  int32_t n_logit_rows = 0;
};

// The CPU forward (forward_cpu.cpp; backend_cpu.cpp calls it): runs ws.rows rows, row r at
// ws.row_pos[r] in the cache of ws.row_session[r] with ws.row_mix[r] (rows of one mix should be contiguous: the LoRA pass walks them as segments). Writes each row's
// keys and values first, then attends, so rows of one session at consecutive positions form a causal
// chunk, and rows of different sessions never see each other.
// logits: [rows, vocab] receiving every row's logits when all_logits, else [vocab] for the last row.
void forward_rows(Workspace &ws, const kf_model &m, int32_t rows, const ChunkInput &in, float *logits,
                  bool all_logits, kf_control *ctl);

// Loads a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors) for model m. Throws.
void adapter_load(kf_adapter &a, kf_model &m, const std::string &dir, kf_control *ctl);

}  // namespace kf

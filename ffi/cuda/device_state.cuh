// device_state.cuh — the CUDA backend's device objects (model, session, adapter, LoCoCo heads) and the
// scratch of one forward: upload.cu makes them; forward.cu and cache.cu use them.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "../src/model.h"
#include "kernels.cuh"

namespace kf::cuda {

constexpr int32_t kMaxSplits = 32;       // split-KV pieces at most
constexpr int32_t kSplitMaxRows = 16;    // forwards of more rows fill the GPU without splitting
constexpr int32_t kMinKeysPerSplit = 64;

// What one forward launches, fixed before anything is enqueued (and the key of a captured decode graph).
struct Plan {
  int32_t T = 0, n_blocks = 0, n_splits = 1, max_rank = 0;
  int32_t lora_terms = 0;  // most adapters any row composes (one shrink and expand each)
  uint32_t lora_mask = 0;
  int32_t first = 0;  // first row whose logits are computed (T - 1 unless all_logits)
  bool scoring = false;  // some row's session ranks its slots by score
};

// Device buffers of one forward of up to `rows` rows (shapes per buffer; dt = the model's dtype).
struct Scratch {
  int32_t rows = 0, lora_rank = 0, split_rows = 0;
  DevBuf x;        // [rows, H] f32 residual stream
  DevBuf xn;       // [rows, H] dt: normed input of a sub-block (a matrix product's x)
  DevBuf q, k, v;  // [rows, nh*hd], [rows, nkv*hd] x2 f32: projection outputs
  DevBuf q16;      // [rows, nh*hd] dt: rotated queries
  DevBuf attn;     // [rows, nh*hd] dt: attention output (o_proj's x)
  DevBuf gate, up; // [rows, I] f32
  DevBuf act;      // [rows, I] dt: silu(gate) * up (down_proj's x)
  DevBuf logits;   // [rows, V] f32
  DevBuf hidden;   // [rows, H] f32 final-normed rows (hidden_out)
  DevBuf rope_cs;  // [rows, hd/2, 2] f32
  DevBuf embeds;   // [rows, H] caller rows in their own dtype (<= 4 bytes each)
  DevBuf meta;     // RowMeta[rows], AttnBlock[rows], int32 ids[rows], LoraTermsDev[rows]: the per-call upload
  DevBuf partial;  // [kMaxSplits, split_rows, nh, hd + 2] f32 split-KV partials
  DevBuf lora_tmp; // [rows, lora_rank] f32: A x of each row
  HostBuf staging; // pinned host copy of `meta`
  // Scoring sessions of the current forward: each one's layer-0 scores, floats per layer, and how many
  // (the slots its rows reach, times n_kv) each layer zeroes before attention adds into them.
  // Reserved for `rows` entries at init.
  struct ScoreRange {
    float *base;
    int64_t stride, count;
  };
  std::vector<ScoreRange> zero_scores;
  // The captured decode step (single-session scratches only), the plan it was captured for, and the
  // LoRA scratch it writes (a regrown one needs a new capture).
  cudaGraphExec_t graph_exec = nullptr;
  Plan graph_plan;
  const void *graph_lora = nullptr;
  bool graph_failed = false;
  Scratch() = default;
  Scratch(const Scratch &) = delete;
  Scratch &operator=(const Scratch &) = delete;
  ~Scratch() {
    if (graph_exec) cudaGraphExecDestroy(graph_exec);
  }
};

struct DevLayer {
  const void *wq = nullptr, *wk = nullptr, *wv = nullptr, *wo = nullptr;  // [nh*hd, H], [nkv*hd, H] x2, [H, nh*hd]
  const void *w_gate = nullptr, *w_up = nullptr, *w_down = nullptr;       // [I, H] x2, [H, I]
  const float *attn_norm = nullptr, *ffn_norm = nullptr;                  // [H] f32
  const float *bq = nullptr, *bk = nullptr, *bv = nullptr, *bo = nullptr; // f32 biases or NULL
};

struct Model : BackendState {
  Engine *engine = nullptr;
  DType dt = DType::BF16;
  std::vector<DevBuf> bufs;  // every upload; freeing them frees the model
  std::vector<DevLayer> layers;
  const void *embed = nullptr;    // [V, H] dt
  const void *lm_head = nullptr;  // [V, H] dt (== embed when tied)
  const float *final_norm = nullptr;  // [H]
  const double *inv_freq = nullptr;   // [hd/2]
  std::unique_ptr<Scratch> batch;     // kf_batch_decode's scratch, grown to the largest batch
  ~Model() override;
};

struct Session : BackendState {
  Engine *engine = nullptr;
  DevBuf k, v;               // [n_layers, capacity, nkv, hd] dt
  int64_t layer_stride = 0;  // capacity * nkv * hd
  // Compressing caches: slot scores [n_layers, capacity, nkv] f32 (lococo, h2o) and their copy at the
  // start of a call; the slots as a call found them (saved before its first shrink, for rollback); the
  // kept slots of a gather [2, capacity, nkv, hd] (h2o, streaming); the ranking chosen on the host.
  DevBuf score, score_saved;
  DevBuf k_saved, v_saved, gathered, idx;
  bool slots_saved = false;
  std::vector<int32_t> idx_host;             // [nkv, capacity + Mc] the ranking, built on the host
  std::vector<int32_t> order;                // [2 * capacity] top_slots scratch
  std::vector<float> score_host, score_new, rest_score;  // [capacity, nkv] x2, [capacity]
  // LOCOCO's fusion scratch (lococo.cu), sized for S <= capacity rest slots.
  DevBuf x_pad, x_t, kept, mix, conv, fused;
  Scratch ws;                // for n_batch rows
  ~Session() override;
};

struct Heads : BackendState {
  Engine *engine = nullptr;
  std::vector<DevBuf> bufs;
  std::vector<const void *> weight;  // per layer [Mc, k·2·hd] in the model's dtype (tap-major)
  std::vector<const float *> bias;   // per layer [Mc]
  ~Heads() override;
};

struct Adapter : BackendState {
  Engine *engine = nullptr;
  std::vector<DevBuf> bufs;  // A and Bt of every adapted projection, f32
  DevBuf table;              // LoraPairDev[n_layers * 7]
  int32_t max_rank = 0;
  uint32_t proj_mask = 0;
  ~Adapter() override;
};


// The per-call row table (RowMeta, AttnBlock, ids, LoraTermsDev for `rows` rows): where its LoRA terms
// start, and its bytes.
size_t terms_offset(int32_t rows);
size_t meta_bytes(int32_t rows);
// Allocates a forward's device buffers for up to `rows` rows.
void scratch_init(Scratch &w, Engine &e, const kf_model &m, int32_t rows);
// Grows the LoRA scratch to `rank` columns per row (once per larger rank).
void reserve_lora(Scratch &w, Engine &e, int32_t rank);

}  // namespace kf::cuda

// kv_cache.h — a session's KV cache and the policies that keep it bounded (DESIGN.md, "LoCoCo").
//
// One layout for every kind: per layer, keys and values [capacity, n_kv, head_dim] f32 (keys post-RoPE
// at their absolute positions) and, for the kinds that need them, slot scores [capacity, n_kv]. The
// forward pass only ever appends rows at slot n_slots and attends to slots [0, n_slots + own row];
// what differs between kinds is cache_shrink, called at the start of a forward when cache_over_limit:
//   full       never shrinks (capacity = n_ctx, slot = position)
//   h2o        top M slots by score per KV head, in cache order
//   streaming  the first `sinks` slots and the last `window`
//   lococo     top Mh by score per KV head, in cache order, then Mc slots fused by the heads' Conv1d
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "backend.h"
#include "common.h"
#include "threadpool.h"

struct kf_model;

// LoCoCo heads of one model: per layer one Conv1d(2·head_dim → Mc, k) and its λ (DESIGN.md).
struct kf_lococo_heads {
  kf_model *model = nullptr;
  int32_t slots = 0;        // M (file metadata)
  int32_t fused = 0;        // Mc: the convolution's output channels
  int32_t kernel = 0;       // k, odd
  int32_t segment = 0;      // B (file metadata)
  float keep_rate = 0.5f;   // r (file metadata)
  int32_t head_dim = 0;
  struct Layer {
    // [Mc, k, 2·head_dim]: PyTorch's [Mc, 2·hd, k] with the tap axis moved before the channel axis,
    // so the conv's receptive field over k consecutive slot rows [k, 2·hd] is one contiguous row of
    // the implicit im2col matrix (see lococo_fuse).
    std::vector<float> weight;
    std::vector<float> bias;  // [Mc]
    float lambda = 0.0f;      // the normalizer: W' = (1 − λ) R + λ W
  };
  std::vector<Layer> layers;
  int64_t bytes = 0;
  std::atomic<int> n_users{0};  // sessions using them
  kf::BackendStatePtr device;   // the convolutions where the backend runs (NULL on the CPU)
};

namespace kf {

// DESIGN.md's hysteresis: lococo and h2o compress only once the cache passes M by this many slots, so
// decode compresses every 17 tokens rather than every token.
constexpr int32_t kCacheSlack = 16;

// Scratch of a shrink, sized once: the slot ranking (h2o, lococo) and the LoCoCo fusion.
struct ShrinkScratch {
  std::vector<float> x_pad;   // [S + k − 1, 2·hd] the rest slots' [K | V] rows with (k−1)/2 zero rows each side
  std::vector<float> x_t;     // [2·hd, S] the same, transposed (weights of the mixing GEMM)
  std::vector<float> conv;    // [S, Mc] Conv1d output, slot-major
  std::vector<float> mix;     // [Mc, S] softmax over slots, then λ-scaled
  std::vector<float> fused;   // [Mc, 2·hd]
  std::vector<float> kept;    // [Mh, 2·hd] heavy hitters, gathered before the head's column is rewritten
  std::vector<int32_t> order; // [capacity] slot indices while ranking ([2·capacity] for lococo)
  std::vector<float> rest_score; // [capacity] lococo: scores of the slots left after the heavy hitters

  // Sizes every buffer for fusing up to S slots with heads h into M slots (M − Mc heavy hitters kept).
  void init_lococo(int32_t S, const kf_lococo_heads &h, int32_t M);
  int64_t bytes() const;
};

// What one (layer, KV head)'s fusion keeps for its backward pass (LoCoCo calibration).
struct FuseTrace {
  int32_t S = 0;               // slots fused (the rest after the heavy hitters)
  std::vector<float> x_pad;    // [S + k − 1, 2·hd] the rest's [K | V] rows with (k−1)/2 zero rows each side
  std::vector<float> z;        // [S, Mc] Conv1d output before ReLU
  std::vector<float> w;        // [Mc, S] softmax over slots of ReLU(z)
  std::vector<float> wx;       // [Mc, 2·hd] W x
  std::vector<int32_t> pick;   // [Mc] positions in the rest of the one-hot rows (the next Mc by score)
};

struct KvCache {
  int32_t kind = KF_CACHE_FULL;
  int32_t n_layers = 0, n_kv = 0, head_dim = 0;
  int32_t capacity = 0;   // slots per layer allocated
  int32_t n_slots = 0;    // slots in use, the same in every layer
  int32_t peak = 0;       // most slots in use since create/reset
  int64_t compressions = 0;
  int64_t compress_ns = 0;  // wall time in cache_shrink
  int32_t slots = 0;      // M (lococo, h2o)
  int32_t sinks = 0, window = 0;  // streaming
  const kf_lococo_heads *heads = nullptr;
  std::vector<std::vector<float>> k, v;  // [n_layers][capacity, n_kv, head_dim]
  std::vector<std::vector<float>> score; // [n_layers][capacity, n_kv]; lococo and h2o only

  ShrinkScratch shrink;  // sized for S <= capacity slots

  // The cache as a call found it, so that a call that fails part-way can put it back: counters and
  // scores at the start, the slots themselves just before the call's first shrink (allocated then).
  struct Saved {
    bool has_slots = false;
    int32_t n_slots = 0, peak = 0;
    int64_t compressions = 0;
    std::vector<std::vector<float>> k, v;  // [n_layers][n_slots, n_kv, hd]
    std::vector<std::vector<float>> score; // [n_layers][capacity, n_kv] (scoring kinds)
  } saved;

  bool compressing() const { return kind != KF_CACHE_FULL; }
  bool needs_scores() const { return kind == KF_CACHE_LOCOCO || kind == KF_CACHE_H2O; }
  int64_t bytes() const;
  int64_t scratch_bytes() const;
};

// Sizes every buffer for `capacity` slots per layer. host_slots = false (device backends, whose slots
// live on the device) sets the counters and policy only. Throws std::bad_alloc.
void cache_init(KvCache &c, const kf_model &m, const kf_session_params &p, int32_t capacity, bool host_slots = true);
// Slots per layer a policy needs: the most it holds before shrinking plus one segment of `segment` rows.
int32_t cache_capacity(const kf_session_params &p, int32_t segment);
// Whether the cache must shrink before the next forward (DESIGN.md: more than M + 16 slots for lococo
// and h2o; more than sinks + window for streaming).
bool cache_over_limit(const KvCache &c);
// Shrinks per the cache's kind. Every layer ends with the same n_slots.
void cache_shrink(KvCache &c, ThreadPool &pool);
// Forgets everything (n_slots = 0, counters cleared).
void cache_clear(KvCache &c);
// Rollback (see Saved): cache_checkpoint at the start of a call; cache_save_slots before each shrink
// (copies once per call); cache_restore when the call fails.
void cache_checkpoint(KvCache &c);
void cache_save_slots(KvCache &c);
void cache_restore(KvCache &c);

// LoCoCo: one layer's compression to M slots (DESIGN.md), in place on c.k[l], c.v[l], c.score[l].
void lococo_compress_layer(KvCache &c, ThreadPool &pool, int32_t l);
// The LoCoCo fusion of layer l, inference and calibration alike: n slots (keys, values [n, nkv, hd],
// scores [n, nkv]) become M per KV head, the top M − Mc by score in cache order, then Mc slots fused by
// the heads (lococo.cpp's header has the formula). out_* receive M slots and may be the inputs
// themselves. trace: NULL, or [nkv] records for the backward pass (the convolution then runs even
// when λ = 0, so dλ can be computed).
void lococo_fuse(const kf_lococo_heads &h, int32_t l, int32_t M, ThreadPool &pool, int32_t n, int32_t nkv,
                 int32_t hd, const float *keys, const float *values, const float *score, float *out_k, float *out_v,
                 float *out_score, ShrinkScratch &scratch, FuseTrace *trace);
// Loads and validates a heads file for model m. ctl (may be NULL): cancel and progress in layers.
// Throws kf::Error.
void lococo_heads_load(kf_lococo_heads &h, kf_model &m, const std::string &path, kf_control *ctl);

// Indices of the n highest scores among idx[0..count) (score of slot j: score[j * stride]), ties
// broken by the lower slot, returned in idx[0..n) in ascending (cache) order; idx[n..count) keeps the
// others, also ascending.
void top_slots(const float *score, int64_t stride, int32_t *idx, int32_t count, int32_t n);

}  // namespace kf

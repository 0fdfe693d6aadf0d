// train.h — LoRA training with the base model frozen: a forward pass that keeps what the backward
// pass needs, the backward pass (activation gradients through every layer, weight gradients for the
// LoRA pairs only), and AdamW.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "model.h"

namespace kf {

// splitmix64: a small, well-mixed, seedable generator (initialisation of trained weights).
inline uint64_t splitmix64(uint64_t &s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Learning rate at optimizer step `step` (0-based): linear warmup, then cosine decay to min_ratio · lr
// over `total` steps (0: constant after warmup).
float schedule_lr(float lr, int32_t warmup, int32_t total, float min_ratio, int64_t step);

// AdamW (decoupled weight decay) at one optimizer step, shared by every trainer (LoRA, LoCoCo heads).
struct AdamW {
  float lr, beta1, beta2, eps;
  float coef;      // scale of the accumulated gradients: 1 / examples, times the clipping factor
  float bc1, bc2;  // bias corrections of this step
  AdamW(float lr_, float beta1_, float beta2_, float eps_, int64_t step, float coef_)
      : lr(lr_), beta1(beta1_), beta2(beta2_), eps(eps_), coef(coef_) {
    const double t = double(step + 1);  // step is 0-based
    bc1 = float(1.0 - std::pow(double(beta1), t));
    bc2 = float(1.0 - std::pow(double(beta2), t));
  }
  // Moves n weights w against their accumulated gradients g (moments m1, m2 updated in place).
  void update(float *w, const float *g, float *m1, float *m2, size_t n, float decay) const {
    for (size_t i = 0; i < n; i++) {
      const float gi = g[i] * coef;
      m1[i] = beta1 * m1[i] + (1.0f - beta1) * gi;
      m2[i] = beta2 * m2[i] + (1.0f - beta2) * gi * gi;
      const float adam = (m1[i] / bc1) / (std::sqrt(m2[i] / bc2) + eps);
      w[i] -= lr * (adam + decay * w[i]);
    }
  }
};

// One trainable pair y += s · B (A x), held as PEFT stores it (unscaled): A [r, in], B [out, r].
struct TrainPair {
  int32_t rank = 0;  // 0: projection not trained
  int64_t in = 0, out = 0;
  std::vector<float> a, b;        // [r, in], [out, r]
  std::vector<float> ga, gb;      // gradients, summed over accumulated examples
  std::vector<float> ma, va, mb, vb;  // AdamW first and second moments
};

// What one layer's forward kept for the backward pass (T rows).
struct LayerActivations {
  std::vector<float> x;        // [T, H] the layer's input (residual stream)
  std::vector<float> xn1;      // [T, H] attention RMSNorm output
  std::vector<float> q, k, v;  // [T, nh·hd], [T, nkv·hd] x2, q and k after RoPE
  std::vector<float> attn;     // [T, nh·hd] attention output (o_proj input)
  std::vector<float> x_mid;    // [T, H] residual after attention
  std::vector<float> xn2;      // [T, H] MLP RMSNorm output
  std::vector<float> gate, up; // [T, I] gate and up projections (pre-activation gate)
  std::vector<float> h;        // [T, I] silu(gate) · up (down_proj input)
  std::vector<float> lora_t[kNumProj];  // [T, r] A x of each trained projection
};

// Scratch of one pass, grown on demand and kept for the next.
struct PassScratch {
  std::vector<LayerActivations> acts;   // [n_layers]
  std::vector<float> x_final, xn_final; // [T, H]
  std::vector<float> rope_cs;           // [T, hd/2, 2]
};

// The rows of one pass: input embeddings at positions pos0.., and which rows predict which token.
struct PassRows {
  const float *x0 = nullptr;  // [T, H]
  int64_t T = 0, pos0 = 0;
  std::vector<int64_t> rows;     // labelled rows
  std::vector<int32_t> targets;  // the token each predicts
  int64_t progress0 = 0;         // added to the control block's done counter
  bool report_progress = true;   // false: the caller counts progress itself (cancel is still polled)
};

// The cache a segment attends to before its own rows (LoCoCo calibration): per layer, post-RoPE keys
// and values [slots, nkv, hd]; every slot is visible to every row.
struct PrefixCache {
  int64_t slots = 0;
  std::vector<const float *> k, v;  // [n_layers]
};

// What a pass hands back besides the loss.
struct PassGrads {
  // LoRA gradients of this pass, [n_layers * kNumProj] (empty for untrained projections).
  std::vector<std::vector<float>> lora_ga, lora_gb;
  // When set: d loss / d prefix keys and values per layer [slots, nkv, hd].
  std::vector<std::vector<float>> *cache_dk = nullptr, *cache_dv = nullptr;
  // When set: per layer [(slots + T), nkv] column sums of the attention probabilities (slot scores).
  std::vector<std::vector<float>> *col_sums = nullptr;
};

// Forward and backward of one pass: mean cross-entropy over the labelled rows, its gradients for the
// LoRA pairs (all rank 0 to train nothing) and, with a prefix, for the prefix cache.
double train_pass(const kf_model &m, const std::vector<std::vector<TrainPair>> &pairs, float s, PassScratch &st,
                  const PassRows &in, const PrefixCache *prefix, PassGrads &out, kf_control *ctl);

}  // namespace kf

struct kf_lora_trainer {
  kf_model *model = nullptr;
  kf_lora_train_params params{};
  float scale = 1.0f;  // s = alpha / r (alpha / sqrt(r) with rslora)
  std::vector<std::vector<kf::TrainPair>> pairs;  // [n_layers][kNumProj]
  int64_t step = 0;          // optimizer steps taken
  int32_t accumulated = 0;   // examples whose gradients are summed in ga/gb
  int64_t n_params = 0;
  kf::PassScratch scratch;  // of the last example, kept for the next
};

namespace kf {

// Creates the pairs (A ~ U(−1/√in, 1/√in) as PEFT's kaiming init, B = 0) for the masked projections.
void trainer_init(kf_lora_trainer &tr, kf_model &m, const kf_lora_train_params &p);
// One example: rows [prefix (n_prefix × hidden f32) | embeddings of ids], positions 0..T−1, causal.
// labels[t] (t < n_ids): the token id row n_prefix + t must predict, or −1. Adds the gradients of the
// mean cross-entropy over labelled rows to ga/gb and returns that mean.
double trainer_accumulate(kf_lora_trainer &tr, const float *prefix, int32_t n_prefix, const int32_t *ids,
                          const int32_t *labels, int32_t n_ids, kf_control *ctl);
// AdamW over the accumulated gradients (averaged over the examples), then zeroes them.
kf_train_step_info trainer_step(kf_lora_trainer &tr);

}  // namespace kf

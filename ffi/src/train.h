// train.h — LoRA training with the base model frozen: a forward pass that keeps what the backward
// pass needs, the backward pass (activation gradients through every layer, weight gradients for the
// LoRA pairs only), and AdamW.
#pragma once

#include <cstdint>
#include <vector>

#include "model.h"

namespace kf {

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

}  // namespace kf

struct kf_trainer {
  kf_model *model = nullptr;
  kf_lora_train_params params{};
  float scale = 1.0f;  // s = alpha / r (alpha / sqrt(r) with rslora)
  std::vector<std::vector<kf::TrainPair>> pairs;  // [n_layers][kNumProj]
  int64_t step = 0;          // optimizer steps taken
  int32_t accumulated = 0;   // examples whose gradients are summed in ga/gb
  int64_t n_params = 0;
  // Scratch of the last example (grown on demand, kept for the next one).
  std::vector<kf::LayerActivations> acts;  // [n_layers]
  std::vector<float> x_final, xn_final;    // [T, H]
  std::vector<float> rope_cs;              // [T, hd/2, 2]
};

namespace kf {

// Creates the pairs (A ~ U(−1/√in, 1/√in) as PEFT's kaiming init, B = 0) for the masked projections.
void trainer_init(kf_trainer &tr, kf_model &m, const kf_lora_train_params &p);
// One example: rows [prefix (n_prefix × hidden f32) | embeddings of ids], positions 0..T−1, causal.
// labels[t] (t < n_ids): the token id row n_prefix + t must predict, or −1. Adds the gradients of the
// mean cross-entropy over labelled rows to ga/gb and returns that mean.
double trainer_accumulate(kf_trainer &tr, const float *prefix, int32_t n_prefix, const int32_t *ids,
                          const int32_t *labels, int32_t n_ids, kf_control *ctl);
// AdamW over the accumulated gradients (averaged over the examples), then zeroes them.
kf_train_step_info trainer_step(kf_trainer &tr);
// Learning rate at optimizer step `step` (0-based): linear warmup, then cosine to min_lr_ratio · lr.
float trainer_lr(const kf_lora_train_params &p, int64_t step);

}  // namespace kf

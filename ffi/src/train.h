// train.h — training passes: a forward pass that keeps what the backward pass needs, the backward
// pass (activation gradients through every layer; weight gradients for the LoRA pairs, and for every
// base tensor when a full-parameter trainer asks), and AdamW with its schedule and clipping.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu_simd.h"
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
  // The four arrays never overlap. AVX2 takes 8 weights at a time (sqrt and divide are correctly
  // rounded either way); the tail runs the same formula one at a time.
  void update(float *__restrict w, const float *__restrict g, float *__restrict m1, float *__restrict m2, size_t n,
              float decay) const {
    size_t i = 0;
#ifdef KF_AVX2
    const __m256 vcoef = _mm256_set1_ps(coef), vb1 = _mm256_set1_ps(beta1), vb2 = _mm256_set1_ps(beta2),
                 vc1 = _mm256_set1_ps(1.0f - beta1), vc2 = _mm256_set1_ps(1.0f - beta2), vbc1 = _mm256_set1_ps(bc1),
                 vbc2 = _mm256_set1_ps(bc2), veps = _mm256_set1_ps(eps), vlr = _mm256_set1_ps(lr),
                 vdecay = _mm256_set1_ps(decay);
    for (; i + 8 <= n; i += 8) {
      const __m256 gi = _mm256_mul_ps(_mm256_loadu_ps(g + i), vcoef);
      const __m256 a = _mm256_add_ps(_mm256_mul_ps(vb1, _mm256_loadu_ps(m1 + i)), _mm256_mul_ps(vc1, gi));
      const __m256 b = _mm256_add_ps(_mm256_mul_ps(vb2, _mm256_loadu_ps(m2 + i)), _mm256_mul_ps(_mm256_mul_ps(vc2, gi), gi));
      _mm256_storeu_ps(m1 + i, a);
      _mm256_storeu_ps(m2 + i, b);
      const __m256 adam = _mm256_div_ps(_mm256_div_ps(a, vbc1), _mm256_add_ps(_mm256_sqrt_ps(_mm256_div_ps(b, vbc2)), veps));
      const __m256 wi = _mm256_loadu_ps(w + i);
      _mm256_storeu_ps(w + i, _mm256_sub_ps(wi, _mm256_mul_ps(vlr, _mm256_add_ps(adam, _mm256_mul_ps(vdecay, wi)))));
    }
#endif
    for (; i < n; i++) {
      const float gi = g[i] * coef;
      m1[i] = beta1 * m1[i] + (1.0f - beta1) * gi;
      m2[i] = beta2 * m2[i] + (1.0f - beta2) * gi * gi;
      const float adam = (m1[i] / bc1) / (std::sqrt(m2[i] / bc2) + eps);
      w[i] -= lr * (adam + decay * w[i]);
    }
  }
};

// What every trainer's optimizer step shares: the averaged gradient's global norm, the clipping
// factor folded into AdamW's coefficient, and the learning rate of this step. Throws
// KF_ERR_INVALID_STATE (after `drop` has zeroed the gradients) when the norm is not finite.
struct StepPlan {
  double norm = 0;
  float coef = 0, lr = 0;
};
// out [c, r] = aᵀ for a [r, c], in cache-sized tiles over the pool.
void transpose_blocked(ThreadPool &pool, const float *a, int64_t r, int64_t c, float *out);

// Plain causal self-attention of T rows (no prefix cache) as GEMMs per query head and block of query
// rows (train_attention.cpp): q [T, nh, hd], k, v [T, nkv, hd] post-RoPE; out [T, nh, hd]; backward:
// dq [T, nh, hd], dk, dv [T, nkv, hd] (overwritten). `work` grows to about 2 · 128 · T + 9 T · hd
// floats; passes of more than kDenseAttentionRows rows take the row-by-row path.
constexpr int64_t kDenseAttentionRows = 65536;
void attention_forward_dense(ThreadPool &pool, const ModelConfig &c, const float *q, const float *k, const float *v,
                             int64_t T, float *out, std::vector<float> &work);
void attention_backward_dense(ThreadPool &pool, const ModelConfig &c, const float *q, const float *k, const float *v,
                              const float *dout, int64_t T, float *dq, float *dk, float *dv, std::vector<float> &work);

template <class Drop>
StepPlan plan_step(double sum_sq, int32_t examples, float max_grad_norm, float lr, int32_t warmup, int32_t total,
                   float min_ratio, int64_t step, Drop drop);

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

// Scratch of one pass, grown on demand and kept for the next (nothing is allocated per step once
// the largest pass has run).
struct PassScratch {
  std::vector<LayerActivations> acts;   // [n_layers]
  std::vector<float> x_final, xn_final; // [T, H]
  std::vector<float> rope_cs;           // [T, hd/2, 2]
  double aux_loss = 0;                  // the last backward's auxiliary mean (PassRows::n_main)
  // Work buffers of the forward and backward passes (the backward reads nothing in them the forward
  // wrote, except through acts / x_final / xn_final above).
  std::vector<float> x, o, attn_work;                  // [T, H] x2, attention's per-thread rows
  std::vector<float> xr, logits, dxr, dxn, dx;         // labelled rows and their logits; [T, H] x2
  std::vector<float> dh, dgate, dup, dxn_l, dattn, dq, dk, dv;
  std::vector<float> tmp, tmp2, dt, tT, dtT, gsmall, dyT;  // linear_backward's
};

// The rows of one pass: input embeddings at positions pos0.., and which rows predict which token.
struct PassRows {
  const float *x0 = nullptr;  // [T, H]
  int64_t T = 0, pos0 = 0;
  std::vector<int64_t> rows;     // labelled rows
  std::vector<int32_t> targets;  // the token each predicts
  int64_t progress0 = 0;         // added to the control block's done counter
  bool report_progress = true;   // false: the caller counts progress itself (cancel is still polled)
  // The loss is the labelled rows' summed cross-entropy over loss_denom (0: the count of labelled
  // rows, a plain mean), so passes of one document share one mean; its gradient is taken times
  // loss_weight (the returned loss is not).
  double loss_denom = 0, loss_weight = 1;
  // Rows from index n_main on (-1: none) are an auxiliary objective with their own mean and weight
  // (the compressor's summary targets); their summed cross-entropy / aux_denom goes to
  // PassScratch::aux_loss, not to the returned loss.
  int64_t n_main = -1;
  double aux_denom = 1, aux_weight = 0;
  // NULL, or [T, H]: a gradient arriving on the final-normed rows from outside the pass (the
  // compressor's summary rows, read by later passes).
  const float *dxn_ext = nullptr;
};

// Where a full-parameter trainer wants the base weights' gradients added (each NULL: not wanted).
// The embedding's gradient is the caller's: it is the gradient of the input rows (PassGrads::dx0).
struct ModelGrads {
  struct Layer {
    float *attn_norm = nullptr, *ffn_norm = nullptr;
    float *proj[kNumProj] = {};  // [out, in] each
    float *bias[4] = {};         // q, k, v, o biases when the model has them
  };
  std::vector<Layer> layers;     // [n_layers]
  float *final_norm = nullptr;   // [H]
  float *lm_head = nullptr;      // [V, H]: the embedding's gradient when the head is tied
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
  // When set: every base weight's gradient is added to these buffers.
  const ModelGrads *weights = nullptr;
  // When set: [T, H] receives d loss / d input rows x0 (overwritten).
  float *dx0 = nullptr;
};

// Forward and backward of one pass: mean cross-entropy over the labelled rows, its gradients for the
// LoRA pairs (all rank 0 to train nothing) and, with a prefix, for the prefix cache; with
// out.weights, for every base tensor; with out.dx0, for the input rows.
double train_pass(const kf_model &m, const std::vector<std::vector<TrainPair>> &pairs, float s, PassScratch &st,
                  const PassRows &in, const PrefixCache *prefix, PassGrads &out, kf_control *ctl);
// train_pass in two halves, for callers that run several forwards before the backwards (the
// compressor: a pass's summary rows feed the next pass, whose backward gives their gradient).
// pass_forward leaves st.xn_final [T, H] (final-normed rows) and what pass_backward reads; `in` and
// `prefix` must be the same for both halves and st untouched between them. col_sums is filled by
// the forward (out.col_sums). pass_backward returns the loss (0 when no row is labelled).
void pass_forward(const kf_model &m, const std::vector<std::vector<TrainPair>> &pairs, float s, PassScratch &st,
                  const PassRows &in, const PrefixCache *prefix, PassGrads &out, kf_control *ctl);
double pass_backward(const kf_model &m, const std::vector<std::vector<TrainPair>> &pairs, float s, PassScratch &st,
                     const PassRows &in, const PrefixCache *prefix, PassGrads &out, kf_control *ctl);

template <class Drop>
StepPlan plan_step(double sum_sq, int32_t examples, float max_grad_norm, float lr, int32_t warmup, int32_t total,
                   float min_ratio, int64_t step, Drop drop) {
  StepPlan sp;
  sp.norm = std::sqrt(sum_sq) / double(examples);  // sum_sq is of the summed (not averaged) gradients
  if (!std::isfinite(sp.norm)) {
    drop();
    raise(KF_ERR_INVALID_STATE, "cannot take an optimizer step: the gradient is not finite (norm %g); it was dropped "
          "and the weights are unchanged; lower the learning rate", sp.norm);
  }
  const double clip = max_grad_norm > 0 && sp.norm > max_grad_norm ? max_grad_norm / (sp.norm + 1e-6) : 1.0;
  sp.coef = float(clip / double(examples));
  sp.lr = schedule_lr(lr, warmup, total, min_ratio, step);
  return sp;
}

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

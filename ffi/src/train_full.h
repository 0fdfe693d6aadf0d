// train_full.h — full-parameter training (every tensor of a model as an f32 master copy) and
// AutoCompressor training (embed_summary.weight and the model, on documents and questions).
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "train.h"

namespace kf {

// One trained tensor: its f32 master, the summed gradient and the AdamW moments.
struct FullTensor {
  std::string name;         // HF name, e.g. "model.layers.0.self_attn.q_proj.weight"
  int64_t rows = 0, cols = 1;
  bool decay = false;       // matrices decay; norms and biases do not
  float *w = nullptr;       // the master: in `own` (matrices) or in the view model's vectors (norms, biases)
  std::vector<float> own;
  std::vector<float> g, m, v;
  size_t size() const { return size_t(rows) * size_t(cols); }
};

// One gradient replica: a worker's activations, input rows and gradients, so that examples on
// different replicas can run at the same time (data parallelism). Replica 0 adds into the tensors'
// own `g`; replica r > 0 into `own` (one buffer per tensor), which the optimizer step adds into the
// tensors' gradients in replica order.
struct TrainReplica {
  std::atomic<bool> busy{false};  // a call runs on it
  std::atomic<int32_t> accumulated{0};  // examples in its gradients
  std::vector<float *> g;         // per tensor: where this replica adds its gradient
  std::vector<std::vector<float>> own;
  ModelGrads grads;               // the same pointers, as the passes take them
  // Per pass of a gradient window (and the QA pass, last): activations and work buffers, kept.
  std::vector<PassScratch> scratch;
  std::vector<std::vector<float>> x0;  // the input rows of each pass of a window
  std::vector<float> dx0, dxn_ext, summaries, dsummaries;
  std::unique_ptr<unsigned char[]> pool_scratch;  // the kernels' scratch when the replica runs inline
};

}  // namespace kf

struct kf_model_trainer {
  kf_model *model = nullptr;  // the model it was created from (config, engine); its weights are not read again
  kf_model_train_params params{};
  // The model as the passes see it: the same config, every weight pointing at the f32 masters.
  kf_model view;
  std::vector<kf::FullTensor> tensors;
  int embed = -1, summary = -1;  // indices of embed_tokens and embed_summary (-1: none) in tensors
  bool tied = false;
  std::vector<std::vector<kf::TrainPair>> no_lora;  // [n_layers][kNumProj], all rank 0
  // Gradient replicas (replica 0 made at init, the others on first use, under replicas_mutex; the
  // unique_ptrs keep each one where it is while the vector grows).
  std::vector<std::unique_ptr<kf::TrainReplica>> replicas;
  std::mutex replicas_mutex;
  // Accumulating calls hold it shared (replicas run side by side); the step, writes and resets hold
  // it exclusively, so no pass reads a weight while it changes.
  std::shared_mutex gate;
  int64_t step = 0, n_params = 0;
};

namespace kf {

// Copies the model's weights to f32 masters (and embed_summary when params.summary_length > 0).
void model_trainer_init(kf_model_trainer &tr, kf_model &m, const kf_model_train_params &p);
// Index of the tensor `name` in tr.tensors, or -1.
int model_trainer_find(const kf_model_trainer &tr, const std::string &name);
// Most gradient replicas a trainer holds.
constexpr int32_t kMaxTrainReplicas = 64;
// Replica r (0 <= r < kMaxTrainReplicas), made with zeroed gradients on first use. Thread-safe.
TrainReplica &model_trainer_replica(kf_model_trainer &tr, int32_t r);
// One LM example (rows [prefix | ids], labels per id row) into replica `rep`; returns the mean cross-entropy.
double model_trainer_accumulate(kf_model_trainer &tr, TrainReplica &rep, const float *prefix, int32_t n_prefix, const int32_t *ids,
                                const int32_t *labels, int32_t n_ids, kf_control *ctl);
// One question and its answer over a compressor document (ids already checked).
struct QaPair {
  const int32_t *question = nullptr, *answer = nullptr;
  int32_t n_question = 0, n_answer = 0;
};
// Summary targets (checked): summary row rows[i] (of all n_segments · summary_length) predicts
// tokens[i] through the LM head, one mean cross-entropy over the n of them, weighted by weight.
struct SummaryTargets {
  const int32_t *rows = nullptr, *tokens = nullptr;
  int32_t n = 0;
  double weight = 0;
};
// One compressor document (kvfold.h states the passes, losses and stop-gradient rule) with n_pairs
// questions over it and optional summary targets; writes the LM, QA and summary-target mean
// cross-entropies (NaN for an objective that is off or has nothing to predict).
void model_trainer_accumulate_document(kf_model_trainer &tr, TrainReplica &rep, const int32_t *ids, int32_t n_ids, const QaPair *pairs,
                                       int32_t n_pairs, const SummaryTargets &targets, double &lm_loss,
                                       double &qa_loss, double &target_loss, kf_control *ctl);
kf_train_step_info model_trainer_step(kf_model_trainer &tr);
// Zeroes the accumulated gradients of every replica (a resume, a write; callers hold `gate` exclusively).
void model_trainer_drop_grads(kf_model_trainer &tr);
// Zeroes one replica's gradients (after an error or a cancel in a call on it).
void model_trainer_drop_replica(kf_model_trainer &tr, TrainReplica &rep);
// Examples accumulated over every replica.
int32_t model_trainer_accumulated(const kf_model_trainer &tr);

}  // namespace kf

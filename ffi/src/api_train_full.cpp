// api_train_full.cpp — the C ABI of full-parameter and compressor training: argument checks and
// ownership; the work is in train_full.cpp and train_compressor.cpp.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <shared_mutex>

#include "api_guard.h"
#include "train_full.h"

namespace {

using kf::api::guarded;
using kf::api::report;

// Question/answer pairs one document may carry: a bound on the per-call pair table, far above any
// use (each pair is a decoder pass).
constexpr int32_t kMaxDocumentPairs = 4096;
constexpr int32_t kMaxSummaryTargets = 1 << 20;

std::vector<float> *model_tensor(kf_model_trainer &tr, const char *name, int32_t which, int64_t n, const char *what) {
  if (!name) kf::raise(KF_ERR_INVALID_ARGUMENT, "cannot %s: name is NULL", what);
  const int i = kf::model_trainer_find(tr, name);
  if (i < 0) kf::raise(KF_ERR_INVALID_ARGUMENT, "cannot %s: the trainer has no tensor %s", what, name);
  kf::FullTensor &t = tr.tensors[size_t(i)];
  std::vector<float> *v = nullptr;
  switch (which) {
  case KF_TRAIN_WEIGHT: break;
  case KF_TRAIN_GRAD: v = &t.g; break;
  case KF_TRAIN_M: v = &t.m; break;
  case KF_TRAIN_V: v = &t.v; break;
  default: kf::raise(KF_ERR_INVALID_ARGUMENT, "cannot %s: which %d is not a kf_train_tensor", what, which);
  }
  if (n != int64_t(t.size()))
    kf::raise(KF_ERR_INVALID_ARGUMENT, "cannot %s: n %lld is not the %zu values of %s", what, (long long)n, t.size(),
              name);
  return v;
}

// The activations a pass of T rows keeps (as kf_lora_trainer_accumulate estimates them), refused
// past 90% of the memory available.
void check_activation_memory(const kf::ModelConfig &c, double rows, double passes, const char *what) {
  const double bytes = 4.0 * rows * passes * c.n_layers *
                       (6.0 * c.hidden_size + 4.0 * c.n_heads * c.head_dim + 4.0 * c.intermediate_size);
  const double available = kf::available_memory_bytes();
  if (available > 0 && bytes > 0.9 * available)
    kf::raise(KF_ERR_OUT_OF_MEMORY, "cannot %s: %.0f rows need %.2f GiB of activations, only %.2f GiB are available; "
              "shorten the example", what, rows * passes, bytes / 1073741824.0, available / 1073741824.0);
}

void check_ids(const int32_t *ids, int32_t n, int32_t V, const char *what, const char *which) {
  for (int32_t t = 0; t < n; t++)
    if (ids[t] < 0 || ids[t] >= V)
      kf::raise(KF_ERR_INVALID_ARGUMENT, "cannot %s: %s token id %d at index %d is outside [0, %d)", what, which, ids[t],
                t, V);
}

// Runs fn(replica) for one accumulating call: beside other replicas' calls, never beside a step or a
// write (the gate), one call per replica at a time. replica >= 0 (the *_on calls): wholly on this
// thread, without the engine's pool (its own scratch), so replicas run in parallel from several
// threads. replica < 0 (the one-call API): replica 0 over the pool, taking turns with sessions.
template <class F>
void on_replica(kf_model_trainer &tr, int32_t replica, const char *what, F &&fn) {
  std::shared_lock<std::shared_mutex> gate(tr.gate);  // first: a step walks the replicas this may add to
  kf::TrainReplica &rep = kf::model_trainer_replica(tr, std::max(replica, 0));
  if (rep.busy.exchange(true))
    kf::raise(KF_ERR_INVALID_STATE, "cannot %s: replica %d is in use by another call", what, std::max(replica, 0));
  struct Release {
    std::atomic<bool> &busy;
    ~Release() { busy = false; }
  } release{rep.busy};
  if (replica >= 0) {
    const auto at = reinterpret_cast<uintptr_t>(rep.pool_scratch.get());
    kf::ThreadPool::InlineScope scope(*tr.view.engine->pool, reinterpret_cast<void *>((at + 63) / 64 * 64));
    fn(rep);
  } else {
    std::lock_guard<std::mutex> lock(tr.view.engine->pool_mutex);
    fn(rep);
  }
}

// The checks every compressor document shares, then the document (its pairs' pointers checked).
void accumulate_document(kf_model_trainer &tr, int32_t replica, const int32_t *ids, int32_t n_ids, const kf::QaPair *pairs,
                         int32_t n_pairs, const kf::SummaryTargets &targets, float *lm_loss, float *qa_loss,
                         float *target_loss, kf_control *control) {
  const kf_model_train_params &p = tr.params;
  KF_REQUIRE(p.summary_length > 0, "train compressor",
             "the trainer was created with summary_length 0 (no embed_summary to train)");
  KF_REQUIRE(ids && n_ids >= 1, "train compressor", "a document needs ids (n_ids %d)", n_ids);
  const kf::ModelConfig &c = tr.view.cfg;
  check_ids(ids, n_ids, c.vocab_size, "train compressor", "document");
  int64_t longest_pair = 0;
  for (int32_t j = 0; j < n_pairs; j++) {
    const kf::QaPair &qp = pairs[j];
    // The one-pair call keeps its old names ("question", "answer"); pairs are named by index.
    char q[32] = "question", a[32] = "answer";
    if (n_pairs > 1) {
      std::snprintf(q, sizeof q, "question %d", j);
      std::snprintf(a, sizeof a, "answer %d", j);
    }
    check_ids(qp.question, qp.n_question, c.vocab_size, "train compressor", q);
    check_ids(qp.answer, qp.n_answer, c.vocab_size, "train compressor", a);
    if (qp.n_answer > 0) longest_pair = std::max<int64_t>(longest_pair, int64_t(qp.n_question) + qp.n_answer);
  }
  const double segments = std::ceil(double(n_ids) / p.segment_length), S = p.summary_length;
  KF_REQUIRE(std::isfinite(targets.weight) && targets.weight >= 0, "train compressor",
             "the summary-target weight %g is not a finite number >= 0", targets.weight);
  for (int32_t i = 0; i < targets.n; i++) {
    KF_REQUIRE(targets.rows[i] >= 0 && targets.rows[i] < segments * S, "train compressor",
               "summary target %d names summary row %d, outside the document's %.0f rows (%.0f segments x %.0f)", i,
               targets.rows[i], segments * S, segments, S);
  }
  check_ids(targets.tokens, targets.n, c.vocab_size, "train compressor", "summary target");
  const double window = std::min<double>(segments, p.backprop_segments);
  const double longest = std::max((segments - 1) * S + p.segment_length + S, segments * S + double(longest_pair));
  check_activation_memory(c, longest, window + 1, "train compressor");
  double lm = 0, qa = 0, tl = 0;
  on_replica(tr, replica, "train compressor", [&](kf::TrainReplica &rep) {
    kf::model_trainer_accumulate_document(tr, rep, ids, n_ids, pairs, n_pairs, targets, lm, qa, tl, control);
  });
  if (lm_loss) *lm_loss = float(lm);
  if (qa_loss) *qa_loss = float(qa);
  if (target_loss) *target_loss = float(tl);
}

// One LM example's checks, then the example on `replica` (see on_replica).
void accumulate_lm(kf_model_trainer *trainer, int32_t replica, const float *prefix, int32_t n_prefix,
                   const int32_t *ids, const int32_t *labels, int32_t n_ids, float *loss, kf_control *control) {
  KF_REQUIRE(trainer && loss, "train model", "trainer or loss is NULL");
  KF_REQUIRE(n_prefix >= 0 && n_ids >= 1 && ids && labels, "train model",
             "an example needs ids and labels (n_ids %d) and n_prefix >= 0 (%d)", n_ids, n_prefix);
  KF_REQUIRE(n_prefix == 0 || prefix, "train model", "prefix is NULL but n_prefix is %d", n_prefix);
  const kf::ModelConfig &c = trainer->view.cfg;
  const int32_t V = c.vocab_size, H = c.hidden_size;
  check_ids(ids, n_ids, V, "train model", "input");
  int32_t n_labels = 0;
  for (int32_t t = 0; t < n_ids; t++) {
    if (labels[t] < -1 || labels[t] >= V)
      kf::raise(KF_ERR_INVALID_ARGUMENT, "cannot train model: label %d at index %d is neither -1 nor in [0, %d)",
                labels[t], t, V);
    n_labels += labels[t] >= 0;
  }
  if (n_labels == 0) kf::raise(KF_ERR_INVALID_ARGUMENT, "cannot train model: the example has no labelled position");
  for (int64_t i = 0; i < int64_t(n_prefix) * H; i++)
    if (!std::isfinite(prefix[i]))
      kf::raise(KF_ERR_INVALID_ARGUMENT, "cannot train model: prefix row %lld holds a non-finite value",
                (long long)(i / H));
  check_activation_memory(c, double(n_prefix) + n_ids, 1, "train model");
  on_replica(*trainer, replica, "train model", [&](kf::TrainReplica &rep) {
    *loss = float(kf::model_trainer_accumulate(*trainer, rep, prefix, n_prefix, ids, labels, n_ids, control));
  });
}

// The pair table's checks (pair j's ids follow those of pairs < j), then the document on `replica`.
void accumulate_document_table(kf_model_trainer *trainer, int32_t replica, const int32_t *ids, int32_t n_ids,
                               const int32_t *questions, const int32_t *question_lengths, const int32_t *answers,
                               const int32_t *answer_lengths, int32_t n_pairs, const int32_t *target_rows,
                               const int32_t *target_tokens, int32_t n_targets, float target_weight, float *lm_loss,
                               float *qa_loss, float *target_loss, kf_control *control) {
  KF_REQUIRE(trainer, "train compressor", "trainer is NULL");
  KF_REQUIRE(n_targets >= 0 && n_targets <= kMaxSummaryTargets, "train compressor",
             "n_targets %d is outside [0, %d]", n_targets, kMaxSummaryTargets);
  KF_REQUIRE(n_targets == 0 || (target_rows && target_tokens), "train compressor",
             "target_rows or target_tokens is NULL for %d summary targets", n_targets);
  const kf::SummaryTargets targets{target_rows, target_tokens, n_targets, double(target_weight)};
  KF_REQUIRE(n_pairs >= 0 && n_pairs <= kMaxDocumentPairs, "train compressor", "n_pairs %d is outside [0, %d]",
             n_pairs, kMaxDocumentPairs);
  KF_REQUIRE(n_pairs == 0 || (question_lengths && answer_lengths), "train compressor",
             "question_lengths or answer_lengths is NULL for %d pairs", n_pairs);
  // Pair j's ids follow those of pairs < j in questions and answers.
  std::vector<kf::QaPair> pairs(static_cast<size_t>(n_pairs));
  int64_t nq = 0, na = 0;
  for (int32_t j = 0; j < n_pairs; j++) {
    KF_REQUIRE(question_lengths[j] >= 0 && answer_lengths[j] >= 0, "train compressor",
               "pair %d has a negative length (question %d, answer %d ids)", j, question_lengths[j],
               answer_lengths[j]);
    pairs[size_t(j)].n_question = question_lengths[j];
    pairs[size_t(j)].n_answer = answer_lengths[j];
    nq += question_lengths[j];
    na += answer_lengths[j];
  }
  KF_REQUIRE((nq == 0 || questions) && (na == 0 || answers), "train compressor",
             "questions (%lld ids) or answers (%lld ids) is NULL", (long long)nq, (long long)na);
  nq = na = 0;
  for (kf::QaPair &qp : pairs) {
    qp.question = questions ? questions + nq : nullptr;
    qp.answer = answers ? answers + na : nullptr;
    nq += qp.n_question;
    na += qp.n_answer;
  }
  accumulate_document(*trainer, replica, ids, n_ids, pairs.data(), n_pairs, targets, lm_loss, qa_loss, target_loss,
                      control);
}

}  // namespace

extern "C" {

kf_model_train_params kf_model_train_default_params(void) {
  kf_model_train_params p{};
  p.seed = 0x6b76666f6c64ull;
  p.lr = 1e-3f;
  p.beta1 = 0.9f;
  p.beta2 = 0.999f;
  p.eps = 1e-8f;
  p.max_grad_norm = 1.0f;
  p.segment_length = 512;
  p.backprop_segments = 2;
  p.lm_weight = 1.0f;
  p.qa_weight = 1.0f;
  p.init_std = 0.02f;
  return p;
}

kf_status kf_model_trainer_create(kf_model *model, const kf_model_train_params *params, kf_model_trainer **out) {
  if (out) *out = nullptr;
  return guarded("create model trainer", [&] {
    KF_REQUIRE(model && out, "create model trainer", "model or out is NULL");
    const kf_model_train_params p = params ? *params : kf_model_train_default_params();
    auto tr = std::make_unique<kf_model_trainer>();
    std::lock_guard<std::mutex> lock(model->engine->pool_mutex);
    kf::model_trainer_init(*tr, *model, p);
    model->n_sessions++;  // holds the model's engine and config: the model outlives it
    *out = tr.release();
  });
}

kf_status kf_model_trainer_free(kf_model_trainer *trainer) {
  return guarded("free model trainer", [&] {
    if (!trainer) return;
    trainer->model->n_sessions--;
    delete trainer;
  });
}

kf_status kf_model_trainer_get_info(const kf_model_trainer *trainer, kf_model_trainer_info *out) {
  return guarded("get model trainer info", [&] {
    KF_REQUIRE(trainer && out, "get model trainer info", "trainer or out is NULL");
    *out = kf_model_trainer_info{};
    out->step = trainer->step;
    out->n_params = trainer->n_params;
    {
      std::lock_guard<std::mutex> lock(const_cast<kf_model_trainer *>(trainer)->replicas_mutex);
      out->accumulated = kf::model_trainer_accumulated(*trainer);
    }
    out->n_tensors = int32_t(trainer->tensors.size());
    out->summary_length = trainer->params.summary_length;
    out->tied = trainer->tied ? 1 : 0;
  });
}

kf_status kf_model_trainer_tensor_name(const kf_model_trainer *trainer, int32_t index, char *name, int32_t cap,
                                       int64_t *rows, int64_t *cols) {
  return guarded("name model trainer tensor", [&] {
    KF_REQUIRE(trainer && name && rows && cols, "name model trainer tensor", "trainer, name, rows or cols is NULL");
    KF_REQUIRE(index >= 0 && index < int32_t(trainer->tensors.size()), "name model trainer tensor",
               "index %d is outside [0, %zu)", index, trainer->tensors.size());
    const kf::FullTensor &t = trainer->tensors[size_t(index)];
    KF_REQUIRE(cap > int32_t(t.name.size()), "name model trainer tensor", "cap %d cannot hold %zu bytes and a NUL",
               cap, t.name.size());
    std::memcpy(name, t.name.c_str(), t.name.size() + 1);
    *rows = t.rows;
    *cols = t.cols;
  });
}

kf_status kf_model_trainer_accumulate(kf_model_trainer *trainer, const float *prefix, int32_t n_prefix,
                                      const int32_t *ids, const int32_t *labels, int32_t n_ids, float *loss,
                                      kf_control *control) {
  return report(control, guarded("train model", [&] {
    accumulate_lm(trainer, -1, prefix, n_prefix, ids, labels, n_ids, loss, control);
  }));
}

kf_status kf_model_trainer_accumulate_on(kf_model_trainer *trainer, int32_t replica, const float *prefix,
                                         int32_t n_prefix, const int32_t *ids, const int32_t *labels, int32_t n_ids,
                                         float *loss, kf_control *control) {
  return report(control, guarded("train model", [&] {
    KF_REQUIRE(replica >= 0, "train model", "replica %d is negative", replica);
    accumulate_lm(trainer, replica, prefix, n_prefix, ids, labels, n_ids, loss, control);
  }));
}

kf_status kf_model_trainer_accumulate_document(kf_model_trainer *trainer, const int32_t *ids, int32_t n_ids,
                                               const int32_t *question, int32_t n_question, const int32_t *answer,
                                               int32_t n_answer, float *lm_loss, float *qa_loss, kf_control *control) {
  return report(control, guarded("train compressor", [&] {
    KF_REQUIRE(trainer, "train compressor", "trainer is NULL");
    KF_REQUIRE(n_question >= 0 && n_answer >= 0 && (n_question == 0 || question) && (n_answer == 0 || answer),
               "train compressor", "question (%d ids) or answer (%d ids) is NULL or negative", n_question, n_answer);
    const kf::QaPair pair{question, answer, n_question, n_answer};
    accumulate_document(*trainer, -1, ids, n_ids, &pair, 1, kf::SummaryTargets{}, lm_loss, qa_loss, nullptr, control);
  }));
}

kf_status kf_model_trainer_accumulate_document_pairs(kf_model_trainer *trainer, const int32_t *ids, int32_t n_ids,
                                                     const int32_t *questions, const int32_t *question_lengths,
                                                     const int32_t *answers, const int32_t *answer_lengths,
                                                     int32_t n_pairs, float *lm_loss, float *qa_loss,
                                                     kf_control *control) {
  return kf_model_trainer_accumulate_document_targets(trainer, ids, n_ids, questions, question_lengths, answers,
                                                      answer_lengths, n_pairs, nullptr, nullptr, 0, 0.0f, lm_loss,
                                                      qa_loss, nullptr, control);
}

kf_status kf_model_trainer_accumulate_document_targets(kf_model_trainer *trainer, const int32_t *ids, int32_t n_ids,
                                                       const int32_t *questions, const int32_t *question_lengths,
                                                       const int32_t *answers, const int32_t *answer_lengths,
                                                       int32_t n_pairs, const int32_t *target_rows,
                                                       const int32_t *target_tokens, int32_t n_targets,
                                                       float target_weight, float *lm_loss, float *qa_loss,
                                                       float *target_loss, kf_control *control) {
  return report(control, guarded("train compressor", [&] {
    accumulate_document_table(trainer, -1, ids, n_ids, questions, question_lengths, answers, answer_lengths, n_pairs,
                              target_rows, target_tokens, n_targets, target_weight, lm_loss, qa_loss, target_loss,
                              control);
  }));
}

kf_status kf_model_trainer_accumulate_document_on(kf_model_trainer *trainer, int32_t replica, const int32_t *ids,
                                                  int32_t n_ids, const int32_t *questions,
                                                  const int32_t *question_lengths, const int32_t *answers,
                                                  const int32_t *answer_lengths, int32_t n_pairs,
                                                  const int32_t *target_rows, const int32_t *target_tokens,
                                                  int32_t n_targets, float target_weight, float *lm_loss,
                                                  float *qa_loss, float *target_loss, kf_control *control) {
  return report(control, guarded("train compressor", [&] {
    KF_REQUIRE(replica >= 0, "train compressor", "replica %d is negative", replica);
    accumulate_document_table(trainer, replica, ids, n_ids, questions, question_lengths, answers, answer_lengths,
                              n_pairs, target_rows, target_tokens, n_targets, target_weight, lm_loss, qa_loss,
                              target_loss, control);
  }));
}

kf_status kf_model_trainer_step(kf_model_trainer *trainer, kf_train_step_info *out) {
  return guarded("step optimizer", [&] {
    KF_REQUIRE(trainer, "step optimizer", "trainer is NULL");
    std::unique_lock<std::shared_mutex> gate(trainer->gate);
    std::lock_guard<std::mutex> lock(trainer->view.engine->pool_mutex);
    const kf_train_step_info info = kf::model_trainer_step(*trainer);
    if (out) *out = info;
  });
}

kf_status kf_model_trainer_read(const kf_model_trainer *trainer, const char *name, int32_t which, float *out,
                                int64_t n) {
  return guarded("read model trainer tensor", [&] {
    KF_REQUIRE(trainer && out, "read model trainer tensor", "trainer or out is NULL");
    auto &tr = const_cast<kf_model_trainer &>(*trainer);
    std::shared_lock<std::shared_mutex> gate(tr.gate);
    const std::vector<float> *v = model_tensor(tr, name, which, n, "read model trainer tensor");
    const float *src = v ? v->data() : tr.tensors[size_t(kf::model_trainer_find(tr, name))].w;
    std::copy(src, src + n, out);
  });
}

kf_status kf_model_trainer_write(kf_model_trainer *trainer, const char *name, int32_t which, const float *in,
                                 int64_t n) {
  return guarded("write model trainer tensor", [&] {
    KF_REQUIRE(trainer && in, "write model trainer tensor", "trainer or in is NULL");
    std::unique_lock<std::shared_mutex> gate(trainer->gate);
    std::vector<float> *v = model_tensor(*trainer, name, which, n, "write model trainer tensor");
    for (int64_t i = 0; i < n; i++)
      if (!std::isfinite(in[i]))
        kf::raise(KF_ERR_INVALID_ARGUMENT, "cannot write model trainer tensor: value %lld of %s is not finite",
                  (long long)i, name);
    float *dst = v ? v->data() : trainer->tensors[size_t(kf::model_trainer_find(*trainer, name))].w;
    std::copy(in, in + n, dst);
  });
}

kf_status kf_model_trainer_set_step(kf_model_trainer *trainer, int64_t step) {
  return guarded("set model trainer step", [&] {
    KF_REQUIRE(trainer, "set model trainer step", "trainer is NULL");
    KF_REQUIRE(step >= 0, "set model trainer step", "step %lld is negative", (long long)step);
    std::unique_lock<std::shared_mutex> gate(trainer->gate);
    trainer->step = step;
    kf::model_trainer_drop_grads(*trainer);
  });
}

}  // extern "C"

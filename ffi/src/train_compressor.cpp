// train_compressor.cpp — AutoCompressor training of one document, read top to bottom:
//   segment i runs [summaries of segments < i | segment i | embed_summary rows] at positions 0..N-1,
//   causal; its last S final-normed rows are segment i's summaries (kvfold's Compressor forward);
//   each segment's tokens predict their next token (the LM loss), for each question/answer pair
//   [all summaries | question | answer] predicts the answer (the QA loss, one mean over every
//   answer token of every pair; one compression serves every pair), and summary rows given target
//   tokens predict them through the LM head (the summary-target loss, so a vector learns to carry
//   the tokens a reader will need: a dense signal the QA loss alone gives slowly).
// Gradients flow back through the summary vectors within a window of backprop_segments segments
// (the last window ends at the last segment): the window's passes run forward first, keeping their
// activations, then backward last to first, each handing the gradient of the summaries it read to
// the passes of the window that produced them. Summaries from earlier windows are constants.
#include <algorithm>
#include <cmath>
#include <limits>

#include "cpu_ops.h"
#include "train_full.h"

namespace kf {

void model_trainer_accumulate_document(kf_model_trainer &tr, TrainReplica &rep, const int32_t *ids, int32_t n_ids, const QaPair *pairs,
                                       int32_t n_pairs, const SummaryTargets &targets, double &lm_loss,
                                       double &qa_loss, double &target_loss, kf_control *ctl) {
  const kf_model &m = tr.view;
  const kf_model_train_params &p = tr.params;
  const int64_t H = m.cfg.hidden_size, S = p.summary_length, seg = p.segment_length, B = p.backprop_segments;
  const int64_t n_seg = (int64_t(n_ids) + seg - 1) / seg;
  const auto seg_len = [&](int64_t i) { return std::min<int64_t>(seg, n_ids - i * seg); };
  // The LM loss is one mean over every predicted token of the document.
  int64_t lm_rows = 0;
  for (int64_t i = 0; i < n_seg; i++) lm_rows += seg_len(i) - 1;
  // The QA loss is one mean over every answer token of every pair: each pair's pass divides its
  // summed cross-entropy by the total, so a long answer weighs more than a short one, exactly as
  // the LM loss weighs tokens (and one pair is the old mean over its answer).
  int64_t qa_rows = 0, qa_passes = 0;
  for (int32_t j = 0; j < n_pairs; j++) {
    qa_rows += pairs[j].n_answer;
    qa_passes += pairs[j].n_answer > 0;
  }
  const bool lm_on = p.lm_weight > 0 && lm_rows > 0, qa_on = p.qa_weight > 0 && qa_rows > 0;
  // Summary targets: which segment's pass holds each target row (they ask nothing of later passes).
  const bool targets_on = targets.n > 0 && targets.weight > 0;
  std::vector<int64_t> seg_targets(size_t(n_seg), 0);
  for (int32_t i = 0; i < targets.n; i++) seg_targets[size_t(targets.rows[i] / S)]++;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  lm_loss = lm_on ? 0.0 : nan;
  qa_loss = nan;
  target_loss = targets_on ? 0.0 : nan;
  const float *table = tr.tensors[size_t(tr.embed)].w;
  const float *summary_rows = tr.tensors[size_t(tr.summary)].w;
  float *g_embed = rep.g[size_t(tr.embed)], *g_summary = rep.g[size_t(tr.summary)];
  rep.summaries.resize(size_t(n_seg * S * H));   // [n_seg · S, H] every segment's summaries
  rep.dsummaries.resize(size_t(n_seg * S * H));  // their gradients, within the current window
  rep.scratch.resize(size_t(B) + 1);
  rep.x0.resize(size_t(B) + 1);
  std::vector<PassRows> rows(size_t(B) + 1);
  progress_start(ctl, 2 * n_seg + (qa_on ? 2 * qa_passes : 0));
  const auto tick = [&] {
    progress_add(ctl, 1);
  };
  // Pass k of the window starting at a: segment i = a + k.
  const auto build_segment = [&](int64_t i, int64_t k) {
    const int64_t len = seg_len(i), T = i * S + len + S;
    std::vector<float> &x0 = rep.x0[size_t(k)];
    x0.resize(size_t(T * H));
    std::copy_n(rep.summaries.begin(), i * S * H, x0.begin());  // [summaries < i | segment | summary rows]
    for (int64_t t = 0; t < len; t++) std::copy_n(table + int64_t(ids[i * seg + t]) * H, H, x0.begin() + (i * S + t) * H);
    std::copy_n(summary_rows, S * H, x0.begin() + (i * S + len) * H);
    PassRows &in = rows[size_t(k)];
    in = PassRows{};
    in.T = T;
    in.x0 = x0.data();
    in.report_progress = false;
    if (lm_on) {
      for (int64_t t = 0; t + 1 < len; t++) {
        in.rows.push_back(i * S + t);
        in.targets.push_back(ids[i * seg + t + 1]);
      }
      in.loss_denom = double(lm_rows);
      in.loss_weight = p.lm_weight;
    }
    // Summary row r = i·S + j sits at pass row T − S + j; it predicts its targets (auxiliary rows).
    if (targets_on && seg_targets[size_t(i)] > 0) {
      in.n_main = int64_t(in.rows.size());
      for (int32_t n = 0; n < targets.n; n++) {
        if (targets.rows[n] / S != i) continue;
        in.rows.push_back(T - S + targets.rows[n] % S);
        in.targets.push_back(targets.tokens[n]);
      }
      in.aux_denom = double(targets.n);
      in.aux_weight = targets.weight;
    }
  };
  const auto window_has_targets = [&](int64_t a, int64_t b) {
    for (int64_t i = a; targets_on && i < b; i++)
      if (seg_targets[size_t(i)] > 0) return true;
    return false;
  };
  // Adds a pass's input-row gradient dx0 [T, H] where its rows came from: summaries of the window
  // (from row lo·S), embedding rows of `tokens` (from row t0), embed_summary rows (from row s0, or -1).
  const auto scatter = [&](const float *dx0, int64_t lo, int64_t hi, int64_t t0, const int32_t *tokens, int64_t n_tok,
                           int64_t s0) {
    if (hi > lo) add_inplace(rep.dsummaries.data() + lo * S * H, dx0 + lo * S * H, (hi - lo) * S * H);
    for (int64_t t = 0; t < n_tok; t++) add_inplace(g_embed + int64_t(tokens[t]) * H, dx0 + (t0 + t) * H, H);
    if (s0 >= 0) add_inplace(g_summary, dx0 + s0 * H, S * H);
  };
  try {
    // Windows of B segments, the last one ending at the last segment.
    const int64_t first_end = n_seg - ((n_seg - 1) / B) * B;
    for (int64_t a = 0, b = first_end; a < n_seg; a = b, b += B) {
      const bool last = b == n_seg, backward = lm_on || (last && qa_on) || window_has_targets(a, b);
      std::fill_n(rep.dsummaries.begin() + a * S * H, (b - a) * S * H, 0.0f);
      PassGrads fwd;
      for (int64_t i = a; i < b; i++) {
        check_cancel(ctl, "train compressor");
        const int64_t k = backward ? i - a : 0;  // forward-only passes share one scratch
        build_segment(i, k);
        const PassRows &in = rows[size_t(k)];
        pass_forward(m, tr.no_lora, 1.0f, rep.scratch[size_t(k)], in, nullptr, fwd, ctl);
        std::copy_n(rep.scratch[size_t(k)].xn_final.begin() + (in.T - S) * H, S * H, rep.summaries.begin() + i * S * H);
        tick();
      }
      if (!backward) {
        progress_add(ctl, b - a);
        continue;
      }
      // Each pair: [all summaries | question | answer], row K + nq - 1 + t predicts answer[t]; the
      // pairs do not see each other, their summary gradients add up in dsummaries.
      if (last && qa_on) qa_loss = 0.0;
      for (int32_t j = 0; last && qa_on && j < n_pairs; j++) {
        const QaPair &qp = pairs[j];
        if (qp.n_answer == 0) continue;
        check_cancel(ctl, "train compressor");
        const int64_t K = n_seg * S, nq = qp.n_question, na = qp.n_answer, T = K + nq + na;
        std::vector<float> &x0 = rep.x0[size_t(B)];
        x0.resize(size_t(T * H));
        std::copy_n(rep.summaries.begin(), K * H, x0.begin());
        for (int64_t t = 0; t < nq; t++) std::copy_n(table + int64_t(qp.question[t]) * H, H, x0.begin() + (K + t) * H);
        for (int64_t t = 0; t < na; t++) std::copy_n(table + int64_t(qp.answer[t]) * H, H, x0.begin() + (K + nq + t) * H);
        PassRows in;
        in.T = T;
        in.x0 = x0.data();
        in.report_progress = false;
        in.loss_denom = double(qa_rows);
        in.loss_weight = p.qa_weight;
        for (int64_t t = 0; t < na; t++) {
          in.rows.push_back(K + nq - 1 + t);
          in.targets.push_back(qp.answer[t]);
        }
        rep.dx0.resize(size_t(T * H));
        PassGrads g;
        g.weights = &rep.grads;
        g.dx0 = rep.dx0.data();
        qa_loss += train_pass(m, tr.no_lora, 1.0f, rep.scratch[size_t(B)], in, nullptr, g, ctl);
        scatter(rep.dx0.data(), a, b, K, qp.question, nq, -1);
        scatter(rep.dx0.data(), 0, 0, K + nq, qp.answer, na, -1);
        progress_add(ctl, 2);
      }
      for (int64_t i = b - 1; i >= a; i--) {
        const int64_t k = i - a, len = seg_len(i);
        PassRows &in = rows[size_t(k)];
        rep.dxn_ext.assign(size_t(in.T * H), 0.0f);  // the gradient of this pass's summaries, from later passes
        std::copy_n(rep.dsummaries.begin() + i * S * H, S * H, rep.dxn_ext.begin() + (in.T - S) * H);
        in.dxn_ext = rep.dxn_ext.data();
        rep.dx0.resize(size_t(in.T * H));
        PassGrads g;
        g.weights = &rep.grads;
        g.dx0 = rep.dx0.data();
        const double loss = pass_backward(m, tr.no_lora, 1.0f, rep.scratch[size_t(k)], in, nullptr, g, ctl);
        if (lm_on) lm_loss += loss;
        if (targets_on && seg_targets[size_t(i)] > 0) target_loss += rep.scratch[size_t(k)].aux_loss;
        scatter(rep.dx0.data(), a, i, i * S, ids + i * seg, len, i * S + len);
        tick();
      }
    }
    rep.accumulated++;
  } catch (...) {
    model_trainer_drop_replica(tr, rep);  // a pass may have added part of its gradients
    throw;
  }
}

}  // namespace kf

// lococo_train.cpp — calibrating LoCoCo heads, read top to bottom: the backward pass of the fusion
// (lococo_fuse in lococo.cpp, run with a trace) into the conv weight, bias and λ, the segment loop over
// one sequence, and the optimizer step (AdamW, train.h).
//
// Per segment, as inference runs it: when the detached cache holds more than M + 16 slots it is fused
// to M (heavy hitters copied, Mc slots fused by the heads); the segment attends to [that cache ; its
// own rows] and its loss is backpropagated through the frozen model into the prefix's keys and values
// (train_pass), then through the fusion into the heads. The next cache is [prefix ; the segment's keys
// and values], detached, with the slot scores of this forward.
#include "lococo_train.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "cpu_ops.h"
#include "model.h"

namespace kf {

namespace {

// A sequence's detached cache: per layer keys and values [capacity, nkv, hd], scores [capacity, nkv].
struct SeqCache {
  int64_t n = 0;
  std::vector<std::vector<float>> k, v, score;
  void init(int64_t layers, int64_t capacity, int64_t nkv, int64_t hd) {
    k.assign(size_t(layers), std::vector<float>(size_t(capacity * nkv * hd)));
    v.assign(size_t(layers), std::vector<float>(size_t(capacity * nkv * hd)));
    score.assign(size_t(layers), std::vector<float>(size_t(capacity * nkv)));
    n = 0;
  }
};

// Backward of lococo_fuse (lococo.cpp) for head g, given d loss / d prefix keys and values dk, dv [M, nkv, hd]:
//   dλ += Σ_c dfused_c · (Wx_c − x_pick_c);  dW = λ dfused xᵀ;  dY = W ⊙ (dW − rowsum(W ⊙ dW));
//   dZ = dY ⊙ [z > 0];  gbias += Σ_t dZ;  gweight += dZᵀ im2col(x)  (the implicit GEMM again)
void fuse_layer_backward(const kf_lococo_heads &H, ThreadPool &pool, const FuseTrace &tr, int64_t l, int64_t g,
                         int64_t nkv, int64_t hd, const float *dk, const float *dv, std::vector<float> &gw,
                         std::vector<float> &gb, double &gl) {
  const kf_lococo_heads::Layer &W = H.layers[size_t(l)];
  const int32_t S = tr.S, Mc = H.fused, Mh = H.slots - H.fused;
  const int64_t two_hd = 2 * hd, k = H.kernel, pad = (k - 1) / 2;
  const float lambda = W.lambda;
  std::vector<float> dfused(size_t(Mc * two_hd));  // [Mc, 2·hd]
  for (int32_t ch = 0; ch < Mc; ch++) {
    std::copy_n(dk + (int64_t(Mh + ch) * nkv + g) * hd, hd, dfused.data() + int64_t(ch) * two_hd);
    std::copy_n(dv + (int64_t(Mh + ch) * nkv + g) * hd, hd, dfused.data() + int64_t(ch) * two_hd + hd);
    const float *xs = tr.x_pad.data() + (pad + tr.pick[size_t(ch)]) * two_hd;
    const float *wx = tr.wx.data() + int64_t(ch) * two_hd;
    for (int64_t i = 0; i < two_hd; i++) gl += double(dfused[size_t(ch * two_hd + i)]) * (wx[i] - xs[i]);
  }
  // dW = λ dfused xᵀ  [Mc, S]: x's interior rows [S, 2·hd] are the "weights" [out = S, in = 2·hd]
  std::vector<float> dw(size_t(Mc) * size_t(S));
  matmul(pool, dfused.data(), tr.x_pad.data() + pad * two_hd, DType::F32, dw.data(), Mc, two_hd, S, nullptr);
  // dZᵀ [Mc, S] through the softmax over slots and the ReLU
  std::vector<float> dzt(size_t(Mc) * size_t(S));
  for (int32_t ch = 0; ch < Mc; ch++) {
    const float *w = tr.w.data() + int64_t(ch) * S, *d = dw.data() + int64_t(ch) * S;
    double dot = 0;
    for (int32_t t = 0; t < S; t++) dot += double(w[t]) * lambda * d[t];
    float *out = dzt.data() + int64_t(ch) * S;
    double bias_grad = 0;
    for (int32_t t = 0; t < S; t++) {
      const float dy = w[t] * float(lambda * d[t] - dot);
      out[t] = tr.z[size_t(int64_t(t) * Mc + ch)] > 0.0f ? dy : 0.0f;
      bias_grad += out[t];
    }
    gb[size_t(ch)] += float(bias_grad);
  }
  // gweight [Mc, k·2hd] += dZᵀ [Mc, S] · im2col [S, k·2hd], im2col rows 2·hd apart in x_pad
  std::vector<float> gk(size_t(Mc) * size_t(k * two_hd));
  matmul_nn(pool, dzt.data(), tr.x_pad.data(), DType::F32, gk.data(), Mc, S, k * two_hd, two_hd);
  add_inplace(gw.data(), gk.data(), int64_t(gk.size()));
}

}  // namespace

void lococo_trainer_init(kf_lococo_trainer &tr, kf_model &m, const kf_lococo_train_params &p_in,
                         const kf_lococo_heads *init) {
  const ModelConfig &c = m.cfg;
  kf_lococo_train_params p = p_in;
  if (init) {
    if (init->model != &m) raise(KF_ERR_INVALID_ARGUMENT, "cannot create LoCoCo trainer: the heads belong to another model");
    p.slots = init->slots;
    p.segment = init->segment;
    p.kernel = init->kernel;
    p.keep_rate = init->keep_rate;
  }
  if (p.slots < 1 || p.segment < 1 || p.segment > 65536 || p.kernel < 1 || p.kernel % 2 == 0 ||
      !(p.keep_rate > 0.0f && p.keep_rate < 1.0f))
    raise(KF_ERR_INVALID_ARGUMENT, "cannot create LoCoCo trainer: slots %d, segment %d, kernel %d (odd) and keep_rate "
          "%g (strictly between 0 and 1) are out of range", p.slots, p.segment, p.kernel, double(p.keep_rate));
  if (!(p.lr >= 0.0f) || !(p.beta1 >= 0.0f && p.beta1 < 1.0f) || !(p.beta2 >= 0.0f && p.beta2 < 1.0f) ||
      !(p.eps > 0.0f) || !(p.max_grad_norm >= 0.0f) || !(p.weight_decay >= 0.0f) || p.warmup_steps < 0 ||
      p.total_steps < 0 || !(p.min_lr_ratio >= 0.0f && p.min_lr_ratio <= 1.0f) || !std::isfinite(p.init_lambda))
    raise(KF_ERR_INVALID_ARGUMENT, "cannot create LoCoCo trainer: an optimizer setting is out of range");
  const int32_t Mc = int32_t(std::floor(double(p.slots) * (1.0 - double(p.keep_rate))));
  if (Mc < 1) raise(KF_ERR_INVALID_ARGUMENT, "cannot create LoCoCo trainer: slots %d and keep_rate %g fuse into no slot", p.slots, double(p.keep_rate));
  tr.model = &m;
  tr.params = p;
  kf_lococo_heads &h = tr.heads;
  h.model = &m;
  h.slots = p.slots;
  h.fused = Mc;
  h.kernel = p.kernel;
  h.segment = p.segment;
  h.keep_rate = p.keep_rate;
  h.head_dim = c.head_dim;
  const size_t nw = size_t(Mc) * size_t(p.kernel) * 2 * size_t(c.head_dim);
  h.layers.assign(size_t(c.n_layers), {});
  uint64_t rng = p.seed;
  const float bound = 1.0f / std::sqrt(float(2 * c.head_dim * p.kernel));  // PyTorch's Conv1d fan-in scale
  for (int32_t l = 0; l < c.n_layers; l++) {
    kf_lococo_heads::Layer &L = h.layers[size_t(l)];
    if (init) {
      L = init->layers[size_t(l)];
    } else {
      L.weight.resize(nw);
      for (float &x : L.weight) x = bound * (2.0f * float(splitmix64(rng) >> 40) / 16777216.0f - 1.0f);
      L.bias.assign(size_t(Mc), 0.0f);
      L.lambda = p.init_lambda;
    }
  }
  h.bytes = int64_t(c.n_layers) * int64_t(nw + size_t(Mc) + 1) * 4;
  tr.state.assign(size_t(c.n_layers), {});
  for (auto &s : tr.state) {
    for (auto *v : {&s.gw, &s.mw, &s.vw}) v->assign(nw, 0.0f);
    for (auto *v : {&s.gb, &s.mb, &s.vb}) v->assign(size_t(Mc), 0.0f);
  }
  tr.no_lora.assign(size_t(c.n_layers), std::vector<TrainPair>(kNumProj));
}

double lococo_trainer_accumulate(kf_lococo_trainer &tr, const int32_t *ids, int32_t n_ids, kf_control *ctl) {
  const kf_model &m = *tr.model;
  const ModelConfig &c = m.cfg;
  ThreadPool &pool = *m.engine->pool;
  const kf_lococo_heads &H = tr.heads;
  const int64_t L = c.n_layers, nkv = c.n_kv_heads, hd = c.head_dim, kv_dim = nkv * hd, Hd = c.hidden_size;
  const int64_t M = H.slots, B = H.segment;
  progress_start(ctl, n_ids);
  SeqCache cache, fused;
  cache.init(L, M + kCacheSlack + B, nkv, hd);
  fused.init(L, M, nkv, hd);
  ShrinkScratch shrink;
  shrink.init_lococo(int32_t(M + kCacheSlack + B), H, int32_t(M));
  std::vector<std::vector<FuseTrace>> traces(static_cast<size_t>(L), std::vector<FuseTrace>(static_cast<size_t>(nkv)));
  // This sequence's gradients: they join the accumulated ones only when it succeeded.
  std::vector<kf_lococo_trainer::LayerState> g(static_cast<size_t>(L));
  std::vector<double> gl(static_cast<size_t>(L), 0.0);
  for (auto &s : g) {
    s.gw.assign(H.layers[0].weight.size(), 0.0f);
    s.gb.assign(size_t(H.fused), 0.0f);
  }
  std::vector<std::vector<float>> dk(static_cast<size_t>(L)), dv(static_cast<size_t>(L)), col_sums(static_cast<size_t>(L));
  std::vector<float> x0;
  double loss_sum = 0;
  int32_t segments = 0;
  for (int64_t p0 = 0; p0 < n_ids;) {
    check_cancel(ctl, "calibrate");
    const int64_t T = std::min<int64_t>(B, n_ids - p0);
    PassRows in;
    in.T = T;
    in.pos0 = p0;
    in.report_progress = false;
    for (int64_t t = 0; t < T; t++) {
      if (p0 + t + 1 >= n_ids) break;  // every token predicts the next
      in.rows.push_back(t);
      in.targets.push_back(ids[p0 + t + 1]);
    }
    if (in.rows.empty()) break;  // a last segment of one token predicts nothing
    // The cache policy's turn, as in inference: fuse when the cache passes M + 16.
    const bool fusing = cache.n > M + kCacheSlack;
    if (fusing)
      for (int64_t l = 0; l < L; l++) {
        const size_t li = size_t(l);
        lococo_fuse(H, int32_t(l), H.slots, pool, int32_t(cache.n), int32_t(nkv), int32_t(hd), cache.k[li].data(),
                    cache.v[li].data(), cache.score[li].data(), fused.k[li].data(), fused.v[li].data(),
                    fused.score[li].data(), shrink, traces[li].data());
      }
    const SeqCache &pre = fusing ? fused : cache;
    const int64_t slots = fusing ? M : cache.n;
    PrefixCache prefix;
    prefix.slots = slots;
    for (int64_t l = 0; l < L; l++) {
      prefix.k.push_back(pre.k[size_t(l)].data());
      prefix.v.push_back(pre.v[size_t(l)].data());
    }
    x0.resize(size_t(T * Hd));
    for (int64_t t = 0; t < T; t++) convert_row_to_f32(m.embed.row(ids[p0 + t]), m.embed.dtype, x0.data() + t * Hd, Hd);
    in.x0 = x0.data();
    PassGrads out;
    out.col_sums = &col_sums;
    if (fusing) {
      out.cache_dk = &dk;
      out.cache_dv = &dv;
    }
    loss_sum += train_pass(m, tr.no_lora, 1.0f, tr.scratch, in, slots > 0 ? &prefix : nullptr, out, ctl);
    segments++;
    if (fusing)
      for (int64_t l = 0; l < L; l++)
        for (int64_t gh = 0; gh < nkv; gh++)
          fuse_layer_backward(H, pool, traces[size_t(l)][size_t(gh)], l, gh, nkv, hd, dk[size_t(l)].data(),
                              dv[size_t(l)].data(), g[size_t(l)].gw, g[size_t(l)].gb, gl[size_t(l)]);
    // The next cache, detached: [prefix ; this segment's keys and values], scored by this forward.
    for (int64_t l = 0; l < L; l++) {
      if (fusing) {
        std::copy_n(fused.k[size_t(l)].begin(), M * kv_dim, cache.k[size_t(l)].begin());
        std::copy_n(fused.v[size_t(l)].begin(), M * kv_dim, cache.v[size_t(l)].begin());
      }
      const LayerActivations &A = tr.scratch.acts[size_t(l)];
      std::copy_n(A.k.begin(), T * kv_dim, cache.k[size_t(l)].begin() + slots * kv_dim);
      std::copy_n(A.v.begin(), T * kv_dim, cache.v[size_t(l)].begin() + slots * kv_dim);
      std::copy_n(col_sums[size_t(l)].begin(), (slots + T) * nkv, cache.score[size_t(l)].begin());
    }
    cache.n = slots + T;
    p0 += T;
    progress_set(ctl, p0);
  }
  if (segments == 0) raise(KF_ERR_INVALID_ARGUMENT, "cannot calibrate: a sequence needs at least 2 tokens");
  // The loss is the mean over segments: scale this sequence's gradients by 1 / segments and keep them.
  const float inv = 1.0f / float(segments);
  for (int64_t l = 0; l < L; l++) {
    kf_lococo_trainer::LayerState &s = tr.state[size_t(l)];
    axpy_f32(inv, g[size_t(l)].gw.data(), s.gw.data(), int64_t(s.gw.size()));
    axpy_f32(inv, g[size_t(l)].gb.data(), s.gb.data(), int64_t(s.gb.size()));
    s.gl += float(gl[size_t(l)]) * inv;
  }
  tr.accumulated++;
  return loss_sum / segments;
}

kf_train_step_info lococo_trainer_step(kf_lococo_trainer &tr) {
  if (tr.accumulated == 0) raise(KF_ERR_INVALID_STATE, "cannot take an optimizer step: no sequence was accumulated");
  const kf_lococo_train_params &p = tr.params;
  double sq = 0;
  for (const auto &s : tr.state) {
    for (float x : s.gw) sq += double(x) * x;
    for (float x : s.gb) sq += double(x) * x;
    sq += double(s.gl) * s.gl;
  }
  const auto clear = [&] {
    for (auto &s : tr.state) {
      std::fill(s.gw.begin(), s.gw.end(), 0.0f);
      std::fill(s.gb.begin(), s.gb.end(), 0.0f);
      s.gl = 0;
    }
    tr.accumulated = 0;
  };
  const StepPlan sp = plan_step(sq, tr.accumulated, p.max_grad_norm, p.lr, p.warmup_steps, p.total_steps,
                                p.min_lr_ratio, tr.step, clear);
  const float lr = sp.lr, coef = sp.coef;
  const double norm = sp.norm;
  const AdamW opt(lr, p.beta1, p.beta2, p.eps, tr.step, coef);
  for (size_t l = 0; l < tr.state.size(); l++) {
    auto &s = tr.state[l];
    kf_lococo_heads::Layer &L = tr.heads.layers[l];
    opt.update(L.weight.data(), s.gw.data(), s.mw.data(), s.vw.data(), L.weight.size(), p.weight_decay);
    opt.update(L.bias.data(), s.gb.data(), s.mb.data(), s.vb.data(), L.bias.size(), 0.0f);
    opt.update(&L.lambda, &s.gl, &s.ml, &s.vl, 1, 0.0f);
  }
  kf_train_step_info info{};
  info.examples = tr.accumulated;
  clear();
  tr.step++;
  info.step = tr.step;
  info.lr = lr;
  info.grad_norm = float(norm);
  return info;
}

}  // namespace kf

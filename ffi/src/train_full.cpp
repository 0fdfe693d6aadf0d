// train_full.cpp — full-parameter training on the CPU: f32 master copies of every tensor, one LM
// example's gradients through train_pass (which adds every weight's gradient when asked), the
// embedding's gradient from the gradient of the input rows, and AdamW. The compressor's document
// passes are in train_compressor.cpp.
#include <algorithm>
#include <cmath>

#include "cpu_ops.h"
#include "train_full.h"

namespace kf {

namespace {

// The masters of one model: matrices are converted to f32 here; norm and bias vectors are already
// f32 and are copied into the view (which then owns them).
struct MasterBuilder {
  kf_model_trainer &tr;

  FullTensor &add(const std::string &name, int64_t rows, int64_t cols, bool decay) {
    FullTensor t;
    t.name = name;
    t.rows = rows;
    t.cols = cols;
    t.decay = decay;
    tr.tensors.push_back(std::move(t));
    return tr.tensors.back();
  }
  // A matrix: converted row by row from its stored dtype; dst then points at the master.
  void matrix(const std::string &name, const Weight &src, Weight &dst) {
    FullTensor &t = add(name, src.rows, src.cols, true);
    t.own.resize(t.size());
    for (int64_t r = 0; r < src.rows; r++) weight_row_to_f32(src, r, t.own.data() + r * src.cols);
    t.w = t.own.data();  // a vector's buffer survives the move into tr.tensors' growth
    dst = Weight{t.w, DType::F32, src.rows, src.cols};
  }
  // A vector (norm weight, bias): the view's copy is the master.
  void vector(const std::string &name, const std::vector<float> &src, std::vector<float> &dst, bool decay = false) {
    dst = src;
    FullTensor &t = add(name, int64_t(dst.size()), 1, decay);
    t.w = dst.data();
  }
};

}  // namespace

void model_trainer_init(kf_model_trainer &tr, kf_model &m, const kf_model_train_params &p) {
  const ModelConfig &c = m.cfg;
  if (!(p.lr >= 0.0f) || !std::isfinite(p.lr) || !(p.weight_decay >= 0.0f) || !(p.beta1 >= 0.0f && p.beta1 < 1.0f) ||
      !(p.beta2 >= 0.0f && p.beta2 < 1.0f) || !(p.eps > 0.0f) || !(p.max_grad_norm >= 0.0f) ||
      !(p.min_lr_ratio >= 0.0f && p.min_lr_ratio <= 1.0f) || p.warmup_steps < 0 || p.total_steps < 0)
    raise(KF_ERR_INVALID_ARGUMENT, "cannot create model trainer: an optimizer setting is out of range (lr %g, "
          "weight_decay %g, betas %g/%g, eps %g, max_grad_norm %g, min_lr_ratio %g, warmup %d, total %d)",
          double(p.lr), double(p.weight_decay), double(p.beta1), double(p.beta2), double(p.eps),
          double(p.max_grad_norm), double(p.min_lr_ratio), p.warmup_steps, p.total_steps);
  if (p.summary_length < 0 || p.summary_length > 65536)
    raise(KF_ERR_INVALID_ARGUMENT, "cannot create model trainer: summary_length %d is outside [0, 65536]",
          p.summary_length);
  if (p.summary_length > 0 && (p.segment_length < 1 || p.backprop_segments < 1 || !(p.lm_weight >= 0.0f) ||
                               !(p.qa_weight >= 0.0f) || !std::isfinite(p.lm_weight) || !std::isfinite(p.qa_weight) ||
                               !(p.init_std >= 0.0f) || !std::isfinite(p.init_std) || p.backprop_segments > 4096))
    raise(KF_ERR_INVALID_ARGUMENT, "cannot create model trainer: a compressor setting is out of range "
          "(segment_length %d, backprop_segments %d, lm_weight %g, qa_weight %g, init_std %g)", p.segment_length,
          p.backprop_segments, double(p.lm_weight), double(p.qa_weight), double(p.init_std));
  tr.model = &m;
  tr.params = p;
  kf_model &v = tr.view;
  v.engine = m.engine;
  v.cfg = c;
  v.inv_freq = m.inv_freq;
  v.weight_dtype = KF_DTYPE_F32;
  tr.tied = m.lm_head.data == m.embed.data;
  // Every tensor is added before any pointer into tr.tensors is taken: reserve so `add` never moves them.
  tr.tensors.reserve(size_t(c.n_layers) * 13 + 4);
  MasterBuilder b{tr};
  b.matrix("model.embed_tokens.weight", m.embed, v.embed);
  v.layers.resize(size_t(c.n_layers));
  for (int l = 0; l < c.n_layers; l++) {
    const std::string pre = "model.layers." + std::to_string(l) + ".";
    const LayerWeights &S = m.layers[size_t(l)];
    LayerWeights &D = v.layers[size_t(l)];
    b.vector(pre + "input_layernorm.weight", S.attn_norm, D.attn_norm);
    b.matrix(pre + "self_attn.q_proj.weight", S.wq, D.wq);
    b.matrix(pre + "self_attn.k_proj.weight", S.wk, D.wk);
    b.matrix(pre + "self_attn.v_proj.weight", S.wv, D.wv);
    b.matrix(pre + "self_attn.o_proj.weight", S.wo, D.wo);
    if (!S.bq.empty()) b.vector(pre + "self_attn.q_proj.bias", S.bq, D.bq);
    if (!S.bk.empty()) b.vector(pre + "self_attn.k_proj.bias", S.bk, D.bk);
    if (!S.bv.empty()) b.vector(pre + "self_attn.v_proj.bias", S.bv, D.bv);
    if (!S.bo.empty()) b.vector(pre + "self_attn.o_proj.bias", S.bo, D.bo);
    b.vector(pre + "post_attention_layernorm.weight", S.ffn_norm, D.ffn_norm);
    b.matrix(pre + "mlp.gate_proj.weight", S.w_gate, D.w_gate);
    b.matrix(pre + "mlp.up_proj.weight", S.w_up, D.w_up);
    b.matrix(pre + "mlp.down_proj.weight", S.w_down, D.w_down);
  }
  b.vector("model.norm.weight", m.final_norm, v.final_norm);
  if (tr.tied) v.lm_head = v.embed;
  else b.matrix("lm_head.weight", m.lm_head, v.lm_head);
  tr.embed = 0;
  if (p.summary_length > 0) {
    FullTensor &t = b.add("embed_summary.weight", p.summary_length, c.hidden_size, true);
    t.own.resize(t.size());
    uint64_t state = p.seed;
    for (size_t i = 0; i < t.own.size(); i += 2) {  // Box-Muller: two normals per pair of uniforms
      const double u1 = (double(splitmix64(state) >> 11) + 0.5) / 9007199254740992.0;
      const double u2 = double(splitmix64(state) >> 11) / 9007199254740992.0;
      const double r = std::sqrt(-2.0 * std::log(u1)) * p.init_std;
      t.own[i] = float(r * std::cos(6.283185307179586 * u2));
      if (i + 1 < t.own.size()) t.own[i + 1] = float(r * std::sin(6.283185307179586 * u2));
    }
    t.w = t.own.data();
    tr.summary = int(tr.tensors.size()) - 1;
  }
  tr.n_params = 0;
  for (FullTensor &t : tr.tensors) {
    for (auto *vec : {&t.g, &t.m, &t.v}) vec->assign(t.size(), 0.0f);
    tr.n_params += int64_t(t.size());
  }
  tr.no_lora.assign(size_t(c.n_layers), std::vector<TrainPair>(kNumProj));
  model_trainer_replica(tr, 0);
}

TrainReplica &model_trainer_replica(kf_model_trainer &tr, int32_t r) {
  if (r < 0 || r >= kMaxTrainReplicas)
    raise(KF_ERR_INVALID_ARGUMENT, "cannot train model: replica %d is outside [0, %d)", r, kMaxTrainReplicas);
  std::lock_guard<std::mutex> lock(tr.replicas_mutex);
  while (int32_t(tr.replicas.size()) <= r) {
    const bool first = tr.replicas.empty();
    const double bytes = first ? 0.0 : 4.0 * double(tr.n_params), available = available_memory_bytes();
    if (available > 0 && bytes > 0.9 * available)
      raise(KF_ERR_OUT_OF_MEMORY, "cannot train model: gradient replica %d needs %.2f GiB (4 bytes per parameter), "
            "only %.2f GiB are available; use fewer replicas", int(tr.replicas.size()), bytes / 1073741824.0,
            available / 1073741824.0);
    auto rep = std::make_unique<TrainReplica>();
    if (!first) rep->own.resize(tr.tensors.size());
    for (size_t i = 0; i < tr.tensors.size(); i++) {
      if (!first) rep->own[i].assign(tr.tensors[i].size(), 0.0f);
      rep->g.push_back(first ? tr.tensors[i].g.data() : rep->own[i].data());
    }
    // Where each pass adds its weight gradients.
    const ModelConfig &c = tr.view.cfg;
    ModelGrads &g = rep->grads;
    g.layers.assign(size_t(c.n_layers), {});
    const auto grad_of = [&](const std::string &name) {
      const int i = model_trainer_find(tr, name);
      return i < 0 ? nullptr : rep->g[size_t(i)];
    };
    const char *proj_names[kNumProj] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                        "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
    for (int l = 0; l < c.n_layers; l++) {
      const std::string pre = "model.layers." + std::to_string(l) + ".";
      ModelGrads::Layer &G = g.layers[size_t(l)];
      G.attn_norm = grad_of(pre + "input_layernorm.weight");
      G.ffn_norm = grad_of(pre + "post_attention_layernorm.weight");
      for (int pj = 0; pj < kNumProj; pj++) G.proj[pj] = grad_of(pre + proj_names[pj] + ".weight");
      for (int pj = 0; pj < 4; pj++) G.bias[pj] = grad_of(pre + proj_names[pj] + ".bias");
    }
    g.final_norm = grad_of("model.norm.weight");
    g.lm_head = grad_of(tr.tied ? "model.embed_tokens.weight" : "lm_head.weight");
    rep->scratch.resize(1);
    rep->pool_scratch.reset(new unsigned char[ThreadPool::scratch_bytes() + 64]);
    tr.replicas.push_back(std::move(rep));
  }
  return *tr.replicas[size_t(r)];
}

int model_trainer_find(const kf_model_trainer &tr, const std::string &name) {
  for (size_t i = 0; i < tr.tensors.size(); i++)
    if (tr.tensors[i].name == name) return int(i);
  return -1;
}

void model_trainer_drop_replica(kf_model_trainer &tr, TrainReplica &rep) {
  for (size_t i = 0; i < tr.tensors.size(); i++) std::fill_n(rep.g[i], tr.tensors[i].size(), 0.0f);
  rep.accumulated = 0;
}

void model_trainer_drop_grads(kf_model_trainer &tr) {
  for (auto &rep : tr.replicas) model_trainer_drop_replica(tr, *rep);
}

int32_t model_trainer_accumulated(const kf_model_trainer &tr) {
  int32_t n = 0;
  for (const auto &rep : tr.replicas) n += rep->accumulated;
  return n;
}

double model_trainer_accumulate(kf_model_trainer &tr, TrainReplica &rep, const float *prefix, int32_t n_prefix, const int32_t *ids,
                                const int32_t *labels, int32_t n_ids, kf_control *ctl) {
  const kf_model &m = tr.view;
  const int64_t H = m.cfg.hidden_size;
  progress_start(ctl, 2 * m.cfg.n_layers);
  try {
    PassRows in;
    in.T = int64_t(n_prefix) + n_ids;
    rep.x0.resize(1);
    std::vector<float> &x0 = rep.x0[0];
    x0.resize(size_t(in.T * H));  // [prefix rows | embeddings of ids]
    std::copy_n(prefix, int64_t(n_prefix) * H, x0.begin());
    const float *table = tr.tensors[size_t(tr.embed)].w;
    for (int32_t t = 0; t < n_ids; t++) std::copy_n(table + int64_t(ids[t]) * H, H, x0.begin() + (n_prefix + t) * H);
    in.x0 = x0.data();
    for (int32_t t = 0; t < n_ids; t++) {  // row n_prefix + t predicts labels[t]
      if (labels[t] < 0) continue;
      in.rows.push_back(int64_t(n_prefix) + t);
      in.targets.push_back(labels[t]);
    }
    rep.dx0.resize(size_t(in.T * H));
    PassGrads g;
    g.weights = &rep.grads;
    g.dx0 = rep.dx0.data();
    const double loss = train_pass(m, tr.no_lora, 1.0f, rep.scratch[0], in, nullptr, g, ctl);
    // The embedding's gradient: each id row's input gradient, added to its table row.
    float *ge = rep.g[size_t(tr.embed)];
    for (int32_t t = 0; t < n_ids; t++) add_inplace(ge + int64_t(ids[t]) * H, rep.dx0.data() + (n_prefix + t) * H, H);
    rep.accumulated++;
    return loss;
  } catch (...) {
    model_trainer_drop_replica(tr, rep);  // a pass may have added part of its gradients
    throw;
  }
}

kf_train_step_info model_trainer_step(kf_model_trainer &tr) {
  const int32_t examples = model_trainer_accumulated(tr);
  if (examples == 0) raise(KF_ERR_INVALID_STATE, "cannot take an optimizer step: no example was accumulated");
  const kf_model_train_params &p = tr.params;
  ThreadPool &pool = *tr.view.engine->pool;
  // Fixed chunks of every tensor, so the norm's summation order (and so every bit of the step) does
  // not depend on the thread count.
  constexpr size_t kChunk = 16384;
  struct Chunk {
    FullTensor *t;
    size_t b, e;
  };
  std::vector<Chunk> chunks;
  for (FullTensor &t : tr.tensors)
    for (size_t b = 0; b < t.size(); b += kChunk) chunks.push_back({&t, b, std::min(t.size(), b + kChunk)});
  std::vector<double> partial(chunks.size());
  pool.parallel_for(int64_t(chunks.size()), [&](int64_t i, int) {
    const Chunk &k = chunks[size_t(i)];
    // Replicas 1.. into the tensors' gradients, in replica order (so the sum does not depend on timing).
    const size_t ti = size_t(k.t - tr.tensors.data());
    for (size_t r = 1; r < tr.replicas.size(); r++) {
      float *src = tr.replicas[r]->g[ti];
      if (tr.replicas[r]->accumulated == 0) continue;
      add_inplace(k.t->g.data() + k.b, src + k.b, int64_t(k.e - k.b));
      std::fill(src + k.b, src + k.e, 0.0f);
    }
    double sq = 0;
    for (size_t j = k.b; j < k.e; j++) sq += double(k.t->g[j]) * k.t->g[j];
    partial[size_t(i)] = sq;
  });
  double sq = 0;
  for (double x : partial) sq += x;
  const StepPlan sp = plan_step(sq, examples, p.max_grad_norm, p.lr, p.warmup_steps, p.total_steps,
                                p.min_lr_ratio, tr.step, [&] { model_trainer_drop_grads(tr); });
  const AdamW opt(sp.lr, p.beta1, p.beta2, p.eps, tr.step, sp.coef);
  pool.parallel_for(int64_t(chunks.size()), [&](int64_t i, int) {
    const Chunk &k = chunks[size_t(i)];
    FullTensor &t = *k.t;
    opt.update(t.w + k.b, t.g.data() + k.b, t.m.data() + k.b, t.v.data() + k.b, k.e - k.b,
               t.decay ? p.weight_decay : 0.0f);
    std::fill(t.g.begin() + k.b, t.g.begin() + k.e, 0.0f);
  });
  kf_train_step_info info{};
  info.examples = examples;
  for (auto &rep : tr.replicas) rep->accumulated = 0;
  tr.step++;
  info.step = tr.step;
  info.lr = sp.lr;
  info.grad_norm = float(sp.norm);
  return info;
}

}  // namespace kf

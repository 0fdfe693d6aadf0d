// api_train.cpp — the C ABI of LoRA training: argument checks and ownership; the work is in train_cpu.cpp.
#include <cmath>
#include <memory>
#include <mutex>

#include "api_guard.h"
#include "lococo_train.h"
#include "model.h"
#include "train.h"

namespace {

using kf::api::guarded;
using kf::api::report;

// The pair `which` of (layer, proj) names, checked; n must be its size.
std::vector<float> &train_tensor(kf_lora_trainer &tr, int32_t layer, int32_t proj, int32_t which, int64_t n) {
  KF_REQUIRE(layer >= 0 && layer < int32_t(tr.pairs.size()), "access trainer tensor", "layer %d is outside [0, %zu)",
             layer, tr.pairs.size());
  KF_REQUIRE(proj >= 0 && proj < kf::kNumProj, "access trainer tensor", "projection %d is outside [0, 7)", proj);
  kf::TrainPair &p = tr.pairs[size_t(layer)][size_t(proj)];
  KF_REQUIRE(p.rank > 0, "access trainer tensor", "projection %s of layer %d is not trained", kf::kProjNames[proj],
             layer);
  std::vector<float> *v = nullptr;
  switch (which) {
  case KF_LORA_A: v = &p.a; break;
  case KF_LORA_B: v = &p.b; break;
  case KF_LORA_GRAD_A: v = &p.ga; break;
  case KF_LORA_GRAD_B: v = &p.gb; break;
  case KF_LORA_M_A: v = &p.ma; break;
  case KF_LORA_V_A: v = &p.va; break;
  case KF_LORA_M_B: v = &p.mb; break;
  case KF_LORA_V_B: v = &p.vb; break;
  default: kf::raise(KF_ERR_INVALID_ARGUMENT, "cannot access trainer tensor: which %d is not a kf_lora_tensor", which);
  }
  KF_REQUIRE(n == int64_t(v->size()), "access trainer tensor", "n %lld is not the tensor's %zu values", (long long)n,
             v->size());
  return *v;
}

}  // namespace

extern "C" {

kf_lora_train_params kf_lora_train_default_params(void) {
  kf_lora_train_params p{};
  p.rank = 8;
  p.alpha = 16.0f;
  p.target_mask = 0x0F;  // q, k, v, o
  p.seed = 0x6b76666f6c64ull;
  p.lr = 2e-4f;
  p.beta1 = 0.9f;
  p.beta2 = 0.999f;
  p.eps = 1e-8f;
  p.max_grad_norm = 1.0f;
  return p;
}

kf_status kf_lora_trainer_create(kf_model *model, const kf_lora_train_params *params, kf_lora_trainer **out) {
  if (out) *out = nullptr;
  return guarded("create trainer", [&] {
    KF_REQUIRE(model && out, "create trainer", "model or out is NULL");
    const kf_lora_train_params p = params ? *params : kf_lora_train_default_params();
    auto tr = std::make_unique<kf_lora_trainer>();
    kf::trainer_init(*tr, *model, p);
    model->n_sessions++;  // a trainer reads the weights as a session does: the model outlives it
    *out = tr.release();
  });
}

kf_status kf_lora_trainer_free(kf_lora_trainer *trainer) {
  return guarded("free trainer", [&] {
    if (!trainer) return;
    trainer->model->n_sessions--;
    delete trainer;
  });
}

kf_status kf_lora_trainer_get_info(const kf_lora_trainer *trainer, kf_lora_trainer_info *out) {
  return guarded("get trainer info", [&] {
    KF_REQUIRE(trainer && out, "get trainer info", "trainer or out is NULL");
    *out = kf_lora_trainer_info{};
    out->rank = trainer->params.rank;
    out->target_mask = trainer->params.target_mask;
    out->n_layers = int32_t(trainer->pairs.size());
    out->accumulated = trainer->accumulated;
    out->step = trainer->step;
    out->n_params = trainer->n_params;
    out->alpha = trainer->params.alpha;
    out->scale = trainer->scale;
  });
}

kf_status kf_lora_trainer_accumulate(kf_lora_trainer *trainer, const float *prefix, int32_t n_prefix,
                                     const int32_t *ids, const int32_t *labels, int32_t n_ids, float *loss,
                                     kf_control *control) {
  return report(control, guarded("train", [&] {
    KF_REQUIRE(trainer && loss, "train", "trainer or loss is NULL");
    KF_REQUIRE(n_prefix >= 0 && n_ids >= 1 && ids && labels, "train",
               "an example needs ids and labels (n_ids %d) and n_prefix >= 0 (%d)", n_ids, n_prefix);
    KF_REQUIRE(n_prefix == 0 || prefix, "train", "prefix is NULL but n_prefix is %d", n_prefix);
    const kf_model &m = *trainer->model;
    const int32_t V = m.cfg.vocab_size, H = m.cfg.hidden_size;
    int32_t n_labels = 0;
    for (int32_t t = 0; t < n_ids; t++) {
      if (ids[t] < 0 || ids[t] >= V)
        kf::raise(KF_ERR_INVALID_ARGUMENT, "cannot train: token id %d at index %d is outside [0, %d)", ids[t], t, V);
      if (labels[t] < -1 || labels[t] >= V)
        kf::raise(KF_ERR_INVALID_ARGUMENT, "cannot train: label %d at index %d is neither -1 nor in [0, %d)",
                  labels[t], t, V);
      n_labels += labels[t] >= 0;
    }
    if (n_labels == 0) kf::raise(KF_ERR_INVALID_ARGUMENT, "cannot train: the example has no labelled position");
    for (int64_t i = 0; i < int64_t(n_prefix) * H; i++)
      if (!std::isfinite(prefix[i]))
        kf::raise(KF_ERR_INVALID_ARGUMENT, "cannot train: prefix row %lld holds a non-finite value",
                  (long long)(i / H));
    // Activations kept for the backward pass: about (6 H + 4 q_dim + 4 I) floats per row per layer.
    const kf::ModelConfig &c = m.cfg;
    const double T = double(n_prefix) + n_ids;
    const double bytes = 4.0 * T * c.n_layers *
                         (6.0 * c.hidden_size + 4.0 * c.n_heads * c.head_dim + 4.0 * c.intermediate_size);
    const double available = kf::available_memory_bytes();
    if (available > 0 && bytes > 0.9 * available)
      kf::raise(KF_ERR_OUT_OF_MEMORY, "cannot train: %.0f rows need %.2f GiB of activations, only %.2f GiB are "
                "available; shorten the example", T, bytes / 1073741824.0, available / 1073741824.0);
    std::lock_guard<std::mutex> lock(m.engine->pool_mutex);
    *loss = float(kf::trainer_accumulate(*trainer, prefix, n_prefix, ids, labels, n_ids, control));
  }));
}

kf_status kf_lora_trainer_step(kf_lora_trainer *trainer, kf_train_step_info *out) {
  return guarded("step optimizer", [&] {
    KF_REQUIRE(trainer, "step optimizer", "trainer is NULL");
    const kf_train_step_info info = kf::trainer_step(*trainer);
    if (out) *out = info;
  });
}

kf_status kf_lora_trainer_read(const kf_lora_trainer *trainer, int32_t layer, int32_t proj, int32_t which, float *out,
                               int64_t n) {
  return guarded("read trainer tensor", [&] {
    KF_REQUIRE(trainer && out, "read trainer tensor", "trainer or out is NULL");
    const std::vector<float> &v = train_tensor(const_cast<kf_lora_trainer &>(*trainer), layer, proj, which, n);
    std::copy(v.begin(), v.end(), out);
  });
}

kf_status kf_lora_trainer_write(kf_lora_trainer *trainer, int32_t layer, int32_t proj, int32_t which, const float *in,
                                int64_t n) {
  return guarded("write trainer tensor", [&] {
    KF_REQUIRE(trainer && in, "write trainer tensor", "trainer or in is NULL");
    std::vector<float> &v = train_tensor(*trainer, layer, proj, which, n);
    for (int64_t i = 0; i < n; i++)
      if (!std::isfinite(in[i]))
        kf::raise(KF_ERR_INVALID_ARGUMENT, "cannot write trainer tensor: value %lld is not finite", (long long)i);
    std::copy(in, in + n, v.begin());
  });
}

kf_status kf_lora_trainer_set_step(kf_lora_trainer *trainer, int64_t step) {
  return guarded("set trainer step", [&] {
    KF_REQUIRE(trainer, "set trainer step", "trainer is NULL");
    KF_REQUIRE(step >= 0, "set trainer step", "step %lld is negative", (long long)step);
    trainer->step = step;
    for (auto &layer : trainer->pairs)
      for (kf::TrainPair &p : layer) {
        std::fill(p.ga.begin(), p.ga.end(), 0.0f);
        std::fill(p.gb.begin(), p.gb.end(), 0.0f);
      }
    trainer->accumulated = 0;
  });
}

// ---- LoCoCo calibration ----

kf_lococo_train_params kf_lococo_train_default_params(void) {
  kf_lococo_train_params p{};
  p.slots = 512;
  p.segment = 512;
  p.kernel = 21;
  p.keep_rate = 0.5f;
  p.seed = 0x6c6f636f636full;
  p.init_lambda = 0.5f;
  p.lr = 1e-3f;
  p.beta1 = 0.9f;
  p.beta2 = 0.999f;
  p.eps = 1e-8f;
  p.max_grad_norm = 1.0f;
  return p;
}

kf_status kf_lococo_trainer_create(kf_model *model, const kf_lococo_train_params *params, const kf_lococo_heads *init,
                                   kf_lococo_trainer **out) {
  if (out) *out = nullptr;
  return guarded("create LoCoCo trainer", [&] {
    KF_REQUIRE(model && out, "create LoCoCo trainer", "model or out is NULL");
    const kf_lococo_train_params p = params ? *params : kf_lococo_train_default_params();
    auto tr = std::make_unique<kf_lococo_trainer>();
    kf::lococo_trainer_init(*tr, *model, p, init);
    model->n_sessions++;  // reads the weights as a session does: the model outlives it
    *out = tr.release();
  });
}

kf_status kf_lococo_trainer_free(kf_lococo_trainer *trainer) {
  return guarded("free LoCoCo trainer", [&] {
    if (!trainer) return;
    trainer->model->n_sessions--;
    delete trainer;
  });
}

kf_status kf_lococo_trainer_accumulate(kf_lococo_trainer *trainer, const int32_t *ids, int32_t n_ids, float *loss,
                                       kf_control *control) {
  return report(control, guarded("calibrate", [&] {
    KF_REQUIRE(trainer && ids && loss, "calibrate", "trainer, ids or loss is NULL");
    KF_REQUIRE(n_ids >= 2, "calibrate", "a sequence needs at least 2 tokens, got %d", n_ids);
    const kf_model &m = *trainer->model;
    for (int32_t t = 0; t < n_ids; t++)
      if (ids[t] < 0 || ids[t] >= m.cfg.vocab_size)
        kf::raise(KF_ERR_INVALID_ARGUMENT, "cannot calibrate: token id %d at index %d is outside [0, %d)", ids[t], t,
                  m.cfg.vocab_size);
    std::lock_guard<std::mutex> lock(m.engine->pool_mutex);
    *loss = float(kf::lococo_trainer_accumulate(*trainer, ids, n_ids, control));
  }));
}

kf_status kf_lococo_trainer_step(kf_lococo_trainer *trainer, kf_train_step_info *out) {
  return guarded("step optimizer", [&] {
    KF_REQUIRE(trainer, "step optimizer", "trainer is NULL");
    const kf_train_step_info info = kf::lococo_trainer_step(*trainer);
    if (out) *out = info;
  });
}

namespace {

// Copies a LoCoCo trainer tensor out (to_user) or in. Weight-shaped tensors are held tap-major
// [Mc, k, 2hd] and exchanged in PyTorch's [Mc, 2hd, k].
void lococo_tensor(kf_lococo_trainer &tr, int32_t layer, int32_t which, float *user, int64_t n, bool to_user) {
  const char *what = to_user ? "read LoCoCo trainer tensor" : "write LoCoCo trainer tensor";
  if (layer < 0 || layer >= int32_t(tr.heads.layers.size()))
    kf::raise(KF_ERR_INVALID_ARGUMENT, "cannot %s: layer %d is outside [0, %zu)", what, layer, tr.heads.layers.size());
  kf_lococo_heads::Layer &L = tr.heads.layers[size_t(layer)];
  kf_lococo_trainer::LayerState &S = tr.state[size_t(layer)];
  std::vector<float> *vec = nullptr;
  float *scalar = nullptr;
  switch (which) {
  case KF_LOCOCO_WEIGHT: vec = &L.weight; break;
  case KF_LOCOCO_BIAS: vec = &L.bias; break;
  case KF_LOCOCO_LAMBDA: scalar = &L.lambda; break;
  case KF_LOCOCO_GRAD_WEIGHT: vec = &S.gw; break;
  case KF_LOCOCO_GRAD_BIAS: vec = &S.gb; break;
  case KF_LOCOCO_GRAD_LAMBDA: scalar = &S.gl; break;
  case KF_LOCOCO_M_WEIGHT: vec = &S.mw; break;
  case KF_LOCOCO_V_WEIGHT: vec = &S.vw; break;
  case KF_LOCOCO_M_BIAS: vec = &S.mb; break;
  case KF_LOCOCO_V_BIAS: vec = &S.vb; break;
  case KF_LOCOCO_M_LAMBDA: scalar = &S.ml; break;
  case KF_LOCOCO_V_LAMBDA: scalar = &S.vl; break;
  default: kf::raise(KF_ERR_INVALID_ARGUMENT, "cannot %s: which %d is not a kf_lococo_tensor", what, which);
  }
  const int64_t size = scalar ? 1 : int64_t(vec->size());
  if (n != size) kf::raise(KF_ERR_INVALID_ARGUMENT, "cannot %s: n %lld is not the tensor's %lld values", what, (long long)n, (long long)size);
  if (!to_user)
    for (int64_t i = 0; i < n; i++)
      if (!std::isfinite(user[i])) kf::raise(KF_ERR_INVALID_ARGUMENT, "cannot %s: value %lld is not finite", what, (long long)i);
  if (scalar) {
    if (to_user) *user = *scalar;
    else *scalar = *user;
    return;
  }
  const bool weight_shaped = which == KF_LOCOCO_WEIGHT || which == KF_LOCOCO_GRAD_WEIGHT || which == KF_LOCOCO_M_WEIGHT ||
                             which == KF_LOCOCO_V_WEIGHT;
  if (!weight_shaped) {
    if (to_user) std::copy(vec->begin(), vec->end(), user);
    else std::copy(user, user + n, vec->begin());
    return;
  }
  const int64_t Mc = tr.heads.fused, k = tr.heads.kernel, two_hd = 2 * int64_t(tr.heads.head_dim);
  for (int64_t c = 0; c < Mc; c++)
    for (int64_t i = 0; i < two_hd; i++)
      for (int64_t j = 0; j < k; j++) {
        float &held = (*vec)[size_t((c * k + j) * two_hd + i)];
        float &given = user[(c * two_hd + i) * k + j];
        if (to_user) given = held;
        else held = given;
      }
}

}  // namespace

kf_status kf_lococo_trainer_read(const kf_lococo_trainer *trainer, int32_t layer, int32_t which, float *out,
                                 int64_t n) {
  return guarded("read LoCoCo trainer tensor", [&] {
    KF_REQUIRE(trainer && out, "read LoCoCo trainer tensor", "trainer or out is NULL");
    lococo_tensor(const_cast<kf_lococo_trainer &>(*trainer), layer, which, out, n, true);
  });
}

kf_status kf_lococo_trainer_write(kf_lococo_trainer *trainer, int32_t layer, int32_t which, const float *in,
                                  int64_t n) {
  return guarded("write LoCoCo trainer tensor", [&] {
    KF_REQUIRE(trainer && in, "write LoCoCo trainer tensor", "trainer or in is NULL");
    lococo_tensor(*trainer, layer, which, const_cast<float *>(in), n, false);
  });
}

kf_status kf_lococo_trainer_set_adapter(kf_lococo_trainer *trainer, const kf_adapter *adapter) {
  return guarded("set LoCoCo trainer adapter", [&] {
    KF_REQUIRE(trainer, "set LoCoCo trainer adapter", "trainer is NULL");
    if (adapter && adapter->model != trainer->model)
      kf::raise(KF_ERR_INVALID_ARGUMENT, "cannot set LoCoCo trainer adapter: it was loaded for another model");
    // The frozen pairs: the adapter holds A [r, in] and Bᵀ [r, out] with the scale folded in; a
    // TrainPair wants B [out, r] and a scale, so B = (Bᵀ)ᵀ and s = 1.
    std::vector<std::vector<kf::TrainPair>> pairs(trainer->no_lora.size(), std::vector<kf::TrainPair>(kf::kNumProj));
    if (adapter) {
      for (size_t l = 0; l < pairs.size(); l++)
        for (int p = 0; p < kf::kNumProj; p++) {
          const kf::LoraPair &src = adapter->layers[l].proj[p];
          if (src.rank == 0) continue;
          kf::TrainPair &dst = pairs[l][size_t(p)];
          dst.rank = src.rank;
          dst.in = int64_t(src.a.size()) / src.rank;
          dst.out = int64_t(src.bt.size()) / src.rank;
          dst.a = src.a;
          dst.b.resize(src.bt.size());
          for (int64_t o = 0; o < dst.out; o++)
            for (int64_t j = 0; j < dst.rank; j++) dst.b[size_t(o * dst.rank + j)] = src.bt[size_t(j * dst.out + o)];
        }
    }
    trainer->no_lora = std::move(pairs);
  });
}

kf_status kf_lococo_trainer_set_step(kf_lococo_trainer *trainer, int64_t step) {
  return guarded("set LoCoCo trainer step", [&] {
    KF_REQUIRE(trainer, "set LoCoCo trainer step", "trainer is NULL");
    KF_REQUIRE(step >= 0, "set LoCoCo trainer step", "step %lld is negative", (long long)step);
    trainer->step = step;
    for (auto &s : trainer->state) {
      std::fill(s.gw.begin(), s.gw.end(), 0.0f);
      std::fill(s.gb.begin(), s.gb.end(), 0.0f);
      s.gl = 0;
    }
    trainer->accumulated = 0;
  });
}

}  // extern "C"

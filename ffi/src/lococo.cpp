// lococo.cpp — LoCoCo heads (loading, validation) and the convolutional fusion of one layer's cache,
// for inference (lococo_compress_layer) and calibration (lococo_train.cpp, with a trace) alike.
//
// Per KV head, with S = n_slots − Mh slots left after the Mh heavy hitters:
//   x      = [K_r | V_r]                                   [S, 2·hd]  (slot-major)
//   conv   = Conv1d(2·hd → Mc, k, same padding)(x)         [S, Mc]
//   W      = softmax over slots of ReLU(conv)              [Mc, S]
//   fused  = λ W x + (1 − λ) x[next Mc by score]           [Mc, 2·hd]
// The convolution is one GEMM over an implicit im2col matrix: with x stored slot-major and padded by
// (k−1)/2 zero rows on each side, the k·2·hd inputs of output slot t are the contiguous floats
// x_pad[t·2hd .. (t+k)·2hd), so row t of im2col starts 2·hd floats after row t−1 and nothing is copied.
// That is why the weight is held tap-major ([Mc, k, 2·hd]).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <numeric>

#include "cpu_ops.h"
#include "kv_cache.h"
#include "model.h"
#include "safetensors.h"

namespace kf {

namespace {

constexpr const char *kAction = "load LoCoCo heads";

// A metadata value as a decimal integer (all digits) or fails naming the key.
int32_t metadata_int(const SafetensorsFile &f, const char *key, int32_t lo, int32_t hi) {
  const std::string *v = f.metadata_value(key);
  if (!v)
    raise(KF_ERR_FORMAT, "cannot %s: %s has no __metadata__ \"%s\" (M, r, k and B must be recorded, e.g. by "
          "kvfold make-test-model --preset lococo-heads)", kAction, f.path().c_str(), key);
  char *end = nullptr;
  const long x = std::strtol(v->c_str(), &end, 10);
  if (v->empty() || *end != '\0' || x < lo || x > hi)
    raise(KF_ERR_FORMAT, "cannot %s: %s: __metadata__ \"%s\" is \"%s\", not a whole number in [%d, %d]", kAction,
          f.path().c_str(), key, v->c_str(), lo, hi);
  return int32_t(x);
}

double metadata_real(const SafetensorsFile &f, const char *key) {
  const std::string *v = f.metadata_value(key);
  if (!v) raise(KF_ERR_FORMAT, "cannot %s: %s has no __metadata__ \"%s\"", kAction, f.path().c_str(), key);
  char *end = nullptr;
  const double x = std::strtod(v->c_str(), &end);
  if (v->empty() || *end != '\0' || !(x > 0.0 && x < 1.0))
    raise(KF_ERR_FORMAT, "cannot %s: %s: __metadata__ \"%s\" is \"%s\", not a number strictly between 0 and 1",
          kAction, f.path().c_str(), key, v->c_str());
  return x;
}

// A tensor's values as f32, checking its shape and that every value is finite.
std::vector<float> read_tensor(const TensorIndex &idx, const std::string &name, const std::vector<int64_t> &shape) {
  const TensorInfo *t = idx.find(name);
  if (!t) raise(KF_ERR_FORMAT, "cannot %s: tensor %s is missing", kAction, name.c_str());
  if (!t->dtype_supported)
    raise(KF_ERR_FORMAT, "cannot %s: tensor %s has dtype %s; F32, F16 or BF16 expected", kAction, name.c_str(),
          t->dtype_str.c_str());
  if (t->shape != shape) {
    std::string got, want;
    for (int64_t d : t->shape) got += (got.empty() ? "" : ", ") + std::to_string(d);
    for (int64_t d : shape) want += (want.empty() ? "" : ", ") + std::to_string(d);
    raise(KF_ERR_FORMAT, "cannot %s: tensor %s has shape [%s], the model needs [%s]", kAction, name.c_str(),
          got.c_str(), want.c_str());
  }
  std::vector<float> out(size_t(t->numel()));
  convert_row_to_f32(t->data, t->dtype, out.data(), t->numel());
  for (size_t i = 0; i < out.size(); i++)
    if (!std::isfinite(out[i]))
      raise(KF_ERR_FORMAT, "cannot %s: tensor %s holds %s at index %zu", kAction, name.c_str(),
            std::isnan(out[i]) ? "NaN" : "an infinity", i);
  return out;
}

}  // namespace

void lococo_heads_load(kf_lococo_heads &h, kf_model &m, const std::string &path, kf_control *ctl) {
  const ModelConfig &cfg = m.cfg;
  TensorIndex idx = TensorIndex::open_file(path, false, kAction);
  const SafetensorsFile &f = idx.files().front();
  h.model = &m;
  h.slots = metadata_int(f, "kvfold.lococo.slots", 1, 1 << 20);
  h.keep_rate = float(metadata_real(f, "kvfold.lococo.keep_rate"));
  h.kernel = metadata_int(f, "kvfold.lococo.kernel", 1, 4095);
  h.segment = metadata_int(f, "kvfold.lococo.segment", 1, 65536);
  if (h.kernel % 2 == 0)
    raise(KF_ERR_FORMAT, "cannot %s: %s: the kernel %d is even; \"same\" padding needs an odd kernel", kAction,
          path.c_str(), h.kernel);
  h.fused = int32_t(std::floor(double(h.slots) * (1.0 - double(h.keep_rate))));
  h.head_dim = cfg.head_dim;

  // Every tensor must belong to a layer of this model (a heads file for a deeper model is refused).
  const std::string prefix = "model.layers.";
  for (const TensorInfo &t : idx.tensors()) {
    const size_t at = t.name.find(".self_attn.memory_saver.");
    const long layer = t.name.compare(0, prefix.size(), prefix) == 0 ? std::strtol(t.name.c_str() + prefix.size(), nullptr, 10) : -1;
    if (at == std::string::npos || layer < 0)
      raise(KF_ERR_FORMAT, "cannot %s: %s: tensor %s is not a memory_saver of a decoder layer", kAction, path.c_str(),
            t.name.c_str());
    if (layer >= cfg.n_layers)
      raise(KF_ERR_INVALID_ARGUMENT, "cannot %s: %s has heads for layer %ld, but the model has %d layers", kAction,
            path.c_str(), layer, cfg.n_layers);
  }
  // The first layer's weight tells Mc, 2·hd and k; check them against the metadata and the model with
  // messages that say which side is off.
  const std::string w0 = "model.layers.0.self_attn.memory_saver.layers.0.weight";
  const TensorInfo *t0 = idx.find(w0);
  if (!t0) raise(KF_ERR_FORMAT, "cannot %s: %s has no %s", kAction, path.c_str(), w0.c_str());
  if (t0->shape.size() != 3)
    raise(KF_ERR_FORMAT, "cannot %s: %s is %zu-dimensional; [Mc, 2*head_dim, k] expected", kAction, w0.c_str(),
          t0->shape.size());
  if (t0->shape[1] != 2 * int64_t(cfg.head_dim))
    raise(KF_ERR_INVALID_ARGUMENT,
          "cannot %s: %s has %lld input channels, so it was made for head_dim %lld; this model's head_dim is %d",
          kAction, path.c_str(), (long long)t0->shape[1], (long long)t0->shape[1] / 2, cfg.head_dim);
  if (t0->shape[0] != h.fused)
    raise(KF_ERR_FORMAT, "cannot %s: %s: the convolution has %lld output channels, but slots %d and keep_rate %g "
          "give Mc = floor(M * (1 - r)) = %d", kAction, path.c_str(), (long long)t0->shape[0], h.slots,
          double(h.keep_rate), h.fused);
  if (t0->shape[2] != h.kernel)
    raise(KF_ERR_FORMAT, "cannot %s: %s: the convolution's kernel is %lld, the metadata says %d", kAction,
          path.c_str(), (long long)t0->shape[2], h.kernel);

  const int64_t Mc = h.fused, k = h.kernel, two_hd = 2 * int64_t(cfg.head_dim);
  h.layers.assign(size_t(cfg.n_layers), {});
  h.bytes = 0;
  progress_start(ctl, cfg.n_layers);
  for (int32_t l = 0; l < cfg.n_layers; l++) {
    check_cancel(ctl, kAction);
    const std::string p = "model.layers." + std::to_string(l) + ".self_attn.memory_saver.";
    kf_lococo_heads::Layer &L = h.layers[size_t(l)];
    const std::vector<float> w = read_tensor(idx, p + "layers.0.weight", {Mc, two_hd, k});  // PyTorch [Mc, 2hd, k]
    L.weight.assign(w.size(), 0.0f);  // [Mc, k, 2hd]
    for (int64_t c = 0; c < Mc; c++)
      for (int64_t i = 0; i < two_hd; i++)
        for (int64_t j = 0; j < k; j++) L.weight[size_t((c * k + j) * two_hd + i)] = w[size_t((c * two_hd + i) * k + j)];
    L.bias = read_tensor(idx, p + "layers.0.bias", {Mc});
    L.lambda = read_tensor(idx, p + "normalizer", {1})[0];
    h.bytes += int64_t(L.weight.size() + L.bias.size() + 1) * 4;
    progress_set(ctl, l + 1);
  }
}

void lococo_fuse(const kf_lococo_heads &h, int32_t l, int32_t M, ThreadPool &pool, int32_t n, int32_t nkv,
                 int32_t hd_in, const float *K, const float *V, const float *sc, float *out_k, float *out_v,
                 float *out_score, ShrinkScratch &scratch, FuseTrace *trace) {
  const kf_lococo_heads::Layer &W = h.layers[size_t(l)];
  const int32_t Mc = h.fused, Mh = M - Mc;
  const int64_t hd = hd_in, two_hd = 2 * hd, k = h.kernel, pad = (k - 1) / 2;
  const int32_t S = n - Mh;  // slots to fuse; > Mc + 16 since n > M + 16
  const float lambda = W.lambda;
  int32_t *idx = scratch.order.data();
  float *x_t = scratch.x_t.data(), *mix = scratch.mix.data(), *fused = scratch.fused.data();
  float *kept = scratch.kept.data(), *rest_score = scratch.rest_score.data();  // [Mh, 2·hd], [S]
  const auto slot = [&](const float *X, int32_t s, int32_t g) { return X + (int64_t(s) * nkv + g) * hd; };
  const auto out_slot = [&](float *X, int32_t s, int32_t g) { return X + (int64_t(s) * nkv + g) * hd; };

  for (int32_t g = 0; g < nkv; g++) {
    FuseTrace *tr = trace ? trace + g : nullptr;
    float *x_pad = scratch.x_pad.data(), *conv = scratch.conv.data();
    if (tr) {  // the backward pass reads the padded rows, the convolution and its softmax: keep them
      tr->S = S;
      tr->x_pad.assign(size_t((S + 2 * pad) * two_hd), 0.0f);
      tr->z.assign(size_t(S) * size_t(Mc), 0.0f);
      tr->w.assign(size_t(Mc) * size_t(S), 0.0f);
      tr->wx.assign(size_t(Mc * two_hd), 0.0f);
      x_pad = tr->x_pad.data();
      conv = tr->z.data();
    }
    // Heavy hitters idx[0..Mh), the rest idx[Mh..n), both in cache order.
    std::iota(idx, idx + n, 0);
    top_slots(sc + g, nkv, idx, n, Mh);
    const int32_t *rest = idx + Mh;  // [S]
    for (int32_t m = 0; m < Mh; m++) {
      std::copy_n(slot(K, idx[m], g), hd, kept + m * two_hd);
      std::copy_n(slot(V, idx[m], g), hd, kept + m * two_hd + hd);
    }
    // x_pad: [pad zero rows ; S rows of [K | V] ; pad zero rows]
    std::fill(x_pad, x_pad + pad * two_hd, 0.0f);
    std::fill(x_pad + (pad + S) * two_hd, x_pad + (2 * pad + S) * two_hd, 0.0f);
    for (int32_t t = 0; t < S; t++) {
      std::copy_n(slot(K, rest[t], g), hd, x_pad + (pad + t) * two_hd);
      std::copy_n(slot(V, rest[t], g), hd, x_pad + (pad + t) * two_hd + hd);
    }
    // The one-hot selection: the top Mc of the rest by score, as positions in rest, in cache order.
    int32_t *pick = idx + n;  // [S]: order holds 2 * capacity entries
    for (int32_t t = 0; t < S; t++) rest_score[t] = sc[int64_t(rest[t]) * nkv + g];
    std::iota(pick, pick + S, 0);
    top_slots(rest_score, 1, pick, S, Mc);
    if (tr) tr->pick.assign(pick, pick + Mc);

    std::fill(fused, fused + int64_t(Mc) * two_hd, 0.0f);
    if (lambda != 0.0f || tr) {
      // conv[t, :] = bias + im2col row t · weight^T: rows of x_pad two_hd apart, k·two_hd long.  [S, Mc]
      matmul_strided(pool, x_pad, two_hd, W.weight.data(), DType::F32, conv, S, k * two_hd, Mc, W.bias.data());
      // mix[c, :] = λ · softmax over slots of ReLU(conv[:, c])  [Mc, S]
      float *w_trace = tr ? tr->w.data() : nullptr;
      pool.parallel_for(Mc, [&](int64_t ch, int) {
        float *row = mix + ch * S;
        for (int32_t t = 0; t < S; t++) row[t] = std::max(0.0f, conv[int64_t(t) * Mc + ch]);
        softmax_inplace(row, S);
        if (w_trace) std::copy_n(row, S, w_trace + ch * S);
        for (int32_t t = 0; t < S; t++) row[t] *= lambda;
      });
      // x_t = x^T  [2·hd, S]
      for (int32_t t = 0; t < S; t++)
        for (int64_t i = 0; i < two_hd; i++) x_t[i * S + t] = x_pad[(pad + t) * two_hd + i];
      if (lambda != 0.0f) matmul(pool, mix, x_t, DType::F32, fused, Mc, S, two_hd, nullptr);  // λ W x  [Mc, 2·hd]
      if (tr) matmul(pool, tr->w.data(), x_t, DType::F32, tr->wx.data(), Mc, S, two_hd, nullptr);  // W x
    }
    // + (1 − λ) R x: row ch of R is one-hot at the ch-th picked slot. Exact copies when λ = 0.
    for (int32_t ch = 0; ch < Mc; ch++) {
      const float *xs = x_pad + (pad + pick[ch]) * two_hd;
      float *fr = fused + int64_t(ch) * two_hd;
      if (lambda == 0.0f) std::copy_n(xs, two_hd, fr);
      else axpy_f32(1.0f - lambda, xs, fr, two_hd);
    }
    // The head's new column: [heavy hitters ; fused], M slots. Scores move with the heavy hitters;
    // a fused slot takes its picked slot's score (the next forward overwrites them all anyway).
    for (int32_t m = 0; m < Mh; m++) {
      std::copy_n(kept + m * two_hd, hd, out_slot(out_k, m, g));
      std::copy_n(kept + m * two_hd + hd, hd, out_slot(out_v, m, g));
      out_score[int64_t(m) * nkv + g] = sc[int64_t(idx[m]) * nkv + g];  // in place: idx[m] >= m, not yet overwritten
    }
    for (int32_t ch = 0; ch < Mc; ch++) {
      std::copy_n(fused + int64_t(ch) * two_hd, hd, out_slot(out_k, Mh + ch, g));
      std::copy_n(fused + int64_t(ch) * two_hd + hd, hd, out_slot(out_v, Mh + ch, g));
      out_score[int64_t(Mh + ch) * nkv + g] = rest_score[pick[ch]];
    }
  }
}

void lococo_compress_layer(KvCache &c, ThreadPool &pool, int32_t l) {
  float *K = c.k[size_t(l)].data(), *V = c.v[size_t(l)].data(), *sc = c.score[size_t(l)].data();
  lococo_fuse(*c.heads, l, c.slots, pool, c.n_slots, c.n_kv, c.head_dim, K, V, sc, K, V, sc, c.shrink, nullptr);
}

}  // namespace kf

// train_cpu.cpp — LoRA training on the CPU, read top to bottom: a forward pass over one example that
// keeps every activation the backward pass reads, the backward pass (gradients through RMSNorm, RoPE,
// attention, SwiGLU, the LM head and cross-entropy; weight gradients for the LoRA pairs only), and
// AdamW with warmup, cosine decay and global-norm clipping.
//
// One example is one sequence of T rows at positions 0..T−1 with plain causal attention (Mistral's
// sliding window honoured), as LLoCO finetunes: [summary vectors | prompt | answer], loss on the
// answer. Attention is recomputed in the backward pass instead of storing T×T probabilities.
#include <algorithm>
#include <cmath>

#include "cpu_ops.h"
#include "train.h"

namespace kf {

namespace {

// Grows a scratch vector to n floats (zeroing it when it grows; callers overwrite what they read).
float *grow(std::vector<float> &v, size_t n) {
  if (v.size() < n) v.assign(n, 0.0f);
  return v.data();
}

int64_t proj_in(const ModelConfig &c, int p) {
  if (p == kProjO) return int64_t(c.n_heads) * c.head_dim;
  if (p == kProjDown) return c.intermediate_size;
  return c.hidden_size;
}

int64_t proj_out(const ModelConfig &c, int p) {
  switch (p) {
  case kProjQ: return int64_t(c.n_heads) * c.head_dim;
  case kProjK:
  case kProjV: return int64_t(c.n_kv_heads) * c.head_dim;
  case kProjGate:
  case kProjUp: return c.intermediate_size;
  default: return c.hidden_size;
  }
}

const float *proj_bias(const LayerWeights &L, int p) {
  const std::vector<float> *b = p == kProjQ ? &L.bq : p == kProjK ? &L.bk : p == kProjV ? &L.bv : p == kProjO ? &L.bo
                                                                                                              : nullptr;
  return b && !b->empty() ? b->data() : nullptr;
}

// y[T, out] = x W^T (+ bias) + s (x A^T) B^T; keeps t = x A^T [T, r] for the backward pass.
void linear_forward(ThreadPool &pool, const Weight &W, const float *bias, const TrainPair &pr, float s,
                    const float *x, int64_t T, float *y, std::vector<float> &t, PassScratch &sc) {
  matmul(pool, x, W.data, W.dtype, y, T, W.cols, W.rows, bias);
  if (pr.rank == 0) return;
  float *tp = grow(t, size_t(T) * size_t(pr.rank));
  matmul(pool, x, pr.a.data(), DType::F32, tp, T, pr.in, pr.rank, nullptr);                  // t = x A^T   [T, r]
  float *tmp = grow(sc.tmp, size_t(T) * size_t(pr.out));
  matmul(pool, tp, pr.b.data(), DType::F32, tmp, T, pr.rank, pr.out, nullptr);              // t B^T       [T, out]
  axpy_f32(s, tmp, y, T * pr.out);
}

// r×c → c×r
void transpose(const float *a, int64_t r, int64_t c, float *out) {
  for (int64_t i = 0; i < r; i++)
    for (int64_t j = 0; j < c; j++) out[j * r + i] = a[i * c + j];
}

// g [rows, cols] += a^T b for a [T, rows], b [T, cols]: a weight's gradient dy^T x.
void add_at_b(ThreadPool &pool, const float *a, const float *b, int64_t T, int64_t rows, int64_t cols, float *g,
              PassScratch &sc) {
  float *aT = grow(sc.dyT, size_t(rows) * size_t(T));
  transpose_blocked(pool, a, T, rows, aT);
  float *prod = grow(sc.tmp2, size_t(rows) * size_t(cols));
  matmul_nn(pool, aT, b, DType::F32, prod, rows, T, cols);  // [rows, cols]
  add_inplace(g, prod, rows * cols);
}

// Backward of y = x W^T (+ bias) + s (x A^T) B^T given dy [T, out]:
//   dx [T, in] (+)= dy W + (s dy B) A          (overwritten unless accumulate)
//   gA [r, in] += (s dy B)^T x,  gB [out, r] += s dy^T t
//   gW [out, in] += dy^T x, gbias [out] += Σ_t dy   (when given: full-parameter training)
void linear_backward(ThreadPool &pool, const Weight &W, const TrainPair &pr, float s, const float *x, const float *t,
                     const float *dy, int64_t T, float *dx, bool accumulate, float *ga, float *gb, float *gw,
                     float *gbias, PassScratch &sc) {
  const int64_t in = W.cols, out = W.rows;
  if (gw) add_at_b(pool, dy, x, T, out, in, gw, sc);
  if (gbias)
    for (int64_t r = 0; r < T; r++) add_inplace(gbias, dy + r * out, out);
  if (accumulate) {
    float *tmp = grow(sc.tmp, size_t(T) * size_t(in));
    matmul_nn(pool, dy, W.data, W.dtype, tmp, T, out, in);  // dy W  [T, in]
    add_inplace(dx, tmp, T * in);
  } else {
    matmul_nn(pool, dy, W.data, W.dtype, dx, T, out, in);
  }
  if (pr.rank == 0) return;
  const int64_t r = pr.rank;
  float *dt = grow(sc.dt, size_t(T * r));
  matmul_nn(pool, dy, pr.b.data(), DType::F32, dt, T, out, r);  // dy B  [T, r]
  for (int64_t i = 0; i < T * r; i++) dt[i] *= s;               // dt = s dy B
  // gB^T [r, out] = s t^T dy
  float *tT = grow(sc.tT, size_t(r * T));
  transpose(t, T, r, tT);
  float *gbt = grow(sc.gsmall, size_t(r * std::max(out, in)));
  matmul_nn(pool, tT, dy, DType::F32, gbt, r, T, out);
  for (int64_t o = 0; o < out; o++)
    for (int64_t j = 0; j < r; j++) gb[o * r + j] += s * gbt[j * out + o];
  // gA [r, in] = dt^T x
  float *dtT = grow(sc.dtT, size_t(r * T));
  transpose(dt, T, r, dtT);
  matmul_nn(pool, dtT, x, DType::F32, gbt, r, T, in);
  add_inplace(ga, gbt, r * in);
  // dx += dt A
  float *tmp = grow(sc.tmp, size_t(T) * size_t(in));
  matmul_nn(pool, dt, pr.a.data(), DType::F32, tmp, T, r, in);
  add_inplace(dx, tmp, T * in);
}

// dx[t] += d/dx of y = x / rms(x) · w, given dy: r (w⊙dy) − x r³ Σ(w⊙dy⊙x) / n; and, when gw is
// given, gw += Σ_t dy ⊙ x r (the norm weight's gradient).
void rmsnorm_backward(const float *x, const float *w, const float *dy, int64_t T, int64_t n, float eps, float *dx,
                      float *gw = nullptr) {
  for (int64_t t = 0; t < T; t++) {
    const float *xr = x + t * n, *dyr = dy + t * n;
    float *dxr = dx + t * n;
    double ss = 0, dot = 0;
    for (int64_t i = 0; i < n; i++) {
      ss += double(xr[i]) * xr[i];
      dot += double(w[i]) * dyr[i] * xr[i];
    }
    const double r = 1.0 / std::sqrt(ss / double(n) + double(eps));
    const double c = r * r * r * dot / double(n);
    for (int64_t i = 0; i < n; i++) dxr[i] += float(r * w[i] * dyr[i] - xr[i] * c);
    if (gw)
      for (int64_t i = 0; i < n; i++) gw[i] += float(double(dyr[i]) * xr[i] * r);
  }
}

// Keys a segment attends to: `slots` cache rows first (LoCoCo calibration; every one visible), then
// its own T rows, causal (within Mistral's sliding window when there is no cache).
struct Keys {
  const float *kc = nullptr, *vc = nullptr;  // [slots, nkv, hd] post-RoPE cache keys, values
  int64_t slots = 0;
  const float *k = nullptr, *v = nullptr;    // [T, nkv, hd] the segment's own
  int64_t nkv = 0, hd = 0, window = 0;
  const float *key(int64_t j, int64_t g) const {
    return j < slots ? kc + (j * nkv + g) * hd : k + ((j - slots) * nkv + g) * hd;
  }
  const float *value(int64_t j, int64_t g) const {
    return j < slots ? vc + (j * nkv + g) * hd : v + ((j - slots) * nkv + g) * hd;
  }
  int64_t first(int64_t i) const {  // first key index own row i sees
    return slots == 0 && window > 0 ? std::max<int64_t>(0, i - window + 1) : 0;
  }
  int64_t end(int64_t i) const { return slots + i + 1; }
};

// attn[i, h] = Σ_j softmax_j(q_i·key_j · scale) value_j.  q: [T, nh, hd]. With col_sums: [slots + T, nkv]
// receives each key's probability mass, summed over rows and over each KV group's query heads.
void attention_forward(ThreadPool &pool, const ModelConfig &c, const float *q, const Keys &K, int64_t T, float *out,
                       float *col_sums, std::vector<float> &scratch) {
  const int64_t nh = c.n_heads, nkv = c.n_kv_heads, hd = c.head_dim, group = nh / nkv, n = K.slots + T;
  const float scale = 1.0f / std::sqrt(float(hd));
  float *buf = grow(scratch, size_t(pool.size()) * size_t(n) + (col_sums ? size_t(nh) * size_t(n) : 0));
  float *head_sums = buf + size_t(pool.size()) * size_t(n);  // [nh, n]
  pool.parallel_for(nh, [&](int64_t h, int th) {
    float *p = buf + size_t(th) * size_t(n);
    float *cs = col_sums ? head_sums + size_t(h) * size_t(n) : nullptr;
    if (cs) std::fill(cs, cs + n, 0.0f);
    const int64_t g = h / group;
    for (int64_t i = 0; i < T; i++) {
      const int64_t j0 = K.first(i), j1 = K.end(i);
      const float *qi = q + (i * nh + h) * hd;
      for (int64_t j = j0; j < j1; j++) p[j] = scale * dot_f32(qi, K.key(j, g), hd);
      softmax_inplace(p + j0, j1 - j0);
      float *o = out + (i * nh + h) * hd;
      std::fill(o, o + hd, 0.0f);
      for (int64_t j = j0; j < j1; j++) axpy_f32(p[j], K.value(j, g), o, hd);
      if (cs) add_inplace(cs + j0, p + j0, j1 - j0);
    }
  });
  if (!col_sums) return;
  std::fill(col_sums, col_sums + n * nkv, 0.0f);
  for (int64_t h = 0; h < nh; h++)
    for (int64_t j = 0; j < n; j++) col_sums[j * nkv + h / group] += head_sums[size_t(h) * size_t(n) + size_t(j)];
}

// Backward of attention_forward for dout [T, nh, hd]: dq [T, nh, hd], dk, dv [T, nkv, hd] for the own rows
// and, when dkc is given, dkc, dvc [slots, nkv, hd] for the cache (all overwritten; summed over each KV
// head's query heads). Probabilities are recomputed row by row:
//   dP_ij = dO_i · v_j,  dS_ij = P_ij (dP_ij − Σ_j' P_ij' dP_ij'),
//   dq_i = scale Σ_j dS_ij k_j,  dk_j += scale Σ_i dS_ij q_i,  dv_j += Σ_i P_ij dO_i
void attention_backward(ThreadPool &pool, const ModelConfig &c, const float *q, const Keys &K, const float *dout,
                        int64_t T, float *dq, float *dk, float *dv, float *dkc, float *dvc, std::vector<float> &scratch) {
  const int64_t nh = c.n_heads, nkv = c.n_kv_heads, hd = c.head_dim, group = nh / nkv, n = K.slots + T;
  const float scale = 1.0f / std::sqrt(float(hd));
  // Per query head: its own dk, dv [n, hd] (heads of a group would race), then per thread P and dP rows.
  const size_t per_head = size_t(n) * size_t(hd);
  const size_t per_thread = 2 * size_t(n);
  float *buf = grow(scratch, 2 * size_t(nh) * per_head + size_t(pool.size()) * per_thread);
  float *dkh = buf, *dvh = buf + size_t(nh) * per_head, *rows = buf + 2 * size_t(nh) * per_head;
  pool.parallel_for(nh, [&](int64_t h, int th) {
    float *p = rows + size_t(th) * per_thread, *dp = p + n;
    float *dkr = dkh + size_t(h) * per_head, *dvr = dvh + size_t(h) * per_head;
    std::fill(dkr, dkr + per_head, 0.0f);
    std::fill(dvr, dvr + per_head, 0.0f);
    const int64_t g = h / group;
    for (int64_t i = 0; i < T; i++) {
      const int64_t j0 = K.first(i), j1 = K.end(i);
      const float *qi = q + (i * nh + h) * hd, *doi = dout + (i * nh + h) * hd;
      for (int64_t j = j0; j < j1; j++) p[j] = scale * dot_f32(qi, K.key(j, g), hd);
      softmax_inplace(p + j0, j1 - j0);
      double sum = 0;
      for (int64_t j = j0; j < j1; j++) {
        dp[j] = dot_f32(doi, K.value(j, g), hd);
        sum += double(p[j]) * dp[j];
      }
      float *dqi = dq + (i * nh + h) * hd;
      std::fill(dqi, dqi + hd, 0.0f);
      for (int64_t j = j0; j < j1; j++) {
        const float ds = p[j] * (dp[j] - float(sum));
        axpy_f32(scale * ds, K.key(j, g), dqi, hd);
        axpy_f32(scale * ds, qi, dkr + j * hd, hd);
        axpy_f32(p[j], doi, dvr + j * hd, hd);
      }
    }
  });
  // Reduce the query heads of each group into their KV head: cache slots first, then own rows.
  std::fill(dk, dk + T * nkv * hd, 0.0f);
  std::fill(dv, dv + T * nkv * hd, 0.0f);
  if (dkc) {
    std::fill(dkc, dkc + K.slots * nkv * hd, 0.0f);
    std::fill(dvc, dvc + K.slots * nkv * hd, 0.0f);
  }
  for (int64_t h = 0; h < nh; h++) {
    const int64_t g = h / group;
    for (int64_t j = 0; j < n; j++) {
      float *tk = j < K.slots ? (dkc ? dkc + (j * nkv + g) * hd : nullptr) : dk + ((j - K.slots) * nkv + g) * hd;
      float *tv = j < K.slots ? (dvc ? dvc + (j * nkv + g) * hd : nullptr) : dv + ((j - K.slots) * nkv + g) * hd;
      if (!tk) continue;
      add_inplace(tk, dkh + size_t(h) * per_head + j * hd, hd);
      add_inplace(tv, dvh + size_t(h) * per_head + j * hd, hd);
    }
  }
}

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

}  // namespace

float schedule_lr(float lr, int32_t warmup, int32_t total, float min_ratio, int64_t step) {
  if (warmup > 0 && step < warmup) return lr * float(step + 1) / float(warmup);
  if (total <= 0) return lr;
  const double span = std::max<int64_t>(1, int64_t(total) - warmup);
  const double progress = std::min(1.0, std::max(0.0, double(step - warmup) / span));
  const double cosine = 0.5 * (1.0 + std::cos(3.14159265358979323846 * progress));
  return float(lr * (min_ratio + (1.0 - min_ratio) * cosine));
}

void trainer_init(kf_lora_trainer &tr, kf_model &m, const kf_lora_train_params &p) {
  const ModelConfig &c = m.cfg;
  if (p.rank < 1 || p.rank > 4096) raise(KF_ERR_INVALID_ARGUMENT, "cannot create trainer: rank %d is outside [1, 4096]", p.rank);
  if (!(p.alpha > 0.0f) || !std::isfinite(p.alpha))
    raise(KF_ERR_INVALID_ARGUMENT, "cannot create trainer: alpha %g must be a positive number", double(p.alpha));
  if ((p.target_mask & ((1u << kNumProj) - 1)) == 0 || (p.target_mask >> kNumProj) != 0)
    raise(KF_ERR_INVALID_ARGUMENT, "cannot create trainer: target_mask 0x%x must select projections among bits 0..6",
          p.target_mask);
  if (!(p.lr >= 0.0f) || !std::isfinite(p.lr) || !(p.weight_decay >= 0.0f) || !(p.beta1 >= 0.0f && p.beta1 < 1.0f) ||
      !(p.beta2 >= 0.0f && p.beta2 < 1.0f) || !(p.eps > 0.0f) || !(p.max_grad_norm >= 0.0f) ||
      !(p.min_lr_ratio >= 0.0f && p.min_lr_ratio <= 1.0f) || p.warmup_steps < 0 || p.total_steps < 0)
    raise(KF_ERR_INVALID_ARGUMENT, "cannot create trainer: an optimizer setting is out of range (lr %g, weight_decay "
          "%g, betas %g/%g, eps %g, max_grad_norm %g, min_lr_ratio %g, warmup %d, total %d)", double(p.lr),
          double(p.weight_decay), double(p.beta1), double(p.beta2), double(p.eps), double(p.max_grad_norm),
          double(p.min_lr_ratio), p.warmup_steps, p.total_steps);
  tr.model = &m;
  tr.params = p;
  tr.scale = p.use_rslora ? p.alpha / std::sqrt(float(p.rank)) : p.alpha / float(p.rank);
  uint64_t state = p.seed;
  tr.pairs.assign(size_t(c.n_layers), std::vector<TrainPair>(kNumProj));
  tr.n_params = 0;
  for (int l = 0; l < c.n_layers; l++) {
    for (int pj = 0; pj < kNumProj; pj++) {
      if (!(p.target_mask & (1u << pj))) continue;
      TrainPair &pr = tr.pairs[size_t(l)][size_t(pj)];
      pr.rank = p.rank;
      pr.in = proj_in(c, pj);
      pr.out = proj_out(c, pj);
      const size_t na = size_t(pr.rank) * size_t(pr.in), nb = size_t(pr.out) * size_t(pr.rank);
      pr.a.resize(na);
      // PEFT: kaiming_uniform_(a = sqrt(5)) gives U(−1/√in, 1/√in); B starts at zero.
      const float bound = 1.0f / std::sqrt(float(pr.in));
      for (float &x : pr.a) x = bound * (2.0f * float(splitmix64(state) >> 40) / 16777216.0f - 1.0f);
      pr.b.assign(nb, 0.0f);
      for (auto *vec : {&pr.ga, &pr.ma, &pr.va}) vec->assign(na, 0.0f);
      for (auto *vec : {&pr.gb, &pr.mb, &pr.vb}) vec->assign(nb, 0.0f);
      tr.n_params += int64_t(na + nb);
    }
  }
}

namespace {

// The keys layer l's rows attend to: the prefix cache's (if any), then the pass's own.
Keys pass_keys(const ModelConfig &c, const PrefixCache *prefix, int64_t l, const LayerActivations &A) {
  Keys K;
  K.slots = prefix ? prefix->slots : 0;
  if (K.slots > 0) {
    K.kc = prefix->k[size_t(l)];
    K.vc = prefix->v[size_t(l)];
  }
  K.k = A.k.data();
  K.v = A.v.data();
  K.nkv = c.n_kv_heads;
  K.hd = c.head_dim;
  K.window = c.sliding_window;
  return K;
}

}  // namespace

void pass_forward(const kf_model &m, const std::vector<std::vector<TrainPair>> &pairs, float s, PassScratch &st,
                  const PassRows &in, const PrefixCache *prefix, PassGrads &out, kf_control *ctl) {
  const ModelConfig &c = m.cfg;
  ThreadPool &pool = *m.engine->pool;
  const int64_t T = in.T, H = c.hidden_size, hd = c.head_dim, nh = c.n_heads, nkv = c.n_kv_heads,
                I = c.intermediate_size;
  const int64_t q_dim = nh * hd, kv_dim = nkv * hd;
  const int64_t slots = prefix ? prefix->slots : 0;
  const float eps = float(c.rms_norm_eps);
  st.acts.resize(size_t(c.n_layers));
  float *cs = grow(st.rope_cs, size_t(T * hd));  // [T, hd/2, 2] at the true positions pos0..
  for (int64_t t = 0; t < T; t++) rope_angles(cs + t * hd, double(in.pos0 + t), m.inv_freq.data(), hd);
  float *x = grow(st.x, size_t(T * H));  // [T, H] residual stream
  std::copy_n(in.x0, T * H, x);
  float *o = grow(st.o, size_t(T * H));
  for (int64_t l = 0; l < c.n_layers; l++) {
    check_cancel(ctl, "train");
    const LayerWeights &W = m.layers[size_t(l)];
    const std::vector<TrainPair> &P = pairs[size_t(l)];
    LayerActivations &A = st.acts[size_t(l)];
    std::copy_n(x, T * H, grow(A.x, size_t(T * H)));
    rmsnorm_rows(pool, grow(A.xn1, size_t(T * H)), x, W.attn_norm.data(), T, H, eps);                // xn1 [T, H]
    linear_forward(pool, W.wq, proj_bias(W, kProjQ), P[kProjQ], s, A.xn1.data(), T, grow(A.q, size_t(T * q_dim)),
                   A.lora_t[kProjQ], st);                                                             // q [T, nh, hd]
    linear_forward(pool, W.wk, proj_bias(W, kProjK), P[kProjK], s, A.xn1.data(), T, grow(A.k, size_t(T * kv_dim)),
                   A.lora_t[kProjK], st);                                                             // k [T, nkv, hd]
    linear_forward(pool, W.wv, proj_bias(W, kProjV), P[kProjV], s, A.xn1.data(), T, grow(A.v, size_t(T * kv_dim)),
                   A.lora_t[kProjV], st);                                                             // v [T, nkv, hd]
    rope_rotate(A.q.data(), T, nh, hd, cs, false);
    rope_rotate(A.k.data(), T, nkv, hd, cs, false);
    float *col_sums = out.col_sums ? grow((*out.col_sums)[size_t(l)], size_t((slots + T) * nkv)) : nullptr;
    if (slots == 0 && !col_sums && T <= kDenseAttentionRows)
      attention_forward_dense(pool, c, A.q.data(), A.k.data(), A.v.data(), T, grow(A.attn, size_t(T * q_dim)),
                              st.attn_work);
    else
      attention_forward(pool, c, A.q.data(), pass_keys(c, prefix, l, A), T, grow(A.attn, size_t(T * q_dim)),
                        col_sums, st.attn_work);
    linear_forward(pool, W.wo, proj_bias(W, kProjO), P[kProjO], s, A.attn.data(), T, o, A.lora_t[kProjO], st);
    add_inplace(x, o, T * H);                                                                         // x_mid
    std::copy_n(x, T * H, grow(A.x_mid, size_t(T * H)));
    rmsnorm_rows(pool, grow(A.xn2, size_t(T * H)), x, W.ffn_norm.data(), T, H, eps);                  // xn2 [T, H]
    linear_forward(pool, W.w_gate, nullptr, P[kProjGate], s, A.xn2.data(), T, grow(A.gate, size_t(T * I)),
                   A.lora_t[kProjGate], st);                                                          // gate [T, I]
    linear_forward(pool, W.w_up, nullptr, P[kProjUp], s, A.xn2.data(), T, grow(A.up, size_t(T * I)),
                   A.lora_t[kProjUp], st);                                                            // up [T, I]
    float *h = grow(A.h, size_t(T * I));
    for (int64_t i = 0; i < T * I; i++) h[i] = A.gate[size_t(i)] * sigmoid(A.gate[size_t(i)]) * A.up[size_t(i)];
    linear_forward(pool, W.w_down, nullptr, P[kProjDown], s, h, T, o, A.lora_t[kProjDown], st);       // [T, H]
    add_inplace(x, o, T * H);
    if (ctl && in.report_progress) progress_set(ctl, in.progress0 + l + 1);
  }
  std::copy_n(x, T * H, grow(st.x_final, size_t(T * H)));
  rmsnorm_rows(pool, grow(st.xn_final, size_t(T * H)), x, m.final_norm.data(), T, H, eps);
}

double pass_backward(const kf_model &m, const std::vector<std::vector<TrainPair>> &pairs, float s, PassScratch &st,
                     const PassRows &in, const PrefixCache *prefix, PassGrads &out, kf_control *ctl) {
  const ModelConfig &c = m.cfg;
  ThreadPool &pool = *m.engine->pool;
  const int64_t T = in.T, H = c.hidden_size, hd = c.head_dim, nh = c.n_heads, nkv = c.n_kv_heads,
                I = c.intermediate_size, V = c.vocab_size;
  const int64_t q_dim = nh * hd, kv_dim = nkv * hd;
  const int64_t slots = prefix ? prefix->slots : 0;
  const float eps = float(c.rms_norm_eps);
  const std::vector<int64_t> &rows = in.rows;
  const std::vector<int32_t> &targets = in.targets;
  const int64_t L = int64_t(rows.size());
  const ModelGrads *wg = out.weights;
  const float *cs = st.rope_cs.data();

  // ---- loss: Σ cross-entropy over the labelled rows / denom; dlogits = (softmax − onehot) · weight / denom ----
  const double denom = in.loss_denom > 0 ? in.loss_denom : double(std::max<int64_t>(L, 1));
  const double lw = in.loss_weight / denom;
  float *dxn = grow(st.dxn, size_t(T * H));  // d loss / d final-normed rows [T, H]
  if (in.dxn_ext) std::copy_n(in.dxn_ext, T * H, dxn);
  else std::fill_n(dxn, T * H, 0.0f);
  double loss = 0;
  st.aux_loss = 0;
  if (L > 0) {
    float *xr = grow(st.xr, size_t(L * H)), *logits = grow(st.logits, size_t(L * V));
    for (int64_t r = 0; r < L; r++) std::copy_n(st.xn_final.begin() + rows[size_t(r)] * H, H, xr + r * H);
    matmul(pool, xr, m.lm_head.data, m.lm_head.dtype, logits, L, H, V, nullptr);  // [L, V]
    const int64_t n_main = in.n_main < 0 ? L : std::min(in.n_main, L);
    const double aw = in.aux_denom > 0 ? in.aux_weight / in.aux_denom : 0.0;
    double aux = 0;
    for (int64_t r = 0; r < L; r++) {
      float *lr = logits + r * V;
      float mx = lr[0];
      for (int64_t i = 1; i < V; i++) mx = std::max(mx, lr[i]);
      double sum = 0;
      for (int64_t i = 0; i < V; i++) sum += std::exp(double(lr[i] - mx));
      const double ce = std::log(sum) + double(mx) - double(lr[targets[size_t(r)]]), w = r < n_main ? lw : aw;
      (r < n_main ? loss : aux) += ce;
      for (int64_t i = 0; i < V; i++) lr[i] = float(std::exp(double(lr[i] - mx)) / sum * w);
      lr[targets[size_t(r)]] -= float(w);
    }
    loss /= denom;  // unweighted: the caller weighs the losses it reports itself
    st.aux_loss = in.aux_denom > 0 ? aux / in.aux_denom : 0.0;
    // dxn_final rows += dlogits · W_lm  (W_lm [V, H] read as [K = V, N = H]); the head's gradient dlogits^T xr
    float *dxr = grow(st.dxr, size_t(L * H));
    matmul_nn(pool, logits, m.lm_head.data, m.lm_head.dtype, dxr, L, V, H);
    for (int64_t r = 0; r < L; r++) add_inplace(dxn + rows[size_t(r)] * H, dxr + r * H, H);
    if (wg && wg->lm_head) add_at_b(pool, logits, xr, L, V, H, wg->lm_head, st);
  }
  float *dx = grow(st.dx, size_t(T * H));  // d loss / d residual stream
  std::fill_n(dx, T * H, 0.0f);
  rmsnorm_backward(st.x_final.data(), m.final_norm.data(), dxn, T, H, eps, dx, wg ? wg->final_norm : nullptr);

  // ---- backward through the layers, last first ----
  std::vector<std::vector<float>> &ega = out.lora_ga, &egb = out.lora_gb;
  ega.assign(size_t(c.n_layers) * kNumProj, {});
  egb.assign(size_t(c.n_layers) * kNumProj, {});
  float *dh = grow(st.dh, size_t(T * I)), *dgate = grow(st.dgate, size_t(T * I)), *dup = grow(st.dup, size_t(T * I));
  float *dxn_l = grow(st.dxn_l, size_t(T * H)), *dattn = grow(st.dattn, size_t(T * q_dim));
  float *dq = grow(st.dq, size_t(T * q_dim)), *dk = grow(st.dk, size_t(T * kv_dim)), *dv = grow(st.dv, size_t(T * kv_dim));
  for (int64_t l = c.n_layers - 1; l >= 0; l--) {
    check_cancel(ctl, "train");
    const LayerWeights &W = m.layers[size_t(l)];
    const std::vector<TrainPair> &P = pairs[size_t(l)];
    const LayerActivations &A = st.acts[size_t(l)];
    const ModelGrads::Layer *G = wg ? &wg->layers[size_t(l)] : nullptr;
    const auto grads = [&](int pj) {
      std::vector<float> &ga = ega[size_t(l) * kNumProj + size_t(pj)], &gb = egb[size_t(l) * kNumProj + size_t(pj)];
      if (P[size_t(pj)].rank > 0 && ga.empty()) {
        ga.assign(P[size_t(pj)].a.size(), 0.0f);
        gb.assign(P[size_t(pj)].b.size(), 0.0f);
      }
      return std::pair<float *, float *>(ga.data(), gb.data());
    };
    const auto gw = [&](int pj) { return G ? G->proj[pj] : nullptr; };
    const auto gbias = [&](int pj) { return G ? G->bias[pj] : nullptr; };
    // MLP: x_out = x_mid + down(h), h = silu(gate) · up
    auto [ga_d, gb_d] = grads(kProjDown);
    linear_backward(pool, W.w_down, P[kProjDown], s, A.h.data(), A.lora_t[kProjDown].data(), dx, T, dh, false, ga_d,
                    gb_d, gw(kProjDown), nullptr, st);                                                // dh [T, I]
    for (int64_t i = 0; i < T * I; i++) {
      const float g = A.gate[size_t(i)], sg = sigmoid(g);
      dgate[i] = dh[i] * A.up[size_t(i)] * sg * (1.0f + g * (1.0f - sg));  // silu'(g)
      dup[i] = dh[i] * g * sg;
    }
    auto [ga_g, gb_g] = grads(kProjGate);
    linear_backward(pool, W.w_gate, P[kProjGate], s, A.xn2.data(), A.lora_t[kProjGate].data(), dgate, T, dxn_l, false,
                    ga_g, gb_g, gw(kProjGate), nullptr, st);
    auto [ga_u, gb_u] = grads(kProjUp);
    linear_backward(pool, W.w_up, P[kProjUp], s, A.xn2.data(), A.lora_t[kProjUp].data(), dup, T, dxn_l, true, ga_u,
                    gb_u, gw(kProjUp), nullptr, st);                                                  // dxn2 [T, H]
    rmsnorm_backward(A.x_mid.data(), W.ffn_norm.data(), dxn_l, T, H, eps, dx, G ? G->ffn_norm : nullptr);  // dx_mid
    // Attention: x_mid = x + o(attn)
    auto [ga_o, gb_o] = grads(kProjO);
    linear_backward(pool, W.wo, P[kProjO], s, A.attn.data(), A.lora_t[kProjO].data(), dx, T, dattn, false, ga_o, gb_o,
                    gw(kProjO), proj_bias(W, kProjO) ? gbias(kProjO) : nullptr, st);                 // dattn [T, nh·hd]
    float *dkc = nullptr, *dvc = nullptr;
    if (out.cache_dk && slots > 0) {
      dkc = grow((*out.cache_dk)[size_t(l)], size_t(slots * kv_dim));
      dvc = grow((*out.cache_dv)[size_t(l)], size_t(slots * kv_dim));
    }
    if (slots == 0 && T <= kDenseAttentionRows)
      attention_backward_dense(pool, c, A.q.data(), A.k.data(), A.v.data(), dattn, T, dq, dk, dv, st.attn_work);
    else
      attention_backward(pool, c, A.q.data(), pass_keys(c, prefix, l, A), dattn, T, dq, dk, dv, dkc, dvc,
                         st.attn_work);
    rope_rotate(dq, T, nh, hd, cs, true);  // back through the rotation: R^T
    rope_rotate(dk, T, nkv, hd, cs, true);
    auto [ga_q, gb_q] = grads(kProjQ);
    linear_backward(pool, W.wq, P[kProjQ], s, A.xn1.data(), A.lora_t[kProjQ].data(), dq, T, dxn_l, false, ga_q, gb_q,
                    gw(kProjQ), proj_bias(W, kProjQ) ? gbias(kProjQ) : nullptr, st);
    auto [ga_k, gb_k] = grads(kProjK);
    linear_backward(pool, W.wk, P[kProjK], s, A.xn1.data(), A.lora_t[kProjK].data(), dk, T, dxn_l, true, ga_k, gb_k,
                    gw(kProjK), proj_bias(W, kProjK) ? gbias(kProjK) : nullptr, st);
    auto [ga_v, gb_v] = grads(kProjV);
    linear_backward(pool, W.wv, P[kProjV], s, A.xn1.data(), A.lora_t[kProjV].data(), dv, T, dxn_l, true, ga_v, gb_v,
                    gw(kProjV), proj_bias(W, kProjV) ? gbias(kProjV) : nullptr, st);                 // dxn1 [T, H]
    rmsnorm_backward(A.x.data(), W.attn_norm.data(), dxn_l, T, H, eps, dx, G ? G->attn_norm : nullptr);  // d layer input
    if (ctl && in.report_progress) progress_set(ctl, in.progress0 + 2 * c.n_layers - l);
  }
  if (out.dx0) std::copy_n(dx, T * H, out.dx0);
  return loss;
}

double train_pass(const kf_model &m, const std::vector<std::vector<TrainPair>> &pairs, float s, PassScratch &st,
                  const PassRows &in, const PrefixCache *prefix, PassGrads &out, kf_control *ctl) {
  pass_forward(m, pairs, s, st, in, prefix, out, ctl);
  return pass_backward(m, pairs, s, st, in, prefix, out, ctl);
}

double trainer_accumulate(kf_lora_trainer &tr, const float *prefix, int32_t n_prefix, const int32_t *ids,
                          const int32_t *labels, int32_t n_ids, kf_control *ctl) {
  const kf_model &m = *tr.model;
  const int64_t H = m.cfg.hidden_size;
  progress_start(ctl, 2 * m.cfg.n_layers);
  PassRows in;
  in.T = int64_t(n_prefix) + n_ids;
  std::vector<float> x0(size_t(in.T * H));  // [prefix rows | embeddings of ids]
  std::copy_n(prefix, int64_t(n_prefix) * H, x0.begin());
  for (int32_t t = 0; t < n_ids; t++)
    convert_row_to_f32(m.embed.row(ids[t]), m.embed.dtype, x0.data() + (int64_t(n_prefix) + t) * H, H);
  in.x0 = x0.data();
  for (int32_t t = 0; t < n_ids; t++) {  // row n_prefix + t predicts labels[t]
    if (labels[t] < 0) continue;
    in.rows.push_back(int64_t(n_prefix) + t);
    in.targets.push_back(labels[t]);
  }
  PassGrads g;
  const double loss = train_pass(m, tr.pairs, tr.scale, tr.scratch, in, nullptr, g, ctl);
  // The example succeeded: its gradients join the accumulated ones.
  for (int64_t l = 0; l < m.cfg.n_layers; l++)
    for (int pj = 0; pj < kNumProj; pj++) {
      TrainPair &pr = tr.pairs[size_t(l)][size_t(pj)];
      if (pr.rank == 0) continue;
      add_inplace(pr.ga.data(), g.lora_ga[size_t(l) * kNumProj + size_t(pj)].data(), int64_t(pr.ga.size()));
      add_inplace(pr.gb.data(), g.lora_gb[size_t(l) * kNumProj + size_t(pj)].data(), int64_t(pr.gb.size()));
    }
  tr.accumulated++;
  return loss;
}

kf_train_step_info trainer_step(kf_lora_trainer &tr) {
  if (tr.accumulated == 0) raise(KF_ERR_INVALID_STATE, "cannot take an optimizer step: no example was accumulated");
  const kf_lora_train_params &p = tr.params;
  double sq = 0;
  for (auto &layer : tr.pairs)
    for (TrainPair &pr : layer) {
      for (float g : pr.ga) sq += double(g) * g;
      for (float g : pr.gb) sq += double(g) * g;
    }
  const StepPlan sp = plan_step(sq, tr.accumulated, p.max_grad_norm, p.lr, p.warmup_steps, p.total_steps,
                                p.min_lr_ratio, tr.step, [&] {
                                  for (auto &layer : tr.pairs)
                                    for (TrainPair &pr : layer) {
                                      std::fill(pr.ga.begin(), pr.ga.end(), 0.0f);
                                      std::fill(pr.gb.begin(), pr.gb.end(), 0.0f);
                                    }
                                  tr.accumulated = 0;
                                });
  const float lr = sp.lr;
  const double norm = sp.norm;
  const float coef = sp.coef;
  const AdamW opt(lr, p.beta1, p.beta2, p.eps, tr.step, coef);
  const auto update = [&](std::vector<float> &w, std::vector<float> &g, std::vector<float> &m1, std::vector<float> &m2) {
    opt.update(w.data(), g.data(), m1.data(), m2.data(), w.size(), p.weight_decay);
    std::fill(g.begin(), g.end(), 0.0f);
  };
  for (auto &layer : tr.pairs)
    for (TrainPair &pr : layer) {
      if (pr.rank == 0) continue;
      update(pr.a, pr.ga, pr.ma, pr.va);
      update(pr.b, pr.gb, pr.mb, pr.vb);
    }
  kf_train_step_info info{};
  info.examples = tr.accumulated;
  tr.accumulated = 0;
  tr.step++;
  info.step = tr.step;
  info.lr = lr;
  info.grad_norm = float(norm);
  return info;
}

}  // namespace kf

// forward_cpu.cpp — the Llama-family forward pass on the CPU, read top to bottom.
//
// One call runs a chunk of T tokens (T = 1 for decode) through every layer, appending their keys and
// values to the session's KV cache. Every buffer was allocated by session_init; nothing is allocated here.
#include <algorithm>
#include <cmath>
#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#endif

#include "cpu_ops.h"
#include "model.h"

namespace kf {

void session_init(kf_session &s, kf_model &m, const kf_session_params &p) {
  const ModelConfig &c = m.cfg;
  if (p.n_ctx < 0) raise(KF_ERR_INVALID_ARGUMENT, "cannot create session: n_ctx %d is negative", p.n_ctx);
  if (p.n_batch < 1 || p.n_batch > 65536)
    raise(KF_ERR_INVALID_ARGUMENT, "cannot create session: n_batch %d is outside [1, 65536]", p.n_batch);
  if (p.cache_kind != KF_CACHE_FULL)
    raise(KF_ERR_UNSUPPORTED, "cannot create session: cache kind %d is not supported (0 = full)", p.cache_kind);
  s.model = &m;
  s.n_ctx = p.n_ctx > 0 ? p.n_ctx : c.max_position_embeddings;
  if (s.n_ctx > (1 << 24))
    raise(KF_ERR_INVALID_ARGUMENT, "cannot create session: n_ctx %d is above 16777216", s.n_ctx);
  s.n_batch = std::min(p.n_batch, s.n_ctx);
  s.n_past = 0;
  s.has_logits = false;

  const size_t B = size_t(s.n_batch), H = size_t(c.hidden_size), hd = size_t(c.head_dim);
  const size_t q_dim = size_t(c.n_heads) * hd, kv_dim = size_t(c.n_kv_heads) * hd, I = size_t(c.intermediate_size);

  // Refuse what cannot fit before touching it (see available_memory_bytes).
  const double kv_bytes = 2.0 * c.n_layers * double(s.n_ctx) * double(kv_dim) * sizeof(float);
  const double scratch_bytes = sizeof(float) * (double(B) * (3.0 * H + 2.0 * q_dim + 2.0 * kv_dim + 2.0 * I + hd) +
                                                double(m.engine->pool->size()) * s.n_ctx + c.vocab_size);
  const double available = available_memory_bytes();
  if (available > 0 && kv_bytes + scratch_bytes > 0.9 * available) {
    raise(KF_ERR_OUT_OF_MEMORY,
          "cannot create session: n_ctx %d needs %.2f GiB of KV cache and %.2f GiB of scratch, but only %.2f GiB "
          "of memory is available; lower the context size",
          s.n_ctx, kv_bytes / 1073741824.0, scratch_bytes / 1073741824.0, available / 1073741824.0);
  }
  s.k_cache.resize(size_t(c.n_layers));
  s.v_cache.resize(size_t(c.n_layers));
  for (int l = 0; l < c.n_layers; l++) {
    s.k_cache[size_t(l)].assign(size_t(s.n_ctx) * kv_dim, 0.0f);
    s.v_cache[size_t(l)].assign(size_t(s.n_ctx) * kv_dim, 0.0f);
  }
  s.x.assign(B * H, 0.0f);
  s.xn.assign(B * H, 0.0f);
  s.q.assign(B * q_dim, 0.0f);
  s.k.assign(B * kv_dim, 0.0f);
  s.v.assign(B * kv_dim, 0.0f);
  s.attn.assign(B * q_dim, 0.0f);
  s.proj.assign(B * H, 0.0f);
  s.gate.assign(B * I, 0.0f);
  s.up.assign(B * I, 0.0f);
  s.scores.assign(size_t(m.engine->pool->size()) * size_t(s.n_ctx), 0.0f);
  s.rope_cs.assign(B * hd, 0.0f);
  s.logits.assign(size_t(c.vocab_size), 0.0f);
  s.logits_saved.assign(size_t(c.vocab_size), 0.0f);
}

namespace {

// Rotates pairs (i, i + hd/2) of each head — Hugging Face's rotate_half layout.
// x: [T, n_heads, hd]; cs: [T, hd/2, 2] cos, sin.
void apply_rope(float *x, int64_t T, int64_t n_heads, int64_t hd, const float *cs) {
  const int64_t half = hd / 2;
  for (int64_t t = 0; t < T; t++) {
    const float *c = cs + t * hd;
    for (int64_t h = 0; h < n_heads; h++) {
      float *v = x + (t * n_heads + h) * hd;
      for (int64_t i = 0; i < half; i++) {
        const float x1 = v[i], x2 = v[i + half], co = c[2 * i], si = c[2 * i + 1];
        v[i] = x1 * co - x2 * si;
        v[i + half] = x2 * co + x1 * si;
      }
    }
  }
}

void check_cancel(kf_control *ctl) {
  if (ctl && ctl->cancel) raise(KF_ERR_CANCELLED, "cannot run the model: cancelled");
}

}  // namespace

void forward_chunk(kf_session &s, const ChunkInput &in, int32_t T, int32_t pos0, float *logits_out,
                   kf_control *ctl) {
  kf_model &m = *s.model;
  const ModelConfig &c = m.cfg;
  ThreadPool &pool = *m.engine->pool;
  const int64_t H = c.hidden_size, hd = c.head_dim, nh = c.n_heads, nkv = c.n_kv_heads;
  const int64_t q_dim = nh * hd, kv_dim = nkv * hd, I = c.intermediate_size, V = c.vocab_size;
  const int64_t group = nh / nkv;  // query heads per KV head
  const float eps = float(c.rms_norm_eps);
  const float scale = 1.0f / std::sqrt(float(hd));
  const int64_t window = c.sliding_window;  // 0 = none

  // Flush denormals to zero on the calling thread (pool workers set it once at start): softmax and
  // SiLU tails underflow into them, and x86 runs denormal operands ~100x slower.
#if defined(__SSE__) || defined(__x86_64__)
  _mm_setcsr(_mm_getcsr() | 0x8040);  // FTZ | DAZ
#endif

  // x: [T, H] <- embedding rows of the ids, or the caller's embeddings (LLoCO summary vectors)
  for (int32_t t = 0; t < T; t++) {
    if (in.tokens) {
      convert_row_to_f32(m.embed.row(in.tokens[t]), m.embed.dtype, s.x.data() + t * H, H);
    } else {
      const uint8_t *row = static_cast<const uint8_t *>(in.embeds) + size_t(t) * size_t(H) * dtype_size(in.embeds_dtype);
      convert_row_to_f32(row, in.embeds_dtype, s.x.data() + t * H, H);
    }
  }

  // rope_cs: [T, hd/2, 2], angles in double so large positions keep their precision
  for (int32_t t = 0; t < T; t++) {
    const double pos = double(pos0 + t);
    for (int64_t i = 0; i < hd / 2; i++) {
      const double a = pos * m.inv_freq[size_t(i)];
      s.rope_cs[size_t(t * hd + 2 * i)] = float(std::cos(a));
      s.rope_cs[size_t(t * hd + 2 * i + 1)] = float(std::sin(a));
    }
  }

  for (int64_t l = 0; l < c.n_layers; l++) {
    check_cancel(ctl);
    const LayerWeights &L = m.layers[size_t(l)];
    float *kc = s.k_cache[size_t(l)].data();  // [n_ctx, nkv, hd]
    float *vc = s.v_cache[size_t(l)].data();  // [n_ctx, nkv, hd]

    // ---- attention block ----
    rmsnorm_rows(pool, s.xn.data(), s.x.data(), L.attn_norm.data(), T, H, eps);  // xn: [T, H]
    matmul(pool, s.xn.data(), L.wq.data, L.wq.dtype, s.q.data(), T, H, q_dim,
           L.bq.empty() ? nullptr : L.bq.data());                                // q: [T, nh, hd]
    matmul(pool, s.xn.data(), L.wk.data, L.wk.dtype, s.k.data(), T, H, kv_dim,
           L.bk.empty() ? nullptr : L.bk.data());                                // k: [T, nkv, hd]
    matmul(pool, s.xn.data(), L.wv.data, L.wv.dtype, s.v.data(), T, H, kv_dim,
           L.bv.empty() ? nullptr : L.bv.data());                                // v: [T, nkv, hd]
    apply_rope(s.q.data(), T, nh, hd, s.rope_cs.data());
    apply_rope(s.k.data(), T, nkv, hd, s.rope_cs.data());
    std::copy(s.k.begin(), s.k.begin() + T * kv_dim, kc + pos0 * kv_dim);
    std::copy(s.v.begin(), s.v.begin() + T * kv_dim, vc + pos0 * kv_dim);

    // attn[t, h] = softmax(q[t,h] · K[0..pos0+t, kvh] * scale) · V[0..pos0+t, kvh]  (causal)
    pool.parallel_for(int64_t(T) * nh, [&](int64_t task, int th) {
      const int64_t t = task / nh, h = task % nh, kvh = h / group;
      const int64_t end = pos0 + t + 1;  // causal: keys 0..pos0+t
      // Mistral's sliding window: keys more than `window - 1` positions back are masked.
      const int64_t begin = window > 0 ? std::max<int64_t>(0, end - window) : 0;
      const int64_t n_vis = end - begin;
      const float *qv = s.q.data() + (t * nh + h) * hd;
      float *sc = s.scores.data() + size_t(th) * size_t(s.n_ctx);
      for (int64_t j = 0; j < n_vis; j++) sc[j] = dot_f32(qv, kc + ((begin + j) * nkv + kvh) * hd, hd) * scale;
      softmax_inplace(sc, n_vis);
      float *out = s.attn.data() + (t * nh + h) * hd;
      std::fill(out, out + hd, 0.0f);
      for (int64_t j = 0; j < n_vis; j++) axpy_f32(sc[j], vc + ((begin + j) * nkv + kvh) * hd, out, hd);
    });
    matmul(pool, s.attn.data(), L.wo.data, L.wo.dtype, s.proj.data(), T, q_dim, H,
           L.bo.empty() ? nullptr : L.bo.data());  // proj: [T, H]
    add_inplace(s.x.data(), s.proj.data(), int64_t(T) * H);

    // ---- MLP block: x += down(silu(gate(xn)) * up(xn)) ----
    rmsnorm_rows(pool, s.xn.data(), s.x.data(), L.ffn_norm.data(), T, H, eps);
    matmul(pool, s.xn.data(), L.w_gate.data, L.w_gate.dtype, s.gate.data(), T, H, I, nullptr);  // [T, I]
    matmul(pool, s.xn.data(), L.w_up.data, L.w_up.dtype, s.up.data(), T, H, I, nullptr);        // [T, I]
    silu_mul(s.gate.data(), s.up.data(), int64_t(T) * I);
    matmul(pool, s.gate.data(), L.w_down.data, L.w_down.dtype, s.proj.data(), T, I, H, nullptr);  // [T, H]
    add_inplace(s.x.data(), s.proj.data(), int64_t(T) * H);
  }

  // ---- head: final norm, then logits of every row (when asked) or only the last ----
  // The final-normed rows are also what an AutoCompressor takes as summary vectors (hidden_out).
  if (logits_out || in.hidden_out) {
    rmsnorm_rows(pool, s.xn.data(), s.x.data(), m.final_norm.data(), T, H, eps);  // xn: [T, H]
    if (in.hidden_out) std::copy(s.xn.begin(), s.xn.begin() + int64_t(T) * H, in.hidden_out);
  } else {
    rmsnorm_rows(pool, s.xn.data() + (T - 1) * H, s.x.data() + (T - 1) * H, m.final_norm.data(), 1, H, eps);
  }
  if (logits_out) {
    matmul(pool, s.xn.data(), m.lm_head.data, m.lm_head.dtype, logits_out, T, H, V, nullptr);  // [T, V]
    std::copy(logits_out + (T - 1) * V, logits_out + T * V, s.logits.begin());
  } else {
    matmul(pool, s.xn.data() + (T - 1) * H, m.lm_head.data, m.lm_head.dtype, s.logits.data(), 1, H, V, nullptr);
  }
}

}  // namespace kf

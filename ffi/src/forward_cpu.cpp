// forward_cpu.cpp — the Llama-family forward pass on the CPU, read top to bottom.
//
// One call runs a table of rows (a chunk of one session, or one row per session of a batch) through
// every layer, writing their keys and values to their sessions' KV caches. Every buffer was allocated
// with the Workspace (Workspace::init, by the CPU backend); nothing is allocated here.
#include <algorithm>
#include <climits>
#include <cmath>
#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#endif

#include "cpu_ops.h"
#include "model.h"

namespace kf {

namespace {

// Rows of an attention block for a workspace of n_rows rows and n_ctx columns (model.h, kAttnRows).
int32_t attn_block_rows(int32_t n_rows, int32_t n_ctx) {
  int32_t r = kAttnRows;
  while (r > kAttnMinRows && size_t(r) * size_t(n_ctx) * sizeof(float) > kAttnScoreBytes) r /= 2;
  return std::max(1, std::min(n_rows, r));
}

}  // namespace

void Workspace::init(const kf_model &m, int32_t n_rows, int32_t n_ctx, bool with_scores) {
  const ModelConfig &c = m.cfg;
  const size_t B = size_t(n_rows), H = size_t(c.hidden_size), hd = size_t(c.head_dim);
  const size_t q_dim = size_t(c.n_heads) * hd, kv_dim = size_t(c.n_kv_heads) * hd, I = size_t(c.intermediate_size);
  rows = n_rows;
  x.assign(B * H, 0.0f);
  xn.assign(B * H, 0.0f);
  q.assign(B * q_dim, 0.0f);
  k.assign(B * kv_dim, 0.0f);
  v.assign(B * kv_dim, 0.0f);
  attn.assign(B * q_dim, 0.0f);
  proj.assign(B * H, 0.0f);
  gate.assign(B * I, 0.0f);
  up.assign(B * I, 0.0f);
  score_cols = n_ctx;
  attn_rows = attn_block_rows(n_rows, n_ctx);
  scores.assign(size_t(m.engine->pool->size()) * size_t(attn_rows) * size_t(n_ctx), 0.0f);
  attn_blocks.reserve(B);
  key_tile.assign(size_t(m.engine->pool->size()) * hd * kAttnKeys, 0.0f);
  rope_cs.assign(B * hd, 0.0f);
  row_session.assign(B, nullptr);
  row_pos.assign(B, 0);
  row_slot.assign(B, 0);
  row_mix.assign(B, nullptr);
  lora_segments.reserve(B * size_t(kMaxAdapterTerms));
  // Blocks are at least kAttnMinRows rows of one session but the last; a batch of sessions has one
  // block per row.
  const size_t max_blocks = size_t(n_rows) <= size_t(kAttnMinRows) ? B : (B + kAttnMinRows - 1) / kAttnMinRows + 1;
  col_sums.assign(with_scores ? max_blocks * size_t(c.n_heads) * size_t(n_ctx) : 0, 0.0f);
  block_keys.assign(max_blocks, {0, 0});
}

void Workspace::reserve_lora(int32_t rank_sum) {
  if (rank_sum <= lora_rank) return;
  // The stride grows, so the scratch is laid out anew for it (its contents live within one call).
  lora_tmp.assign(size_t(rows) * size_t(rank_sum), 0.0f);
  lora_rank = rank_sum;
}

int64_t Workspace::bytes() const {
  const auto sz = [](const std::vector<float> &v) { return int64_t(v.capacity()) * 4; };
  return sz(x) + sz(xn) + sz(q) + sz(k) + sz(v) + sz(attn) + sz(proj) + sz(gate) + sz(up) + sz(scores) +
         sz(rope_cs) + sz(lora_tmp) + sz(key_tile) + sz(col_sums);
}

double Workspace::estimate_bytes(const kf_model &m, int32_t n_rows, int32_t n_ctx) {
  const ModelConfig &c = m.cfg;
  const double B = n_rows, H = c.hidden_size, hd = c.head_dim, q_dim = double(c.n_heads) * hd,
               kv_dim = double(c.n_kv_heads) * hd, I = c.intermediate_size;
  return sizeof(float) * (B * (3.0 * H + 2.0 * q_dim + 2.0 * kv_dim + 2.0 * I + hd) +
                          double(m.engine->pool->size()) * attn_block_rows(n_rows, n_ctx) * n_ctx);
}

namespace {

// y[rows] += sum_i w_i B_i (A_i x) over the terms of each row's mix that adapt projection `p` of layer
// `l`; x: [rows, in], y: [rows, out]. A run of rows with one mix gives one segment per term, each term's
// A x in its own scratch columns.
void apply_lora(ThreadPool &pool, Workspace &ws, int32_t rows, int64_t l, Proj p, const float *x, int64_t in, float *y,
                int64_t out) {
  ws.lora_segments.clear();
  for (int32_t r = 0; r < rows;) {
    const AdapterMix *mix = ws.row_mix[size_t(r)];
    int32_t end = r + 1;
    while (end < rows && same_mix(ws.row_mix[size_t(end)], mix)) end++;
    int32_t col = 0;
    for (int32_t i = 0; mix && i < mix->n; i++) {
      const LoraPair &pair = mix->adapter[i]->layers[size_t(l)].proj[p];
      if (pair.rank == 0) continue;
      ws.lora_segments.push_back({pair.a.data(), pair.bt.data(), pair.rank, r, end - r, mix->weight[i], col});
      col += pair.rank;
    }
    r = end;
  }
  if (ws.lora_segments.empty()) return;
  lora_add(pool, x, in, y, out, ws.lora_segments.data(), int32_t(ws.lora_segments.size()), ws.lora_tmp.data(),
           ws.lora_rank);
}

// Each scoring session's slot scores of layer l := the column sums of this forward's probabilities,
// summed over its blocks and over the query heads of each KV group (overwritten, not accumulated).
void reduce_slot_scores(Workspace &ws, int64_t l, int64_t nh, int64_t group, int64_t n_cols) {
  const int64_t n_blocks = int64_t(ws.attn_blocks.size());
  for (int64_t b = 0; b < n_blocks; b++) {
    KvCache &kv = ws.row_session[size_t(ws.attn_blocks[size_t(b)].first)]->cache;
    if (!kv.needs_scores()) continue;
    const int64_t nkv = kv.n_kv;
    float *score = kv.score[size_t(l)].data();  // [capacity, nkv]
    const bool first_block = b == 0 || ws.row_session[size_t(ws.attn_blocks[size_t(b - 1)].first)] !=
                                           ws.row_session[size_t(ws.attn_blocks[size_t(b)].first)];
    const auto [lo, hi] = ws.block_keys[size_t(b)];
    if (first_block) {  // zero every slot the session's blocks reached (its last block reaches furthest)
      int64_t last = b;
      while (last + 1 < n_blocks && ws.row_session[size_t(ws.attn_blocks[size_t(last + 1)].first)] ==
                                        ws.row_session[size_t(ws.attn_blocks[size_t(b)].first)])
        last++;
      std::fill(score, score + ws.block_keys[size_t(last)].second * nkv, 0.0f);
    }
    for (int64_t h = 0; h < nh; h++) {
      const float *cs = ws.col_sums.data() + (size_t(b) * size_t(nh) + size_t(h)) * size_t(n_cols);
      const int64_t g = h / group;
      for (int64_t j = lo; j < hi; j++) score[j * nkv + g] += cs[j];
    }
  }
}

}  // namespace

void forward_rows(Workspace &ws, const kf_model &m, int32_t T, const ChunkInput &in, float *logits, bool all_logits,
                  kf_control *ctl) {
  const ModelConfig &c = m.cfg;
  ThreadPool &pool = *m.engine->pool;
  const int64_t H = c.hidden_size, hd = c.head_dim, nh = c.n_heads, nkv = c.n_kv_heads;
  const int64_t q_dim = nh * hd, kv_dim = nkv * hd, I = c.intermediate_size, V = c.vocab_size;
  const int64_t group = nh / nkv;  // query heads per KV head
  const float eps = float(c.rms_norm_eps);
  const float scale = 1.0f / std::sqrt(float(hd));
  const int64_t window = c.sliding_window;  // 0 = none
  const int64_t n_cols = ws.score_cols;  // >= n_ctx of every row's session
  // Rows per attention block: the workspace's most, halved while the blocks give the threads fewer
  // than 4 tasks each (a short prefill of a model with few heads).
  int64_t block_rows = std::min<int64_t>(T, ws.attn_rows);
  while (block_rows > kAttnMinRows && (T + block_rows - 1) / block_rows * nh < 4 * int64_t(pool.size()))
    block_rows = std::max<int64_t>(kAttnMinRows, block_rows / 2);

  // Flush denormals to zero on the calling thread (pool workers set it once at start): softmax and
  // SiLU tails underflow into them, and x86 runs denormal operands ~100x slower.
#if defined(__SSE__) || defined(__x86_64__)
  _mm_setcsr(_mm_getcsr() | 0x8040);  // FTZ | DAZ
#endif

  // x: [T, H] <- embedding rows of the ids, or the caller's embeddings (LLoCO summary vectors)
  for (int32_t t = 0; t < T; t++) {
    if (in.tokens) {
      convert_row_to_f32(m.embed.row(in.tokens[t]), m.embed.dtype, ws.x.data() + t * H, H);
    } else {
      const uint8_t *row = static_cast<const uint8_t *>(in.embeds) + size_t(t) * size_t(H) * dtype_size(in.embeds_dtype);
      convert_row_to_f32(row, in.embeds_dtype, ws.x.data() + t * H, H);
    }
  }

  // rope_cs: [T, hd/2, 2] at each row's position
  for (int32_t t = 0; t < T; t++)
    rope_angles(ws.rope_cs.data() + t * hd, double(ws.row_pos[size_t(t)]), m.inv_freq.data(), hd);

  // Attention blocks: consecutive rows of one session (a prefill chunk), at most block_rows each.
  ws.attn_blocks.clear();
  for (int32_t r = 0; r < T;) {
    int32_t end = r + 1;
    while (end < T && end - r < block_rows && ws.row_session[size_t(end)] == ws.row_session[size_t(r)]) end++;
    ws.attn_blocks.push_back({r, end - r});
    r = end;
  }
  const int64_t n_blocks = int64_t(ws.attn_blocks.size());
  bool rows_alone = true;
  for (const auto &[r0, nr] : ws.attn_blocks) rows_alone &= nr == 1;
  std::vector<AttnRow> &alone = ws.attn_alone;  // grows to the most rows once, then is reused
  // The first slot a row ending at `end` sees: Mistral's sliding window masks keys more than
  // `window - 1` positions back (a full cache's slot is its position; compressing caches keep every
  // slot visible, as LoCoCo does).
  const auto first_visible = [window](const KvCache &kv, int64_t end) {
    return window > 0 && !kv.compressing() ? std::max<int64_t>(0, end - window) : int64_t(0);
  };
  if (rows_alone) alone.resize(size_t(n_blocks));

  for (int64_t l = 0; l < c.n_layers; l++) {
    check_cancel(ctl, "run the model");
    const LayerWeights &L = m.layers[size_t(l)];

    // ---- attention block ----
    rmsnorm_rows(pool, ws.xn.data(), ws.x.data(), L.attn_norm.data(), T, H, eps);  // xn: [T, H]
    // q: [T, nh, hd], k and v: [T, nkv, hd]; one parallel region for the three at decode
    const auto bias = [](const std::vector<float> &b) { return b.empty() ? nullptr : b.data(); };
    const MatmulProduct qkv[3] = {{L.wq.data, L.wq.dtype, ws.q.data(), q_dim, bias(L.bq)},
                                  {L.wk.data, L.wk.dtype, ws.k.data(), kv_dim, bias(L.bk)},
                                  {L.wv.data, L.wv.dtype, ws.v.data(), kv_dim, bias(L.bv)}};
    matmul_shared_x(pool, ws.xn.data(), T, H, qkv, 3);
    apply_lora(pool, ws, T, l, kProjQ, ws.xn.data(), H, ws.q.data(), q_dim);      // + s·B(A xn), per row
    apply_lora(pool, ws, T, l, kProjK, ws.xn.data(), H, ws.k.data(), kv_dim);
    apply_lora(pool, ws, T, l, kProjV, ws.xn.data(), H, ws.v.data(), kv_dim);
    // Rows turned by RoPE, then each row's key and value to its session's cache at its position, before
    // anyone attends; in one region over rows for a prefill (on one thread they were 3% of 134M q4_0's).
    pool.run_row_blocks(T, 1, size_t(T) * size_t(q_dim + 3 * kv_dim) * sizeof(float), [&](int64_t t0, int64_t t1) {
      rope_rotate(ws.q.data() + t0 * q_dim, t1 - t0, nh, hd, ws.rope_cs.data() + t0 * hd);
      rope_rotate(ws.k.data() + t0 * kv_dim, t1 - t0, nkv, hd, ws.rope_cs.data() + t0 * hd);
      for (int64_t t = t0; t < t1; t++) {
        KvCache &kv = ws.row_session[size_t(t)]->cache;
        const int64_t slot = ws.row_slot[size_t(t)];
        std::copy_n(ws.k.begin() + t * kv_dim, kv_dim, kv.k[size_t(l)].begin() + slot * kv_dim);
        std::copy_n(ws.v.begin() + t * kv_dim, kv_dim, kv.v[size_t(l)].begin() + slot * kv_dim);
      }
    });

    // attn[t, h] = softmax(q[t,h] · K[begin_t..pos_t, kvh] * scale) · V[begin_t..pos_t, kvh], causal within
    // the row's own session. Rows alone in their block (a decode step) go over chunks of positions,
    // every head at once (cpu_attention_decode.cpp).
    if (rows_alone) {
      for (int64_t b = 0; b < n_blocks; b++) {
        const int32_t r = ws.attn_blocks[size_t(b)].first;
        const KvCache &kv = ws.row_session[size_t(r)]->cache;
        const int64_t end = int64_t(ws.row_slot[size_t(r)]) + 1;
        const int64_t begin = first_visible(kv, end);
        AttnRow &a = alone[size_t(b)];
        a = {ws.q.data() + r * q_dim, kv.k[size_t(l)].data(), kv.v[size_t(l)].data(), begin, end,
             ws.attn.data() + r * q_dim};
        if (kv.needs_scores()) {  // the block's column sums are its one row's probabilities
          a.probs = ws.col_sums.data() + size_t(b) * size_t(nh) * size_t(n_cols);
          a.probs_stride = n_cols;
          ws.block_keys[size_t(b)] = {begin, end};
        }
      }
      attn_rows_alone(pool, alone.data(), int(n_blocks), nh, nkv, hd, scale);
    } else
    // Otherwise one task per (block, head): the block's rows share each K and V row they read, so a
    // long context streams from memory once per block instead of once per row.
    pool.parallel_for(n_blocks * nh, [&](int64_t task, int th) {
      const auto [r0, nr] = ws.attn_blocks[size_t(task / nh)];
      const int64_t h = task % nh, kvh = h / group;
      const KvCache &kv = ws.row_session[size_t(r0)]->cache;
      const float *kc = kv.k[size_t(l)].data();  // [capacity, nkv, hd]
      const float *vc = kv.v[size_t(l)].data();
      float *sc = ws.scores.data() + size_t(th) * size_t(block_rows) * size_t(n_cols);  // [nr, n_cols]
      int64_t begin[kAttnRows], end[kAttnRows];
      int64_t lo = INT64_MAX, hi = 0;
      for (int32_t i = 0; i < nr; i++) {
        end[i] = int64_t(ws.row_slot[size_t(r0 + i)]) + 1;  // causal: every cache slot, then own rows up to itself
        begin[i] = first_visible(kv, end[i]);
        lo = std::min(lo, begin[i]);
        hi = std::max(hi, end[i]);
      }
      // scores[i, j] = q_i · k_j * scale, a small GEMM per tile of kAttnKeys keys: the tile is
      // transposed once ([hd, keys]) and a register-blocked kernel runs the block's rows over it. Entries
      // past a row's own range are computed but never read.
      if (nr == 1) {
        // One row (a decode step): its dot products straight off the cache rows; a transposed tile
        // would cost more to build than the one row saves.
        const float *q1 = ws.q.data() + (r0 * nh + h) * hd;
        for (int64_t j = lo; j < hi; j++) sc[j - lo] = dot_f32(q1, kc + (j * nkv + kvh) * hd, hd) * scale;
      } else {
        // The tile is transposed once for the whole block, then scored by runs of kAttnMinRows rows, each
        // over the tile's keys up to its last row's end: a causal block's rows end apart, and scoring
        // all of a 64-row block over every key of its diagonal tiles cost 134M q4_0 prefill 128 4%.
        // Rows whose range misses part of a run's keys are computed too (cheap) and never read.
        float *kt = ws.key_tile.data() + size_t(th) * size_t(hd) * kAttnKeys;
        for (int64_t j0 = lo; j0 < hi; j0 += kAttnKeys) {
          const int64_t jb = std::min<int64_t>(kAttnKeys, hi - j0);
          attn_key_tile(kc + (j0 * nkv + kvh) * hd, nkv * hd, jb, hd, kt, kAttnKeys);
          for (int32_t i0 = 0; i0 < nr; i0 += kAttnMinRows) {
            const int32_t n = std::min(kAttnMinRows, nr - i0);
            int64_t run_hi = 0;
            for (int32_t i = i0; i < i0 + n; i++) run_hi = std::max(run_hi, end[i]);
            const int64_t keys = std::min(jb, run_hi - j0);
            if (keys > 0)
              attn_scores_tile(ws.q.data() + ((r0 + i0) * nh + h) * hd, nh * hd, n, kt, kAttnKeys, keys, hd, scale,
                               sc + i0 * n_cols + (j0 - lo), n_cols);
          }
        }
      }
      for (int32_t i = 0; i < nr; i++) {
        softmax_inplace(sc + i * n_cols + (begin[i] - lo), end[i] - begin[i]);
        float *out = ws.attn.data() + ((r0 + i) * nh + h) * hd;
        std::fill(out, out + hd, 0.0f);
      }
      if (kv.needs_scores()) {
        // The block's column sums for this head: cs[j] = sum_i p[i, j], over slots [lo, hi).
        float *cs = ws.col_sums.data() + (size_t(task / nh) * size_t(nh) + size_t(h)) * size_t(n_cols);
        std::fill(cs + lo, cs + hi, 0.0f);
        for (int32_t i = 0; i < nr; i++)
          add_inplace(cs + begin[i], sc + i * n_cols + (begin[i] - lo), end[i] - begin[i]);
        if (h == 0) ws.block_keys[size_t(task / nh)] = {lo, hi};
      }
      // out_i += p[i, j] v_j, tile by tile so each tile of values stays in cache for the whole block;
      // 4 rows at a time over the keys all 4 see (causal rows end apart), each row's rest alone, in
      // ascending j either way, so every row sums as it would alone.
      const auto values = [&](int32_t i, int64_t a, int64_t b) {
        if (a < b)
          attn_values_row(sc + i * n_cols + (a - lo), vc + (a * nkv + kvh) * hd, nkv * hd, b - a, hd,
                          ws.attn.data() + ((r0 + i) * nh + h) * hd);
      };
      for (int64_t j0 = lo; j0 < hi; j0 += kAttnKeys) {
        const int64_t j1 = std::min<int64_t>(hi, j0 + kAttnKeys);
        int32_t i = 0;
        for (; i + 4 <= nr; i += 4) {
          int64_t a[4], b[4], A = j0, B = j1;
          for (int r = 0; r < 4; r++) {
            a[r] = std::max(j0, begin[i + r]), b[r] = std::min(j1, end[i + r]);
            A = std::max(A, a[r]), B = std::min(B, b[r]);
          }
          if (A >= B) {
            for (int r = 0; r < 4; r++) values(i + r, a[r], b[r]);
            continue;
          }
          const float *p[4];
          float *out[4];
          for (int r = 0; r < 4; r++) {
            values(i + r, a[r], A);
            p[r] = sc + (i + r) * n_cols + (A - lo);
            out[r] = ws.attn.data() + ((r0 + i + r) * nh + h) * hd;
          }
          attn_values_rows(p, 4, vc + (A * nkv + kvh) * hd, nkv * hd, B - A, hd, out);
          for (int r = 0; r < 4; r++) values(i + r, B, b[r]);
        }
        for (; i < nr; i++) values(i, std::max(j0, begin[i]), std::min(j1, end[i]));
      }
    });
    if (!ws.col_sums.empty()) reduce_slot_scores(ws, l, nh, group, n_cols);
    matmul(pool, ws.attn.data(), L.wo.data, L.wo.dtype, ws.proj.data(), T, q_dim, H,
           L.bo.empty() ? nullptr : L.bo.data());  // proj: [T, H]
    apply_lora(pool, ws, T, l, kProjO, ws.attn.data(), q_dim, ws.proj.data(), H);
    add_inplace(pool, ws.x.data(), ws.proj.data(), int64_t(T) * H);

    // ---- MLP block: x += down(silu(gate(xn)) * up(xn)) ----
    rmsnorm_rows(pool, ws.xn.data(), ws.x.data(), L.ffn_norm.data(), T, H, eps);
    const MatmulProduct gate_up[2] = {{L.w_gate.data, L.w_gate.dtype, ws.gate.data(), I, nullptr},   // [T, I]
                                      {L.w_up.data, L.w_up.dtype, ws.up.data(), I, nullptr}};        // [T, I]
    matmul_shared_x(pool, ws.xn.data(), T, H, gate_up, 2);
    apply_lora(pool, ws, T, l, kProjGate, ws.xn.data(), H, ws.gate.data(), I);
    apply_lora(pool, ws, T, l, kProjUp, ws.xn.data(), H, ws.up.data(), I);
    silu_mul(pool, ws.gate.data(), ws.up.data(), int64_t(T) * I);
    matmul(pool, ws.gate.data(), L.w_down.data, L.w_down.dtype, ws.proj.data(), T, I, H, nullptr);  // [T, H]
    apply_lora(pool, ws, T, l, kProjDown, ws.gate.data(), I, ws.proj.data(), H);
    add_inplace(pool, ws.x.data(), ws.proj.data(), int64_t(T) * H);
  }

  // ---- head: final norm, then logits of every row (when asked), of chosen rows, or only the last ----
  // The final-normed rows are also what an AutoCompressor takes as summary vectors (hidden_out).
  if (in.logit_rows && !all_logits && !in.hidden_out) {
    // Several sessions' prefill chunks in one pass: each one's last row, packed into xn[0, n).
    const int32_t n = in.n_logit_rows;
    for (int32_t i = 0; i < n; i++)
      rmsnorm_rows(pool, ws.xn.data() + int64_t(i) * H, ws.x.data() + int64_t(in.logit_rows[i]) * H,
                   m.final_norm.data(), 1, H, eps);
    matmul(pool, ws.xn.data(), m.lm_head.data, m.lm_head.dtype, logits, n, H, V, nullptr);  // [n, V]
    return;
  }
  if (all_logits || in.hidden_out) {
    rmsnorm_rows(pool, ws.xn.data(), ws.x.data(), m.final_norm.data(), T, H, eps);  // xn: [T, H]
    if (in.hidden_out) std::copy(ws.xn.begin(), ws.xn.begin() + int64_t(T) * H, in.hidden_out);
  } else {
    rmsnorm_rows(pool, ws.xn.data() + (T - 1) * H, ws.x.data() + (T - 1) * H, m.final_norm.data(), 1, H, eps);
  }
  if (all_logits) {
    matmul(pool, ws.xn.data(), m.lm_head.data, m.lm_head.dtype, logits, T, H, V, nullptr);  // [T, V]
  } else {
    matmul(pool, ws.xn.data() + (T - 1) * H, m.lm_head.data, m.lm_head.dtype, logits, 1, H, V, nullptr);  // [V]
  }
}

}  // namespace kf

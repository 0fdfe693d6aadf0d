// cpu_attention_decode.cpp — attention of rows that are alone in their block (a decode step: one row
// per session), every head at once over chunks of cache positions, the chunks' softmax partials merged
// as flash-decoding merges them.
//
// Why: the per-head path reads one head's keys of a position (hd floats) at a stride of the whole
// position (n_kv heads), once per head, and a long context then streams at a third of the read
// bandwidth (134M bf16 at 4096 positions: 34 ms of attention per token where its 302 MB of cache
// take 11 ms). Here a task walks its positions' keys, then values, in address order for all heads.
// The chunk size depends on the row's positions only, so the bits do not depend on the thread count.
#include <algorithm>
#include <cmath>

#include "cpu_ops.h"
#include "cpu_scratch.h"

namespace kf {

namespace {

// Positions per task: at least 32 (a task's fixed cost), at most 256 (its scores stay in L1/L2),
// about an eighth of the row's range between.
int64_t chunk_positions(const AttnRow &row) {
  return std::clamp<int64_t>(((row.hi - row.lo) / 8 + 15) / 16 * 16, 32, 256);
}
int64_t tasks_of(const AttnRow &row) {
  const int64_t chunk = chunk_positions(row);
  return (row.hi - row.lo + chunk - 1) / chunk;
}
// The positions [j0, j0 + nj) of the row's task t (counted from its first).
void task_positions(const AttnRow &row, int64_t t, int64_t *j0, int64_t *nj) {
  const int64_t chunk = chunk_positions(row);
  *j0 = row.lo + t * chunk;
  *nj = std::min(row.hi, *j0 + chunk) - *j0;
}

}  // namespace

void attn_rows_alone(ThreadPool &pool, const AttnRow *rows, int n_rows, int64_t nh, int64_t nkv, int64_t hd,
                     float scale) {
  const int64_t group = nh / nkv, kv_dim = nkv * hd;
  int64_t n_tasks = 0, most = 0;
  for (int r = 0; r < n_rows; r++) {
    n_tasks += tasks_of(rows[r]);
    most = std::max(most, chunk_positions(rows[r]));
  }
  // Per task and head: the chunk's sum of exp(score - max), its max, then sum_j exp(..) v_j; per
  // task, its exp(score - max) (kept for the rows that want probabilities); per row, its first
  // task. One lent buffer: nothing is allocated per token.
  const int64_t part = hd + 2;
  const size_t floats = size_t(n_tasks * nh * part + n_tasks * nh * most);
  ScratchLease lease(floats * sizeof(float) + (size_t(n_rows) + 1) * sizeof(int64_t));
  float *partials = lease.as<float>();
  float *scores_all = partials + n_tasks * nh * part;
  int64_t *first = reinterpret_cast<int64_t *>(partials + floats);
  first[0] = 0;
  for (int r = 0; r < n_rows; r++) first[r + 1] = first[r] + tasks_of(rows[r]);

  const bool avx512 = attn_avx512();
  pool.parallel_for(n_tasks, [&](int64_t task, int) {
    const int r = int(std::upper_bound(first, first + n_rows + 1, task) - first) - 1;
    const AttnRow &row = rows[r];
    int64_t j0, nj;
    task_positions(row, task - first[r], &j0, &nj);
    const int64_t j1 = j0 + nj;
    float *s = scores_all + task * nh * most;  // [nh, nj]
    // scores, position by position: one position's keys of every head are contiguous
    if (!(avx512 && attn_chunk_scores_avx512(row.q, row.k, kv_dim, j0, nj, nh, group, hd, scale, s)))
      for (int64_t j = j0; j < j1; j++) {
        const float *kj = row.k + j * kv_dim;
        for (int64_t h = 0; h < nh; h++)
          s[h * nj + (j - j0)] = dot_f32(row.q + h * hd, kj + (h / group) * hd, hd) * scale;
      }
    float *p = partials + task * nh * part;  // [nh, hd + 2]: sum, max, then the weighted values
    for (int64_t h = 0; h < nh; h++) {
      float mx;
      p[h * part] = softmax_unnormalized(s + h * nj, nj, &mx);
      p[h * part + 1] = mx;
      std::fill(p + h * part + 2, p + (h + 1) * part, 0.0f);
    }
    if (!(avx512 && attn_chunk_values_avx512(s, row.v, kv_dim, j0, nj, nh, group, hd, p + 2, part)))
      for (int64_t j = j0; j < j1; j++) {
        const float *vj = row.v + j * kv_dim;
        for (int64_t h = 0; h < nh; h++)
          axpy_f32(s[h * nj + (j - j0)], vj + (h / group) * hd, p + h * part + 2, hd);
      }
  });

  // Merge each row's chunks in order: out = sum_c exp(m_c - M) o_c / sum_c exp(m_c - M) l_c.
  for (int r = 0; r < n_rows; r++)
    for (int64_t h = 0; h < nh; h++) {
      float M = -INFINITY;
      for (int64_t t = first[r]; t < first[r + 1]; t++)
        M = std::max(M, partials[(t * nh + h) * part + 1]);
      float *out = rows[r].out + h * hd;
      std::fill(out, out + hd, 0.0f);
      float L = 0.0f;
      for (int64_t t = first[r]; t < first[r + 1]; t++) {
        const float *p = partials + (t * nh + h) * part;
        const float w = std::exp(p[1] - M);
        L += w * p[0];
        axpy_f32(w, p + 2, out, hd);
      }
      const float inv = L > 0.0f ? 1.0f / L : 0.0f;
      for (int64_t d = 0; d < hd; d++) out[d] *= inv;
      if (!rows[r].probs) continue;
      for (int64_t t = first[r]; t < first[r + 1]; t++) {
        int64_t j0, nj;
        task_positions(rows[r], t - first[r], &j0, &nj);
        const float w = std::exp(partials[(t * nh + h) * part + 1] - M) * inv;
        const float *e = scores_all + t * nh * most + h * nj;
        float *pr = rows[r].probs + h * rows[r].probs_stride + j0;
        for (int64_t jj = 0; jj < nj; jj++) pr[jj] = e[jj] * w;
      }
    }
}

}  // namespace kf

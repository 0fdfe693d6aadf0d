// train_attention.cpp — causal self-attention of a training pass as GEMMs, one query head at a time
// and one block of kAttnBlock query rows at a time, each block against the keys up to its last row
// (so the masked upper triangle is mostly skipped, and scratch is [block, T], not [T, T]):
//   S = Q_b K_gᵀ, P = softmax(S · scale) under the causal (and sliding-window) mask, O_b = P V_g;
// backward recomputes P and runs dP = dO_b V_gᵀ, dS = scale P ⊙ (dP − rowsum(P ⊙ dP)),
// dQ_b = dS K_g, dK_gᵀ += Q_bᵀ dS, dV_gᵀ += dO_bᵀ P. The row-by-row path in train_cpu.cpp stays for
// passes with a prefix cache (LoCoCo calibration) or slot scores; this one serves the long plain
// passes of full-parameter and compressor training, where row-by-row dot products of head_dim floats
// were a third of the step.
#include <algorithm>
#include <cmath>

#include "cpu_ops.h"
#include "cpu_simd.h"
#include "train.h"

namespace kf {

namespace {

float *grow(std::vector<float> &v, size_t n) {
  if (v.size() < n) v.assign(n, 0.0f);
  return v.data();
}

// Columns [c0, c0 + w) of every row of a [rows, stride] matrix into a contiguous [rows, w] one.
void gather(const float *src, int64_t rows, int64_t stride, int64_t c0, int64_t w, float *dst) {
  for (int64_t r = 0; r < rows; r++) std::copy_n(src + r * stride + c0, w, dst + r * w);
}

// Query rows per block.
constexpr int64_t kAttnBlock = 128;

// The probabilities of query rows [r0, r1) of one head against keys [0, r1): p [r1 - r0, r1], zero
// outside the causal / window mask.
void block_probabilities(ThreadPool &pool, const float *qh, const float *kh, int64_t r0, int64_t r1, int64_t hd,
                         int64_t window, float *p) {
  const float scale = 1.0f / std::sqrt(float(hd));
  const int64_t n = r1;
  matmul(pool, qh + r0 * hd, kh, DType::F32, p, r1 - r0, hd, n, nullptr);  // S = Q_b K_gᵀ  [rows, n]
  pool.parallel_for(r1 - r0, [&](int64_t ii, int) {
    const int64_t i = r0 + ii;
    float *row = p + ii * n;
    const int64_t j0 = window > 0 ? std::max<int64_t>(0, i - window + 1) : 0, j1 = i + 1;
    for (int64_t j = j0; j < j1; j++) row[j] *= scale;
    softmax_inplace(row + j0, j1 - j0);
    std::fill(row, row + j0, 0.0f);
    std::fill(row + j1, row + n, 0.0f);
  });
}

}  // namespace

namespace {

#ifdef KF_AVX2
// out[j * ro + i] = a[i * ca + j] for an 8×8 block (the classic unpack / shuffle / permute transpose).
inline void transpose8x8(const float *a, int64_t ca, float *out, int64_t ro) {
  __m256 r0 = _mm256_loadu_ps(a), r1 = _mm256_loadu_ps(a + ca), r2 = _mm256_loadu_ps(a + 2 * ca),
         r3 = _mm256_loadu_ps(a + 3 * ca), r4 = _mm256_loadu_ps(a + 4 * ca), r5 = _mm256_loadu_ps(a + 5 * ca),
         r6 = _mm256_loadu_ps(a + 6 * ca), r7 = _mm256_loadu_ps(a + 7 * ca);
  const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3),
               t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
               t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE),
               u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE),
               u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE),
               u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r0 = _mm256_permute2f128_ps(u0, u4, 0x20);
  r1 = _mm256_permute2f128_ps(u1, u5, 0x20);
  r2 = _mm256_permute2f128_ps(u2, u6, 0x20);
  r3 = _mm256_permute2f128_ps(u3, u7, 0x20);
  r4 = _mm256_permute2f128_ps(u0, u4, 0x31);
  r5 = _mm256_permute2f128_ps(u1, u5, 0x31);
  r6 = _mm256_permute2f128_ps(u2, u6, 0x31);
  r7 = _mm256_permute2f128_ps(u3, u7, 0x31);
  _mm256_storeu_ps(out, r0);
  _mm256_storeu_ps(out + ro, r1);
  _mm256_storeu_ps(out + 2 * ro, r2);
  _mm256_storeu_ps(out + 3 * ro, r3);
  _mm256_storeu_ps(out + 4 * ro, r4);
  _mm256_storeu_ps(out + 5 * ro, r5);
  _mm256_storeu_ps(out + 6 * ro, r6);
  _mm256_storeu_ps(out + 7 * ro, r7);
}
#endif

}  // namespace

void transpose_blocked(ThreadPool &pool, const float *a, int64_t r, int64_t c, float *out) {
  constexpr int64_t B = 32;
  const int64_t rb = (r + B - 1) / B;
  pool.parallel_for(rb, [&](int64_t bi, int) {
    const int64_t i0 = bi * B, i1 = std::min(r, i0 + B);
    for (int64_t j0 = 0; j0 < c; j0 += B) {
      const int64_t j1 = std::min(c, j0 + B);
      int64_t i = i0;
#ifdef KF_AVX2
      for (; i + 8 <= i1; i += 8) {
        int64_t j = j0;
        for (; j + 8 <= j1; j += 8) transpose8x8(a + i * c + j, c, out + j * r + i, r);
        for (; j < j1; j++)
          for (int64_t ii = i; ii < i + 8; ii++) out[j * r + ii] = a[ii * c + j];
      }
#endif
      for (; i < i1; i++)
        for (int64_t j = j0; j < j1; j++) out[j * r + i] = a[i * c + j];
    }
  });
}

void attention_forward_dense(ThreadPool &pool, const ModelConfig &c, const float *q, const float *k, const float *v,
                             int64_t T, float *out, std::vector<float> &work) {
  const int64_t nh = c.n_heads, nkv = c.n_kv_heads, hd = c.head_dim, group = nh / nkv;
  const int64_t B = std::min(T, kAttnBlock);
  float *buf = grow(work, size_t(B) * size_t(T) + 4 * size_t(T) * size_t(hd));
  float *p = buf, *qh = p + B * T, *kh = qh + T * hd, *vh = kh + T * hd, *oh = vh + T * hd;
  for (int64_t h = 0; h < nh; h++) {
    const int64_t g = h / group;
    gather(q, T, nh * hd, h * hd, hd, qh);
    if (h % group == 0) {
      gather(k, T, nkv * hd, g * hd, hd, kh);
      gather(v, T, nkv * hd, g * hd, hd, vh);
    }
    for (int64_t r0 = 0; r0 < T; r0 += B) {
      const int64_t r1 = std::min(T, r0 + B);
      block_probabilities(pool, qh, kh, r0, r1, hd, c.sliding_window, p);
      matmul_nn(pool, p, vh, DType::F32, oh + r0 * hd, r1 - r0, r1, hd);  // O_b = P V_g  [rows, hd]
    }
    for (int64_t i = 0; i < T; i++) std::copy_n(oh + i * hd, hd, out + (i * nh + h) * hd);
  }
}

void attention_backward_dense(ThreadPool &pool, const ModelConfig &c, const float *q, const float *k, const float *v,
                              const float *dout, int64_t T, float *dq, float *dk, float *dv, std::vector<float> &work) {
  const int64_t nh = c.n_heads, nkv = c.n_kv_heads, hd = c.head_dim, group = nh / nkv;
  const float scale = 1.0f / std::sqrt(float(hd));
  const int64_t B = std::min(T, kAttnBlock);
  float *buf = grow(work, 2 * size_t(B) * size_t(T) + 9 * size_t(T) * size_t(hd) + 2 * size_t(B) * size_t(hd));
  float *p = buf, *ds = p + B * T, *tt = ds + B * T;
  float *qh = tt + T * hd, *kh = qh + T * hd, *vh = kh + T * hd, *doh = vh + T * hd, *r1 = doh + T * hd,
        *r2 = r1 + T * hd, *dkt = r2 + T * hd, *dvt = dkt + T * hd, *bt = dvt + T * hd;  // bt: [hd, B]
  for (int64_t h = 0; h < nh; h++) {
    const int64_t g = h / group;
    if (h % group == 0) {
      gather(k, T, nkv * hd, g * hd, hd, kh);
      gather(v, T, nkv * hd, g * hd, hd, vh);
      std::fill(dkt, dkt + hd * T, 0.0f);  // dK_gᵀ, dV_gᵀ [hd, T], summed over the group's query heads
      std::fill(dvt, dvt + hd * T, 0.0f);
    }
    gather(q, T, nh * hd, h * hd, hd, qh);
    gather(dout, T, nh * hd, h * hd, hd, doh);
    for (int64_t b0 = 0; b0 < T; b0 += B) {
      const int64_t b1 = std::min(T, b0 + B), rows = b1 - b0, n = b1;
      block_probabilities(pool, qh, kh, b0, b1, hd, c.sliding_window, p);
      matmul(pool, doh + b0 * hd, vh, DType::F32, ds, rows, hd, n, nullptr);  // dP = dO_b V_gᵀ  [rows, n]
      pool.parallel_for(rows, [&](int64_t ii, int) {
        const int64_t i = b0 + ii;
        float *pr = p + ii * n, *dr = ds + ii * n;
        double sum = 0;
        for (int64_t j = 0; j <= i; j++) sum += double(pr[j]) * dr[j];
        for (int64_t j = 0; j <= i; j++) dr[j] = scale * pr[j] * (dr[j] - float(sum));
        std::fill(dr + i + 1, dr + n, 0.0f);
      });
      matmul_nn(pool, ds, kh, DType::F32, r1 + b0 * hd, rows, n, hd);  // dQ_b = dS K_g  [rows, hd]
      // dK_gᵀ [hd, n] += Q_bᵀ dS and dV_gᵀ += dO_bᵀ P: only the thin [rows, hd] blocks are transposed.
      transpose_blocked(pool, qh + b0 * hd, rows, hd, bt);
      matmul_nn(pool, bt, ds, DType::F32, tt, hd, rows, n);
      for (int64_t d = 0; d < hd; d++) add_inplace(dkt + d * T, tt + d * n, n);
      transpose_blocked(pool, doh + b0 * hd, rows, hd, bt);
      matmul_nn(pool, bt, p, DType::F32, tt, hd, rows, n);
      for (int64_t d = 0; d < hd; d++) add_inplace(dvt + d * T, tt + d * n, n);
    }
    for (int64_t i = 0; i < T; i++) std::copy_n(r1 + i * hd, hd, dq + (i * nh + h) * hd);
    if ((h + 1) % group == 0) {  // the group's last query head: its KV head's gradients are complete
      transpose_blocked(pool, dkt, hd, T, r1);
      transpose_blocked(pool, dvt, hd, T, r2);
      for (int64_t j = 0; j < T; j++) {
        std::copy_n(r1 + j * hd, hd, dk + (j * nkv + g) * hd);
        std::copy_n(r2 + j * hd, hd, dv + (j * nkv + g) * hd);
      }
    }
  }
}

}  // namespace kf

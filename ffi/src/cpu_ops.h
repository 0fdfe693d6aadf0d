// cpu_ops.h — the CPU kernels: matmul over f32/f16/bf16 weights, norms, activations, conversions.
//
// All activations are f32, row-major. Weights are torch Linear layout ([out, in], rows contiguous)
// in any DType, usually straight from a memory-mapped safetensors file, so nothing here assumes
// alignment. AVX2/FMA/F16C paths are compiled when the target has them (-march=native); every
// kernel has a scalar fallback with the same results up to float rounding.
//
// None of these throws from inside a parallel region. matmul and measure_read_bandwidth check their
// arguments on the calling thread first and raise kf::Error(KF_ERR_INTERNAL) on misuse.
#pragma once

#include <cstdint>

#include "common.h"
#include "threadpool.h"

namespace kf {

// SIMD features this file was compiled with, e.g. "avx2+fma+f16c" or "scalar".
const char *cpu_simd_name();

// Token counts up to this take the matrix-vector path (one pass over W at memory bandwidth);
// larger ones the packed, cache-blocked GEMM.
constexpr int64_t kMatvecMaxT = 8;
#ifndef KF_LORA_INLINE_KB
#define KF_LORA_INLINE_KB 192
#endif

// y[t][o] = sum_i x[t][i] * W[o][i] (+ bias[o])
//   x:    [T, in]   f32
//   W:    [out, in] row-major, dtype dt (f32, f16 or bf16), any alignment
//   y:    [T, out]  f32, overwritten; must not overlap x
//   bias: [out] f32 or nullptr
// T <= kMatvecMaxT streams W once (memory-bound), rows split in contiguous blocks over the
// pool's threads; larger T packs W panels to f32 once per (k-block, n-block) and runs a 6x16
// register-blocked micro-kernel (compute-bound). Either path accumulates in f32 in a fixed order
// per element: results do not depend on the thread count (they do depend on T's path).
void matmul(ThreadPool &pool, const float *x, const void *W, DType dt, float *y, int64_t T, int64_t in, int64_t out,
            const float *bias);

// One product of matmul_shared_x: y = x · W^T (+ bias), W [out, in] in dtype dt (as matmul's).
struct MatmulProduct {
  const void *W;
  DType dt;
  float *y;
  int64_t out;
  const float *bias;
};

// y_i = x · W_i^T (+ bias_i) for each of n products of one x [T, in]: a layer's q, k and v, or gate
// and up. The same bits as n matmul calls. Decode-sized T (the matrix-vector path) runs them in one
// parallel region, with x rounded or quantized once, instead of n regions: fewer joins per token.
void matmul_shared_x(ThreadPool &pool, const float *x, int64_t T, int64_t in, const MatmulProduct *p, int n);

// matmul with the rows of x `x_stride` floats apart: row t is x[t * x_stride .. t * x_stride + in).
// x_stride < in makes rows overlap, which is how an implicit im2col (a convolution as one GEMM) reads.
void matmul_strided(ThreadPool &pool, const float *x, int64_t x_stride, const void *W, DType dt, float *y, int64_t T,
                    int64_t in, int64_t out, const float *bias);

// y[T, N] = x[T, K] · W with W stored [K, N] row-major in dtype dt (no transpose): the backward
// pass's dx = dy · W over a Linear weight [out, in], and the small weight-gradient products.
// Always the packed GEMM path, any T >= 1. w_stride > 0: W's rows are that many elements apart (rows
// may overlap, as an implicit im2col's do); 0 means N.
void matmul_nn(ThreadPool &pool, const float *x, const void *W, DType dt, float *y, int64_t T, int64_t K, int64_t N,
               int64_t w_stride = 0);

// A run of consecutive rows that share one LoRA pair (one adapter term), as Punica's SGMV groups them.
// Rows composing several adapters have one segment per term over the same rows, each with its own
// columns of the scratch.
struct LoraSegment {
  const float *a;   // [rank, in]
  const float *bt;  // [rank, out]: B transposed, scale folded in
  int32_t rank;
  int32_t row0, n_rows;
  float weight;     // the term's composition weight (1: a single adapter)
  int32_t col;      // first scratch column of this term's A x
};

// For each segment, y[r] += weight · B (A x[r]) over its rows r in [row0, row0 + n_rows):
//   x:   [rows, in] f32;  y: [rows, out] f32, accumulated into
//   tmp: [rows, tmp_stride] f32 scratch, tmp_stride >= every segment's col + rank
// Two passes: A x for every (segment, rank row), each A row read once per segment; then blocks of
// output features, each B row block read once per segment. Small calls (a decode step's few dozen
// KiB of A and B) run on the calling thread; larger ones over the pool. Rows without a segment are
// left alone, so one call serves a batch that mixes adapters and rows with none.
void lora_add(ThreadPool &pool, const float *x, int64_t in, float *y, int64_t out, const LoraSegment *segs,
              int32_t n_segs, float *tmp, int64_t tmp_stride);

// Attention tiles (one block of query rows against one tile of keys or values):
// s[i, jj] = scale * q_i . kt[:, jj] for i < nr, jj < jb
//   q:  [nr, q_stride] (first hd values of each row used);  kt: [hd, kt_stride] keys transposed
//   s:  [nr, s_stride], overwritten for jj < jb (jb <= kt_stride; kt columns past jb may hold anything)
void attn_scores_tile(const float *q, int64_t q_stride, int32_t nr, const float *kt, int64_t kt_stride, int64_t jb,
                      int64_t hd, float scale, float *s, int64_t s_stride);
// out[:hd] += sum_{j < n} p[j] * v_j, v_j = v + j * v_stride;  out: [hd]
void attn_values_row(const float *p, const float *v, int64_t v_stride, int64_t n, int64_t hd, float *out);
// The same for nr rows sharing the n value rows: out[i] += sum_j p[i][j] v_j (each row's bits as alone).
void attn_values_rows(const float *const *p, int32_t nr, const float *v, int64_t v_stride, int64_t n, int64_t hd,
                      float *const *out);
// kt[d * kt_stride + jj] = k[jj * k_stride + d] for jj < jb, d < hd: a tile of keys transposed for
// attn_scores_tile (columns of kt past jb may get anything).
void attn_key_tile(const float *k, int64_t k_stride, int64_t jb, int64_t hd, float *kt, int64_t kt_stride);

// One query row against its session's cache slots [lo, hi) (keys, values: [slots, nkv, hd], post-RoPE),
// every head: out[h] = softmax(q[h] · K[h / group] * scale) V[h / group] (cpu_attention_decode.cpp).
struct AttnRow {
  const float *q;  // [nh, hd]
  const float *k, *v;
  int64_t lo, hi;
  float *out;  // [nh, hd]
  // NULL, or what a cache that keeps slot scores reads: probs[h * probs_stride + j] = head h's
  // softmax probability of slot j, for j in [lo, hi).
  float *probs = nullptr;
  int64_t probs_stride = 0;
};
// The rows' attention over chunks of positions that depend on each row's range alone (so the bits do
// not depend on the thread count), each chunk's softmax partials merged in order.
void attn_rows_alone(ThreadPool &pool, const AttnRow *rows, int n_rows, int64_t nh, int64_t nkv, int64_t hd,
                     float scale);
// Its chunk kernels on AVX-512 (cpu_attention_avx512.cpp), for hd 64 and 128 (false: not done):
// s[h * nj + jj] = scale * q[h] · k_(j0 + jj)[h / group]; o[h] (o_stride apart) += sum_jj p[h * nj + jj] v_(j0 + jj).
bool attn_chunk_scores_avx512(const float *q, const float *k, int64_t kv_dim, int64_t j0, int64_t nj, int64_t nh,
                              int64_t group, int64_t hd, float scale, float *s);
bool attn_chunk_values_avx512(const float *p, const float *v, int64_t kv_dim, int64_t j0, int64_t nj, int64_t nh,
                              int64_t group, int64_t hd, float *o, int64_t o_stride);

// The AVX-512 forms of the tiles (cpu_attention_avx512.cpp), taken where attn_avx512(): the AVX2
// kernels' bits. attn_scores_rows4_avx512 returns the rows it did (whole 4s, or 0 if kt_stride is not
// a multiple of 32); attn_values_rows4_avx512 needs hd a multiple of 16.
bool attn_avx512();
int32_t attn_scores_rows4_avx512(const float *q, int64_t q_stride, int32_t nr, const float *kt, int64_t kt_stride,
                                 int64_t jb, int64_t hd, float scale, float *s, int64_t s_stride);
void attn_values_rows4_avx512(const float *const p[4], const float *v, int64_t v_stride, int64_t n, int64_t hd,
                              float *const out[4]);
void transpose_keys_avx512(const float *k, int64_t k_stride, int64_t jb, int64_t hd, float *kt, int64_t kt_stride);

// The AVX-512 forms of silu_mul and of softmax's exp pass (cpu_ops_avx512.cpp), taken where
// ops_avx512(): exp256's bits. Each does a prefix of whole 16s and returns its length; exp_sum_avx512
// adds element i's exp to sum8[i % 8] in ascending i, as the AVX2 loop's 8-lane sum does.
bool ops_avx512();
int64_t silu_mul_avx512(float *gate, const float *up, int64_t n);
int64_t exp_sum_avx512(float *x, int64_t n, float mx, float sum8[8]);

// RoPE in Hugging Face's rotate_half layout: pairs (i, i + hd/2) of each head turn by pos · inv_freq[i].
// cs: [hd/2, 2] cos, sin of one row's angles, computed in double so large positions keep their precision.
void rope_angles(float *cs, double pos, const double *inv_freq, int64_t hd);
// x: [T, n_heads, hd] turned in place by cs: [T, hd/2, 2]; inverse turns back (R^T, the backward pass).
void rope_rotate(float *x, int64_t T, int64_t n_heads, int64_t hd, const float *cs, bool inverse = false);

// out[i] = x[i] / sqrt(mean(x^2) + eps) * w[i]
//   out, x: [n] f32 (out may equal x);  w: [n] in dtype wdt
void rmsnorm(float *out, const float *x, const void *w, DType wdt, int64_t n, float eps);
inline void rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps) {
  rmsnorm(out, x, w, DType::F32, n, eps);
}
// rmsnorm of each row: out, x: [T, n] f32 (out may equal x); w: [n] in dtype wdt.
void rmsnorm_rows(ThreadPool &pool, float *out, const float *x, const void *w, DType wdt, int64_t T, int64_t n,
                  float eps);
inline void rmsnorm_rows(ThreadPool &pool, float *out, const float *x, const float *w, int64_t T, int64_t n,
                         float eps) {
  rmsnorm_rows(pool, out, x, w, DType::F32, T, n, eps);
}

// x[i] = exp(x[i] - max) / sum_j exp(x[j] - max), in place; x: [n], n >= 1. -inf entries give 0.
void softmax_inplace(float *x, int64_t n);
// x[i] = exp(x[i] - max x) in place; returns their sum and writes the max (0 when every entry is -inf).
float softmax_unnormalized(float *x, int64_t n, float *max_out);

// sum_i a[i] * b[i]; a, b: [n]
float dot_f32(const float *a, const float *b, int64_t n);

// y[i] += a * x[i]; x, y: [n]
void axpy_f32(float a, const float *x, float *y, int64_t n);

// gate[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)); finite for any finite g.
//   gate: [n] in/out; up: [n]
void silu_mul(float *gate, const float *up, int64_t n);

// y[i] += x[i]; x, y: [n]
void add_inplace(float *y, const float *x, int64_t n);

// The two above over the pool, in blocks of a multiple of 8 values, so every value takes the path
// (vector or tail) it takes in one call: the same bits. Small n runs on the calling thread.
void silu_mul(ThreadPool &pool, float *gate, const float *up, int64_t n);
void add_inplace(ThreadPool &pool, float *y, const float *x, int64_t n);

// dst[i] = float(src[i]); src: [n] in dtype dt (exact conversion), dst: [n] f32
void convert_row_to_f32(const void *src, DType dt, float *dst, int64_t n);

// dst[i] = dt(src[i]) rounded to nearest even (f16: overflow to inf; NaN stays NaN)
//   src: [n] f32, dst: [n] in dtype dt
void convert_f32_to(const float *src, DType dt, void *dst, int64_t n);

// Sustained read bandwidth in GB/s (1e9 bytes/s), best of `repeats` passes in which every thread
// of the pool reads a disjoint slice of one `bytes`-sized buffer (allocated, touched, freed here).
// bytes >= 1 MiB sensible; use far more than the last-level cache (>= 256 MiB) for DRAM. ctl (may
// be NULL): cancel between passes, progress in passes.
double measure_read_bandwidth(ThreadPool &pool, int64_t bytes, int repeats, kf_control *ctl);

}  // namespace kf

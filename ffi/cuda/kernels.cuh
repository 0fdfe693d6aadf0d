// kernels.cuh — launchers of every kernel the device forward runs, one source file per layer kind
// (llm.c's layout). Each launcher takes an explicit stream, checks its launch and throws kf::Error.
// `dt` is the model's 16-bit dtype (F16 or BF16): weights, activations fed to matrix products and the
// KV cache use it; the residual stream, matrix-product outputs and all arithmetic are f32.
#pragma once

#include "cuda_common.cuh"

namespace kf::cuda {

// One LoRA pair on the device: y += B (A x), scale folded into B (kf::LoraPair's layout).
struct LoraPairDev {
  const float *a = nullptr;   // [rank, in]
  const float *bt = nullptr;  // [rank, out]: B transposed, times s
  int32_t rank = 0;
  int32_t pad = 0;
};

// Most adapters one row composes (KF_MAX_ADAPTERS).
constexpr int kMaxLoraTerms = 8;

// The adapters of one row (kf::AdapterMix on the device): term i adds weight[i] · B (A x) with the
// pairs of table[i] ([n_layers * 7] of that adapter). Uploaded with the row table.
struct LoraTermsDev {
  const LoraPairDev *table[kMaxLoraTerms];
  float weight[kMaxLoraTerms];
  int32_t n;
  int32_t pad;
};

// Per row of a forward, uploaded once per call.
struct RowMeta {
  int32_t pos;    // absolute position (RoPE)
  int32_t slot;   // cache slot written; the row attends to slots [begin, slot]
  int32_t begin;  // first visible slot (Mistral's sliding window, else 0)
  int32_t pad;
  void *k, *v;            // the row's session cache: [n_layers, capacity, n_kv, hd] in dt
  int64_t layer_stride;   // elements per layer of k and v (capacity * n_kv * hd)
  const LoraTermsDev *lora;  // the row's adapters (in the uploaded row table), NULL for none
  float *score;           // the session's slot scores [n_layers, capacity, n_kv] (lococo, h2o), else NULL
  int64_t score_stride;   // elements per layer of score (capacity * n_kv)
};

// Consecutive rows of one session that attend together: rows [row0, row0 + n_rows), keys [lo, hi).
struct AttnBlock {
  int32_t row0, n_rows, lo, hi;
};

// Rows per attention block (kf::kAttnMinRows on the CPU, whose blocks grow to kf::kAttnRows).
constexpr int32_t kBlockRows = 16;

// ---- embed.cu ----
// x[t, :] = table[ids[t], :] as f32. table: [vocab, H] in dt; ids: [T] on the device; x: [T, H].
void embed_tokens(const void *table, DType dt, const int32_t *ids, int32_t T, int32_t H, float *x, cudaStream_t s);
// x[t, :] = rows[t, :] as f32; rows: [T, H] in src_dt (F32, F16 or BF16) on the device.
void embed_rows(const void *rows, DType src_dt, int32_t T, int32_t H, float *x, cudaStream_t s);

// ---- rmsnorm.cu ----
// out[t, :] = x[t, :] / sqrt(mean(x[t, :]^2) + eps) * w, in out_dt (F32, F16 or BF16). x: [T, H] f32.
void rmsnorm(const float *x, const float *w, int32_t T, int32_t H, float eps, void *out, DType out_dt, cudaStream_t s);

// ---- rope.cu ----
// cs[t, i] = (cos, sin)(pos[t] * inv_freq[i]) computed in double (large positions keep precision).
// rows: [T] device row meta; inv_freq: [hd/2] double; cs: [T, hd/2, 2] f32.
void rope_table(const RowMeta *rows, const double *inv_freq, int32_t T, int32_t half, float *cs, cudaStream_t s);
// Adds the biases (NULL = none), rotates q and k (HF rotate_half pairs (i, i + hd/2)), writes q in dt to
// q_out and each row's k and v (dt) into its session's cache at its slot, layer `layer`.
// q: [T, nh, hd] f32; k, v: [T, nkv, hd] f32; q_out: [T, nh, hd] dt.
void qkv_finish(const float *q, const float *k, const float *v, const float *bq, const float *bk, const float *bv,
                const float *cs, const RowMeta *rows, int32_t T, int32_t nh, int32_t nkv, int32_t hd, int32_t layer,
                void *q_out, DType dt, cudaStream_t s);

// ---- attention.cu ----
// attn[t, h] = softmax(q[t,h] · K[begin_t..slot_t] / sqrt(hd)) · V[...] per row, GQA (group = nh / nkv
// query heads per KV head). One CTA per (block, kv head, split: the block's keys [lo, hi) cut in n_splits
// equal pieces); with n_splits > 1 each split writes
// partial (max, sum, unnormalised output) to `partial` and attention_combine merges them
// (split-KV decode). q: [T, nh, hd] dt; attn: [T, nh, hd] dt; hd <= 256 and even.
// partial: [n_splits, T, nh, hd + 2] f32 (only read/written when n_splits > 1).
// Slot scores (rows whose RowMeta.score is set; needs n_splits == 1): a second pass over the keys adds
// each row's normalised probabilities into score[layer, j, kvh] (atomically: the query heads of a group
// and the rows of a block all add to the same slots), which the caller zeroed first.
void attention(const void *q, const RowMeta *rows, const AttnBlock *blocks, int32_t n_blocks, int32_t T, int32_t nh,
               int32_t nkv, int32_t hd, int32_t layer, int32_t n_splits, float *partial, void *attn, DType dt,
               cudaStream_t s);

// Conversions of n values between f32 and the 16-bit dt.
void to_f32(const void *src, DType dt, int64_t n, float *dst, cudaStream_t s);
void from_f32(const float *src, int64_t n, void *dst, DType dt, cudaStream_t s);

// ---- mlp.cu ----
// out[i] = silu(gate[i]) * up[i] in dt. gate, up: [n] f32.
void swiglu(const float *gate, const float *up, int64_t n, void *out, DType dt, cudaStream_t s);
// y[t, :] += b. y: [T, N] f32, b: [N] f32.
void add_bias(float *y, const float *b, int32_t T, int32_t N, cudaStream_t s);

// ---- lora.cu ----
// BGMV: every row uses its own adapters (rows[t].lora, NULL = none), pair `layer * 7 + proj` of each.
// For each term i < n_terms: tmp[t, j] = A_ti[j, :] · x[t, :] (j < rank_ti);
// y[t, :] += w_ti · tmp[t, :rank_ti] · Bt_ti (rows with fewer terms skip the rest).
// x: [T, in] dt; y: [T, out] f32; tmp: [T, max_rank] f32.
void lora_apply(const void *x, DType dt, const RowMeta *rows, int32_t T, int32_t layer, int32_t proj, int32_t in,
                int32_t out, int32_t max_rank, int32_t n_terms, float *tmp, float *y, cudaStream_t s);

// ---- lococo.cu ----
// One layer's LoCoCo fusion for all KV heads (see lococo.cu). K, V: the layer's [capacity, nkv, hd]
// cache (dt), rewritten in slots [0, Mh + Mc); idx: [nkv, Mh + S] heavy hitters then the rest, each in
// cache order; pick: [nkv, Mc] positions in the rest of the next Mc by score, in cache order. Scratch:
// x_pad [nkv, S + k − 1, 2·hd], x_t [nkv, 2·hd, S], kept [nkv, Mh, 2·hd], mix [nkv, Mc, S] (dt);
// conv [nkv, S, Mc], fused [nkv, Mc, 2·hd] (f32). weight: [Mc, k·2·hd] dt (tap-major); bias: [Mc] f32.
struct LococoFuse {
  DType dt;
  void *K, *V;
  const int32_t *idx, *pick;
  const void *weight;
  const float *bias;
  float lambda;
  int32_t nkv, hd, Mh, Mc, S, kernel, pad;
  void *x_pad, *x_t, *kept, *mix;
  float *conv, *fused;
};
void lococo_fuse_layer(const LococoFuse &f, cudaStream_t s);
// H2O and StreamingLLM: slots [0, M) of head g become the old slots idx[g, 0..M) (idx: [nkv, M], in
// cache order). K, V: one layer [capacity, nkv, hd] in dt; tmp: [2, M, nkv, hd] dt.
void gather_slots(void *K, void *V, const int32_t *idx, int32_t nkv, int32_t hd, int32_t M, void *tmp, DType dt,
                  cudaStream_t s);

// ---- gemm.cu ----
// y[M, N] (+)= x[M, K] · W[N, K]^T: x, W in dt, y f32 (accumulate: add to y's contents, the residual
// stream). cuBLAS (GemmEx, f32 compute) when loaded and M > kGemvRows; the built-in kernels otherwise:
// a bandwidth-bound GEMV for M <= kGemvRows, a tensor-core (WMMA) tiled GEMM above.
constexpr int32_t kGemvRows = 4;
void matmul(Engine &e, const void *x, const void *W, DType dt, float *y, int32_t M, int32_t N, int32_t K,
            bool accumulate, cudaStream_t s);
// The built-in kernels only, whatever cuBLAS offers (tests and bench/gpu compare the two).
void matmul_builtin(const void *x, const void *W, DType dt, float *y, int32_t M, int32_t N, int32_t K,
                    bool accumulate, cudaStream_t s);
// Batched built-in GEMM: for b < batch, y_b[M, N] = x_b[M, K] · W_b[N, K]^T, x_b = x + b·sx with row
// stride ldx (ldx < K reads overlapping rows: an implicit im2col), W_b = W + b·sw, y_b = y + b·sy.
void matmul_batched(const void *x, int64_t ldx, int64_t sx, const void *W, int64_t sw, DType dt, float *y, int64_t sy,
                    int32_t M, int32_t N, int32_t K, int32_t batch, cudaStream_t s);
// Fills n 16-bit values with uniform random numbers in [-scale, scale) (benchmarks' operands).
void fill_random(void *p, DType dt, int64_t n, uint32_t seed, float scale, cudaStream_t s);

}  // namespace kf::cuda

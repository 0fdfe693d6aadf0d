// lora.cu — unmerged LoRA, y += s·B (A x), with every row carrying its own adapter (BGMV, as Punica's
// batched gather matrix-vector): a mixed-adapter decode batch needs no grouping, and a row without an
// adapter costs one pointer test. A row composing several adapters runs one shrink and expand per
// term, y += w_i s_i B_i (A_i x), the terms in order (the scratch is reused term after term). Prefill runs the same kernels row by row; an SGMV-style grouped GEMM
// for long same-adapter segments is not written yet (ffi/cuda/README.md).
#include "kernels.cuh"

namespace kf::cuda {

namespace {

constexpr int kProjs = 7;  // kf::kNumProj

// shrink: grid (T, ceil(max_rank / 8)); block: 8 warps, one rank index j each.
// tmp[t, j] = A[j, :] · x[t, :]; x: [T, in] in C; A: [rank, in] f32; tmp: [T, max_rank].
template <class C>
__global__ void lora_shrink_kernel(const C *__restrict__ x, const RowMeta *__restrict__ rows, int32_t layer,
                                   int32_t proj, int32_t in, int32_t max_rank, int32_t term, float *__restrict__ tmp) {
  const int64_t t = blockIdx.x;
  const int32_t j = blockIdx.y * 8 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  const LoraTermsDev *terms = rows[t].lora;
  if (!terms || term >= terms->n) return;
  const LoraPairDev pr = terms->table[term][layer * kProjs + proj];
  if (j >= pr.rank) return;  // warp-uniform
  const float *a = pr.a + int64_t(j) * in;
  const C *xr = x + t * in;
  float s = 0.0f;
  for (int32_t k = lane; k < in; k += 32) s = fmaf(a[k], to_f32(xr[k]), s);
  s = warp_sum(s);
  if (lane == 0) tmp[t * max_rank + j] = s;
}

// expand: grid (T, ceil(out / 256)); one output feature per thread.
// y[t, o] += w · Σ_j tmp[t, j] · Bt[j, o]; Bt: [rank, out] f32 (scale folded in); y: [T, out] f32.
__global__ void lora_expand_kernel(const RowMeta *__restrict__ rows, int32_t layer, int32_t proj, int32_t out,
                                   int32_t max_rank, int32_t term, const float *__restrict__ tmp,
                                   float *__restrict__ y) {
  const int64_t t = blockIdx.x;
  const int32_t o = blockIdx.y * blockDim.x + threadIdx.x;
  const LoraTermsDev *terms = rows[t].lora;
  if (!terms || term >= terms->n || o >= out) return;
  const LoraPairDev pr = terms->table[term][layer * kProjs + proj];
  if (pr.rank == 0) return;
  float s = 0.0f;
  for (int32_t j = 0; j < pr.rank; j++) s = fmaf(tmp[t * max_rank + j], pr.bt[int64_t(j) * out + o], s);
  y[t * out + o] += terms->weight[term] * s;
}

}  // namespace

void lora_apply(const void *x, DType dt, const RowMeta *rows, int32_t T, int32_t layer, int32_t proj, int32_t in,
                int32_t out, int32_t max_rank, int32_t n_terms, float *tmp, float *y, cudaStream_t s) {
  if (max_rank <= 0) return;
  for (int32_t term = 0; term < n_terms; term++) {
    KF_WITH_16BIT(dt, C,
                  lora_shrink_kernel<C><<<dim3(unsigned(T), blocks_for(max_rank, 8)), 256, 0, s>>>(
                      static_cast<const C *>(x), rows, layer, proj, in, max_rank, term, tmp));
    KF_LAUNCHED("lora_shrink");
    lora_expand_kernel<<<dim3(unsigned(T), blocks_for(out, 256)), 256, 0, s>>>(rows, layer, proj, out, max_rank,
                                                                                term, tmp, y);
    KF_LAUNCHED("lora_expand");
  }
}

}  // namespace kf::cuda

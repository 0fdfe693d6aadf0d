// rope.cu — rotary position embedding and the end of the q/k/v projections: biases, rotation, and the
// keys and values written into each row's session cache.
//
// inv_freq comes from the host (kf::rope_inv_freq: every rope_scaling type is folded into it there), so
// the device never needs to know which scaling a model uses.
#include "kernels.cuh"

namespace kf::cuda {

namespace {

// grid-stride over T * half. cs: [T, half, 2] (cos, sin) of pos[t] * inv_freq[i], in double as the CPU
// reference computes it: at position 100k an f32 angle would be off by ~0.01 rad.
__global__ void rope_table_kernel(const RowMeta *__restrict__ rows, const double *__restrict__ inv_freq, int32_t T,
                                  int32_t half, float *__restrict__ cs) {
  const int64_t n = int64_t(T) * half;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = e / half, i = e % half;
    double sn, cn;
    sincos(double(rows[t].pos) * inv_freq[i], &sn, &cn);
    cs[2 * e] = float(cn);
    cs[2 * e + 1] = float(sn);
  }
}

// grid: T blocks (one row each); block: 128 threads over (head, pair) work items.
// q: [T, nh, hd]; k, v: [T, nkv, hd] f32; cs: [T, hd/2, 2]; q_out: [T, nh, hd] in C; the row's cache
// k, v: [n_layers, capacity, nkv, hd] in C, written at [layer, slot].
template <class C>
__global__ void qkv_finish_kernel(const float *__restrict__ q, const float *__restrict__ k,
                                  const float *__restrict__ v, const float *__restrict__ bq,
                                  const float *__restrict__ bk, const float *__restrict__ bv,
                                  const float *__restrict__ cs, const RowMeta *__restrict__ rows, int32_t nh,
                                  int32_t nkv, int32_t hd, int32_t layer, C *__restrict__ q_out) {
  const int64_t t = blockIdx.x;
  const int32_t half = hd / 2;
  const float *c = cs + t * hd;  // [half, 2]
  const RowMeta r = rows[t];
  const int64_t kv_dim = int64_t(nkv) * hd;
  C *kc = static_cast<C *>(r.k) + layer * r.layer_stride + int64_t(r.slot) * kv_dim;
  C *vc = static_cast<C *>(r.v) + layer * r.layer_stride + int64_t(r.slot) * kv_dim;
  // Queries: pairs (i, i + half) of each head rotated by the row's angle i.
  for (int32_t e = threadIdx.x; e < nh * half; e += blockDim.x) {
    const int32_t h = e / half, i = e % half;
    const int64_t o = (t * nh + h) * hd + i;
    const int32_t col = h * hd + i;
    const float x1 = q[o] + (bq ? bq[col] : 0.0f), x2 = q[o + half] + (bq ? bq[col + half] : 0.0f);
    const float co = c[2 * i], si = c[2 * i + 1];
    q_out[o] = from_f32<C>(x1 * co - x2 * si);
    q_out[o + half] = from_f32<C>(x2 * co + x1 * si);
  }
  // Keys: the same rotation, straight into the cache slot.
  for (int32_t e = threadIdx.x; e < nkv * half; e += blockDim.x) {
    const int32_t h = e / half, i = e % half;
    const int64_t o = (t * nkv + h) * hd + i;
    const int32_t col = h * hd + i;
    const float x1 = k[o] + (bk ? bk[col] : 0.0f), x2 = k[o + half] + (bk ? bk[col + half] : 0.0f);
    const float co = c[2 * i], si = c[2 * i + 1];
    kc[col] = from_f32<C>(x1 * co - x2 * si);
    kc[col + half] = from_f32<C>(x2 * co + x1 * si);
  }
  // Values: copied as they are (plus bias).
  for (int32_t col = threadIdx.x; col < nkv * hd; col += blockDim.x)
    vc[col] = from_f32<C>(v[t * kv_dim + col] + (bv ? bv[col] : 0.0f));
}

}  // namespace

void rope_table(const RowMeta *rows, const double *inv_freq, int32_t T, int32_t half, float *cs, cudaStream_t s) {
  const int64_t n = int64_t(T) * half;
  rope_table_kernel<<<unsigned(std::min<int64_t>(blocks_for(n, 128), 4096)), 128, 0, s>>>(rows, inv_freq, T, half,
                                                                                          cs);
  KF_LAUNCHED("rope_table");
}

void qkv_finish(const float *q, const float *k, const float *v, const float *bq, const float *bk, const float *bv,
                const float *cs, const RowMeta *rows, int32_t T, int32_t nh, int32_t nkv, int32_t hd, int32_t layer,
                void *q_out, DType dt, cudaStream_t s) {
  KF_WITH_16BIT(dt, C,
                qkv_finish_kernel<C><<<T, 128, 0, s>>>(q, k, v, bq, bk, bv, cs, rows, nh, nkv, hd, layer,
                                                        static_cast<C *>(q_out)));
  KF_LAUNCHED("qkv_finish");
}

}  // namespace kf::cuda

// lococo.cu — LoCoCo's fusion of one layer's cache on the device (DESIGN.md; lococo.cpp is the CPU
// reference, whose names and shapes these follow). The ranking (heavy hitters, the next Mc by score) is
// chosen on the host from the layer's scores, which are small; everything that touches keys and values
// runs here, for all KV heads g at once:
//   gather   x_pad[g] = [0 (pad rows); K_r | V_r (S rows); 0 (pad rows)]   [S + k − 1, 2·hd] dt
//            x_t[g]   = x[g]^T                                             [2·hd, S] dt
//            kept[g]  = [K | V] of the Mh heavy hitters                    [Mh, 2·hd] dt
//   conv     conv[g]  = im2col(x_pad[g]) · Wc^T + bias: one GEMM over overlapping rows (row t starts
//            2·hd values after row t − 1), the tap-major weight [Mc, k·2·hd]  [S, Mc] f32
//   mix      mix[g]   = λ · softmax over slots of ReLU(conv[g])^T          [Mc, S] dt
//   fuse     fused[g] = mix[g] · x[g]                                      [Mc, 2·hd] f32
//   scatter  slots 0..Mh ← kept; slots Mh + ch ← fused[ch] + (1 − λ) x[pick[ch]]
#include "kernels.cuh"

namespace kf::cuda {

namespace {

// grid: (S + 2·pad + Mh, nkv); block 128. idx: [nkv, Mh + S] heavy hitters then the rest (cache order).
template <class C>
__global__ void lococo_gather_kernel(const C *__restrict__ K, const C *__restrict__ V, const int32_t *__restrict__ idx,
                                     int32_t nkv, int32_t hd, int32_t Mh, int32_t S, int32_t pad, C *__restrict__ x_pad,
                                     C *__restrict__ x_t, C *__restrict__ kept) {
  const int32_t r = blockIdx.x, g = blockIdx.y, two_hd = 2 * hd, rows = S + 2 * pad;
  const int32_t *heavy = idx + int64_t(g) * (Mh + S), *rest = heavy + Mh;
  if (r < rows) {
    C *dst = x_pad + (int64_t(g) * rows + r) * two_hd;
    const int32_t t = r - pad;
    if (t < 0 || t >= S) {
      for (int32_t i = threadIdx.x; i < two_hd; i += blockDim.x) dst[i] = from_f32<C>(0.0f);
      return;
    }
    const int64_t src = (int64_t(rest[t]) * nkv + g) * hd;
    for (int32_t i = threadIdx.x; i < two_hd; i += blockDim.x) {
      const C val = i < hd ? K[src + i] : V[src + i - hd];
      dst[i] = val;
      x_t[(int64_t(g) * two_hd + i) * S + t] = val;
    }
  } else {
    const int32_t m = r - rows;
    const int64_t src = (int64_t(heavy[m]) * nkv + g) * hd;
    C *dst = kept + (int64_t(g) * Mh + m) * two_hd;
    for (int32_t i = threadIdx.x; i < two_hd; i += blockDim.x) dst[i] = i < hd ? K[src + i] : V[src + i - hd];
  }
}

// grid: (Mc, nkv); block 256. mix[g, ch, t] = λ · softmax_t(ReLU(conv[g, t, ch])).
template <class C>
__global__ void lococo_mix_kernel(const float *__restrict__ conv, int32_t S, int32_t Mc, float lambda,
                                  C *__restrict__ mix) {
  __shared__ float red[8];
  const int32_t ch = blockIdx.x, g = blockIdx.y;
  const float *col = conv + int64_t(g) * S * Mc + ch;
  float mx = -INFINITY;
  for (int32_t t = threadIdx.x; t < S; t += blockDim.x) mx = fmaxf(mx, fmaxf(0.0f, col[int64_t(t) * Mc]));
  mx = warp_max(mx);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = mx;
  __syncthreads();
  mx = red[0];
  for (int i = 1; i < int(blockDim.x >> 5); i++) mx = fmaxf(mx, red[i]);
  __syncthreads();
  float sum = 0.0f;
  for (int32_t t = threadIdx.x; t < S; t += blockDim.x) sum += __expf(fmaxf(0.0f, col[int64_t(t) * Mc]) - mx);
  sum = warp_sum(sum);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = sum;
  __syncthreads();
  sum = 0.0f;
  for (int i = 0; i < int(blockDim.x >> 5); i++) sum += red[i];
  const float scale = lambda / sum;
  C *row = mix + (int64_t(g) * Mc + ch) * S;
  for (int32_t t = threadIdx.x; t < S; t += blockDim.x)
    row[t] = from_f32<C>(__expf(fmaxf(0.0f, col[int64_t(t) * Mc]) - mx) * scale);
}

// grid: (Mh + Mc, nkv); block 128. Writes the layer's new slots 0..M of head g.
template <class C>
__global__ void lococo_scatter_kernel(C *__restrict__ K, C *__restrict__ V, const int32_t *__restrict__ pick,
                                      const C *__restrict__ x_pad, const C *__restrict__ kept,
                                      const float *__restrict__ fused, int32_t nkv, int32_t hd, int32_t Mh, int32_t Mc,
                                      int32_t S, int32_t pad, float lambda) {
  const int32_t m = blockIdx.x, g = blockIdx.y, two_hd = 2 * hd;
  C *kd = K + (int64_t(m) * nkv + g) * hd, *vd = V + (int64_t(m) * nkv + g) * hd;
  if (m < Mh) {
    const C *src = kept + (int64_t(g) * Mh + m) * two_hd;
    for (int32_t i = threadIdx.x; i < two_hd; i += blockDim.x) (i < hd ? kd[i] : vd[i - hd]) = src[i];
    return;
  }
  const int32_t ch = m - Mh;
  const C *xs = x_pad + (int64_t(g) * (S + 2 * pad) + pad + pick[int64_t(g) * Mc + ch]) * two_hd;
  const float *fr = fused + (int64_t(g) * Mc + ch) * two_hd;
  for (int32_t i = threadIdx.x; i < two_hd; i += blockDim.x) {
    // λ = 0: R x exactly (the CPU copies too); else λ W x + (1 − λ) R x.
    const float val = lambda == 0.0f ? to_f32(xs[i]) : fr[i] + (1.0f - lambda) * to_f32(xs[i]);
    (i < hd ? kd[i] : vd[i - hd]) = from_f32<C>(val);
  }
}

// grid: (M, nkv); block 128. tmp_k, tmp_v: [M, nkv, hd] ← slot idx[g, m] of K, V for head g.
template <class C>
__global__ void gather_slots_kernel(const C *__restrict__ K, const C *__restrict__ V, const int32_t *__restrict__ idx,
                                    int32_t nkv, int32_t hd, int32_t M, C *__restrict__ tmp_k, C *__restrict__ tmp_v) {
  const int32_t m = blockIdx.x, g = blockIdx.y;
  const int64_t src = (int64_t(idx[int64_t(g) * M + m]) * nkv + g) * hd, dst = (int64_t(m) * nkv + g) * hd;
  for (int32_t i = threadIdx.x; i < hd; i += blockDim.x) {
    tmp_k[dst + i] = K[src + i];
    tmp_v[dst + i] = V[src + i];
  }
}

}  // namespace

void gather_slots(void *K, void *V, const int32_t *idx, int32_t nkv, int32_t hd, int32_t M, void *tmp, DType dt,
                  cudaStream_t s) {
  if (M <= 0) return;
  const size_t n = size_t(M) * size_t(nkv) * size_t(hd);
  KF_WITH_16BIT(dt, C, {
    C *tk = static_cast<C *>(tmp), *tv = tk + n;
    gather_slots_kernel<C><<<dim3(unsigned(M), unsigned(nkv)), 128, 0, s>>>(static_cast<const C *>(K),
                                                                            static_cast<const C *>(V), idx, nkv, hd, M,
                                                                            tk, tv);
    KF_LAUNCHED("gather_slots");
    // Gathered first, written back after: a kept slot's new place may be another kept slot's old one.
    KF_CUDA(cudaMemcpyAsync(K, tk, n * sizeof(C), cudaMemcpyDeviceToDevice, s));
    KF_CUDA(cudaMemcpyAsync(V, tv, n * sizeof(C), cudaMemcpyDeviceToDevice, s));
  });
}

void lococo_fuse_layer(const LococoFuse &f, cudaStream_t s) {
  const int32_t two_hd = 2 * f.hd, rows = f.S + 2 * f.pad;
  KF_WITH_16BIT(f.dt, C, {
    lococo_gather_kernel<C><<<dim3(unsigned(rows + f.Mh), unsigned(f.nkv)), 128, 0, s>>>(
        static_cast<const C *>(f.K), static_cast<const C *>(f.V), f.idx, f.nkv, f.hd, f.Mh, f.S, f.pad,
        static_cast<C *>(f.x_pad), static_cast<C *>(f.x_t), static_cast<C *>(f.kept));
  });
  KF_LAUNCHED("lococo_gather");
  if (f.lambda != 0.0f) {
    // conv[g] [S, Mc] = rows t..t+k of x_pad[g] (implicit im2col, row stride 2·hd) · Wc^T, then + bias
    matmul_batched(f.x_pad, two_hd, int64_t(rows) * two_hd, f.weight, 0, f.dt, f.conv, int64_t(f.S) * f.Mc, f.S, f.Mc,
                   f.kernel * two_hd, f.nkv, s);
    add_bias(f.conv, f.bias, f.nkv * f.S, f.Mc, s);
    KF_WITH_16BIT(f.dt, C, {
      lococo_mix_kernel<C><<<dim3(unsigned(f.Mc), unsigned(f.nkv)), 256, 0, s>>>(f.conv, f.S, f.Mc, f.lambda,
                                                                                 static_cast<C *>(f.mix));
    });
    KF_LAUNCHED("lococo_mix");
    // fused[g] [Mc, 2·hd] = mix[g] [Mc, S] · (x_t[g] [2·hd, S])^T
    matmul_batched(f.mix, f.S, int64_t(f.Mc) * f.S, f.x_t, int64_t(two_hd) * f.S, f.dt, f.fused,
                   int64_t(f.Mc) * two_hd, f.Mc, two_hd, f.S, f.nkv, s);
  }
  KF_WITH_16BIT(f.dt, C, {
    lococo_scatter_kernel<C><<<dim3(unsigned(f.Mh + f.Mc), unsigned(f.nkv)), 128, 0, s>>>(
        static_cast<C *>(f.K), static_cast<C *>(f.V), f.pick, static_cast<const C *>(f.x_pad),
        static_cast<const C *>(f.kept), f.fused, f.nkv, f.hd, f.Mh, f.Mc, f.S, f.pad, f.lambda);
  });
  KF_LAUNCHED("lococo_scatter");
}

}  // namespace kf::cuda

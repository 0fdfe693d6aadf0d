// attention.cu — causal attention over a session's KV cache, for prefill chunks and decode alike.
//
// One CTA per (attention block, KV head, split): a block is up to kBlockRows consecutive rows of one
// session, and the CTA serves all (row, query head) pairs of that block whose query head maps to its KV
// head (GQA), so each K/V tile it stages in shared memory is read from device memory once for all of
// them. Each warp owns one pair at a time and runs the online softmax (FlashAttention's running max and
// sum) over tiles of kTileKeys keys: lane j scores key j of the tile, then the warp accumulates
// p_j · v_j with each lane holding hd/32 output dims. Arithmetic is f32; K/V/q/out are 16-bit.
//
// Split-KV (decode): with few rows there are too few CTAs to fill the GPU, so the key range is cut into
// n_splits pieces run by separate CTAs, each writing (max, sum, unnormalised output) partials that
// attention_combine merges. Each block's own key range is cut in n_splits equal pieces on the device, so
// the launch does not change as a context grows (the decode step can be a replayed CUDA graph). Not a tensor-core FlashAttention yet: scores and values run on CUDA cores
// (see ffi/cuda/README.md for what remains).
#include "kernels.cuh"

namespace kf::cuda {

namespace {

constexpr int kWarps = 4, kThreads = 32 * kWarps, kTileKeys = 32;

// Shared memory: K tile [kTileKeys, hd + 2] and V tile [kTileKeys, hd + 2] in C (the +2 pad makes a
// row 2·(hd/2 + 1) bytes: lanes reading 32-bit pairs of 32 different rows hit 32 different banks), then
// the scaled queries of the 4 warps [kWarps, hd] f32.
inline size_t smem_bytes(int hd, size_t elem) { return 2 * size_t(kTileKeys) * size_t(hd + 2) * elem + kWarps * size_t(hd) * 4; }

// q: [T, nh, hd]; attn: [T, nh, hd]; partial: [n_splits, T, nh, hd + 2] (acc..., max, sum).
// NI = output dims per lane = ceil(hd / 32), a compile-time constant so acc[] stays in registers.
template <class C, int NI>
__global__ void __launch_bounds__(kThreads)
    attention_kernel(const C *__restrict__ q, const RowMeta *__restrict__ rows, const AttnBlock *__restrict__ blocks,
                     int32_t T, int32_t nh, int32_t nkv, int32_t hd, int32_t layer, float *__restrict__ partial,
                     C *__restrict__ attn) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int32_t ldk = hd + 2;
  C *ks = reinterpret_cast<C *>(smem);
  C *vs = ks + kTileKeys * ldk;
  float *qs = reinterpret_cast<float *>(vs + kTileKeys * ldk);

  const AttnBlock blk = blocks[blockIdx.x];
  const int32_t kvh = blockIdx.y, split = blockIdx.z, n_splits = gridDim.z;
  const int32_t group = nh / nkv;
  const int32_t warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const RowMeta first = rows[blk.row0];  // every row of a block shares the session's cache
  const C *kc = static_cast<const C *>(first.k) + layer * first.layer_stride;
  const C *vc = static_cast<const C *>(first.v) + layer * first.layer_stride;
  const int32_t keys_per_split = (blk.hi - blk.lo + n_splits - 1) / n_splits;
  const int32_t lo = n_splits == 1 ? blk.lo : blk.lo + split * keys_per_split;
  const int32_t hi = n_splits == 1 ? blk.hi : min(blk.hi, lo + keys_per_split);
  const float scale = rsqrtf(float(hd));
  const int32_t pairs = blk.n_rows * group;
  float *qw = qs + warp * hd;

  for (int32_t base = 0; base < pairs; base += kWarps) {
    const int32_t pair = base + warp;
    const bool active = pair < pairs;
    int32_t row = 0, h = 0, begin = 0, end = 0;
    __syncwarp();  // every lane is done reading the previous pair's queries before they are replaced
    if (active) {
      row = blk.row0 + pair / group;
      h = kvh * group + pair % group;
      begin = max(rows[row].begin, lo);  // causal and windowed range of this row within this split
      end = min(rows[row].slot + 1, hi);
      for (int32_t d = lane; d < hd; d += 32) qw[d] = to_f32(q[(int64_t(row) * nh + h) * hd + d]) * scale;
    }
    float m = -INFINITY, l = 0.0f, acc[NI];
#pragma unroll
    for (int i = 0; i < NI; i++) acc[i] = 0.0f;

    for (int32_t j0 = lo; j0 < hi; j0 += kTileKeys) {
      const int32_t n_keys = min(kTileKeys, hi - j0);
      __syncthreads();  // the previous tile is consumed; this pass's queries are written
      // Stage K and V rows j0.. of this KV head, 32 bits per thread per step (hd is even).
      for (int32_t e = threadIdx.x; e < kTileKeys * (hd / 2); e += kThreads) {
        const int32_t j = e / (hd / 2), d = 2 * (e % (hd / 2));
        uint32_t kw = 0, vw = 0;
        if (j < n_keys) {
          const int64_t off = (int64_t(j0 + j) * nkv + kvh) * hd + d;
          kw = *reinterpret_cast<const uint32_t *>(kc + off);
          vw = *reinterpret_cast<const uint32_t *>(vc + off);
        }
        *reinterpret_cast<uint32_t *>(ks + j * ldk + d) = kw;
        *reinterpret_cast<uint32_t *>(vs + j * ldk + d) = vw;
      }
      __syncthreads();
      if (!active) continue;  // bounds are CTA-uniform: every thread still meets every barrier

      const int32_t j = j0 + lane;
      float sc = -INFINITY;
      if (lane < n_keys && j >= begin && j < end) {
        const C *kr = ks + lane * ldk;
        float dot = 0.0f;
        for (int32_t d = 0; d < hd; d += 2) {
          const float2 kf = pair_to_f32(kr + d);
          dot = fmaf(qw[d], kf.x, fmaf(qw[d + 1], kf.y, dot));
        }
        sc = dot;
      }
      const float tile_max = warp_max(sc);
      if (tile_max == -INFINITY) continue;  // nothing of this tile is visible to this row
      const float m_new = fmaxf(m, tile_max);
      const float corr = __expf(m - m_new);  // 0 on the first visible tile (m = -inf)
      const float p = sc == -INFINITY ? 0.0f : __expf(sc - m_new);
      l = l * corr + warp_sum(p);
#pragma unroll
      for (int i = 0; i < NI; i++) acc[i] *= corr;
      for (int32_t jj = 0; jj < n_keys; jj++) {
        const float pj = __shfl_sync(0xffffffffu, p, jj);
        if (pj == 0.0f) continue;  // warp-uniform: pj is broadcast
        const C *vr = vs + jj * ldk;
#pragma unroll
        for (int i = 0; i < NI; i++) {
          const int32_t d = lane + 32 * i;
          if (d < hd) acc[i] = fmaf(pj, to_f32(vr[d]), acc[i]);
        }
      }
      m = m_new;
    }

    // Slot scores: p_j = e^(s_j - m) / l with this row's final max and sum, added into the session's
    // scores. Block-uniform condition (one session per block); the planner runs scoring forwards
    // unsplit, so m and l here are the row's own.
    if (first.score && n_splits == 1) {
      float *score = first.score + layer * first.score_stride;
      const float inv_l = l > 0.0f ? 1.0f / l : 0.0f;
      for (int32_t j0 = lo; j0 < hi; j0 += kTileKeys) {
        const int32_t n_keys = min(kTileKeys, hi - j0);
        __syncthreads();
        for (int32_t e = threadIdx.x; e < kTileKeys * (hd / 2); e += kThreads) {
          const int32_t j = e / (hd / 2), d = 2 * (e % (hd / 2));
          uint32_t kw = 0;
          if (j < n_keys) kw = *reinterpret_cast<const uint32_t *>(kc + (int64_t(j0 + j) * nkv + kvh) * hd + d);
          *reinterpret_cast<uint32_t *>(ks + j * ldk + d) = kw;
        }
        __syncthreads();
        const int32_t j = j0 + lane;
        if (active && lane < n_keys && j >= begin && j < end) {
          const C *kr = ks + lane * ldk;
          float dot = 0.0f;
          for (int32_t d = 0; d < hd; d += 2) {
            const float2 kf = pair_to_f32(kr + d);
            dot = fmaf(qw[d], kf.x, fmaf(qw[d + 1], kf.y, dot));
          }
          atomicAdd(score + int64_t(j) * nkv + kvh, __expf(dot - m) * inv_l);
        }
      }
    }

    if (active) {
      const int64_t rh = int64_t(row) * nh + h;
      if (n_splits == 1) {
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
        for (int i = 0; i < NI; i++) {
          const int32_t d = lane + 32 * i;
          if (d < hd) attn[rh * hd + d] = from_f32<C>(acc[i] * inv);
        }
      } else {
        float *pp = partial + (int64_t(split) * T * nh + rh) * (hd + 2);
#pragma unroll
        for (int i = 0; i < NI; i++) {
          const int32_t d = lane + 32 * i;
          if (d < hd) pp[d] = acc[i];
        }
        if (lane == 0) {
          pp[hd] = m;
          pp[hd + 1] = l;
        }
      }
    }
  }
}

// grid: T * nh CTAs, one (row, head) each; block: 128 threads over hd. Merges the splits' partials:
// out = Σ_s e^(m_s − M) acc_s / Σ_s e^(m_s − M) l_s, M = max_s m_s.
template <class C>
__global__ void attention_combine_kernel(const float *__restrict__ partial, int32_t n_splits, int32_t T, int32_t nh,
                                         int32_t hd, C *__restrict__ attn) {
  const int64_t rh = blockIdx.x, stride = int64_t(T) * nh * (hd + 2);
  const float *p0 = partial + rh * (hd + 2);
  float M = -INFINITY;
  for (int32_t s = 0; s < n_splits; s++) M = fmaxf(M, p0[s * stride + hd]);
  float L = 0.0f;
  for (int32_t s = 0; s < n_splits; s++) {
    const float ms = p0[s * stride + hd];
    if (ms != -INFINITY) L += __expf(ms - M) * p0[s * stride + hd + 1];
  }
  const float inv = L > 0.0f ? 1.0f / L : 0.0f;
  for (int32_t d = threadIdx.x; d < hd; d += blockDim.x) {
    float o = 0.0f;
    for (int32_t s = 0; s < n_splits; s++) {
      const float ms = p0[s * stride + hd];
      if (ms != -INFINITY) o += __expf(ms - M) * p0[s * stride + d];
    }
    attn[rh * hd + d] = from_f32<C>(o * inv);
  }
}

template <class C, int NI>
void launch(const void *q, const RowMeta *rows, const AttnBlock *blocks, int32_t n_blocks, int32_t T, int32_t nh,
            int32_t nkv, int32_t hd, int32_t layer, int32_t n_splits, float *partial, void *attn, cudaStream_t s) {
  const dim3 grid{unsigned(n_blocks), unsigned(nkv), unsigned(n_splits)};
  attention_kernel<C, NI><<<grid, kThreads, smem_bytes(hd, sizeof(C)), s>>>(
      static_cast<const C *>(q), rows, blocks, T, nh, nkv, hd, layer, partial, static_cast<C *>(attn));
  KF_LAUNCHED("attention");
  if (n_splits > 1) {
    attention_combine_kernel<C><<<unsigned(T * nh), 128, 0, s>>>(partial, n_splits, T, nh, hd, static_cast<C *>(attn));
    KF_LAUNCHED("attention_combine");
  }
}

}  // namespace

void attention(const void *q, const RowMeta *rows, const AttnBlock *blocks, int32_t n_blocks, int32_t T, int32_t nh,
               int32_t nkv, int32_t hd, int32_t layer, int32_t n_splits, float *partial, void *attn, DType dt,
               cudaStream_t s) {
  if (hd % 2 != 0 || hd > 256 || nh % nkv != 0)
    raise(KF_ERR_UNSUPPORTED, "cannot %s: the cuda attention needs an even head_dim <= 256 and n_heads a multiple of "
          "n_kv_heads (head_dim %d, %d/%d heads)", doing(), hd, nh, nkv);
  KF_WITH_16BIT(dt, C, {
    if (hd <= 32) launch<C, 1>(q, rows, blocks, n_blocks, T, nh, nkv, hd, layer, n_splits, partial, attn, s);
    else if (hd <= 64) launch<C, 2>(q, rows, blocks, n_blocks, T, nh, nkv, hd, layer, n_splits, partial, attn, s);
    else if (hd <= 128) launch<C, 4>(q, rows, blocks, n_blocks, T, nh, nkv, hd, layer, n_splits, partial, attn, s);
    else launch<C, 8>(q, rows, blocks, n_blocks, T, nh, nkv, hd, layer, n_splits, partial, attn, s);
  });
}

}  // namespace kf::cuda

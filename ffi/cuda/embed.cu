// embed.cu — the input rows of a forward: embedding-table gather for token ids, or conversion of
// caller-supplied rows (LLoCO summary vectors, prefix embeddings) to the f32 residual stream.
#include "kernels.cuh"

namespace kf::cuda {

namespace {

// grid: T blocks; block: 256 threads striding over H. table: [vocab, H]; x: [T, H] f32.
template <class T>
__global__ void embed_tokens_kernel(const T *__restrict__ table, const int32_t *__restrict__ ids, int32_t H,
                                    float *__restrict__ x) {
  const int64_t t = blockIdx.x;
  const T *row = table + int64_t(ids[t]) * H;
  for (int32_t i = threadIdx.x; i < H; i += blockDim.x) x[t * H + i] = to_f32(row[i]);
}

// grid-stride over n = T * H elements. rows: [T, H] in S; x: [T, H] f32.
template <class S>
__global__ void embed_rows_kernel(const S *__restrict__ rows, int64_t n, float *__restrict__ x) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] = to_f32(rows[i]);
}

// grid-stride over n. src: [n] f32; dst: [n] in T.
template <class T>
__global__ void from_f32_kernel(const float *__restrict__ src, int64_t n, T *__restrict__ dst) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = from_f32<T>(src[i]);
}

}  // namespace

void to_f32(const void *src, DType dt, int64_t n, float *dst, cudaStream_t s) {
  if (n <= 0) return;
  const unsigned grid = unsigned(std::min<int64_t>(blocks_for(n, 256), 8192));
  KF_WITH_16BIT(dt, E, embed_rows_kernel<E><<<grid, 256, 0, s>>>(static_cast<const E *>(src), n, dst));
  KF_LAUNCHED("to_f32");
}

void from_f32(const float *src, int64_t n, void *dst, DType dt, cudaStream_t s) {
  if (n <= 0) return;
  const unsigned grid = unsigned(std::min<int64_t>(blocks_for(n, 256), 8192));
  KF_WITH_16BIT(dt, E, from_f32_kernel<E><<<grid, 256, 0, s>>>(src, n, static_cast<E *>(dst)));
  KF_LAUNCHED("from_f32");
}

void embed_tokens(const void *table, DType dt, const int32_t *ids, int32_t T, int32_t H, float *x, cudaStream_t s) {
  KF_WITH_16BIT(dt, E, embed_tokens_kernel<E><<<T, 256, 0, s>>>(static_cast<const E *>(table), ids, H, x));
  KF_LAUNCHED("embed_tokens");
}

void embed_rows(const void *rows, DType src_dt, int32_t T, int32_t H, float *x, cudaStream_t s) {
  const int64_t n = int64_t(T) * H;
  const unsigned grid = unsigned(std::min<int64_t>(blocks_for(n, 256), 4096));
  if (src_dt == DType::F32) {
    embed_rows_kernel<float><<<grid, 256, 0, s>>>(static_cast<const float *>(rows), n, x);
  } else {
    KF_WITH_16BIT(src_dt, E, embed_rows_kernel<E><<<grid, 256, 0, s>>>(static_cast<const E *>(rows), n, x));
  }
  KF_LAUNCHED("embed_rows");
}

}  // namespace kf::cuda

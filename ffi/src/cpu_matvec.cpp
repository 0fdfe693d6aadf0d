// cpu_matvec.cpp — decode's matrix products (T <= kMatvecMaxT rows of x): each W row streamed once,
// the rows split over the pool's threads in contiguous runs, and several products of one x in one
// parallel region.
//
// Why several in one region: a decode step of a 1.1B model opened seven matmul regions per layer, and
// perf put 14% of its time in thread-pool waits (the caller waiting for the other half, a worker idle
// between regions). q, k and v read the same normed x, as gate and up do; one region over all their
// rows halves the joins per layer and converts x (bf16 rounding, int8 blocks) once instead of per
// matrix. The split is by bytes, so a thread's run may end in q's rows and go on in k's.
#include "cpu_matvec.h"

#include <algorithm>
#include <vector>

#include "cpu_features.h"
#include "cpu_matmul_avx512.h"
#include "cpu_quant.h"
#include "cpu_quant_vnni512.h"
#include "cpu_scratch.h"

namespace kf {

namespace {

// Which kernel runs a product's rows, and so which form of x it reads.
enum class RowKernel { Float, Bf16Dot, F16, Quant };

constexpr int kMaxProducts = 4;
// Runs split at multiples of 16 rows within a product: the quantized kernels' groups (row-major
// tasks of 16, interleaved groups of 16); the float kernels accept any split.
constexpr int64_t kAlign = 16;

bool choose_kernel(const MatmulProduct &p, CpuPath path, int64_t T, int64_t in, RowKernel *k) {
  if (dtype_quantized(p.dt)) {
    *k = RowKernel::Quant;
    return matmul_quant_rows_apply(p.dt, T, in, p.out);
  }
  if (path == CpuPath::Scalar || (p.dt != DType::F32 && p.dt != DType::F16 && p.dt != DType::BF16)) return false;
  // - bf16 rows on AVX512-BF16 take vdpbf16ps (one instruction per 64 weight bytes instead of
  //   widen + FMA per 16: 1.1B decode on one thread 11.0 -> 12.2 tok/s; x rounded to bf16 as prefill
  //   already does there); short ones (< 3 KiB) 16 at a time with one reduction for all 16 (one per
  //   row made them 10% slower than AVX2 on the 134M; batched, 25% faster);
  // - f16 on AVX-512 widens 16 weights per instruction, one row stream at a time (the AVX2 kernel's
  //   8 interleaved 4 KiB rows read at 2/3 of bf16's rate: 1.1B decode 0.92x llama.cpp's);
  // - f32 stays AVX2 (memory-bound: wider registers do not read faster).
  if (p.dt == DType::BF16 && int32_t(path) >= int32_t(CpuPath::Avx512Bf16))
    *k = RowKernel::Bf16Dot;
  else if (p.dt == DType::F16 && int32_t(path) >= int32_t(CpuPath::Avx512))
    *k = RowKernel::F16;
  else
    *k = RowKernel::Float;
  return true;
}

}  // namespace

bool matvec_products(ThreadPool &pool, const float *x, int64_t T, int64_t in, const MatmulProduct *p, int n) {
  if (n < 1 || n > kMaxProducts || T < 1 || T > kMatvecMaxT || in < 1 || !x) return false;
  const CpuPath path = cpu_path();
  RowKernel kind[kMaxProducts];
  size_t cum[kMaxProducts + 1] = {0};  // bytes of W before product i
  bool need_bf16 = false, need_q8 = false;
  for (int i = 0; i < n; i++) {
    if (!p[i].W || !p[i].y || p[i].out < 1 || !choose_kernel(p[i], path, T, in, &kind[i])) return false;
    need_bf16 |= kind[i] == RowKernel::Bf16Dot;
    need_q8 |= kind[i] == RowKernel::Quant;
    cum[i + 1] = cum[i] + size_t(p[i].out) * dtype_row_bytes(p[i].dt, in);
  }

  // x in the forms the kernels read, converted once on the calling thread: bf16 rows of kp (even)
  // values, then int8 blocks, in one lent buffer (cpu_scratch.h).
  const int64_t kp = (in + 1) / 2 * 2, nb = in / kQuantBlock;
  const size_t bf16_bytes = need_bf16 ? (size_t(T * kp) * sizeof(uint16_t) + 63) / 64 * 64 : 0;
  ScratchLease lease(bf16_bytes + (need_q8 ? size_t(T * nb) * sizeof(quant::ActBlock) : 0));
  uint16_t *xb = lease.as<uint16_t>();
  auto *xq = reinterpret_cast<quant::ActBlock *>(lease.as<unsigned char>() + bf16_bytes);
  if (need_bf16) bf16_round_rows(x, in, T, kp, xb);
  if (need_q8) quantize_act_rows(x, in, in, T, xq);

  auto rows = [&](int i, int64_t r0, int64_t r1) {
    const MatmulProduct &q = p[i];
    switch (kind[i]) {
    case RowKernel::Bf16Dot: return matvec_bf16_dot_range(xb, kp, q.W, q.y, T, in, q.out, r0, r1, q.bias);
    case RowKernel::F16: return matvec_f16_range(x, q.W, q.y, T, in, q.out, r0, r1, q.bias);
    case RowKernel::Quant: return matmul_quant_rows(xq, nb, q.W, q.dt, q.y, T, q.out, q.bias, r0, r1);
    case RowKernel::Float: return matvec_float_range(q.dt, x, in, q.W, q.y, T, q.out, r0, r1, q.bias);
    }
  };
  const size_t total = cum[n];
  if (pool.size() == 1 || total * size_t(T) < ThreadPool::kInlineBytes) {
    for (int i = 0; i < n; i++) rows(i, 0, p[i].out);
    return true;
  }
  // Cut k of `parts` sits at byte k * total / parts of the products' rows laid end to end, moved to
  // the nearest multiple of kAlign rows of its product; part k runs from cut k to cut k + 1.
  struct Cut {
    int i;
    int64_t row;
  };
  auto cut = [&](int k, int parts) -> Cut {
    if (k >= parts) return {n, 0};
    const size_t b = size_t((unsigned __int128)total * unsigned(k) / unsigned(parts));
    int i = 0;
    while (i + 1 < n && cum[i + 1] <= b) i++;
    const size_t rb = (cum[i + 1] - cum[i]) / size_t(p[i].out);
    const int64_t row = int64_t((b - cum[i]) / rb + kAlign / 2) / kAlign * kAlign;
    return row >= p[i].out ? Cut{i + 1, 0} : Cut{i, row};
  };
  pool.run_per_thread([&](int part, int parts) {
    const Cut a = cut(part, parts), z = cut(part + 1, parts);
    for (int i = a.i; i <= z.i && i < n; i++) {
      const int64_t r0 = i == a.i ? a.row : 0, r1 = i == z.i ? z.row : p[i].out;
      if (r0 < r1) rows(i, r0, r1);
    }
  });
  return true;
}

void matmul_shared_x(ThreadPool &pool, const float *x, int64_t T, int64_t in, const MatmulProduct *p, int n) {
  if (matvec_products(pool, x, T, in, p, n)) return;
  bool quantized = true;
  for (int i = 0; i < n; i++) quantized &= dtype_quantized(p[i].dt);
  if (quantized) return matmul_quant_products(pool, x, T, in, p, n);
  for (int i = 0; i < n; i++) matmul(pool, x, p[i].W, p[i].dt, p[i].y, T, in, p[i].out, p[i].bias);
}

}  // namespace kf

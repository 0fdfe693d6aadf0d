// cpu_decode_reads_test.cpp — decode's ways of reading weights (cpu_features.h DecodeReads: the far
// prefetch's level, short bf16 rows in pairs or alone, two streams per thread) change no bit: every
// combination gives the default's outputs for f16 and bf16 rows (short and long) and the 16-row
// interleaved int8 layouts (Q8_0_R16, Q4_0_R16, Q4_K_R16, Q6_K_R16), at T = 1..3 (two streams take T = 1 only),
// at 1-3 threads (so runs of odd group counts split mid-way), with and without a bias.
#include <cmath>
#include <cstring>

#include "../src/common.h"
#include "../src/cpu_features.h"
#include "../src/cpu_ops.h"
#include "../src/cpu_quant.h"
#include "cpu_kernels_check.h"

namespace kf_test {

using namespace kf;

namespace {

// Random weights of `dt` for N rows of K, laid out as the loader lays them.
std::vector<uint8_t> make_weights(Rng &rng, DType dt, int64_t N, int64_t K, ThreadPool &pool) {
  if (!dtype_rows16(dt)) {
    std::vector<uint8_t> raw;
    std::vector<float> exact;
    make_float_weights(rng, dt, size_t(N * K), raw, exact);
    return raw;
  }
  const DType base = dtype_block_kind(dt);
  const size_t rb = dtype_row_bytes(base, K);
  std::vector<uint8_t> raw(size_t(N) * rb), inter(size_t(N) * dtype_row_bytes(dt, K));
  if (dtype_load_only(base)) {
    raw = random_k_blocks(rng, base, N, K);
  } else {
    const std::vector<float> f = random_vec(rng, size_t(N * K));
    for (int64_t o = 0; o < N; o++) quantize_row(f.data() + o * K, base, raw.data() + size_t(o) * rb, K);
  }
  interleave_rows16(pool, base, raw.data(), N, K, inter.data());
  return inter;
}

}  // namespace

void test_decode_reads(ThreadPool *pools) {
  Check c("decode's weight reads (prefetch level, short-row pairs, two streams): the default's bits");
  const DecodeReads dflt = cpu_decode_reads();
  std::printf("decode reads here: prefetch %s, short rows %s, %s\n", dflt.prefetch_l2 ? "l2" : "l1",
              dflt.short_rows_paired ? "in pairs" : "one at a time", dflt.two_streams ? "two streams" : "one stream");
  Rng rng(57);
  struct Case {
    DType dt;
    int64_t K;
  };
  // bf16 K = 520 and 1000: short rows (under kMvShortRowBytes); 1565: long ones.
  const Case cases[] = {{DType::F16, 200},      {DType::F16, 1565},      {DType::BF16, 520},
                        {DType::BF16, 1000},    {DType::BF16, 1565},     {DType::Q8_0_R16, 96},
                        {DType::Q4_0_R16, 320}, {DType::Q4_K_R16, 512}, {DType::Q6_K_R16, 768}};
  const bool r16 = cpu_features().avx512_vnni;
  for (const Case &k : cases) {
    if (dtype_rows16(k.dt) && !r16) continue;
    for (int64_t N : {16, 48, 80, 112}) {
      const std::vector<uint8_t> w = make_weights(rng, k.dt, N, k.K, pools[0]);
      const std::vector<float> bias = random_vec(rng, size_t(N));
      for (int64_t T : {1, 2, 3}) {
        const std::vector<float> x = random_vec(rng, size_t(T * k.K));
        for (int p = 0; p < 3; p++)
          for (bool with_bias : {false, true}) {
            std::vector<float> want(size_t(T * N), NAN), got(size_t(T * N), NAN);
            cpu_force_decode_reads(nullptr);
            matmul(pools[p], x.data(), w.data(), k.dt, want.data(), T, k.K, N, with_bias ? bias.data() : nullptr);
            for (int combo = 0; combo < 8; combo++) {
              const DecodeReads r{(combo & 1) != 0, (combo & 2) != 0, (combo & 4) != 0};
              cpu_force_decode_reads(&r);
              std::fill(got.begin(), got.end(), NAN);
              matmul(pools[p], x.data(), w.data(), k.dt, got.data(), T, k.K, N, with_bias ? bias.data() : nullptr);
              c.expect(std::memcmp(want.data(), got.data(), want.size() * 4) == 0,
                       std::string(dtype_name(k.dt)) + fmt(" K=%lld N=%lld T=%lld threads=%lld", k.K, N, T, p + 1) +
                           fmt(" bias=%lld reads=%lld", with_bias, combo));
            }
          }
      }
    }
  }
  cpu_force_decode_reads(nullptr);
}

}  // namespace kf_test

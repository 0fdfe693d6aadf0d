// cpu_kernels_avx512_test.cpp — the AVX-512 kernels that must give their AVX2 / scalar twins' bits
// exactly (activation blocks, SiLU and softmax, attention tiles), so that a model's logits do not
// depend on which path the CPU takes. Built into the binary of cpu_kernels_test.cpp (see there).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "../src/cpu_features.h"
#include "../src/cpu_ops.h"
#include "../src/cpu_quant.h"
#include "../src/cpu_quant_vnni512.h"
#include "cpu_kernels_check.h"

using namespace kf;

namespace kf_test {

// Activation blocks: the AVX-512 quantizer writes the scalar loop's bytes (scale, sum, values) for
// ordinary rows, all-zero blocks, blocks whose largest value ties or sits at a rounding edge, and
// blocks holding a NaN (ignored by the max in both; the NaN's own int8 is not defined).
void test_act_blocks_avx512() {
  if (cpu_force_path(CpuPath::Avx512) != CpuPath::Avx512) {
    std::printf("skip the AVX-512 activation quantizer: this CPU or build lacks AVX-512\n");
    return;
  }
  Check c("activation blocks: avx512 = scalar, byte for byte");
  Rng rng(41);
  const int64_t in = 32 * 40;
  std::vector<float> x = random_vec(rng, size_t(3 * in));
  for (int j = 0; j < 32; j++) x[size_t(32 + j)] = 0.0f;                       // block 1: zeros
  for (int j = 0; j < 32; j++) x[size_t(64 + j)] = float(j - 16) * 0.5f;       // halves: ties after scaling
  x[100] = NAN;                                                                // block 3: a NaN
  for (int j = 0; j < 32; j++) x[size_t(128 + j)] = 1e-30f * float(j + 1);    // tiny
  for (int j = 0; j < 32; j++) x[size_t(160 + j)] = 3e4f * rng.uniform();      // large
  x[20 * 32 + 7] = NAN;                                  // the second run of 16 blocks: a NaN
  for (int j = 0; j < 32; j++) x[size_t(35 * 32 + j)] = 0.0f;                  // the tail blocks: zeros
  std::vector<quant::ActBlock> want(size_t(3 * in / 32)), got(want.size());
  cpu_force_path(CpuPath::Scalar);
  quantize_act_rows(x.data(), in, in, 3, want.data());
  cpu_force_path(CpuPath::Avx512);
  quantize_act_rows(x.data(), in, in, 3, got.data());
  for (size_t b = 0; b < want.size(); b++) {
    if (b == 3 || b == 20) {  // the NaN's own value (and so the sums) is whatever int8(NaN) gives
      got[b].qs[b == 3 ? 4 : 7] = want[b].qs[b == 3 ? 4 : 7];
      got[b].sum = want[b].sum;
      got[b].sum16 = want[b].sum16;
    }
    int32_t sum = 0, sum16 = 0;  // the scalar blocks' sums, from their values
    for (int j = 0; j < 32; j++) sum += want[b].qs[j], sum16 += j < 16 ? want[b].qs[j] : 0;
    c.expect(want[b].sum == sum && want[b].sum16 == sum16, fmt("block %lld sums", (long long)b));
    c.expect(std::memcmp(&want[b], &got[b], sizeof(quant::ActBlock)) == 0, fmt("block %lld", (long long)b));
  }
  cpu_force_path(CpuPath::Amx);  // back to the best this CPU has
}

// SiLU and softmax: the AVX-512 exp gives the AVX2 kernels' bits (values and the softmax sum), on
// lengths with and without 16- and 8-wide tails and inputs at exp's edges (saturating above 88, zero
// below -87.3, -inf masked entries, a whole row masked); the AVX2 results also against float64.
void test_elementwise_avx512() {
  if (cpu_force_path(CpuPath::Avx512) != CpuPath::Avx512) {
    std::printf("skip the AVX-512 element-wise kernels: this CPU or build lacks AVX-512\n");
    return;
  }
  Check c("silu_mul and softmax: avx512 = avx2, bit for bit; against float64");
  Rng rng(47);
  for (int64_t n : {1, 7, 8, 15, 16, 17, 24, 31, 33, 64, 100, 257}) {
    const size_t len = size_t(n);
    std::vector<float> g(len), up = random_vec(rng, len), x(len);
    for (int64_t i = 0; i < n; i++) {
      g[size_t(i)] = 12.0f * rng.uniform();
      x[size_t(i)] = 9.0f * rng.uniform();
    }
    if (n > 5) {
      g[1] = 95.0f, g[2] = -95.0f, g[3] = -87.5f, g[4] = 88.5f;  // exp's saturation and underflow edges
      x[1] = -INFINITY, x[n - 2] = -INFINITY;                      // masked entries
    }
    struct Run { std::vector<float> silu, soft; };
    auto run = [&](CpuPath path, const std::vector<float> &sx) {
      cpu_force_path(path);
      Run r{g, sx};
      silu_mul(r.silu.data(), up.data(), n);
      softmax_inplace(r.soft.data(), n);
      return r;
    };
    const std::vector<float> masked(len, -INFINITY);
    for (const std::vector<float> *sx : {static_cast<const std::vector<float> *>(&x), &masked}) {
      const Run a = run(CpuPath::Avx2, *sx), b = run(CpuPath::Avx512, *sx);
      const std::string what = fmt("n=%lld", (long long)n) + (sx == &masked ? " all masked" : "");
      c.expect(std::memcmp(a.silu.data(), b.silu.data(), size_t(n) * 4) == 0, what + " silu");
      c.expect(std::memcmp(a.soft.data(), b.soft.data(), size_t(n) * 4) == 0, what + " softmax");
      double mx = -INFINITY, sum = 0;
      for (float v : *sx) mx = std::max(mx, double(v));
      for (float v : *sx) sum += std::isinf(v) ? 0.0 : std::exp(double(v) - mx);
      for (int64_t i = 0; i < n; i++) {
        const double gi = g[size_t(i)], want_silu = gi / (1 + std::exp(-gi)) * up[size_t(i)];
        c.add(std::fabs(a.silu[size_t(i)] - want_silu), 1e-6 * (1 + std::fabs(want_silu)), what + " silu ref");
        const double xi = (*sx)[size_t(i)];
        const double want = sum > 0 && !std::isinf(xi) ? std::exp(xi - mx) / sum : 0.0;
        c.add(std::fabs(a.soft[size_t(i)] - want), 1e-6 * (1e-3 + want), what + " softmax ref");
      }
    }
  }
  cpu_force_path(CpuPath::Amx);  // back to the best this CPU has
}

// Attention's tiles: the AVX-512 forms (key tile transpose, 4-row score and value tiles) give the AVX2
// kernels' bits, and the scores match float64, for head dims with and without a 32-wide tail, key
// counts that end inside a 16 and rows that are not whole 4s.
void test_attention_tiles() {
  if (cpu_force_path(CpuPath::Avx512) != CpuPath::Avx512) {
    std::printf("skip the AVX-512 attention tiles: this CPU or build lacks AVX-512\n");
    return;
  }
  Check c("attention tiles: avx512 = avx2, bit for bit; scores against float64");
  Rng rng(43);
  constexpr int64_t kts = 64;
  for (int64_t hd : {32, 64, 80, 128})
    for (int64_t jb : {1, 17, 64})
      for (int32_t nr : {1, 4, 7, 16}) {
        const int64_t q_stride = hd + 3, k_stride = 2 * hd;
        const std::vector<float> q = random_vec(rng, size_t(nr * q_stride)), k = random_vec(rng, size_t(jb * k_stride));
        const std::vector<float> p = random_vec(rng, size_t(nr * jb)), out0 = random_vec(rng, size_t(nr * hd));
        struct Run { std::vector<float> kt, s, out; };
        auto run = [&](CpuPath path) {
          cpu_force_path(path);
          Run r{std::vector<float>(size_t(hd * kts), 0.0f), std::vector<float>(size_t(nr * kts), NAN), out0};
          attn_key_tile(k.data(), k_stride, jb, hd, r.kt.data(), kts);
          attn_scores_tile(q.data(), q_stride, nr, r.kt.data(), kts, jb, hd, 0.125f, r.s.data(), kts);
          std::vector<const float *> ps;
          std::vector<float *> outs;
          for (int32_t i = 0; i < nr; i++) ps.push_back(p.data() + i * jb), outs.push_back(r.out.data() + i * hd);
          attn_values_rows(ps.data(), nr, k.data() + hd, k_stride, jb, hd, outs.data());  // values: k's second half
          return r;
        };
        const Run a = run(CpuPath::Avx2), b = run(CpuPath::Avx512);
        const std::string shape = fmt("hd=%lld jb=%lld nr=%d", (long long)hd, (long long)jb, nr);
        bool kt_same = true, s_same = true;
        for (int64_t d = 0; d < hd; d++)
          kt_same = kt_same && std::memcmp(&a.kt[size_t(d * kts)], &b.kt[size_t(d * kts)], size_t(jb) * 4) == 0;
        for (int32_t i = 0; i < nr; i++) {
          s_same = s_same && std::memcmp(&a.s[size_t(i * kts)], &b.s[size_t(i * kts)], size_t(jb) * 4) == 0;
          for (int64_t j = 0; j < jb; j++) {
            double ref = 0, mag = 0;
            for (int64_t d = 0; d < hd; d++) {
              ref += double(q[size_t(i * q_stride + d)]) * k[size_t(j * k_stride + d)];
              mag += std::fabs(double(q[size_t(i * q_stride + d)]) * k[size_t(j * k_stride + d)]);
            }
            c.add(std::fabs(b.s[size_t(i * kts + j)] - 0.125 * ref), 2e-6 * (1.0 + mag), shape + " score");
          }
        }
        c.expect(kt_same, shape + " key tile");
        c.expect(s_same, shape + " scores");
        c.expect(std::memcmp(a.out.data(), b.out.data(), a.out.size() * 4) == 0, shape + " values");
      }
  cpu_force_path(CpuPath::Amx);  // back to the best this CPU has
}

}  // namespace kf_test

// cpu_attention_rows_test.cpp — attn_rows_alone (cpu_attention_decode.cpp), the attention of decode
// rows over chunks of positions, against a double-precision softmax: MHA and GQA, head sizes its
// AVX-512 kernels take (64, 128) and others (32, 48), ranges that start past 0 (a sliding window)
// and span one chunk or many; the same bits at 1, 2 and 3 threads, for a row alone or in a batch, and
// (where AVX-512 runs) as the AVX2 path's.
#include <cmath>
#include <cstring>

#include "../src/cpu_features.h"
#include "../src/cpu_ops.h"
#include "cpu_kernels_check.h"

namespace kf_test {

using namespace kf;

void test_attention_rows_alone(const std::string &label, ThreadPool *pools) {
  Check ref("attn_rows_alone vs float64 softmax (" + label + ")");
  Check bits("attn_rows_alone: same bits at 1/2/3 threads, alone or batched, as avx2's (" + label + ")");
  struct Shape {
    int64_t nh, nkv, hd;
  };
  const Shape shapes[] = {{12, 12, 64}, {8, 2, 128}, {4, 4, 32}, {6, 3, 48}};
  const int64_t ranges[][2] = {{0, 1}, {0, 37}, {5, 300}, {0, 700}, {650, 1000}};
  Rng rng(91);
  for (const Shape &sh : shapes) {
    const int64_t kv_dim = sh.nkv * sh.hd, q_dim = sh.nh * sh.hd, group = sh.nh / sh.nkv;
    const float scale = 1.0f / std::sqrt(float(sh.hd));
    const int n = int(sizeof ranges / sizeof ranges[0]);
    std::vector<std::vector<float>> q(n), k(n), v(n), out(n), alone(n);
    std::vector<AttnRow> rows(n);
    for (int r = 0; r < n; r++) {
      const int64_t hi = ranges[r][1];
      q[r] = random_vec(rng, size_t(q_dim), -2.0f, 2.0f);
      k[r] = random_vec(rng, size_t(hi * kv_dim));
      v[r] = random_vec(rng, size_t(hi * kv_dim));
      out[r].assign(size_t(q_dim), NAN);
      rows[r] = {q[r].data(), k[r].data(), v[r].data(), ranges[r][0], hi, out[r].data()};
    }
    attn_rows_alone(pools[1], rows.data(), n, sh.nh, sh.nkv, sh.hd, scale);
    for (int r = 0; r < n; r++) {
      const int64_t lo = ranges[r][0], hi = ranges[r][1];
      for (int64_t h = 0; h < sh.nh; h++) {
        const int64_t kvh = h / group;
        std::vector<double> s(size_t(hi - lo));
        double mx = -INFINITY, sum = 0.0;
        for (int64_t j = lo; j < hi; j++) {
          double d = 0.0;
          for (int64_t e = 0; e < sh.hd; e++)
            d += double(q[r][size_t(h * sh.hd + e)]) * k[r][size_t(j * kv_dim + kvh * sh.hd + e)];
          s[size_t(j - lo)] = d * scale;
          mx = std::max(mx, s[size_t(j - lo)]);
        }
        for (double &x : s) sum += (x = std::exp(x - mx));
        for (int64_t e = 0; e < sh.hd; e++) {
          double o = 0.0;
          for (int64_t j = lo; j < hi; j++) o += s[size_t(j - lo)] / sum * v[r][size_t(j * kv_dim + kvh * sh.hd + e)];
          ref.add(std::fabs(o - out[r][size_t(h * sh.hd + e)]), 2e-6 + 2e-5 * std::fabs(o),
                  fmt("nh %lld hd %lld range end %lld", sh.nh, sh.hd, hi));
        }
      }
    }
    for (int p : {0, 2}) {
      std::vector<std::vector<float>> again(n, std::vector<float>(size_t(q_dim)));
      std::vector<AttnRow> rows2 = rows;
      for (int r = 0; r < n; r++) rows2[r].out = again[r].data();
      attn_rows_alone(pools[p], rows2.data(), n, sh.nh, sh.nkv, sh.hd, scale);
      for (int r = 0; r < n; r++)
        bits.expect(std::memcmp(again[r].data(), out[r].data(), size_t(q_dim) * sizeof(float)) == 0,
                    fmt("threads %lld nh %lld row %lld", p + 1, sh.nh, r));
    }
    // The AVX-512 chunk kernels keep the AVX2 loops' bits (their sums in the same order).
    if (cpu_path() >= CpuPath::Avx512) {
      const CpuPath was = cpu_path();
      std::vector<std::vector<float>> avx2(n, std::vector<float>(size_t(q_dim), NAN));
      std::vector<AttnRow> rows2 = rows;
      for (int r = 0; r < n; r++) rows2[r].out = avx2[r].data();
      cpu_force_path(CpuPath::Avx2);
      attn_rows_alone(pools[1], rows2.data(), n, sh.nh, sh.nkv, sh.hd, scale);
      cpu_force_path(was);
      for (int r = 0; r < n; r++)
        bits.expect(std::memcmp(avx2[r].data(), out[r].data(), size_t(q_dim) * sizeof(float)) == 0,
                    fmt("avx2 = avx512 nh %lld hd %lld row %lld", sh.nh, sh.hd, r));
    }
    for (int r = 0; r < n; r++) {
      alone[r].assign(size_t(q_dim), NAN);
      AttnRow one = rows[r];
      one.out = alone[r].data();
      attn_rows_alone(pools[1], &one, 1, sh.nh, sh.nkv, sh.hd, scale);
      bits.expect(std::memcmp(alone[r].data(), out[r].data(), size_t(q_dim) * sizeof(float)) == 0,
                  fmt("alone nh %lld row %lld", sh.nh, r));
    }
  }
}

}  // namespace kf_test

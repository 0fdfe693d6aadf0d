// cpu_kernels_check.h — what the CPU kernel tests share (ffi/tests/cpu_kernels_test.cpp and the
// files it is built with): a named check that prints one line and counts its failures, a seeded
// generator, and the functions each file contributes to main().
#pragma once

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "../src/common.h"
#include "../src/threadpool.h"

namespace kf_test {

inline int g_failed = 0;  // checks that failed, over every file of the test

struct Check {
  std::string name;
  double worst = 0.0;  // max err / bound
  int failures = 0, cases = 0;
  explicit Check(std::string n) : name(std::move(n)) {}
  void add(double err, double bound, const std::string &what) {
    cases++;
    const double r = bound > 0 ? err / bound : (err > 0 ? INFINITY : 0);
    if (!(err <= bound)) {
      if (failures < 5) std::printf("    FAIL %s: err %.3g > bound %.3g\n", what.c_str(), err, bound);
      failures++;
    }
    if (!(r <= worst)) worst = r;
  }
  void expect(bool ok, const std::string &what) { add(ok ? 0.0 : 1.0, 0.0, what); }
  ~Check() {
    if (failures) g_failed++;
    std::printf("%-4s %-60s %d cases, worst err/bound %.3g\n", failures ? "FAIL" : "ok", name.c_str(), cases, worst);
  }
};

struct Rng {  // xorshift64*: deterministic test data (cpu_ops_test.cpp uses it too)
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 0x2545F4914F6CDD1Dull;
  }
  float uniform(float lo = -1.0f, float hi = 1.0f) { return lo + (hi - lo) * float(double(next() >> 11) * 0x1.0p-53); }
};

inline std::vector<float> random_vec(Rng &rng, size_t n, float lo = -1.0f, float hi = 1.0f) {
  std::vector<float> v(n);
  for (float &f : v) f = rng.uniform(lo, hi);
  return v;
}

// Stored weights in a float dtype plus their exact values.
inline void make_float_weights(Rng &rng, kf::DType dt, size_t n, std::vector<uint8_t> &raw, std::vector<float> &exact) {
  const std::vector<float> f = random_vec(rng, n);
  raw.assign(n * kf::dtype_size(dt), 0);
  exact.resize(n);
  for (size_t i = 0; i < n; i++) {
    if (dt == kf::DType::F32) {
      std::memcpy(&raw[i * 4], &f[i], 4);
      exact[i] = f[i];
    } else {
      const uint16_t h = dt == kf::DType::BF16 ? kf::f32_to_bf16(f[i]) : kf::f32_to_f16(f[i]);
      std::memcpy(&raw[i * 2], &h, 2);
      exact[i] = dt == kf::DType::BF16 ? kf::bf16_to_f32(h) : kf::f16_to_f32(h);
    }
  }
}

// Random k-quant blocks (Q4_K or Q6_K) of n rows of K values: every byte random but the f16 scales.
inline std::vector<uint8_t> random_k_blocks(Rng &rng, kf::DType dt, int64_t n, int64_t K) {
  std::vector<uint8_t> raw(size_t(n) * kf::dtype_row_bytes(dt, K));
  for (uint8_t &b : raw) b = uint8_t(rng.uniform() * 127.5f + 128.0f);
  const size_t bs = kf::dtype_row_bytes(dt, 256);
  for (size_t at = 0; at < raw.size(); at += bs) {
    const uint16_t d = kf::f32_to_f16(0.002f + 0.01f * std::fabs(rng.uniform()));
    const uint16_t dmin = kf::f32_to_f16(0.002f + 0.01f * std::fabs(rng.uniform()));
    if (dt == kf::DType::Q4_K) std::memcpy(&raw[at], &d, 2), std::memcpy(&raw[at + 2], &dmin, 2);
    else std::memcpy(&raw[at + bs - 2], &d, 2);  // Q6_K's d ends the block
  }
  return raw;
}

inline std::string fmt(const char *f, long long a, long long b = 0, long long c = 0, long long d = 0) {
  char buf[160];
  std::snprintf(buf, sizeof buf, f, a, b, c, d);
  return buf;
}

// Whether f raises a kf::Error.
template <class F>
bool throws_error(F &&f) {
  try {
    f();
  } catch (const kf::Error &) {
    return true;
  }
  return false;
}

// ffi/tests/cpu_kernels_avx512_test.cpp: the AVX-512 element-wise, activation-block and attention-tile
// kernels against their AVX2 / scalar twins, bit for bit.
void test_act_blocks_avx512();
void test_elementwise_avx512();
void test_attention_tiles();
// ffi/tests/cpu_attention_rows_test.cpp: attn_rows_alone against a float64 softmax, on the path in force.
void test_attention_rows_alone(const std::string &label, kf::ThreadPool *pools);
// cpu_decode_reads_test.cpp
void test_decode_reads(kf::ThreadPool *pools);

}  // namespace kf_test

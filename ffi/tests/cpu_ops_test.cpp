// cpu_ops_test.cpp — every CPU kernel and the thread pool against straightforward float64 references.
//
// Build and run (from the repository root):
//   g++ -std=c++17 -O2 -march=native -pthread -Iffi/include ffi/tests/cpu_ops_test.cpp ffi/src/cpu_ops.cpp
//       ffi/src/threadpool.cpp ffi/src/common.cpp -o build/cpu_ops_test && build/cpu_ops_test
// Prints one line per check ("ok"/"FAIL", the worst error seen and its bound) and exits nonzero if any
// check failed. Failing cases inside a check are printed with their shapes.
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "../src/common.h"
#include "../src/cpu_features.h"
#include "../src/cpu_ops.h"
#include "../src/threadpool.h"
#include "cpu_kernels_check.h"

using namespace kf;

namespace {

int g_failed = 0, g_checks = 0;

// Collects the worst error of one check; prints at most a few failing cases in detail.
struct Check {
  std::string name;
  double worst_ratio = 0.0;  // max over cases of err / bound
  double worst_err = 0.0, worst_bound = 0.0;
  int failures = 0;
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  explicit Check(std::string n) : name(std::move(n)) {}
  // Records one case: err must be <= bound (NaN err fails).
  void add(double err, double bound, const std::string &what) {
    const double ratio = bound > 0 ? err / bound : (err > 0 ? INFINITY : 0);
    if (!(err <= bound)) {
      if (failures < 5) std::printf("    FAIL case %s: err %.3g > bound %.3g\n", what.c_str(), err, bound);
      failures++;
    }
    if (!(ratio <= worst_ratio)) {
      worst_ratio = ratio;
      worst_err = err;
      worst_bound = bound;
    }
  }
  void expect(bool ok, const std::string &what) { add(ok ? 0.0 : 1.0, 0.0, what); }
  ~Check() {
    g_checks++;
    if (failures) g_failed++;
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("%-4s %-52s worst err %.3g (bound %.3g) %.2fs%s\n", failures ? "FAIL" : "ok", name.c_str(), worst_err,
                worst_bound, sec, failures ? (" — " + std::to_string(failures) + " case(s) failed").c_str() : "");
  }
};

using kf_test::random_vec;
using kf_test::Rng;

// Stored weights in dtype dt plus their exact f32 values (what the reference multiplies by).
struct Weights {
  std::vector<uint8_t> raw;
  std::vector<float> exact;
};
Weights make_weights(Rng &rng, DType dt, size_t n) {
  Weights w;
  std::vector<float> f = random_vec(rng, n);
  w.raw.resize(n * dtype_size(dt));
  w.exact.resize(n);
  for (size_t i = 0; i < n; i++) {
    if (dt == DType::F32) {
      std::memcpy(&w.raw[i * 4], &f[i], 4);
      w.exact[i] = f[i];
    } else {
      const uint16_t h = dt == DType::BF16 ? f32_to_bf16(f[i]) : f32_to_f16(f[i]);
      std::memcpy(&w.raw[i * 2], &h, 2);
      w.exact[i] = dt == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
    }
  }
  return w;
}

std::string shape(const char *fmt, long long a, long long b = 0, long long c = 0, long long d = 0, long long e = 0) {
  char buf[160];
  std::snprintf(buf, sizeof buf, fmt, a, b, c, d, e);
  return buf;
}

// ---------------------------------------------------------------------------------------------

void test_threadpool() {
  {
    Check c("threadpool parallel_for covers each task once");
    for (int nt : {1, 2, 3, 4}) {
      ThreadPool pool(nt);
      c.expect(pool.size() == nt, shape("size threads=%lld", nt));
      for (int64_t n : {0, 1, 2, 3, 7, 1000, 100000}) {
        std::vector<std::atomic<int>> hits(size_t(n > 0 ? n : 1));
        for (auto &h : hits) h = 0;
        std::atomic<int> bad_thread{0};
        pool.parallel_for(n, [&](int64_t i, int th) {
          hits[size_t(i)].fetch_add(1, std::memory_order_relaxed);
          if (th < 0 || th >= nt) bad_thread = 1;
        });
        bool once = true;
        for (int64_t i = 0; i < n; i++) once &= hits[size_t(i)] == 1;
        c.expect(once && !bad_thread, shape("threads=%lld n=%lld", nt, n));
      }
    }
  }
  {
    Check c("threadpool run_per_thread, nesting, sleep and wake");
    for (int nt : {1, 2, 3, 5}) {
      ThreadPool pool(nt);
      std::vector<std::atomic<int>> hits(static_cast<size_t>(nt));
      for (auto &h : hits) h = 0;
      pool.run_per_thread([&](int th, int n) {
        if (n == nt && th >= 0 && th < nt) hits[size_t(th)]++;
      });
      bool ok = true;
      for (auto &h : hits) ok &= h == 1;
      c.expect(ok, shape("run_per_thread threads=%lld", nt));

      // A nested region runs inline and still covers every task.
      std::atomic<int64_t> total{0};
      pool.parallel_for(6, [&](int64_t, int) { pool.parallel_for(10, [&](int64_t i, int) { total += i; }); });
      c.expect(total == 6 * 45, shape("nested threads=%lld", nt));

      // Many short regions back to back (the decode pattern), then again after the workers slept.
      for (int round = 0; round < 2; round++) {
        std::atomic<int64_t> sum{0};
        for (int r = 0; r < 5000; r++) pool.parallel_for(nt * 2, [&](int64_t i, int) { sum += i; });
        c.expect(sum == int64_t(5000) * (2 * nt) * (2 * nt - 1) / 2, shape("stress threads=%lld round=%lld", nt, round));
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
  }
  {
    Check c("threadpool two pools driven concurrently");
    ThreadPool a(2), b(3);
    std::atomic<int64_t> sa{0}, sb{0};
    std::thread other([&] {
      for (int r = 0; r < 2000; r++) b.parallel_for(7, [&](int64_t i, int) { sb += i; });
    });
    for (int r = 0; r < 2000; r++) a.parallel_for(5, [&](int64_t i, int) { sa += i; });
    other.join();
    c.expect(sa == 2000 * 10 && sb == 2000 * 21, "two pools");
  }
  {
    // kvfold.h allows two sessions of one engine (one pool) to run at once: regions serialise.
    Check c("threadpool one pool driven by two threads at once");
    for (int nt : {1, 2, 3}) {
      ThreadPool pool(nt);
      std::atomic<int64_t> s1{0}, s2{0};
      std::thread other([&] {
        for (int r = 0; r < 2000; r++) pool.parallel_for(7, [&](int64_t i, int) { s2 += i; });
      });
      for (int r = 0; r < 2000; r++) pool.run_per_thread([&](int th, int) { s1 += th + 1; });
      other.join();
      c.expect(s1 == int64_t(2000) * nt * (nt + 1) / 2 && s2 == 2000 * 21, shape("threads=%lld", nt));
    }
  }
  {
    Check c("threadpool construct/destroy repeatedly");
    bool ok = true;
    for (int r = 0; r < 50; r++) {
      ThreadPool p(1 + r % 4);
      std::atomic<int> n{0};
      p.parallel_for(9, [&](int64_t, int) { n++; });
      ok &= n == 9;
    }
    c.expect(ok, "construct/destroy");
  }
}

// ---------------------------------------------------------------------------------------------

void test_matmul() {
  const int64_t Ts[] = {1, 2, 3, 4, 5, 7, 8, 9, 17, 64, 130};  // matvec up to kMatvecMaxT = 8, then GEMM
  const int64_t ins[] = {8, 24, 64, 100, 768, 1600};  // 1600: 16-bit rows take the long-row matvec
  const int64_t outs[] = {1, 5, 16, 33, 100, 2048};
  ThreadPool pools[] = {ThreadPool(1), ThreadPool(2), ThreadPool(3)};
  Rng rng(42);
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    for (int64_t T : Ts) {
      Check c(std::string("matmul ") + dtype_name(dt) + " T=" + std::to_string(T) +
              (T <= kMatvecMaxT ? " (matvec)" : " (gemm)"));
      for (int64_t in : ins)
        for (int64_t out : outs) {
          const std::vector<float> x = random_vec(rng, size_t(T * in));
          const Weights w = make_weights(rng, dt, size_t(out * in));
          const std::vector<float> bias = random_vec(rng, size_t(out));
          for (int with_bias = 0; with_bias < 2; with_bias++) {
            // Reference: float64 sums of the same (exactly converted) values.
            std::vector<double> ref(size_t(T * out));
            double ref_max = 0.0;
            for (int64_t t = 0; t < T; t++)
              for (int64_t o = 0; o < out; o++) {
                double s = with_bias ? double(bias[size_t(o)]) : 0.0;
                for (int64_t i = 0; i < in; i++) s += double(x[size_t(t * in + i)]) * double(w.exact[size_t(o * in + i)]);
                ref[size_t(t * out + o)] = s;
                ref_max = std::max(ref_max, std::fabs(s));
              }
            const double bound = 1e-5 * (1.0 + ref_max);
            std::vector<float> first;
            for (int p = 0; p < 3; p++) {
              std::vector<float> y(size_t(T * out), NAN);
              matmul(pools[p], x.data(), w.raw.data(), dt, y.data(), T, in, out, with_bias ? bias.data() : nullptr);
              double err = 0.0;
              for (size_t k = 0; k < y.size(); k++) {
                const double e = std::fabs(double(y[k]) - ref[k]);
                err = std::isnan(e) ? INFINITY : std::max(err, e);
              }
              const std::string what = shape("in=%lld out=%lld bias=%lld threads=%lld", in, out, with_bias, p + 1);
              c.add(err, bound, what);
              // Same bits whatever the thread count (the header promises it).
              if (p == 0) first = y;
              else c.expect(std::memcmp(first.data(), y.data(), y.size() * sizeof(float)) == 0, what + " deterministic");
            }
          }
        }
    }
  }
  {
    // Weights straight from a file may sit at any byte offset.
    Check c("matmul with W at an odd address");
    for (DType dt : {DType::F32, DType::F16, DType::BF16})
      for (int64_t T : {1, 4, 20})
        for (int64_t in : {100, 768}) {
          const int64_t out = 37;
          const std::vector<float> x = random_vec(rng, size_t(T * in));
          const Weights w = make_weights(rng, dt, size_t(out * in));
          std::vector<uint8_t> shifted(w.raw.size() + 1);
          std::memcpy(shifted.data() + 1, w.raw.data(), w.raw.size());
          std::vector<float> a(size_t(T * out)), b(size_t(T * out));
          matmul(pools[1], x.data(), w.raw.data(), dt, a.data(), T, in, out, nullptr);
          matmul(pools[1], x.data(), shifted.data() + 1, dt, b.data(), T, in, out, nullptr);
          c.expect(a == b, std::string(dtype_name(dt)) + shape(" T=%lld in=%lld", T, in));
        }
  }
  {
    // Two threads running GEMMs (which use the pool's per-thread scratch) on one pool at once.
    Check c("matmul from two threads on one pool");
    const int64_t T = 40, in = 300, out = 200;
    const std::vector<float> x1 = random_vec(rng, size_t(T * in)), x2 = random_vec(rng, size_t(T * in));
    const Weights w = make_weights(rng, DType::BF16, size_t(out * in));
    for (int p = 0; p < 3; p++) {
      std::vector<float> r1(size_t(T * out)), r2(size_t(T * out));
      matmul(pools[p], x1.data(), w.raw.data(), DType::BF16, r1.data(), T, in, out, nullptr);
      matmul(pools[p], x2.data(), w.raw.data(), DType::BF16, r2.data(), T, in, out, nullptr);
      bool same = true;
      std::thread other([&] {
        std::vector<float> y(size_t(T * out));
        for (int r = 0; r < 200; r++) {
          matmul(pools[p], x2.data(), w.raw.data(), DType::BF16, y.data(), T, in, out, nullptr);
          if (y != r2) same = false;
        }
      });
      std::vector<float> y(size_t(T * out));
      bool same1 = true;
      for (int r = 0; r < 200; r++) {
        matmul(pools[p], x1.data(), w.raw.data(), DType::BF16, y.data(), T, in, out, nullptr);
        if (y != r1) same1 = false;
      }
      other.join();
      c.expect(same && same1, shape("threads=%lld", p + 1));
    }
  }
  {
    Check c("matmul in=0 gives bias / zeros");
    ThreadPool pool(2);
    float bias[3] = {1, 2, 3}, y[6];
    matmul(pool, nullptr, nullptr, DType::F32, y, 2, 0, 3, bias);
    c.expect(y[0] == 1 && y[5] == 3, "in=0 bias");
    matmul(pool, nullptr, nullptr, DType::BF16, y, 2, 0, 3, nullptr);
    c.expect(y[0] == 0 && y[5] == 0, "in=0 no bias");
  }
}

// ---------------------------------------------------------------------------------------------

void test_norm_and_elementwise() {
  Rng rng(7);
  const int64_t ns[] = {1, 7, 8, 9, 16, 33, 64, 100, 768, 4099};
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    Check c(std::string("rmsnorm / rmsnorm_rows ") + dtype_name(dt));
    ThreadPool pool(2);
    for (int64_t n : ns)
      for (int64_t T : {1, 3, 64}) {
        const std::vector<float> x = random_vec(rng, size_t(T * n), -3.0f, 3.0f);
        const Weights w = make_weights(rng, dt, size_t(n));
        const float eps = 1e-5f;
        std::vector<float> y(size_t(T * n)), y_inplace = x;
        rmsnorm_rows(pool, y.data(), x.data(), w.raw.data(), dt, T, n, eps);
        rmsnorm_rows(pool, y_inplace.data(), y_inplace.data(), w.raw.data(), dt, T, n, eps);
        double err = 0.0, mx = 0.0;
        for (int64_t t = 0; t < T; t++) {
          double ss = 0.0;
          for (int64_t i = 0; i < n; i++) ss += double(x[size_t(t * n + i)]) * x[size_t(t * n + i)];
          const double inv = 1.0 / std::sqrt(ss / double(n) + double(eps));
          for (int64_t i = 0; i < n; i++) {
            const double r = double(x[size_t(t * n + i)]) * inv * double(w.exact[size_t(i)]);
            err = std::max(err, std::fabs(r - double(y[size_t(t * n + i)])));
            mx = std::max(mx, std::fabs(r));
          }
        }
        c.add(err, 1e-5 * (1.0 + mx), shape("n=%lld T=%lld", n, T));
        c.expect(std::memcmp(y.data(), y_inplace.data(), y.size() * 4) == 0, shape("in place n=%lld T=%lld", n, T));
      }
    if (dt == DType::F32) {  // the f32-weight convenience overloads
      std::vector<float> x = random_vec(rng, 100), w = random_vec(rng, 100), a(100), b(100);
      rmsnorm(a.data(), x.data(), w.data(), 100, 1e-6f);
      rmsnorm(b.data(), x.data(), w.data(), DType::F32, 100, 1e-6f);
      c.expect(a == b, "f32 overload");
    }
  }
  {
    Check c("softmax_inplace");
    for (int64_t n : {1, 5, 8, 17, 100, 1000, 4097}) {
      for (float scale : {1.0f, 30.0f, 200.0f}) {
        std::vector<float> x = random_vec(rng, size_t(n), -scale, scale);
        if (n > 4) x[3] = -INFINITY;  // a masked position
        std::vector<float> y = x;
        softmax_inplace(y.data(), n);
        double mx = -INFINITY;
        for (float v : x) mx = std::max(mx, double(v));
        double sum = 0.0;
        for (float v : x) sum += std::exp(double(v) - mx);
        double err = 0.0;
        for (int64_t i = 0; i < n; i++) {
          const double r = std::exp(double(x[size_t(i)]) - mx) / sum;
          err = std::max(err, std::fabs(r - double(y[size_t(i)])) / (r + 1e-30) * (r > 1e-30));
        }
        c.add(err, 2e-5, shape("n=%lld scale=%lld (relative error)", n, (long long)scale));
        if (n > 4) c.expect(y[3] == 0.0f, shape("masked entry is 0, n=%lld", n));
      }
    }
    std::vector<float> all_masked(9, -INFINITY);
    softmax_inplace(all_masked.data(), 9);
    bool finite = true;
    for (float v : all_masked) finite &= std::isfinite(v);
    c.expect(finite, "all -inf stays finite");
  }
  {
    Check c("dot_f32 / axpy_f32 / add_inplace");
    for (int64_t n : {0, 1, 7, 8, 15, 16, 17, 64, 128, 1000}) {
      const std::vector<float> a = random_vec(rng, size_t(n)), b = random_vec(rng, size_t(n));
      double r = 0.0, ra = 0.0;
      for (int64_t i = 0; i < n; i++) {
        r += double(a[size_t(i)]) * b[size_t(i)];
        ra += std::fabs(double(a[size_t(i)]) * b[size_t(i)]);
      }
      c.add(std::fabs(double(dot_f32(a.data(), b.data(), n)) - r), 1e-6 * (1.0 + ra), shape("dot n=%lld", n));
      std::vector<float> y = b, z = b;
      axpy_f32(0.37f, a.data(), y.data(), n);
      add_inplace(z.data(), a.data(), n);
      double ey = 0.0, ez = 0.0;
      for (int64_t i = 0; i < n; i++) {
        ey = std::max(ey, std::fabs(double(y[size_t(i)]) - (double(b[size_t(i)]) + 0.37 * double(a[size_t(i)]))));
        ez = std::max(ez, std::fabs(double(z[size_t(i)]) - (double(b[size_t(i)]) + double(a[size_t(i)]))));
      }
      c.add(ey, 3e-7, shape("axpy n=%lld", n));
      c.add(ez, 3e-7, shape("add n=%lld", n));
    }
  }
  {
    Check c("silu_mul (incl. |x| up to 1e4)");
    for (int64_t n : {1, 7, 8, 9, 100, 1001}) {
      std::vector<float> g = random_vec(rng, size_t(n), -12.0f, 12.0f), up = random_vec(rng, size_t(n), -2.0f, 2.0f);
      const float extremes[] = {-1e4f, -100.0f, -88.5f, -87.0f, 0.0f, 87.5f, 89.0f, 1e4f};
      for (size_t i = 0; i < std::min(size_t(n), size_t(8)); i++) g[i] = extremes[(i + size_t(n)) % 8];
      std::vector<float> y = g;
      silu_mul(y.data(), up.data(), n);
      double err = 0.0;
      for (int64_t i = 0; i < n; i++) {
        const double gi = g[size_t(i)], r = gi / (1.0 + std::exp(-gi)) * double(up[size_t(i)]);
        const double e = std::fabs(double(y[size_t(i)]) - r) / (1.0 + std::fabs(r));
        err = std::isfinite(y[size_t(i)]) ? std::max(err, e) : INFINITY;
      }
      c.add(err, 1e-6, shape("n=%lld", n));
    }
  }
}

// ---------------------------------------------------------------------------------------------

bool same_half(uint16_t a, uint16_t b, DType dt) {  // NaNs compare equal to NaNs
  auto is_nan = [&](uint16_t h) {
    return dt == DType::BF16 ? (h & 0x7fff) > 0x7f80 : (h & 0x7fff) > 0x7c00;
  };
  return a == b || (is_nan(a) && is_nan(b));
}

void test_convert() {
  Rng rng(99);
  std::vector<float> src;
  // Specials, halfway cases and ranges around f16's limits and subnormals.
  const float specials[] = {0.0f, -0.0f, 1.0f, -1.0f, 65504.0f, 65520.0f, 65519.99f, 1e10f, -1e10f, 6.1e-5f, 6.0e-8f,
                            2.9e-8f, 3.0e-8f, 1e-40f, INFINITY, -INFINITY, NAN, -NAN, 1.00048828125f, 1.00146484375f,
                            std::numeric_limits<float>::max(), std::numeric_limits<float>::denorm_min()};
  for (float f : specials) src.push_back(f);
  for (int i = 0; i < 20000; i++) {
    // Random bit patterns cover every exponent; plus values in f16's range.
    uint32_t u = uint32_t(rng.next());
    float f;
    std::memcpy(&f, &u, 4);
    src.push_back(f);
    src.push_back(rng.uniform(-70000.0f, 70000.0f) * std::pow(2.0f, -float(rng.next() % 40)));
  }
  for (DType dt : {DType::F16, DType::BF16}) {
    Check c(std::string("convert f32 <-> ") + dtype_name(dt) + " (bit-exact vs scalar)");
    for (size_t n : {size_t(1), size_t(7), size_t(8), size_t(23), src.size()}) {
      std::vector<uint16_t> h(n);
      convert_f32_to(src.data(), dt, h.data(), int64_t(n));
      int bad = 0;
      for (size_t i = 0; i < n; i++) {
        const uint16_t want = dt == DType::BF16 ? f32_to_bf16(src[i]) : f32_to_f16(src[i]);
        bad += !same_half(h[i], want, dt);
      }
      c.expect(bad == 0, shape("to half n=%lld mismatches=%lld", (long long)n, bad));
      std::vector<float> back(n);
      convert_row_to_f32(h.data(), dt, back.data(), int64_t(n));
      bad = 0;
      for (size_t i = 0; i < n; i++) {
        const float want = dt == DType::BF16 ? bf16_to_f32(h[i]) : f16_to_f32(h[i]);
        bad += !(std::memcmp(&want, &back[i], 4) == 0 || (std::isnan(want) && std::isnan(back[i])));
      }
      c.expect(bad == 0, shape("to f32 n=%lld mismatches=%lld", (long long)n, bad));
    }
    // Every 16-bit pattern widens exactly.
    std::vector<uint16_t> all(65536);
    for (size_t i = 0; i < all.size(); i++) all[i] = uint16_t(i);
    std::vector<float> wide(all.size());
    convert_row_to_f32(all.data(), dt, wide.data(), int64_t(all.size()));
    int bad = 0;
    for (size_t i = 0; i < all.size(); i++) {
      const float want = dt == DType::BF16 ? bf16_to_f32(all[i]) : f16_to_f32(all[i]);
      bad += !(std::memcmp(&want, &wide[i], 4) == 0 || (std::isnan(want) && std::isnan(wide[i])));
    }
    c.expect(bad == 0, shape("all 65536 patterns mismatches=%lld", bad));
  }
  {
    Check c("convert f32 <-> F32 (copy)");
    std::vector<float> a = random_vec(rng, 37), b(37), d(37);
    convert_f32_to(a.data(), DType::F32, b.data(), 37);
    convert_row_to_f32(b.data(), DType::F32, d.data(), 37);
    c.expect(a == d, "copy");
  }
}

// available_memory_bytes is what the kernel can hand out (MemAvailable: free pages plus droppable
// cache), not free pages alone: a process that has read a few model files has most of its memory in
// page cache, and loads were refused with 20 GiB to spare.
void test_available_memory() {
  Check c("available memory counts the droppable page cache (MemAvailable)");
  FILE *f = std::fopen("/proc/meminfo", "r");
  if (!f) {
    std::printf("  (no /proc/meminfo here: skipped)\n");
    return;
  }
  double mem_available = -1, mem_total = -1;
  char line[256];
  while (std::fgets(line, sizeof line, f)) {
    if (std::strncmp(line, "MemAvailable:", 13) == 0) mem_available = std::atof(line + 13) * 1024.0;
    if (std::strncmp(line, "MemTotal:", 9) == 0) mem_total = std::atof(line + 9) * 1024.0;
  }
  std::fclose(f);
  const double got = available_memory_bytes();
  char what[160];
  std::snprintf(what, sizeof what, "%.0f MiB; MemAvailable %.0f MiB of %.0f MiB", got / 1048576.0,
                mem_available / 1048576.0, mem_total / 1048576.0);
  c.expect(got > 0 && got <= mem_total, what);
  // With no cgroup v2 limit the value is MemAvailable read a moment apart (within 2% + 64 MiB).
  FILE *limit = std::fopen("/sys/fs/cgroup/memory.max", "r");
  if (limit) std::fclose(limit);
  else c.expect(std::fabs(got - mem_available) <= 0.02 * mem_available + 64.0 * 1048576.0, what);
}

void test_bandwidth() {
  Check c("measure_read_bandwidth returns a plausible number");
  ThreadPool pool(2);
  kf_control ctl{};
  const double gbs = measure_read_bandwidth(pool, int64_t(8) << 20, 2, &ctl);
  c.expect(gbs > 0.1 && gbs < 10000.0, shape("8 MiB: %lld GB/s", (long long)gbs));
  c.expect(ctl.done == 2 && ctl.total == 2, shape("progress %lld of %lld passes", (long long)ctl.done,
                                                  (long long)ctl.total));
}

void test_bandwidth_cancel() {
  Check c("measure_read_bandwidth stops at a set cancel flag");
  ThreadPool pool(2);
  kf_control ctl{};
  ctl.cancel = 1;
  kf_status got = KF_OK;
  try {
    measure_read_bandwidth(pool, int64_t(8) << 20, 2, &ctl);
  } catch (const Error &e) {
    got = e.code;
  }
  c.expect(got == KF_ERR_CANCELLED && ctl.done == 0, shape("status %lld, %lld passes done", (long long)got,
                                                           (long long)ctl.done));
}

}  // namespace

int main() {
  // This file checks the AVX2 kernels (and, built without AVX2, the scalar ones) with tight f32
  // bounds; cpu_kernels_test.cpp checks every run-time path, bf16 dot products included.
  cpu_force_path(CpuPath::Avx2);
  std::printf("cpu_ops_test (%s)\n", cpu_simd_name());
  try {
    test_threadpool();
    test_convert();
    test_norm_and_elementwise();
    test_matmul();
    test_bandwidth();
    test_bandwidth_cancel();
    test_available_memory();
  } catch (const std::exception &e) {
    std::printf("FAIL unexpected exception: %s\n", e.what());
    return 2;
  }
  std::printf("%d of %d checks passed\n", g_checks - g_failed, g_checks);
  return g_failed ? 1 : 0;
}

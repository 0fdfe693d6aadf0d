// cpu_ops_bench.cpp — throughput of the CPU kernels beside the machine's ceilings.
//
// Build and run (from the repository root; -O3 as the library is built):
//   g++ -std=c++17 -O3 -march=native -pthread -Iffi/include bench/cpu_ops_bench.cpp ffi/src/cpu_ops.cpp
//       ffi/src/threadpool.cpp ffi/src/common.cpp -o build/cpu_ops_bench && build/cpu_ops_bench [out.json]
//
// For 1 and 2 threads (or the counts given by KF_BENCH_THREADS="1,2,4") it prints:
// - memory read bandwidth (GB/s) over 512 MiB, the ceiling for decode;
// - FMA peak (GFLOP/s) from a register-only loop, the ceiling for prefill;
// - the cost of an empty parallel region (µs);
// - matvec (T = 1) GB/s of weight streamed and % of the read bandwidth, per dtype and shape, "cold"
//   (cycling through >= 256 MiB of weight copies so every call reads DRAM, as a decode step through
//   all layers does) and "hot" (one copy, L2/L3-resident);
// - GEMM GFLOP/s at T = 128 and % of the FMA peak, per dtype and shape.
// With a path argument, the same rows are also written there as JSON.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../src/common.h"
#include "../src/cpu_ops.h"
#include "../src/threadpool.h"

#ifdef __FMA__
#include <immintrin.h>
#endif

using namespace kf;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct Shape {
  int64_t in, out;
};
const Shape kShapes[] = {{768, 768}, {768, 2048}, {2048, 768}, {768, 32000}};
const DType kDtypes[] = {DType::F32, DType::BF16, DType::F16};

std::vector<uint8_t> random_weights(DType dt, int64_t n, uint64_t seed) {
  std::vector<float> f(static_cast<size_t>(n));
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (float &v : f) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    v = float(int64_t(s >> 40) - (1 << 23)) / float(1 << 23);
  }
  std::vector<uint8_t> raw(size_t(n) * dtype_size(dt));
  convert_f32_to(f.data(), dt, raw.data(), n);
  return raw;
}

// FMA throughput of every thread on register-only data: 12 independent accumulator chains.
double fma_peak_gflops(ThreadPool &pool) {
#ifdef __FMA__
  const int64_t iters = 20000000;
  double best = 0.0;
  for (int rep = 0; rep < 3; rep++) {
    float sink[64] = {};
    const auto t0 = Clock::now();
    pool.run_per_thread([&](int th, int) {
      __m256 acc[12];
      for (int j = 0; j < 12; j++) acc[j] = _mm256_set1_ps(float(j) * 1e-3f);
      const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
      for (int64_t i = 0; i < iters; i++) {
        for (int j = 0; j < 12; j++) acc[j] = _mm256_fmadd_ps(acc[j], a, b);
        __asm__ volatile("" : "+x"(acc[0]), "+x"(acc[1]), "+x"(acc[2]), "+x"(acc[3]), "+x"(acc[4]), "+x"(acc[5]),
                         "+x"(acc[6]), "+x"(acc[7]), "+x"(acc[8]), "+x"(acc[9]), "+x"(acc[10]), "+x"(acc[11]));
      }
      __m256 s = acc[0];
      for (int j = 1; j < 12; j++) s = _mm256_add_ps(s, acc[j]);
      sink[th % 64] = _mm256_cvtss_f32(s);
    });
    const double sec = seconds_since(t0);
    volatile float keep = sink[0];
    (void)keep;
    best = std::max(best, double(pool.size()) * double(iters) * 12 * 16 / sec / 1e9);
  }
  return best;
#else
  (void)pool;
  return 0.0;
#endif
}

double region_latency_us(ThreadPool &pool) {
  const int n = 200000;
  for (int i = 0; i < 1000; i++) pool.run_per_thread([](int, int) {});
  const auto t0 = Clock::now();
  for (int i = 0; i < n; i++) pool.run_per_thread([](int, int) {});
  return seconds_since(t0) / n * 1e6;
}

// Calls fn(i) for i = 0, 1, ... until at least min_sec have passed (after a warm-up); seconds per call.
template <class F>
double time_per_call(F &&fn, double min_sec) {
  for (int i = 0; i < 3; i++) fn(i);
  int64_t calls = 0;
  const auto t0 = Clock::now();
  double sec = 0.0;
  do {
    fn(calls++);
    sec = seconds_since(t0);
  } while (sec < min_sec || calls < 5);
  return sec / double(calls);
}

struct Row {
  std::string kernel, dtype;
  int threads;
  int64_t T, in, out;
  double value;  // GB/s or GFLOP/s
  std::string unit;
  double pct;  // of the matching ceiling
};

}  // namespace

int main(int argc, char **argv) {
  std::vector<int> thread_counts = {1, 2};
  if (const char *env = std::getenv("KF_BENCH_THREADS")) {
    thread_counts.clear();
    for (const char *p = env; *p;) {
      thread_counts.push_back(std::max(1, std::atoi(p)));
      while (*p && *p != ',') p++;
      if (*p == ',') p++;
    }
  }
  std::printf("cpu_ops_bench (%s)\n", cpu_simd_name());
  std::vector<Row> rows;

  for (int nt : thread_counts) {
    ThreadPool pool(nt);
    const double bw = measure_read_bandwidth(pool, int64_t(512) << 20, 5);
    const double peak = fma_peak_gflops(pool);
    const double lat = region_latency_us(pool);
    std::printf("\n== %d thread(s): read bandwidth %.1f GB/s, FMA peak %.1f GFLOP/s, empty region %.2f us\n", nt, bw,
                peak, lat);
    rows.push_back({"read_bandwidth", "-", nt, 0, 0, 0, bw, "GB/s", 100.0});
    rows.push_back({"fma_peak", "F32", nt, 0, 0, 0, peak, "GFLOP/s", 100.0});
    rows.push_back({"empty_region", "-", nt, 0, 0, 0, lat, "us", 0.0});

    std::printf("%-6s %-12s %12s %8s %12s %8s %14s %8s\n", "dtype", "in->out", "matvec cold", "% bw", "matvec hot",
                "% bw", "gemm T=128", "% peak");
    for (DType dt : kDtypes) {
      for (const Shape &s : kShapes) {
        const int64_t n = s.in * s.out;
        const size_t bytes = size_t(n) * dtype_size(dt);
        // Enough copies that one pass over them overflows the 32 MiB L3 many times.
        const size_t copies = std::max<size_t>(2, (size_t(256) << 20) / bytes);
        std::vector<std::vector<uint8_t>> w;
        for (size_t c = 0; c < copies; c++) w.push_back(random_weights(dt, n, c + 1));
        std::vector<float> x(size_t(128 * s.in), 0.5f), y(size_t(128 * s.out));

        const double cold = time_per_call(
            [&](int64_t i) { matmul(pool, x.data(), w[size_t(i) % copies].data(), dt, y.data(), 1, s.in, s.out, nullptr); },
            0.5);
        const double hot = time_per_call(
            [&](int64_t) { matmul(pool, x.data(), w[0].data(), dt, y.data(), 1, s.in, s.out, nullptr); }, 0.3);
        const double gemm = time_per_call(
            [&](int64_t) { matmul(pool, x.data(), w[0].data(), dt, y.data(), 128, s.in, s.out, nullptr); }, 0.5);
        const double cold_gbs = double(bytes) / cold / 1e9, hot_gbs = double(bytes) / hot / 1e9;
        const double gflops = 2.0 * 128 * double(n) / gemm / 1e9;
        char shape[32];
        std::snprintf(shape, sizeof shape, "%lld->%lld", (long long)s.in, (long long)s.out);
        std::printf("%-6s %-12s %7.1f GB/s %7.0f%% %7.1f GB/s %7.0f%% %7.1f GFLOP/s %7.0f%%\n", dtype_name(dt), shape,
                    cold_gbs, 100 * cold_gbs / bw, hot_gbs, 100 * hot_gbs / bw, gflops, 100 * gflops / peak);
        rows.push_back({"matvec_cold", dtype_name(dt), nt, 1, s.in, s.out, cold_gbs, "GB/s", 100 * cold_gbs / bw});
        rows.push_back({"matvec_hot", dtype_name(dt), nt, 1, s.in, s.out, hot_gbs, "GB/s", 100 * hot_gbs / bw});
        rows.push_back({"gemm", dtype_name(dt), nt, 128, s.in, s.out, gflops, "GFLOP/s", 100 * gflops / peak});
      }
    }
  }

  if (argc > 1) {
    FILE *f = std::fopen(argv[1], "w");
    if (!f) {
      std::fprintf(stderr, "cannot write %s\n", argv[1]);
      return 1;
    }
    std::fprintf(f, "[\n");
    for (size_t i = 0; i < rows.size(); i++) {
      const Row &r = rows[i];
      std::fprintf(f,
                   "  {\"kernel\": \"%s\", \"dtype\": \"%s\", \"threads\": %d, \"T\": %lld, \"in\": %lld, \"out\": %lld, "
                   "\"value\": %.3f, \"unit\": \"%s\", \"percent_of_ceiling\": %.1f}%s\n",
                   r.kernel.c_str(), r.dtype.c_str(), r.threads, (long long)r.T, (long long)r.in, (long long)r.out,
                   r.value, r.unit.c_str(), r.pct, i + 1 < rows.size() ? "," : "");
    }
    std::fprintf(f, "]\n");
    std::fclose(f);
  }
  return 0;
}

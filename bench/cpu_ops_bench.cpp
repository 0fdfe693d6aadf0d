// cpu_ops_bench.cpp — throughput of the CPU kernels beside the machine's ceilings.
//
// Build and run (from the repository root; -O3 as the library is built):
//   g++ -std=c++17 -O3 -march=native -pthread -Iffi/include bench/cpu_ops_bench.cpp ffi/src/cpu_ops.cpp
//       ffi/src/cpu_matmul.cpp ffi/src/cpu_matvec.cpp ffi/src/cpu_matmul_avx512.cpp ffi/src/cpu_matmul_scalar.cpp
//       ffi/src/cpu_quant.cpp ffi/src/cpu_quant_vnni512.cpp ffi/src/cpu_quant_rows16.cpp ffi/src/cpu_quant_amx.cpp ffi/src/cpu_matmul_amx.cpp ffi/src/cpu_features.cpp ffi/src/cpu_attention.cpp ffi/src/cpu_attention_avx512.cpp ffi/src/cpu_ops_avx512.cpp ffi/src/cpu_quant_act.cpp ffi/src/threadpool.cpp ffi/src/common.cpp
//       -o build/cpu_ops_bench && build/cpu_ops_bench [out.json]
// KVFOLD_CPU=scalar|avx2|avx512|avx512bf16 picks the kernel path (cpu_features.h);
// KF_BENCH_DTYPES="Q4_0,Q4_K" measures only the dtypes named.
//
// For 1 and 2 threads (or the counts given by KF_BENCH_THREADS="1,2,4") it prints:
// - memory read bandwidth (GB/s) over 512 MiB, the ceiling for decode;
// - FMA peak (GFLOP/s) from a register-only loop, the ceiling for prefill;
// - the cost of an empty parallel region (µs), and the wall time of a region whose parts each take
//   50 µs (ideal: 50 µs);
// - matvec (T = 1) GB/s of weight streamed, per dtype and shape, "cold" (cycling through >= 256 MiB
//   of weight copies so every call reads DRAM, as a decode step through all layers does) as % of
//   the read bandwidth and as % of a plain read of the same copies timed in interleaved batches
//   ("read same", the fairer ceiling on a VM whose bandwidth drifts), and "hot" (one copy, L2/L3);
// - GEMM GFLOP/s at T = 128 and % of the FMA peak, per dtype and shape.
// With a path argument, the same rows are also written there as JSON.
#include <algorithm>
#include <chrono>
#include <utility>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "../src/common.h"
#include "../src/cpu_ops.h"
#include "../src/cpu_quant.h"
#include "../src/threadpool.h"
#include "_json_rows.h"

#ifdef __AVX2__
#include <immintrin.h>
#endif

using namespace kf;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct Shape {
  int64_t in, out;
};
// The 134M's shapes, then the 1.1B's (hidden 2048, intermediate 5632).
const Shape kShapes[] = {{768, 768}, {768, 2048}, {2048, 768}, {768, 32000}, {2048, 5632}, {5632, 2048}, {2048, 32000}};
// Quantized weights in the layout a loaded model decodes with here (16-row groups where
// quant_rows16_wanted(); Q4_K only as Q4_K_R16, so only there).
const DType kDtypes[] = {DType::F32, DType::BF16, DType::F16, DType::Q8_0, DType::Q4_0, DType::Q4_K};

// W [out, in] in dt from uniform values in [-1, 1); *used: the dtype matmul reads it as. Q4_K gets
// valid blocks of random codes, scales and mins (kvfold has no Q4_K quantizer; speed ignores values).
std::vector<uint8_t> random_weights(DType dt, int64_t out, int64_t in, ThreadPool &pool, DType *used) {
  const int64_t n = out * in;
  std::vector<float> f(static_cast<size_t>(n));
  uint64_t s = 0x9E3779B97F4A7C15ull + 1;  // seed 1
  for (float &v : f) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    v = float(int64_t(s >> 40) - (1 << 23)) / float(1 << 23);
  }
  *used = dt;
  if (!dtype_quantized(dt) && dt != DType::Q4_K) {
    std::vector<uint8_t> raw(size_t(n) * dtype_size(dt));
    convert_f32_to(f.data(), dt, raw.data(), n);
    return raw;
  }
  const size_t rb = dtype_row_bytes(dt, in);
  std::vector<uint8_t> raw(size_t(out) * rb);
  if (dt == DType::Q4_K) {
    for (size_t i = 0; i < raw.size(); i++) raw[i] = uint8_t(f[i % f.size()] * 127.0f + 128.0f);
    for (size_t b = 0; b < raw.size(); b += sizeof(BlockQ4_K)) {
      const uint16_t d = 0x211F;  // f16 0.01
      std::memcpy(&raw[b], &d, 2);
      std::memcpy(&raw[b + 2], &d, 2);
    }
  } else {
    for (int64_t r = 0; r < out; r++) quantize_row(f.data() + r * in, dt, raw.data() + size_t(r) * rb, in);
  }
  if (!quant_rows16_wanted()) return raw;
  *used = dt == DType::Q8_0 ? DType::Q8_0_R16 : dt == DType::Q4_0 ? DType::Q4_0_R16 : DType::Q4_K_R16;
  std::vector<uint8_t> r16(size_t(out) * dtype_row_bytes(*used, in));
  interleave_rows16(pool, dt, raw.data(), out, in, r16.data());
  return r16;
}

// FMA throughput of every thread: 12 independent vfmadd231ps chains in inline asm (written in C++
// the compiler merges identical chains or spills them, and measures something else).
#if defined(__FMA__) && defined(__x86_64__)
void fma_loop(int64_t n) {
  __asm__ volatile(
      "vxorps %%ymm0, %%ymm0, %%ymm0\n vxorps %%ymm1, %%ymm1, %%ymm1\n vxorps %%ymm2, %%ymm2, %%ymm2\n"
      "vxorps %%ymm3, %%ymm3, %%ymm3\n vxorps %%ymm4, %%ymm4, %%ymm4\n vxorps %%ymm5, %%ymm5, %%ymm5\n"
      "vxorps %%ymm6, %%ymm6, %%ymm6\n vxorps %%ymm7, %%ymm7, %%ymm7\n vxorps %%ymm8, %%ymm8, %%ymm8\n"
      "vxorps %%ymm9, %%ymm9, %%ymm9\n vxorps %%ymm10, %%ymm10, %%ymm10\n vxorps %%ymm11, %%ymm11, %%ymm11\n"
      "vxorps %%ymm12, %%ymm12, %%ymm12\n vxorps %%ymm13, %%ymm13, %%ymm13\n"
      "1:\n"
      "vfmadd231ps %%ymm12, %%ymm13, %%ymm0\n vfmadd231ps %%ymm12, %%ymm13, %%ymm1\n"
      "vfmadd231ps %%ymm12, %%ymm13, %%ymm2\n vfmadd231ps %%ymm12, %%ymm13, %%ymm3\n"
      "vfmadd231ps %%ymm12, %%ymm13, %%ymm4\n vfmadd231ps %%ymm12, %%ymm13, %%ymm5\n"
      "vfmadd231ps %%ymm12, %%ymm13, %%ymm6\n vfmadd231ps %%ymm12, %%ymm13, %%ymm7\n"
      "vfmadd231ps %%ymm12, %%ymm13, %%ymm8\n vfmadd231ps %%ymm12, %%ymm13, %%ymm9\n"
      "vfmadd231ps %%ymm12, %%ymm13, %%ymm10\n vfmadd231ps %%ymm12, %%ymm13, %%ymm11\n"
      "dec %0\n jnz 1b\n vzeroupper\n"
      : "+r"(n)
      :
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12",
        "xmm13", "cc");
}

double fma_peak_gflops(ThreadPool &pool) {
  const int64_t iters = 1000000;  // 12 M FMAs per thread, ~4 ms; best of many runs
  double best = 0.0;
  for (int rep = 0; rep < 30; rep++) {
    const auto t0 = Clock::now();
    pool.run_per_thread([&](int, int) { fma_loop(iters); });
    best = std::max(best, double(pool.size()) * double(iters) * 12 * 16 / seconds_since(t0) / 1e9);
  }
  return best;
}
#else
double fma_peak_gflops(ThreadPool &) { return 0.0; }
#endif

double region_latency_us(ThreadPool &pool) {
  const int n = 200000;
  for (int i = 0; i < 1000; i++) pool.run_per_thread([](int, int) {});
  const auto t0 = Clock::now();
  for (int i = 0; i < n; i++) pool.run_per_thread([](int, int) {});
  return seconds_since(t0) / n * 1e6;
}

// A register-only busy loop of about `us` microseconds (calibrated once).
volatile double g_busy_sink;
void busy_loop(int64_t iters) {
  double a = 1.0;
  for (int64_t i = 0; i < iters; i++) a = a * 1.0000001 + 1e-9;
  g_busy_sink = a;
}
int64_t busy_iters_for_us(double us) {
  double best = 1e30;  // µs per 2 M iterations, best of 5 (after the core has clocked up)
  for (int i = 0; i < 5; i++) {
    const auto t0 = Clock::now();
    busy_loop(2000000);
    best = std::min(best, seconds_since(t0) * 1e6);
  }
  return int64_t(us / (best / 2000000.0));
}

// Wall time of a region whose parts each take 50 µs of work, as a decode step's kernels do:
// ideally 50 µs whatever the thread count; the excess is the cost of waking and joining.
double region_50us_parts_us(ThreadPool &pool, int64_t iters_50us) {
  const int n = 400;
  const auto t0 = Clock::now();
  for (int i = 0; i < n; i++) pool.run_per_thread([&](int, int) { busy_loop(iters_50us); });
  return seconds_since(t0) / n * 1e6;
}

// Seconds per call of fn(i), i = 0, 1, 2, ...: the best of `batches` batches of at least
// batch_sec each. Best-of, because this kind of machine (a VM) loses whole time slices to
// neighbours; the best batch is what the code can do, the others measure the neighbours.
template <class F>
double time_per_call(F &&fn, int batches = 8, double batch_sec = 0.04) {
  int64_t i = 0;
  for (int w = 0; w < 3; w++) fn(i++);
  double best = 1e30;
  for (int b = 0; b < batches; b++) {
    int64_t calls = 0;
    const auto t0 = Clock::now();
    double sec = 0.0;
    do {
      fn(i++);
      calls++;
      sec = seconds_since(t0);
    } while (sec < batch_sec || calls < 3);
    best = std::min(best, sec / double(calls));
  }
  return best;
}

// Same as time_per_call for two functions, their batches interleaved, so that both see the same
// machine (memory bandwidth of a VM drifts by 20% from one second to the next).
template <class F, class G>
std::pair<double, double> time_per_call_pair(F &&f, G &&g, int batches = 8) {
  double bf = 1e30, bg = 1e30;
  for (int b = 0; b < batches; b++) {
    bf = std::min(bf, time_per_call(f, 1));
    bg = std::min(bg, time_per_call(g, 1));
  }
  return {bf, bg};
}

// Plain read of a buffer split over the pool's threads like matvec splits W: the ceiling for a
// matvec over the same bytes.
float read_buffer(ThreadPool &pool, const uint8_t *buf, size_t bytes) {
  float sink[64] = {};
  pool.run_per_thread([&](int th, int nth) {
    const size_t per = (bytes / size_t(nth)) & ~size_t(127);
    const size_t b0 = per * size_t(th), b1 = th == nth - 1 ? bytes & ~size_t(127) : b0 + per;
    float s = 0.0f;
#ifdef __AVX2__
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = b0; i < b1; i += 128) {
      const float *f = reinterpret_cast<const float *>(buf + i);
      a0 = _mm256_add_ps(a0, _mm256_loadu_ps(f));
      a1 = _mm256_add_ps(a1, _mm256_loadu_ps(f + 8));
      a2 = _mm256_add_ps(a2, _mm256_loadu_ps(f + 16));
      a3 = _mm256_add_ps(a3, _mm256_loadu_ps(f + 24));
    }
    s = _mm256_cvtss_f32(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
#else
    for (size_t i = b0; i < b1; i += 4) {
      float v;
      std::memcpy(&v, buf + i, 4);
      s += v;
    }
#endif
    sink[th % 64] += s;
  });
  return sink[0];
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
  const char *dtype_filter = std::getenv("KF_BENCH_DTYPES");  // e.g. "Q4_0,Q4_K": only those
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // rows appear as they are measured, even through a pipe
  std::printf("cpu_ops_bench (%s)\n", cpu_simd_name());
  std::vector<Row> rows;
  const int64_t iters_50us = busy_iters_for_us(50.0);

  for (int nt : thread_counts) {
    ThreadPool pool(nt);
    const double bw = measure_read_bandwidth(pool, int64_t(512) << 20, 10, nullptr);
    const double peak = fma_peak_gflops(pool);
    const double lat = region_latency_us(pool);
    const double work50 = region_50us_parts_us(pool, iters_50us);
    std::printf("\n== %d thread(s): read bandwidth %.1f GB/s, FMA peak %.1f GFLOP/s, empty region %.2f us, "
                "region of %d x 50 us parts %.1f us\n",
                nt, bw, peak, lat, nt, work50);
    rows.push_back({"read_bandwidth", "-", nt, 0, 0, 0, bw, "GB/s", 100.0});
    rows.push_back({"fma_peak", "F32", nt, 0, 0, 0, peak, "GFLOP/s", 100.0});
    rows.push_back({"empty_region", "-", nt, 0, 0, 0, lat, "us", 0.0});
    rows.push_back({"region_50us_parts", "-", nt, 0, 0, 0, work50, "us", 100.0 * 50.0 / work50});

    std::printf("%-6s %-12s %12s %8s %12s %8s %12s %14s %8s\n", "dtype", "in->out", "matvec cold", "% bw", "read same",
                "% read", "matvec hot", "gemm T=128", "% peak");
    for (DType wanted : kDtypes) {
      if (wanted == DType::Q4_K && !quant_rows16_wanted()) continue;
      if (dtype_filter && !std::strstr(dtype_filter, dtype_name(wanted))) continue;
      for (const Shape &s : kShapes) {
        const int64_t n = s.in * s.out;
        DType dt = wanted;
        const std::vector<uint8_t> w0 = random_weights(wanted, s.out, s.in, pool, &dt);
        const size_t bytes = w0.size(), stride = (bytes + 4095) / 4096 * 4096;
        // Enough copies that one pass over them overflows the L3 many times (480 MiB on the Xeon VM),
        // on huge pages where the kernel gives them, as a loaded model's weights are (model.cpp).
        const size_t copies = std::max<size_t>(2, (size_t(1) << 30) / bytes);
        const std::unique_ptr<uint8_t, void (*)(uint8_t *)> arena(
            static_cast<uint8_t *>(::operator new(copies * stride, std::align_val_t(1 << 21))),
            [](uint8_t *p) { ::operator delete(p, std::align_val_t(1 << 21)); });
        advise_huge_pages(arena.get(), copies * stride);
        std::vector<const uint8_t *> w;
        for (size_t c = 0; c < copies; c++) {  // the same values: reads cost the same
          std::memcpy(arena.get() + c * stride, w0.data(), bytes);
          w.push_back(arena.get() + c * stride);
        }
        std::vector<float> x(size_t(128 * s.in), 0.5f), y(size_t(128 * s.out));

        volatile float keep = 0.0f;
        const auto [cold, read] = time_per_call_pair(
            [&](int64_t i) { matmul(pool, x.data(), w[size_t(i) % copies], dt, y.data(), 1, s.in, s.out, nullptr); },
            [&](int64_t i) { keep = keep + read_buffer(pool, w[size_t(i) % copies], bytes); });
        const double hot = time_per_call(
            [&](int64_t) { matmul(pool, x.data(), w[0], dt, y.data(), 1, s.in, s.out, nullptr); });
        const double gemm = time_per_call(
            [&](int64_t) { matmul(pool, x.data(), w[0], dt, y.data(), 128, s.in, s.out, nullptr); });
        const double cold_gbs = double(bytes) / cold / 1e9, hot_gbs = double(bytes) / hot / 1e9;
        const double read_gbs = double(bytes) / read / 1e9;
        const double gflops = 2.0 * 128 * double(n) / gemm / 1e9;
        char shape[32];
        std::snprintf(shape, sizeof shape, "%lld->%lld", (long long)s.in, (long long)s.out);
        std::printf("%-6s %-12s %7.1f GB/s %7.0f%% %7.1f GB/s %7.0f%% %7.1f GB/s %7.1f GFLOP/s %7.0f%%\n",
                    dtype_name(dt), shape, cold_gbs, 100 * cold_gbs / bw, read_gbs, 100 * cold_gbs / read_gbs, hot_gbs,
                    gflops, 100 * gflops / peak);
        rows.push_back({"matvec_cold", dtype_name(dt), nt, 1, s.in, s.out, cold_gbs, "GB/s", 100 * cold_gbs / bw});
        rows.push_back({"read_same_bytes", dtype_name(dt), nt, 1, s.in, s.out, read_gbs, "GB/s", 100 * read_gbs / bw});
        rows.push_back({"matvec_hot", dtype_name(dt), nt, 1, s.in, s.out, hot_gbs, "GB/s", 100 * hot_gbs / bw});
        rows.push_back({"gemm", dtype_name(dt), nt, 128, s.in, s.out, gflops, "GFLOP/s", 100 * gflops / peak});
      }
    }
  }

  const bool written = argc < 2 || write_json_rows(argv[1], rows.size(), [&](FILE *f, size_t i) {
    const Row &r = rows[i];
    std::fprintf(f,
                 "    \"kernel\": \"%s\",\n    \"dtype\": \"%s\",\n    \"threads\": %d,\n    \"T\": %lld,\n"
                 "    \"in\": %lld,\n    \"out\": %lld,\n    \"value\": %.3f,\n    \"unit\": \"%s\",\n"
                 "    \"percent_of_ceiling\": %.1f",
                 r.kernel.c_str(), r.dtype.c_str(), r.threads, (long long)r.T, (long long)r.in, (long long)r.out,
                 r.value, r.unit.c_str(), r.pct);
  });
  return written ? 0 : 1;
}

// cpu_kernels_test.cpp — every CPU kernel path (cpu_features.h: scalar, avx2, avx512, avx512-bf16, and
// the int8 kernels: plain, maddubs, vnni) against float64 references on shapes that are not
// multiples of any tile, plus llama.cpp's Q8_0 / Q4_0 block layouts byte for byte.
//
// Build and run (from the repository root; tests/cpu_kernels_test.ts does this):
//   g++ -std=c++17 -O2 -march=native -pthread -Iffi/include ffi/tests/cpu_kernels_test.cpp
//       ffi/tests/cpu_kernels_avx512_test.cpp ffi/tests/cpu_attention_rows_test.cpp ffi/tests/cpu_decode_reads_test.cpp ffi/src/cpu_ops.cpp
//       ffi/src/cpu_matmul.cpp ffi/src/cpu_matvec.cpp ffi/src/cpu_matmul_avx512.cpp ffi/src/cpu_matmul_scalar.cpp
//       ffi/src/cpu_quant.cpp ffi/src/cpu_quant_vnni512.cpp ffi/src/cpu_quant_rows16.cpp ffi/src/cpu_quant_amx.cpp ffi/src/cpu_matmul_amx.cpp ffi/src/cpu_attention.cpp ffi/src/cpu_attention_avx512.cpp ffi/src/cpu_attention_decode.cpp ffi/src/cpu_ops_avx512.cpp ffi/src/cpu_quant_act.cpp ffi/src/cpu_features.cpp ffi/src/threadpool.cpp ffi/src/common.cpp -o build/cpu_kernels_test
// Prints one line per check ("ok" / "FAIL" / "skip") and exits nonzero if any check failed.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "../src/common.h"
#include "../src/cpu_features.h"
#include "../src/cpu_ops.h"
#include "../src/cpu_quant.h"
#include "../src/cpu_quant_vnni512.h"
#include "../src/threadpool.h"
#include "cpu_kernels_check.h"

using namespace kf;
using namespace kf_test;

namespace {

// Float matmuls of one path: against float64 sums of the values the kernel multiplies (x rounded to
// bf16 where the path's bf16 dot products round it), deterministic over 1-3 threads.
void test_float_path(CpuPath path, ThreadPool *pools) {
  Rng rng(7 + int(path));
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    Check c(std::string("matmul ") + cpu_path_name(path) + " " + dtype_name(dt));
    for (int64_t T : {1, 3, 8, 9, 16, 17, 32, 45})
      for (int64_t K : {7, 33, 100, 257, 520, 1565})
        for (int64_t N : {1, 15, 33, 100, 300}) {
          const std::vector<float> x = random_vec(rng, size_t(T * K)), bias = random_vec(rng, size_t(N));
          std::vector<uint8_t> raw;
          std::vector<float> w;
          make_float_weights(rng, dt, size_t(N * K), raw, w);
          // The GEMM and decode's vdpbf16ps kernels (long rows and short ones) round x to bf16.
          const bool rounds_x = int(path) >= int(CpuPath::Avx512Bf16) && dt == DType::BF16;
          std::vector<double> ref(size_t(T * N));
          double mag = 0.0;
          for (int64_t t = 0; t < T; t++)
            for (int64_t o = 0; o < N; o++) {
              double s = bias[size_t(o)], a = std::fabs(bias[size_t(o)]);
              for (int64_t i = 0; i < K; i++) {
                const float xv = rounds_x ? bf16_to_f32(f32_to_bf16(x[size_t(t * K + i)])) : x[size_t(t * K + i)];
                s += double(xv) * w[size_t(o * K + i)];
                a += std::fabs(double(xv) * w[size_t(o * K + i)]);
              }
              ref[size_t(t * N + o)] = s;
              mag = std::max(mag, a);
            }
          std::vector<float> first;
          for (int p = 0; p < 3; p++) {
            std::vector<float> y(size_t(T * N), NAN);
            matmul(pools[p], x.data(), raw.data(), dt, y.data(), T, K, N, bias.data());
            double err = 0;
            for (size_t k = 0; k < y.size(); k++) {
              const double e = std::fabs(y[k] - ref[k]);
              err = std::isnan(e) ? INFINITY : std::max(err, e);
            }
            const std::string what = fmt("T=%lld K=%lld N=%lld threads=%lld", T, K, N, p + 1);
            c.add(err, 2e-6 * (1.0 + mag), what);
            if (p == 0) first = y;
            else c.expect(std::memcmp(first.data(), y.data(), y.size() * 4) == 0, what + " deterministic");
          }
          // AVX-512 decode batches (T <= 8; vdpbf16ps for bf16, short rows 16 (t, row) pairs at a time;
          // widened f16): each row's outputs are the
          // bits of that row alone (the AVX2 matrix-vector kernels pick their accumulator count by T,
          // so theirs are not).
          const bool f16_avx512 = dt == DType::F16 && int(path) >= int(CpuPath::Avx512);
          if (T <= kMatvecMaxT && (rounds_x || f16_avx512))
            for (int64_t t = 0; t < T; t++) {
              std::vector<float> one(static_cast<size_t>(N));
              matmul(pools[1], x.data() + t * K, raw.data(), dt, one.data(), 1, K, N, bias.data());
              c.expect(std::memcmp(one.data(), first.data() + t * N, size_t(N) * 4) == 0,
                       fmt("T=%lld K=%lld N=%lld row %lld alone", T, K, N, t));
            }
        }
  }
}

// What matmul_quant does to an activation row: blocks of 32 scaled by amax / 127, rounded to nearest.
std::vector<float> quantized_activations(const float *x, int64_t n) {
  std::vector<float> q(static_cast<size_t>(n));
  for (int64_t b = 0; b < n / 32; b++) {
    float amax = 0;
    for (int j = 0; j < 32; j++) amax = std::max(amax, std::fabs(x[b * 32 + j]));
    const float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
    for (int j = 0; j < 32; j++) q[size_t(b * 32 + j)] = d * std::nearbyintf(x[b * 32 + j] * id);
  }
  return q;
}

// The int8 matmul's float64 reference: bias + the int8-rounded activations times w (the dequantized
// weights, [N, K]); *mag gets the largest sum of |terms| (the scale of the error bound).
std::vector<double> quant_reference(const std::vector<float> &x, const std::vector<float> &w,
                                    const std::vector<float> &bias, int64_t T, int64_t K, int64_t N, double *mag) {
  std::vector<double> ref(size_t(T * N));
  *mag = 0;
  for (int64_t t = 0; t < T; t++) {
    const std::vector<float> xq = quantized_activations(x.data() + t * K, K);
    for (int64_t o = 0; o < N; o++) {
      double s = bias[size_t(o)], a = std::fabs(bias[size_t(o)]);
      for (int64_t i = 0; i < K; i++) {
        s += double(xq[size_t(i)]) * w[size_t(o * K + i)];
        a += std::fabs(double(xq[size_t(i)]) * w[size_t(o * K + i)]);
      }
      ref[size_t(t * N + o)] = s;
      *mag = std::max(*mag, a);
    }
  }
  return ref;
}

// matmul over `raw` (dtype dt) on 1, 2 and 3 threads against ref, every thread count with the same
// bits; returns the one-thread output.
std::vector<float> check_quant_matmul(Check &c, ThreadPool *pools, const std::vector<float> &x, const void *raw, DType dt,
                                      const std::vector<float> &bias, const std::vector<double> &ref, double mag,
                                      int64_t T, int64_t K, int64_t N, const std::string &what) {
  std::vector<float> first;
  for (int p = 0; p < 3; p++) {
    std::vector<float> y(size_t(T * N), NAN);
    matmul(pools[p], x.data(), raw, dt, y.data(), T, K, N, bias.data());
    double err = 0;
    for (size_t k = 0; k < y.size(); k++) {
      const double e = std::fabs(y[k] - ref[k]);
      err = std::isnan(e) ? INFINITY : std::max(err, e);
    }
    const std::string at = what + fmt(" threads=%lld", p + 1);
    c.add(err, 2e-6 * (1.0 + mag), at);
    if (p == 0) first = y;
    else c.expect(std::memcmp(first.data(), y.data(), y.size() * 4) == 0, at + " deterministic");
  }
  return first;
}

void test_quant_path(const std::string &label, int seed, ThreadPool *pools) {
  Rng rng(99 + seed);
  for (DType dt : {DType::Q8_0, DType::Q4_0}) {
    Check c("matmul " + label + " " + dtype_name(dt));
    for (int64_t T : {1, 2, 5, 9, 40})
      for (int64_t K : {32, 96, 512, 2080})
        for (int64_t N : {1, 7, 33, 100}) {
          const std::vector<float> x = random_vec(rng, size_t(T * K)), f = random_vec(rng, size_t(N * K));
          const std::vector<float> bias = random_vec(rng, size_t(N));
          std::vector<uint8_t> raw(size_t(N) * dtype_row_bytes(dt, K));
          std::vector<float> w(size_t(N * K));
          for (int64_t o = 0; o < N; o++) {
            quantize_row(f.data() + o * K, dt, raw.data() + size_t(o) * dtype_row_bytes(dt, K), K);
            dequantize_row(raw.data() + size_t(o) * dtype_row_bytes(dt, K), dt, w.data() + o * K, K);
          }
          double mag;
          const std::vector<double> ref = quant_reference(x, w, bias, T, K, N, &mag);
          check_quant_matmul(c, pools, x, raw.data(), dt, bias, ref, mag, T, K, N, fmt("T=%lld K=%lld N=%lld", T, K, N));
        }
    // Rows that are not whole blocks are refused (the loader refuses such models first).
    c.expect(throws_error([&] {
      std::vector<float> x(40), y(1);
      std::vector<uint8_t> wq(64);
      matmul(pools[1], x.data(), wq.data(), dt, y.data(), 1, 40, 1, nullptr);
    }), "K=40 refused");
  }
}

// The AVX512-VNNI prefill GEMM (repacked panels, 6-row tiles) gives the same bits as the row
// kernels for every output: both sum exact int block dots and add d_w * d_x * dot block by block.
void test_quant_gemm_matches_rows(ThreadPool *pools) {
  if (!quant_force_kernel("vnni512-rows")) {
    std::printf("skip int8 GEMM: this CPU lacks AVX512-VNNI\n");
    return;
  }
  Check c("int8 GEMM (vnni512) = row kernels, bit for bit");
  Rng rng(17);
  for (DType dt : {DType::Q8_0, DType::Q4_0})
    for (int64_t T : {2, 5, 6, 7, 13, 40})
      for (int64_t K : {32, 96, 2080})
        for (int64_t N : {16, 33, 48, 100}) {
          const std::vector<float> x = random_vec(rng, size_t(T * K)), f = random_vec(rng, size_t(N * K));
          const std::vector<float> bias = random_vec(rng, size_t(N));
          std::vector<uint8_t> raw(size_t(N) * dtype_row_bytes(dt, K));
          for (int64_t o = 0; o < N; o++)
            quantize_row(f.data() + o * K, dt, raw.data() + size_t(o) * dtype_row_bytes(dt, K), K);
          std::vector<float> rows(size_t(T * N)), gemm(size_t(T * N), NAN);
          quant_force_kernel("vnni512-rows");
          matmul(pools[1], x.data(), raw.data(), dt, rows.data(), T, K, N, bias.data());
          quant_force_kernel("vnni512");
          for (int p = 0; p < 3; p++) {
            matmul(pools[p], x.data(), raw.data(), dt, gemm.data(), T, K, N, bias.data());
            c.expect(std::memcmp(rows.data(), gemm.data(), rows.size() * 4) == 0, std::string(
                     dtype_name(dt)) + fmt(" T=%lld K=%lld N=%lld threads=%lld", T, K, N, p + 1));
          }
        }
  quant_force_kernel(nullptr);
}

// The 16-row interleaved layouts: every row reads back as it went in, in place or not, and the
// matmul over them (the group kernel for T <= 2, the GEMM from 3) gives the row kernels' bits.
void test_quant_rows16(ThreadPool *pools) {
  if (!quant_force_kernel("vnni512-rows")) {
    std::printf("skip 16-row interleaved layouts: this CPU lacks AVX512-VNNI\n");
    return;
  }
  Check c("16-row interleaved Q8_0 / Q4_0 = row-major, bit for bit");
  Rng rng(23);
  for (DType dt : {DType::Q8_0, DType::Q4_0}) {
    const DType r16 = dt == DType::Q8_0 ? DType::Q8_0_R16 : DType::Q4_0_R16;
    for (int64_t K : {32, 96, 2080})
      for (int64_t N : {16, 48, 112}) {
        const size_t rb = dtype_row_bytes(dt, K);
        const std::vector<float> f = random_vec(rng, size_t(N * K)), bias = random_vec(rng, size_t(N));
        std::vector<uint8_t> raw(size_t(N) * rb), inter(raw.size()), back(rb);
        for (int64_t o = 0; o < N; o++) quantize_row(f.data() + o * K, dt, raw.data() + size_t(o) * rb, K);
        interleave_rows16(pools[1], dt, raw.data(), N, K, inter.data());
        std::vector<uint8_t> in_place = raw;
        interleave_rows16(pools[2], dt, in_place.data(), N, K, in_place.data());
        const std::string shape = std::string(dtype_name(dt)) + fmt(" K=%lld N=%lld", K, N);
        c.expect(in_place == inter, shape + " in place");
        c.expect(N == 16 || inter != raw, shape + " layout differs from row-major");
        for (int64_t o = 0; o < N; o++) {
          deinterleave_row16(r16, inter.data(), o, K, back.data());
          c.expect(std::memcmp(back.data(), raw.data() + size_t(o) * rb, rb) == 0, shape + fmt(" row %lld back", o));
        }
        for (int64_t T : {1, 2, 3, 5, 7, 8, 13, 16, 17, 40}) {
          const std::vector<float> x = random_vec(rng, size_t(T * K));
          std::vector<float> rows(size_t(T * N)), got(size_t(T * N), NAN);
          quant_force_kernel("vnni512-rows");
          matmul(pools[1], x.data(), raw.data(), dt, rows.data(), T, K, N, bias.data());
          for (const char *kernel : {"vnni512", "amx"}) {
            if (!quant_force_kernel(kernel)) continue;  // AMX: only where the CPU has it (reported in main)
            for (int p = 0; p < 3; p++) {
              std::fill(got.begin(), got.end(), NAN);
              matmul(pools[p], x.data(), inter.data(), r16, got.data(), T, K, N, bias.data());
              c.expect(std::memcmp(rows.data(), got.data(), rows.size() * 4) == 0,
                       shape + fmt(" T=%lld threads=%lld ", T, p + 1) + kernel);
            }
          }
        }
      }
    c.expect(throws_error([&] {
      std::vector<uint8_t> w(size_t(24) * dtype_row_bytes(dt, 32));
      interleave_rows16(pools[0], dt, w.data(), 24, 32, w.data());
    }), std::string(dtype_name(dt)) + " 24 rows refused");
  }
  quant_force_kernel(nullptr);
}

// Q4_K and Q6_K matrices interleaved as they are (Q4_K_R16, Q6_K_R16): rows read back as
// dequantize_row gives them, and the matmul equals the float64 sum over the dequantized weights and
// int8 activations, the same bits for any thread count and for each activation row alone or in a batch.
void test_k_quant_rows16(ThreadPool *pools, DType dt, const char *kernel) {
  const DType r16 = dt == DType::Q4_K ? DType::Q4_K_R16 : DType::Q6_K_R16;
  const std::string name = std::string(dtype_name(dt)) + "_R16";
  if (!quant_force_kernel(kernel)) {
    std::printf("skip %s (%s): this CPU lacks it\n", name.c_str(), kernel);
    return;
  }
  Check c(name + " against float64 over the dequantized " + dtype_name(dt) + " blocks, " + kernel);
  Rng rng(dt == DType::Q4_K ? 31 : 37);
  for (int64_t K : {256, 768})
    for (int64_t N : {16, 48}) {
      const std::vector<uint8_t> raw = random_k_blocks(rng, dt, N, K);
      std::vector<uint8_t> inter(size_t(N) * dtype_row_bytes(r16, K));
      interleave_rows16(pools[1], dt, raw.data(), N, K, inter.data());
      std::vector<float> w(size_t(N * K)), back(static_cast<size_t>(K));
      const std::string shape = fmt("K=%lld N=%lld", K, N);
      for (int64_t o = 0; o < N; o++) {
        dequantize_row(raw.data() + size_t(o) * dtype_row_bytes(dt, K), dt, w.data() + o * K, K);
        rows16_row_to_f32(r16, inter.data(), o, K, back.data());
        c.expect(std::memcmp(back.data(), w.data() + o * K, size_t(K) * 4) == 0, shape + fmt(" row %lld back", o));
      }
      for (int64_t T : {1, 2, 3, 5, 8, 17}) {
        const std::vector<float> x = random_vec(rng, size_t(T * K)), bias = random_vec(rng, size_t(N));
        double mag;
        const std::vector<double> ref = quant_reference(x, w, bias, T, K, N, &mag);
        const std::vector<float> first =
            check_quant_matmul(c, pools, x, inter.data(), r16, bias, ref, mag, T, K, N, shape + fmt(" T=%lld", T));
        for (int64_t t = 0; t < T; t++) {  // each row alone: the batch's bits
          std::vector<float> one(static_cast<size_t>(N));
          matmul(pools[1], x.data() + t * K, inter.data(), r16, one.data(), 1, K, N, bias.data());
          c.expect(std::memcmp(one.data(), first.data() + t * N, size_t(N) * 4) == 0, shape + fmt(" T=%lld row %lld alone", T, t));
        }
      }
    }
  c.expect(throws_error([&] {
    std::vector<uint8_t> w(16 * dtype_row_bytes(dt, 256));
    interleave_rows16(pools[0], dt, w.data(), 16, 256, w.data());
  }), name + " in place refused");
  quant_force_kernel(nullptr);
}

// matmul_shared_x (several products of one x in one region): every output of every product, the
// same bits as a matmul call per product, for mixed dtypes (interleaved ones where this CPU has
// them), row counts that are not multiples of the 16-row split, T on and off the matrix-vector path,
// biases or none, and 1-3 threads. Outputs start as NaN, so a row no part ran cannot pass.
void test_shared_x(const std::string &label, ThreadPool *pools) {
  Check c("matmul_shared_x = one matmul per product, " + label);
  Rng rng(41);
  const bool r16 = quant_rows16_wanted();
  for (int64_t K : {64, 1600}) {
    struct Weights {
      DType dt;
      int64_t out;
      std::vector<uint8_t> raw;
      std::vector<float> bias;
    };
    std::vector<Weights> ws;
    for (auto [dt, out] : {std::pair{DType::F32, int64_t(100)}, {DType::BF16, int64_t(33)}, {DType::F16, int64_t(48)},
                           {DType::Q8_0, int64_t(40)}, {DType::Q4_0, int64_t(17)},
                           {r16 ? DType::Q8_0_R16 : DType::Q8_0, int64_t(32)}}) {
      Weights w{dt, out, {}, random_vec(rng, size_t(out))};
      if (dtype_quantized(dt)) {
        const DType base = dt == DType::Q8_0_R16 ? DType::Q8_0 : dt;
        const size_t rb = dtype_row_bytes(base, K);
        const std::vector<float> f = random_vec(rng, size_t(out * K));
        w.raw.resize(size_t(out) * rb);
        for (int64_t o = 0; o < out; o++) quantize_row(f.data() + o * K, base, w.raw.data() + size_t(o) * rb, K);
        if (dt == DType::Q8_0_R16) interleave_rows16(pools[0], DType::Q8_0, w.raw.data(), out, K, w.raw.data());
      } else {
        std::vector<float> exact;
        make_float_weights(rng, dt, size_t(out * K), w.raw, exact);
      }
      ws.push_back(std::move(w));
    }
    // Groups of products as a layer forms them (3 and 2), and mixed ones; every one quantized (x
    // quantized once for all, padded to whole AMX tiles where one of them takes that GEMM).
    const std::vector<std::vector<int>> groups = {{0, 1, 2}, {3, 4}, {5, 0}, {2, 4, 5, 1}, {1}, {4, 5, 3}};
    for (const auto &g : groups)
      for (int64_t T : {1, 2, 3, 8, 9}) {
        const std::vector<float> x = random_vec(rng, size_t(T * K));
        for (int th = 0; th < 3; th++) {
          std::vector<std::vector<float>> want, got;
          std::vector<MatmulProduct> ps;
          for (size_t j = 0; j < g.size(); j++) {
            const Weights &w = ws[size_t(g[j])];
            const float *bias = j % 2 == 0 ? w.bias.data() : nullptr;
            want.emplace_back(size_t(T * w.out), NAN);
            got.emplace_back(size_t(T * w.out), NAN);
            matmul(pools[th], x.data(), w.raw.data(), w.dt, want.back().data(), T, K, w.out, bias);
            ps.push_back({w.raw.data(), w.dt, nullptr, w.out, bias});
          }
          for (size_t j = 0; j < g.size(); j++) ps[j].y = got[j].data();
          matmul_shared_x(pools[th], x.data(), T, K, ps.data(), int(ps.size()));
          for (size_t j = 0; j < g.size(); j++)
            c.expect(std::memcmp(want[j].data(), got[j].data(), want[j].size() * 4) == 0,
                     std::string(dtype_name(ws[size_t(g[j])].dt)) + fmt(" K=%lld T=%lld threads=%lld", K, T, th + 1));
        }
      }
  }
}

// ggml's layouts, byte for byte, and the round trip bound.
void test_quant_layout() {
  Check c("Q8_0 / Q4_0 blocks as llama.cpp lays them out");
  float x[32];
  for (int j = 0; j < 16; j++) x[j] = float(j - 8), x[16 + j] = float(7 - j);
  BlockQ4_0 q4;
  quantize_row(x, DType::Q4_0, &q4, 32);
  c.expect(q4.d == f32_to_f16(1.0f), "q4_0 d = max / -8");
  for (int j = 0; j < 16; j++) c.expect(q4.qs[j] == uint8_t(j | ((15 - j) << 4)), fmt("q4_0 nibbles of byte %lld", j));
  for (int j = 0; j < 32; j++) x[j] = float(j - 16);
  BlockQ8_0 q8;
  quantize_row(x, DType::Q8_0, &q8, 32);
  c.expect(q8.d == f32_to_f16(16.0f / 127.0f), "q8_0 d = amax / 127");
  c.expect(q8.qs[0] == -127 && q8.qs[16] == 0 && q8.qs[31] == int8_t(std::roundf(15.0f * 127.0f / 16.0f)), "q8_0 values");
  Rng rng(5);
  for (DType dt : {DType::Q8_0, DType::Q4_0}) {
    const std::vector<float> v = random_vec(rng, 32 * 64);
    std::vector<uint8_t> raw(dtype_row_bytes(dt, 32 * 64));
    std::vector<float> back(v.size());
    quantize_row(v.data(), dt, raw.data(), int64_t(v.size()));
    dequantize_row(raw.data(), dt, back.data(), int64_t(v.size()));
    for (size_t b = 0; b < 64; b++) {
      uint16_t dh;
      std::memcpy(&dh, raw.data() + b * (dt == DType::Q8_0 ? 34 : 18), 2);
      const double d = std::fabs(f16_to_f32(dh));
      // Half a step (Q4_0: a whole one where +amax clamps at 15), plus the f16 rounding of d.
      for (size_t j = 0; j < 32; j++)
        c.add(std::fabs(double(v[b * 32 + j]) - back[b * 32 + j]),
              d * (dt == DType::Q8_0 ? 0.5 : 1.0) + 1e-3 * std::fabs(v[b * 32 + j]) + 1e-7,
              std::string(dtype_name(dt)) + " round trip");
    }
  }
}

}  // namespace

int main() {
  ThreadPool pools[] = {ThreadPool(1), ThreadPool(2), ThreadPool(3)};
  const CpuFeatures &f = cpu_features();
  std::printf("cpu: avx2 %d, avx512 %d, avx512_bf16 %d, avx512_vnni %d, avx_vnni %d, amx_int8 %d\n", f.avx2,
              f.avx512, f.avx512_bf16, f.avx512_vnni, f.avx_vnni, f.amx_int8);
  if (!f.amx_int8) std::printf("skip the AMX GEMM: this CPU (or its OS) lacks AMX-INT8\n");
  test_quant_layout();
  for (CpuPath want : {CpuPath::Scalar, CpuPath::Avx2, CpuPath::Avx512, CpuPath::Avx512Bf16, CpuPath::Amx}) {
    if (cpu_force_path(want) != want) {
      std::printf("skip %s: this CPU or build lacks it\n", cpu_path_name(want));
      continue;
    }
    test_float_path(want, pools);
    if (want == CpuPath::Avx512Bf16) {  // decode's weight reads the other way than this CPU's default
      const DecodeReads d = cpu_decode_reads(), other{d.prefetch_l2, !d.short_rows_paired, !d.two_streams};
      cpu_force_decode_reads(&other);
      std::printf("decode reads: short rows %s, %s\n", other.short_rows_paired ? "in pairs" : "one at a time",
                  other.two_streams ? "two streams" : "one stream");
      test_float_path(want, pools);
      test_quant_rows16(pools);
      cpu_force_decode_reads(nullptr);
    }
    test_shared_x(cpu_path_name(want), pools);
    test_attention_rows_alone(cpu_path_name(want), pools);
    test_quant_path(std::string(cpu_path_name(want)) + (cpu_int8_vnni() ? " (int8 vnni)" : ""), int(want), pools);
  }
  test_decode_reads(pools);  // on the best path this CPU has (the loop above ends forcing it)
  // Each int8 kernel by name, the VEX AVX-VNNI one included (the paths above prefer AVX512-VNNI).
  for (const char *k : {"scalar", "maddubs", "vnni512", "vnni512-rows", "avxvnni", "amx"}) {
    if (!quant_force_kernel(k)) {
      std::printf("skip int8 kernel %s: this CPU lacks it\n", k);
      continue;
    }
    test_quant_path(std::string("int8 kernel ") + k, 10 + int(std::strlen(k)), pools);
  }
  quant_force_kernel(nullptr);
  test_act_blocks_avx512();
  test_attention_tiles();
  test_elementwise_avx512();
  test_quant_gemm_matches_rows(pools);
  test_quant_rows16(pools);
  for (DType dt : {DType::Q4_K, DType::Q6_K})
    for (const char *kernel : {"vnni512", "amx"}) test_k_quant_rows16(pools, dt, kernel);
  std::printf(g_failed ? "FAILED: %d check(s)\n" : "all checks passed\n", g_failed);
  return g_failed ? 1 : 0;
}

// decode_chain.cpp — a decode step's matrix products alone, in order, beside the read bandwidth.
//
// Build and run (from the repository root; -O3 as the library is built):
//   g++ -std=c++17 -O3 -march=native -pthread -Iffi/include bench/decode_chain.cpp ffi/src/weight_arena.cpp
//       ffi/src/cpu_ops.cpp ffi/src/cpu_matmul.cpp ffi/src/cpu_matvec.cpp ffi/src/cpu_matmul_avx512.cpp
//       ffi/src/cpu_matmul_scalar.cpp ffi/src/cpu_quant.cpp ffi/src/cpu_quant_vnni512.cpp ffi/src/cpu_quant_rows16.cpp ffi/src/cpu_quant_amx.cpp
//       ffi/src/cpu_matmul_amx.cpp ffi/src/cpu_features.cpp ffi/src/cpu_attention.cpp ffi/src/cpu_attention_avx512.cpp
//       ffi/src/cpu_ops_avx512.cpp ffi/src/cpu_quant_act.cpp ffi/src/threadpool.cpp ffi/src/common.cpp
//       ffi/src/json.cpp -o build/decode_chain && build/decode_chain [out.json]
// KF_CHAIN_SHAPES="small,1.1b" and KF_CHAIN_DTYPES="F32,BF16,F16,Q8_0,Q4_0,Q4_K_M" pick what runs (default:
// all; Q4_K_M, llama.cpp's mix as kvfold's GGUF writer makes it: Q6_K for v, down and the head, Q4_K
// elsewhere, runs where the loader keeps them as stored, i.e. where AVX512-VNNI runs);
// KF_CHAIN_THREADS (default 2), KF_CHAIN_ROUNDS (default 4).
//
// Why: `bench/vs_llamacpp.ts` reports a decode's bytes per second against the read probes beside it,
// and `cpu_ops_bench` one matrix at a time (cycling copies of it). Neither says whether what a whole
// decode step loses is in the kernels, in going from one product to the next, or in everything else
// (attention, norms, sampling). This runs only the products of one step, layer by layer as the forward
// pass calls them (q, k and v in one region, o, gate and up in one region, down; then the head), on
// weights laid out as the loader lays them (one 2 MiB-aligned, huge-page-advised arena; quantized
// matrices interleaved 16 rows at a time where this CPU decodes them so), and prints per round: steps/s,
// GB/s of weights, that as % of the mean of the read probes right before and after, and each kind of
// product's own GB/s. A whole decode's tok/s at about this steps/s (same minute) means the rest of the
// step costs little. 2-core Xeon VM, 2026-12-07: 134M bf16 91-95% of the probes, 1.1B q8_0 85-91%,
// q4_0 78-90%; the engine's decode of the same shapes measured within a few % of it.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../src/common.h"
#include "../src/cpu_ops.h"
#include "../src/cpu_quant.h"
#include "../src/threadpool.h"
#include "../src/weight_arena.h"
#include "_json_rows.h"

using namespace kf;
using Clock = std::chrono::steady_clock;

namespace {

struct Shape {
  const char *name;
  int64_t layers, hidden, kv, inter, vocab;
};
// The bench models of vs_llamacpp.ts: the 134M (12 heads of 64, no GQA) and the 1.1B (TinyLlama's).
const Shape kShapes[] = {{"small", 12, 768, 768, 2048, 32000}, {"1.1b", 22, 2048, 256, 5632, 32000}};
// Q4_K stands for the Q4_K_M mix.
const DType kDtypes[] = {DType::F32, DType::BF16, DType::F16, DType::Q8_0, DType::Q4_0, DType::Q4_K};
const char *mix_name(DType dt) { return dt == DType::Q4_K ? "Q4_K_M" : dtype_name(dt); }
const char *const kKinds[] = {"qkv", "o", "gateUp", "down", "head"};  // JSON keys: <kind>GBs

bool listed(const char *env, const char *name) {
  const char *v = std::getenv(env);
  if (!v) return true;
  const std::string list = std::string(",") + v + ",";
  return list.find(std::string(",") + name + ",") != std::string::npos;
}

int env_int(const char *env, int fallback) {
  const char *v = std::getenv(env);
  return v ? std::max(1, std::atoi(v)) : fallback;
}

// W [out, in] in the layout the loader gives dt (values do not change the speed). The k-quants (Q4_K,
// Q6_K): bytes of a fixed pattern with a small finite scale per block, interleaved as the loader does.
const uint8_t *make_weights(ThreadPool &pool, WeightArena &arena, DType dt, int64_t out, int64_t in, DType *used) {
  if (dtype_load_only(dt)) {
    std::vector<uint8_t> raw(size_t(out) * dtype_row_bytes(dt, in));
    for (size_t i = 0; i < raw.size(); i++) raw[i] = uint8_t(i * 131 % 251);
    const size_t bs = dtype_row_bytes(dt, kKQuantBlock), at = dt == DType::Q6_K ? bs - 2 : 0;
    const uint16_t d = f32_to_f16(0.01f);
    for (size_t b = 0; b < raw.size(); b += bs) {
      std::memcpy(&raw[b + at], &d, 2);
      if (dt == DType::Q4_K) std::memcpy(&raw[b + 2], &d, 2);  // dmin
    }
    *used = dt == DType::Q4_K ? DType::Q4_K_R16 : DType::Q6_K_R16;
    uint8_t *w = arena.alloc(size_t(out) * dtype_row_bytes(*used, in), "weights");
    interleave_rows16(pool, dt, raw.data(), out, in, w);
    return w;
  }
  const size_t rb = dtype_row_bytes(dt, in);
  uint8_t *w = arena.alloc(size_t(out) * rb, "weights");
  std::vector<float> row(static_cast<size_t>(in));
  for (int64_t o = 0; o < out; o++) {
    for (int64_t i = 0; i < in; i++) row[size_t(i)] = float((o * 131 + i * 7) % 97) / 97.0f - 0.5f;
    uint8_t *dst = w + size_t(o) * rb;
    if (dt == DType::F32) {
      std::memcpy(dst, row.data(), rb);
    } else if (dt == DType::BF16 || dt == DType::F16) {
      for (int64_t i = 0; i < in; i++) {
        const uint16_t h = dt == DType::BF16 ? f32_to_bf16(row[size_t(i)]) : f32_to_f16(row[size_t(i)]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
    } else {
      quantize_row(row.data(), dt, dst, in);
    }
  }
  *used = dt;
  if (dtype_quantized(dt) && quant_rows16_wanted() && out % 16 == 0) {
    interleave_rows16(pool, dt, w, out, in, w);
    *used = dt == DType::Q8_0 ? DType::Q8_0_R16 : DType::Q4_0_R16;
  }
  return w;
}

struct Row {
  std::string shape, dtype;
  int round;
  double steps_per_s, gbs, probe_gbs, kind_gbs[5];
};

}  // namespace

int main(int argc, char **argv) {
  const int threads = env_int("KF_CHAIN_THREADS", 2), rounds = env_int("KF_CHAIN_ROUNDS", 4);
  ThreadPool pool(threads);
  std::vector<Row> rows;
  std::printf("decode_chain: %d thread(s); %% = GB/s of weights over the mean of the read probes before and after\n",
              threads);
  std::printf("%-6s %-6s %5s %9s %9s %9s %6s   %s\n", "shape", "dtype", "round", "steps/s", "GB/s", "probe", "%",
              "GB/s per product: qkv o gate/up down head");
  for (const Shape &s : kShapes) {
    if (!listed("KF_CHAIN_SHAPES", s.name)) continue;
    for (DType dt : kDtypes) {
      if (!listed("KF_CHAIN_DTYPES", mix_name(dt))) continue;
      if (dt == DType::Q4_K && !quant_rows16_wanted()) {
        std::printf("%-6s %-6s skipped: the loader converts k-quants to q8_0 without AVX512-VNNI\n", s.name, "Q4_K_M");
        continue;
      }
      WeightArena arena;
      struct Product {
        int kind;
        const uint8_t *W;
        DType dt;
        int64_t in, out;
        size_t bytes;
      };
      std::vector<Product> step;  // in call order; consecutive products of one x with the same kind share a region
      size_t bytes = 0;
      // six: Q6_K in the Q4_K_M mix (v, down, the head)
      auto add = [&](int kind, int64_t out, int64_t in, bool six = false) {
        DType used;
        const uint8_t *W = make_weights(pool, arena, dt == DType::Q4_K && six ? DType::Q6_K : dt, out, in, &used);
        step.push_back({kind, W, used, in, out, size_t(out) * dtype_row_bytes(used, in)});
        bytes += step.back().bytes;
      };
      for (int64_t l = 0; l < s.layers; l++) {
        add(0, s.hidden, s.hidden), add(0, s.kv, s.hidden), add(0, s.kv, s.hidden, true);
        add(1, s.hidden, s.hidden);
        add(2, s.inter, s.hidden), add(2, s.inter, s.hidden);
        add(3, s.hidden, s.inter, true);
      }
      add(4, s.vocab, s.hidden, true);
      std::vector<float> x(size_t(s.inter), 0.01f), y(size_t(s.vocab) * 3);
      double kind_s[5] = {}, kind_bytes[5] = {};
      auto run_step = [&] {
        for (size_t i = 0; i < step.size();) {
          size_t j = i + 1;  // the products of one region: same kind, same input width
          while (j < step.size() && step[j].kind == step[i].kind && step[j].in == step[i].in) j++;
          MatmulProduct p[3];
          size_t region_bytes = 0;
          for (size_t k = i; k < j; k++) {
            p[k - i] = {step[k].W, step[k].dt, y.data() + (k - i) * size_t(s.vocab), step[k].out, nullptr};
            region_bytes += step[k].bytes;
          }
          const auto t0 = Clock::now();
          matmul_shared_x(pool, x.data(), 1, step[i].in, p, int(j - i));
          kind_s[step[i].kind] += std::chrono::duration<double>(Clock::now() - t0).count();
          kind_bytes[step[i].kind] += double(region_bytes);
          i = j;
        }
      };
      run_step();  // warm-up: page tables, the pool's threads
      const int steps = std::max(4, int(4e9 / double(bytes)));  // ~4 GB of weights per round
      for (int r = 0; r < rounds; r++) {
        for (int k = 0; k < 5; k++) kind_s[k] = kind_bytes[k] = 0;
        const double before = measure_read_bandwidth(pool, int64_t(256) << 20, 2, nullptr);
        const auto t0 = Clock::now();
        for (int i = 0; i < steps; i++) run_step();
        const double sec = std::chrono::duration<double>(Clock::now() - t0).count();
        const double after = measure_read_bandwidth(pool, int64_t(256) << 20, 2, nullptr);
        Row row{s.name, mix_name(dt), r + 1, steps / sec, double(bytes) * steps / sec / 1e9, (before + after) / 2, {}};
        for (int k = 0; k < 5; k++) row.kind_gbs[k] = kind_bytes[k] / kind_s[k] / 1e9;
        std::printf("%-6s %-6s %5d %9.1f %9.2f %9.2f %5.0f%%   %.1f %.1f %.1f %.1f %.1f\n", s.name, mix_name(dt), r + 1,
                    row.steps_per_s, row.gbs, row.probe_gbs, 100 * row.gbs / row.probe_gbs, row.kind_gbs[0],
                    row.kind_gbs[1], row.kind_gbs[2], row.kind_gbs[3], row.kind_gbs[4]);
        std::fflush(stdout);
        rows.push_back(row);
      }
    }
  }

  const bool written = argc < 2 || write_json_rows(argv[1], rows.size(), [&](FILE *f, size_t i) {
    const Row &r = rows[i];
    std::fprintf(f, "    \"shape\": \"%s\",\n    \"dtype\": \"%s\",\n    \"threads\": %d,\n    \"round\": %d,\n",
                 r.shape.c_str(), r.dtype.c_str(), threads, r.round);
    std::fprintf(f, "    \"stepsPerSecond\": %.3f,\n    \"weightGBs\": %.3f,\n    \"probeGBs\": %.3f,\n", r.steps_per_s,
                 r.gbs, r.probe_gbs);
    std::fprintf(f, "    \"percentOfProbe\": %.1f", 100 * r.gbs / r.probe_gbs);
    for (int k = 0; k < 5; k++) std::fprintf(f, ",\n    \"%sGBs\": %.3f", kKinds[k], r.kind_gbs[k]);
  });
  return written ? 0 : 1;
}

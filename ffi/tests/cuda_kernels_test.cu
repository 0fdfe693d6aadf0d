// cuda_kernels_test.cu — each CUDA kernel against a float64 CPU reference at several sizes (llm.c's
// dev/cuda habit), on fresh random inputs, outputs poisoned with NaN first so an unwritten element fails.
// Needs a GPU; bench/gpu/run.sh builds and runs it:
//   nvcc -std=c++17 -O2 -arch=native -DKVFOLD_HAVE_CUDA -Iffi/include ffi/tests/cuda_kernels_test.cu \
//     ffi/cuda/*.cu ffi/src/*.cpp -ldl -lpthread -o build/gpu/cuda_kernels_test
// Prints one line per case and exits nonzero when any is outside its band.
#include <array>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include <numeric>

#include "../cuda/kernels.cuh"
#include "../src/model.h"

using namespace kf;
using namespace kf::cuda;

namespace {

int g_fail = 0;
std::mt19937 g_rng(1234);

float uni(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(g_rng); }

uint16_t to16(float f, DType dt) { return dt == DType::F16 ? f32_to_f16(f) : f32_to_bf16(f); }
float from16(uint16_t h, DType dt) { return dt == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h); }

// Random 16-bit values; `ref` gets the exact values they hold.
std::vector<uint16_t> rand16(size_t n, DType dt, float scale, std::vector<double> &ref) {
  std::vector<uint16_t> v(n);
  ref.resize(n);
  for (size_t i = 0; i < n; i++) {
    v[i] = to16(uni(-scale, scale), dt);
    ref[i] = from16(v[i], dt);
  }
  return v;
}

template <class T>
DevBuf upload(Engine &e, const std::vector<T> &v) {
  DevBuf b(e, v.size() * sizeof(T), "test data");
  KF_CUDA(cudaMemcpy(b.get(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return b;
}

template <class T>
std::vector<T> download(const DevBuf &b, size_t n) {
  std::vector<T> v(n);
  KF_CUDA(cudaMemcpy(v.data(), b.get(), n * sizeof(T), cudaMemcpyDeviceToHost));
  return v;
}

void report(const char *what, double err, double band) {
  const bool ok = std::isfinite(err) && err <= band;
  if (!ok) g_fail++;
  std::printf("%s %-60s rel err %.2e (band %.0e)\n", ok ? "ok  " : "FAIL", what, err, band);
}

double rel_err(const std::vector<float> &got, const std::vector<double> &want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); i++) {
    if (!std::isfinite(got[i])) return INFINITY;
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

void test_matmul(Engine &e, DType dt, int M, int N, int K, bool accumulate, bool builtin) {
  std::vector<double> xr, wr;
  auto x = rand16(size_t(M) * K, dt, 1.0f, xr);
  auto w = rand16(size_t(N) * K, dt, 0.1f, wr);
  std::vector<float> y0(size_t(M) * N);
  for (auto &v : y0) v = accumulate ? uni(-1, 1) : NAN;  // poison: every element must be written
  DevBuf dx = upload(e, x), dw = upload(e, w), dy = upload(e, y0);
  if (builtin) matmul_builtin(dx.get(), dw.get(), dt, dy.as<float>(), M, N, K, accumulate, e.stream);
  else matmul(e, dx.get(), dw.get(), dt, dy.as<float>(), M, N, K, accumulate, e.stream);
  KF_CUDA(cudaStreamSynchronize(e.stream));
  auto y = download<float>(dy, y0.size());
  std::vector<double> ref(y0.size());
  for (int m = 0; m < M; m++)
    for (int n = 0; n < N; n++) {
      double s = accumulate ? y0[size_t(m) * N + n] : 0.0;
      for (int k = 0; k < K; k++) s += xr[size_t(m) * K + k] * wr[size_t(n) * K + k];
      ref[size_t(m) * N + n] = s;
    }
  char what[128];
  std::snprintf(what, sizeof what, "matmul %s %s M=%d N=%d K=%d%s", builtin ? "builtin" : "dispatch",
                dt == DType::F16 ? "f16" : "bf16", M, N, K, accumulate ? " +=" : "");
  report(what, rel_err(y, ref), 1e-4);  // exact 16-bit products, f32 sums
}

// One session-like cache: rows at slots [s0, s0 + T) of `cap`, a sliding window (0 = none).
// with_scores: the slot score pass too (column sums of the probabilities over rows and group heads).
void test_attention(Engine &e, DType dt, int T, int s0, int nh, int nkv, int hd, int window, int n_splits,
                    bool with_scores = false) {
  const int cap = s0 + T, group = nh / nkv;
  std::vector<double> qr, kr, vr;
  auto q = rand16(size_t(T) * nh * hd, dt, 1.0f, qr);
  auto k = rand16(size_t(cap) * nkv * hd, dt, 1.0f, kr);
  auto v = rand16(size_t(cap) * nkv * hd, dt, 1.0f, vr);
  DevBuf dq = upload(e, q), dk = upload(e, k), dv = upload(e, v);
  DevBuf dscore = upload(e, std::vector<float>(size_t(cap) * nkv, 0.0f));
  std::vector<RowMeta> rows(static_cast<size_t>(T));
  for (int t = 0; t < T; t++) {
    RowMeta &r = rows[size_t(t)];
    r.pos = s0 + t;
    r.slot = s0 + t;
    r.begin = window > 0 ? std::max(0, r.slot + 1 - window) : 0;
    r.pad = 0;
    r.k = dk.get();
    r.v = dv.get();
    r.layer_stride = int64_t(cap) * nkv * hd;
    r.lora = nullptr;
    r.score = with_scores ? dscore.as<float>() : nullptr;
    r.score_stride = int64_t(cap) * nkv;
  }
  std::vector<AttnBlock> blocks;
  for (int r = 0; r < T; r += kBlockRows) {
    AttnBlock b{r, std::min(kBlockRows, T - r), rows[size_t(r)].begin, rows[size_t(std::min(T, r + kBlockRows) - 1)].slot + 1};
    blocks.push_back(b);
  }
  DevBuf drows = upload(e, rows), dblocks = upload(e, blocks);
  DevBuf partial(e, size_t(n_splits) * T * nh * (hd + 2) * 4, "partials");
  std::vector<uint16_t> poison(size_t(T) * nh * hd, 0x7fff);  // NaN in both f16 and bf16
  DevBuf dout = upload(e, poison);
  attention(dq.get(), drows.as<RowMeta>(), dblocks.as<AttnBlock>(), int(blocks.size()), T, nh, nkv, hd, 0, n_splits,
            partial.as<float>(), dout.get(), dt, e.stream);
  KF_CUDA(cudaStreamSynchronize(e.stream));
  auto out16 = download<uint16_t>(dout, poison.size());
  std::vector<float> out(out16.size());
  for (size_t i = 0; i < out.size(); i++) out[i] = from16(out16[i], dt);
  std::vector<double> ref(out.size()), score_ref(size_t(cap) * nkv, 0.0);
  const double scale = 1.0 / std::sqrt(double(hd));
  for (int t = 0; t < T; t++)
    for (int h = 0; h < nh; h++) {
      const int g = h / group, lo = rows[size_t(t)].begin, hi = rows[size_t(t)].slot + 1;
      std::vector<double> p(size_t(hi - lo));
      double mx = -INFINITY, sum = 0;
      for (int j = lo; j < hi; j++) {
        double s = 0;
        for (int d = 0; d < hd; d++) s += qr[(size_t(t) * nh + h) * hd + d] * kr[(size_t(j) * nkv + g) * hd + d];
        p[size_t(j - lo)] = s * scale;
        mx = std::max(mx, s * scale);
      }
      for (auto &x : p) sum += (x = std::exp(x - mx));
      for (int j = lo; j < hi; j++) score_ref[size_t(j) * nkv + g] += p[size_t(j - lo)] / sum;
      for (int d = 0; d < hd; d++) {
        double o = 0;
        for (int j = lo; j < hi; j++) o += p[size_t(j - lo)] * vr[(size_t(j) * nkv + g) * hd + d];
        ref[(size_t(t) * nh + h) * hd + d] = o / sum;
      }
    }
  char what[128];
  std::snprintf(what, sizeof what, "attention %s T=%d past=%d heads=%d/%d hd=%d window=%d splits=%d",
                dt == DType::F16 ? "f16" : "bf16", T, s0, nh, nkv, hd, window, n_splits);
  report(what, rel_err(out, ref), dt == DType::F16 ? 2e-3 : 1e-2);  // output rounded to 16 bits
  if (with_scores) {
    std::snprintf(what, sizeof what, "  slot scores of the above");
    report(what, rel_err(download<float>(dscore, score_ref.size()), score_ref), 1e-4);  // f32 sums
  }
}

void test_rmsnorm(Engine &e, int T, int H) {
  std::vector<float> x(size_t(T) * H), w(static_cast<size_t>(H));
  for (auto &v : x) v = uni(-2, 2);
  for (auto &v : w) v = uni(0.5, 1.5);
  DevBuf dx = upload(e, x), dw = upload(e, w);
  DevBuf dy = upload(e, std::vector<float>(x.size(), NAN));
  rmsnorm(dx.as<float>(), dw.as<float>(), T, H, 1e-5f, dy.get(), DType::F32, e.stream);
  KF_CUDA(cudaStreamSynchronize(e.stream));
  auto y = download<float>(dy, x.size());
  std::vector<double> ref(x.size());
  for (int t = 0; t < T; t++) {
    double ss = 0;
    for (int i = 0; i < H; i++) ss += double(x[size_t(t) * H + i]) * x[size_t(t) * H + i];
    const double inv = 1.0 / std::sqrt(ss / H + 1e-5);
    for (int i = 0; i < H; i++) ref[size_t(t) * H + i] = x[size_t(t) * H + i] * inv * w[size_t(i)];
  }
  char what[64];
  std::snprintf(what, sizeof what, "rmsnorm T=%d H=%d", T, H);
  report(what, rel_err(y, ref), 1e-5);
}

// One layer's LoCoCo fusion on the device against lococo.cpp's lococo_compress_layer, both starting from
// the same 16-bit keys, values and convolution weights.
void test_lococo(Engine &e, ThreadPool &pool, DType dt, int n, int nkv, int hd, int M, int Mc, int k, float lambda) {
  const int Mh = M - Mc, S = n - Mh, pad = (k - 1) / 2, two_hd = 2 * hd;
  kf_lococo_heads H;
  H.slots = M;
  H.fused = Mc;
  H.kernel = k;
  H.head_dim = hd;
  H.layers.resize(1);
  std::vector<double> wr, kr, vr, unused;
  auto w16 = rand16(size_t(Mc) * k * two_hd, dt, 0.05f, wr);
  H.layers[0].weight.assign(wr.begin(), wr.end());
  H.layers[0].bias.resize(size_t(Mc));
  for (auto &b : H.layers[0].bias) b = uni(-0.1f, 0.1f);
  H.layers[0].lambda = lambda;
  KvCache c;
  c.kind = KF_CACHE_LOCOCO;
  c.n_layers = 1;
  c.n_kv = nkv;
  c.head_dim = hd;
  c.capacity = n;
  c.n_slots = n;
  c.slots = M;
  c.heads = &H;
  auto k16 = rand16(size_t(n) * nkv * hd, dt, 1.0f, kr);
  auto v16 = rand16(size_t(n) * nkv * hd, dt, 1.0f, vr);
  c.k.assign(1, std::vector<float>(kr.begin(), kr.end()));
  c.v.assign(1, std::vector<float>(vr.begin(), vr.end()));
  c.score.assign(1, std::vector<float>(size_t(n) * nkv));
  for (auto &x : c.score[0]) x = uni(0.0f, 1.0f);
  c.shrink.init_lococo(n, H, M);
  // The device side's ranking, chosen from the same scores as forward.cu's cache_shrink does.
  std::vector<int32_t> idx(size_t(nkv) * (Mh + S) + size_t(nkv) * Mc), order(2 * size_t(n));
  std::vector<float> rest(static_cast<size_t>(n));
  for (int g = 0; g < nkv; g++) {
    std::iota(order.begin(), order.begin() + n, 0);
    top_slots(c.score[0].data() + g, nkv, order.data(), n, Mh);
    std::copy(order.begin(), order.begin() + n, idx.begin() + int64_t(g) * (Mh + S));
    for (int t = 0; t < S; t++) rest[size_t(t)] = c.score[0][size_t(order[size_t(Mh + t)]) * nkv + g];
    int32_t *pick = order.data() + n;
    std::iota(pick, pick + S, 0);
    top_slots(rest.data(), 1, pick, S, Mc);
    std::copy(pick, pick + Mc, idx.begin() + int64_t(nkv) * (Mh + S) + int64_t(g) * Mc);
  }
  DevBuf dk = upload(e, k16), dv = upload(e, v16), dw = upload(e, w16), db = upload(e, H.layers[0].bias),
         didx = upload(e, idx);
  DevBuf x_pad(e, size_t(nkv) * (n + k - 1) * two_hd * 2, "x_pad"), x_t(e, size_t(nkv) * two_hd * n * 2, "x_t");
  DevBuf kept(e, size_t(nkv) * std::max(Mh, 1) * two_hd * 2, "kept"), mix(e, size_t(nkv) * Mc * n * 2, "mix");
  DevBuf conv(e, size_t(nkv) * n * Mc * 4, "conv"), fused(e, size_t(nkv) * Mc * two_hd * 4, "fused");
  LococoFuse f;
  f.dt = dt;
  f.K = dk.get();
  f.V = dv.get();
  f.idx = didx.as<const int32_t>();
  f.pick = didx.as<const int32_t>() + int64_t(nkv) * (Mh + S);
  f.weight = dw.get();
  f.bias = db.as<float>();
  f.lambda = lambda;
  f.nkv = nkv;
  f.hd = hd;
  f.Mh = Mh;
  f.Mc = Mc;
  f.S = S;
  f.kernel = k;
  f.pad = pad;
  f.x_pad = x_pad.get();
  f.x_t = x_t.get();
  f.kept = kept.get();
  f.mix = mix.get();
  f.conv = conv.as<float>();
  f.fused = fused.as<float>();
  lococo_fuse_layer(f, e.stream);
  KF_CUDA(cudaStreamSynchronize(e.stream));
  lococo_compress_layer(c, pool, 0);  // the CPU reference, in place on c.k / c.v
  const size_t used = size_t(M) * nkv * hd;
  auto gk = download<uint16_t>(dk, used), gv = download<uint16_t>(dv, used);
  std::vector<float> got(2 * used);
  std::vector<double> want(2 * used);
  for (size_t i = 0; i < used; i++) {
    got[i] = from16(gk[i], dt);
    got[used + i] = from16(gv[i], dt);
    want[i] = c.k[0][i];
    want[used + i] = c.v[0][i];
  }
  char what[128];
  std::snprintf(what, sizeof what, "lococo fuse %s n=%d kv=%d hd=%d M=%d Mc=%d k=%d lambda=%.1f",
                dt == DType::F16 ? "f16" : "bf16", n, nkv, hd, M, Mc, k, lambda);
  report(what, rel_err(got, want), dt == DType::F16 ? 3e-3 : 1.5e-2);  // 16-bit mixing weights and outputs
}

}  // namespace

int main() {
  try {
    std::string name;
    EnginePtr e = engine_open(0, 0, name);
    Doing op("test kernels");
    std::printf("%s\n", name.c_str());
    for (DType dt : {DType::BF16, DType::F16}) {
      const std::vector<std::array<int, 3>> shapes = {{1, 64, 64},    {2, 100, 72},     {3, 257, 4096},
                                                      {4, 33, 100},   {5, 64, 64},      {17, 130, 100},
                                                      {64, 64, 64},   {300, 1000, 768}, {33, 4096, 4096}};
      for (auto [M, N, K] : shapes) {
        for (bool acc : {false, true}) {
          test_matmul(*e, dt, M, N, K, acc, true);
          if (e->blas_handle) test_matmul(*e, dt, M, N, K, acc, false);
        }
      }
      for (int hd : {16, 64, 128, 256}) {
        test_attention(*e, dt, 1, 0, 4, 2, hd, 0, 1);         // first token
        test_attention(*e, dt, 1, 700, 8, 2, hd, 0, 1);       // decode, one split
        test_attention(*e, dt, 1, 700, 8, 2, hd, 0, 7);       // decode, split-KV
        test_attention(*e, dt, 37, 0, 4, 4, hd, 0, 1);        // prefill chunk from empty
        test_attention(*e, dt, 40, 90, 8, 1, hd, 0, 1);       // chunk after a past, MQA
        test_attention(*e, dt, 40, 90, 4, 2, hd, 16, 1);      // sliding window
        test_attention(*e, dt, 3, 300, 4, 2, hd, 0, 5);       // a few rows, split
        test_attention(*e, dt, 40, 90, 4, 2, hd, 0, 1, true); // prefill chunk with slot scores (lococo, h2o)
        test_attention(*e, dt, 1, 500, 8, 2, hd, 0, 1, true); // decode with slot scores
      }
    }
    ThreadPool pool(4);
    for (DType dt : {DType::BF16, DType::F16}) {
      test_lococo(*e, pool, dt, 120, 2, 16, 64, 32, 5, 0.7f);
      test_lococo(*e, pool, dt, 300, 4, 64, 200, 100, 21, 0.5f);
      test_lococo(*e, pool, dt, 300, 2, 128, 200, 100, 21, 0.0f);  // λ = 0: exact copies (H2O-like)
      test_lococo(*e, pool, dt, 97, 1, 16, 40, 40, 3, 1.0f);       // Mh = 0: everything fused
    }
    const std::vector<std::array<int, 2>> norms = {{1, 64}, {7, 4096}, {3, 100}};
    for (auto [T, H] : norms) test_rmsnorm(*e, T, H);
  } catch (const kf::Error &err) {
    std::printf("FAIL %s\n", err.what());
    return 2;
  }
  std::printf("%s: %d failure(s)\n", g_fail ? "FAILED" : "ok", g_fail);
  return g_fail ? 1 : 0;
}

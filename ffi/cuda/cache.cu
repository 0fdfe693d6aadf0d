// cache.cu — a session's device KV cache read back (kf_session_read_cache), and the compressing caches
// (LoCoCo, H2O, StreamingLLM) checkpointed, restored and shrunk on the device.
#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "device_state.cuh"

namespace kf::cuda {

void read_cache(const kf_session &s, int32_t layer, float *keys, float *values, float *scores, int32_t n_slots) {
  Doing op("read cache");
  const Session &ds = dev(s);
  use_device(*ds.engine);
  if (scores && n_slots > 0) {
    const size_t ns = size_t(n_slots) * size_t(s.cache.n_kv);
    KF_CUDA(cudaMemcpy(scores, ds.score.as<float>() + int64_t(layer) * s.cache.capacity * s.cache.n_kv, ns * 4,
                       cudaMemcpyDeviceToHost));
  }
  const ModelConfig &c = s.model->cfg;
  const size_t n = size_t(n_slots) * size_t(c.n_kv_heads) * size_t(c.head_dim);
  const DType dt = dev(*s.model).dt;
  std::vector<uint16_t> raw(n);
  for (int which = 0; which < 2; which++) {
    float *dst = which == 0 ? keys : values;
    if (!dst || n == 0) continue;
    const uint16_t *src = static_cast<const uint16_t *>((which == 0 ? ds.k : ds.v).get()) + layer * ds.layer_stride;
    KF_CUDA(cudaMemcpy(raw.data(), src, n * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; i++) dst[i] = dt == DType::F16 ? f16_to_f32(raw[i]) : bf16_to_f32(raw[i]);
  }
}

// ---- compressing caches: shrunk on the device; the ranking (top_slots, as kv_cache.cpp and lococo.cpp
// choose) is made on the host from one layer's scores at a time ----

void cache_checkpoint(kf_session &s) {
  Doing op("run the model");
  Session &ds = dev(s);
  ds.slots_saved = false;
  if (!ds.score.get()) return;
  use_device(*ds.engine);
  KF_CUDA(cudaMemcpyAsync(ds.score_saved.get(), ds.score.get(), ds.score.bytes(), cudaMemcpyDeviceToDevice,
                          ds.engine->stream));
}

void cache_restore(kf_session &s) {
  Doing op("roll the cache back");
  Session &ds = dev(s);
  use_device(*ds.engine);
  const cudaStream_t st = ds.engine->stream;
  if (ds.slots_saved) {  // the slots as the call found them
    KF_CUDA(cudaMemcpyAsync(ds.k.get(), ds.k_saved.get(), ds.k.bytes(), cudaMemcpyDeviceToDevice, st));
    KF_CUDA(cudaMemcpyAsync(ds.v.get(), ds.v_saved.get(), ds.v.bytes(), cudaMemcpyDeviceToDevice, st));
    ds.slots_saved = false;
  }
  if (ds.score.get())
    KF_CUDA(cudaMemcpyAsync(ds.score.get(), ds.score_saved.get(), ds.score.bytes(), cudaMemcpyDeviceToDevice, st));
  KF_CUDA(cudaStreamSynchronize(st));
}

void cache_shrink(kf_session &s) {
  Doing op("compress the cache");
  Session &ds = dev(s);
  Engine &e = *ds.engine;
  use_device(e);
  KvCache &c = s.cache;
  const DType dt = dev(*s.model).dt;
  const auto t0 = std::chrono::steady_clock::now();
  const int32_t n = c.n_slots, nkv = c.n_kv, hd = c.head_dim;
  if (!ds.slots_saved) {  // once per call, before its first shrink rewrites slots
    KF_CUDA(cudaMemcpyAsync(ds.k_saved.get(), ds.k.get(), ds.k.bytes(), cudaMemcpyDeviceToDevice, e.stream));
    KF_CUDA(cudaMemcpyAsync(ds.v_saved.get(), ds.v.get(), ds.v.bytes(), cudaMemcpyDeviceToDevice, e.stream));
    ds.slots_saved = true;
  }
  std::vector<int32_t> &ih = ds.idx_host;
  int32_t *order = ds.order.data();
  auto layer_k = [&](int32_t l) { return static_cast<uint16_t *>(ds.k.get()) + int64_t(l) * ds.layer_stride; };
  auto layer_v = [&](int32_t l) { return static_cast<uint16_t *>(ds.v.get()) + int64_t(l) * ds.layer_stride; };
  int32_t kept_slots = 0;

  if (c.kind == KF_CACHE_STREAMING) {
    // The first `sinks` slots and the last `window`, the same for every head and layer.
    kept_slots = c.sinks + c.window;
    for (int32_t g = 0; g < nkv; g++)
      for (int32_t m = 0; m < kept_slots; m++)
        ih[size_t(g) * kept_slots + m] = m < c.sinks ? m : n - c.window + (m - c.sinks);
    KF_CUDA(cudaMemcpyAsync(ds.idx.get(), ih.data(), size_t(nkv) * kept_slots * 4, cudaMemcpyHostToDevice, e.stream));
    for (int32_t l = 0; l < c.n_layers; l++)
      gather_slots(layer_k(l), layer_v(l), ds.idx.as<const int32_t>(), nkv, hd, kept_slots, ds.gathered.get(), dt,
                   e.stream);
  } else {
    const int32_t M = c.slots;
    const kf_lococo_heads *H = c.kind == KF_CACHE_LOCOCO ? c.heads : nullptr;
    if (H && !H->device) raise(KF_ERR_INTERNAL, "cannot compress the cache: the LoCoCo heads have no device copy");
    const int32_t Mc = H ? H->fused : 0, Mh = M - Mc, S = n - Mh;  // h2o: Mh = M heavy hitters, nothing fused
    kept_slots = M;
    for (int32_t l = 0; l < c.n_layers; l++) {
      float *sc_dev = ds.score.as<float>() + int64_t(l) * c.capacity * nkv;
      // Stream-ordered copies to and from pageable memory return once the host side is done with.
      KF_CUDA(cudaMemcpyAsync(ds.score_host.data(), sc_dev, size_t(n) * nkv * 4, cudaMemcpyDeviceToHost, e.stream));
      const float *sc = ds.score_host.data();
      float *sn = ds.score_new.data();
      int32_t *pick_h = ih.data() + int64_t(nkv) * (Mh + S);
      for (int32_t g = 0; g < nkv; g++) {
        // Heavy hitters order[0..Mh), the rest order[Mh..n), both in cache order.
        std::iota(order, order + n, 0);
        top_slots(sc + g, nkv, order, n, Mh);
        for (int32_t m = 0; m < Mh; m++) sn[int64_t(m) * nkv + g] = sc[int64_t(order[m]) * nkv + g];
        if (!H) {
          std::copy(order, order + Mh, ih.data() + int64_t(g) * Mh);
          continue;
        }
        std::copy(order, order + n, ih.data() + int64_t(g) * (Mh + S));
        float *rest = ds.rest_score.data();
        int32_t *pick = order + n;
        for (int32_t t = 0; t < S; t++) rest[t] = sc[int64_t(order[Mh + t]) * nkv + g];
        std::iota(pick, pick + S, 0);
        top_slots(rest, 1, pick, S, Mc);
        std::copy(pick, pick + Mc, pick_h + int64_t(g) * Mc);
        // Scores move with the heavy hitters; a fused slot takes its picked slot's score.
        for (int32_t ch = 0; ch < Mc; ch++) sn[int64_t(Mh + ch) * nkv + g] = rest[pick[ch]];
      }
      const size_t n_idx = H ? size_t(nkv) * (Mh + S + Mc) : size_t(nkv) * Mh;
      KF_CUDA(cudaMemcpyAsync(ds.idx.get(), ih.data(), n_idx * 4, cudaMemcpyHostToDevice, e.stream));
      KF_CUDA(cudaMemcpyAsync(sc_dev, sn, size_t(M) * nkv * 4, cudaMemcpyHostToDevice, e.stream));
      if (!H) {
        gather_slots(layer_k(l), layer_v(l), ds.idx.as<const int32_t>(), nkv, hd, M, ds.gathered.get(), dt, e.stream);
        continue;
      }
      LococoFuse f;
      f.dt = dt;
      f.K = layer_k(l);
      f.V = layer_v(l);
      f.idx = ds.idx.as<const int32_t>();
      f.pick = ds.idx.as<const int32_t>() + int64_t(nkv) * (Mh + S);
      f.weight = dev(*H).weight[size_t(l)];
      f.bias = dev(*H).bias[size_t(l)];
      f.lambda = H->layers[size_t(l)].lambda;
      f.nkv = nkv;
      f.hd = hd;
      f.Mh = Mh;
      f.Mc = Mc;
      f.S = S;
      f.kernel = H->kernel;
      f.pad = (H->kernel - 1) / 2;
      f.x_pad = ds.x_pad.get();
      f.x_t = ds.x_t.get();
      f.kept = ds.kept.get();
      f.mix = ds.mix.get();
      f.conv = ds.conv.as<float>();
      f.fused = ds.fused.as<float>();
      lococo_fuse_layer(f, e.stream);
    }
  }
  KF_CUDA(cudaStreamSynchronize(e.stream));
  c.n_slots = kept_slots;
  c.compressions++;
  c.compress_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace kf::cuda

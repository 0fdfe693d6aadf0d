// kv_cache.cpp — allocation, the shrink trigger and the policies without learned weights (h2o,
// streaming); the LoCoCo fusion lives in lococo.cpp.
#include "kv_cache.h"

#include <algorithm>
#include <chrono>
#include <numeric>

#include "model.h"

namespace kf {

int32_t cache_capacity(const kf_session_params &p, int32_t segment) {
  switch (p.cache_kind) {
  case KF_CACHE_LOCOCO:
  case KF_CACHE_H2O: return p.slots + kCacheSlack + segment;
  case KF_CACHE_STREAMING: return p.sinks + p.window + segment;
  default: return p.n_ctx;
  }
}

void cache_init(KvCache &c, const kf_model &m, const kf_session_params &p, int32_t capacity, bool host_slots) {
  const ModelConfig &cfg = m.cfg;
  c.kind = p.cache_kind;
  c.n_layers = cfg.n_layers;
  c.n_kv = cfg.n_kv_heads;
  c.head_dim = cfg.head_dim;
  c.capacity = capacity;
  c.slots = p.slots;
  c.sinks = p.sinks;
  c.window = p.window;
  c.heads = p.cache_kind == KF_CACHE_LOCOCO ? p.heads : nullptr;
  if (!host_slots) {
    cache_clear(c);
    return;
  }
  const size_t kv_dim = size_t(c.n_kv) * size_t(c.head_dim), L = size_t(c.n_layers);
  c.k.assign(L, {});
  c.v.assign(L, {});
  for (size_t l = 0; l < L; l++) {
    // Reserved, advised, then zeroed: the first touch is what THP backs with huge pages (a decode step
    // streams every slot of every layer: 4 KiB pages cost a 4096-position 134M decode 10%).
    for (std::vector<float> *a : {&c.k[l], &c.v[l]}) {
      a->reserve(size_t(capacity) * kv_dim);
      advise_huge_pages(a->data(), a->capacity() * sizeof(float));
      a->assign(size_t(capacity) * kv_dim, 0.0f);
    }
  }
  c.score.assign(c.needs_scores() ? L : 0, std::vector<float>(size_t(capacity) * size_t(c.n_kv), 0.0f));
  c.saved.score = c.score;
  if (c.kind == KF_CACHE_H2O) c.shrink.order.assign(size_t(capacity), 0);
  if (c.heads) c.shrink.init_lococo(capacity, *c.heads, c.slots);
  cache_clear(c);
}

void cache_clear(KvCache &c) {
  c.n_slots = 0;
  c.peak = 0;
  c.compressions = 0;
  c.compress_ns = 0;
  c.saved.has_slots = false;
}

int64_t KvCache::bytes() const {
  int64_t n = 0;
  for (const auto &x : k) n += int64_t(x.capacity()) * 4;
  for (const auto &x : v) n += int64_t(x.capacity()) * 4;
  for (const auto &x : score) n += int64_t(x.capacity()) * 4;
  return n;
}

int64_t KvCache::scratch_bytes() const {
  const auto sz = [](const auto &x) { return int64_t(x.capacity()) * int64_t(sizeof(x[0])); };
  int64_t n = shrink.bytes();
  for (const auto &x : saved.k) n += sz(x);
  for (const auto &x : saved.v) n += sz(x);
  for (const auto &x : saved.score) n += sz(x);
  return n;
}

void ShrinkScratch::init_lococo(int32_t S_in, const kf_lococo_heads &h, int32_t M) {
  const size_t S = size_t(S_in), two_hd = 2 * size_t(h.head_dim), Mc = size_t(h.fused);
  const size_t Mh = size_t(std::max(0, M - h.fused));
  x_pad.assign((S + size_t(h.kernel) - 1) * two_hd, 0.0f);
  x_t.assign(two_hd * S, 0.0f);
  conv.assign(S * Mc, 0.0f);
  mix.assign(Mc * S, 0.0f);
  fused.assign(Mc * two_hd, 0.0f);
  kept.assign(Mh * two_hd, 0.0f);
  order.assign(2 * S, 0);
  rest_score.assign(S, 0.0f);
}

int64_t ShrinkScratch::bytes() const {
  const auto sz = [](const auto &x) { return int64_t(x.capacity()) * int64_t(sizeof(x[0])); };
  return sz(x_pad) + sz(x_t) + sz(conv) + sz(mix) + sz(fused) + sz(kept) + sz(order) + sz(rest_score);
}

bool cache_over_limit(const KvCache &c) {
  switch (c.kind) {
  case KF_CACHE_LOCOCO:
  case KF_CACHE_H2O: return c.n_slots > c.slots + kCacheSlack;
  case KF_CACHE_STREAMING: return c.n_slots > c.sinks + c.window;
  default: return false;
  }
}

void top_slots(const float *score, int64_t stride, int32_t *idx, int32_t count, int32_t n) {
  n = std::max(0, std::min(n, count));
  const auto higher = [&](int32_t a, int32_t b) {
    const float sa = score[a * stride], sb = score[b * stride];
    return sa > sb || (sa == sb && a < b);
  };
  if (n < count) std::nth_element(idx, idx + n, idx + count, higher);
  std::sort(idx, idx + n);
  std::sort(idx + n, idx + count);
}

namespace {

// H2O: per KV head, the top M slots by score move to slots 0..M-1, in cache order.
void h2o_shrink_layer(KvCache &c, int32_t l) {
  const int32_t n = c.n_slots, M = c.slots, nkv = c.n_kv, hd = c.head_dim;
  float *K = c.k[size_t(l)].data(), *V = c.v[size_t(l)].data(), *sc = c.score[size_t(l)].data();
  int32_t *idx = c.shrink.order.data();
  for (int32_t g = 0; g < nkv; g++) {
    std::iota(idx, idx + n, 0);
    top_slots(sc + g, nkv, idx, n, M);
    // idx[m] >= m (ascending, distinct), so copying forward in order never overwrites a source yet to be read.
    for (int32_t m = 0; m < M; m++) {
      const int64_t from = (int64_t(idx[m]) * nkv + g) * hd, to = (int64_t(m) * nkv + g) * hd;
      if (from == to) continue;
      std::copy_n(K + from, hd, K + to);
      std::copy_n(V + from, hd, V + to);
      sc[int64_t(m) * nkv + g] = sc[int64_t(idx[m]) * nkv + g];
    }
  }
}

// StreamingLLM: the first `sinks` slots stay, the last `window` move down behind them (all heads at once).
void streaming_shrink_layer(KvCache &c, int32_t l) {
  const int64_t kv_dim = int64_t(c.n_kv) * c.head_dim;
  const int64_t from = int64_t(c.n_slots - c.window) * kv_dim, to = int64_t(c.sinks) * kv_dim;
  float *K = c.k[size_t(l)].data(), *V = c.v[size_t(l)].data();
  std::copy(K + from, K + from + int64_t(c.window) * kv_dim, K + to);  // to < from: a forward copy is safe
  std::copy(V + from, V + from + int64_t(c.window) * kv_dim, V + to);
}

}  // namespace

void cache_shrink(KvCache &c, ThreadPool &pool) {
  if (!cache_over_limit(c)) return;
  const auto t0 = std::chrono::steady_clock::now();
  for (int32_t l = 0; l < c.n_layers; l++) {
    switch (c.kind) {
    case KF_CACHE_H2O: h2o_shrink_layer(c, l); break;
    case KF_CACHE_STREAMING: streaming_shrink_layer(c, l); break;
    case KF_CACHE_LOCOCO: lococo_compress_layer(c, pool, l); break;
    default: return;
    }
  }
  c.n_slots = c.kind == KF_CACHE_STREAMING ? c.sinks + c.window : c.slots;
  c.compressions++;
  c.compress_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
}

void cache_checkpoint(KvCache &c) {
  KvCache::Saved &s = c.saved;
  s.n_slots = c.n_slots;
  s.peak = c.peak;
  s.compressions = c.compressions;
  s.has_slots = false;
  // Every forward rewrites the scores of the slots it saw, so they are kept from the start.
  const size_t used = size_t(c.n_slots) * size_t(c.n_kv);
  for (size_t l = 0; l < c.score.size(); l++)
    std::copy_n(c.score[l].begin(), used, s.score[l].begin());
}

void cache_save_slots(KvCache &c) {
  KvCache::Saved &s = c.saved;
  if (s.has_slots) return;
  // Slots [0, checkpoint) are untouched until the first shrink (forwards only append past them).
  const size_t used = size_t(s.n_slots) * size_t(c.n_kv) * size_t(c.head_dim), L = size_t(c.n_layers);
  s.k.resize(L);
  s.v.resize(L);
  for (size_t l = 0; l < L; l++) {
    s.k[l].assign(c.k[l].begin(), c.k[l].begin() + int64_t(used));
    s.v[l].assign(c.v[l].begin(), c.v[l].begin() + int64_t(used));
  }
  s.has_slots = true;
}

void cache_restore(KvCache &c) {
  KvCache::Saved &s = c.saved;
  if (s.has_slots) {
    for (size_t l = 0; l < s.k.size(); l++) {
      std::copy(s.k[l].begin(), s.k[l].end(), c.k[l].begin());
      std::copy(s.v[l].begin(), s.v[l].end(), c.v[l].begin());
    }
  }
  const size_t used = size_t(s.n_slots) * size_t(c.n_kv);
  for (size_t l = 0; l < c.score.size(); l++) std::copy_n(s.score[l].begin(), used, c.score[l].begin());
  c.n_slots = s.n_slots;
  c.peak = s.peak;
  c.compressions = s.compressions;
  s.has_slots = false;
}

}  // namespace kf

// sampler.cpp — next-token choice: repetition penalty, temperature, top-k, top-p, min-p, seeded RNG.
#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <unordered_set>

namespace kf {

namespace {

uint64_t splitmix64(uint64_t &x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// A key whose unsigned ascending order is the logits' descending order: the float's bits mapped so
// that unsigned order is float order (-0 counted as +0, as == does; no NaN reaches here), inverted.
uint32_t descending_key(float logit) {
  uint32_t bits;
  const float x = logit == 0.0f ? 0.0f : logit;
  std::memcpy(&bits, &x, sizeof bits);
  return ~(bits & 0x80000000u ? ~bits : bits | 0x80000000u);
}

}  // namespace

void sampler_validate(const kf_sampler_params &p) {
  if (!(p.temperature >= 0.0f) || !std::isfinite(p.temperature))
    raise(KF_ERR_INVALID_ARGUMENT, "cannot create sampler: temperature %g must be a finite number >= 0",
          double(p.temperature));
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f))
    raise(KF_ERR_INVALID_ARGUMENT, "cannot create sampler: top_p %g must be in (0, 1]", double(p.top_p));
  if (p.top_k < 0) raise(KF_ERR_INVALID_ARGUMENT, "cannot create sampler: top_k %d is negative", p.top_k);
  if (!(p.repetition_penalty > 0.0f) || !std::isfinite(p.repetition_penalty))
    raise(KF_ERR_INVALID_ARGUMENT, "cannot create sampler: repetition_penalty %g must be a finite number > 0",
          double(p.repetition_penalty));
  if (p.repeat_last_n < 0)
    raise(KF_ERR_INVALID_ARGUMENT, "cannot create sampler: repeat_last_n %d is negative", p.repeat_last_n);
  if (!(p.min_p >= 0.0f && p.min_p < 1.0f))
    raise(KF_ERR_INVALID_ARGUMENT, "cannot create sampler: min_p %g must be in [0, 1)", double(p.min_p));
}

Sampler::Sampler(const kf_sampler_params &p) : params(p) {
  sampler_validate(p);
  uint64_t s = p.seed;
  for (auto &w : rng) w = splitmix64(s);
}

double Sampler::uniform() {  // xoshiro256**, 53 random bits in [0, 1)
  auto rotl = [](uint64_t x, int k) { return (x << k) | (x >> (64 - k)); };
  const uint64_t result = rotl(rng[1] * 5, 7) * 9;
  const uint64_t t = rng[1] << 17;
  rng[2] ^= rng[0];
  rng[3] ^= rng[1];
  rng[1] ^= rng[2];
  rng[0] ^= rng[3];
  rng[2] ^= t;
  rng[3] = rotl(rng[3], 45);
  return double(result >> 11) * (1.0 / 9007199254740992.0);
}

// Every id, best first: logit descending, ties by id ascending (the order top-k/top-p walk).
void Sampler::sort_candidates(int32_t n_vocab, size_t n) {
  const size_t v = size_t(n_vocab);
  if (n * 8 < v) {
    // A narrow top-k: select, then sort the few, on (key, id) pairs.
    wide.resize(v);
    for (size_t i = 0; i < v; i++) wide[i] = uint64_t(descending_key(work[i])) << 32 | uint32_t(i);
    std::nth_element(wide.begin(), wide.begin() + long(n) - 1, wide.end());
    std::sort(wide.begin(), wide.begin() + long(n));
    order.resize(n);
    for (size_t i = 0; i < n; i++) order[i] = int32_t(uint32_t(wide[i]));
    return;
  }
  // Otherwise a stable LSD radix sort of the ids by key, 8 bits a pass: ids start ascending and
  // stay in that order within equal keys. Linear, where a comparison sort of 32k ids is not.
  keys.resize(v);
  keys_tmp.resize(v);
  order.resize(v);
  order_tmp.resize(v);
  for (size_t i = 0; i < v; i++) {
    keys[i] = descending_key(work[i]);
    order[i] = int32_t(i);
  }
  for (int shift = 0; shift < 32; shift += 8) {
    size_t at[257] = {};
    for (size_t i = 0; i < v; i++) at[((keys[i] >> shift) & 255u) + 1]++;
    if (at[((keys[0] >> shift) & 255u) + 1] == v) continue;  // one digit everywhere: the pass keeps the order
    for (int d = 0; d < 256; d++) at[d + 1] += at[d];
    for (size_t i = 0; i < v; i++) {
      const size_t to = at[(keys[i] >> shift) & 255u]++;
      keys_tmp[to] = keys[i];
      order_tmp[to] = order[i];
    }
    keys.swap(keys_tmp);
    order.swap(order_tmp);
  }
  order.resize(n);
}

int32_t Sampler::sample(const float *logits, int32_t n_vocab) {
  if (n_vocab <= 0) raise(KF_ERR_INVALID_ARGUMENT, "cannot sample: vocabulary size %d", n_vocab);
  const bool penalty = params.repetition_penalty != 1.0f && params.repeat_last_n > 0;
  if (params.temperature == 0.0f && allowed.empty() && !penalty) {
    // Plain greedy, no copy: the largest logit over 8 independent lanes (x > m ? x : m is one SIMD
    // max; NaN never wins it, and is caught by the lanes' own test), then its first index: the same
    // first max the general path finds.
    float lane[8];
    bool nan = false;
    std::fill(lane, lane + 8, -INFINITY);
    int32_t i = 0;
    for (; i + 8 <= n_vocab; i += 8)
      for (int k = 0; k < 8; k++) {
        const float x = logits[i + k];
        nan |= x != x;
        lane[k] = x > lane[k] ? x : lane[k];
      }
    for (; i < n_vocab; i++) {
      nan |= logits[i] != logits[i];
      lane[0] = logits[i] > lane[0] ? logits[i] : lane[0];
    }
    if (nan)
      for (int32_t j = 0; j < n_vocab; j++)
        if (std::isnan(logits[j])) raise(KF_ERR_INVALID_ARGUMENT, "cannot sample: logit %d is NaN", j);
    const float best = *std::max_element(lane, lane + 8);
    int32_t chosen = 0;
    while (chosen < n_vocab - 1 && !(logits[chosen] == best)) chosen++;
    history.push_back(chosen);
    return chosen;
  }
  work.assign(logits, logits + n_vocab);
  for (int32_t i = 0; i < n_vocab; i++)
    if (std::isnan(work[size_t(i)]))
      raise(KF_ERR_INVALID_ARGUMENT, "cannot sample: logit %d is NaN", i);

  // Constrained decoding: ids outside the mask can never be chosen.
  int32_t n_allowed = n_vocab;
  if (!allowed.empty()) {
    if (allowed_vocab != n_vocab)
      raise(KF_ERR_INVALID_ARGUMENT, "cannot sample: the allowed-token mask covers %d ids, the logits %d",
            allowed_vocab, n_vocab);
    n_allowed = 0;
    for (int32_t i = 0; i < n_vocab; i++) {
      if (allowed[size_t(i) >> 3] & (1u << (i & 7))) n_allowed++;
      else work[size_t(i)] = -INFINITY;
    }
    if (n_allowed == 0) raise(KF_ERR_INVALID_ARGUMENT, "cannot sample: the allowed-token mask allows no id");
  }

  // Repetition penalty (CTRL): each distinct recent token once; positive logits shrink, negative grow.
  if (penalty) {
    const size_t from = history.size() > size_t(params.repeat_last_n) ? history.size() - size_t(params.repeat_last_n) : 0;
    std::unordered_set<int32_t> seen;
    for (size_t i = from; i < history.size(); i++) {
      const int32_t id = history[i];
      if (id < 0 || id >= n_vocab || !seen.insert(id).second) continue;
      float &x = work[size_t(id)];
      x = x > 0 ? x / params.repetition_penalty : x * params.repetition_penalty;
    }
  }

  int32_t chosen;
  if (params.temperature == 0.0f || n_allowed == 1) {
    chosen = int32_t(std::max_element(work.begin(), work.end()) - work.begin());  // first max on ties
    // All allowed logits -inf (or the only one): max_element gives the first id, maybe a masked one.
    if (!allowed.empty() && !(allowed[size_t(chosen) >> 3] & (1u << (chosen & 7))))
      for (int32_t i = 0; i < n_vocab; i++)
        if (allowed[size_t(i) >> 3] & (1u << (i & 7))) {
          chosen = i;
          break;
        }
  } else {
    // Candidates sorted by logit, descending, ties by id ascending. Top-k, and a mask (masked ids
    // are -inf, so they sort last), narrow the candidates.
    size_t n = size_t(n_allowed);
    if (params.top_k > 0 && size_t(params.top_k) < n) n = size_t(params.top_k);
    sort_candidates(n_vocab, n);

    // Softmax over the candidates at the temperature, in double for stable sums.
    probs.resize(n);
    const double maxl = work[size_t(order[0])];
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
      const double x = work[size_t(order[i])];
      // Every candidate -inf (a mask over -inf logits): equal chances rather than NaN.
      sum += probs[i] = std::isinf(maxl) && maxl < 0 ? 1.0 : std::exp((x - maxl) / params.temperature);
    }
    for (auto &p : probs) p /= sum;

    // min-p relative to the best, then top-p: the smallest prefix whose mass reaches top_p.
    size_t keep = n;
    if (params.min_p > 0.0f) {
      const double floor_p = params.min_p * probs[0];
      keep = 1;
      while (keep < n && probs[keep] >= floor_p) keep++;
    }
    if (params.top_p < 1.0f) {
      double cum = 0;
      size_t i = 0;
      for (; i < keep; i++) {
        cum += probs[i];
        if (cum >= params.top_p) break;
      }
      keep = std::min(keep, i + 1);
    }
    double mass = 0;
    for (size_t i = 0; i < keep; i++) mass += probs[i];
    const double r = uniform() * mass;
    double acc = 0;
    chosen = order[keep - 1];
    for (size_t i = 0; i < keep; i++) {
      acc += probs[i];
      if (r < acc) {
        chosen = order[i];
        break;
      }
    }
  }
  history.push_back(chosen);
  return chosen;
}

}  // namespace kf

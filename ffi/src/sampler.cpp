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

// A key whose ascending order is (logit descending, id ascending): the logit's bits mapped so that
// unsigned order is float order (-0 counted as +0, as == does; no NaN reaches here), inverted, in the
// high 32 bits; the id in the low 32.
uint64_t descending_key(float logit, int32_t id) {
  uint32_t bits;
  const float x = logit == 0.0f ? 0.0f : logit;
  std::memcpy(&bits, &x, sizeof bits);
  const uint32_t ascending = bits & 0x80000000u ? ~bits : bits | 0x80000000u;
  return uint64_t(~ascending) << 32 | uint32_t(id);
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

int32_t Sampler::sample(const float *logits, int32_t n_vocab) {
  if (n_vocab <= 0) raise(KF_ERR_INVALID_ARGUMENT, "cannot sample: vocabulary size %d", n_vocab);
  const bool penalty = params.repetition_penalty != 1.0f && params.repeat_last_n > 0;
  if (params.temperature == 0.0f && allowed.empty() && !penalty) {
    // Plain greedy: one pass over the logits, no copy (the same first max the general path finds).
    int32_t chosen = 0;
    for (int32_t i = 0; i < n_vocab; i++) {
      if (std::isnan(logits[i])) raise(KF_ERR_INVALID_ARGUMENT, "cannot sample: logit %d is NaN", i);
      if (logits[i] > logits[chosen]) chosen = i;
    }
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
    // Candidates sorted by logit, descending, ties by id. Each is one integer key (the logit's
    // order-preserving bits, inverted, above the id), so the sort compares integers rather than
    // looking logits up: the same order as comparing (logit desc, id asc), several times faster.
    keys.resize(size_t(n_vocab));
    for (int32_t i = 0; i < n_vocab; i++) keys[size_t(i)] = descending_key(work[size_t(i)], i);
    // Top-k, and a mask (masked ids are -inf, so they sort last), narrow before the full sort.
    size_t n = size_t(n_allowed);
    if (params.top_k > 0 && size_t(params.top_k) < n) n = size_t(params.top_k);
    if (n < size_t(n_vocab)) std::nth_element(keys.begin(), keys.begin() + long(n) - 1, keys.end());
    std::sort(keys.begin(), keys.begin() + long(n));
    order.resize(n);
    for (size_t i = 0; i < n; i++) order[i] = int32_t(uint32_t(keys[i]));

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

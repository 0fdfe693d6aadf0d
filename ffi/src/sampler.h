// sampler.h — the state behind kf_sampler.
#pragma once

#include <vector>

#include "common.h"

namespace kf {

void sampler_validate(const kf_sampler_params &p);

struct Sampler {
  kf_sampler_params params;
  uint64_t rng[4];               // xoshiro256** state, seeded by splitmix64(seed)
  std::vector<int32_t> history;  // accepted and sampled ids, for the repetition penalty
  std::vector<float> work;       // [vocab] penalised logits
  std::vector<uint64_t> keys;    // [vocab] sort keys (logit descending, id ascending)
  std::vector<int32_t> order;    // [candidates] candidate ids, best first
  std::vector<double> probs;     // [candidates]
  std::vector<uint8_t> allowed;  // [(allowed_vocab + 7) / 8] bitmask of ids that may be sampled; empty: all
  int32_t allowed_vocab = 0;

  explicit Sampler(const kf_sampler_params &p);
  double uniform();
  int32_t sample(const float *logits, int32_t n_vocab);
};

}  // namespace kf

struct kf_sampler : kf::Sampler {
  using kf::Sampler::Sampler;
};

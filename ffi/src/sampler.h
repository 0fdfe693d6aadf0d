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
  std::vector<uint32_t> keys, keys_tmp;    // [vocab] radix-sort keys (logit order, inverted)
  std::vector<int32_t> order, order_tmp;   // [vocab] ids; the first `candidates` best first after the sort
  std::vector<uint64_t> wide;              // [vocab] (key, id) pairs, for a narrow top-k
  std::vector<double> probs;     // [candidates]
  std::vector<uint8_t> allowed;  // [(allowed_vocab + 7) / 8] bitmask of ids that may be sampled; empty: all
  int32_t allowed_vocab = 0;

  explicit Sampler(const kf_sampler_params &p);
  double uniform();
  int32_t sample(const float *logits, int32_t n_vocab);
  // Fills order[0, n) with the n best ids of work, best first.
  void sort_candidates(int32_t n_vocab, size_t n);
};

}  // namespace kf

struct kf_sampler : kf::Sampler {
  using kf::Sampler::Sampler;
};

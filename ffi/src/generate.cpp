// generate.cpp — kf_session_generate: sampling and decoding in one native loop. From JavaScript a
// token costs a synchronous sample and a nonblocking decode, and the nonblocking call's two thread
// wake-ups leave a few hundred microseconds between decodes (5-30% of a small model's step); here
// the tokens of a whole time budget cross the FFI once.
#include <algorithm>
#include <chrono>

#include "api_guard.h"
#include "model.h"
#include "sampler.h"
#include "session.h"

using kf::api::guarded;
using kf::api::report;

extern "C" {

kf_generate_params kf_generate_default_params(void) {
  kf_generate_params p{};
  p.pending = -1;
  p.max_tokens = 1;
  p.budget_us = 0;
  return p;
}

kf_status kf_session_generate(kf_session *session, kf_sampler *sampler, const kf_generate_params *params,
                              const int32_t *stop_ids, int32_t n_stop_ids, int32_t *out_ids, int32_t *n_out,
                              kf_control *control) {
  if (n_out) *n_out = 0;
  return report(control, guarded("generate", [&] {
    KF_REQUIRE(session && sampler && params && out_ids && n_out, "generate",
               "session, sampler, params, out_ids or n_out is NULL");
    const kf_generate_params &p = *params;
    const int32_t vocab = session->model->cfg.vocab_size;
    KF_REQUIRE(p.max_tokens >= 1, "generate", "max_tokens %d is below 1", p.max_tokens);
    KF_REQUIRE(p.budget_us >= 0, "generate", "budget_us %lld is negative", static_cast<long long>(p.budget_us));
    KF_REQUIRE(p.pending >= -1 && p.pending < vocab, "generate", "pending token id %d is outside [-1, %d)", p.pending,
               vocab);
    KF_REQUIRE(n_stop_ids >= 0 && (stop_ids || n_stop_ids == 0), "generate",
               "stop_ids is NULL with n_stop_ids %d", n_stop_ids);
    const auto start = std::chrono::steady_clock::now();
    const int32_t *stops_end = stop_ids + n_stop_ids;
    const auto stops = [&](int32_t id) { return std::find(stop_ids, stops_end, id) != stops_end; };
    if (p.pending >= 0) {
      if (session->n_past >= session->n_ctx)
        kf::raise(KF_ERR_INVALID_STATE,
                  "cannot generate: the cache is full (%d positions), no room for the pending token", session->n_ctx);
      kf::check_cancel(control, "generate");
      kf::session_decode(*session, p.pending, control);
    }
    if (!session->has_logits) kf::raise(KF_ERR_INVALID_STATE, "cannot generate: the session has no logits yet");
    for (;;) {
      const int32_t id = sampler->sample(session->logits.data(), vocab);
      out_ids[(*n_out)++] = id;
      kf::progress_set(control, *n_out);
      if (*n_out >= p.max_tokens || stops(id) || session->n_past >= session->n_ctx) break;
      const auto spent = std::chrono::steady_clock::now() - start;
      if (std::chrono::duration_cast<std::chrono::microseconds>(spent).count() >= p.budget_us) break;
      kf::check_cancel(control, "generate");
      kf::session_decode(*session, id, control);
    }
  }));
}

}  // extern "C"

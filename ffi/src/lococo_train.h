// lococo_train.h — calibrating LoCoCo heads: the backward pass of the fusion (traced by lococo_fuse),
// the segment loop over a sequence, and the optimizer step.
#pragma once

#include <vector>

#include "kv_cache.h"
#include "train.h"

struct kf_lococo_trainer {
  kf_model *model = nullptr;
  kf_lococo_train_params params{};
  kf_lococo_heads heads;  // the trained values (weight tap-major [Mc, k, 2hd], as inference holds it)
  // Per layer: accumulated gradients and AdamW moments, in the heads' layouts.
  struct LayerState {
    std::vector<float> gw, gb, mw, vw, mb, vb;
    float gl = 0, ml = 0, vl = 0;
  };
  std::vector<LayerState> state;
  // The frozen LoRA the model runs with (kf_lococo_trainer_set_adapter), [n_layers][kNumProj]; rank 0 = none.
  std::vector<std::vector<kf::TrainPair>> no_lora;
  kf::PassScratch scratch;
  int64_t step = 0;
  int32_t accumulated = 0;  // sequences whose gradients wait for the next step
};

namespace kf {

void lococo_trainer_init(kf_lococo_trainer &tr, kf_model &m, const kf_lococo_train_params &p,
                         const kf_lococo_heads *init);
// One sequence through its segments; returns the mean segment loss and adds its gradients.
double lococo_trainer_accumulate(kf_lococo_trainer &tr, const int32_t *ids, int32_t n_ids, kf_control *ctl);
kf_train_step_info lococo_trainer_step(kf_lococo_trainer &tr);

}  // namespace kf

/*
 * kvfold_train.h — the training half of kvfold's C ABI: LoRA adapters, full-parameter and
 * AutoCompressor training, LoCoCo head calibration. kvfold.h includes it, so callers still include
 * only kvfold.h; the conventions there (statuses, default-params structs, kf_control) hold here.
 */
#ifndef KVFOLD_TRAIN_H
#define KVFOLD_TRAIN_H

#include "kvfold.h"

#ifdef __cplusplus
extern "C" {
#endif
/* ---------------------------------------------------------------------------------------------- */
/* LoRA training: the base model frozen, LoRA pairs trained with AdamW (LLoCO finetuning)            */

typedef struct kf_lora_trainer kf_lora_trainer;

typedef struct kf_lora_train_params {
  int32_t rank;          /* r; default 8                                                           */
  float alpha;           /* lora_alpha; default 16                                                 */
  uint32_t target_mask;  /* bit p trains projection p (0 q, 1 k, 2 v, 3 o, 4 gate, 5 up, 6 down);
                            default q, k, v, o (0x0F)                                              */
  int32_t use_rslora;    /* 1: scale alpha / sqrt(r) instead of alpha / r                          */
  uint64_t seed;         /* initialisation of A                                                    */
  float lr;              /* peak learning rate; default 2e-4                                       */
  float weight_decay;    /* AdamW decoupled weight decay; default 0                                */
  float beta1, beta2;    /* default 0.9, 0.999                                                     */
  float eps;             /* default 1e-8                                                           */
  float max_grad_norm;   /* clip the global gradient norm to this; 0 = no clipping; default 1     */
  float min_lr_ratio;    /* the cosine ends at min_lr_ratio * lr; default 0                        */
  int32_t warmup_steps;  /* linear warmup from 0; default 0                                        */
  int32_t total_steps;   /* cosine decay over this many steps; 0 = constant lr after warmup       */
  int32_t reserved;      /* keep zero                                                              */
} kf_lora_train_params;

typedef struct kf_lora_trainer_info {
  int32_t rank;
  uint32_t target_mask;
  int32_t n_layers;
  int32_t accumulated;   /* examples whose gradients wait for the next step                        */
  int64_t step;          /* optimizer steps taken                                                  */
  int64_t n_params;      /* trainable parameters                                                   */
  float alpha;
  float scale;           /* alpha / r or alpha / sqrt(r)                                            */
} kf_lora_trainer_info;

typedef struct kf_train_step_info {
  int64_t step;          /* steps taken, this one included                                         */
  float lr;              /* learning rate used                                                     */
  float grad_norm;       /* global norm of the averaged gradient, before clipping                  */
  int32_t examples;      /* examples averaged                                                      */
  int32_t reserved;
} kf_train_step_info;

/* Which tensor of a pair kf_lora_trainer_read / kf_lora_trainer_write address. */
typedef enum kf_lora_tensor {
  KF_LORA_A = 0,         /* lora_A [r, in] (PEFT layout, unscaled)                                  */
  KF_LORA_B = 1,         /* lora_B [out, r]                                                         */
  KF_LORA_GRAD_A = 2,    /* summed gradients of the accumulated examples                            */
  KF_LORA_GRAD_B = 3,
  KF_LORA_M_A = 4,       /* AdamW moments                                                           */
  KF_LORA_V_A = 5,
  KF_LORA_M_B = 6,
  KF_LORA_V_B = 7
} kf_lora_tensor;

KF_API kf_lora_train_params kf_lora_train_default_params(void);
/* New LoRA pairs for the masked projections of every layer: A uniform in +-1/sqrt(in) (PEFT's
 * kaiming init), B zero, so training starts from the base model. */
KF_API kf_status kf_lora_trainer_create(kf_model *model, const kf_lora_train_params *params, kf_lora_trainer **out);
KF_API kf_status kf_lora_trainer_free(kf_lora_trainer *trainer);
KF_API kf_status kf_lora_trainer_get_info(const kf_lora_trainer *trainer, kf_lora_trainer_info *out);
/* Forward and backward of one example: rows [prefix (n_prefix x hidden, f32; may be 0 rows) | ids],
 * positions 0..n_prefix+n_ids-1, causal. labels[t] is the token id that row n_prefix + t must
 * predict, or -1 (no loss). Adds the gradient of the mean cross-entropy over labelled rows to the
 * accumulated gradients and writes that mean to *loss. control: cancel (gradients unchanged then),
 * progress in layers. */
KF_API kf_status kf_lora_trainer_accumulate(kf_lora_trainer *trainer, const float *prefix, int32_t n_prefix,
                                            const int32_t *ids, const int32_t *labels, int32_t n_ids, float *loss,
                                            kf_control *control);
/* AdamW over the accumulated gradients averaged over the examples (clipped, lr from the schedule),
 * then zeroes them. Refused when nothing was accumulated. */
KF_API kf_status kf_lora_trainer_step(kf_lora_trainer *trainer, kf_train_step_info *out);
/* Copies a pair's tensor out / in (n floats, which must be its size): checkpoints and tests. layer and
 * proj (0..6) must name a trained pair. */
KF_API kf_status kf_lora_trainer_read(const kf_lora_trainer *trainer, int32_t layer, int32_t proj, int32_t which,
                                      float *out, int64_t n);
KF_API kf_status kf_lora_trainer_write(kf_lora_trainer *trainer, int32_t layer, int32_t proj, int32_t which,
                                       const float *in, int64_t n);
/* Sets the optimizer step count (resuming from a checkpoint) and drops accumulated gradients. */
KF_API kf_status kf_lora_trainer_set_step(kf_lora_trainer *trainer, int64_t step);

/* ---------------------------------------------------------------------------------------------- */
/* Full-parameter training: every tensor of the model (embed_tokens, the norms, every projection and
 * bias, the final norm, lm_head unless tied) as an f32 master copy trained with AdamW, the LoRA
 * trainer's schedule and clipping. With summary_length > 0 it also trains an AutoCompressor: the
 * rows of embed_summary.weight and the model together, on documents (next-segment language
 * modelling) and LLoCO questions ([summary vectors | question] -> answer). The trainer copies the
 * weights at create: the model it was created from is not changed (save the trained tensors with
 * kf_model_trainer_read). */

typedef struct kf_model_trainer kf_model_trainer;

typedef struct kf_model_train_params {
  uint64_t seed;             /* initialisation of embed_summary.weight                                */
  float lr;                  /* peak learning rate; default 1e-3                                      */
  float weight_decay;        /* AdamW decoupled decay of the matrices only (embed_tokens, projections,
                                lm_head, embed_summary); norms and biases never decay; default 0      */
  float beta1, beta2;        /* default 0.9, 0.999                                                    */
  float eps;                 /* default 1e-8                                                          */
  float max_grad_norm;       /* clip the global gradient norm to this; 0 = no clipping; default 1    */
  float min_lr_ratio;        /* the cosine ends at min_lr_ratio * lr; default 0                       */
  int32_t warmup_steps;      /* linear warmup from 0; default 0                                       */
  int32_t total_steps;       /* cosine decay over this many steps; 0 = constant lr after warmup      */
  int32_t summary_length;    /* rows of embed_summary.weight; 0 = no compressor; default 0           */
  int32_t segment_length;    /* compressor: document tokens per segment; default 512                 */
  int32_t backprop_segments; /* compressor: segments per gradient window (>= 1), see
                                kf_model_trainer_accumulate_document; default 2                        */
  float lm_weight;           /* compressor: weight of the next-segment LM loss; default 1            */
  float qa_weight;           /* compressor: weight of the QA loss; default 1                          */
  float init_std;            /* embed_summary.weight starts normal(0, init_std); default 0.02        */
  int32_t reserved;          /* keep zero                                                              */
} kf_model_train_params;

typedef struct kf_model_trainer_info {
  int64_t step;              /* optimizer steps taken                                                  */
  int64_t n_params;          /* trained values, embed_summary included                                 */
  int32_t accumulated;       /* examples (or documents) whose gradients wait for the next step        */
  int32_t n_tensors;         /* tensors kf_model_trainer_tensor_name enumerates                         */
  int32_t summary_length;
  int32_t tied;              /* 1: lm_head is embed_tokens (its gradient has both parts)              */
} kf_model_trainer_info;

/* Which copy of a tensor kf_model_trainer_read / kf_model_trainer_write address. */
typedef enum kf_train_tensor {
  KF_TRAIN_WEIGHT = 0,       /* the f32 master copy                                                   */
  KF_TRAIN_GRAD = 1,         /* summed gradient of the accumulated examples                           */
  KF_TRAIN_M = 2,            /* AdamW moments                                                          */
  KF_TRAIN_V = 3
} kf_train_tensor;

KF_API kf_model_train_params kf_model_train_default_params(void);
/* Copies every tensor of the model to f32 (any stored dtype) and zeroes the moments. With
 * summary_length > 0, embed_summary.weight [summary_length, hidden] starts normal(0, init_std)
 * from seed (write the model folder's own rows over it to continue a compressor). */
KF_API kf_status kf_model_trainer_create(kf_model *model, const kf_model_train_params *params,
                                         kf_model_trainer **out);
KF_API kf_status kf_model_trainer_free(kf_model_trainer *trainer);
KF_API kf_status kf_model_trainer_get_info(const kf_model_trainer *trainer, kf_model_trainer_info *out);
/* Tensor `index` (0..n_tensors-1): its HF name (NUL-terminated in cap bytes) and shape (*cols = 1 for
 * a vector). */
KF_API kf_status kf_model_trainer_tensor_name(const kf_model_trainer *trainer, int32_t index, char *name,
                                              int32_t cap, int64_t *rows, int64_t *cols);
/* One language-modelling example, as kf_lora_trainer_accumulate: rows [prefix | ids] at positions
 * 0.., causal; labels[t] is what row n_prefix + t predicts, or -1. Adds the gradients of the mean
 * cross-entropy of the labelled rows (for every tensor; the prefix rows are inputs, not trained).
 * On an error or cancel the gradients accumulated since the last step are dropped (zeroed). */
KF_API kf_status kf_model_trainer_accumulate(kf_model_trainer *trainer, const float *prefix, int32_t n_prefix,
                                             const int32_t *ids, const int32_t *labels, int32_t n_ids,
                                             float *loss, kf_control *control);
/* One compressor document (needs summary_length > 0). The ids split into segments of
 * segment_length; segment i runs [summaries of segments < i | segment i | embed_summary rows] at
 * positions 0..N-1, causal, and its last summary_length final-normed rows are its summaries (the
 * forward of kvfold's Compressor). Losses, each a mean cross-entropy:
 *   lm: every segment token predicts the next token of its segment (so segment i+1's tokens are
 *       predicted from the summaries of segments <= i);
 *   qa (when n_answer > 0): [all summaries | question | answer], labels on the answer only (the
 *       last question row predicts answer[0]).
 * The objective is lm_weight * lm + qa_weight * qa. Stop-gradient: the segments are cut into
 * windows of backprop_segments, the last window ending at the last segment; a summary vector
 * passes gradient to the encoder pass that produced it when it is read by a pass (or the QA pass
 * when produced by the last window) of the same window; summaries from earlier windows are
 * constants. Every pass gets the gradient of its own loss. Writes the two means (NaN for qa without
 * an answer; either pointer may be NULL). On an error or cancel the accumulated gradients are dropped. */
KF_API kf_status kf_model_trainer_accumulate_document(kf_model_trainer *trainer, const int32_t *ids, int32_t n_ids,
                                                      const int32_t *question, int32_t n_question,
                                                      const int32_t *answer, int32_t n_answer, float *lm_loss,
                                                      float *qa_loss, kf_control *control);
/* kf_model_trainer_accumulate_document with n_pairs (0..4096) questions over the one document: the
 * document is compressed once, then each pair j runs its own QA pass [all summaries | question j |
 * answer j] (pairs do not see each other), and the summaries' gradients of every pair add up before
 * the one backward through the encoder passes. Pair j's ids are question_lengths[j] ids of questions
 * and answer_lengths[j] ids of answers, following those of pairs < j. qa is one mean cross-entropy
 * over every answer token of every pair (a pair weighs as many answer tokens as it has; a pair with
 * no answer adds nothing); NaN when no pair has an answer. One pair is
 * kf_model_trainer_accumulate_document exactly; n_pairs 0 trains the LM loss only. */
KF_API kf_status kf_model_trainer_accumulate_document_pairs(kf_model_trainer *trainer, const int32_t *ids,
                                                            int32_t n_ids, const int32_t *questions,
                                                            const int32_t *question_lengths, const int32_t *answers,
                                                            const int32_t *answer_lengths, int32_t n_pairs,
                                                            float *lm_loss, float *qa_loss, kf_control *control);
/* kf_model_trainer_accumulate_document_pairs with a third objective, summary targets: summary row
 * target_rows[i] (0 .. n_segments * summary_length - 1, every segment's summaries in order) predicts
 * target_tokens[i] through the LM head (a row may appear several times with different tokens).
 * target is one mean cross-entropy over the n_targets (0..2^20) targets, added to the objective times
 * target_weight (finite, >= 0); its gradient reaches the encoder pass of the target's segment even
 * where the stop-gradient rule leaves that window constant for the QA loss. NaN when n_targets is 0
 * or target_weight 0. With n_targets 0 this is kf_model_trainer_accumulate_document_pairs exactly. */
KF_API kf_status kf_model_trainer_accumulate_document_targets(
    kf_model_trainer *trainer, const int32_t *ids, int32_t n_ids, const int32_t *questions,
    const int32_t *question_lengths, const int32_t *answers, const int32_t *answer_lengths, int32_t n_pairs,
    const int32_t *target_rows, const int32_t *target_tokens, int32_t n_targets, float target_weight,
    float *lm_loss, float *qa_loss, float *target_loss, kf_control *control);
/* Data parallelism: kf_model_trainer_accumulate and kf_model_trainer_accumulate_document_targets
 * into gradient replica `replica` (0 .. 63), computed wholly on the calling thread (not the engine's
 * pool), so calls on different replicas run at the same time from different threads; a second call on
 * a busy replica is refused (KF_ERR_INVALID_STATE). Replica 0 is the one the calls above use; each
 * other replica holds its own gradients (4 bytes per parameter, allocated on first use), which
 * kf_model_trainer_step adds into replica 0's in replica order before the update. Splitting a batch
 * by a fixed rule (ModelTrainer.accumulateBatch: by estimated work) therefore gives bits that depend on
 * the split, never on timing or threads.
 * A failed or cancelled call drops the gradients of its replica only; kf_model_trainer_set_step drops
 * every replica's. Steps, writes and set_step wait for running calls. */
KF_API kf_status kf_model_trainer_accumulate_on(kf_model_trainer *trainer, int32_t replica, const float *prefix,
                                                int32_t n_prefix, const int32_t *ids, const int32_t *labels,
                                                int32_t n_ids, float *loss, kf_control *control);
KF_API kf_status kf_model_trainer_accumulate_document_on(
    kf_model_trainer *trainer, int32_t replica, const int32_t *ids, int32_t n_ids, const int32_t *questions,
    const int32_t *question_lengths, const int32_t *answers, const int32_t *answer_lengths, int32_t n_pairs,
    const int32_t *target_rows, const int32_t *target_tokens, int32_t n_targets, float target_weight,
    float *lm_loss, float *qa_loss, float *target_loss, kf_control *control);
/* AdamW over the accumulated gradients averaged over the examples (clipped, lr from the schedule),
 * then zeroes them. Refused when nothing was accumulated. */
KF_API kf_status kf_model_trainer_step(kf_model_trainer *trainer, kf_train_step_info *out);
/* Copies a tensor named as in HF (e.g. "model.layers.0.self_attn.q_proj.weight",
 * "embed_summary.weight") out / in; n must be its size. Written weights must be finite. */
KF_API kf_status kf_model_trainer_read(const kf_model_trainer *trainer, const char *name, int32_t which, float *out,
                                       int64_t n);
KF_API kf_status kf_model_trainer_write(kf_model_trainer *trainer, const char *name, int32_t which,
                                        const float *in, int64_t n);
/* Sets the optimizer step count (resuming from a checkpoint) and drops accumulated gradients. */
KF_API kf_status kf_model_trainer_set_step(kf_model_trainer *trainer, int64_t step);


/* LoCoCo calibration, as the released code trains heads: text sequences fed in segments of B, the
 * loss of each segment backpropagated into the heads (conv weight, bias, lambda) through the fused
 * slots it attended to, the cache detached between segments, the model frozen. */
typedef struct kf_lococo_trainer kf_lococo_trainer;

typedef struct kf_lococo_train_params {
  int32_t slots;         /* M; default 512                                                          */
  int32_t segment;       /* B; default 512                                                          */
  int32_t kernel;        /* k, odd; default 21                                                      */
  float keep_rate;       /* r; Mc = floor(M * (1 - r)); default 0.5                                 */
  uint64_t seed;         /* initialisation of new heads                                             */
  float init_lambda;     /* lambda of new heads; default 0.5                                        */
  float lr;              /* peak learning rate; default 1e-3                                        */
  float weight_decay;    /* AdamW decoupled weight decay on conv weights; default 0                */
  float beta1, beta2;    /* default 0.9, 0.999                                                      */
  float eps;             /* default 1e-8                                                            */
  float max_grad_norm;   /* 0 = no clipping; default 1                                              */
  float min_lr_ratio;    /* default 0                                                               */
  int32_t warmup_steps;  /* default 0                                                               */
  int32_t total_steps;   /* cosine decay length; 0 = constant                                       */
} kf_lococo_train_params;

/* Which tensor of a layer kf_lococo_trainer_read / _write address. */
typedef enum kf_lococo_tensor {
  KF_LOCOCO_WEIGHT = 0,      /* [Mc, 2 * head_dim, k] (PyTorch Conv1d layout, as the heads file)   */
  KF_LOCOCO_BIAS = 1,        /* [Mc]                                                                */
  KF_LOCOCO_LAMBDA = 2,      /* [1]                                                                 */
  KF_LOCOCO_GRAD_WEIGHT = 3, /* accumulated gradients, same shapes                                  */
  KF_LOCOCO_GRAD_BIAS = 4,
  KF_LOCOCO_GRAD_LAMBDA = 5,
  KF_LOCOCO_M_WEIGHT = 6,    /* AdamW moments, same shapes                                          */
  KF_LOCOCO_V_WEIGHT = 7,
  KF_LOCOCO_M_BIAS = 8,
  KF_LOCOCO_V_BIAS = 9,
  KF_LOCOCO_M_LAMBDA = 10,
  KF_LOCOCO_V_LAMBDA = 11
} kf_lococo_tensor;

KF_API kf_lococo_train_params kf_lococo_train_default_params(void);
/* New trainable heads for the model: from `init` when given (its M, r, k, B win over params'), else
 * random (uniform weights scaled by 1/sqrt(2 * head_dim * k), zero bias, init_lambda). */
KF_API kf_status kf_lococo_trainer_create(kf_model *model, const kf_lococo_train_params *params,
                                          const kf_lococo_heads *init, kf_lococo_trainer **out);
KF_API kf_status kf_lococo_trainer_free(kf_lococo_trainer *trainer);
/* One sequence, segment by segment (compressing at the start of a segment when the cache holds more
 * than M + 16 slots, as inference does); every token predicts the next. Adds the gradient of the mean
 * of the segments' losses to the accumulated one (only segments after a compression reach the heads)
 * and writes that mean to *loss. control: cancel (nothing accumulated then), progress in tokens. */
KF_API kf_status kf_lococo_trainer_accumulate(kf_lococo_trainer *trainer, const int32_t *ids, int32_t n_ids,
                                              float *loss, kf_control *control);
/* AdamW over the accumulated gradients averaged over the sequences; refused when none. */
KF_API kf_status kf_lococo_trainer_step(kf_lococo_trainer *trainer, kf_train_step_info *out);
KF_API kf_status kf_lococo_trainer_read(const kf_lococo_trainer *trainer, int32_t layer, int32_t which, float *out,
                                        int64_t n);
KF_API kf_status kf_lococo_trainer_write(kf_lococo_trainer *trainer, int32_t layer, int32_t which, const float *in,
                                         int64_t n);
/* Runs the frozen model with this LoRA applied (calibrating heads for a finetuned model); NULL: none.
 * The adapter must belong to the trainer's model; its weights are copied. */
KF_API kf_status kf_lococo_trainer_set_adapter(kf_lococo_trainer *trainer, const kf_adapter *adapter);
/* Sets the step count (resume) and drops accumulated gradients. */
KF_API kf_status kf_lococo_trainer_set_step(kf_lococo_trainer *trainer, int64_t step);

#ifdef __cplusplus
}
#endif

#endif /* KVFOLD_TRAIN_H */

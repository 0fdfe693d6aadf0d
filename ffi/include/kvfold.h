/*
 * kvfold.h — the C ABI of the kvfold native library. The only header callers include (the training
 * calls are in kvfold_train.h, which it includes at its end).
 *
 * Conventions
 * - Opaque handles: kf_engine (a backend and its threads), kf_model (immutable weights), kf_session
 *   (all mutable state of one conversation: KV cache, scratch buffers, last logits), kf_sampler
 *   (sampling parameters, RNG and token history).
 * - Every fallible call returns a kf_status. On anything but KF_OK, kf_last_error() returns a
 *   thread-local message "cannot <do X>: <why>", valid until the next kvfold call on that thread.
 * - The library never calls abort()/exit(). Every pointer, length, range, shape, dtype and file is
 *   validated; bad input is refused with a status and a message naming what was wrong.
 * - Parameters come in structs filled by kf_*_default_params(); each field documents its meaning,
 *   unit and default. Callers start from the defaults so new fields never break them.
 * - Ownership: whoever creates a handle frees it with the matching *_free. A model is immutable after
 *   load and may be shared by many sessions; kf_model_free is refused (KF_ERR_INVALID_STATE) while
 *   sessions of it are alive, kf_engine_free likewise while models are alive.
 * - Long calls (engine measurements, loads of models, adapters and heads, prefill, decode, training)
 *   take an optional kf_control that the caller may read and write from another thread while the call
 *   runs: set `cancel` to a nonzero value to stop the call at its next check (it returns
 *   KF_ERR_CANCELLED), read `done`/`total` for progress, read `error` after a failure. It is always the
 *   last argument, so bindings pass it the same way everywhere. Native code never calls back into
 *   the caller.
 * - Thread safety: calls on different sessions may run concurrently; calls on one session must not.
 */
#ifndef KVFOLD_H
#define KVFOLD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define KF_API __declspec(dllexport)
#else
#define KF_API __attribute__((visibility("default")))
#endif

#define KF_ABI_VERSION 6

/* ---------------------------------------------------------------------------------------------- */
/* Status and errors                                                                                */

typedef enum kf_status {
  KF_OK = 0,
  KF_ERR_INVALID_ARGUMENT = 1, /* a null pointer, bad length, out-of-range id or option            */
  KF_ERR_IO = 2,               /* a file is missing or cannot be read                               */
  KF_ERR_FORMAT = 3,           /* a file is corrupt, truncated or inconsistent with config.json     */
  KF_ERR_UNSUPPORTED = 4,      /* unknown model_type, dtype, rope scaling, backend not built        */
  KF_ERR_OUT_OF_MEMORY = 5,    /* an allocation failed; nothing was half-built                      */
  KF_ERR_CANCELLED = 6,        /* kf_control.cancel was set; see each call for the state left       */
  KF_ERR_INVALID_STATE = 7,    /* e.g. freeing a model with live sessions, context window full      */
  KF_ERR_BACKEND = 8,          /* a device or driver error                                           */
  KF_ERR_INTERNAL = 9          /* a bug in kvfold; please report the message                          */
} kf_status;

/* Thread-local message of the last failed call on this thread ("" if none). Never NULL. */
KF_API const char *kf_last_error(void);
/* Static name of a status, e.g. "KF_ERR_FORMAT". */
KF_API const char *kf_status_name(int32_t status);

/* ---------------------------------------------------------------------------------------------- */
/* Library information                                                                              */

KF_API int32_t kf_abi_version(void);
/* Library version string, e.g. "0.1.0". */
KF_API const char *kf_version(void);
/* Size in bytes of a public struct by name ("kf_engine_params", ...), 0 if unknown. Lets bindings
 * that lay structs out by hand verify their layout at load time. */
KF_API size_t kf_struct_size(const char *name);

typedef enum kf_backend_kind {
  KF_BACKEND_AUTO = 0, /* cuda when built and a GPU is present, else cpu */
  KF_BACKEND_CPU = 1,
  KF_BACKEND_CUDA = 2
} kf_backend_kind;

/* Whether a backend was compiled into this library (1) or not (0). */
KF_API int32_t kf_backend_built(int32_t kind);
/* Number of usable devices of a backend: cpu 1; cuda the GPUs of compute capability 8.0 or newer (0 when
 * the backend is not built, no NVIDIA driver is installed, the driver is older than the library's CUDA
 * runtime, or no device is visible). Never fails. */
KF_API int32_t kf_backend_device_count(int32_t kind);
/* The BLAS library a backend loads for large matrix products, written NUL-terminated to out (cap bytes):
 * cuda: the cuBLAS it would dlopen now ($KVFOLD_CUBLAS, else libcublas.so.13 / .12 / .so), or "" when
 * none is found and its own kernels run; cpu: "" (own kernels). KF_ERR_UNSUPPORTED when the backend is
 * not built; KF_ERR_BACKEND when $KVFOLD_CUBLAS names a library that cannot be loaded or is not cuBLAS.
 * Needs no device. */
KF_API kf_status kf_backend_blas_library(int32_t kind, char *out, int32_t cap);

/* ---------------------------------------------------------------------------------------------- */
/* Control block for long calls                                                                     */

typedef struct kf_control {
  volatile int32_t cancel; /* caller sets nonzero to cancel; native code polls it              */
  int32_t reserved;        /* keep zero                                                          */
  volatile int64_t done;   /* progress units done (load: bytes; prefill: tokens)              */
  volatile int64_t total;  /* progress units in all, 0 while unknown                           */
  /* On failure, a copy of the kf_last_error() text (NUL-terminated, truncated to fit). Callers
   * whose call ran on a worker thread (e.g. Deno's nonblocking FFI) read the message here, since
   * the thread-local one stays on that thread. */
  char error[488];
} kf_control;

/* ---------------------------------------------------------------------------------------------- */
/* Engine: a backend plus its worker threads                                                        */

typedef struct kf_engine kf_engine;

typedef struct kf_engine_params {
  int32_t backend;   /* kf_backend_kind; default KF_BACKEND_AUTO                                 */
  int32_t n_threads; /* CPU worker threads including the caller's; 0 = all cores (default 0)   */
  int32_t device;    /* device index for GPU backends; default 0                                */
  int32_t memory_mib; /* GPU backends: most device memory the engine may hold (weights, caches,
                         scratch), in MiB; 0 = only the device's own limit (default 0). Allocations
                         past it fail with KF_ERR_OUT_OF_MEMORY. Ignored by cpu                      */
} kf_engine_params;

KF_API kf_engine_params kf_engine_default_params(void);
/* On failure *out is NULL. backend AUTO opens cuda when it is built and kf_backend_device_count(cuda) > device,
 * else cpu. backend CUDA fails with KF_ERR_UNSUPPORTED when the backend is not built or the GPU is older
 * than compute capability 8.0, KF_ERR_BACKEND when there is no driver, the driver is too old or no device
 * is visible (the message says which), KF_ERR_INVALID_ARGUMENT for a device index out of range. */
KF_API kf_status kf_engine_open(const kf_engine_params *params, kf_engine **out);
/* Refused with KF_ERR_INVALID_STATE while models of this engine are alive. NULL is a no-op. */
KF_API kf_status kf_engine_free(kf_engine *engine);

typedef struct kf_engine_info {
  int32_t backend;   /* the backend actually chosen (never AUTO)                                 */
  int32_t n_threads; /* worker threads in use                                                    */
  char name[64];     /* e.g. "cpu (avx2+fma+f16c; kernels avx512-bf16, int8 vnni)" (the build's
                        ISA, then the kernels chosen at run time; KVFOLD_CPU lowers them),
                        "cuda:0 (NVIDIA H100 80GB HBM3, sm_90, 79.1 GiB, cublas libcublas.so.13)"
                        (truncated to fit)                                                        */
} kf_engine_info;

KF_API kf_status kf_engine_get_info(const kf_engine *engine, kf_engine_info *out);

/* Measures sustained memory read bandwidth of this engine's threads over a buffer of `bytes`
 * (at least 64 MiB is sensible), best of `repeats` passes. Used by benchmarks as the ceiling.
 * cuda engines: a device-to-device copy of `bytes`, counted as bytes read plus bytes written.
 * control: optional (cancel, progress in passes, error copy). */
KF_API kf_status kf_engine_measure_read_bandwidth(kf_engine *engine, int64_t bytes, int32_t repeats,
                                                  double *gbytes_per_s, kf_control *control);
/* Measures the rate of the matrix product the forward uses, y[m, n] = x[m, k] · W[n, k]^T with random
 * bf16 x and W and f32 y (cuda: cuBLAS when loaded, else kvfold's kernels; cpu: its threaded matmul),
 * best of `repeats`, in TFLOP/s (2·m·n·k per product). m, n, k in [1, 65536]. The prefill ceiling.
 * control: optional (cancel, progress in products, error copy). */
KF_API kf_status kf_engine_measure_matmul_rate(kf_engine *engine, int32_t m, int32_t n, int32_t k, int32_t repeats,
                                               double *tflops, kf_control *control);

/* ---------------------------------------------------------------------------------------------- */
/* Model: a Hugging Face folder (config.json + model.safetensors or model.safetensors.index.json)   */

typedef struct kf_model kf_model;

/* Q8_0 and Q4_0 are weight formats only (kf_model_params.weight_dtype, CPU backend): llama.cpp's blocks of
   32 values with one f16 scale (34 and 18 bytes a block), quantized at load; rows need a multiple of 32. */
typedef enum kf_dtype {
  KF_DTYPE_F32 = 0,
  KF_DTYPE_F16 = 1,
  KF_DTYPE_BF16 = 2,
  KF_DTYPE_Q8_0 = 3,
  KF_DTYPE_Q4_0 = 4,
  KF_DTYPE_AUTO = -1
} kf_dtype;

typedef struct kf_model_params {
  int32_t weight_dtype; /* kf_dtype to hold weights in; KF_DTYPE_AUTO (default) keeps the file's
                           dtype (no conversion; with use_mmap, no copy either). Cuda engines hold
                           f16 or bf16 only: AUTO of an f32 file gives bf16, F32, Q8_0 and Q4_0
                           are KF_ERR_UNSUPPORTED. Q8_0 / Q4_0 (CPU): every matrix is quantized at
                           load; a matrix whose rows are not whole blocks of 32 is
                           KF_ERR_UNSUPPORTED, naming the tensor                                    */
  int32_t use_mmap;     /* 0 (default): read the files into memory the model owns (a file whose
                           tensors were all converted is freed after the load); a file truncated
                           during the load is KF_ERR_IO/KF_ERR_FORMAT, and changing it afterwards
                           cannot affect the model. 1: map them read-only (MAP_PRIVATE): shared
                           page cache, nothing copied, but a file truncated by another process
                           while the model is loaded faults (SIGBUS) at the next read of a lost
                           page, on any thread; the process then stops, after printing
                           "kvfold: fatal: <file> was truncated ..." to stderr                     */
} kf_model_params;

KF_API kf_model_params kf_model_default_params(void);
/* `dir` is a NUL-terminated UTF-8 path; params may be NULL (the defaults). control: optional (cancel,
 * progress in bytes of weights loaded, error copy). On failure *out is NULL and nothing stays
 * allocated. */
KF_API kf_status kf_model_load(kf_engine *engine, const char *dir, const kf_model_params *params,
                               kf_model **out, kf_control *control);
/* Refused with KF_ERR_INVALID_STATE while sessions of this model are alive. NULL is a no-op. */
KF_API kf_status kf_model_free(kf_model *model);

typedef struct kf_model_info {
  int32_t vocab_size;
  int32_t hidden_size;
  int32_t intermediate_size;
  int32_t n_layers;
  int32_t n_heads;
  int32_t n_kv_heads;
  int32_t head_dim;
  int32_t max_position_embeddings;
  int32_t weight_dtype;   /* kf_dtype the weights are held in (mixed files: the dominant one) */
  int32_t tied_embeddings; /* 1 when the LM head reuses embed_tokens                          */
  int64_t n_params;       /* parameters in all tensors                                        */
  int64_t weight_bytes;   /* bytes read per decoded token (all weights but the embedding table) */
  char model_type[32];    /* "llama", "mistral", "qwen2"                                     */
} kf_model_info;

KF_API kf_status kf_model_get_info(const kf_model *model, kf_model_info *out);

/* ---------------------------------------------------------------------------------------------- */
/* Session: KV cache and buffers for one sequence                                                   */

typedef struct kf_session kf_session;

/* How a session keeps its KV cache (DESIGN.md, "LoCoCo"). Every kind runs the same forward pass;
 * only what happens to the cache between forwards differs.
 * - FULL: every position keeps its own slot (n_ctx slots reserved).
 * - LOCOCO: at the start of a forward, a cache above slots + 16 is compressed to `slots`: per KV
 *   head the top Mh = slots - Mc by score stay (in cache order) and the rest are fused into Mc
 *   slots by the heads file's convolution. Prompts are prefilled in segments of `segment` tokens.
 * - H2O: the same trigger, keeping the top `slots` by score (in cache order), no heads needed.
 * - STREAMING: StreamingLLM; at the start of a forward, a cache above sinks + window keeps its first
 *   `sinks` slots and its last `window`.
 * Scores are the column sums of the attention probabilities of the last forward, summed over the
 * query heads of each KV group. Keys stay post-RoPE at their absolute positions; queries use the
 * true absolute position (n_past). Every cache slot is visible to every new row (Mistral's sliding
 * window applies to FULL only). Sessions of cuda engines keep their cache on the device in the weights'
 * 16-bit dtype, slot scores in f32, and shrink it there (only the ranking by score is chosen on the
 * host, from one layer's scores at a time). */
typedef enum kf_cache_kind {
  KF_CACHE_FULL = 0,
  KF_CACHE_LOCOCO = 1,
  KF_CACHE_H2O = 2,
  KF_CACHE_STREAMING = 3
} kf_cache_kind;

typedef struct kf_lococo_heads kf_lococo_heads;

typedef struct kf_session_params {
  int32_t n_ctx;      /* FULL: positions to reserve, 0 = max_position_embeddings. Others: most positions
                         the session may see, 0 = no limit (2^31 - 1)                                */
  int32_t n_batch;    /* most tokens per prefill chunk (scratch is sized by it); default 256.
                         Compressing kinds use `segment` instead                                    */
  int32_t cache_kind; /* kf_cache_kind; default KF_CACHE_FULL                                     */
  int32_t slots;      /* M: LOCOCO (0 = the heads file's), H2O (required)                         */
  int32_t segment;    /* B, prefill segment: LOCOCO (0 = the heads file's), H2O and STREAMING
                         (0 = n_batch)                                                            */
  int32_t sinks;      /* STREAMING: first slots always kept (default 4)                           */
  int32_t window;     /* STREAMING: most recent slots kept (required)                             */
  int32_t reserved;   /* keep zero                                                                */
  const kf_lococo_heads *heads; /* LOCOCO: loaded heads of the session's model; NULL otherwise    */
} kf_session_params;

KF_API kf_session_params kf_session_default_params(void);
/* All buffers are allocated here; nothing is allocated per token. On failure *out is NULL. */
KF_API kf_status kf_session_create(kf_model *model, const kf_session_params *params, kf_session **out);
KF_API kf_status kf_session_free(kf_session *session);
/* Forgets all positions (KV cache emptied, logits cleared). */
KF_API kf_status kf_session_reset(kf_session *session);
/* Positions seen: with FULL, the positions in the KV cache; with the others, the count of tokens run. */
KF_API int32_t kf_session_n_past(const kf_session *session);
/* Truncates the cache to its first n positions (0 <= n <= n_past). A compressing cache can only be
 * truncated while each position still has its own slot (before its first compression). */
KF_API kf_status kf_session_truncate(kf_session *session, int32_t n);

/* Runs `n_ids` token ids at positions n_past.. in chunks of n_batch, appending to the KV cache.
 * logits: NULL, or a caller buffer of [n_ids, vocab] f32 receiving the logits of every position.
 * The last position's logits are always kept in the session (kf_session_get_logits).
 * control: optional; progress in tokens. On any failure, including KF_ERR_CANCELLED, the session
 * is rolled back to the n_past it had before the call (a compressing cache to its slots, too).
 * Compressing caches run the ids in segments of `segment` tokens, compressing between segments. */
KF_API kf_status kf_session_prefill(kf_session *session, const int32_t *ids, int32_t n_ids, float *logits,
                                    kf_control *control);
/* Runs a block of input embeddings (e.g. LLoCO summary vectors) at positions n_past.., as if they
 * were token embeddings: embeddings is [n_rows, hidden] in dtype (KF_DTYPE_F32/F16/BF16), row major.
 * hidden must equal the model's hidden size; every value must be finite; n_rows > 0.
 * hidden_out: NULL, or [n_rows, hidden] f32 receiving each row's final-normed hidden state (what an
 * AutoCompressor keeps as summary vectors). logits and control as in kf_session_prefill, and on
 * failure the session is rolled back the same way. */
KF_API kf_status kf_session_prefill_embeddings(kf_session *session, const void *embeddings, int32_t dtype,
                                               int32_t n_rows, int32_t hidden, float *logits, float *hidden_out,
                                               kf_control *control);
/* kf_session_prefill that also writes each position's final-normed hidden state into hidden_out
 * ([n_ids, hidden] f32, required): what token embeddings (mean or last-token pooling) are taken
 * from. ids, logits, control and the rollback on failure as in kf_session_prefill. */
KF_API kf_status kf_session_prefill_hidden(kf_session *session, const int32_t *ids, int32_t n_ids, float *logits,
                                           float *hidden_out, kf_control *control);
/* One token at position n_past (the single-token path, tuned separately from prefill).
 * On failure the session keeps its previous n_past and logits. */
KF_API kf_status kf_session_decode(kf_session *session, int32_t id, kf_control *control);
/* Copies the last position's logits ([vocab] f32) into out (n must equal vocab_size). */
KF_API kf_status kf_session_get_logits(const kf_session *session, float *out, int32_t n);

typedef struct kf_session_info {
  int32_t n_past;     /* positions seen (the next token's absolute position)                      */
  int32_t n_ctx;      /* most positions the session may see                                       */
  int32_t cache_kind; /* kf_cache_kind                                                            */
  int32_t has_logits; /* 1 when kf_session_get_logits has something to return                    */
  int64_t kv_bytes;   /* bytes of KV cache allocated (keys, values and slot scores)               */
  int64_t kv_slots;   /* KV slots per layer allocated                                             */
  int64_t scratch_bytes; /* bytes of activation scratch allocated                                */
  int64_t kv_slots_used; /* KV slots per layer holding something now                             */
  int64_t kv_slots_peak; /* most slots per layer ever in use (since create or reset)              */
  int64_t compressions;  /* times the cache was compressed (since create or reset)                */
  int64_t compress_ns;   /* wall time spent compressing, in nanoseconds (since create or reset)  */
  int32_t slots;      /* M (LOCOCO, H2O) or sinks + window (STREAMING); 0 for FULL               */
  int32_t segment;    /* prefill segment (chunk) length in tokens                                 */
} kf_session_info;

KF_API kf_status kf_session_get_info(const kf_session *session, kf_session_info *out);
/* Copies one layer's used cache slots out (for inspection, calibration and tests): keys and values
 * [n_slots, n_kv, head_dim] f32 (keys post-RoPE), scores [n_slots, n_kv] (the slot scores of the last
 * forward; lococo and h2o only, else pass NULL). Any of the three may be NULL. n_slots must equal
 * kv_slots_used of kf_session_get_info. */
KF_API kf_status kf_session_read_cache(const kf_session *session, int32_t layer, float *keys, float *values,
                                       float *scores, int32_t n_slots);

/* ---------------------------------------------------------------------------------------------- */
/* Adapter: a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors) bound to one model  */

typedef struct kf_adapter kf_adapter;

typedef struct kf_adapter_info {
  int32_t max_rank;  /* largest rank of any adapted projection                                    */
  uint32_t proj_mask; /* bit p set when projection p is adapted: 0 q, 1 k, 2 v, 3 o, 4 gate, 5 up, 6 down */
  int32_t n_users;   /* sessions whose current adapter this is (or one of whose composed adapters)  */
  int32_t rslora;    /* 1 when the scale is alpha / sqrt(r) (use_rslora)                           */
  double alpha;      /* lora_alpha                                                                */
  int64_t n_params;  /* LoRA parameters                                                           */
  int64_t bytes;     /* memory held (f32 copies, scale folded into B)                             */
} kf_adapter_info;

/* Loads and validates a PEFT LoRA folder against the model: every tensor must be a lora_A [r, in]
 * or lora_B [out, r] of a q/k/v/o/gate/up/down projection of an existing layer, in F32/F16/BF16,
 * with ranks matching adapter_config.json (r, rank_pattern). Scales are alpha / r (alpha / sqrt(r)
 * with use_rslora, alpha_pattern honoured); lora_dropout is ignored. As in PEFT, only the modules
 * that target_modules (a list of module names or dotted suffixes, or "all-linear") and
 * layers_to_transform (a layer index or a list; layers_pattern "layers") select are adapted;
 * tensors of other modules are not loaded. A malformed config (wrong types, unknown modules,
 * layers out of range, rank_pattern / alpha_pattern keys that match no adapted module or bad
 * values, r outside [1, 65536]) is KF_ERR_FORMAT naming adapter_config.json and the key; a
 * target_modules regular expression is KF_ERR_UNSUPPORTED. control: optional (cancel, progress
 * in tensors, error copy). On failure *out is NULL and nothing stays allocated. */
KF_API kf_status kf_adapter_load(kf_model *model, const char *dir, kf_adapter **out, kf_control *control);
/* Refused with KF_ERR_INVALID_STATE while a session uses the adapter. NULL is a no-op. */
KF_API kf_status kf_adapter_free(kf_adapter *adapter);
KF_API kf_status kf_adapter_get_info(const kf_adapter *adapter, kf_adapter_info *out);
/* Makes later calls on the session apply the adapter unmerged, y = W x + s * B (A x); NULL returns
 * to the base model. A pointer change: nothing is copied. The adapter must belong to the session's
 * model. Positions already in the cache keep what they were computed with. */
KF_API kf_status kf_session_set_adapter(kf_session *session, kf_adapter *adapter);

/* Most adapters kf_session_set_adapters composes. */
#define KF_MAX_ADAPTERS 8
/* Makes later calls on the session apply n adapters at once, each with its weight (adapter
 * composition):  y = W x + sum_i weights[i] * s_i * B_i (A_i x),  s_i each adapter's own scale.
 * n in [0, KF_MAX_ADAPTERS]; n = 0 returns to the base model (adapters and weights may then be NULL).
 * Every adapter must be non-NULL and belong to the session's model; every weight must be finite (0
 * and negative weights are allowed; an adapter may appear more than once, its terms add up).
 * kf_session_set_adapter(s, a) is this with one adapter of weight 1 and gives the same results bit
 * for bit. Pointers are kept, nothing is copied: each adapter listed counts the session once in its
 * n_users, so kf_adapter_free refuses it until the session selects other adapters or is freed.
 * Positions already in the cache keep what they were computed with. On failure (KF_ERR_INVALID_ARGUMENT
 * naming the entry at fault, or KF_ERR_OUT_OF_MEMORY growing the LoRA scratch) nothing changes.
 * Works with every cache kind, prefill, decode and kf_batch_decode, on the cpu and cuda backends. */
KF_API kf_status kf_session_set_adapters(kf_session *session, kf_adapter *const *adapters, const float *weights,
                                         int32_t n);

/* One decode step over several sessions of one model: session i takes token ids[i] at its position
 * n_past. The weights are read once for all rows; each row uses its session's adapter, composition of
 * adapters (kf_session_set_adapters) or none; rows are grouped by composition (equal adapters and
 * weights in the same order), as Punica's SGMV groups rows by adapter. Every session ends as if kf_session_decode had run on
 * it alone. Sessions must be distinct; n in [1, 4096]. On failure no session changes. */
KF_API kf_status kf_batch_decode(kf_session *const *sessions, const int32_t *ids, int32_t n, kf_control *control);

/* Prefill chunks of several sessions of one model in one pass: session i takes counts[i] >= 1 ids
 * (ids holds them concatenated, session 0 first) at its next positions, with its adapters. The
 * weights are read once for all rows, a session's rows attend causally to its own cache only, and
 * each session keeps its last row's logits, as kf_session_prefill without logits would leave it
 * (up to float rounding of the wider matrix products). Full caches only (KF_ERR_UNSUPPORTED for a
 * compressing cache, or on a backend other than cpu); sessions distinct; n in [1, 4096]; at most
 * 65536 ids in all. On failure no session changes. */
KF_API kf_status kf_batch_prefill(kf_session *const *sessions, const int32_t *ids, const int32_t *counts, int32_t n,
                                  kf_control *control);

/* ---------------------------------------------------------------------------------------------- */
/* LoCoCo heads: one Conv1d compressor per layer, bound to one model                                 */

typedef struct kf_lococo_heads_info {
  int32_t slots;       /* M from the file's metadata (kvfold.lococo.slots)                        */
  int32_t fused_slots; /* Mc: the convolution's output channels                                   */
  int32_t kernel;      /* k                                                                        */
  int32_t segment;     /* B from the metadata                                                      */
  float keep_rate;     /* r from the metadata; Mc = floor(M * (1 - r))                             */
  int32_t n_layers;
  int32_t head_dim;
  int32_t n_users;     /* sessions using them                                                      */
  int64_t bytes;       /* memory held (f32)                                                        */
} kf_lococo_heads_info;

/* Loads a heads file (safetensors, DESIGN.md's names and metadata) and validates it against the
 * model: one memory_saver per layer, weight [Mc, 2 * head_dim, k] with k odd, bias [Mc], normalizer
 * [1], all finite floats, Mc = floor(M * (1 - r)). control: optional (cancel, progress in layers,
 * error copy). On failure *out is NULL and nothing stays allocated. */
KF_API kf_status kf_lococo_heads_load(kf_model *model, const char *path, kf_lococo_heads **out,
                                      kf_control *control);
/* Refused with KF_ERR_INVALID_STATE while a session uses the heads. NULL is a no-op. */
KF_API kf_status kf_lococo_heads_free(kf_lococo_heads *heads);
KF_API kf_status kf_lococo_heads_get_info(const kf_lococo_heads *heads, kf_lococo_heads_info *out);
/* ---------------------------------------------------------------------------------------------- */
/* Sampler: picks the next token from a session's last logits                                      */

typedef struct kf_sampler kf_sampler;

typedef struct kf_sampler_params {
  uint64_t seed;              /* RNG seed; default 0x6b76666f6c64 ("kvfold")                       */
  float temperature;          /* 0 = greedy (argmax); default 0.8                                   */
  float top_p;                /* nucleus mass in (0, 1]; 1 disables; default 0.95                   */
  int32_t top_k;              /* keep the k most likely; 0 disables; default 40                     */
  float repetition_penalty;   /* CTRL-style: >1 penalises tokens in the window; 1 disables (default) */
  int32_t repeat_last_n;      /* window of history the penalty looks at; default 64                */
  float min_p;                /* drop tokens below min_p × max prob; 0 disables (default)          */
} kf_sampler_params;

KF_API kf_sampler_params kf_sampler_default_params(void);
KF_API kf_status kf_sampler_create(const kf_sampler_params *params, kf_sampler **out);
KF_API kf_status kf_sampler_free(kf_sampler *sampler);
/* Appends ids to the sampler's history (e.g. the prompt) for the repetition penalty. */
KF_API kf_status kf_sampler_accept(kf_sampler *sampler, const int32_t *ids, int32_t n_ids);
/* Samples from the session's last logits, appends the choice to the history and writes it to *out. */
KF_API kf_status kf_sampler_sample(kf_sampler *sampler, const kf_session *session, int32_t *out);
/* Same over caller logits ([n_vocab] f32, left unchanged). */
KF_API kf_status kf_sampler_sample_logits(kf_sampler *sampler, const float *logits, int32_t n_vocab,
                                          int32_t *out);
/* One sample per row, for a batched decode step: row i samples with samplers[i] from sessions[i]'s
 * last logits exactly as kf_sampler_sample(samplers[i], sessions[i], &out[i]) would (the same id,
 * history and RNG state after). Rows that sample at a temperature run in parallel on the first
 * session's engine pool when no other call holds it; otherwise rows run one after another on the
 * caller's thread. Samplers must be distinct;
 * n in [1, 4096]. On failure (the first failing row is named) no sampler changes. */
KF_API kf_status kf_sampler_sample_batch(kf_sampler *const *samplers, const kf_session *const *sessions,
                                         int32_t n, int32_t *out);
/* Restricts later samples to the ids whose bit is set in mask (bit i & 7 of byte i >> 3 is id i;
 * (n_vocab + 7) / 8 bytes, copied): the others get probability 0 before the penalty, temperature
 * and top-k/p/min-p (constrained decoding). mask NULL clears the restriction. Stays until set again.
 * Refused at sampling: a mask of another vocabulary size than the logits, or one allowing no id. */
KF_API kf_status kf_sampler_set_allowed(kf_sampler *sampler, const uint8_t *mask, int32_t n_vocab);

/* ---------------------------------------------------------------------------------------------- */
/* Generation: sample and decode in one native loop                                                */

typedef struct kf_generate_params {
  int32_t pending;    /* a token sampled earlier and not run yet, decoded first; -1 = none (default) */
  int32_t max_tokens; /* most tokens this call samples, >= 1; default 1                              */
  int64_t budget_us;  /* hand over once this long has passed since the call began; 0 = after the
                         first token (default)                                                       */
} kf_generate_params;

KF_API kf_generate_params kf_generate_default_params(void);
/* Decodes params->pending (if >= 0), then repeats: sample a token from the session's last logits with
 * sampler into out_ids[*n_out] (capacity max_tokens) and stop once it is one of stop_ids, *n_out is
 * max_tokens, the cache is full (n_past == n_ctx) or budget_us has passed; otherwise decode it. The
 * last token written is never decoded: the caller passes it as the next call's pending. One call
 * stands for many sample-then-decode round trips, each of which would cross the FFI twice.
 * stop_ids may be NULL when n_stop_ids is 0. control: cancel is polled before every decode, done
 * counts the tokens sampled. On failure (cancel included) *n_out holds the tokens sampled so far and
 * the session is as those steps left it: all but the last decoded (a failing decode is undone). */
KF_API kf_status kf_session_generate(kf_session *session, kf_sampler *sampler, const kf_generate_params *params,
                                     const int32_t *stop_ids, int32_t n_stop_ids, int32_t *out_ids,
                                     int32_t *n_out, kf_control *control);

/* Training: LoRA adapters, full parameters and compressors, LoCoCo heads. */
#include "kvfold_train.h"

#ifdef __cplusplus
}
#endif

#endif /* KVFOLD_H */

// model_config.h — config.json of a Llama-family Hugging Face folder, and the tensors it implies.
//
// The one place model hyperparameters are read (never guessed from paths or file names). Every field
// is validated: positive sizes below the limits below (so that any product of two sizes fits int64
// and allocations sized from them cannot overflow), n_heads % n_kv_heads == 0, even head_dim,
// finite positive eps and theta. Errors are kf::Error: KF_ERR_IO for a missing/unreadable file,
// KF_ERR_FORMAT for malformed or inconsistent values, KF_ERR_UNSUPPORTED for valid configs this
// engine does not run (model_type, rope scaling, activation, mlp_bias, sliding-window Qwen2).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common.h"
#include "safetensors.h"

namespace kf {

// Upper bounds accepted from config.json (inclusive).
constexpr int64_t kMaxVocab = int64_t(1) << 22;          // 4,194,304 tokens
constexpr int64_t kMaxHidden = int64_t(1) << 17;         // 131,072
constexpr int64_t kMaxIntermediate = int64_t(1) << 20;   // 1,048,576
constexpr int64_t kMaxLayers = 1024;
constexpr int64_t kMaxHeads = 1024;                      // n_heads and n_kv_heads
constexpr int64_t kMaxHeadDim = 1024;
constexpr int64_t kMaxPositions = int64_t(1) << 24;      // 16,777,216

enum class RopeScaling { None, Linear, Llama3 };

struct ModelConfig {
  std::string model_type;           // "llama", "mistral" or "qwen2"
  int32_t vocab_size = 0;
  int32_t hidden_size = 0;
  int32_t intermediate_size = 0;
  int32_t n_layers = 0;             // num_hidden_layers
  int32_t n_heads = 0;              // num_attention_heads
  int32_t n_kv_heads = 0;           // num_key_value_heads (default n_heads)
  int32_t head_dim = 0;             // head_dim, or hidden_size / n_heads (which must divide)
  int32_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;

  // rope_scaling (or transformers 5 rope_parameters); rope_type "default" or null means None.
  RopeScaling rope_scaling = RopeScaling::None;
  double rope_factor = 1.0;                          // linear and llama3
  double rope_low_freq_factor = 1.0;                 // llama3
  double rope_high_freq_factor = 4.0;                // llama3 (> low_freq_factor)
  int32_t rope_original_max_position_embeddings = 0; // llama3

  bool tie_word_embeddings = false; // LM head reuses model.embed_tokens.weight
  bool attention_bias = false;      // config.json's attention_bias (llama)
  bool qkv_bias = false;            // q/k/v projections have biases (llama attention_bias; always for qwen2)
  bool o_bias = false;              // o projection has a bias (llama attention_bias only)
  bool mlp_bias = false;            // always false: true is refused as unsupported
  std::string hidden_act = "silu";  // always "silu"

  // 0 when none. Mistral v0.1 sets 4096: attention beyond that many positions back is masked by
  // transformers; the engine should cap contexts at it or document the difference.
  int32_t sliding_window = 0;
  int32_t bos_token_id = -1;             // -1 when absent/null
  std::vector<int32_t> eos_token_ids;    // eos_token_id as an int or an array; empty when absent
  std::string torch_dtype;               // "torch_dtype" (or "dtype"), informational; "" when absent
};

// Reads and validates <dir>/config.json. Missing: KF_ERR_IO "cannot load model: <dir>/config.json
// does not exist". Unknown model_type: KF_ERR_UNSUPPORTED
// "cannot load model: model_type \"gpt2\" is not supported (llama, mistral, qwen2)".
ModelConfig parse_model_config(const std::string &dir);
// Same, from JSON text already in memory; `what` names it in messages.
ModelConfig parse_model_config_json(const char *data, size_t len, const char *what);

struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;
  bool optional = false;  // may be absent (lm_head.weight of a tied model); checked when present
};

// Every tensor the config implies, in HF names, in load order: embed_tokens, per layer
// (input_layernorm, q/k/v/o [+ biases], post_attention_layernorm, gate/up/down), model.norm,
// lm_head (optional when tied).
std::vector<ExpectedTensor> expected_tensors(const ModelConfig &cfg);

// Checks every expected tensor against the index, in expected_tensors order:
//   missing   → KF_ERR_FORMAT "cannot load model: tensor model.layers.3.mlp.up_proj.weight is missing"
//   bad shape → KF_ERR_FORMAT "cannot load model: tensor model.norm.weight has shape [63], config.json says [64]"
//   bad dtype → KF_ERR_UNSUPPORTED "cannot load model: tensor X has dtype I64; expected F32, F16 or BF16"
//   unused    → KF_ERR_FORMAT "cannot load model: the weights hold tensors that config.json does not
//               use: model.layers.1.input_layernorm.weight, ...; the files hold layer 1 but
//               num_hidden_layers is 1" (checked last). Allowed extras: rotary_emb.inv_freq (older
//               transformers saved it) and embed_summary.weight (AutoCompressor checkpoints).
void validate_tensors(const ModelConfig &cfg, const TensorIndex &index);

// "[4096, 11008]"
std::string shape_to_string(const std::vector<int64_t> &shape);

}  // namespace kf

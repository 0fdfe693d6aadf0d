// model_config.cpp — config.json → ModelConfig, and the tensor list a config implies.
#include "model_config.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <unordered_set>

#include "json.h"

namespace kf {

namespace {

constexpr const char *kFile = "config.json";

// An untrusted string made safe to quote in a message: at most max bytes, controls and quotes replaced.
std::string printable(const std::string &s, size_t max = 64) {
  std::string out;
  for (unsigned char ch : s) {
    if (out.size() >= max) break;
    out += (ch >= 0x20 && ch != 0x7f && ch != '"') ? char(ch) : '?';
  }
  return out;
}

// Renders a JSON value briefly for messages: numbers and short strings as written, else its type.
std::string brief(const Json &v) {
  if (v.is_integer()) return std::to_string(v.as_int64());
  if (v.is_number()) {
    char b[64];
    std::snprintf(b, sizeof b, "%.17g", v.as_double());
    return b;
  }
  if (v.is_bool()) return v.as_bool() ? "true" : "false";
  if (v.is_string()) return "\"" + printable(v.as_string()) + "\"";
  return v.type_name();
}

// A member that is present and not null, or nullptr.
const Json *field(const Json &obj, const char *key) {
  const Json *v = obj.find(key);
  return (v && !v->is_null()) ? v : nullptr;
}

int64_t int_in(const Json &v, const char *name, int64_t lo, int64_t hi) {
  if (!v.is_integer() || v.as_int64() < lo || v.as_int64() > hi)
    raise(KF_ERR_FORMAT, "cannot load model: %s: %s must be an integer in [%lld, %lld], got %s", kFile, name,
          static_cast<long long>(lo), static_cast<long long>(hi), brief(v).c_str());
  return v.as_int64();
}

int32_t req_int(const Json &o, const char *key, int64_t lo, int64_t hi) {
  const Json *v = field(o, key);
  if (!v) raise(KF_ERR_FORMAT, "cannot load model: %s: %s is missing", kFile, key);
  return int32_t(int_in(*v, key, lo, hi));
}

int32_t opt_int(const Json &o, const char *key, int64_t lo, int64_t hi, int32_t dflt) {
  const Json *v = field(o, key);
  return v ? int32_t(int_in(*v, key, lo, hi)) : dflt;
}

double positive_double(const Json &v, const char *name) {
  if (!v.is_number() || !(v.as_double() > 0.0) || !std::isfinite(v.as_double()))
    raise(KF_ERR_FORMAT, "cannot load model: %s: %s must be a positive number, got %s", kFile, name,
          brief(v).c_str());
  return v.as_double();
}

double opt_positive(const Json &o, const char *key, double dflt) {
  const Json *v = field(o, key);
  return v ? positive_double(*v, key) : dflt;
}

bool opt_bool(const Json &o, const char *key, bool dflt) {
  const Json *v = field(o, key);
  if (!v) return dflt;
  if (!v->is_bool())
    raise(KF_ERR_FORMAT, "cannot load model: %s: %s must be true or false, got %s", kFile, key, brief(*v).c_str());
  return v->as_bool();
}

// Token ids: negative ones mean "none" in some configs and are dropped.
void token_ids(const Json &o, const char *key, std::vector<int32_t> &out) {
  const Json *v = field(o, key);
  if (!v) return;
  auto one = [&](const Json &e) {
    if (!e.is_integer() || e.as_int64() > INT32_MAX)
      raise(KF_ERR_FORMAT, "cannot load model: %s: %s must be a token id or a list of them, got %s", kFile, key,
            brief(e).c_str());
    if (e.as_int64() >= 0) out.push_back(int32_t(e.as_int64()));
  };
  if (v->is_array()) {
    for (const Json &e : v->items()) one(e);
  } else {
    one(*v);
  }
}

void parse_rope_scaling(const Json &rs, const char *name, ModelConfig &c) {
  if (!rs.is_object())
    raise(KF_ERR_FORMAT, "cannot load model: %s: %s must be an object or null, got %s", kFile, name,
          brief(rs).c_str());
  const Json *t = field(rs, "rope_type");
  if (!t) t = field(rs, "type");
  if (!t) raise(KF_ERR_FORMAT, "cannot load model: %s: %s has no rope_type", kFile, name);
  if (!t->is_string())
    raise(KF_ERR_FORMAT, "cannot load model: %s: %s rope_type must be a string, got %s", kFile, name,
          brief(*t).c_str());
  const std::string &type = t->as_string();
  auto need = [&](const char *key) -> const Json & {
    const Json *v = field(rs, key);
    if (!v) raise(KF_ERR_FORMAT, "cannot load model: %s: %s of type \"%s\" has no %s", kFile, name, type.c_str(), key);
    return *v;
  };
  if (type == "default") {
    c.rope_scaling = RopeScaling::None;
  } else if (type == "linear") {
    c.rope_scaling = RopeScaling::Linear;
    c.rope_factor = positive_double(need("factor"), "rope_scaling factor");
  } else if (type == "llama3") {
    c.rope_scaling = RopeScaling::Llama3;
    c.rope_factor = positive_double(need("factor"), "rope_scaling factor");
    c.rope_low_freq_factor = positive_double(need("low_freq_factor"), "rope_scaling low_freq_factor");
    c.rope_high_freq_factor = positive_double(need("high_freq_factor"), "rope_scaling high_freq_factor");
    if (!(c.rope_high_freq_factor > c.rope_low_freq_factor))
      raise(KF_ERR_FORMAT, "cannot load model: %s: rope_scaling high_freq_factor %g must exceed low_freq_factor %g",
            kFile, c.rope_high_freq_factor, c.rope_low_freq_factor);
    c.rope_original_max_position_embeddings = int32_t(int_in(
        need("original_max_position_embeddings"), "rope_scaling original_max_position_embeddings", 1, kMaxPositions));
  } else {
    raise(KF_ERR_UNSUPPORTED, "cannot load model: rope_scaling type \"%s\" is not supported (linear, llama3)",
          printable(type).c_str());
  }
}

ModelConfig from_json(const Json &j, const char *what) {
  if (!j.is_object())
    raise(KF_ERR_FORMAT, "cannot load model: %s is %s, not a JSON object", what, j.type_name());
  ModelConfig c;

  const Json *mt = field(j, "model_type");
  if (!mt) raise(KF_ERR_FORMAT, "cannot load model: %s: model_type is missing", kFile);
  if (!mt->is_string())
    raise(KF_ERR_FORMAT, "cannot load model: %s: model_type must be a string, got %s", kFile, brief(*mt).c_str());
  c.model_type = mt->as_string();
  if (c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "qwen2") {
    raise(KF_ERR_UNSUPPORTED, "cannot load model: model_type \"%s\" is not supported (llama, mistral, qwen2)",
          printable(c.model_type).c_str());
  }
  const bool qwen2 = c.model_type == "qwen2", mistral = c.model_type == "mistral";

  c.vocab_size = req_int(j, "vocab_size", 1, kMaxVocab);
  c.hidden_size = req_int(j, "hidden_size", 1, kMaxHidden);
  c.intermediate_size = req_int(j, "intermediate_size", 1, kMaxIntermediate);
  c.n_layers = req_int(j, "num_hidden_layers", 1, kMaxLayers);
  c.n_heads = req_int(j, "num_attention_heads", 1, kMaxHeads);
  c.n_kv_heads = opt_int(j, "num_key_value_heads", 1, kMaxHeads, c.n_heads);
  if (c.n_kv_heads > c.n_heads || c.n_heads % c.n_kv_heads != 0)
    raise(KF_ERR_FORMAT, "cannot load model: %s: num_attention_heads %d is not a multiple of num_key_value_heads %d",
          kFile, c.n_heads, c.n_kv_heads);
  if (field(j, "head_dim")) {
    c.head_dim = req_int(j, "head_dim", 1, kMaxHeadDim);
  } else {
    if (c.hidden_size % c.n_heads != 0)
      raise(KF_ERR_FORMAT,
            "cannot load model: %s: hidden_size %d is not a multiple of num_attention_heads %d (and no head_dim)",
            kFile, c.hidden_size, c.n_heads);
    c.head_dim = c.hidden_size / c.n_heads;
    if (c.head_dim > kMaxHeadDim)
      raise(KF_ERR_FORMAT, "cannot load model: %s: head_dim %d (hidden_size / num_attention_heads) is above %lld",
            kFile, c.head_dim, static_cast<long long>(kMaxHeadDim));
  }
  if (c.head_dim % 2 != 0)
    raise(KF_ERR_FORMAT, "cannot load model: %s: head_dim %d is odd; rotary embeddings need an even head_dim", kFile,
          c.head_dim);
  c.max_position_embeddings = opt_int(j, "max_position_embeddings", 1, kMaxPositions, 2048);
  c.rms_norm_eps = opt_positive(j, "rms_norm_eps", 1e-6);

  // RoPE: transformers <= 4 uses rope_theta + rope_scaling; transformers 5 may put both in rope_parameters.
  const Json *rp = field(j, "rope_parameters");
  if (rp && !rp->is_object())
    raise(KF_ERR_FORMAT, "cannot load model: %s: rope_parameters must be an object, got %s", kFile, brief(*rp).c_str());
  c.rope_theta = opt_positive(j, "rope_theta", 10000.0);
  if (rp && !field(j, "rope_theta")) c.rope_theta = opt_positive(*rp, "rope_theta", 10000.0);
  if (const Json *rs = field(j, "rope_scaling")) {
    parse_rope_scaling(*rs, "rope_scaling", c);
  } else if (rp && (field(*rp, "rope_type") || field(*rp, "type"))) {
    parse_rope_scaling(*rp, "rope_parameters", c);
  }

  c.tie_word_embeddings = opt_bool(j, "tie_word_embeddings", false);
  c.attention_bias = opt_bool(j, "attention_bias", false);
  if (qwen2) {
    c.qkv_bias = true;
    c.o_bias = false;
  } else if (mistral) {
    c.qkv_bias = c.o_bias = false;  // transformers' Mistral attention has no biases
  } else {
    c.qkv_bias = c.o_bias = c.attention_bias;
  }
  c.mlp_bias = opt_bool(j, "mlp_bias", false);
  if (c.mlp_bias) raise(KF_ERR_UNSUPPORTED, "cannot load model: mlp_bias true is not supported");

  if (const Json *act = field(j, "hidden_act")) {
    if (!act->is_string() || (act->as_string() != "silu" && act->as_string() != "swish"))
      raise(KF_ERR_UNSUPPORTED, "cannot load model: hidden_act %s is not supported (silu)", brief(*act).c_str());
  }
  c.hidden_act = "silu";

  if (qwen2) {
    if (opt_bool(j, "use_sliding_window", false))
      raise(KF_ERR_UNSUPPORTED, "cannot load model: use_sliding_window true is not supported for qwen2");
  } else if (mistral) {
    c.sliding_window = opt_int(j, "sliding_window", 1, INT32_MAX, 0);
  }

  if (const Json *b = field(j, "bos_token_id")) {
    std::vector<int32_t> ids;
    token_ids(j, "bos_token_id", ids);
    if (b->is_array() && ids.size() > 1)
      raise(KF_ERR_FORMAT, "cannot load model: %s: bos_token_id must be a single token id", kFile);
    c.bos_token_id = ids.empty() ? -1 : ids[0];
  }
  token_ids(j, "eos_token_id", c.eos_token_ids);

  const Json *dt = field(j, "torch_dtype");
  if (!dt) dt = field(j, "dtype");
  if (dt && dt->is_string()) c.torch_dtype = dt->as_string();
  return c;
}

std::string join_path(const std::string &dir, const std::string &name) {
  if (dir.empty()) return name;
  if (dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

}  // namespace

std::string shape_to_string(const std::vector<int64_t> &shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); i++) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

ModelConfig parse_model_config(const std::string &dir) {
  const std::string path = join_path(dir, "config.json");
  const Json j = read_json_file(path, "load model", size_t(16) << 20);
  return from_json(j, path.c_str());
}

ModelConfig parse_model_config_json(const char *data, size_t len, const char *what) {
  const Json j = parse_json(data, len, what, "load model");
  return from_json(j, what);
}

std::vector<ExpectedTensor> expected_tensors(const ModelConfig &c) {
  const int64_t V = c.vocab_size, H = c.hidden_size, I = c.intermediate_size;
  const int64_t q = int64_t(c.n_heads) * c.head_dim, kv = int64_t(c.n_kv_heads) * c.head_dim;
  std::vector<ExpectedTensor> out;
  out.reserve(size_t(c.n_layers) * 15 + 3);
  auto add = [&](std::string name, std::vector<int64_t> shape, bool optional = false) {
    out.push_back(ExpectedTensor{std::move(name), std::move(shape), optional});
  };
  add("model.embed_tokens.weight", {V, H});
  for (int32_t i = 0; i < c.n_layers; i++) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    add(p + "input_layernorm.weight", {H});
    add(p + "self_attn.q_proj.weight", {q, H});
    add(p + "self_attn.k_proj.weight", {kv, H});
    add(p + "self_attn.v_proj.weight", {kv, H});
    add(p + "self_attn.o_proj.weight", {H, q});
    if (c.qkv_bias) {
      add(p + "self_attn.q_proj.bias", {q});
      add(p + "self_attn.k_proj.bias", {kv});
      add(p + "self_attn.v_proj.bias", {kv});
    }
    if (c.o_bias) add(p + "self_attn.o_proj.bias", {H});
    add(p + "post_attention_layernorm.weight", {H});
    add(p + "mlp.gate_proj.weight", {I, H});
    add(p + "mlp.up_proj.weight", {I, H});
    add(p + "mlp.down_proj.weight", {H, I});
  }
  add("model.norm.weight", {H});
  add("lm_head.weight", {V, H}, c.tie_word_embeddings);
  return out;
}

namespace {

// Tensors real checkpoints carry that the decoder has no use for: the rotary frequencies older
// transformers saved per layer (recomputed from the config), and an AutoCompressor's summary
// embeddings (read by the compressor, not by the decoder).
bool harmless_extra(const std::string &name) {
  if (name == "embed_summary.weight" || name == "model.rotary_emb.inv_freq") return true;
  const std::string pre = "model.layers.", suf = ".self_attn.rotary_emb.inv_freq";
  if (name.size() <= pre.size() + suf.size() || name.compare(0, pre.size(), pre) != 0 ||
      name.compare(name.size() - suf.size(), suf.size(), suf) != 0)
    return false;
  const std::string mid = name.substr(pre.size(), name.size() - pre.size() - suf.size());
  return mid.size() <= 6 && mid.find_first_not_of("0123456789") == std::string::npos;
}

// The layer index of "model.layers.<k>.<rest>", or -1.
int64_t layer_of(const std::string &name) {
  const std::string pre = "model.layers.";
  if (name.compare(0, pre.size(), pre) != 0) return -1;
  const size_t dot = name.find('.', pre.size());
  const std::string k = name.substr(pre.size(), dot == std::string::npos ? std::string::npos : dot - pre.size());
  if (k.empty() || k.size() > 9 || k.find_first_not_of("0123456789") != std::string::npos) return -1;
  return std::stoll(k);
}

}  // namespace

void validate_tensors(const ModelConfig &c, const TensorIndex &index) {
  const std::vector<ExpectedTensor> expected = expected_tensors(c);
  for (const ExpectedTensor &e : expected) {
    const TensorInfo *t = index.find(e.name);
    if (!t) {
      if (e.optional) continue;
      raise(KF_ERR_FORMAT, "cannot load model: tensor %s is missing", e.name.c_str());
    }
    if (t->shape != e.shape)
      raise(KF_ERR_FORMAT, "cannot load model: tensor %s has shape %s, config.json says %s", e.name.c_str(),
            shape_to_string(t->shape).c_str(), shape_to_string(e.shape).c_str());
    if (!t->dtype_supported) {
      raise(KF_ERR_UNSUPPORTED, "cannot load model: tensor %s has dtype %s; expected F32, F16 or BF16",
            e.name.c_str(), printable(t->dtype_str, 32).c_str());
    }
  }
  // Tensors the config does not use mean the config and the weights disagree (a num_hidden_layers
  // too small runs fewer layers than were trained; biases the config turns off are dropped).
  std::unordered_set<std::string> known;
  known.reserve(expected.size());
  for (const ExpectedTensor &e : expected) known.insert(e.name);
  std::vector<std::string> unused;
  int64_t past_layers = -1;
  for (const TensorInfo &t : index) {
    if (known.count(t.name) || harmless_extra(t.name)) continue;
    unused.push_back(t.name);
    past_layers = std::max(past_layers, layer_of(t.name));
  }
  if (!unused.empty()) {
    std::string names;
    for (size_t k = 0; k < unused.size() && k < 4; k++) names += (k ? ", " : "") + printable(unused[k], 96);
    if (unused.size() > 4) names += ", ... (" + std::to_string(unused.size()) + " in all)";
    std::string why;
    if (past_layers >= c.n_layers)
      why = "; the files hold layer " + std::to_string(past_layers) + " but num_hidden_layers is " +
            std::to_string(c.n_layers);
    raise(KF_ERR_FORMAT, "cannot load model: the weights hold tensors that config.json does not use: %s%s",
          names.c_str(), why.c_str());
  }
}

}  // namespace kf

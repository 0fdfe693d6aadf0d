// gguf.cpp — validated reading of GGUF model files (see gguf.h).
#include "gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>

#include "gguf_header.h"
#include "json.h"

namespace kf {

namespace {

using namespace gguf;

// Typed look-ups of hparams, naming the key and the file in every message.
class Hparams {
 public:
  Hparams(const Metadata &md, const std::string &path, const std::string &arch) : md_(md), path_(path), arch_(arch) {}
  const Value *find(const std::string &key) const {
    auto it = md_.find(key);
    return it == md_.end() ? nullptr : &it->second;
  }
  std::string key(const char *k) const { return arch_ + "." + k; }
  int64_t integer(const char *k, int64_t lo, int64_t hi, const int64_t *fallback = nullptr) const {
    const std::string name = key(k);
    const Value *v = find(name);
    if (!v) {
      if (fallback) return *fallback;
      raise(KF_ERR_FORMAT, "cannot load model: %s: metadata key %s is missing", path_.c_str(), name.c_str());
    }
    if (v->type == kArray)
      raise(KF_ERR_UNSUPPORTED, "cannot load model: %s: %s holds one value per layer; only models whose layers are "
            "all alike are supported", path_.c_str(), name.c_str());
    if (!v->is_int())
      raise(KF_ERR_FORMAT, "cannot load model: %s: %s is a %s, not an integer", path_.c_str(), name.c_str(),
            kValueTypeNames[v->type]);
    const bool is_unsigned = v->type == kU8 || v->type == kU16 || v->type == kU32 || v->type == kU64;
    if ((is_unsigned && v->u > uint64_t(hi)) || (!is_unsigned && (v->i < lo || v->i > hi)) || int64_t(v->u) < lo)
      raise(KF_ERR_FORMAT, "cannot load model: %s: %s is %s, outside [%lld, %lld]", path_.c_str(), name.c_str(),
            is_unsigned ? std::to_string(v->u).c_str() : std::to_string(v->i).c_str(), (long long)lo, (long long)hi);
    return v->i;
  }
  double positive(const char *k, const double *fallback) const {
    const std::string name = key(k);
    const Value *v = find(name);
    if (!v) {
      if (fallback) return *fallback;
      raise(KF_ERR_FORMAT, "cannot load model: %s: metadata key %s is missing", path_.c_str(), name.c_str());
    }
    const double x = v->type == kF32 || v->type == kF64 ? v->f : v->is_int() ? double(v->i) : NAN;
    if (!(x > 0) || !std::isfinite(x))
      raise(KF_ERR_FORMAT, "cannot load model: %s: %s must be a positive finite number", path_.c_str(), name.c_str());
    return x;
  }
  const std::string *string(const std::string &name) const {
    const Value *v = find(name);
    if (!v) return nullptr;
    if (v->type != kString)
      raise(KF_ERR_FORMAT, "cannot load model: %s: %s is a %s, not a string", path_.c_str(), name.c_str(),
            kValueTypeNames[v->type]);
    return &v->s;
  }

 private:
  const Metadata &md_;
  const std::string &path_;
  const std::string &arch_;
};

// GGUF names of a layer's tensors and their HF names (after "blk.N." / "model.layers.N.").
const char *const kLayerNames[][2] = {
      {"attn_norm.weight", "input_layernorm.weight"},   {"attn_q.weight", "self_attn.q_proj.weight"},
      {"attn_q.bias", "self_attn.q_proj.bias"},          {"attn_k.weight", "self_attn.k_proj.weight"},
      {"attn_k.bias", "self_attn.k_proj.bias"},          {"attn_v.weight", "self_attn.v_proj.weight"},
      {"attn_v.bias", "self_attn.v_proj.bias"},          {"attn_output.weight", "self_attn.o_proj.weight"},
      {"attn_output.bias", "self_attn.o_proj.bias"},     {"ffn_norm.weight", "post_attention_layernorm.weight"},
      {"ffn_gate.weight", "mlp.gate_proj.weight"},       {"ffn_up.weight", "mlp.up_proj.weight"},
      {"ffn_down.weight", "mlp.down_proj.weight"}};

// HF name of a GGUF tensor name of the llama / qwen2 layout, or "" when it has none.
std::string hf_name(const std::string &g, int32_t n_layers) {
  if (g == "token_embd.weight") return "model.embed_tokens.weight";
  if (g == "output_norm.weight") return "model.norm.weight";
  if (g == "output.weight") return "lm_head.weight";
  if (g.compare(0, 4, "blk.") != 0) return "";
  size_t k = 4;
  int64_t layer = 0;
  while (k < g.size() && g[k] >= '0' && g[k] <= '9' && k < 12) layer = layer * 10 + (g[k++] - '0');
  if (k == 4 || k >= g.size() || g[k] != '.' || layer >= n_layers || (g[4] == '0' && k > 5)) return "";
  const std::string rest = g.substr(k + 1);
  for (const auto &m : kLayerNames)
    if (rest == m[0]) return "model.layers." + std::to_string(layer) + "." + m[1];
  return "";
}

// GGUF name of an HF tensor name (for messages about tensors the file lacks).
std::string gguf_name_of(const std::string &hf) {
  if (hf == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf == "model.norm.weight") return "output_norm.weight";
  if (hf == "lm_head.weight") return "output.weight";
  const size_t dot = hf.find('.', 13);  // after "model.layers."
  if (hf.compare(0, 13, "model.layers.") != 0 || dot == std::string::npos) return hf;
  for (const auto &m : kLayerNames)
    if (hf.compare(dot + 1, std::string::npos, m[1]) == 0) return "blk." + hf.substr(13, dot - 13) + "." + m[0];
  return hf;
}

// The config the metadata and the tensors describe, validated as config.json is.
ModelConfig config_from(const Header &h, const std::string &path) {
  const char *p = path.c_str();
  auto arch_it = h.md.find("general.architecture");
  if (arch_it == h.md.end()) raise(KF_ERR_FORMAT, "cannot load model: %s: general.architecture is missing", p);
  if (arch_it->second.type != kString)
    raise(KF_ERR_FORMAT, "cannot load model: %s: general.architecture is not a string", p);
  const std::string &arch = arch_it->second.s;
  if (arch != "llama" && arch != "qwen2")
    raise(KF_ERR_UNSUPPORTED, "cannot load model: %s: architecture \"%s\" is not supported (llama, qwen2)", p,
          shown(arch).c_str());
  const Hparams hp(h.md, path, arch);
  ModelConfig c;
  c.model_type = arch;
  if (const Value *e = hp.find(hp.key("expert_count")); e && e->is_int() && e->i > 0)
    raise(KF_ERR_UNSUPPORTED, "cannot load model: %s: mixture-of-experts models are not supported", p);
  c.hidden_size = int32_t(hp.integer("embedding_length", 1, kMaxHidden));
  c.n_layers = int32_t(hp.integer("block_count", 1, kMaxLayers));
  c.intermediate_size = int32_t(hp.integer("feed_forward_length", 1, kMaxIntermediate));
  c.n_heads = int32_t(hp.integer("attention.head_count", 1, kMaxHeads));
  const int64_t heads = c.n_heads;
  c.n_kv_heads = int32_t(hp.integer("attention.head_count_kv", 1, kMaxHeads, &heads));
  if (c.n_heads % c.n_kv_heads != 0)
    raise(KF_ERR_FORMAT, "cannot load model: %s: %s.attention.head_count %d is not a multiple of head_count_kv %d", p,
          arch.c_str(), c.n_heads, c.n_kv_heads);
  if (hp.find(hp.key("attention.key_length"))) {
    c.head_dim = int32_t(hp.integer("attention.key_length", 2, kMaxHeadDim));
  } else {
    if (c.hidden_size % c.n_heads != 0)
      raise(KF_ERR_FORMAT, "cannot load model: %s: embedding_length %d is not a multiple of head_count %d", p,
            c.hidden_size, c.n_heads);
    c.head_dim = c.hidden_size / c.n_heads;
    if (c.head_dim > kMaxHeadDim)
      raise(KF_ERR_FORMAT, "cannot load model: %s: head size %d is above %lld", p, c.head_dim, (long long)kMaxHeadDim);
  }
  if (c.head_dim % 2 != 0)
    raise(KF_ERR_FORMAT, "cannot load model: %s: head size %d is odd; rotary embeddings need an even one", p,
          c.head_dim);
  const int64_t hd = c.head_dim;
  if (hp.integer("attention.value_length", 1, kMaxHeadDim, &hd) != hd)
    raise(KF_ERR_UNSUPPORTED, "cannot load model: %s: value heads of another size than key heads are not supported", p);
  if (hp.integer("rope.dimension_count", 1, kMaxHeadDim, &hd) != hd)
    raise(KF_ERR_UNSUPPORTED, "cannot load model: %s: rotary embeddings over part of a head are not supported", p);
  const int64_t ctx = 2048;
  c.max_position_embeddings = int32_t(hp.integer("context_length", 1, kMaxPositions, &ctx));
  c.rms_norm_eps = hp.positive("attention.layer_norm_rms_epsilon", nullptr);
  const double theta = 10000.0;
  c.rope_theta = hp.positive("rope.freq_base", &theta);
  const std::string *scaling = hp.string(hp.key("rope.scaling.type"));
  if (scaling && *scaling == "linear") {
    c.rope_scaling = RopeScaling::Linear;
    c.rope_factor = hp.positive("rope.scaling.factor", nullptr);
  } else if (scaling && *scaling != "none") {
    raise(KF_ERR_UNSUPPORTED, "cannot load model: %s: rope scaling \"%s\" is not supported (none, linear)", p,
          shown(*scaling).c_str());
  }
  if (h.by_name.count("rope_freqs.weight"))
    raise(KF_ERR_UNSUPPORTED, "cannot load model: %s: rope_freqs.weight (Llama 3.1 rope factors) is not supported", p);
  auto embd = h.by_name.find("token_embd.weight");
  if (embd == h.by_name.end()) raise(KF_ERR_FORMAT, "cannot load model: %s: tensor token_embd.weight is missing", p);
  const std::vector<int64_t> &ne = h.raw[embd->second].ne;
  const int64_t rows = ne.size() >= 2 ? ne[1] : 0;
  c.vocab_size = int32_t(hp.integer("vocab_size", 1, kMaxVocab, rows >= 1 && rows <= kMaxVocab ? &rows : nullptr));
  c.tie_word_embeddings = h.by_name.count("output.weight") == 0;
  c.qkv_bias = arch == "qwen2" || h.by_name.count("blk.0.attn_q.bias") != 0;
  c.o_bias = arch == "llama" && h.by_name.count("blk.0.attn_output.bias") != 0;
  c.attention_bias = arch == "llama" && (c.qkv_bias || c.o_bias);
  auto token = [&](const char *key) -> int32_t {
    auto it = h.md.find(key);
    return it != h.md.end() && it->second.is_int() && it->second.i >= 0 && it->second.i < c.vocab_size
               ? int32_t(it->second.i)
               : -1;
  };
  c.bos_token_id = token("tokenizer.ggml.bos_token_id");
  if (token("tokenizer.ggml.eos_token_id") >= 0) c.eos_token_ids.push_back(token("tokenizer.ggml.eos_token_id"));
  return c;
}

// Copies of q/k (or their biases) with llama.cpp's per-head row interleaving undone: HF row
// g*hd + j*hd/2 + i is file row g*hd + 2i + j.
const uint8_t *unpermute_rows(const uint8_t *src, int64_t rows, size_t row_bytes, int64_t heads, WeightArena &arena) {
  uint8_t *out = arena.alloc(size_t(rows) * row_bytes, "the q/k rows of a GGUF file");
  const int64_t hd = rows / heads, half = hd / 2;
  for (int64_t g = 0; g < heads; g++)
    for (int64_t i = 0; i < half; i++)
      for (int64_t j = 0; j < 2; j++)
        std::memcpy(out + size_t(g * hd + j * half + i) * row_bytes, src + size_t(g * hd + 2 * i + j) * row_bytes,
                    row_bytes);
  return out;
}

}  // namespace

bool is_model_file(const std::string &path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

GgufModelFile::GgufModelFile(const std::string &path, bool use_mmap) : path_(path) {
  const char *p = path_.c_str();
  uint64_t size = 0;
  const int fd = open_regular_file(path_, "load model", &size);
  try {
    if (size < 24)
      raise(KF_ERR_FORMAT, "cannot load model: %s is %llu bytes, too short for a GGUF file (at least 24)", p,
            (unsigned long long)size);
    if (size > uint64_t(SIZE_MAX) / 2) raise(KF_ERR_FORMAT, "cannot load model: %s is too large to address", p);
    if (use_mmap) {
      void *m = ::mmap(nullptr, size_t(size), PROT_READ, MAP_PRIVATE, fd, 0);
      if (m == MAP_FAILED) raise(KF_ERR_IO, "cannot load model: cannot map %s: %s", p, errno_text(errno).c_str());
      base_ = static_cast<uint8_t *>(m);
      mapped_ = true;
    } else {
      void *m = ::mmap(nullptr, size_t(size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (m == MAP_FAILED)
        raise(KF_ERR_OUT_OF_MEMORY, "cannot load model: cannot allocate %llu bytes to read %s: %s",
              (unsigned long long)size, p, errno_text(errno).c_str());
      base_ = static_cast<uint8_t *>(m);
      advise_huge_pages(base_, size_t(size));
    }
    alloc_ = size_t(size);
    if (!use_mmap) read_fully(fd, base_, size_t(size), path_, "load model");
  } catch (...) {
    ::close(fd);
    release();
    throw;
  }
  ::close(fd);
  // The tensors under their HF names and shapes, checked against what the config implies.
  auto bind_tensors = [&](const std::vector<RawTensor> &raw, const uint8_t *data) {
    const char *p = path_.c_str();
    const std::vector<ExpectedTensor> expected = expected_tensors(cfg_);
    std::unordered_map<std::string, const ExpectedTensor *> want;
    for (const ExpectedTensor &e : expected) want.emplace(e.name, &e);
    tensors_.reserve(raw.size());
    for (const RawTensor &r : raw) {
      const std::string tn = shown(r.name);
      std::string hf = hf_name(r.name, cfg_.n_layers);
      if (hf.empty())
        raise(KF_ERR_FORMAT, "cannot load model: %s: tensor %s is not one of a %s model of %d layers", p, tn.c_str(),
              cfg_.model_type.c_str(), cfg_.n_layers);
      auto w = want.find(hf);
      if (w == want.end())
        raise(KF_ERR_FORMAT, "cannot load model: %s: tensor %s is not used: the model's other tensors say it has "
              "no such %s", p, tn.c_str(), r.name.find(".bias") != std::string::npos ? "bias" : "weight");
      const std::vector<int64_t> shape(r.ne.rbegin(), r.ne.rend());
      if (shape != w->second->shape)
        raise(KF_ERR_FORMAT, "cannot load model: %s: tensor %s has shape %s, the metadata says %s", p, tn.c_str(),
              shape_to_string(shape).c_str(), shape_to_string(w->second->shape).c_str());
      if (shape.size() == 1 && (dtype_quantized(r.dtype) || dtype_load_only(r.dtype)))
        raise(KF_ERR_UNSUPPORTED, "cannot load model: %s: tensor %s is %s; vectors must be F32, F16 or BF16", p,
              tn.c_str(), r.type_name);
      TensorInfo t;
      t.name = hf;
      t.dtype_str = r.type_name;
      t.dtype = r.dtype;
      t.dtype_supported = true;
      t.shape = shape;
      t.data = data + r.offset;
      t.nbytes = size_t(r.nbytes);
      t.file = path_;
      const bool q = hf.find("q_proj") != std::string::npos, k = hf.find("k_proj") != std::string::npos;
      if (cfg_.model_type == "llama" && (q || k)) {
        const size_t row_bytes = shape.size() == 2 ? dtype_row_bytes(r.dtype, shape[1]) : dtype_size(r.dtype);
        t.data = unpermute_rows(t.data, shape[0], row_bytes, q ? cfg_.n_heads : cfg_.n_kv_heads, owned_);
      }
      by_name_.emplace(hf, tensors_.size());
      tensors_.push_back(std::move(t));
    }
    for (const ExpectedTensor &e : expected)
      if (!e.optional && !by_name_.count(e.name))
        raise(KF_ERR_FORMAT, "cannot load model: %s: tensor %s is missing", p, gguf_name_of(e.name).c_str());
  };
  try {
    const Header h = parse_header(base_, size, path_);
    cfg_ = config_from(h, path_);
    bind_tensors(h.raw, base_ + h.data_at);
  } catch (...) {
    release();
    throw;
  }
}

const TensorInfo *GgufModelFile::find(const std::string &name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

void GgufModelFile::drop_data_except(const std::vector<const void *> &in_use) noexcept {
  for (const void *q : in_use)
    if (base_ && q >= static_cast<const void *>(base_) && q < static_cast<const void *>(base_ + alloc_)) return;
  release();
}

void GgufModelFile::release() noexcept {
  if (base_) ::munmap(base_, alloc_);
  base_ = nullptr;
  alloc_ = 0;
  mapped_ = false;
}

GgufModelFile::~GgufModelFile() { release(); }

}  // namespace kf

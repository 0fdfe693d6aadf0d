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

#include "json.h"

namespace kf {

namespace {

// gguf_type (gguf.h of ggml).
enum : uint32_t {
  kU8 = 0, kI8, kU16, kI16, kU32, kI32, kF32, kBool, kString, kArray, kU64, kI64, kF64, kNumValueTypes
};
const char *const kValueTypeNames[kNumValueTypes] = {"uint8", "int8",   "uint16", "int16",  "uint32", "int32", "float32",
                                                     "bool",  "string", "array",  "uint64", "int64",  "float64"};
// Bytes of one value of each fixed-size type (0: string, array).
const uint8_t kValueSizes[kNumValueTypes] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

// ggml_type names by id (ggml.h); "" for ids no longer used.
const char *const kGgmlTypeNames[] = {
    "F32",  "F16",  "Q4_0", "Q4_1", "",      "",      "Q5_0",   "Q5_1",    "Q8_0",   "Q8_1",
    "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",  "Q8_K",  "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",
    "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M",
    "BF16", "", "", "", "TQ1_0", "TQ2_0", "", "", "", "MXFP4"};
constexpr uint32_t kNumGgmlTypes = sizeof(kGgmlTypeNames) / sizeof(kGgmlTypeNames[0]);

// The ggml types read here, as DTypes, with their block sizes.
bool ggml_to_dtype(uint32_t t, DType *dt, int64_t *block_values, int64_t *block_bytes) {
  switch (t) {
  case 0: *dt = DType::F32, *block_values = 1, *block_bytes = 4; return true;
  case 1: *dt = DType::F16, *block_values = 1, *block_bytes = 2; return true;
  case 30: *dt = DType::BF16, *block_values = 1, *block_bytes = 2; return true;
  case 8: *dt = DType::Q8_0, *block_values = 32, *block_bytes = 34; return true;
  case 2: *dt = DType::Q4_0, *block_values = 32, *block_bytes = 18; return true;
  case 12: *dt = DType::Q4_K, *block_values = 256, *block_bytes = 144; return true;
  case 14: *dt = DType::Q6_K, *block_values = 256, *block_bytes = 210; return true;
  default: return false;
  }
}

// A printable rendering of an untrusted name for messages.
std::string shown(const std::string &s) {
  std::string out;
  for (unsigned char c : s) {
    if (out.size() >= 120) {
      out += "...";
      break;
    }
    out += (c >= 0x20 && c != 0x7f) ? char(c) : '?';
  }
  return out;
}

struct Value {
  uint32_t type = 0;
  uint64_t u = 0;  // unsigned integers and bool
  int64_t i = 0;   // signed integers
  double f = 0;    // floats
  std::string s;
  uint32_t item_type = 0;  // arrays: element type and count (elements are skipped, not kept)
  uint64_t count = 0;
  bool is_int() const {
    return type == kU8 || type == kI8 || type == kU16 || type == kI16 || type == kU32 || type == kI32 || type == kU64 ||
           type == kI64;
  }
};

// Bounds-checked little-endian reads over the header bytes.
class Cursor {
 public:
  Cursor(const uint8_t *p, uint64_t size, const std::string &path) : p_(p), size_(size), path_(path) {}
  uint64_t at() const { return at_; }
  uint64_t left() const { return size_ - at_; }
  void need(uint64_t n, const char *what) {
    if (n > left())
      raise(KF_ERR_FORMAT,
            "cannot load model: %s: the header is truncated: %s at byte %llu needs %llu bytes, %llu are left",
            path_.c_str(), what, (unsigned long long)at_, (unsigned long long)n, (unsigned long long)left());
  }
  uint64_t uint(int bytes, const char *what) {
    need(uint64_t(bytes), what);
    uint64_t v = 0;
    for (int k = bytes - 1; k >= 0; k--) v = v << 8 | p_[at_ + uint64_t(k)];
    at_ += uint64_t(bytes);
    return v;
  }
  uint32_t u32(const char *what) { return uint32_t(uint(4, what)); }
  uint64_t u64(const char *what) { return uint(8, what); }
  std::string str(const char *what) {
    const uint64_t n = u64(what);
    if (n > left())
      raise(KF_ERR_FORMAT,
            "cannot load model: %s: %s at byte %llu has length %llu, past the end of the file (%llu bytes left)",
            path_.c_str(), what, (unsigned long long)(at_ - 8), (unsigned long long)n, (unsigned long long)left());
    std::string s(reinterpret_cast<const char *>(p_ + at_), size_t(n));
    at_ += n;
    return s;
  }
  void skip(uint64_t n, const char *what) {
    need(n, what);
    at_ += n;
  }

 private:
  const uint8_t *p_;
  uint64_t size_;
  uint64_t at_ = 0;
  const std::string &path_;
};

Value read_scalar(Cursor &c, uint32_t type, const char *what) {
  Value v;
  v.type = type;
  switch (type) {
  case kU8: case kU16: case kU32: case kU64: v.u = c.uint(kValueSizes[type], what); v.i = int64_t(v.u); break;
  case kI8: case kI16: case kI32: case kI64: {
    const int bytes = kValueSizes[type];
    uint64_t u = c.uint(bytes, what);
    if (bytes < 8 && (u >> (8 * bytes - 1)) & 1) u |= ~uint64_t(0) << (8 * bytes);  // sign-extend
    v.i = int64_t(u);
    v.u = u;
    break;
  }
  case kBool: v.u = c.uint(1, what) != 0; break;
  case kF32: {
    const uint32_t b = c.u32(what);
    float f;
    std::memcpy(&f, &b, 4);
    v.f = f;
    break;
  }
  case kF64: {
    const uint64_t b = c.u64(what);
    std::memcpy(&v.f, &b, 8);
    break;
  }
  case kString: v.s = c.str(what); break;
  default: break;
  }
  return v;
}

using Metadata = std::unordered_map<std::string, Value>;

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

// One tensor info as the file gives it.
struct RawTensor {
  std::string name;
  std::vector<int64_t> ne;  // innermost first
  uint32_t type = 0;
  uint64_t offset = 0, nbytes = 0;
  DType dtype = DType::F32;
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

std::string ne_string(const std::vector<int64_t> &ne) {
  std::string s = "[";
  for (size_t k = 0; k < ne.size(); k++) s += (k ? ", " : "") + std::to_string(ne[k]);
  return s + "]";
}

// The header, checked against the file's size: metadata, tensor infos, the data section's start.
struct Header {
  Metadata md;
  std::vector<RawTensor> raw;
  std::unordered_map<std::string, size_t> by_name;
  uint64_t data_at = 0;
};

Header parse_header(const uint8_t *base_, uint64_t size, const std::string &path_) {
  Header h;
  const char *p = path_.c_str();
  Cursor c(base_, size, path_);
  if (std::memcmp(base_, "GGUF", 4) != 0) {
    char got[5] = {};
    for (int k = 0; k < 4; k++) got[k] = (base_[k] >= 0x20 && base_[k] < 0x7f) ? char(base_[k]) : '?';
    raise(KF_ERR_FORMAT, "cannot load model: %s is not a GGUF file (it starts with \"%s\", not \"GGUF\")", p, got);
  }
  c.skip(4, "the magic");
  const uint32_t version = c.u32("the version");
  if (version == 1)
    raise(KF_ERR_UNSUPPORTED, "cannot load model: %s is GGUF version 1, which is not supported (2, 3)", p);
  if (version != 2 && version != 3)
    raise(KF_ERR_FORMAT, "cannot load model: %s: GGUF version %u is not one this reader knows (2, 3)%s", p, version,
          (version & 0xffff) == 0 ? "; is it a big-endian file?" : "");
  const uint64_t n_tensors = c.u64("the tensor count");
  const uint64_t n_kv = c.u64("the metadata count");
  // Each tensor info takes at least 28 bytes (name length, n_dims, one dim, type, offset) and each
  // metadata entry at least 13: counts past what the file can hold are refused before any allocation.
  if (n_tensors > kGgufMaxTensors || n_tensors > c.left() / 28)
    raise(KF_ERR_FORMAT, "cannot load model: %s: the tensor count %llu is more than the file can hold", p,
          (unsigned long long)n_tensors);
  if (n_kv > kGgufMaxMetadata || n_kv > c.left() / 13)
    raise(KF_ERR_FORMAT, "cannot load model: %s: the metadata count %llu is more than the file can hold", p,
          (unsigned long long)n_kv);

  Metadata &md = h.md;
  md.reserve(size_t(n_kv));
  for (uint64_t k = 0; k < n_kv; k++) {
    std::string key = c.str("a metadata key");
    const std::string what = "metadata " + shown(key);
    const uint32_t type = c.u32(what.c_str());
    if (type >= kNumValueTypes)
      raise(KF_ERR_FORMAT, "cannot load model: %s: %s has value type %u, not a GGUF type", p, what.c_str(), type);
    Value v;
    if (type == kArray) {
      v.type = kArray;
      v.item_type = c.u32(what.c_str());
      v.count = c.u64(what.c_str());
      if (v.item_type >= kNumValueTypes || v.item_type == kArray)
        raise(KF_ERR_FORMAT, "cannot load model: %s: %s is an array of value type %u, which is not supported", p,
              what.c_str(), v.item_type);
      const uint64_t min_item = v.item_type == kString ? 8 : kValueSizes[v.item_type];
      if (v.count > c.left() / min_item)
        raise(KF_ERR_FORMAT, "cannot load model: %s: %s holds %llu items, more than the file can hold", p,
              what.c_str(), (unsigned long long)v.count);
      if (v.item_type == kString) {
        for (uint64_t e = 0; e < v.count; e++) c.skip(c.u64(what.c_str()), what.c_str());
      } else {
        c.skip(v.count * min_item, what.c_str());
      }
    } else {
      v = read_scalar(c, type, what.c_str());
    }
    if (!md.emplace(std::move(key), std::move(v)).second)
      raise(KF_ERR_FORMAT, "cannot load model: %s: %s appears twice", p, what.c_str());
  }

  std::vector<RawTensor> &raw = h.raw;
  raw.resize(static_cast<size_t>(n_tensors));
  std::unordered_map<std::string, size_t> &raw_by_name = h.by_name;
  for (RawTensor &t : raw) {
    t.name = c.str("a tensor name");
    const std::string tn = shown(t.name);
    const uint32_t n_dims = c.u32(tn.c_str());
    if (n_dims < 1 || n_dims > 4)
      raise(KF_ERR_FORMAT, "cannot load model: %s: tensor %s has %u dimensions, not 1 to 4", p, tn.c_str(), n_dims);
    unsigned __int128 numel = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
      const uint64_t n = c.u64(tn.c_str());
      if (n > uint64_t(INT64_MAX))
        raise(KF_ERR_FORMAT, "cannot load model: %s: tensor %s has dimension %llu", p, tn.c_str(), (unsigned long long)n);
      t.ne.push_back(int64_t(n));
      numel *= n;
      if (numel > static_cast<unsigned __int128>(INT64_MAX))
        raise(KF_ERR_FORMAT, "cannot load model: %s: tensor %s has too many elements", p, tn.c_str());
    }
    t.type = c.u32(tn.c_str());
    t.offset = c.u64(tn.c_str());
    int64_t bv = 0, bb = 0;
    if (!ggml_to_dtype(t.type, &t.dtype, &bv, &bb)) {
      if (t.type < kNumGgmlTypes && *kGgmlTypeNames[t.type])
        raise(KF_ERR_UNSUPPORTED, "cannot load model: %s: tensor %s is of type %s; supported: F32, F16, BF16, Q8_0, "
              "Q4_0, Q4_K, Q6_K", p, tn.c_str(), kGgmlTypeNames[t.type]);
      raise(KF_ERR_FORMAT, "cannot load model: %s: tensor %s has ggml type %u, which is not a ggml type", p,
            tn.c_str(), t.type);
    }
    if (t.ne[0] % bv != 0)
      raise(KF_ERR_FORMAT, "cannot load model: %s: tensor %s of type %s has rows of %lld values, not whole blocks "
            "of %lld", p, tn.c_str(), kGgmlTypeNames[t.type], (long long)t.ne[0], (long long)bv);
    const unsigned __int128 nbytes = numel / unsigned(bv) * unsigned(bb);
    if (nbytes > size)
      raise(KF_ERR_FORMAT, "cannot load model: %s: tensor %s %s of %s needs more bytes than the file has", p,
            tn.c_str(), ne_string(t.ne).c_str(), kGgmlTypeNames[t.type]);
    t.nbytes = uint64_t(nbytes);
    if (!raw_by_name.emplace(t.name, size_t(&t - raw.data())).second)
      raise(KF_ERR_FORMAT, "cannot load model: %s: tensor %s appears twice", p, tn.c_str());
  }

  uint64_t alignment = 32;
  if (auto it = md.find("general.alignment"); it != md.end()) {
    const Value &a = it->second;
    if (a.type != kU32 || a.u == 0 || (a.u & (a.u - 1)) != 0 || a.u > 4096)
      raise(KF_ERR_FORMAT, "cannot load model: %s: general.alignment must be a uint32 power of two up to 4096", p);
    alignment = a.u;
  }
  const uint64_t data_at = (c.at() + alignment - 1) / alignment * alignment;
  if (data_at > size)
    raise(KF_ERR_FORMAT, "cannot load model: %s: the file ends at byte %llu, before its data section (at %llu)", p,
          (unsigned long long)size, (unsigned long long)data_at);
  const uint64_t data_len = size - data_at;
  for (const RawTensor &t : raw) {
    const std::string tn = shown(t.name);
    if (t.offset % alignment != 0)
      raise(KF_ERR_FORMAT, "cannot load model: %s: tensor %s is at data offset %llu, not a multiple of the "
            "alignment %llu", p, tn.c_str(), (unsigned long long)t.offset, (unsigned long long)alignment);
    if (t.offset > data_len || t.nbytes > data_len - t.offset)
      raise(KF_ERR_FORMAT, "cannot load model: %s: tensor %s (data offset %llu, %llu bytes) runs past the end of "
            "the file's %llu data bytes; is the file truncated?", p, tn.c_str(), (unsigned long long)t.offset,
            (unsigned long long)t.nbytes, (unsigned long long)data_len);
  }
  // llama.cpp's layout, which its reader requires too: in file order each tensor starts at the first
  // aligned offset after the previous one's end, and the file ends with the last one (and its
  // padding). Holes, overlaps and bytes inserted or appended all break it.
  uint64_t expected = 0;
  const RawTensor *prev = nullptr;
  for (const RawTensor &t : raw) {
    if (t.offset != expected)
      raise(KF_ERR_FORMAT, "cannot load model: %s: tensor %s is at data offset %llu, but %s ends at %llu (%s)", p,
            shown(t.name).c_str(), (unsigned long long)t.offset,
            prev ? ("tensor " + shown(prev->name)).c_str() : "the data section's start", (unsigned long long)expected,
            t.offset < expected ? "they overlap" : "a hole in the data section");
    expected = (t.offset + t.nbytes + alignment - 1) / alignment * alignment;
    prev = &t;
  }
  const uint64_t end = prev ? prev->offset + prev->nbytes : 0;
  if (data_len > expected)
    raise(KF_ERR_FORMAT, "cannot load model: %s: %llu bytes follow the last tensor's data (it ends at data offset %llu "
          "of %llu); bytes were inserted or appended", p, (unsigned long long)(data_len - end),
          (unsigned long long)end, (unsigned long long)data_len);

  h.data_at = data_at;
  return h;
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
std::unique_ptr<uint8_t[]> unpermute_rows(const uint8_t *src, int64_t rows, size_t row_bytes, int64_t heads) {
  std::unique_ptr<uint8_t[]> out(new uint8_t[size_t(rows) * row_bytes]);
  const int64_t hd = rows / heads, half = hd / 2;
  for (int64_t g = 0; g < heads; g++)
    for (int64_t i = 0; i < half; i++)
      for (int64_t j = 0; j < 2; j++)
        std::memcpy(out.get() + size_t(g * hd + j * half + i) * row_bytes, src + size_t(g * hd + 2 * i + j) * row_bytes,
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
              tn.c_str(), kGgmlTypeNames[r.type]);
      TensorInfo t;
      t.name = hf;
      t.dtype_str = kGgmlTypeNames[r.type];
      t.dtype = r.dtype;
      t.dtype_supported = true;
      t.shape = shape;
      t.data = data + r.offset;
      t.nbytes = size_t(r.nbytes);
      t.file = path_;
      const bool q = hf.find("q_proj") != std::string::npos, k = hf.find("k_proj") != std::string::npos;
      if (cfg_.model_type == "llama" && (q || k)) {
        const size_t row_bytes = shape.size() == 2 ? dtype_row_bytes(r.dtype, shape[1]) : dtype_size(r.dtype);
        owned_.push_back(unpermute_rows(t.data, shape[0], row_bytes, q ? cfg_.n_heads : cfg_.n_kv_heads));
        t.data = owned_.back().get();
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

// gguf_header.cpp — a GGUF file's header, parsed and checked against the file's size (gguf_header.h):
// every count, length, dim and offset is bounded before anything is allocated from it.
#include "gguf_header.h"

#include <cstring>

#include "gguf.h"

namespace kf::gguf {

namespace {

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

}  // namespace

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

std::string ne_string(const std::vector<int64_t> &ne) {
  std::string s = "[";
  for (size_t k = 0; k < ne.size(); k++) s += (k ? ", " : "") + std::to_string(ne[k]);
  return s + "]";
}

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
    t.type_name = kGgmlTypeNames[t.type];
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

}  // namespace kf::gguf

// safetensors.h — reading .safetensors files and Hugging Face model folders of them.
//
// File layout: 8 bytes little-endian header length N, N bytes of JSON header, then the data section.
// The header maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative
// to the data section) plus an optional "__metadata__" object of string → string.
//
// Everything in a header is validated before any pointer is handed out: sizes, shapes (products
// checked for overflow), byte counts against dtype × shape, ranges inside the data section, no two
// tensors overlapping. Errors are kf::Error: KF_ERR_IO for a missing or unreadable file (path and
// strerror), KF_ERR_FORMAT for anything malformed (naming the file and the tensor).
//
// Alignment: safetensors only guarantees that the data section starts 8-byte aligned when the writer
// padded the header (the reference writer does); a tensor's own offset may be anything. So
// TensorInfo::data may be unaligned for its dtype: check TensorInfo::aligned() or read with memcpy.
// With use_mmap the file is mapped read-only and data points into the mapping (the data section sits
// at file offset 8 + N of a page-aligned mapping); without it the file is read into anonymous memory
// (transparent huge pages advised) laid out so that the data section itself starts 64-byte aligned.
//
// A mapped file that another process truncates while it is mapped faults on access (SIGBUS); that is
// inherent to mmap, and the process stops (a handler installed with the first mapping prints which
// file it was). Pass use_mmap = false where files may change underneath: model loads do by default.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common.h"

namespace kf {

// Largest header accepted (the reference implementation's limit).
constexpr uint64_t kSafetensorsMaxHeader = 100000000;

struct TensorInfo {
  std::string name;
  std::string dtype_str;        // as written: "F32", "BF16", "I64", ...
  DType dtype = DType::F32;     // meaningful only when dtype_supported
  bool dtype_supported = false; // F32, F16 or BF16
  std::vector<int64_t> shape;   // each dim >= 0; [] is a scalar
  const uint8_t *data = nullptr; // first byte; may be unaligned (see above); valid while the owner lives
  size_t nbytes = 0;            // end - begin
  std::string file;             // path of the file holding it

  // Product of shape (1 for a scalar). Checked at open: it cannot overflow.
  int64_t numel() const;
  // Whether data is a multiple of `alignment` bytes (a power of two, e.g. dtype_size(dtype)).
  bool aligned(size_t alignment) const {
    return alignment == 0 || reinterpret_cast<uintptr_t>(data) % alignment == 0;
  }
};

// Index of the first NaN or infinite element among data[0, n) of dtype dt, or -1 when all are
// finite. data may be unaligned. A bit test on the exponent, vectorised by the compiler.
int64_t first_non_finite(const uint8_t *data, DType dt, int64_t n);

// Size in bits of one element of a safetensors dtype string ("F32" → 32, "F4" → 4), 0 if unknown.
int safetensors_dtype_bits(const std::string &dtype);

class SafetensorsFile {
 public:
  SafetensorsFile() = default;
  // Opens and validates `path`. use_mmap: map read-only (MAP_PRIVATE) rather than read into memory.
  // action: the "cannot <action>:" prefix of messages ("load model", "load adapter", ...).
  explicit SafetensorsFile(const std::string &path, bool use_mmap = true, const char *action = "load model");
  ~SafetensorsFile();
  SafetensorsFile(SafetensorsFile &&other) noexcept;
  SafetensorsFile &operator=(SafetensorsFile &&other) noexcept;
  SafetensorsFile(const SafetensorsFile &) = delete;
  SafetensorsFile &operator=(const SafetensorsFile &) = delete;

  const std::string &path() const { return path_; }
  // Tensors in header order. Unknown and unsupported dtypes are listed too (dtype_supported false).
  const std::vector<TensorInfo> &tensors() const { return tensors_; }
  // nullptr when absent.
  const TensorInfo *find(const std::string &name) const;
  // The header's "__metadata__", in file order (empty when absent).
  const std::vector<std::pair<std::string, std::string>> &metadata() const { return metadata_; }
  // Value of a metadata key, or nullptr.
  const std::string *metadata_value(const std::string &key) const;
  uint64_t file_size() const { return size_; }
  uint64_t header_size() const { return header_len_; }   // N
  bool mapped() const { return mapped_; }
  // Whether p points into this file's bytes (its mapping or buffer).
  bool holds(const void *p) const {
    return base_ && p >= static_cast<const void *>(base_) && p < static_cast<const void *>(base_ + alloc_);
  }
  // Frees the file's bytes (unmaps or frees its buffer); tensors() then keeps names and shapes, but
  // no TensorInfo::data may be read any more.
  void drop_data() noexcept { release(); }

 private:
  void release() noexcept;

  std::string path_;
  uint8_t *base_ = nullptr;  // file mapping, or the anonymous mapping the file was read into
  size_t alloc_ = 0;         // bytes mapped / allocated at base_
  size_t file_off_ = 0;      // offset of file byte 0 within base_ (heap padding)
  bool mapped_ = false;
  uint64_t size_ = 0;
  uint64_t header_len_ = 0;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, size_t> by_name_;
  std::vector<std::pair<std::string, std::string>> metadata_;
};

// All tensors of a Hugging Face model folder: model.safetensors, or the shards listed by
// model.safetensors.index.json ({"weight_map": {tensor name: shard file name}}). With an index, only
// the tensors it maps are listed, each from its mapped shard; every shard must exist and hold every
// tensor mapped to it; shard names are plain file names inside the folder (no '/', '\\' or "..";
// symlinks such as the Hugging Face cache's are followed). When both files exist, model.safetensors
// wins, as in transformers.
class TensorIndex {
 public:
  TensorIndex() = default;
  TensorIndex(TensorIndex &&) noexcept = default;
  TensorIndex &operator=(TensorIndex &&) noexcept = default;
  TensorIndex(const TensorIndex &) = delete;
  TensorIndex &operator=(const TensorIndex &) = delete;

  // Missing folder or neither file: KF_ERR_IO
  // "cannot load model: <dir> has neither model.safetensors nor model.safetensors.index.json".
  static TensorIndex open_dir(const std::string &dir, bool use_mmap = true, const char *action = "load model");
  // One file on its own (e.g. an adapter or a heads file).
  static TensorIndex open_file(const std::string &path, bool use_mmap = true, const char *action = "load model");

  const TensorInfo *find(const std::string &name) const;
  // Every tensor: single file in header order; sharded in index (weight_map) order.
  const std::vector<TensorInfo> &tensors() const { return tensors_; }
  std::vector<TensorInfo>::const_iterator begin() const { return tensors_.begin(); }
  std::vector<TensorInfo>::const_iterator end() const { return tensors_.end(); }
  size_t size() const { return tensors_.size(); }
  // Sum of nbytes over tensors().
  int64_t total_bytes() const { return total_bytes_; }
  // The opened files (one, or one per distinct shard in first-use order).
  const std::vector<SafetensorsFile> &files() const { return files_; }
  // Frees the bytes of every file that none of `in_use` points into (see SafetensorsFile::drop_data).
  void drop_data_except(const std::vector<const void *> &in_use) noexcept;

 private:
  void add(const TensorInfo &t);

  std::vector<SafetensorsFile> files_;  // moving the vector keeps the mappings where they are
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, size_t> by_name_;
  int64_t total_bytes_ = 0;
};

}  // namespace kf

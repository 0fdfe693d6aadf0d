// gguf.h — reading a llama.cpp GGUF model file (versions 2 and 3) as the tensors of a Hugging Face
// folder: the config from the metadata, every tensor renamed to its HF name and shape, llama's q/k
// row permutation undone.
//
// File layout: "GGUF", u32 version, u64 tensor count, u64 metadata count; metadata entries (string
// key, u32 value type, value); tensor infos (string name, u32 n_dims, u64 dims innermost first, u32
// ggml type, u64 offset); padding to general.alignment (default 32); the data section, each tensor at
// an aligned offset into it. Strings are a u64 length and bytes. Little endian.
//
// Accepted: general.architecture "llama" or "qwen2"; tensors of types F32, F16, BF16 (any tensor),
// Q8_0 and Q4_0 (2-D weights; their blocks are ggml's, used as they are). Everything in the header is
// checked against the file's size before anything is allocated from it: counts, string and array
// lengths, dims (products checked for overflow), offsets (aligned, inside the data section, no two
// tensors overlapping). Errors are kf::Error naming the file and the key or tensor: KF_ERR_FORMAT for
// a malformed or inconsistent file, KF_ERR_UNSUPPORTED for a valid one this engine does not run (an
// architecture, a tensor type such as Q4_K, rope scaling other than linear, per-layer head counts).
//
// llama.cpp's converter reorders the rows of q and k (and their biases) within each head so that its
// RoPE rotates adjacent pairs (row 2i+j of a head holds HF row j*head_dim/2+i); the reader puts them
// back into copies it owns (whole rows move, so quantized blocks are kept as they are).
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "model_config.h"
#include "safetensors.h"
#include "weight_arena.h"

namespace kf {

// Most tensors and metadata entries accepted (llama.cpp's largest models have a few thousand).
constexpr uint64_t kGgufMaxTensors = uint64_t(1) << 20;
constexpr uint64_t kGgufMaxMetadata = uint64_t(1) << 20;

// Whether `path` names a regular file (a GGUF model) rather than a model folder.
bool is_model_file(const std::string &path);

class GgufModelFile {
 public:
  // Opens, validates and maps `path` (use_mmap: read-only mapping; else read into memory).
  GgufModelFile(const std::string &path, bool use_mmap);
  ~GgufModelFile();
  GgufModelFile(const GgufModelFile &) = delete;
  GgufModelFile &operator=(const GgufModelFile &) = delete;

  // The hparams, as parse_model_config would give them for the equivalent folder.
  const ModelConfig &config() const { return cfg_; }
  // Every tensor under its HF name and shape ([rows, cols] for matrices), in file order; dtype is
  // any DType (Q8_0 / Q4_0 only for matrices). file is the GGUF path.
  const std::vector<TensorInfo> &tensors() const { return tensors_; }
  const TensorInfo *find(const std::string &name) const;
  // Frees the file's bytes unless one of `in_use` points into them (the permuted copies stay).
  void drop_data_except(const std::vector<const void *> &in_use) noexcept;

 private:
  void release() noexcept;

  std::string path_;
  uint8_t *base_ = nullptr;
  size_t alloc_ = 0;
  bool mapped_ = false;
  ModelConfig cfg_;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, size_t> by_name_;
  WeightArena owned_;  // q/k rows in HF order
};

}  // namespace kf

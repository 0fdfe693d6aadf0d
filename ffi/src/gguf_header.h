// gguf_header.h — inside the GGUF reader (gguf.cpp): the header of a GGUF file parsed and checked
// against the file's size (gguf_header.cpp): metadata values, tensor infos, where the data starts.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "common.h"

namespace kf::gguf {

// gguf_type (gguf.h of ggml).
enum : uint32_t {
  kU8 = 0, kI8, kU16, kI16, kU32, kI32, kF32, kBool, kString, kArray, kU64, kI64, kF64, kNumValueTypes
};
inline const char *const kValueTypeNames[kNumValueTypes] = {
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool", "string", "array", "uint64", "int64", "float64"};

// One metadata value (arrays: their element type and count only).

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

using Metadata = std::unordered_map<std::string, Value>;

// One tensor info as the file gives it.
struct RawTensor {
  std::string name;
  std::vector<int64_t> ne;  // innermost first
  uint32_t type = 0;
  uint64_t offset = 0, nbytes = 0;
  DType dtype = DType::F32;
  const char *type_name = "";  // ggml's name of `type`
};

// The header, checked against the file's size: metadata, tensor infos, the data section's start.
struct Header {
  Metadata md;
  std::vector<RawTensor> raw;
  std::unordered_map<std::string, size_t> by_name;
  uint64_t data_at = 0;
};

// Throws kf::Error (KF_ERR_FORMAT / KF_ERR_UNSUPPORTED) naming `path` and what is wrong; reads nothing
// past base + size.
Header parse_header(const uint8_t *base, uint64_t size, const std::string &path);

// A printable rendering of an untrusted name for messages.
std::string shown(const std::string &s);
// dims as "[a, b]" (innermost first, as the file gives them).
std::string ne_string(const std::vector<int64_t> &ne);

}  // namespace kf::gguf

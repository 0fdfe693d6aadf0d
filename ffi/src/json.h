// json.h — a small, strict JSON (RFC 8259) DOM for config.json, safetensors headers and index files.
//
// Strict: exactly one value, surrounded only by JSON whitespace (a leading UTF-8 byte order mark is
// skipped); no comments, trailing commas, NaN/Infinity, single quotes, leading zeros or control
// characters in strings; input must be valid UTF-8; \u escapes must pair surrogates correctly;
// duplicate object keys are refused. Safe: nesting deeper than kJsonMaxDepth is refused (the parser
// recurses once per level, so it never exhausts the stack), numbers outside the double range are
// refused, and every failure is a kf::Error(KF_ERR_FORMAT) naming the input and the byte offset.
//
// Values are read-only after parsing. Objects keep their keys in file order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common.h"

namespace kf {

// Deepest nesting of arrays and objects accepted (the top-level value is depth 1).
constexpr int kJsonMaxDepth = 64;

class Json {
 public:
  enum class Type : uint8_t { Null, Bool, Number, String, Array, Object };
  using Member = std::pair<std::string, Json>;

  Json();  // null
  ~Json();
  Json(Json &&) noexcept;
  Json &operator=(Json &&) noexcept;
  Json(const Json &) = delete;
  Json &operator=(const Json &) = delete;

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::Null; }
  bool is_bool() const { return type_ == Type::Bool; }
  bool is_number() const { return type_ == Type::Number; }
  bool is_string() const { return type_ == Type::String; }
  bool is_array() const { return type_ == Type::Array; }
  bool is_object() const { return type_ == Type::Object; }
  // A number whose value is an integer that int64 holds exactly: a literal without fraction or
  // exponent in [-2^63, 2^63), or any other literal (2.0, 1e3) whose double value is integral and
  // within ±2^53.
  bool is_integer() const { return type_ == Type::Number && int_exact_; }
  // Name of the type for messages: "null", "a boolean", "a number", "a string", "an array", "an object".
  const char *type_name() const;

  // Typed accessors. Calling one on the wrong type throws kf::Error(KF_ERR_INTERNAL): callers check
  // the type first and word their own message.
  bool as_bool() const;
  double as_double() const;        // any number
  int64_t as_int64() const;        // requires is_integer()
  const std::string &as_string() const;

  // Arrays: elements in order. Objects: members in file order. Wrong type → KF_ERR_INTERNAL.
  const std::vector<Json> &items() const;
  const std::vector<Member> &members() const;
  // Elements of an array or members of an object; 0 for anything else.
  size_t size() const;
  // Array element i (i < size()), else KF_ERR_INTERNAL.
  const Json &operator[](size_t i) const;
  // Object member by key; nullptr when absent or when this is not an object. O(log n).
  const Json *find(const std::string &key) const;

 private:
  friend class JsonParser;
  struct Payload;

  Type type_ = Type::Null;
  bool bool_ = false;
  bool int_exact_ = false;
  double num_ = 0.0;
  int64_t int_ = 0;
  std::unique_ptr<Payload> p_;  // string, array or object contents
};

// Parses data[0, len). `what` names the input in messages (e.g. "/models/x/config.json");
// `action` is the "cannot <action>:" prefix. Failure: kf::Error(KF_ERR_FORMAT,
// "cannot load model: <what> is not valid JSON: <reason> at byte <offset>").
Json parse_json(const char *data, size_t len, const char *what, const char *action = "load model");

// Reads and parses a whole file of at most max_bytes. A missing file is KF_ERR_IO
// "cannot <action>: <path> does not exist"; other read failures KF_ERR_IO with strerror;
// a file larger than max_bytes KF_ERR_FORMAT. Messages name the file by `path`.
Json read_json_file(const std::string &path, const char *action = "load model",
                    size_t max_bytes = size_t(64) << 20);

// File helpers shared by the loaders.
// strerror(err) as a std::string, thread-safe.
std::string errno_text(int err);
// Opens a regular file read-only (close-on-exec) and returns its descriptor and size. Missing:
// KF_ERR_IO "cannot <action>: <path> does not exist"; a directory: KF_ERR_IO "... is a directory,
// not a file"; a FIFO or device: KF_ERR_IO "... is not a regular file"; other failures KF_ERR_IO with strerror. Never blocks on a FIFO.
int open_regular_file(const std::string &path, const char *action, uint64_t *size_out);
// Reads exactly n bytes (retrying short reads and EINTR); a short file is KF_ERR_IO.
void read_fully(int fd, uint8_t *dst, size_t n, const std::string &path, const char *action);

}  // namespace kf

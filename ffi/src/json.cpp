// json.cpp — strict recursive-descent JSON parser with a depth limit, and a bounded file reader.
#include "json.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cmath>

namespace kf {

// ---------------------------------------------------------------------------------------------
// Json value

struct Json::Payload {
  std::string str;                // String
  std::vector<Json> arr;          // Array
  std::vector<Member> obj;        // Object, file order
  std::vector<uint32_t> index;    // Object: indices into obj sorted by key (built when size >= 2)
};

Json::Json() = default;
Json::~Json() = default;
Json::Json(Json &&) noexcept = default;
Json &Json::operator=(Json &&) noexcept = default;

const char *Json::type_name() const {
  switch (type_) {
  case Type::Null: return "null";
  case Type::Bool: return "a boolean";
  case Type::Number: return "a number";
  case Type::String: return "a string";
  case Type::Array: return "an array";
  case Type::Object: return "an object";
  }
  return "?";
}

namespace {
[[noreturn]] void wrong_type(const char *want, const Json &j) {
  raise(KF_ERR_INTERNAL, "json: value is %s, not %s", j.type_name(), want);
}
const std::vector<Json> kNoItems;
const std::vector<Json::Member> kNoMembers;
}  // namespace

bool Json::as_bool() const {
  if (type_ != Type::Bool) wrong_type("a boolean", *this);
  return bool_;
}
double Json::as_double() const {
  if (type_ != Type::Number) wrong_type("a number", *this);
  return num_;
}
int64_t Json::as_int64() const {
  if (!is_integer()) wrong_type("an integer", *this);
  return int_;
}
const std::string &Json::as_string() const {
  if (type_ != Type::String) wrong_type("a string", *this);
  return p_->str;
}
const std::vector<Json> &Json::items() const {
  if (type_ != Type::Array) wrong_type("an array", *this);
  return p_ ? p_->arr : kNoItems;
}
const std::vector<Json::Member> &Json::members() const {
  if (type_ != Type::Object) wrong_type("an object", *this);
  return p_ ? p_->obj : kNoMembers;
}
size_t Json::size() const {
  if (type_ == Type::Array) return p_->arr.size();
  if (type_ == Type::Object) return p_->obj.size();
  return 0;
}
const Json &Json::operator[](size_t i) const {
  const std::vector<Json> &a = items();
  if (i >= a.size()) raise(KF_ERR_INTERNAL, "json: index %zu out of range (size %zu)", i, a.size());
  return a[i];
}
const Json *Json::find(const std::string &key) const {
  if (type_ != Type::Object) return nullptr;
  const std::vector<Member> &m = p_->obj;
  if (m.size() == 1) return m[0].first == key ? &m[0].second : nullptr;
  const std::vector<uint32_t> &ix = p_->index;
  auto it = std::lower_bound(ix.begin(), ix.end(), key,
                             [&](uint32_t i, const std::string &k) { return m[i].first < k; });
  if (it != ix.end() && m[*it].first == key) return &m[*it].second;
  return nullptr;
}

// ---------------------------------------------------------------------------------------------
// Parser

class JsonParser {
 public:
  JsonParser(const char *data, size_t len, const char *what, const char *action)
      : s_(reinterpret_cast<const unsigned char *>(data)), n_(len), what_(what ? what : "input"),
        action_(action ? action : "load model") {}

  Json parse_document() {
    if (!s_ && n_) fail("no data");
    if (n_ >= 3 && s_[0] == 0xEF && s_[1] == 0xBB && s_[2] == 0xBF) i_ = 3;  // UTF-8 BOM
    skip_ws();
    Json v = parse_value(1);
    skip_ws();
    if (i_ != n_) fail("unexpected data after the value");
    return v;
  }

 private:
  const unsigned char *s_;
  size_t n_;
  size_t i_ = 0;
  const char *what_;
  const char *action_;

  [[noreturn]] void fail(const char *reason) { fail_at(reason, i_); }
  [[noreturn]] void fail_at(const char *reason, size_t at) {
    raise(KF_ERR_FORMAT, "cannot %s: %s is not valid JSON: %s at byte %zu", action_, what_, reason, at);
  }

  void skip_ws() {
    while (i_ < n_ && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) i_++;
  }

  Json parse_value(int depth) {
    if (i_ >= n_) fail("unexpected end of input");
    const unsigned char c = s_[i_];
    switch (c) {
    case '{': return parse_object(depth);
    case '[': return parse_array(depth);
    case '"': {
      Json v;
      v.type_ = Json::Type::String;
      v.p_.reset(new Json::Payload);
      parse_string(v.p_->str);
      return v;
    }
    case 't': return literal("true", Json::Type::Bool, true);
    case 'f': return literal("false", Json::Type::Bool, false);
    case 'n': return literal("null", Json::Type::Null, false);
    default:
      if (c == '-' || (c >= '0' && c <= '9')) return parse_number();
      fail("unexpected character");
    }
  }

  Json literal(const char *word, Json::Type t, bool b) {
    const size_t k = std::strlen(word);
    if (n_ - i_ < k || std::memcmp(s_ + i_, word, k) != 0) fail("invalid literal");
    i_ += k;
    Json v;
    v.type_ = t;
    v.bool_ = b;
    return v;
  }

  Json parse_array(int depth) {
    if (depth > kJsonMaxDepth) fail("nesting deeper than 64 levels");
    i_++;  // '['
    Json v;
    v.type_ = Json::Type::Array;
    v.p_.reset(new Json::Payload);
    skip_ws();
    if (i_ < n_ && s_[i_] == ']') {
      i_++;
      return v;
    }
    for (;;) {
      skip_ws();
      v.p_->arr.push_back(parse_value(depth + 1));
      skip_ws();
      if (i_ >= n_) fail("unexpected end of input in an array");
      if (s_[i_] == ',') {
        i_++;
        continue;
      }
      if (s_[i_] == ']') {
        i_++;
        return v;
      }
      fail("expected ',' or ']'");
    }
  }

  Json parse_object(int depth) {
    if (depth > kJsonMaxDepth) fail("nesting deeper than 64 levels");
    const size_t start = i_;
    i_++;  // '{'
    Json v;
    v.type_ = Json::Type::Object;
    v.p_.reset(new Json::Payload);
    std::vector<Json::Member> &obj = v.p_->obj;
    skip_ws();
    if (i_ < n_ && s_[i_] == '}') {
      i_++;
      return v;
    }
    for (;;) {
      skip_ws();
      if (i_ >= n_) fail("unexpected end of input in an object");
      if (s_[i_] != '"') fail("expected a string key");
      std::string key;
      parse_string(key);
      skip_ws();
      if (i_ >= n_ || s_[i_] != ':') fail("expected ':' after an object key");
      i_++;
      skip_ws();
      Json val = parse_value(depth + 1);
      obj.emplace_back(std::move(key), std::move(val));
      skip_ws();
      if (i_ >= n_) fail("unexpected end of input in an object");
      if (s_[i_] == ',') {
        i_++;
        continue;
      }
      if (s_[i_] == '}') {
        i_++;
        break;
      }
      fail("expected ',' or '}'");
    }
    if (obj.size() >= UINT32_MAX) fail_at("object has too many members", start);
    if (obj.size() >= 2) {
      std::vector<uint32_t> &ix = v.p_->index;
      ix.resize(obj.size());
      for (size_t k = 0; k < obj.size(); k++) ix[k] = uint32_t(k);
      std::stable_sort(ix.begin(), ix.end(), [&](uint32_t a, uint32_t b) { return obj[a].first < obj[b].first; });
      for (size_t k = 1; k < ix.size(); k++) {
        if (obj[ix[k - 1]].first == obj[ix[k]].first) {
          // Keys may hold anything; quote a printable prefix only.
          std::string shown;
          for (unsigned char ch : obj[ix[k]].first) {
            if (shown.size() >= 64) break;
            shown += (ch >= 0x20 && ch < 0x7f && ch != '"') ? char(ch) : '?';
          }
          const std::string reason = "duplicate key \"" + shown + "\" in the object starting";
          fail_at(reason.c_str(), start);
        }
      }
    }
    return v;
  }

  static void put_utf8(std::string &out, uint32_t cp) {
    if (cp < 0x80) {
      out += char(cp);
    } else if (cp < 0x800) {
      out += char(0xC0 | (cp >> 6));
      out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += char(0xE0 | (cp >> 12));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    } else {
      out += char(0xF0 | (cp >> 18));
      out += char(0x80 | ((cp >> 12) & 0x3F));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    }
  }

  // Reads 4 hex digits at i_ (after "\u").
  uint32_t hex4() {
    if (n_ - i_ < 4) fail("truncated \\u escape");
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
      const unsigned char c = s_[i_ + size_t(k)];
      uint32_t d;
      if (c >= '0' && c <= '9') d = c - '0';
      else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
      else fail_at("invalid hex digit in a \\u escape", i_ + size_t(k));
      v = v << 4 | d;
    }
    i_ += 4;
    return v;
  }

  // Length of the valid UTF-8 sequence starting at s_[i_] (lead byte >= 0x80), or 0 when invalid.
  size_t utf8_len() const {
    const unsigned char c = s_[i_];
    const size_t left = n_ - i_;
    auto cont = [&](size_t k) { return k < left && (s_[i_ + k] & 0xC0) == 0x80; };
    if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
      if (!cont(1) || !cont(2)) return 0;
      const unsigned char c1 = s_[i_ + 1];
      if (c == 0xE0 && c1 < 0xA0) return 0;  // overlong
      if (c == 0xED && c1 > 0x9F) return 0;  // UTF-16 surrogate
      return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
      if (!cont(1) || !cont(2) || !cont(3)) return 0;
      const unsigned char c1 = s_[i_ + 1];
      if (c == 0xF0 && c1 < 0x90) return 0;  // overlong
      if (c == 0xF4 && c1 > 0x8F) return 0;  // above U+10FFFF
      return 4;
    }
    return 0;
  }

  void parse_string(std::string &out) {
    i_++;  // opening quote
    for (;;) {
      // Copy a run of ordinary ASCII in one go.
      size_t j = i_;
      while (j < n_ && s_[j] >= 0x20 && s_[j] < 0x80 && s_[j] != '"' && s_[j] != '\\') j++;
      out.append(reinterpret_cast<const char *>(s_ + i_), j - i_);
      i_ = j;
      if (i_ >= n_) fail("unterminated string");
      const unsigned char c = s_[i_];
      if (c == '"') {
        i_++;
        return;
      }
      if (c < 0x20) fail("control character in a string");
      if (c >= 0x80) {
        const size_t k = utf8_len();
        if (!k) fail("invalid UTF-8 in a string");
        out.append(reinterpret_cast<const char *>(s_ + i_), k);
        i_ += k;
        continue;
      }
      // Backslash escape.
      const size_t esc_at = i_;
      i_++;
      if (i_ >= n_) fail("unterminated string");
      const unsigned char e = s_[i_++];
      switch (e) {
      case '"': out += '"'; break;
      case '\\': out += '\\'; break;
      case '/': out += '/'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case 't': out += '\t'; break;
      case 'u': {
        uint32_t cp = hex4();
        if (cp >= 0xDC00 && cp <= 0xDFFF) fail_at("unpaired low surrogate in a \\u escape", esc_at);
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          if (n_ - i_ < 2 || s_[i_] != '\\' || s_[i_ + 1] != 'u')
            fail_at("high surrogate not followed by a low surrogate", esc_at);
          i_ += 2;
          const uint32_t lo = hex4();
          if (lo < 0xDC00 || lo > 0xDFFF) fail_at("high surrogate not followed by a low surrogate", esc_at);
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        put_utf8(out, cp);
        break;
      }
      default: fail_at("invalid escape", esc_at);
      }
    }
  }

  Json parse_number() {
    const size_t start = i_;
    bool neg = false;
    if (s_[i_] == '-') {
      neg = true;
      i_++;
    }
    // int part
    const size_t int_start = i_;
    if (i_ >= n_ || !(s_[i_] >= '0' && s_[i_] <= '9')) fail("expected a digit");
    if (s_[i_] == '0') {
      i_++;
      if (i_ < n_ && s_[i_] >= '0' && s_[i_] <= '9') fail("leading zero in a number");
    } else {
      while (i_ < n_ && s_[i_] >= '0' && s_[i_] <= '9') i_++;
    }
    const size_t int_end = i_;
    bool has_frac = false, has_exp = false;
    size_t frac_start = 0, frac_end = 0;
    if (i_ < n_ && s_[i_] == '.') {
      has_frac = true;
      i_++;
      frac_start = i_;
      if (i_ >= n_ || !(s_[i_] >= '0' && s_[i_] <= '9')) fail("expected a digit after '.'");
      while (i_ < n_ && s_[i_] >= '0' && s_[i_] <= '9') i_++;
      frac_end = i_;
    }
    int64_t exp_val = 0;  // saturated
    if (i_ < n_ && (s_[i_] == 'e' || s_[i_] == 'E')) {
      has_exp = true;
      i_++;
      bool eneg = false;
      if (i_ < n_ && (s_[i_] == '+' || s_[i_] == '-')) eneg = s_[i_++] == '-';
      if (i_ >= n_ || !(s_[i_] >= '0' && s_[i_] <= '9')) fail("expected a digit in an exponent");
      while (i_ < n_ && s_[i_] >= '0' && s_[i_] <= '9') {
        if (exp_val < 1000000000) exp_val = exp_val * 10 + (s_[i_] - '0');
        i_++;
      }
      if (eneg) exp_val = -exp_val;
    }

    Json v;
    v.type_ = Json::Type::Number;
    const char *b = reinterpret_cast<const char *>(s_ + start);
    const char *e = reinterpret_cast<const char *>(s_ + i_);
    double d = 0.0;
    auto r = std::from_chars(b, e, d);  // locale-independent
    if (r.ec == std::errc::result_out_of_range) {
      // Decide overflow vs underflow from the decimal magnitude of the literal.
      int64_t mag;
      if (!(int_end - int_start == 1 && s_[int_start] == '0')) {
        mag = int64_t(int_end - int_start);
      } else {
        size_t z = frac_start;
        while (has_frac && z < frac_end && s_[z] == '0') z++;
        mag = -int64_t(z - frac_start);
      }
      mag += exp_val;
      if (mag > 0) fail_at("number out of range", start);
      d = neg ? -0.0 : 0.0;
    } else if (r.ec != std::errc() || r.ptr != e) {
      fail_at("invalid number", start);
    }
    if (!std::isfinite(d)) fail_at("number out of range", start);
    v.num_ = d;

    if (!has_frac && !has_exp) {
      // Exact integer from the digits when it fits int64.
      uint64_t mag = 0;
      bool fits = true;
      for (size_t k = int_start; k < int_end; k++) {
        const uint64_t dig = uint64_t(s_[k] - '0');
        if (mag > (UINT64_MAX - dig) / 10) {
          fits = false;
          break;
        }
        mag = mag * 10 + dig;
      }
      if (fits && !neg && mag > uint64_t(INT64_MAX)) fits = false;
      if (fits && neg && mag > uint64_t(INT64_MAX) + 1) fits = false;
      if (fits) {
        v.int_exact_ = true;
        v.int_ = neg ? (mag == uint64_t(INT64_MAX) + 1 ? INT64_MIN : -int64_t(mag)) : int64_t(mag);
        return v;
      }
    }
    if (std::floor(d) == d && std::fabs(d) <= 9007199254740992.0) {
      v.int_exact_ = true;
      v.int_ = int64_t(d);
    }
    return v;
  }
};

Json parse_json(const char *data, size_t len, const char *what, const char *action) {
  JsonParser p(data, len, what, action);
  return p.parse_document();
}

// ---------------------------------------------------------------------------------------------
// Files

namespace {
// strerror_r comes in two flavours (XSI returns int, GNU returns char*).
inline const char *pick_err(int r, const char *buf) { return r == 0 ? buf : "unknown error"; }
inline const char *pick_err(const char *r, const char *) { return r; }
}  // namespace

std::string errno_text(int err) {
  char buf[256];
  buf[0] = '\0';
  return pick_err(strerror_r(err, buf, sizeof buf), buf);
}

int open_regular_file(const std::string &path, const char *action, uint64_t *size_out) {
  if (path.find('\0') != std::string::npos)
    raise(KF_ERR_INVALID_ARGUMENT, "cannot %s: path contains a NUL byte", action);
  // O_NONBLOCK so that opening a FIFO does not wait for a writer; it is refused below.
  int fd;
  do {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) raise(KF_ERR_IO, "cannot %s: %s does not exist", action, path.c_str());
    raise(KF_ERR_IO, "cannot %s: %s cannot be opened: %s", action, path.c_str(), errno_text(err).c_str());
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    raise(KF_ERR_IO, "cannot %s: cannot stat %s: %s", action, path.c_str(), errno_text(err).c_str());
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    if (S_ISDIR(st.st_mode)) raise(KF_ERR_IO, "cannot %s: %s is a directory, not a file", action, path.c_str());
    raise(KF_ERR_IO, "cannot %s: %s is not a regular file", action, path.c_str());
  }
  const int fl = ::fcntl(fd, F_GETFL);
  if (fl >= 0) ::fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
  if (st.st_size < 0) {
    ::close(fd);
    raise(KF_ERR_IO, "cannot %s: %s has a negative size", action, path.c_str());
  }
  *size_out = uint64_t(st.st_size);
  return fd;
}

void read_fully(int fd, uint8_t *dst, size_t n, const std::string &path, const char *action) {
  size_t got = 0;
  while (got < n) {
    const size_t want = std::min<size_t>(n - got, size_t(1) << 30);
    const ssize_t r = ::read(fd, dst + got, want);
    if (r < 0) {
      if (errno == EINTR) continue;
      raise(KF_ERR_IO, "cannot %s: cannot read %s: %s", action, path.c_str(), errno_text(errno).c_str());
    }
    if (r == 0)
      raise(KF_ERR_IO, "cannot %s: %s ended after %zu of %zu bytes (was it truncated while reading?)", action,
            path.c_str(), got, n);
    got += size_t(r);
  }
}

Json read_json_file(const std::string &path, const char *action, size_t max_bytes) {
  uint64_t size = 0;
  const int fd = open_regular_file(path, action, &size);
  std::string buf;
  try {
    if (size > max_bytes)
      raise(KF_ERR_FORMAT, "cannot %s: %s is %llu bytes, more than the %zu accepted for a JSON file", action,
            path.c_str(), static_cast<unsigned long long>(size), max_bytes);
    buf.resize(size_t(size));
    read_fully(fd, reinterpret_cast<uint8_t *>(&buf[0]), buf.size(), path, action);
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  return parse_json(buf.data(), buf.size(), path.c_str(), action);
}

}  // namespace kf

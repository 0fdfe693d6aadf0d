// model_files_test.cpp — JSON parser, safetensors reader, config.json parsing and tensor validation.
//
// Standalone: writes small files into a temporary folder, prints one line per check, exits nonzero if
// any check failed. Build and run:
//   g++ -std=c++17 -O2 -Wall -pthread -Iffi/include ffi/tests/model_files_test.cpp ffi/src/json.cpp
//       ffi/src/safetensors.cpp ffi/src/model_config.cpp ffi/src/common.cpp -o build/model_files_test
//   build/model_files_test
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "../src/json.h"
#include "../src/model_config.h"
#include "../src/safetensors.h"

using namespace kf;

namespace {

int g_fail = 0, g_pass = 0;
std::string g_tmp;

void report(bool ok, const std::string &name, const std::string &detail = "") {
  if (ok) {
    g_pass++;
    std::printf("ok   %s\n", name.c_str());
  } else {
    g_fail++;
    std::printf("FAIL %s%s%s\n", name.c_str(), detail.empty() ? "" : ": ", detail.c_str());
  }
}

void check(const std::string &name, bool cond, const std::string &detail = "") { report(cond, name, detail); }

// Runs f; passes when it throws kf::Error with `code` and a message containing `needle`.
void expect_error(const std::string &name, kf_status code, const std::string &needle, const std::function<void()> &f) {
  try {
    f();
    report(false, name, "no error was raised");
  } catch (const Error &e) {
    const bool ok = e.code == code && std::string(e.what()).find(needle) != std::string::npos;
    report(ok, name,
           ok ? "" : "got code " + std::to_string(int(e.code)) + " \"" + e.what() + "\", want code " +
                         std::to_string(int(code)) + " containing \"" + needle + "\"");
  } catch (const std::exception &e) {
    report(false, name, std::string("unexpected exception: ") + e.what());
  }
}

// Runs f; passes when it does not throw.
void expect_ok(const std::string &name, const std::function<void()> &f) {
  try {
    f();
    report(true, name);
  } catch (const std::exception &e) {
    report(false, name, e.what());
  }
}

std::string path(const std::string &rel) { return g_tmp + "/" + rel; }

void write_file(const std::string &p, const std::string &bytes) {
  FILE *f = std::fopen(p.c_str(), "wb");
  if (!f) {
    std::perror(p.c_str());
    std::exit(2);
  }
  if (!bytes.empty()) std::fwrite(bytes.data(), 1, bytes.size(), f);
  std::fclose(f);
}

std::string make_dir(const std::string &rel) {
  const std::string p = path(rel);
  ::mkdir(p.c_str(), 0755);
  return p;
}

void remove_tree(const std::string &p) {
  struct stat st;
  if (::lstat(p.c_str(), &st) != 0) return;
  if (S_ISDIR(st.st_mode)) {
    if (DIR *d = ::opendir(p.c_str())) {
      while (dirent *e = ::readdir(d)) {
        const std::string n = e->d_name;
        if (n != "." && n != "..") remove_tree(p + "/" + n);
      }
      ::closedir(d);
    }
    ::rmdir(p.c_str());
  } else {
    ::unlink(p.c_str());
  }
}

// ------------------------------------------------------------------------------------------------
// safetensors writer

struct T {
  std::string name, dtype;
  std::vector<int64_t> shape;
};

size_t elem_size(const std::string &dt) { return size_t(safetensors_dtype_bits(dt) / 8); }

std::string shape_json(const std::vector<int64_t> &s) {
  std::string o = "[";
  for (size_t i = 0; i < s.size(); i++) o += (i ? "," : "") + std::to_string(s[i]);
  return o + "]";
}

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; i++) s[size_t(i)] = char((n >> (8 * i)) & 0xff);
  return s;
}

// Header JSON text plus data; header padded with spaces to a multiple of 8 (like the reference writer).
std::string raw_file(std::string header, const std::string &data, bool pad = true) {
  if (pad)
    while ((8 + header.size()) % 8) header += ' ';
  return le64(header.size()) + header + data;
}

// Contiguous tensors; F32 element k of tensor t holds t*1000 + k, 16-bit ones hold the pattern bytes.
std::string make_st(const std::vector<T> &ts, const std::string &metadata = "") {
  std::string header = "{";
  std::string data;
  bool first = true;
  if (!metadata.empty()) {
    header += "\"__metadata__\":" + metadata;
    first = false;
  }
  for (size_t t = 0; t < ts.size(); t++) {
    int64_t n = 1;
    for (int64_t d : ts[t].shape) n *= d;
    const size_t es = elem_size(ts[t].dtype);
    const size_t begin = data.size();
    for (int64_t k = 0; k < n; k++) {
      if (ts[t].dtype == "F32") {
        const float v = float(t * 1000 + size_t(k));
        data.append(reinterpret_cast<const char *>(&v), 4);
      } else {
        for (size_t b = 0; b < es; b++) data += char((k + int64_t(b)) & 0xff);
      }
    }
    header += std::string(first ? "" : ",") + "\"" + ts[t].name + "\":{\"dtype\":\"" + ts[t].dtype +
              "\",\"shape\":" + shape_json(ts[t].shape) + ",\"data_offsets\":[" + std::to_string(begin) + "," +
              std::to_string(data.size()) + "]}";
    first = false;
  }
  header += "}";
  return raw_file(header, data);
}

// ------------------------------------------------------------------------------------------------
// config.json writer: ordered key → raw JSON value; "" removes a key.

using Cfg = std::vector<std::pair<std::string, std::string>>;

Cfg llama_cfg() {
  return {{"architectures", "[\"LlamaForCausalLM\"]"},
          {"model_type", "\"llama\""},
          {"vocab_size", "32"},
          {"hidden_size", "16"},
          {"intermediate_size", "24"},
          {"num_hidden_layers", "2"},
          {"num_attention_heads", "4"},
          {"num_key_value_heads", "2"},
          {"max_position_embeddings", "128"},
          {"rms_norm_eps", "1e-05"},
          {"rope_theta", "10000.0"},
          {"rope_scaling", "null"},
          {"tie_word_embeddings", "false"},
          {"hidden_act", "\"silu\""},
          {"bos_token_id", "1"},
          {"eos_token_id", "2"},
          {"torch_dtype", "\"float32\""}};
}

Cfg with(Cfg c, const std::string &key, const std::string &value) {
  for (auto it = c.begin(); it != c.end(); ++it) {
    if (it->first == key) {
      if (value.empty()) c.erase(it);
      else it->second = value;
      return c;
    }
  }
  if (!value.empty()) c.emplace_back(key, value);
  return c;
}

std::string cfg_json(const Cfg &c) {
  std::string s = "{\n";
  for (size_t i = 0; i < c.size(); i++) s += "  \"" + c[i].first + "\": " + c[i].second + (i + 1 < c.size() ? ",\n" : "\n");
  return s + "}\n";
}

ModelConfig cfg_of(const Cfg &c) {
  const std::string j = cfg_json(c);
  return parse_model_config_json(j.data(), j.size(), "config.json");
}

// Tensors for a config from expected_tensors, as F32, minus `drop`, plus `extra`.
std::vector<T> tensors_for(const ModelConfig &c, const std::string &drop = "", const std::vector<T> &extra = {}) {
  std::vector<T> ts;
  for (const ExpectedTensor &e : expected_tensors(c)) {
    if (e.name == drop || e.optional) continue;
    ts.push_back({e.name, "F32", e.shape});
  }
  for (const T &t : extra) ts.push_back(t);
  return ts;
}

// Writes a model folder; returns its path.
std::string write_model(const std::string &rel, const Cfg &c, const std::vector<T> &ts) {
  const std::string d = make_dir(rel);
  write_file(d + "/config.json", cfg_json(c));
  write_file(d + "/model.safetensors", make_st(ts));
  return d;
}

// Loads a folder the way the engine does: config, tensors, validation.
void load_dir(const std::string &d, bool mmap = true) {
  ModelConfig c = parse_model_config(d);
  TensorIndex ix = TensorIndex::open_dir(d, mmap);
  validate_tensors(c, ix);
}

Json pj(const std::string &s) { return parse_json(s.data(), s.size(), "test.json"); }

// ------------------------------------------------------------------------------------------------

void json_tests() {
  {
    const Json j = pj(R"({"b": 1, "a": [true, false, null, "x", 2.5, {"k": {}}], "c": -7, "d": 4096.0,
                          "e": 1e3, "f": 1.5, "g": -0})");
    check("json: object parses with keys in file order",
          j.is_object() && j.size() == 7 && j.members()[0].first == "b" && j.members()[1].first == "a" &&
              j.members()[6].first == "g");
    check("json: find present and absent keys", j.find("c") && j.find("c")->as_int64() == -7 && !j.find("z"));
    const Json &a = *j.find("a");
    check("json: array element types",
          a.is_array() && a.size() == 6 && a[0].as_bool() && !a[1].as_bool() && a[2].is_null() &&
              a[3].as_string() == "x" && a[4].as_double() == 2.5 && a[5].find("k")->is_object());
    check("json: 4096.0 and 1e3 are integral", j.find("d")->is_integer() && j.find("d")->as_int64() == 4096 &&
                                                   j.find("e")->is_integer() && j.find("e")->as_int64() == 1000);
    check("json: 1.5 is not integral", !j.find("f")->is_integer() && j.find("f")->as_double() == 1.5);
    check("json: -0 is integer 0", j.find("g")->is_integer() && j.find("g")->as_int64() == 0);
  }
  {
    const Json j = pj("[9223372036854775807, -9223372036854775808, 9223372036854775808, 12345678901234567890123,"
                      " 1e-400, -1e-400, 5e-324, 0.1, 1E+2]");
    check("json: int64 extremes are exact",
          j[0].is_integer() && j[0].as_int64() == INT64_MAX && j[1].is_integer() && j[1].as_int64() == INT64_MIN);
    check("json: integers beyond int64 are doubles only",
          !j[2].is_integer() && j[2].as_double() == 9223372036854775808.0 && !j[3].is_integer());
    check("json: underflow reads as zero", j[4].as_double() == 0.0 && j[5].as_double() == 0.0 &&
                                               std::signbit(j[5].as_double()));
    check("json: subnormal, fraction, exponent", j[6].as_double() > 0 && j[7].as_double() == 0.1 &&
                                                     j[8].is_integer() && j[8].as_int64() == 100);
  }
  {
    const Json j = pj(R"(["\"\\\/\b\f\n\r\t", "\u00e9\u20AC", "\ud83d\ude00", "\u0000z", "héllo €😀"])");
    check("json: simple escapes", j[0].as_string() == "\"\\/\b\f\n\r\t");
    check("json: \\u escapes to UTF-8", j[1].as_string() == "\xC3\xA9\xE2\x82\xAC");
    check("json: surrogate pair to 4-byte UTF-8", j[2].as_string() == "\xF0\x9F\x98\x80");
    check("json: \\u0000 kept inside the string", j[3].as_string() == std::string("\0z", 2));
    check("json: raw UTF-8 passes through", j[4].as_string() == "h\xC3\xA9llo \xE2\x82\xAC\xF0\x9F\x98\x80");
  }
  expect_error("json: lone high surrogate refused", KF_ERR_FORMAT, "surrogate", [] { pj(R"(["\ud800"])"); });
  expect_error("json: lone low surrogate refused", KF_ERR_FORMAT, "surrogate", [] { pj(R"(["\udc00x"])"); });
  expect_error("json: high surrogate + non-low refused", KF_ERR_FORMAT, "surrogate", [] { pj(R"(["\ud800\u0041"])"); });
  expect_error("json: bad hex in \\u refused", KF_ERR_FORMAT, "hex", [] { pj(R"(["\u12g4"])"); });
  expect_error("json: truncated \\u refused", KF_ERR_FORMAT, "truncated", [] { pj(R"(["\u12)"); });
  expect_error("json: invalid escape refused", KF_ERR_FORMAT, "invalid escape", [] { pj(R"(["\x"])"); });
  expect_error("json: raw control character refused", KF_ERR_FORMAT, "control", [] { pj("[\"a\nb\"]"); });
  expect_error("json: invalid UTF-8 byte refused", KF_ERR_FORMAT, "UTF-8", [] { pj("[\"\xff\"]"); });
  expect_error("json: overlong UTF-8 refused", KF_ERR_FORMAT, "UTF-8", [] { pj("[\"\xC0\xAF\"]"); });
  expect_error("json: UTF-8 encoded surrogate refused", KF_ERR_FORMAT, "UTF-8", [] { pj("[\"\xED\xA0\x80\"]"); });
  expect_error("json: truncated UTF-8 refused", KF_ERR_FORMAT, "UTF-8", [] { pj("[\"\xE2\x82\"]"); });
  expect_error("json: above U+10FFFF refused", KF_ERR_FORMAT, "UTF-8", [] { pj("[\"\xF4\x90\x80\x80\"]"); });

  {
    std::string ok64(64, '['), bad65(65, '[');
    ok64 += std::string(64, ']');
    bad65 += std::string(65, ']');
    expect_ok("json: 64 levels of nesting accepted", [&] { pj(ok64); });
    expect_error("json: 65 levels of nesting refused", KF_ERR_FORMAT, "nesting deeper than 64", [&] { pj(bad65); });
    std::string deep_obj;
    for (int i = 0; i < 100000; i++) deep_obj += "{\"a\":";
    expect_error("json: 100000 nested objects refused without recursion", KF_ERR_FORMAT, "nesting",
                 [&] { pj(deep_obj); });
    expect_error("json: 1000000 '[' refused", KF_ERR_FORMAT, "nesting", [&] { pj(std::string(1000000, '[')); });
  }
  expect_error("json: trailing garbage refused", KF_ERR_FORMAT, "after the value at byte 3", [] { pj("{} x"); });
  expect_error("json: two values refused", KF_ERR_FORMAT, "after the value", [] { pj("1 2"); });
  expect_ok("json: trailing whitespace accepted", [] { pj("{}  \r\n\t"); });
  expect_ok("json: UTF-8 BOM skipped", [] { pj("\xEF\xBB\xBF{\"a\":1}"); });
  expect_error("json: empty input refused", KF_ERR_FORMAT, "end of input at byte 0", [] { pj(""); });
  expect_error("json: trailing comma in array refused (offset)", KF_ERR_FORMAT, "at byte 3", [] { pj("[1,]"); });
  expect_error("json: trailing comma in object refused", KF_ERR_FORMAT, "expected a string key",
               [] { pj("{\"a\":1,}"); });
  expect_error("json: leading zero refused", KF_ERR_FORMAT, "leading zero", [] { pj("[01]"); });
  expect_error("json: '1.' refused", KF_ERR_FORMAT, "digit", [] { pj("[1.]"); });
  expect_error("json: '.5' refused", KF_ERR_FORMAT, "unexpected character", [] { pj("[.5]"); });
  expect_error("json: '-' refused", KF_ERR_FORMAT, "digit", [] { pj("-"); });
  expect_error("json: '1e' refused", KF_ERR_FORMAT, "exponent", [] { pj("1e"); });
  expect_error("json: '+1' refused", KF_ERR_FORMAT, "unexpected character", [] { pj("+1"); });
  expect_error("json: NaN refused", KF_ERR_FORMAT, "unexpected character", [] { pj("[NaN]"); });
  expect_error("json: Infinity refused", KF_ERR_FORMAT, "unexpected character", [] { pj("[Infinity]"); });
  expect_error("json: 1e400 refused", KF_ERR_FORMAT, "out of range", [] { pj("[1e400]"); });
  expect_error("json: single quotes refused", KF_ERR_FORMAT, "unexpected character", [] { pj("['a']"); });
  expect_error("json: bad literal refused", KF_ERR_FORMAT, "literal", [] { pj("[tru]"); });
  expect_error("json: comment refused", KF_ERR_FORMAT, "at byte 3", [] { pj("[1 /* c */]"); });
  expect_error("json: unterminated string refused", KF_ERR_FORMAT, "unterminated", [] { pj("[\"abc"); });
  expect_error("json: missing colon refused", KF_ERR_FORMAT, "':'", [] { pj("{\"a\" 1}"); });
  expect_error("json: non-string key refused", KF_ERR_FORMAT, "string key", [] { pj("{1:2}"); });
  expect_error("json: duplicate key refused", KF_ERR_FORMAT, "duplicate key \"a\"", [] { pj("{\"a\":1,\"b\":2,\"a\":3}"); });
  expect_error("json: message names the input", KF_ERR_FORMAT, "cannot load model: test.json is not valid JSON",
               [] { pj("{"); });
  expect_error("json: action prefix is configurable", KF_ERR_FORMAT, "cannot load adapter: x.json",
               [] { parse_json("?", 1, "x.json", "load adapter"); });
  {
    std::string big = "{";
    for (int i = 0; i < 5000; i++) big += (i ? ",\"k" : "\"k") + std::to_string(i) + "\":" + std::to_string(i);
    big += "}";
    const Json j = pj(big);
    bool all = true;
    for (int i = 0; i < 5000; i += 7) all &= j.find("k" + std::to_string(i)) && j.find("k" + std::to_string(i))->as_int64() == i;
    check("json: lookups in a 5000-key object", all && !j.find("k5000") && j.members()[4999].first == "k4999");
  }
  expect_error("json: wrong-type accessor is an internal error", KF_ERR_INTERNAL, "not a string",
               [] { pj("1").as_string(); });
  {
    // Fuzz: random byte strings and mutations of a valid document must parse or throw kf::Error.
    std::mt19937 rng(1234);
    const std::string seed = R"({"a":[1,2.5e3,-0.1,"x\u00e9\ud83d\ude00",true,null,{"b":{}}],"c":"d"})";
    int weird = 0;
    for (int it = 0; it < 20000; it++) {
      std::string s = seed;
      const int edits = 1 + int(rng() % 4);
      for (int e = 0; e < edits; e++) {
        const size_t at = rng() % (s.size() + 1);
        switch (rng() % 3) {
        case 0: if (at < s.size()) s[at] = char(rng() & 0xff); break;
        case 1: s.insert(at, 1, "{}[]\",:\\0-e.u"[rng() % 14]); break;
        case 2: if (at < s.size()) s.erase(at, 1); break;
        }
      }
      try {
        pj(s);
      } catch (const Error &) {
      } catch (...) {
        weird++;
      }
    }
    check("json: 20000 mutated documents parse or fail cleanly", weird == 0);
  }
}

// ------------------------------------------------------------------------------------------------

void safetensors_tests() {
  const std::vector<T> ts = {{"a", "F32", {2, 3}}, {"b", "F16", {5}}, {"c", "BF16", {}}, {"d", "I64", {2}},
                             {"e", "F32", {0, 4}}};
  write_file(path("good.safetensors"), make_st(ts, R"({"format":"pt","kvfold.lococo.slots":"64"})"));
  for (int mm = 1; mm >= 0; mm--) {
    const std::string tag = mm ? " (mmap)" : " (read)";
    try {
      SafetensorsFile f(path("good.safetensors"), mm != 0);
      const TensorInfo *a = f.find("a");
      float a5 = -1;
      if (a) std::memcpy(&a5, a->data + 5 * 4, 4);
      check("safetensors: F32 tensor parsed" + tag,
            a && a->dtype_supported && a->dtype == DType::F32 && a->shape == std::vector<int64_t>{2, 3} &&
                a->nbytes == 24 && a->numel() == 6 && a5 == 5.0f && a->file == path("good.safetensors"));
      const TensorInfo *b = f.find("b"), *c = f.find("c"), *d = f.find("d"), *e = f.find("e");
      check("safetensors: F16, BF16 scalar, I64 recorded, empty tensor" + tag,
            b && b->dtype == DType::F16 && b->nbytes == 10 && c && c->dtype == DType::BF16 && c->shape.empty() &&
                c->nbytes == 2 && c->numel() == 1 && d && !d->dtype_supported && d->dtype_str == "I64" &&
                d->nbytes == 16 && e && e->nbytes == 0 && e->numel() == 0);
      check("safetensors: header order and metadata" + tag,
            f.tensors().size() == 5 && f.tensors()[0].name == "a" && f.tensors()[4].name == "e" &&
                f.metadata().size() == 2 && f.metadata()[0].first == "format" && f.metadata_value("kvfold.lococo.slots") &&
                *f.metadata_value("kvfold.lococo.slots") == "64" && !f.metadata_value("nope") && !f.find("__metadata__"));
      check("safetensors: mapped() reports the mode" + tag, f.mapped() == (mm != 0));
      if (!mm) check("safetensors: read mode puts the data section on 64 bytes", a && a->aligned(64));
      else check("safetensors: padded header gives 8-byte aligned data", a && a->aligned(8));
      SafetensorsFile moved(std::move(f));
      const TensorInfo *a2 = moved.find("a");
      float v = -1;
      if (a2) std::memcpy(&v, a2->data + 4, 4);
      check("safetensors: move keeps data valid" + tag, a2 && v == 1.0f && f.tensors().empty());
    } catch (const std::exception &e) {
      report(false, "safetensors: good file" + tag, e.what());
    }
  }
  {
    // Unpadded header: data section at an odd offset; pointers are unaligned and say so.
    const std::string hdr = R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
    std::string f = raw_file(hdr, std::string("\0\0\x80\x3f", 4), false);
    if ((8 + hdr.size()) % 4 == 0) f = raw_file(hdr + " ", std::string("\0\0\x80\x3f", 4), false);
    write_file(path("unaligned.safetensors"), f);
    expect_ok("safetensors: unaligned data section accepted, aligned() false", [] {
      SafetensorsFile s(path("unaligned.safetensors"));
      float v;
      std::memcpy(&v, s.find("x")->data, 4);
      if (s.find("x")->aligned(4) || v != 1.0f) raise(KF_ERR_INTERNAL, "aligned or wrong value");
    });
  }

  auto bad = [](const std::string &name, const std::string &bytes, kf_status code, const std::string &needle) {
    write_file(path("bad.safetensors"), bytes);
    for (int mm = 1; mm >= 0; mm--)
      expect_error("safetensors: " + name + (mm ? " (mmap)" : " (read)"), code, needle,
                   [mm] { SafetensorsFile f(path("bad.safetensors"), mm != 0); });
  };
  const std::string good = make_st(ts);
  bad("empty file", "", KF_ERR_FORMAT, "too short");
  bad("truncated to 5 bytes", good.substr(0, 5), KF_ERR_FORMAT, "too short");
  bad("truncated inside header", good.substr(0, 40), KF_ERR_FORMAT, "header length");
  bad("truncated inside data", good.substr(0, good.size() - 3), KF_ERR_FORMAT, "outside the data section");
  bad("header length beyond file", le64(1000) + "{}", KF_ERR_FORMAT, "exceeds");
  bad("header length 2^64-1", le64(UINT64_MAX) + "{}", KF_ERR_FORMAT, "exceeds");
  bad("bad header JSON", raw_file("{\"a\":", ""), KF_ERR_FORMAT, "is not valid JSON");
  bad("header is an array", raw_file("[]", ""), KF_ERR_FORMAT, "not a JSON object");
  bad("zero-length header", le64(0), KF_ERR_FORMAT, "not valid JSON");
  bad("entry not an object", raw_file(R"({"t":1})", ""), KF_ERR_FORMAT, "tensor t: entry is a number");
  bad("missing dtype", raw_file(R"({"t":{"shape":[1],"data_offsets":[0,4]}})", "abcd"), KF_ERR_FORMAT,
      "tensor t has no dtype");
  bad("missing shape", raw_file(R"({"t":{"dtype":"F32","data_offsets":[0,4]}})", "abcd"), KF_ERR_FORMAT,
      "tensor t has no shape");
  bad("negative dim", raw_file(R"({"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", "abcd"), KF_ERR_FORMAT,
      "tensor t: shape must hold non-negative integers");
  bad("fractional dim", raw_file(R"({"t":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", "abcd"),
      KF_ERR_FORMAT, "non-negative integers");
  bad("shape overflow", raw_file(R"({"t":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,4]}})", "abcd"),
      KF_ERR_FORMAT, "too many elements");
  bad("offsets not two", raw_file(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", "abcd"), KF_ERR_FORMAT,
      "tensor t: data_offsets must be an array of two integers");
  bad("offsets past the data", raw_file(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", "abcd"),
      KF_ERR_FORMAT, "tensor t: data_offsets [4, 8] are outside the data section of 4 bytes");
  bad("offsets reversed", raw_file(R"({"t":{"dtype":"U8","shape":[0],"data_offsets":[3,1]}})", "abcd"), KF_ERR_FORMAT,
      "outside the data section");
  bad("negative offset", raw_file(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}})", "abcd"), KF_ERR_FORMAT,
      "outside the data section");
  bad("huge offset", raw_file(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[9223372036854775806,9223372036854775807]}})", "abcd"),
      KF_ERR_FORMAT, "outside the data section");
  bad("size mismatch", raw_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", "abcd"), KF_ERR_FORMAT,
      "tensor t: data_offsets span 4 bytes, but F32 [2] needs 8 bytes");
  bad("I64 size mismatch", raw_file(R"({"t":{"dtype":"I64","shape":[1],"data_offsets":[0,4]}})", "abcd"),
      KF_ERR_FORMAT, "needs 8 bytes");
  bad("overlapping tensors",
      raw_file(R"({"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"b":{"dtype":"F16","shape":[2],"data_offsets":[2,6]}})",
               "abcdefgh"),
      KF_ERR_FORMAT, "tensors a and b overlap");
  bad("metadata not strings", raw_file(R"({"__metadata__":{"n":1}})", ""), KF_ERR_FORMAT,
      "__metadata__ value of \"n\" is a number");
  bad("metadata not object", raw_file(R"({"__metadata__":[]})", ""), KF_ERR_FORMAT, "__metadata__ is an array");
  bad("duplicate tensor name", raw_file(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"t":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})", "ab"),
      KF_ERR_FORMAT, "duplicate key");
  expect_ok("safetensors: touching tensors and an empty one between them are fine", [] {
    write_file(path("touch.safetensors"),
               raw_file(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]},)"
                        R"("z":{"dtype":"U8","shape":[0],"data_offsets":[2,2]},"c":{"dtype":"U8","shape":[1],"data_offsets":[4,5]}})",
                        "abcde"));
    SafetensorsFile f(path("touch.safetensors"));
  });
  bad("a hole between tensors",
      raw_file(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"c":{"dtype":"U8","shape":[1],"data_offsets":[6,7]}})",
               "abcdefg"),
      KF_ERR_FORMAT, "tensor c starts at data offset 6, but the previous tensor ends at 2");
  bad("data not starting at offset 0", raw_file(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}})", "abc"),
      KF_ERR_FORMAT, "tensor a starts at data offset 1");
  bad("trailing bytes after the data", good + "xyz", KF_ERR_FORMAT, "but the data section holds");
  {
    // A header length one byte short of a space-padded header: still valid JSON, but every tensor
    // would be read one byte early. One byte long: the header swallows a data byte.
    std::string shorter = good, longer = good;
    const uint64_t n = uint64_t(uint8_t(good[0])) | uint64_t(uint8_t(good[1])) << 8;
    shorter.replace(0, 8, le64(n - 1));
    longer.replace(0, 8, le64(n + 1));
    check("safetensors: the test header is space-padded", good[8 + n - 1] == ' ');
    bad("header length one byte short", shorter, KF_ERR_FORMAT, "the data section holds");
    bad("header length one byte long", longer, KF_ERR_FORMAT, "bad.safetensors");
  }
  expect_ok("safetensors: unknown dtype recorded, not validated", [] {
    write_file(path("unk.safetensors"), raw_file(R"({"q":{"dtype":"Q4_K","shape":[32],"data_offsets":[0,3]}})", "abc"));
    SafetensorsFile f(path("unk.safetensors"));
    if (f.find("q")->dtype_supported || f.find("q")->dtype_str != "Q4_K") raise(KF_ERR_INTERNAL, "not recorded");
  });
  {
    // A header length above 100 MB in a (sparse) file that is large enough.
    const std::string p = path("huge.safetensors");
    write_file(p, le64(100000001) + "{}");
    if (::truncate(p.c_str(), 100000100) == 0)
      expect_error("safetensors: header length above 100 MB refused", KF_ERR_FORMAT, "above the 100000000",
                   [p] { SafetensorsFile f(p); });
    ::unlink(p.c_str());
  }
  expect_error("safetensors: missing file is an IO error", KF_ERR_IO, "nope.safetensors does not exist",
               [] { SafetensorsFile f(path("nope.safetensors")); });
  expect_error("safetensors: a directory is refused as one", KF_ERR_IO, "dir.safetensors is a directory, not a file", [] {
    make_dir("dir.safetensors");
    SafetensorsFile f(path("dir.safetensors"));
  });
  expect_error("safetensors: a FIFO is refused without blocking", KF_ERR_IO, "is not a regular file", [] {
    ::mkfifo(path("fifo.safetensors").c_str(), 0600);
    SafetensorsFile f(path("fifo.safetensors"));
  });
  if (::geteuid() != 0) {
    expect_error("safetensors: unreadable file names the path and reason", KF_ERR_IO, "Permission denied", [] {
      write_file(path("noperm.safetensors"), make_st({{"a", "F32", {1}}}));
      ::chmod(path("noperm.safetensors").c_str(), 0);
      SafetensorsFile f(path("noperm.safetensors"));
    });
  }
  {
    // Non-finite scan: each dtype, at the start, inside a block and in the tail, unaligned too.
    auto probe = [](DType dt, int64_t n, int64_t at, uint32_t bits) {
      const size_t es = dtype_size(dt);
      std::vector<uint8_t> buf(size_t(n) * es + 1, 0);
      uint8_t *p = buf.data() + 1;  // unaligned on purpose
      for (int64_t i = 0; i < n; i++) {
        const uint32_t one = dt == DType::F32 ? 0x3f800000u : dt == DType::F16 ? 0x3c00u : 0x3f80u;
        std::memcpy(p + size_t(i) * es, &one, es);
      }
      if (at >= 0) std::memcpy(p + size_t(at) * es, &bits, es);
      return first_non_finite(p, dt, n);
    };
    bool ok = probe(DType::F32, 10000, -1, 0) == -1 && probe(DType::F16, 10000, -1, 0) == -1 &&
              probe(DType::BF16, 10000, -1, 0) == -1;
    ok &= probe(DType::F32, 10000, 0, 0x7fc00000u) == 0;        // NaN first
    ok &= probe(DType::F32, 10000, 5000, 0xff800000u) == 5000;  // -Inf in the second block
    ok &= probe(DType::F32, 10000, 9999, 0x7f800001u) == 9999;  // signalling NaN last
    ok &= probe(DType::F32, 10000, 7, 0x7f7fffffu) == -1;       // FLT_MAX is finite
    ok &= probe(DType::F16, 5, 3, 0x7c00u) == 3 && probe(DType::F16, 5, 3, 0x7bffu) == -1;
    ok &= probe(DType::BF16, 4097, 4096, 0xffc0u) == 4096 && probe(DType::BF16, 5, 3, 0x7f7fu) == -1;
    ok &= probe(DType::F32, 0, -1, 0) == -1;
    check("safetensors: first_non_finite finds NaN and Inf in every dtype, and nothing else", ok);
  }
  expect_error("safetensors: message uses the action", KF_ERR_FORMAT, "cannot load adapter: ", [] {
    write_file(path("short.safetensors"), "abc");
    SafetensorsFile f(path("short.safetensors"), true, "load adapter");
  });
  {
    // Fuzz: mutate header and length bytes, truncate at random lengths; must open or throw kf::Error.
    std::mt19937 rng(99);
    int weird = 0, opened = 0;
    for (int it = 0; it < 3000; it++) {
      std::string s = good;
      const size_t hdr_end = 8 + size_t(uint8_t(s[0])) + (size_t(uint8_t(s[1])) << 8);
      const int edits = 1 + int(rng() % 3);
      for (int e = 0; e < edits; e++) {
        const size_t at = rng() % std::min(s.size(), hdr_end + 4);
        switch (rng() % 4) {
        case 0: s[at] = char(rng() & 0xff); break;
        case 1: s[at] = "0123456789[]{},:\"-"[rng() % 18]; break;
        case 2: if (at >= 8) s.erase(at, 1); break;
        case 3: s.resize(rng() % (s.size() + 1)); break;
        }
        if (s.empty()) break;
      }
      write_file(path("fuzz.safetensors"), s);
      try {
        SafetensorsFile f(path("fuzz.safetensors"), (it & 1) != 0);
        // Touch every byte the reader vouched for.
        unsigned sum = 0;
        for (const TensorInfo &t : f.tensors())
          for (size_t k = 0; k < t.nbytes; k++) sum += t.data[k];
        (void)sum;
        opened++;
      } catch (const Error &) {
      } catch (...) {
        weird++;
      }
    }
    check("safetensors: 3000 mutated files open or fail cleanly (" + std::to_string(opened) + " opened)", weird == 0);
  }
}

// ------------------------------------------------------------------------------------------------

void config_tests() {
  {
    const ModelConfig c = cfg_of(llama_cfg());
    check("config: llama sizes", c.model_type == "llama" && c.vocab_size == 32 && c.hidden_size == 16 &&
                                     c.intermediate_size == 24 && c.n_layers == 2 && c.n_heads == 4 &&
                                     c.n_kv_heads == 2 && c.head_dim == 4 && c.max_position_embeddings == 128);
    check("config: llama floats and flags",
          std::fabs(c.rms_norm_eps - 1e-5) < 1e-12 && c.rope_theta == 10000.0 && c.rope_scaling == RopeScaling::None &&
              !c.tie_word_embeddings && !c.qkv_bias && !c.o_bias && !c.mlp_bias && c.hidden_act == "silu");
    check("config: token ids and dtype", c.bos_token_id == 1 && c.eos_token_ids == std::vector<int32_t>{2} &&
                                             c.torch_dtype == "float32");
  }
  {
    Cfg m = llama_cfg();
    for (const char *k : {"num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
                          "tie_word_embeddings", "hidden_act", "bos_token_id", "eos_token_id", "torch_dtype"})
      m = with(m, k, "");
    const ModelConfig c = cfg_of(m);
    check("config: defaults", c.n_kv_heads == 4 && c.max_position_embeddings == 2048 && c.rms_norm_eps == 1e-6 &&
                                  c.rope_theta == 10000.0 && !c.tie_word_embeddings && c.bos_token_id == -1 &&
                                  c.eos_token_ids.empty() && c.torch_dtype.empty());
  }
  {
    const ModelConfig c = cfg_of(with(with(llama_cfg(), "eos_token_id", "[128001, 128008, 128009]"), "bos_token_id", "null"));
    check("config: eos list, null bos", c.eos_token_ids == std::vector<int32_t>{128001, 128008, 128009} &&
                                            c.bos_token_id == -1);
  }
  {
    const ModelConfig c = cfg_of(with(llama_cfg(), "head_dim", "6"));
    check("config: explicit head_dim wins", c.head_dim == 6 && c.n_heads == 4);
    bool ok = false;
    for (const ExpectedTensor &e : expected_tensors(c))
      if (e.name == "model.layers.0.self_attn.o_proj.weight") ok = e.shape == std::vector<int64_t>{16, 24};
    check("config: o_proj shape uses n_heads*head_dim", ok);
  }
  {
    const ModelConfig c = cfg_of(with(llama_cfg(), "num_key_value_heads", "null"));
    check("config: null num_key_value_heads defaults to n_heads", c.n_kv_heads == 4);
  }
  {
    const ModelConfig c = cfg_of(with(llama_cfg(), "rope_scaling", R"({"type": "linear", "factor": 4.0})"));
    check("config: legacy type linear", c.rope_scaling == RopeScaling::Linear && c.rope_factor == 4.0);
    const ModelConfig d = cfg_of(with(llama_cfg(), "rope_scaling",
                                      R"({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})"));
    check("config: llama3 rope scaling", d.rope_scaling == RopeScaling::Llama3 && d.rope_factor == 8.0 &&
                                             d.rope_low_freq_factor == 1.0 && d.rope_high_freq_factor == 4.0 &&
                                             d.rope_original_max_position_embeddings == 8192);
    const ModelConfig e = cfg_of(with(llama_cfg(), "rope_scaling", R"({"rope_type": "default"})"));
    check("config: rope_type default is none", e.rope_scaling == RopeScaling::None);
    const ModelConfig f = cfg_of(with(with(llama_cfg(), "rope_theta", ""), "rope_parameters",
                                      R"({"rope_type": "linear", "factor": 2, "rope_theta": 500000.0})"));
    check("config: transformers 5 rope_parameters", f.rope_scaling == RopeScaling::Linear && f.rope_factor == 2.0 &&
                                                        f.rope_theta == 500000.0);
  }
  expect_error("config: dynamic rope scaling unsupported", KF_ERR_UNSUPPORTED,
               "cannot load model: rope_scaling type \"dynamic\" is not supported (linear, llama3)",
               [] { cfg_of(with(llama_cfg(), "rope_scaling", R"({"type": "dynamic", "factor": 2.0})")); });
  expect_error("config: yarn rope scaling unsupported", KF_ERR_UNSUPPORTED, "rope_scaling type \"yarn\"",
               [] { cfg_of(with(llama_cfg(), "rope_scaling", R"({"rope_type": "yarn", "factor": 4.0})")); });
  expect_error("config: linear without factor", KF_ERR_FORMAT, "has no factor",
               [] { cfg_of(with(llama_cfg(), "rope_scaling", R"({"rope_type": "linear"})")); });
  expect_error("config: llama3 high <= low", KF_ERR_FORMAT, "must exceed low_freq_factor", [] {
    cfg_of(with(llama_cfg(), "rope_scaling",
                R"({"rope_type": "llama3", "factor": 8, "low_freq_factor": 4, "high_freq_factor": 4,
                    "original_max_position_embeddings": 8192})"));
  });
  expect_error("config: rope_scaling without type", KF_ERR_FORMAT, "has no rope_type",
               [] { cfg_of(with(llama_cfg(), "rope_scaling", R"({"factor": 2})")); });
  expect_error("config: unknown model_type", KF_ERR_UNSUPPORTED,
               "cannot load model: model_type \"gpt2\" is not supported (llama, mistral, qwen2)",
               [] { cfg_of(with(llama_cfg(), "model_type", "\"gpt2\"")); });
  expect_error("config: missing model_type", KF_ERR_FORMAT, "model_type is missing",
               [] { cfg_of(with(llama_cfg(), "model_type", "")); });
  expect_error("config: missing hidden_size", KF_ERR_FORMAT, "config.json: hidden_size is missing",
               [] { cfg_of(with(llama_cfg(), "hidden_size", "")); });
  expect_error("config: zero hidden_size", KF_ERR_FORMAT, "hidden_size must be an integer in [1, 131072], got 0",
               [] { cfg_of(with(llama_cfg(), "hidden_size", "0")); });
  expect_error("config: string vocab_size", KF_ERR_FORMAT, "vocab_size must be an integer",
               [] { cfg_of(with(llama_cfg(), "vocab_size", "\"32\"")); });
  expect_error("config: huge vocab_size", KF_ERR_FORMAT, "vocab_size must be an integer in [1, 4194304]",
               [] { cfg_of(with(llama_cfg(), "vocab_size", "99999999999")); });
  expect_error("config: fractional layers", KF_ERR_FORMAT, "num_hidden_layers must be an integer",
               [] { cfg_of(with(llama_cfg(), "num_hidden_layers", "2.5")); });
  expect_error("config: heads not a multiple of kv heads", KF_ERR_FORMAT,
               "num_attention_heads 4 is not a multiple of num_key_value_heads 3",
               [] { cfg_of(with(llama_cfg(), "num_key_value_heads", "3")); });
  expect_error("config: more kv heads than heads", KF_ERR_FORMAT, "not a multiple",
               [] { cfg_of(with(llama_cfg(), "num_key_value_heads", "8")); });
  expect_error("config: hidden not divisible by heads", KF_ERR_FORMAT, "hidden_size 18 is not a multiple",
               [] { cfg_of(with(with(llama_cfg(), "hidden_size", "18"), "num_key_value_heads", "")); });
  expect_error("config: odd head_dim", KF_ERR_FORMAT, "head_dim 5 is odd", [] { cfg_of(with(llama_cfg(), "head_dim", "5")); });
  expect_error("config: negative eps", KF_ERR_FORMAT, "rms_norm_eps must be a positive number",
               [] { cfg_of(with(llama_cfg(), "rms_norm_eps", "-1e-5")); });
  expect_error("config: zero rope_theta", KF_ERR_FORMAT, "rope_theta must be a positive number",
               [] { cfg_of(with(llama_cfg(), "rope_theta", "0")); });
  expect_error("config: gelu unsupported", KF_ERR_UNSUPPORTED, "hidden_act \"gelu\" is not supported",
               [] { cfg_of(with(llama_cfg(), "hidden_act", "\"gelu\"")); });
  expect_error("config: mlp_bias unsupported", KF_ERR_UNSUPPORTED, "mlp_bias true is not supported",
               [] { cfg_of(with(llama_cfg(), "mlp_bias", "true")); });
  expect_error("config: tie_word_embeddings not bool", KF_ERR_FORMAT, "tie_word_embeddings must be true or false",
               [] { cfg_of(with(llama_cfg(), "tie_word_embeddings", "1")); });
  expect_error("config: bad eos", KF_ERR_FORMAT, "eos_token_id must be a token id",
               [] { cfg_of(with(llama_cfg(), "eos_token_id", "[2, \"x\"]")); });
  expect_error("config: qwen2 sliding window unsupported", KF_ERR_UNSUPPORTED, "use_sliding_window", [] {
    cfg_of(with(with(llama_cfg(), "model_type", "\"qwen2\""), "use_sliding_window", "true"));
  });
  expect_error("config: not an object", KF_ERR_FORMAT, "is an array, not a JSON object",
               [] { parse_model_config_json("[]", 2, "config.json"); });
  {
    const ModelConfig q = cfg_of(with(with(with(llama_cfg(), "model_type", "\"qwen2\""), "use_sliding_window", "false"),
                                      "sliding_window", "4096"));
    check("config: qwen2 has q/k/v bias, no o bias, no window", q.qkv_bias && !q.o_bias && q.sliding_window == 0);
    const ModelConfig l = cfg_of(with(llama_cfg(), "attention_bias", "true"));
    check("config: llama attention_bias puts bias on q/k/v/o", l.qkv_bias && l.o_bias);
    const ModelConfig m = cfg_of(with(with(with(llama_cfg(), "model_type", "\"mistral\""), "sliding_window", "4096"),
                                      "attention_bias", "true"));
    check("config: mistral has no biases and records its window", !m.qkv_bias && !m.o_bias && m.sliding_window == 4096);
  }
  expect_error("config: missing config.json", KF_ERR_IO, "/empty/config.json does not exist",
               [] { parse_model_config(make_dir("empty")); });
  expect_error("config: malformed config.json names the file", KF_ERR_FORMAT, "/badjson/config.json is not valid JSON", [] {
    const std::string d = make_dir("badjson");
    write_file(d + "/config.json", "{\"model_type\": \"llama\",}");
    parse_model_config(d);
  });
}

// ------------------------------------------------------------------------------------------------

void folder_tests() {
  const ModelConfig c = cfg_of(llama_cfg());
  {
    // Hand-written names and shapes for layer 0, independent of expected_tensors.
    const std::vector<std::pair<std::string, std::vector<int64_t>>> want = {
        {"model.embed_tokens.weight", {32, 16}},
        {"model.layers.0.input_layernorm.weight", {16}},
        {"model.layers.0.self_attn.q_proj.weight", {16, 16}},
        {"model.layers.0.self_attn.k_proj.weight", {8, 16}},
        {"model.layers.0.self_attn.v_proj.weight", {8, 16}},
        {"model.layers.0.self_attn.o_proj.weight", {16, 16}},
        {"model.layers.0.post_attention_layernorm.weight", {16}},
        {"model.layers.0.mlp.gate_proj.weight", {24, 16}},
        {"model.layers.0.mlp.up_proj.weight", {24, 16}},
        {"model.layers.0.mlp.down_proj.weight", {16, 24}},
        {"model.layers.1.mlp.down_proj.weight", {16, 24}},
        {"model.norm.weight", {16}},
        {"lm_head.weight", {32, 16}}};
    const std::vector<ExpectedTensor> ex = expected_tensors(c);
    bool all = ex.size() == 1 + 2 * 9 + 2;
    for (const auto &w : want) {
      bool found = false;
      for (const ExpectedTensor &e : ex) found |= e.name == w.first && e.shape == w.second && !e.optional;
      all &= found;
      if (!found) std::printf("     missing expectation %s\n", w.first.c_str());
    }
    check("expected_tensors: llama names and shapes", all);
  }
  const std::string good = write_model("llama", llama_cfg(), tensors_for(c, "", {{"model.layers.0.self_attn.rotary_emb.inv_freq", "F32", {2}}}));
  expect_ok("folder: valid llama loads (mmap), extra rotary_emb ignored", [&] { load_dir(good, true); });
  expect_ok("folder: valid llama loads (read)", [&] { load_dir(good, false); });
  {
    TensorIndex ix = TensorIndex::open_dir(good + "/");
    int64_t sum = 0;
    for (const TensorInfo &t : ix) sum += int64_t(t.nbytes);
    const TensorInfo *n = ix.find("model.norm.weight");
    TensorIndex moved = std::move(ix);
    const TensorInfo *n2 = moved.find("model.norm.weight");
    float v = -1;
    if (n2) std::memcpy(&v, n2->data + 4, 4);
    check("folder: index lookup, iteration, total_bytes, move",
          n && n2 && n == n2 && moved.size() == 22 && moved.total_bytes() == sum && sum > 0 && v == 19001.0f);
  }
  expect_error("folder: missing tensor", KF_ERR_FORMAT, "cannot load model: tensor model.layers.1.mlp.up_proj.weight is missing",
               [&] { load_dir(write_model("missing", llama_cfg(), tensors_for(c, "model.layers.1.mlp.up_proj.weight"))); });
  {
    std::vector<T> ts = tensors_for(c, "model.norm.weight");
    ts.push_back({"model.norm.weight", "F32", {15}});
    expect_error("folder: wrong shape", KF_ERR_FORMAT, "cannot load model: tensor model.norm.weight has shape [15], config.json says [16]",
                 [&] { load_dir(write_model("shape", llama_cfg(), ts)); });
  }
  {
    std::vector<T> ts = tensors_for(c, "model.layers.0.self_attn.k_proj.weight");
    ts.push_back({"model.layers.0.self_attn.k_proj.weight", "F32", {16, 8}});
    expect_error("folder: transposed matrix", KF_ERR_FORMAT, "k_proj.weight has shape [16, 8], config.json says [8, 16]",
                 [&] { load_dir(write_model("transposed", llama_cfg(), ts)); });
  }
  {
    std::vector<T> ts = tensors_for(c, "model.norm.weight");
    ts.push_back({"model.norm.weight", "I64", {16}});
    expect_error("folder: unsupported dtype", KF_ERR_UNSUPPORTED,
                 "cannot load model: tensor model.norm.weight has dtype I64; expected F32, F16 or BF16",
                 [&] { load_dir(write_model("dtype", llama_cfg(), ts)); });
  }
  {
    std::vector<T> ts = tensors_for(c);
    for (T &t : ts) t.dtype = (t.shape.size() == 2) ? "BF16" : "F16";
    expect_ok("folder: 16-bit tensors accepted", [&] { load_dir(write_model("half", llama_cfg(), ts)); });
  }
  expect_error("folder: untied model without lm_head", KF_ERR_FORMAT, "tensor lm_head.weight is missing",
               [&] { load_dir(write_model("nohead", llama_cfg(), tensors_for(c, "lm_head.weight"))); });
  {
    const Cfg tied = with(llama_cfg(), "tie_word_embeddings", "true");
    const ModelConfig ct = cfg_of(tied);
    expect_ok("folder: tied model without lm_head", [&] { load_dir(write_model("tied", tied, tensors_for(ct))); });
    expect_ok("folder: tied model with lm_head present anyway",
              [&] { load_dir(write_model("tied2", tied, tensors_for(ct, "", {{"lm_head.weight", "F32", {32, 16}}}))); });
    expect_error("folder: tied model with a wrong lm_head", KF_ERR_FORMAT, "lm_head.weight has shape [31, 16]",
                 [&] { load_dir(write_model("tied3", tied, tensors_for(ct, "", {{"lm_head.weight", "F32", {31, 16}}}))); });
  }
  {
    const Cfg qc = with(llama_cfg(), "model_type", "\"qwen2\"");
    const ModelConfig q = cfg_of(qc);
    bool has_q = false, has_o = false;
    for (const ExpectedTensor &e : expected_tensors(q)) {
      has_q |= e.name == "model.layers.1.self_attn.k_proj.bias" && e.shape == std::vector<int64_t>{8};
      has_o |= e.name.find("o_proj.bias") != std::string::npos;
    }
    check("expected_tensors: qwen2 q/k/v biases, no o bias", has_q && !has_o);
    expect_ok("folder: qwen2 loads", [&] { load_dir(write_model("qwen", qc, tensors_for(q))); });
    expect_error("folder: qwen2 missing bias", KF_ERR_FORMAT, "tensor model.layers.0.self_attn.v_proj.bias is missing",
                 [&] { load_dir(write_model("qwen2", qc, tensors_for(q, "model.layers.0.self_attn.v_proj.bias"))); });
    const ModelConfig lb = cfg_of(with(llama_cfg(), "attention_bias", "true"));
    bool o = false;
    for (const ExpectedTensor &e : expected_tensors(lb)) o |= e.name == "model.layers.0.self_attn.o_proj.bias" && e.shape == std::vector<int64_t>{16};
    check("expected_tensors: llama attention_bias adds o_proj.bias", o);
  }
  expect_error("folder: weights of more layers than num_hidden_layers", KF_ERR_FORMAT,
               "config.json does not use: model.layers.1.input_layernorm.weight, model.layers.1.self_attn.q_proj.weight, "
               "model.layers.1.self_attn.k_proj.weight, model.layers.1.self_attn.v_proj.weight, ... (9 in all); the files "
               "hold layer 1 but num_hidden_layers is 1",
               [&] { load_dir(write_model("morelayers", with(llama_cfg(), "num_hidden_layers", "1"), tensors_for(c))); });
  expect_error("folder: biases config.json turns off", KF_ERR_FORMAT,
               "config.json does not use: model.layers.0.self_attn.q_proj.bias", [&] {
                 load_dir(write_model("bias", llama_cfg(), tensors_for(c, "", {{"model.layers.0.self_attn.q_proj.bias", "F32", {16}}})));
               });
  expect_error("folder: an unknown tensor", KF_ERR_FORMAT, "does not use: model.extra.weight", [&] {
    load_dir(write_model("unknown", llama_cfg(), tensors_for(c, "", {{"model.extra.weight", "F32", {3}}})));
  });
  expect_ok("folder: inv_freq of every layer and embed_summary are harmless extras", [&] {
    load_dir(write_model("extras", llama_cfg(),
                         tensors_for(c, "", {{"model.layers.1.self_attn.rotary_emb.inv_freq", "F32", {2}},
                                             {"model.rotary_emb.inv_freq", "F32", {2}},
                                             {"embed_summary.weight", "F32", {4, 16}}})));
  });
  expect_error("folder: config.json that is a directory", KF_ERR_IO, "config.json is a directory, not a file", [&] {
    const std::string d = make_dir("cfgdir");
    make_dir("cfgdir/config.json");
    load_dir(d);
  });
  expect_error("folder: config.json that is a FIFO", KF_ERR_IO, "config.json is not a regular file", [&] {
    const std::string d = make_dir("cfgfifo");
    ::mkfifo((d + "/config.json").c_str(), 0600);
    load_dir(d);
  });
  expect_error("folder: config.json linked to /dev/zero", KF_ERR_IO, "config.json is not a regular file", [&] {
    const std::string d = make_dir("cfgzero");
    if (::symlink("/dev/zero", (d + "/config.json").c_str()) != 0) raise(KF_ERR_IO, "config.json is not a regular file (no symlink)");
    load_dir(d);
  });
  expect_error("folder: config.json over 16 MiB is refused before it is read", KF_ERR_FORMAT, "more than the 16777216", [&] {
    const std::string d = make_dir("cfgbig");
    write_file(d + "/config.json", "{}");
    if (::truncate((d + "/config.json").c_str(), (int64_t(16) << 20) + 1) != 0) raise(KF_ERR_FORMAT, "more than the 16777216 (truncate)");
    load_dir(d);
  });
  expect_error("folder: neither weights file", KF_ERR_IO, "has neither model.safetensors nor model.safetensors.index.json", [] {
    const std::string d = make_dir("noweights");
    write_file(d + "/config.json", cfg_json(llama_cfg()));
    load_dir(d);
  });
  expect_error("folder: missing folder", KF_ERR_IO, "does not exist", [] { TensorIndex::open_dir(path("absent")); });
  expect_error("folder: a file is not a folder", KF_ERR_IO, "is not a directory",
               [] { TensorIndex::open_dir(path("good.safetensors")); });

  // Sharded folders.
  {
    const std::vector<T> all = tensors_for(c);
    std::vector<T> s1(all.begin(), all.begin() + 10), s2(all.begin() + 10, all.end());
    auto sharded = [&](const std::string &rel, const std::string &index_json, bool write2 = true) {
      const std::string d = make_dir(rel);
      write_file(d + "/config.json", cfg_json(llama_cfg()));
      write_file(d + "/model-00001-of-00002.safetensors", make_st(s1));
      if (write2) write_file(d + "/model-00002-of-00002.safetensors", make_st(s2));
      write_file(d + "/model.safetensors.index.json", index_json);
      return d;
    };
    auto index_for = [&](const std::string &override_name = "", const std::string &override_file = "") {
      std::string j = "{\"metadata\": {\"total_size\": 1234}, \"weight_map\": {";
      for (size_t i = 0; i < all.size(); i++) {
        std::string f = i < 10 ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
        if (all[i].name == override_name) f = override_file;
        j += (i ? ", \"" : "\"") + all[i].name + "\": \"" + f + "\"";
      }
      return j + "}}";
    };
    const std::string d = sharded("sharded", index_for());
    expect_ok("sharded: two shards load (mmap)", [&] { load_dir(d, true); });
    expect_ok("sharded: two shards load (read)", [&] { load_dir(d, false); });
    {
      TensorIndex ix = TensorIndex::open_dir(d);
      const TensorInfo *a = ix.find(all[0].name), *b = ix.find(all.back().name);
      check("sharded: tensors point into their shards",
            ix.files().size() == 2 && ix.size() == all.size() && a && b &&
                a->file == d + "/model-00001-of-00002.safetensors" && b->file == d + "/model-00002-of-00002.safetensors");
    }
    expect_error("sharded: missing shard", KF_ERR_IO, "model-00002-of-00002.safetensors listed in",
                 [&] { load_dir(sharded("shard_missing", index_for(), false)); });
    expect_error("sharded: tensor not in its shard", KF_ERR_FORMAT,
                 "maps tensor model.norm.weight to " + path("shard_wrong") + "/model-00001-of-00002.safetensors, but that file does not contain it",
                 [&] { load_dir(sharded("shard_wrong", index_for("model.norm.weight", "model-00001-of-00002.safetensors"))); });
    expect_error("sharded: path escape with ../", KF_ERR_FORMAT, "not a plain file name inside the model folder", [&] {
      write_file(path("outside.safetensors"), make_st(s2));
      load_dir(sharded("escape", index_for("model.norm.weight", "../outside.safetensors")));
    });
    expect_error("sharded: absolute path refused", KF_ERR_FORMAT, "not a plain file name",
                 [&] { load_dir(sharded("escape2", index_for("model.norm.weight", path("outside.safetensors")))); });
    expect_error("sharded: '..' refused", KF_ERR_FORMAT, "not a plain file name",
                 [&] { load_dir(sharded("escape3", index_for("model.norm.weight", ".."))); });
    expect_error("sharded: subfolder refused", KF_ERR_FORMAT, "not a plain file name",
                 [&] { load_dir(sharded("escape4", index_for("model.norm.weight", "sub/x.safetensors"))); });
    expect_error("sharded: weight_map missing", KF_ERR_FORMAT, "has no \"weight_map\" object",
                 [&] { load_dir(sharded("nomap", "{\"metadata\": {}}")); });
    expect_error("sharded: weight_map value not a string", KF_ERR_FORMAT, "weight_map entry of tensor a is a number",
                 [&] { load_dir(sharded("mapnum", "{\"weight_map\": {\"a\": 3}}")); });
    expect_error("sharded: empty weight_map", KF_ERR_FORMAT, "weight_map is empty",
                 [&] { load_dir(sharded("mapempty", "{\"weight_map\": {}}")); });
    expect_error("sharded: bad index JSON", KF_ERR_FORMAT, "model.safetensors.index.json is not valid JSON",
                 [&] { load_dir(sharded("badindex", "{\"weight_map\": ")); });
    expect_error("sharded: a tensor in a shard that the weight_map does not list", KF_ERR_FORMAT,
                 "holds tensor model.norm.weight, which the weight_map of", [&] {
      std::string j = index_for();
      const std::string key = "\"model.norm.weight\": \"model-00002-of-00002.safetensors\", ";
      const size_t at = j.find(key);
      if (at != std::string::npos) j.erase(at, key.size());
      load_dir(sharded("unmapped", j));
    });
    expect_error("sharded: a tensor in two shards", KF_ERR_FORMAT, "tensor model.norm.weight is in both", [&] {
      const std::string d2 = sharded("twice", index_for());
      std::vector<T> s1b = s1;
      s1b.push_back({"model.norm.weight", "F32", {16}});
      write_file(d2 + "/model-00001-of-00002.safetensors", make_st(s1b));
      load_dir(d2);
    });
    expect_error("sharded: the index is a FIFO", KF_ERR_IO, "model.safetensors.index.json is not a regular file", [&] {
      const std::string d2 = sharded("fifoindex", index_for());
      ::unlink((d2 + "/model.safetensors.index.json").c_str());
      ::mkfifo((d2 + "/model.safetensors.index.json").c_str(), 0600);
      load_dir(d2);
    });
    expect_error("sharded: the index links to /dev/zero", KF_ERR_IO, "is not a regular file", [&] {
      const std::string d2 = sharded("zeroindex", index_for());
      ::unlink((d2 + "/model.safetensors.index.json").c_str());
      if (::symlink("/dev/zero", (d2 + "/model.safetensors.index.json").c_str()) != 0) raise(KF_ERR_IO, "is not a regular file (no symlink)");
      load_dir(d2);
    });
    expect_error("sharded: an index over 64 MiB is refused before it is read", KF_ERR_FORMAT, "more than the", [&] {
      const std::string d2 = sharded("bigindex", index_for());
      if (::truncate((d2 + "/model.safetensors.index.json").c_str(), (int64_t(64) << 20) + 1) != 0)
        raise(KF_ERR_FORMAT, "more than the (truncate failed)");
      load_dir(d2);
    });
    {
      // Hugging Face cache layout: shard files are symlinks to blobs elsewhere; followed.
      const std::string blobs = make_dir("blobs");
      write_file(blobs + "/s1", make_st(s1));
      write_file(blobs + "/s2", make_st(s2));
      const std::string snap = make_dir("snapshot");
      write_file(snap + "/config.json", cfg_json(llama_cfg()));
      write_file(snap + "/model.safetensors.index.json", index_for());
      const bool linked = ::symlink("../blobs/s1", (snap + "/model-00001-of-00002.safetensors").c_str()) == 0 &&
                          ::symlink("../blobs/s2", (snap + "/model-00002-of-00002.safetensors").c_str()) == 0;
      if (linked) expect_ok("sharded: symlinked shards (HF cache layout) load", [&] { load_dir(snap); });
    }
  }
}

}  // namespace

int main() {
  char tmpl[] = "/tmp/kvfold_model_files_XXXXXX";
  const char *t = ::mkdtemp(tmpl);
  if (!t) {
    std::perror("mkdtemp");
    return 2;
  }
  g_tmp = t;
  json_tests();
  safetensors_tests();
  config_tests();
  folder_tests();
  remove_tree(g_tmp);
  std::printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail ? 1 : 0;
}

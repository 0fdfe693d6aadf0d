// model_files_test.cpp — JSON parser and safetensors reader, every error path.
//
// Standalone: writes small files into a temporary folder, prints one line per check, exits nonzero if
// any check failed. Build and run:
//   g++ -std=c++17 -O2 -Wall -pthread -Iffi/include ffi/tests/model_files_test.cpp ffi/src/json.cpp
//       ffi/src/safetensors.cpp ffi/src/model_config.cpp ffi/src/common.cpp -o build/model_files_test
//   build/model_files_test
#include "model_files_fixtures.h"

using namespace kf;
using namespace kf_files_test;

namespace {

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

}  // namespace

int main() {
  return run_checks([] {
    json_tests();
    safetensors_tests();
  });
}

// model_files_fixtures.h — what the native model-file tests share: one line per check, a temporary
// folder, and writers of safetensors files, config.json texts and whole model folders.
//
// Each test binary includes it once and calls run_checks from main.
#pragma once

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

namespace kf_files_test {

using namespace kf;


inline int g_fail = 0, g_pass = 0;
inline std::string g_tmp;

inline void report(bool ok, const std::string &name, const std::string &detail = "") {
  if (ok) {
    g_pass++;
    std::printf("ok   %s\n", name.c_str());
  } else {
    g_fail++;
    std::printf("FAIL %s%s%s\n", name.c_str(), detail.empty() ? "" : ": ", detail.c_str());
  }
}

inline void check(const std::string &name, bool cond, const std::string &detail = "") { report(cond, name, detail); }

// Runs f; passes when it throws kf::Error with `code` and a message containing `needle`.
inline void expect_error(const std::string &name, kf_status code, const std::string &needle, const std::function<void()> &f) {
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
inline void expect_ok(const std::string &name, const std::function<void()> &f) {
  try {
    f();
    report(true, name);
  } catch (const std::exception &e) {
    report(false, name, e.what());
  }
}

inline std::string path(const std::string &rel) { return g_tmp + "/" + rel; }

inline void write_file(const std::string &p, const std::string &bytes) {
  FILE *f = std::fopen(p.c_str(), "wb");
  if (!f) {
    std::perror(p.c_str());
    std::exit(2);
  }
  if (!bytes.empty()) std::fwrite(bytes.data(), 1, bytes.size(), f);
  std::fclose(f);
}

inline std::string make_dir(const std::string &rel) {
  const std::string p = path(rel);
  ::mkdir(p.c_str(), 0755);
  return p;
}

inline void remove_tree(const std::string &p) {
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

inline size_t elem_size(const std::string &dt) { return size_t(safetensors_dtype_bits(dt) / 8); }

inline std::string shape_json(const std::vector<int64_t> &s) {
  std::string o = "[";
  for (size_t i = 0; i < s.size(); i++) o += (i ? "," : "") + std::to_string(s[i]);
  return o + "]";
}

inline std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; i++) s[size_t(i)] = char((n >> (8 * i)) & 0xff);
  return s;
}

// Header JSON text plus data; header padded with spaces to a multiple of 8 (like the reference writer).
inline std::string raw_file(std::string header, const std::string &data, bool pad = true) {
  if (pad)
    while ((8 + header.size()) % 8) header += ' ';
  return le64(header.size()) + header + data;
}

// Contiguous tensors; F32 element k of tensor t holds t*1000 + k, 16-bit ones hold the pattern bytes.
inline std::string make_st(const std::vector<T> &ts, const std::string &metadata = "") {
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

inline Cfg llama_cfg() {
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

inline Cfg with(Cfg c, const std::string &key, const std::string &value) {
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

inline std::string cfg_json(const Cfg &c) {
  std::string s = "{\n";
  for (size_t i = 0; i < c.size(); i++) s += "  \"" + c[i].first + "\": " + c[i].second + (i + 1 < c.size() ? ",\n" : "\n");
  return s + "}\n";
}

inline ModelConfig cfg_of(const Cfg &c) {
  const std::string j = cfg_json(c);
  return parse_model_config_json(j.data(), j.size(), "config.json");
}

// Tensors for a config from expected_tensors, as F32, minus `drop`, plus `extra`.
inline std::vector<T> tensors_for(const ModelConfig &c, const std::string &drop = "", const std::vector<T> &extra = {}) {
  std::vector<T> ts;
  for (const ExpectedTensor &e : expected_tensors(c)) {
    if (e.name == drop || e.optional) continue;
    ts.push_back({e.name, "F32", e.shape});
  }
  for (const T &t : extra) ts.push_back(t);
  return ts;
}

// Writes a model folder; returns its path.
inline std::string write_model(const std::string &rel, const Cfg &c, const std::vector<T> &ts) {
  const std::string d = make_dir(rel);
  write_file(d + "/config.json", cfg_json(c));
  write_file(d + "/model.safetensors", make_st(ts));
  return d;
}

// Loads a folder the way the engine does: config, tensors, validation.
inline void load_dir(const std::string &d, bool mmap = true) {
  ModelConfig c = parse_model_config(d);
  TensorIndex ix = TensorIndex::open_dir(d, mmap);
  validate_tensors(c, ix);
}

inline Json pj(const std::string &s) { return parse_json(s.data(), s.size(), "test.json"); }

// Runs `checks` in a fresh temporary folder, removes it, prints the totals; the process's exit status.
inline int run_checks(const std::function<void()> &checks) {
  char tmpl[] = "/tmp/kvfold_model_files_XXXXXX";
  const char *t = ::mkdtemp(tmpl);
  if (!t) {
    std::perror("mkdtemp");
    return 2;
  }
  g_tmp = t;
  checks();
  remove_tree(g_tmp);
  std::printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail ? 1 : 0;
}

}  // namespace kf_files_test


// train_replicas_threads_test.cpp — gradient replicas driven from real threads at once, through the
// public C API only (kvfold.h), so that a ThreadSanitizer build (tests/sanitize.sh) sees the replicas'
// shared state (weights, the gate, the engine's pool and scratch) as a user's threads touch it.
//
// The check beyond "no race was reported": replica r's gradients depend on which examples it ran,
// never on timing, so three steps whose examples run on two threads at once (while a third thread reads
// the weights and polls the trainer's info) end in the same bits, losses included, as the same
// examples run one after another on one thread.
//
// Standalone: writes a tiny random Llama folder into a temporary directory, prints one line per check,
// exits nonzero if any failed. Build against a libkvfold.so (any sanitizer build of it too):
//   g++ -std=c++17 -O2 -pthread -Iffi/include ffi/tests/train_replicas_threads_test.cpp
//       -Lbuild/cpu -lkvfold -Wl,-rpath,build/cpu -o build/train_replicas_threads_test
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "kvfold.h"

namespace {

int g_fail = 0, g_pass = 0;

void check(const std::string &name, bool ok, const std::string &detail = "") {
  (ok ? g_pass : g_fail)++;
  std::printf("%s %s%s%s\n", ok ? "ok  " : "FAIL", name.c_str(), detail.empty() ? "" : ": ", detail.c_str());
}

// The model: hidden 32, 2 layers, 4 heads of 8, 2 KV heads, intermediate 64, vocab 40, tied.
constexpr int H = 32, L = 2, NH = 4, NKV = 2, HD = 8, I = 64, V = 40;
constexpr int SUMMARY = 4, SEGMENT = 8;

// Deterministic small weights (a fixed LCG; the values only need to be finite and varied).
std::vector<float> some_floats(size_t n, uint64_t seed, float scale) {
  std::vector<float> out(n);
  uint64_t s = seed * 6364136223846793005ull + 1442695040888963407ull;
  for (float &x : out) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    x = scale * (float(int64_t(s >> 40) - (int64_t(1) << 23)) / float(1 << 23));
  }
  return out;
}

// Writes config.json and model.safetensors (F32) of the model above into dir.
bool write_model(const std::string &dir) {
  struct Tensor {
    std::string name;
    int64_t rows, cols;  // cols 0: a vector
  };
  std::vector<Tensor> ts = {{"model.embed_tokens.weight", V, H}, {"model.norm.weight", H, 0}};
  for (int l = 0; l < L; l++) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    ts.push_back({p + "input_layernorm.weight", H, 0});
    ts.push_back({p + "post_attention_layernorm.weight", H, 0});
    ts.push_back({p + "self_attn.q_proj.weight", NH * HD, H});
    ts.push_back({p + "self_attn.k_proj.weight", NKV * HD, H});
    ts.push_back({p + "self_attn.v_proj.weight", NKV * HD, H});
    ts.push_back({p + "self_attn.o_proj.weight", H, NH * HD});
    ts.push_back({p + "mlp.gate_proj.weight", I, H});
    ts.push_back({p + "mlp.up_proj.weight", I, H});
    ts.push_back({p + "mlp.down_proj.weight", H, I});
  }
  std::string header = "{";
  std::vector<float> data;
  for (size_t i = 0; i < ts.size(); i++) {
    const Tensor &t = ts[i];
    const size_t n = size_t(t.rows) * size_t(t.cols ? t.cols : 1);
    const size_t begin = data.size() * 4;
    if (t.cols == 0) {
      data.insert(data.end(), n, 1.0f);
    } else {
      const std::vector<float> w = some_floats(n, 1000 + i, 0.15f);
      data.insert(data.end(), w.begin(), w.end());
    }
    header += (i ? ",\"" : "\"") + t.name + "\":{\"dtype\":\"F32\",\"shape\":[" + std::to_string(t.rows) +
              (t.cols ? "," + std::to_string(t.cols) : "") + "],\"data_offsets\":[" + std::to_string(begin) +
              "," + std::to_string(data.size() * 4) + "]}";
  }
  header += "}";
  while (header.size() % 8) header += ' ';
  FILE *f = std::fopen((dir + "/model.safetensors").c_str(), "wb");
  if (!f) return false;
  const uint64_t len = header.size();
  bool ok = std::fwrite(&len, 8, 1, f) == 1 && std::fwrite(header.data(), 1, len, f) == len &&
            std::fwrite(data.data(), 4, data.size(), f) == data.size();
  ok = std::fclose(f) == 0 && ok;
  const std::string config =
      "{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\",\"hidden_size\":" + std::to_string(H) +
      ",\"intermediate_size\":" + std::to_string(I) + ",\"num_hidden_layers\":" + std::to_string(L) +
      ",\"num_attention_heads\":" + std::to_string(NH) + ",\"num_key_value_heads\":" + std::to_string(NKV) +
      ",\"head_dim\":" + std::to_string(HD) + ",\"vocab_size\":" + std::to_string(V) +
      ",\"max_position_embeddings\":256,\"rms_norm_eps\":1e-5,\"rope_theta\":10000,"
      "\"tie_word_embeddings\":true,\"hidden_act\":\"silu\",\"torch_dtype\":\"float32\"}";
  FILE *c = std::fopen((dir + "/config.json").c_str(), "wb");
  if (!c) return false;
  ok = std::fwrite(config.data(), 1, config.size(), c) == config.size() && ok;
  return std::fclose(c) == 0 && ok;
}

std::vector<int32_t> some_ids(int n, uint64_t seed) {
  std::vector<int32_t> ids(n);
  uint64_t s = seed * 2862933555777941757ull + 3037000493ull;
  for (int32_t &id : ids) {
    s = s * 2862933555777941757ull + 3037000493ull;
    id = int32_t((s >> 33) % V);
  }
  return ids;
}

// Example i of step s: a compressor document (a question pair, summary targets) or a text example.
struct Losses {
  float a = NAN, b = NAN, c = NAN;
};

kf_status run_example(kf_model_trainer *tr, int replica, int step, int i, Losses *out) {
  const uint64_t seed = uint64_t(step) * 100 + uint64_t(i);
  if (i % 3 == 2) {
    const std::vector<int32_t> ids = some_ids(10 + i, seed);
    std::vector<int32_t> labels(ids.begin() + 1, ids.end());
    labels.push_back(-1);
    return kf_model_trainer_accumulate_on(tr, replica, nullptr, 0, ids.data(), labels.data(), int32_t(ids.size()),
                                          &out->a, nullptr);
  }
  const std::vector<int32_t> ids = some_ids(2 * SEGMENT + i, seed);
  const std::vector<int32_t> q = some_ids(3, seed + 7), a = some_ids(2, seed + 11);
  const int32_t ql = 3, al = 2;
  const int32_t rows[2] = {1, SUMMARY + 2}, tokens[2] = {int32_t((7 * i) % V), int32_t((5 * i + 3) % V)};
  return kf_model_trainer_accumulate_document_on(tr, replica, ids.data(), int32_t(ids.size()), q.data(), &ql, a.data(),
                                                 &al, 1, rows, tokens, 2, 0.5f, &out->a, &out->b, &out->c, nullptr);
}

constexpr int STEPS = 3, EXAMPLES = 8, REPLICAS = 2;

struct Run {
  std::vector<std::vector<float>> weights;
  std::vector<Losses> losses;  // [step * EXAMPLES + i]
  bool ok = true;
};

// Trains STEPS steps of EXAMPLES examples, example i on replica i % REPLICAS: with `threads`, each
// replica's examples on a thread of its own (all at once, with a reader thread beside them), else all
// on this thread in order.
Run train(kf_model *model, bool threads) {
  Run run;
  run.losses.resize(STEPS * EXAMPLES);
  kf_model_train_params p = kf_model_train_default_params();
  p.seed = 5;
  p.lr = 1e-2f;
  p.summary_length = SUMMARY;
  p.segment_length = SEGMENT;
  kf_model_trainer *tr = nullptr;
  if (kf_model_trainer_create(model, &p, &tr) != KF_OK) {
    check(std::string("trainer create: ") + kf_last_error(), false);
    run.ok = false;
    return run;
  }
  kf_model_trainer_info info{};
  kf_model_trainer_get_info(tr, &info);
  std::vector<int64_t> sizes;
  std::vector<std::string> names;
  for (int t = 0; t < info.n_tensors; t++) {
    char name[256];
    int64_t rows = 0, cols = 0;
    kf_model_trainer_tensor_name(tr, t, name, sizeof name, &rows, &cols);
    names.push_back(name);
    sizes.push_back(rows * cols);
  }
  std::atomic<int> failures{0};
  for (int s = 0; s < STEPS; s++) {
    auto replica_work = [&](int r) {
      for (int i = r; i < EXAMPLES; i += REPLICAS) {
        if (run_example(tr, r, s, i, &run.losses[size_t(s * EXAMPLES + i)]) != KF_OK) failures++;
      }
    };
    if (threads) {
      std::atomic<bool> done{false};
      // A reader beside the replicas: info and a weight tensor, as a progress display would.
      std::thread reader([&] {
        std::vector<float> buf(static_cast<size_t>(sizes[0]));
        while (!done.load()) {
          kf_model_trainer_info i2{};
          if (kf_model_trainer_get_info(tr, &i2) != KF_OK) failures++;
          if (kf_model_trainer_read(tr, names[0].c_str(), KF_TRAIN_WEIGHT, buf.data(), sizes[0]) != KF_OK) failures++;
        }
      });
      std::vector<std::thread> workers;
      for (int r = 0; r < REPLICAS; r++) workers.emplace_back(replica_work, r);
      for (std::thread &w : workers) w.join();
      done.store(true);
      reader.join();
    } else {
      for (int r = 0; r < REPLICAS; r++) replica_work(r);
    }
    kf_train_step_info si{};
    if (kf_model_trainer_step(tr, &si) != KF_OK) failures++;
  }
  for (size_t t = 0; t < names.size(); t++) {
    std::vector<float> w(size_t(sizes[t]));
    if (kf_model_trainer_read(tr, names[t].c_str(), KF_TRAIN_WEIGHT, w.data(), sizes[t]) != KF_OK) failures++;
    run.weights.push_back(std::move(w));
  }
  kf_model_trainer_free(tr);
  if (failures.load() != 0) {
    check(std::string(threads ? "threaded" : "sequential") + " calls all succeed", false, kf_last_error());
    run.ok = false;
  }
  return run;
}

bool same_bits(float x, float y) { return std::memcmp(&x, &y, 4) == 0; }

}  // namespace

int main() {
  char tmpl[] = "/tmp/kvfold-replicas-XXXXXX";
  const char *dir = mkdtemp(tmpl);
  if (!dir || !write_model(dir)) {
    std::printf("FAIL cannot write the test model\n");
    return 1;
  }
  kf_engine_params ep = kf_engine_default_params();
  ep.backend = KF_BACKEND_CPU;
  ep.n_threads = 2;
  kf_engine *engine = nullptr;
  kf_model *model = nullptr;
  if (kf_engine_open(&ep, &engine) != KF_OK || kf_model_load(engine, dir, nullptr, &model, nullptr) != KF_OK) {
    std::printf("FAIL open the engine and model: %s\n", kf_last_error());
    return 1;
  }

  const Run a = train(model, true), b = train(model, false);
  if (a.ok && b.ok) {
    size_t differ = 0, total = 0;
    bool finite = true, moved = false;
    const std::vector<float> start = some_floats(size_t(V) * H, 1000, 0.15f);  // embed_tokens as written
    for (size_t t = 0; t < a.weights.size(); t++) {
      for (size_t k = 0; k < a.weights[t].size(); k++) {
        total++;
        differ += !same_bits(a.weights[t][k], b.weights[t][k]);
        finite = finite && std::isfinite(a.weights[t][k]);
      }
    }
    for (size_t k = 0; k < start.size(); k++) moved = moved || a.weights[0][k] != start[k];
    check("threaded replicas end in the sequential run's bits", differ == 0,
          std::to_string(differ) + " of " + std::to_string(total) + " values differ");
    check("trained weights are finite and moved", finite && moved);
    size_t loss_differ = 0;
    bool losses_finite = true;
    for (size_t i = 0; i < a.losses.size(); i++) {
      loss_differ += !same_bits(a.losses[i].a, b.losses[i].a) + !same_bits(a.losses[i].b, b.losses[i].b) +
                     !same_bits(a.losses[i].c, b.losses[i].c);
      losses_finite = losses_finite && std::isfinite(a.losses[i].a);
    }
    check("threaded replicas report the sequential run's losses", loss_differ == 0 && losses_finite,
          std::to_string(loss_differ) + " differ");
  }

  // The one refusal that needs two threads: a call on a busy replica. A holder thread keeps replica 1
  // busy with one long document after another; this thread calls on replica 1 until it is refused.
  // Either thread may be refused while the other holds the replica; no call may fail otherwise, and the
  // holder's call that was running at the refusal finishes (its gradients are there for the step).
  {
    kf_model_train_params p = kf_model_train_default_params();
    p.summary_length = SUMMARY;
    p.segment_length = SEGMENT;
    kf_model_trainer *tr = nullptr;
    kf_model_trainer_create(model, &p, &tr);
    std::atomic<bool> stop{false};
    std::atomic<int> holder_bad{0}, holder_ok{0};
    std::thread holder([&] {
      const std::vector<int32_t> ids = some_ids(240, 99);
      while (!stop.load()) {
        const kf_status st = kf_model_trainer_accumulate_document_on(
            tr, 1, ids.data(), int32_t(ids.size()), nullptr, nullptr, nullptr, nullptr, 0, nullptr, nullptr, 0, 0.f,
            nullptr, nullptr, nullptr, nullptr);
        // Refused while this thread's call holds the replica is fine; anything else is not.
        if (st != KF_OK && st != KF_ERR_INVALID_STATE) holder_bad++;
        holder_ok += st == KF_OK;
      }
    });
    kf_status busy = KF_OK;
    const std::vector<int32_t> ids = some_ids(12, 3);
    std::vector<int32_t> labels(ids.begin() + 1, ids.end());
    labels.push_back(-1);
    float loss = 0;
    for (int tries = 0; tries < 1000000; tries++) {
      busy = kf_model_trainer_accumulate_on(tr, 1, nullptr, 0, ids.data(), labels.data(), int32_t(ids.size()), &loss,
                                            nullptr);
      if (busy != KF_OK) break;
    }
    stop = true;
    holder.join();
    check("a second call on a busy replica is refused", busy == KF_ERR_INVALID_STATE,
          std::string("got ") + kf_status_name(busy));
    check("the refusal leaves the running call alone", holder_bad.load() == 0 && holder_ok.load() > 0,
          std::to_string(holder_bad.load()) + " of the holder's calls failed otherwise, " +
              std::to_string(holder_ok.load()) + " succeeded");
    kf_train_step_info si{};
    const kf_status st = kf_model_trainer_step(tr, &si);
    check("the trainer steps over what both threads accumulated", st == KF_OK, st == KF_OK ? "" : kf_last_error());
    kf_model_trainer_free(tr);
  }

  kf_model_free(model);
  kf_engine_free(engine);
  std::remove((std::string(dir) + "/model.safetensors").c_str());
  std::remove((std::string(dir) + "/config.json").c_str());
  rmdir(dir);
  std::printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail == 0 ? 0 : 1;
}

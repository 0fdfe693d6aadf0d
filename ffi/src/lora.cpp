// lora.cpp — loading a PEFT LoRA folder for a model: validate everything, then hold f32 copies.
//
// PEFT writes adapter_config.json (r, lora_alpha, target_modules, use_rslora, rank_pattern,
// alpha_pattern, ...) and adapter_model.safetensors with tensors named
//   base_model.model.model.layers.{i}.{self_attn|mlp}.{proj}.lora_{A|B}.weight
// lora_A: [r, in], lora_B: [out, r]. The layer computes y = W x + s · B (A x), s = alpha / r, or
// alpha / sqrt(r) with rslora; we fold s into B once here so the forward pass adds B (A x).
// target_modules and layers_to_transform decide which modules are adapted, as in PEFT: tensors of
// other modules are skipped. The config is checked whole before any tensor is read.
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "cpu_ops.h"
#include "json.h"
#include "model.h"

namespace kf {

const char *const kProjNames[kNumProj] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

namespace {

constexpr const char *kAction = "load adapter";

bool starts_with(const std::string &s, const std::string &p) { return s.compare(0, p.size(), p) == 0; }
bool ends_with(const std::string &s, const std::string &p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

int proj_index(const std::string &name) {
  for (int p = 0; p < kNumProj; p++)
    if (name == kProjNames[p]) return p;
  return -1;
}

// PEFT's rank_pattern / alpha_pattern keys match a module name when the name is the key or ends
// with "." + key (PEFT matches the regex `(.*\.)?key$`; we take keys literally).
bool key_matches(const std::string &key, const std::string &module) {
  const size_t k = key.size(), n = module.size();
  return module == key || (n > k && module[n - k - 1] == '.' && module.compare(n - k, k, key) == 0);
}

// "model.layers.3.self_attn.q_proj": a projection's module name, as PEFT's keys see it.
std::string module_name(int layer, int p) {
  return "model.layers." + std::to_string(layer) + (p <= kProjO ? ".self_attn." : ".mlp.") + kProjNames[p];
}

// What adapter_config.json says, checked against the model before any tensor is read: which
// (layer, projection) pairs get LoRA (target_modules x layers_to_transform), with which rank and
// alpha. Anything malformed is a KF_ERR_FORMAT naming the file and the key.
struct LoraConfig {
  std::string path;                 // .../adapter_config.json, for messages
  std::string base = "(not recorded)";
  int64_t r = 0;
  double alpha = 8.0;               // PEFT's default lora_alpha
  bool rslora = false;
  std::vector<uint32_t> targeted;   // [n_layers]: bit p when target_modules and layers_to_transform pick (l, p)
  std::vector<std::pair<std::string, int64_t>> rank_pattern;  // in file order: the first match wins
  std::vector<std::pair<std::string, double>> alpha_pattern;

  bool targets(int layer, int p) const { return (targeted[size_t(layer)] >> p) & 1u; }
  int64_t rank_of(const std::string &module) const {
    for (const auto &kv : rank_pattern)
      if (key_matches(kv.first, module)) return kv.second;
    return r;
  }
  double alpha_of(const std::string &module) const {
    for (const auto &kv : alpha_pattern)
      if (key_matches(kv.first, module)) return kv.second;
    return alpha;
  }
};

// More pattern entries than any real adapter has (one per module): bounds the matching work.
constexpr size_t kMaxPatternEntries = 65536;

LoraConfig parse_config(const Json &cfg, const std::string &path, const ModelConfig &mc) {
  LoraConfig c;
  c.path = path;
  const char *file = path.c_str();
  std::vector<std::string> modules;  // [n_layers * kNumProj], layer-major
  for (int l = 0; l < mc.n_layers; l++)
    for (int p = 0; p < kNumProj; p++) modules.push_back(module_name(l, p));
  if (!cfg.is_object()) raise(KF_ERR_FORMAT, "cannot load adapter: %s is not a JSON object", file);
  auto field = [&](const char *k) {
    const Json *f = cfg.find(k);
    return f && !f->is_null() ? f : nullptr;  // PEFT writes null for "not set"
  };
  if (const Json *b = field("base_model_name_or_path"); b && b->is_string()) c.base = b->as_string();

  if (const Json *t = field("peft_type"); t && !(t->is_string() && t->as_string() == "LORA"))
    raise(KF_ERR_UNSUPPORTED, "cannot load adapter: %s has peft_type %s; only LORA adapters are supported", file,
          t->is_string() ? t->as_string().c_str() : t->type_name());
  const Json *r_json = field("r");
  if (!r_json || !r_json->is_integer() || r_json->as_int64() < 1 || r_json->as_int64() > 65536)
    raise(KF_ERR_FORMAT, "cannot load adapter: %s needs \"r\", a rank in [1, 65536]", file);
  c.r = r_json->as_int64();
  if (const Json *al = field("lora_alpha")) {
    if (!al->is_number() || !(al->as_double() > 0))
      raise(KF_ERR_FORMAT, "cannot load adapter: lora_alpha in %s is not a positive number", file);
    c.alpha = al->as_double();
  }
  auto flag = [&](const char *k) {
    const Json *f = field(k);
    if (!f) return false;
    if (!f->is_bool()) raise(KF_ERR_FORMAT, "cannot load adapter: %s in %s is %s, not a boolean", k, file, f->type_name());
    return f->as_bool();
  };
  c.rslora = flag("use_rslora");
  if (flag("fan_in_fan_out"))
    raise(KF_ERR_UNSUPPORTED, "cannot load adapter: fan_in_fan_out adapters (GPT-2 Conv1D layers) do not fit Llama models");
  if (flag("use_dora")) raise(KF_ERR_UNSUPPORTED, "cannot load adapter: DoRA adapters (use_dora) are not supported");

  // target_modules: a list of module keys (matched as PEFT does: the module name or a dotted
  // suffix of it, "q_proj" or "model.layers.0.self_attn.q_proj"), "all-linear", or absent (the
  // tensors decide). PEFT reads any other string as a regular expression; we run none from files.
  c.targeted.assign(size_t(mc.n_layers), (1u << kNumProj) - 1);
  if (const Json *t = field("target_modules")) {
    if (t->is_string()) {
      if (t->as_string() != "all-linear")
        raise(KF_ERR_UNSUPPORTED,
              "cannot load adapter: target_modules in %s is the regular expression \"%s\"; only a list of module "
              "names or \"all-linear\" is supported",
              file, t->as_string().c_str());
    } else if (!t->is_array()) {
      raise(KF_ERR_FORMAT, "cannot load adapter: target_modules in %s is %s, not a list of module names", file,
            t->type_name());
    } else {
      if (t->size() == 0) raise(KF_ERR_FORMAT, "cannot load adapter: target_modules in %s is an empty list", file);
      if (t->size() > kMaxPatternEntries)
        raise(KF_ERR_FORMAT, "cannot load adapter: target_modules in %s has %zu entries, more than the %zu accepted",
              file, t->size(), kMaxPatternEntries);
      std::fill(c.targeted.begin(), c.targeted.end(), 0u);
      for (const Json &name : t->items()) {
        bool hit = false;
        if (name.is_string())
          for (int l = 0; l < mc.n_layers; l++)
            for (int p = 0; p < kNumProj; p++)
              if (key_matches(name.as_string(), modules[size_t(l) * kNumProj + size_t(p)])) {
                c.targeted[size_t(l)] |= 1u << p;
                hit = true;
              }
        if (!hit)
          raise(KF_ERR_FORMAT,
                "cannot load adapter: target module %s of %s is not a projection of this model "
                "(q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)",
                name.is_string() ? name.as_string().c_str() : name.type_name(), file);
      }
    }
  }

  // layers_to_transform: one layer index or a list of them; absent: every layer. layers_pattern
  // names the module list they index, which in a Llama model is "layers".
  const Json *ltt = field("layers_to_transform");
  if (ltt) {
    std::vector<char> on(size_t(mc.n_layers), 0);
    if (!ltt->is_integer() && !ltt->is_array())
      raise(KF_ERR_FORMAT, "cannot load adapter: layers_to_transform in %s is %s, not a layer index or a list of them",
            file, ltt->type_name());
    if (ltt->is_array() && ltt->size() == 0)
      raise(KF_ERR_FORMAT, "cannot load adapter: layers_to_transform in %s is an empty list", file);
    auto take = [&](const Json &v) {
      if (!v.is_integer())
        raise(KF_ERR_FORMAT, "cannot load adapter: layers_to_transform in %s holds %s, not a layer index", file,
              v.type_name());
      if (v.as_int64() < 0 || v.as_int64() >= mc.n_layers)
        raise(KF_ERR_FORMAT, "cannot load adapter: layers_to_transform in %s names layer %lld, but the model has %d layers",
              file, static_cast<long long>(v.as_int64()), mc.n_layers);
      on[size_t(v.as_int64())] = 1;
    };
    if (ltt->is_integer()) take(*ltt);
    else
      for (const Json &v : ltt->items()) take(v);
    for (size_t l = 0; l < on.size(); l++)
      if (!on[l]) c.targeted[l] = 0;
  }
  if (const Json *lp = field("layers_pattern")) {
    bool layers = lp->is_string() && lp->as_string() == "layers";
    bool ok = lp->is_string();
    if (lp->is_array()) {
      ok = true;
      for (const Json &v : lp->items()) {
        ok = ok && v.is_string();
        layers = layers || (v.is_string() && v.as_string() == "layers");
      }
    }
    if (!ok) raise(KF_ERR_FORMAT, "cannot load adapter: layers_pattern in %s is not a name or a list of names", file);
    if (!layers)
      raise(KF_ERR_FORMAT, "cannot load adapter: layers_pattern in %s does not name \"layers\", the layer list of this model",
            file);
    if (!ltt)
      raise(KF_ERR_FORMAT, "cannot load adapter: %s gives layers_pattern without layers_to_transform", file);
  }

  // rank_pattern / alpha_pattern: every entry must match a targeted module and hold a valid value.
  auto patterns = [&](const char *key, bool rank) {
    const Json *pat = field(key);
    if (!pat) return;
    if (!pat->is_object())
      raise(KF_ERR_FORMAT, "cannot load adapter: %s in %s is %s, not an object of module keys", key, file,
            pat->type_name());
    if (pat->size() > kMaxPatternEntries)
      raise(KF_ERR_FORMAT, "cannot load adapter: %s in %s has %zu entries, more than the %zu accepted", key, file,
            pat->size(), kMaxPatternEntries);
    for (const auto &kv : pat->members()) {
      const Json &v = kv.second;
      if (rank && !(v.is_integer() && v.as_int64() >= 1 && v.as_int64() <= 65536))
        raise(KF_ERR_FORMAT, "cannot load adapter: %s in %s gives \"%s\" %s; a rank is an integer in [1, 65536]", key,
              file, kv.first.c_str(), v.is_number() ? "a number out of range" : v.type_name());
      if (!rank && !(v.is_number() && v.as_double() > 0))
        raise(KF_ERR_FORMAT, "cannot load adapter: %s in %s gives \"%s\" %s; an alpha is a positive number", key,
              file, kv.first.c_str(), v.is_number() ? "a number that is not positive" : v.type_name());
      bool matched = false;
      for (int l = 0; l < mc.n_layers && !matched; l++)
        for (int p = 0; p < kNumProj && !matched; p++)
          matched = c.targets(l, p) && key_matches(kv.first, modules[size_t(l) * kNumProj + size_t(p)]);
      if (!matched)
        raise(KF_ERR_FORMAT,
              "cannot load adapter: %s in %s has the key \"%s\", which matches no adapted module (keys are module "
              "names or their dotted suffixes, e.g. \"model.layers.0.self_attn.q_proj\" or \"q_proj\", taken literally)",
              key, file, kv.first.c_str());
      if (rank) c.rank_pattern.emplace_back(kv.first, v.as_int64());
      else c.alpha_pattern.emplace_back(kv.first, v.as_double());
    }
  };
  patterns("rank_pattern", true);
  patterns("alpha_pattern", false);
  return c;
}

struct ParsedName {
  int layer = -1;
  int proj = -1;
  bool is_a = false;
};

// "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight" (an adapter name may sit between
// lora_A and weight, as older PEFT versions saved it). Returns false for anything else.
bool parse_tensor_name(const std::string &full, ParsedName &out, std::string &module, std::string &why) {
  std::string n = full;
  for (const char *prefix : {"base_model.model.", "model."})
    if (starts_with(n, prefix)) n = n.substr(std::strlen(prefix));
  if (!starts_with(n, "layers.")) {
    why = "it is not inside model.layers (only the projections of the decoder layers can be adapted)";
    return false;
  }
  size_t i = 7, j = i;
  while (j < n.size() && n[j] >= '0' && n[j] <= '9') j++;
  if (j == i || j - i > 6 || j >= n.size() || n[j] != '.') {
    why = "its layer index is not a number";
    return false;
  }
  out.layer = std::atoi(n.substr(i, j - i).c_str());
  const std::string rest = n.substr(j + 1);  // "self_attn.q_proj.lora_A.weight"
  const size_t dot1 = rest.find('.');
  const size_t dot2 = dot1 == std::string::npos ? dot1 : rest.find('.', dot1 + 1);
  if (dot2 == std::string::npos) {
    why = "it does not name a module and a LoRA matrix";
    return false;
  }
  const std::string parent = rest.substr(0, dot1), proj = rest.substr(dot1 + 1, dot2 - dot1 - 1);
  const std::string tail = rest.substr(dot2 + 1);  // "lora_A.weight" or "lora_A.default.weight"
  module = "model.layers." + std::to_string(out.layer) + "." + parent + "." + proj;
  out.proj = proj_index(proj);
  const bool attn = out.proj >= kProjQ && out.proj <= kProjO, mlp = out.proj >= kProjGate;
  if (out.proj < 0 || (parent == "self_attn" && !attn) || (parent == "mlp" && !mlp) ||
      (parent != "self_attn" && parent != "mlp")) {
    why = "the base model has no module " + parent + "." + proj +
          " (a Llama layer has self_attn.{q,k,v,o}_proj and mlp.{gate,up,down}_proj)";
    return false;
  }
  if (!ends_with(tail, ".weight") || !(starts_with(tail, "lora_A.") || starts_with(tail, "lora_B."))) {
    if (starts_with(tail, "lora_magnitude_vector"))
      why = "it is a DoRA magnitude vector (use_dora adapters are not supported)";
    else if (ends_with(tail, ".bias"))
      why = "it is a LoRA bias (adapters trained with bias other than \"none\" are not supported)";
    else
      why = "it is neither lora_A.weight nor lora_B.weight";
    return false;
  }
  out.is_a = starts_with(tail, "lora_A.");
  return true;
}

// The [out, in] shape of projection p of this model.
void proj_shape(const kf_model &m, int p, int64_t &out, int64_t &in) {
  const LayerWeights &L = m.layers[0];
  const Weight *w[kNumProj] = {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down};
  out = w[p]->rows;
  in = w[p]->cols;
}

std::string shape_str(const std::vector<int64_t> &s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); i++) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

}  // namespace

void adapter_load(kf_adapter &a, kf_model &m, const std::string &dir, kf_control *ctl) {
  const std::string cfg_path = dir + "/adapter_config.json";
  const LoraConfig cfg = parse_config(read_json_file(cfg_path, kAction), cfg_path, m.cfg);
  const std::string &base = cfg.base;
  a.rslora = cfg.rslora;
  a.alpha = cfg.alpha;

  TensorIndex files = TensorIndex::open_file(dir + "/adapter_model.safetensors", false, kAction);
  const ModelConfig &c = m.cfg;
  struct Found {
    const TensorInfo *a = nullptr, *b = nullptr;
    std::string module;
  };
  std::vector<Found> found(size_t(c.n_layers) * kNumProj);
  size_t skipped = 0;
  for (const TensorInfo &t : files.tensors()) {
    ParsedName pn;
    std::string module, why;
    if (!parse_tensor_name(t.name, pn, module, why))
      raise(KF_ERR_FORMAT, "cannot load adapter: tensor %s of %s/adapter_model.safetensors: %s", t.name.c_str(),
            dir.c_str(), why.c_str());
    if (pn.layer >= c.n_layers)
      raise(KF_ERR_FORMAT,
            "cannot load adapter: tensor %s adapts layer %d, but the model has %d layers; was it trained for "
            "another base model (adapter_config.json says %s)?",
            t.name.c_str(), pn.layer, c.n_layers, base.c_str());
    // Like PEFT, pairs of modules the config does not adapt are not loaded (PEFT warns of
    // "unexpected keys"): target_modules and layers_to_transform decide, not the file.
    if (!cfg.targets(pn.layer, pn.proj)) {
      skipped++;
      continue;
    }
    if (!t.dtype_supported || t.shape.size() != 2)
      raise(KF_ERR_FORMAT, "cannot load adapter: tensor %s is %s %s; LoRA matrices are 2-D F32, F16 or BF16",
            t.name.c_str(), t.dtype_str.c_str(), shape_str(t.shape).c_str());
    // A NaN here would surface much later as a NaN logit that names neither model nor adapter.
    if (const int64_t k = first_non_finite(t.data, t.dtype, t.numel()); k >= 0)
      raise(KF_ERR_FORMAT,
            "cannot load adapter: tensor %s of %s/adapter_model.safetensors holds NaN or Inf at element %lld; the "
            "weights are corrupt",
            t.name.c_str(), dir.c_str(), static_cast<long long>(k));
    Found &f = found[size_t(pn.layer) * kNumProj + size_t(pn.proj)];
    const TensorInfo *&slot = pn.is_a ? f.a : f.b;
    if (slot) raise(KF_ERR_FORMAT, "cannot load adapter: tensors %s and %s are the same matrix", slot->name.c_str(), t.name.c_str());
    slot = &t;
    f.module = module;
  }

  // Validate every pair against the base and the config before allocating anything.
  int64_t n_params = 0;
  for (size_t i = 0; i < found.size(); i++) {
    const Found &f = found[i];
    if (!f.a && !f.b) continue;
    const int p = int(i % kNumProj);
    if (!f.a || !f.b)
      raise(KF_ERR_FORMAT, "cannot load adapter: %s has lora_%s but no lora_%s", f.module.c_str(), f.a ? "A" : "B",
            f.a ? "B" : "A");
    int64_t out, in;
    proj_shape(m, p, out, in);
    const int64_t rank = f.a->shape[0];
    const int64_t want_rank = cfg.rank_of(f.module);
    if (f.a->shape[1] != in || f.b->shape[0] != out || f.b->shape[1] != rank)
      raise(KF_ERR_FORMAT,
            "cannot load adapter: %s has lora_A %s and lora_B %s, but the model's %s maps %lld inputs to %lld "
            "outputs (want [r, %lld] and [%lld, r]); was it trained for another base model (adapter_config.json "
            "says %s)?",
            f.module.c_str(), shape_str(f.a->shape).c_str(), shape_str(f.b->shape).c_str(), kProjNames[p],
            (long long)in, (long long)out, (long long)in, (long long)out, base.c_str());
    if (rank != want_rank)
      raise(KF_ERR_FORMAT, "cannot load adapter: %s has rank %lld, but adapter_config.json gives it r = %lld",
            f.module.c_str(), (long long)rank, (long long)want_rank);
    n_params += rank * (in + out);
  }
  if (n_params == 0 && skipped > 0)
    raise(KF_ERR_FORMAT,
          "cannot load adapter: none of the %zu tensors of %s/adapter_model.safetensors is of a module that "
          "target_modules and layers_to_transform of %s adapt",
          skipped, dir.c_str(), cfg.path.c_str());
  if (n_params == 0)
    raise(KF_ERR_FORMAT, "cannot load adapter: %s/adapter_model.safetensors holds no LoRA matrices", dir.c_str());
  const double bytes = double(n_params) * sizeof(float);
  const double available = available_memory_bytes();
  if (available > 0 && bytes > 0.9 * available)
    raise(KF_ERR_OUT_OF_MEMORY, "cannot load adapter: it needs %.2f GiB, but only %.2f GiB of memory is available",
          bytes / 1073741824.0, available / 1073741824.0);

  a.layers.assign(size_t(c.n_layers), LoraLayer{});
  progress_start(ctl, int64_t(files.size()));
  for (size_t i = 0; i < found.size(); i++) {
    const Found &f = found[i];
    if (!f.a) continue;
    check_cancel(ctl, "load adapter");
    const int p = int(i % kNumProj);
    LoraPair &pair = a.layers[i / kNumProj].proj[p];
    const int64_t rank = f.a->shape[0], in = f.a->shape[1], out = f.b->shape[0];
    const double alpha = cfg.alpha_of(f.module);
    const float s = float(a.rslora ? alpha / std::sqrt(double(rank)) : alpha / double(rank));
    pair.rank = int32_t(rank);
    pair.a.resize(size_t(rank * in));
    convert_row_to_f32(f.a->data, f.a->dtype, pair.a.data(), rank * in);
    std::vector<float> b(size_t(out * rank));  // [out, rank] as stored
    convert_row_to_f32(f.b->data, f.b->dtype, b.data(), out * rank);
    pair.bt.resize(size_t(rank * out));
    for (int64_t o = 0; o < out; o++)
      for (int64_t j = 0; j < rank; j++) pair.bt[size_t(j * out + o)] = s * b[size_t(o * rank + j)];
    for (float v : pair.a)
      if (!std::isfinite(v)) raise(KF_ERR_FORMAT, "cannot load adapter: %s lora_A holds NaN or infinity", f.module.c_str());
    for (float v : b)
      if (!std::isfinite(v)) raise(KF_ERR_FORMAT, "cannot load adapter: %s lora_B holds NaN or infinity", f.module.c_str());
    // A finite but huge lora_alpha overflows the folded B to infinity: refuse it here, not as NaN logits.
    for (float v : pair.bt)
      if (!std::isfinite(v))
        raise(KF_ERR_FORMAT, "cannot load adapter: the scale %g (lora_alpha %g, r %lld) overflows %s lora_B past the float range",
              double(s), alpha, (long long)rank, f.module.c_str());
    a.max_rank = std::max(a.max_rank, int32_t(rank));
    a.proj_mask |= 1u << p;
    progress_add(ctl, 2);
  }
  progress_set(ctl, int64_t(files.size()));
  a.model = &m;
  a.n_params = n_params;
  a.bytes = int64_t(bytes);
}

}  // namespace kf

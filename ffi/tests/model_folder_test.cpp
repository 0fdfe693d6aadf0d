// model_folder_test.cpp — config.json parsing, tensor validation and whole model folders (sharded, symlinked).
//
// Standalone: writes small files into a temporary folder, prints one line per check, exits nonzero if
// any check failed. Build and run:
//   g++ -std=c++17 -O2 -Wall -pthread -Iffi/include ffi/tests/model_folder_test.cpp ffi/src/json.cpp
//       ffi/src/safetensors.cpp ffi/src/model_config.cpp ffi/src/common.cpp -o build/model_folder_test
//   build/model_folder_test
#include "model_files_fixtures.h"

using namespace kf;
using namespace kf_files_test;

namespace {

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
               [] {
                 write_file(path("plain.safetensors"), make_st({{"a", "F32", {2}}}));
                 TensorIndex::open_dir(path("plain.safetensors"));
               });

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
  return run_checks([] {
    config_tests();
    folder_tests();
  });
}

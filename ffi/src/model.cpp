// model.cpp — binding a Hugging Face folder to kf_model: validate, then point at (or convert) weights.
#include "model.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>

#include "cpu_ops.h"
#include "cpu_quant.h"
#include "gguf.h"

namespace kf {

std::vector<double> rope_inv_freq(const ModelConfig &cfg) {
  const int half = cfg.head_dim / 2;
  std::vector<double> inv(half);
  for (int i = 0; i < half; i++) inv[i] = std::pow(cfg.rope_theta, -2.0 * i / cfg.head_dim);
  if (cfg.rope_scaling == RopeScaling::Linear) {
    for (auto &f : inv) f /= cfg.rope_factor;  // positions / factor, folded into the frequency
  } else if (cfg.rope_scaling == RopeScaling::Llama3) {
    // Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, the band between blended.
    const double low_wavelen = cfg.rope_original_max_position_embeddings / cfg.rope_low_freq_factor;
    const double high_wavelen = cfg.rope_original_max_position_embeddings / cfg.rope_high_freq_factor;
    for (auto &f : inv) {
      const double wavelen = 2.0 * M_PI / f;
      if (wavelen > low_wavelen) {
        f = f / cfg.rope_factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth = (cfg.rope_original_max_position_embeddings / wavelen - cfg.rope_low_freq_factor) /
                              (cfg.rope_high_freq_factor - cfg.rope_low_freq_factor);
        f = (1.0 - smooth) * f / cfg.rope_factor + smooth * f;
      }
    }
  }
  return inv;
}

namespace {

// A NaN or Inf weight turns every later logit into NaN, far from the cause: refuse it at load,
// naming the tensor, its file and the first such element.
[[noreturn]] void refuse_bad_scale(const TensorInfo &t, int64_t at);

[[noreturn]] void refuse_non_finite(const TensorInfo &t, int64_t at) {
  // Quanta are integers: in a block format only a scale can be NaN or Inf (and `at` is an element
  // of the decoded row, not of the blocks).
  if (dtype_quantized(t.dtype) || dtype_load_only(t.dtype)) refuse_bad_scale(t, at);
  float v = 0;
  convert_row_to_f32(t.data + size_t(at) * dtype_size(t.dtype), t.dtype, &v, 1);
  std::string where = "element " + std::to_string(at);
  if (t.shape.size() == 2 && t.shape[1] > 0)
    where += " (row " + std::to_string(at / t.shape[1]) + ", column " + std::to_string(at % t.shape[1]) + ")";
  raise(KF_ERR_FORMAT, "cannot load model: tensor %s in %s holds %s at %s; the weights are corrupt", t.name.c_str(),
        t.file.c_str(), std::isnan(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf", where.c_str());
}

// A quantized matrix is finite when its block scales are (its quanta are integers): the first
// element of the first block whose f16 scale (d; Q4_K's dmin too) is NaN or Inf, or -1. Q8_0, Q4_0
// and Q4_K blocks start with their scale, Q6_K's ends with it.
int64_t first_bad_block(const uint8_t *data, DType dt, int64_t first_block, int64_t n_blocks) {
  const size_t block = quant_block_bytes(dt), at = dt == DType::Q6_K ? block - 2 : 0;
  const int scales = dt == DType::Q4_K ? 2 : 1;
  for (int64_t b = 0; b < n_blocks; b++)
    for (int k = 0; k < scales; k++) {
      uint16_t d;
      std::memcpy(&d, data + size_t(first_block + b) * block + at + 2 * size_t(k), 2);
      if ((d & 0x7c00) == 0x7c00) return (first_block + b) * dtype_block_values(dt);
    }
  return -1;
}

[[noreturn]] void refuse_bad_scale(const TensorInfo &t, int64_t at) {
  raise(KF_ERR_FORMAT, "cannot load model: tensor %s in %s has a NaN or infinite block scale at row %lld, column %lld; "
        "the weights are corrupt", t.name.c_str(), t.file.c_str(), (long long)(at / t.shape[1]),
        (long long)(at % t.shape[1]));
}

// The smallest of per-thread first bad indices (INT64_MAX: none).
int64_t earliest(const std::vector<int64_t> &first) {
  return *std::min_element(first.begin(), first.end());
}

// Small vectors (norms, biases) are always held in f32.
std::vector<float> load_vector(const TensorInfo &t) {
  const int64_t n = int64_t(t.nbytes / dtype_size(t.dtype));
  const int64_t bad = first_non_finite(t.data, t.dtype, n);
  if (bad >= 0) refuse_non_finite(t, bad);
  std::vector<float> out(static_cast<size_t>(n));
  convert_row_to_f32(t.data, t.dtype, out.data(), n);
  return out;
}

}  // namespace

void weight_row_to_f32(const Weight &w, int64_t r, float *dst) {
  if (dtype_rows16(w.dtype)) return rows16_row_to_f32(w.dtype, w.data, r, w.cols, dst);
  convert_row_to_f32(w.row(r), w.dtype, dst, w.cols);
}

void model_load(kf_model &m, const std::string &dir, const kf_model_params &p, kf_control *ctl) {
  if (p.weight_dtype < KF_DTYPE_AUTO || p.weight_dtype > KF_DTYPE_Q4_0)
    raise(KF_ERR_INVALID_ARGUMENT, "cannot load model: weight_dtype %d is not one of -1 (auto), 0 (f32), 1 (f16), 2 (bf16), "
          "3 (q8_0), 4 (q4_0)", p.weight_dtype);
  // A file is a GGUF model (gguf.h: its metadata is the config, its tensors get HF names); a folder
  // is config.json and safetensors.
  const bool gguf = is_model_file(dir);
  if (gguf) {
    m.gguf = std::make_unique<GgufModelFile>(dir, p.use_mmap != 0);
    m.cfg = m.gguf->config();
  } else {
    m.cfg = parse_model_config(dir);
    m.files = TensorIndex::open_dir(dir, p.use_mmap != 0);
    validate_tensors(m.cfg, m.files);
  }
  const std::vector<TensorInfo> &all = gguf ? m.gguf->tensors() : m.files.tensors();
  auto find = [&](const std::string &name) { return gguf ? m.gguf->find(name) : m.files.find(name); };
  const ModelConfig &c = m.cfg;

  // The dominant file dtype decides AUTO; mixed files are converted to it.
  int64_t counts[kNumDTypes] = {};
  for (const TensorInfo &t : all)
    if (t.dtype_supported) counts[int(t.dtype)] += int64_t(t.nbytes);
  DType file_dt = DType::F32;
  for (int i = 1; i < kNumDTypes; i++)
    if (counts[i] > counts[int(file_dt)]) file_dt = DType(i);
  // k-quant files (a Q4_K_M GGUF) are converted at load: to Q8_0 unless asked otherwise, the nearest
  // format kvfold computes on that keeps what the k-quants hold.
  if (dtype_load_only(file_dt)) file_dt = DType::Q8_0;
  // The backend may hold another dtype than the file's (the cuda backend converts f32 to bf16).
  const DType want = m.engine->backend->weight_dtype(p.weight_dtype == KF_DTYPE_AUTO ? file_dt : DType(p.weight_dtype),
                                                     p.weight_dtype);
  m.weight_dtype = int32_t(want);

  // Quantized matrices the matmul reads (not the embedding table, whose rows are gathered) take the
  // 16-row interleaved layout where the AVX512-VNNI kernels run (cpu_quant.h; only the CPU backend
  // accepts quantized weights).
  const bool rows16 = dtype_quantized(want) && quant_rows16_wanted();
  int64_t total = 0;
  double converted = 0;  // bytes of converted copies this load will allocate
  for (const TensorInfo &t : all) {
    total += int64_t(t.nbytes);
    if (t.dtype_supported && t.shape.size() == 2 && t.dtype != want)
      converted += double(dtype_row_bytes(want, t.shape[1])) * double(t.shape[0]);
    else if (t.dtype_supported && t.shape.size() == 2 && rows16)
      converted += double(t.nbytes);  // quantized blocks used as stored are still copied to be interleaved
  }
  // Quantized rows are whole blocks of 32: refuse a model with another row length before any work.
  if (dtype_quantized(want))
    for (const TensorInfo &t : all)
      if (t.shape.size() == 2 && t.shape[1] % 32 != 0)
        raise(KF_ERR_UNSUPPORTED, "cannot load model: %s weights are blocks of 32 values per row, but tensor %s has %lld "
              "columns; load it in f32, f16 or bf16", dtype_name(want), t.name.c_str(), (long long)t.shape[1]);
  const double available = available_memory_bytes();
  if (available > 0 && converted > 0.9 * available)
    raise(KF_ERR_OUT_OF_MEMORY,
          "cannot load model: converting the weights to %s needs %.2f GiB, but only %.2f GiB of memory is available",
          dtype_name(want), converted / 1073741824.0, available / 1073741824.0);
  progress_start(ctl, total);

  ThreadPool &pool = *m.engine->pool;
  // A weight buffer the model owns (converted or interleaved copies): 64-byte-aligned rows on huge
  // pages, all in one mapping where the estimate above holds (weight_arena.h).
  const size_t piece_pad = WeightArena::kAlign + WeightArena::kRedzone;  // rounding (and ASan's redzone) per piece
  if (converted > 0) m.owned.reserve(size_t(converted) + all.size() * piece_pad);
  auto new_buffer = [&](size_t n) { return m.owned.alloc(n, "the model's converted weights"); };
  auto matrix = [&](const std::string &name) -> Weight {
    const TensorInfo *t = find(name);
    if (!t) raise(KF_ERR_FORMAT, "cannot load model: tensor %s is missing", name.c_str());
    check_cancel(ctl, "load model");
    Weight w;
    w.rows = t->shape[0];
    w.cols = t->shape[1];
    std::vector<int64_t> first_bad(size_t(pool.size()), INT64_MAX);
    if (t->dtype == want && !dtype_quantized(want)) {
      w.data = t->data;
      w.dtype = want;
      // The finiteness scan reads every byte, which also faults every page in now, so the first
      // decoded token does not pay for page faults.
      constexpr int64_t kChunk = int64_t(1) << 16;
      const int64_t n = t->numel(), chunks = (n + kChunk - 1) / kChunk;
      const size_t es = dtype_size(t->dtype);
      pool.parallel_for(chunks, [&](int64_t c, int th) {
        const int64_t b = c * kChunk;
        const int64_t k = first_non_finite(t->data + size_t(b) * es, t->dtype, std::min(kChunk, n - b));
        if (k >= 0) first_bad[size_t(th)] = std::min(first_bad[size_t(th)], b + k);
      });
      if (earliest(first_bad) != INT64_MAX) refuse_non_finite(*t, earliest(first_bad));
    } else if (t->dtype == want) {
      // GGUF blocks are used as they are; only their scales can be non-finite.
      w.data = t->data;
      w.dtype = want;
      const int64_t blocks = w.rows * (w.cols / kQuantBlock), chunk = int64_t(1) << 16;
      pool.parallel_for((blocks + chunk - 1) / chunk, [&](int64_t k, int th) {
        const int64_t bad = first_bad_block(t->data, want, k * chunk, std::min(chunk, blocks - k * chunk));
        if (bad >= 0) first_bad[size_t(th)] = std::min(first_bad[size_t(th)], bad);
      });
      if (earliest(first_bad) != INT64_MAX) refuse_bad_scale(*t, earliest(first_bad));
    } else {
      uint8_t *buf = new_buffer(size_t(w.rows) * dtype_row_bytes(want, w.cols));
      const size_t src_row = dtype_row_bytes(t->dtype, w.cols), dst_row = dtype_row_bytes(want, w.cols);
      // Row by row through f32, so any pair of dtypes converts with one rounding. Row buffers are
      // allocated here: nothing may throw inside a worker.
      std::vector<std::vector<float>> rows(size_t(pool.size()), std::vector<float>(size_t(w.cols)));
      pool.parallel_for(w.rows, [&](int64_t r, int th) {
        float *tmp = rows[size_t(th)].data();
        if (dtype_quantized(t->dtype) || dtype_load_only(t->dtype))
          dequantize_row(t->data + size_t(r) * src_row, t->dtype, tmp, w.cols);
        else convert_row_to_f32(t->data + size_t(r) * src_row, t->dtype, tmp, w.cols);
        // Checked on the f32 row while it is in cache: the conversion already read every value.
        const int64_t k = first_non_finite(reinterpret_cast<const uint8_t *>(tmp), DType::F32, w.cols);
        if (k >= 0) first_bad[size_t(th)] = std::min(first_bad[size_t(th)], r * w.cols + k);
        if (dtype_quantized(want)) quantize_row(tmp, want, buf + size_t(r) * dst_row, w.cols);
        else convert_f32_to(tmp, want, buf + size_t(r) * dst_row, w.cols);
      });
      if (earliest(first_bad) != INT64_MAX) refuse_non_finite(*t, earliest(first_bad));
      w.data = buf;
      w.dtype = want;
    }
    progress_add(ctl, int64_t(t->nbytes));
    return w;
  };
  auto vec = [&](const std::string &name) -> std::vector<float> {
    const TensorInfo *t = find(name);
    if (!t) raise(KF_ERR_FORMAT, "cannot load model: tensor %s is missing", name.c_str());
    progress_add(ctl, int64_t(t->nbytes));
    return load_vector(*t);
  };

  // A projection in the interleaved layout (where rows16): in place in a converted copy, else in a new one.
  auto projection = [&](const std::string &name) -> Weight {
    // A Q4_K or Q6_K matrix under auto keeps its bits: interleaved from the file's blocks, never
    // dequantized (Q6_K as q8_0 read 8.5 bits per weight instead of 6.56).
    const TensorInfo *t = find(name);
    if (rows16 && t && dtype_load_only(t->dtype) && p.weight_dtype == KF_DTYPE_AUTO && t->shape.size() == 2 &&
        t->shape[0] % 16 == 0 && t->shape[1] % kKQuantBlock == 0) {
      check_cancel(ctl, "load model");
      const int64_t rows = t->shape[0], cols = t->shape[1];
      if (const int64_t bad = first_bad_block(t->data, t->dtype, 0, rows * (cols / kKQuantBlock)); bad >= 0)
        refuse_bad_scale(*t, bad);
      const DType r16 = t->dtype == DType::Q4_K ? DType::Q4_K_R16 : DType::Q6_K_R16;
      uint8_t *dst = new_buffer(size_t(rows) * dtype_row_bytes(r16, cols));
      interleave_rows16(pool, t->dtype, t->data, rows, cols, dst);
      progress_add(ctl, int64_t(t->nbytes));
      return Weight{dst, r16, rows, cols};
    }
    Weight w = matrix(name);
    if (!rows16 || w.rows % 16 != 0 || !dtype_quantized(w.dtype)) return w;
    uint8_t *dst = m.owned.last() == w.data ? m.owned.last()
                                            : new_buffer(size_t(w.rows) * dtype_row_bytes(w.dtype, w.cols));
    interleave_rows16(pool, w.dtype, w.data, w.rows, w.cols, dst);
    w.data = dst;
    w.dtype = w.dtype == DType::Q8_0 ? DType::Q8_0_R16 : DType::Q4_0_R16;
    return w;
  };

  m.embed = matrix("model.embed_tokens.weight");
  const bool has_head = find("lm_head.weight") != nullptr;
  m.lm_head = (c.tie_word_embeddings || !has_head) ? m.embed : projection("lm_head.weight");
  m.final_norm = vec("model.norm.weight");
  m.layers.resize(size_t(c.n_layers));
  for (int i = 0; i < c.n_layers; i++) {
    const std::string pre = "model.layers." + std::to_string(i) + ".";
    LayerWeights &L = m.layers[size_t(i)];
    L.attn_norm = vec(pre + "input_layernorm.weight");
    L.ffn_norm = vec(pre + "post_attention_layernorm.weight");
    L.wq = projection(pre + "self_attn.q_proj.weight");
    L.wk = projection(pre + "self_attn.k_proj.weight");
    L.wv = projection(pre + "self_attn.v_proj.weight");
    L.wo = projection(pre + "self_attn.o_proj.weight");
    L.w_gate = projection(pre + "mlp.gate_proj.weight");
    L.w_up = projection(pre + "mlp.up_proj.weight");
    L.w_down = projection(pre + "mlp.down_proj.weight");
    auto opt = [&](const char *suffix, std::vector<float> &dst) {
      if (find(pre + suffix)) dst = vec(pre + suffix);
    };
    opt("self_attn.q_proj.bias", L.bq);
    opt("self_attn.k_proj.bias", L.bk);
    opt("self_attn.v_proj.bias", L.bv);
    opt("self_attn.o_proj.bias", L.bo);
  }
  progress_set(ctl, total);
  // A file whose every matrix was converted is read no more: free it (read into memory, it would
  // otherwise stay resident beside its converted copy).
  std::vector<const void *> bound = {m.embed.data, m.lm_head.data};
  for (const LayerWeights &L : m.layers)
    for (const Weight *w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) bound.push_back(w->data);
  if (gguf) m.gguf->drop_data_except(bound);
  else m.files.drop_data_except(bound);

  m.inv_freq = rope_inv_freq(c);
  m.n_params = 0;
  for (const TensorInfo &t : all) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    m.n_params += n;
  }
  // Bytes streamed per decoded token: every matrix but the embedding table (one row is gathered).
  const auto bytes = [](const Weight &w) { return int64_t(dtype_row_bytes(w.dtype, w.cols)) * w.rows; };
  const LayerWeights &L0 = m.layers[0];
  const int64_t per_layer = bytes(L0.wq) + bytes(L0.wk) + bytes(L0.wv) + bytes(L0.wo) + bytes(L0.w_gate) +
                            bytes(L0.w_up) + bytes(L0.w_down);
  m.weight_bytes = per_layer * c.n_layers + bytes(m.lm_head);
}

}  // namespace kf

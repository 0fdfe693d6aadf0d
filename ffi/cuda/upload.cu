// upload.cu — the model, sessions, adapters and LoCoCo heads on the device: every buffer a forward
// uses is allocated here (at model load / session create), so a forward allocates nothing unless an
// adapter of a larger rank than ever before appears.
#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "device_state.cuh"

namespace kf::cuda {

// A device object is freed on its own device (the runtime's current device is per thread).
Model::~Model() { cudaSetDevice(engine->device); }
Session::~Session() { cudaSetDevice(engine->device); }
Heads::~Heads() { cudaSetDevice(engine->device); }
Adapter::~Adapter() { cudaSetDevice(engine->device); }

Engine &dev(const kf_engine &e) { return static_cast<Engine &>(*e.state); }
Model &dev(const kf_model &m) { return static_cast<Model &>(*m.device); }
Session &dev(const kf_session &s) { return static_cast<Session &>(*s.device); }
Adapter &dev(const kf_adapter &a) { return static_cast<Adapter &>(*a.device); }
Heads &dev(const kf_lococo_heads &h) { return static_cast<Heads &>(*h.device); }

// The row table's parts, in upload order; LoraTermsDev holds pointers, so it starts 8-byte aligned.
size_t terms_offset(int32_t rows) {
  const size_t b = size_t(rows) * (sizeof(RowMeta) + sizeof(AttnBlock) + sizeof(int32_t));
  return (b + 15) / 16 * 16;
}
size_t meta_bytes(int32_t rows) { return terms_offset(rows) + size_t(rows) * sizeof(LoraTermsDev); }

void scratch_init(Scratch &w, Engine &e, const kf_model &m, int32_t rows) {
  const ModelConfig &c = m.cfg;
  const size_t R = size_t(rows), H = size_t(c.hidden_size), hd = size_t(c.head_dim);
  const size_t qd = size_t(c.n_heads) * hd, kvd = size_t(c.n_kv_heads) * hd, I = size_t(c.intermediate_size);
  const size_t V = size_t(c.vocab_size), es = 2;
  w.rows = rows;
  w.x = DevBuf(e, R * H * 4, "the residual stream");
  w.xn = DevBuf(e, R * H * es, "the normed activations");
  w.q = DevBuf(e, R * qd * 4, "the query projections");
  w.k = DevBuf(e, R * kvd * 4, "the key projections");
  w.v = DevBuf(e, R * kvd * 4, "the value projections");
  w.q16 = DevBuf(e, R * qd * es, "the rotated queries");
  w.attn = DevBuf(e, R * qd * es, "the attention output");
  w.gate = DevBuf(e, R * I * 4, "the MLP gate");
  w.up = DevBuf(e, R * I * 4, "the MLP up projection");
  w.act = DevBuf(e, R * I * es, "the MLP activations");
  w.logits = DevBuf(e, R * V * 4, "the logits");
  w.hidden = DevBuf(e, R * H * 4, "the hidden states");
  w.rope_cs = DevBuf(e, R * hd * 4, "the RoPE table");
  w.embeds = DevBuf(e, R * H * 4, "the input embeddings");
  w.meta = DevBuf(e, meta_bytes(rows), "the row table");
  w.split_rows = std::min(rows, kSplitMaxRows);
  w.partial = DevBuf(e, size_t(kMaxSplits) * size_t(w.split_rows) * size_t(c.n_heads) * (hd + 2) * 4,
                     "the split-KV partials");
  w.staging = HostBuf(meta_bytes(rows));
  w.zero_scores.reserve(R);
}

// The session's (or batch's) scratch grows LoRA room once for a larger rank than before.
void reserve_lora(Scratch &w, Engine &e, int32_t rank) {
  if (rank <= w.lora_rank) return;
  w.lora_tmp = DevBuf(e, size_t(w.rows) * size_t(rank) * 4, "the LoRA scratch");
  w.lora_rank = rank;
}

namespace {
const char *dtype_label(DType d) { return dtype_name(d); }
}  // namespace


BackendStatePtr model_upload(kf_model &m) {
  Doing op("load model");
  Engine &e = dev(*m.engine);
  use_device(e);
  const DType dt = DType(m.weight_dtype);
  if (dt != DType::F16 && dt != DType::BF16)
    raise(KF_ERR_UNSUPPORTED, "cannot load model: the cuda backend holds weights in f16 or bf16, not %s",
          dtype_label(dt));
  std::unique_ptr<Model> dm(new Model());
  dm->engine = &e;
  dm->dt = dt;
  dm->bufs.reserve(size_t(m.cfg.n_layers) * 13 + 8);
  auto upload = [&](const void *src, size_t bytes, const char *what) -> void * {
    dm->bufs.emplace_back(e, bytes, what);
    KF_CUDA(cudaMemcpy(dm->bufs.back().get(), src, bytes, cudaMemcpyHostToDevice));
    return dm->bufs.back().get();
  };
  auto matrix = [&](const Weight &w, const char *what) -> const void * {
    if (w.dtype != dt)
      raise(KF_ERR_INTERNAL, "cannot load model: %s is %s, the model's weights are %s", what, dtype_name(w.dtype),
            dtype_name(dt));
    return upload(w.data, size_t(numel(w)) * dtype_size(dt), what);
  };
  auto vec = [&](const std::vector<float> &v, const char *what) -> const float * {
    return v.empty() ? nullptr : static_cast<const float *>(upload(v.data(), v.size() * 4, what));
  };
  dm->embed = matrix(m.embed, "the embedding table");
  dm->lm_head = m.lm_head.data == m.embed.data ? dm->embed : matrix(m.lm_head, "the LM head");
  dm->final_norm = vec(m.final_norm, "the final norm");
  dm->inv_freq = static_cast<const double *>(upload(m.inv_freq.data(), m.inv_freq.size() * 8, "the RoPE frequencies"));
  dm->layers.resize(m.layers.size());
  for (size_t l = 0; l < m.layers.size(); l++) {
    const LayerWeights &L = m.layers[l];
    DevLayer &D = dm->layers[l];
    D.wq = matrix(L.wq, "q_proj");
    D.wk = matrix(L.wk, "k_proj");
    D.wv = matrix(L.wv, "v_proj");
    D.wo = matrix(L.wo, "o_proj");
    D.w_gate = matrix(L.w_gate, "gate_proj");
    D.w_up = matrix(L.w_up, "up_proj");
    D.w_down = matrix(L.w_down, "down_proj");
    D.attn_norm = vec(L.attn_norm, "input_layernorm");
    D.ffn_norm = vec(L.ffn_norm, "post_attention_layernorm");
    D.bq = vec(L.bq, "q_proj.bias");
    D.bk = vec(L.bk, "k_proj.bias");
    D.bv = vec(L.bv, "v_proj.bias");
    D.bo = vec(L.bo, "o_proj.bias");
  }
  return dm;
}

BackendStatePtr session_alloc(kf_session &s) {
  Doing op("create session");
  const kf_model &m = *s.model;
  Engine &e = dev(*m.engine);
  use_device(e);
  const ModelConfig &c = m.cfg;
  std::unique_ptr<Session> ds(new Session());
  ds->engine = &e;
  ds->layer_stride = int64_t(s.cache.capacity) * c.n_kv_heads * c.head_dim;
  const size_t bytes = size_t(c.n_layers) * size_t(ds->layer_stride) * 2;
  ds->k = DevBuf(e, bytes, "the KV cache keys");
  ds->v = DevBuf(e, bytes, "the KV cache values");
  if (s.cache.compressing()) {
    const size_t cap = size_t(s.cache.capacity), nkv = size_t(c.n_kv_heads);
    const size_t Mc = s.cache.heads ? size_t(s.cache.heads->fused) : 0;
    ds->k_saved = DevBuf(e, bytes, "the saved KV cache keys");
    ds->v_saved = DevBuf(e, bytes, "the saved KV cache values");
    ds->gathered = DevBuf(e, 2 * size_t(ds->layer_stride) * 2, "the kept slots");
    ds->idx = DevBuf(e, nkv * (cap + Mc) * 4, "the slot ranking");
    ds->idx_host.assign(nkv * (cap + Mc), 0);
    ds->order.assign(2 * cap, 0);
    ds->score_host.assign(cap * nkv, 0.0f);
    ds->score_new.assign(cap * nkv, 0.0f);
    ds->rest_score.assign(cap, 0.0f);
    if (s.cache.needs_scores()) {
      const size_t sb = size_t(c.n_layers) * size_t(s.cache.capacity) * size_t(c.n_kv_heads) * 4;
      ds->score = DevBuf(e, sb, "the slot scores");
      ds->score_saved = DevBuf(e, sb, "the saved slot scores");
      KF_CUDA(cudaMemset(ds->score.get(), 0, sb));
    }
    if (const kf_lococo_heads *h = s.cache.heads) {
      const size_t two_hd = 2 * size_t(c.head_dim), Mh = size_t(std::max(0, s.cache.slots - h->fused));
      ds->x_pad = DevBuf(e, nkv * (cap + size_t(h->kernel) - 1) * two_hd * 2, "the LoCoCo inputs");
      ds->x_t = DevBuf(e, nkv * two_hd * cap * 2, "the LoCoCo inputs, transposed");
      ds->kept = DevBuf(e, nkv * std::max<size_t>(Mh, 1) * two_hd * 2, "the heavy hitters");
      ds->mix = DevBuf(e, nkv * Mc * cap * 2, "the LoCoCo mixing weights");
      ds->conv = DevBuf(e, nkv * cap * Mc * 4, "the LoCoCo convolution");
      ds->fused = DevBuf(e, nkv * Mc * two_hd * 4, "the fused slots");
    }
  }
  scratch_init(ds->ws, e, m, s.n_batch);
  return ds;
}

int64_t session_kv_bytes(const Session &s) noexcept {
  return int64_t(s.k.bytes() + s.v.bytes() + s.score.bytes());
}

int64_t session_scratch_bytes(const Session &s) noexcept {
  const Scratch &w = s.ws;
  return int64_t(w.x.bytes() + w.xn.bytes() + w.q.bytes() + w.k.bytes() + w.v.bytes() + w.q16.bytes() +
                 w.attn.bytes() + w.gate.bytes() + w.up.bytes() + w.act.bytes() + w.logits.bytes() +
                 w.hidden.bytes() + w.rope_cs.bytes() + w.embeds.bytes() + w.meta.bytes() + w.partial.bytes() +
                 w.lora_tmp.bytes() + s.score_saved.bytes() + s.gathered.bytes() + s.k_saved.bytes() +
                 s.v_saved.bytes() + s.x_pad.bytes() + s.x_t.bytes() + s.kept.bytes() + s.mix.bytes() +
                 s.conv.bytes() + s.fused.bytes() + s.idx.bytes());
}

BackendStatePtr heads_upload(kf_lococo_heads &h) {
  Doing op("load LoCoCo heads");
  const kf_model &m = *h.model;
  Engine &e = dev(*m.engine);
  use_device(e);
  const DType dt = dev(m).dt;
  std::unique_ptr<Heads> dh(new Heads());
  dh->engine = &e;
  std::vector<uint16_t> w16;
  for (const kf_lococo_heads::Layer &L : h.layers) {
    w16.resize(L.weight.size());
    for (size_t i = 0; i < w16.size(); i++) w16[i] = dt == DType::F16 ? f32_to_f16(L.weight[i]) : f32_to_bf16(L.weight[i]);
    dh->bufs.emplace_back(e, w16.size() * 2, "a LoCoCo convolution");
    KF_CUDA(cudaMemcpy(dh->bufs.back().get(), w16.data(), w16.size() * 2, cudaMemcpyHostToDevice));
    dh->weight.push_back(dh->bufs.back().get());
    dh->bufs.emplace_back(e, L.bias.size() * 4, "a LoCoCo bias");
    KF_CUDA(cudaMemcpy(dh->bufs.back().get(), L.bias.data(), L.bias.size() * 4, cudaMemcpyHostToDevice));
    dh->bias.push_back(dh->bufs.back().as<float>());
  }
  return dh;
}

BackendStatePtr adapter_upload(kf_adapter &a) {
  Doing op("load adapter");
  Engine &e = dev(*a.model->engine);
  use_device(e);
  std::unique_ptr<Adapter> da(new Adapter());
  da->engine = &e;
  da->max_rank = a.max_rank;
  da->proj_mask = a.proj_mask;
  std::vector<LoraPairDev> table(a.layers.size() * kNumProj);
  for (size_t l = 0; l < a.layers.size(); l++) {
    for (int p = 0; p < kNumProj; p++) {
      const LoraPair &pair = a.layers[l].proj[p];
      if (pair.rank == 0) continue;
      LoraPairDev &d = table[l * kNumProj + size_t(p)];
      da->bufs.emplace_back(e, pair.a.size() * 4, "a LoRA A matrix");
      KF_CUDA(cudaMemcpy(da->bufs.back().get(), pair.a.data(), pair.a.size() * 4, cudaMemcpyHostToDevice));
      d.a = da->bufs.back().as<float>();
      da->bufs.emplace_back(e, pair.bt.size() * 4, "a LoRA B matrix");
      KF_CUDA(cudaMemcpy(da->bufs.back().get(), pair.bt.data(), pair.bt.size() * 4, cudaMemcpyHostToDevice));
      d.bt = da->bufs.back().as<float>();
      d.rank = pair.rank;
    }
  }
  da->table = DevBuf(e, table.size() * sizeof(LoraPairDev), "the LoRA table");
  KF_CUDA(cudaMemcpy(da->table.get(), table.data(), table.size() * sizeof(LoraPairDev), cudaMemcpyHostToDevice));
  return da;
}

}  // namespace kf::cuda

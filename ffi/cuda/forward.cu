// forward.cu — the model, sessions and adapters on the device, and the forward pass that drives the
// kernels: forward_rows (forward_cpu.cpp) step for step, with f32 residual stream and f32 matrix-
// product outputs, 16-bit weights, activations and KV cache.
//
// Every buffer is allocated at model load / session create (or, for kf_batch_decode, in a model-level
// scratch grown to the largest batch seen); a forward allocates nothing unless an adapter of a larger
// rank than ever before appears (its LoRA scratch grows once). A forward ends with one stream
// synchronisation, after the logits are copied back.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <numeric>
#include <cstring>
#include <vector>

#include "../src/model.h"
#include "kernels.cuh"

namespace kf::cuda {

namespace {
constexpr int32_t kMaxSplits = 32;       // split-KV pieces at most
constexpr int32_t kSplitMaxRows = 16;    // forwards of more rows fill the GPU without splitting
constexpr int32_t kMinKeysPerSplit = 64;
}  // namespace

namespace {
// What one forward launches, fixed before anything is enqueued (and the key of a captured decode graph).
struct Plan {
  int32_t T = 0, n_blocks = 0, n_splits = 1, max_rank = 0;
  int32_t lora_terms = 0;  // most adapters any row composes (one shrink and expand each)
  uint32_t lora_mask = 0;
  int32_t first = 0;  // first row whose logits are computed (T - 1 unless all_logits)
  bool scoring = false;  // some row's session ranks its slots by score
};
}  // namespace

// Device buffers of one forward of up to `rows` rows (shapes per buffer; dt = the model's dtype).
struct Scratch {
  int32_t rows = 0, lora_rank = 0, split_rows = 0;
  DevBuf x;        // [rows, H] f32 residual stream
  DevBuf xn;       // [rows, H] dt: normed input of a sub-block (a matrix product's x)
  DevBuf q, k, v;  // [rows, nh*hd], [rows, nkv*hd] x2 f32: projection outputs
  DevBuf q16;      // [rows, nh*hd] dt: rotated queries
  DevBuf attn;     // [rows, nh*hd] dt: attention output (o_proj's x)
  DevBuf gate, up; // [rows, I] f32
  DevBuf act;      // [rows, I] dt: silu(gate) * up (down_proj's x)
  DevBuf logits;   // [rows, V] f32
  DevBuf hidden;   // [rows, H] f32 final-normed rows (hidden_out)
  DevBuf rope_cs;  // [rows, hd/2, 2] f32
  DevBuf embeds;   // [rows, H] caller rows in their own dtype (<= 4 bytes each)
  DevBuf meta;     // RowMeta[rows], AttnBlock[rows], int32 ids[rows], LoraTermsDev[rows]: the per-call upload
  DevBuf partial;  // [kMaxSplits, split_rows, nh, hd + 2] f32 split-KV partials
  DevBuf lora_tmp; // [rows, lora_rank] f32: A x of each row
  HostBuf staging; // pinned host copy of `meta`
  // Scoring sessions of the current forward: each one's layer-0 scores, floats per layer, and how many
  // (the slots its rows reach, times n_kv) each layer zeroes before attention adds into them.
  // Reserved for `rows` entries at init.
  struct ScoreRange {
    float *base;
    int64_t stride, count;
  };
  std::vector<ScoreRange> zero_scores;
  // The captured decode step (single-session scratches only), the plan it was captured for, and the
  // LoRA scratch it writes (a regrown one needs a new capture).
  cudaGraphExec_t graph_exec = nullptr;
  Plan graph_plan;
  const void *graph_lora = nullptr;
  bool graph_failed = false;
  Scratch() = default;
  Scratch(const Scratch &) = delete;
  Scratch &operator=(const Scratch &) = delete;
  ~Scratch() {
    if (graph_exec) cudaGraphExecDestroy(graph_exec);
  }
};

struct DevLayer {
  const void *wq = nullptr, *wk = nullptr, *wv = nullptr, *wo = nullptr;  // [nh*hd, H], [nkv*hd, H] x2, [H, nh*hd]
  const void *w_gate = nullptr, *w_up = nullptr, *w_down = nullptr;       // [I, H] x2, [H, I]
  const float *attn_norm = nullptr, *ffn_norm = nullptr;                  // [H] f32
  const float *bq = nullptr, *bk = nullptr, *bv = nullptr, *bo = nullptr; // f32 biases or NULL
};

struct Model : BackendState {
  Engine *engine = nullptr;
  DType dt = DType::BF16;
  std::vector<DevBuf> bufs;  // every upload; freeing them frees the model
  std::vector<DevLayer> layers;
  const void *embed = nullptr;    // [V, H] dt
  const void *lm_head = nullptr;  // [V, H] dt (== embed when tied)
  const float *final_norm = nullptr;  // [H]
  const double *inv_freq = nullptr;   // [hd/2]
  std::unique_ptr<Scratch> batch;     // kf_batch_decode's scratch, grown to the largest batch
  ~Model() override;
};

struct Session : BackendState {
  Engine *engine = nullptr;
  DevBuf k, v;               // [n_layers, capacity, nkv, hd] dt
  int64_t layer_stride = 0;  // capacity * nkv * hd
  // Compressing caches: slot scores [n_layers, capacity, nkv] f32 (lococo, h2o) and their copy at the
  // start of a call; the slots as a call found them (saved before its first shrink, for rollback); the
  // kept slots of a gather [2, capacity, nkv, hd] (h2o, streaming); the ranking chosen on the host.
  DevBuf score, score_saved;
  DevBuf k_saved, v_saved, gathered, idx;
  bool slots_saved = false;
  std::vector<int32_t> idx_host;             // [nkv, capacity + Mc] the ranking, built on the host
  std::vector<int32_t> order;                // [2 * capacity] top_slots scratch
  std::vector<float> score_host, score_new, rest_score;  // [capacity, nkv] x2, [capacity]
  // LOCOCO's fusion scratch (lococo.cu), sized for S <= capacity rest slots.
  DevBuf x_pad, x_t, kept, mix, conv, fused;
  Scratch ws;                // for n_batch rows
  ~Session() override;
};

struct Heads : BackendState {
  Engine *engine = nullptr;
  std::vector<DevBuf> bufs;
  std::vector<const void *> weight;  // per layer [Mc, k·2·hd] in the model's dtype (tap-major)
  std::vector<const float *> bias;   // per layer [Mc]
  ~Heads() override;
};

struct Adapter : BackendState {
  Engine *engine = nullptr;
  std::vector<DevBuf> bufs;  // A and Bt of every adapted projection, f32
  DevBuf table;              // LoraPairDev[n_layers * 7]
  int32_t max_rank = 0;
  uint32_t proj_mask = 0;
  ~Adapter() override;
};

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

namespace {

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

namespace {

// Fills the pinned row table (rows, attention blocks, ids) and decides the launch shapes.
Plan plan_forward(const kf_model &m, Engine &e, Scratch &ws, const Rows &rows, const ChunkInput &in, bool all_logits) {
  const ModelConfig &c = m.cfg;
  Plan p;
  p.T = rows.n;
  if (p.T < 1 || p.T > ws.rows) raise(KF_ERR_INTERNAL, "cannot run the model: %d rows for a scratch of %d", p.T, ws.rows);
  p.first = all_logits ? 0 : p.T - 1;
  // Adapters of the rows: the largest rank sizes the LoRA scratch (terms run one after another and
  // reuse it), the union of masks picks the passes, the longest composition the terms to run.
  for (int32_t r = 0; r < p.T; r++) {
    const AdapterMix *mix = rows.mix[r];
    for (int32_t i = 0; mix && i < mix->n; i++) {
      const kf_adapter *a = mix->adapter[i];
      if (!a->device) raise(KF_ERR_INTERNAL, "cannot run the model: an adapter has no device copy");
      p.max_rank = std::max(p.max_rank, dev(*a).max_rank);
      p.lora_mask |= dev(*a).proj_mask;
    }
    if (mix) p.lora_terms = std::max(p.lora_terms, mix->n);
  }
  reserve_lora(ws, e, p.max_rank);

  auto *meta = static_cast<RowMeta *>(ws.staging.get());
  auto *blocks = reinterpret_cast<AttnBlock *>(meta + ws.rows);
  auto *ids = reinterpret_cast<int32_t *>(blocks + ws.rows);
  auto *terms = reinterpret_cast<LoraTermsDev *>(static_cast<uint8_t *>(ws.staging.get()) + terms_offset(ws.rows));
  const auto *terms_dev =
      reinterpret_cast<const LoraTermsDev *>(static_cast<const uint8_t *>(ws.meta.get()) + terms_offset(ws.rows));
  const int32_t window = c.sliding_window;
  int32_t max_capacity = 0;
  ws.zero_scores.clear();
  for (int32_t r = 0; r < p.T; r++) {
    const kf_session *sess = rows.session[r];
    const Session &ds = dev(*sess);
    RowMeta &rm = meta[r];
    rm.pos = rows.pos[r];
    rm.slot = rows.slot[r];
    rm.begin = window > 0 && !sess->cache.compressing() ? std::max(0, rows.slot[r] + 1 - window) : 0;
    rm.pad = 0;
    rm.k = ds.k.get();
    rm.v = ds.v.get();
    rm.layer_stride = ds.layer_stride;
    rm.lora = nullptr;
    if (const AdapterMix *mix = rows.mix[r]; mix && mix->n > 0) {
      LoraTermsDev &lt = terms[r];
      lt = LoraTermsDev{};
      lt.n = mix->n;
      for (int32_t i = 0; i < mix->n; i++) {
        lt.table[i] = dev(*mix->adapter[i]).table.as<const LoraPairDev>();
        lt.weight[i] = mix->weight[i];
      }
      rm.lora = terms_dev + r;
    }
    rm.score = ds.score.as<float>();
    rm.score_stride = int64_t(sess->cache.capacity) * c.n_kv_heads;
    ids[r] = in.tokens ? in.tokens[r] : 0;
    max_capacity = std::max(max_capacity, sess->cache.capacity);
    // A scoring session's scores of every slot its rows reach are rewritten (zeroed, then summed).
    if (rm.score) {
      if (ws.zero_scores.empty() || ws.zero_scores.back().base != rm.score)
        ws.zero_scores.push_back({rm.score, rm.score_stride, 0});
      ws.zero_scores.back().count = std::max<int64_t>(ws.zero_scores.back().count, int64_t(rm.slot + 1) * c.n_kv_heads);
      p.scoring = true;
    }
  }
  for (int32_t r = 0; r < p.T;) {
    int32_t end = r + 1;
    while (end < p.T && end - r < kBlockRows && rows.session[end] == rows.session[r]) end++;
    AttnBlock &b = blocks[p.n_blocks++];
    b.row0 = r;
    b.n_rows = end - r;
    b.lo = meta[r].begin;
    b.hi = 0;
    for (int32_t i = r; i < end; i++) {
      b.lo = std::min(b.lo, meta[i].begin);
      b.hi = std::max(b.hi, meta[i].slot + 1);
    }
    r = end;
  }
  // Split-KV for few rows: enough CTAs for two waves. Sized by the caches' capacity, not the keys in
  // use, so a session's decode launches stay the same as its context grows (splits past the keys in
  // use return at once).
  if (p.T <= ws.split_rows && p.T <= kSplitMaxRows && !p.scoring) {  // scores need each row whole
    const int64_t ctas = int64_t(p.n_blocks) * c.n_kv_heads;
    const int64_t want = (2 * int64_t(e.sm_count) + ctas - 1) / ctas;
    const int64_t by_capacity = std::max<int64_t>(1, max_capacity / kMinKeysPerSplit);
    p.n_splits = int32_t(std::max<int64_t>(1, std::min<int64_t>({want, by_capacity, kMaxSplits})));
  }
  return p;
}

// Enqueues one forward on the engine's stream: the row table upload, the input rows, every layer, the
// final norm and the LM head into ws.logits ([T - first, V]). Nothing here synchronises or allocates,
// so with token input it can be captured into a graph.
void enqueue_forward(const kf_model &m, Model &dm, Engine &e, Scratch &ws, const Plan &p, const ChunkInput &in,
                     kf_control *ctl) {
  const ModelConfig &c = m.cfg;
  const cudaStream_t s = e.stream;
  const DType dt = dm.dt;
  const int32_t T = p.T, H = c.hidden_size, hd = c.head_dim, nh = c.n_heads, nkv = c.n_kv_heads;
  const int32_t qd = nh * hd, kvd = nkv * hd, I = c.intermediate_size, V = c.vocab_size;
  const float eps = float(c.rms_norm_eps);
  auto *meta_dev = ws.meta.as<RowMeta>();
  auto *blocks_dev = reinterpret_cast<AttnBlock *>(meta_dev + ws.rows);
  auto *ids_dev = reinterpret_cast<int32_t *>(blocks_dev + ws.rows);
  KF_CUDA(cudaMemcpyAsync(ws.meta.get(), ws.staging.get(), meta_bytes(ws.rows), cudaMemcpyHostToDevice, s));

  // x: [T, H] <- embedding rows of the ids, or the caller's rows
  float *x = ws.x.as<float>();
  if (in.tokens) {
    embed_tokens(dm.embed, dt, ids_dev, T, H, x, s);
  } else {
    const size_t bytes = size_t(T) * size_t(H) * dtype_size(in.embeds_dtype);
    KF_CUDA(cudaMemcpyAsync(ws.embeds.get(), in.embeds, bytes, cudaMemcpyHostToDevice, s));
    embed_rows(ws.embeds.get(), in.embeds_dtype, T, H, x, s);
  }
  rope_table(meta_dev, dm.inv_freq, T, hd / 2, ws.rope_cs.as<float>(), s);

  float *q = ws.q.as<float>(), *k = ws.k.as<float>(), *v = ws.v.as<float>();
  float *gate = ws.gate.as<float>(), *up = ws.up.as<float>();
  float *lt = ws.lora_tmp.as<float>();
  auto lora = [&](int l, int proj, const void *xin, int32_t n_in, float *y, int32_t n_out) {
    if (p.lora_mask & (1u << proj))
      lora_apply(xin, dt, meta_dev, T, l, proj, n_in, n_out, p.max_rank, p.lora_terms, lt, y, s);
  };
  for (int32_t l = 0; l < c.n_layers; l++) {
    check_cancel(ctl, "run the model");
    const DevLayer &L = dm.layers[size_t(l)];
    // ---- attention block ----
    rmsnorm(x, L.attn_norm, T, H, eps, ws.xn.get(), dt, s);                 // xn: [T, H]
    matmul(e, ws.xn.get(), L.wq, dt, q, T, qd, H, false, s);                 // q: [T, nh, hd]
    matmul(e, ws.xn.get(), L.wk, dt, k, T, kvd, H, false, s);                // k: [T, nkv, hd]
    matmul(e, ws.xn.get(), L.wv, dt, v, T, kvd, H, false, s);                // v: [T, nkv, hd]
    lora(l, kProjQ, ws.xn.get(), H, q, qd);
    lora(l, kProjK, ws.xn.get(), H, k, kvd);
    lora(l, kProjV, ws.xn.get(), H, v, kvd);
    qkv_finish(q, k, v, L.bq, L.bk, L.bv, ws.rope_cs.as<float>(), meta_dev, T, nh, nkv, hd, l, ws.q16.get(), dt, s);
    for (const Scratch::ScoreRange &z : ws.zero_scores)  // layer l's [slots reached, nkv] of each scoring session
      KF_CUDA(cudaMemsetAsync(z.base + int64_t(l) * z.stride, 0, size_t(z.count) * 4, s));
    attention(ws.q16.get(), meta_dev, blocks_dev, p.n_blocks, T, nh, nkv, hd, l, p.n_splits, ws.partial.as<float>(),
              ws.attn.get(), dt, s);                                         // attn: [T, nh, hd]
    matmul(e, ws.attn.get(), L.wo, dt, x, T, H, qd, true, s);                // x += attn · Wo^T
    if (L.bo) add_bias(x, L.bo, T, H, s);
    lora(l, kProjO, ws.attn.get(), qd, x, H);
    // ---- MLP block: x += down(silu(gate(xn)) * up(xn)) ----
    rmsnorm(x, L.ffn_norm, T, H, eps, ws.xn.get(), dt, s);
    matmul(e, ws.xn.get(), L.w_gate, dt, gate, T, I, H, false, s);           // [T, I]
    matmul(e, ws.xn.get(), L.w_up, dt, up, T, I, H, false, s);               // [T, I]
    lora(l, kProjGate, ws.xn.get(), H, gate, I);
    lora(l, kProjUp, ws.xn.get(), H, up, I);
    swiglu(gate, up, int64_t(T) * I, ws.act.get(), dt, s);                   // act: [T, I]
    matmul(e, ws.act.get(), L.w_down, dt, x, T, H, I, true, s);              // x += act · Wd^T
    lora(l, kProjDown, ws.act.get(), I, x, H);
  }

  // ---- head: final norm, logits of every row (when asked) or only the last ----
  if (in.hidden_out) rmsnorm(x, dm.final_norm, T, H, eps, ws.hidden.get(), DType::F32, s);  // [T, H] f32
  const int32_t n_out = T - p.first;
  rmsnorm(x + int64_t(p.first) * H, dm.final_norm, n_out, H, eps, ws.xn.get(), dt, s);
  matmul(e, ws.xn.get(), dm.lm_head, dt, ws.logits.as<float>(), n_out, V, H, false, s);  // [n_out, V]
}

// KVFOLD_CUDA_GRAPH=0 (or off) runs every decode step eagerly (bench/gpu compares the two).
bool graphs_enabled() {
  const char *v = std::getenv("KVFOLD_CUDA_GRAPH");
  return !(v && (!std::strcmp(v, "0") || !std::strcmp(v, "off")));
}

// The single-session decode step as a CUDA graph: captured on first use (and again when the plan
// changes: split count, adapters' rank or mask, LoRA scratch), replayed after. The row table lives in
// device memory the graph's first node refreshes from the pinned staging, so positions, slots and
// adapters change without a recapture. A capture that fails turns graphs off for this scratch and the
// step runs eagerly.
bool replay_decode_graph(const kf_model &m, Model &dm, Engine &e, Scratch &ws, const Plan &p, const ChunkInput &in) {
  if (ws.graph_failed || !graphs_enabled()) return false;
  const bool same = ws.graph_exec && ws.graph_plan.n_splits == p.n_splits && ws.graph_plan.max_rank == p.max_rank &&
                    ws.graph_plan.lora_mask == p.lora_mask && ws.graph_plan.lora_terms == p.lora_terms && ws.graph_lora == ws.lora_tmp.get();
  if (!same) {
    if (ws.graph_exec) cudaGraphExecDestroy(ws.graph_exec);
    ws.graph_exec = nullptr;
    cudaGraph_t graph = nullptr;
    KF_CUDA(cudaStreamBeginCapture(e.stream, cudaStreamCaptureModeThreadLocal));
    try {
      enqueue_forward(m, dm, e, ws, p, in, nullptr);
    } catch (...) {
      cudaStreamEndCapture(e.stream, &graph);
      if (graph) cudaGraphDestroy(graph);
      cudaGetLastError();
      ws.graph_failed = true;
      return false;
    }
    const cudaError_t end = cudaStreamEndCapture(e.stream, &graph);
    cudaGraphExec_t exec = nullptr;
    const cudaError_t inst = end == cudaSuccess ? cudaGraphInstantiate(&exec, graph, 0) : end;
    if (graph) cudaGraphDestroy(graph);
    if (inst != cudaSuccess) {
      cudaGetLastError();
      ws.graph_failed = true;
      return false;
    }
    ws.graph_exec = exec;
    ws.graph_plan = p;
    ws.graph_lora = ws.lora_tmp.get();
  }
  KF_CUDA(cudaGraphLaunch(ws.graph_exec, e.stream));
  return true;
}

void run_forward(const kf_model &m, Model &dm, Engine &e, Scratch &ws, bool single_session, const Rows &rows,
                 const ChunkInput &in, float *logits, bool all_logits, kf_control *ctl) {
  const ModelConfig &c = m.cfg;
  const cudaStream_t s = e.stream;
  const Plan p = plan_forward(m, e, ws, rows, in, all_logits);
  const bool graphable = single_session && p.T == 1 && in.tokens && !in.hidden_out && !p.scoring;
  // (one row never reaches cuBLAS: matmul runs its own GEMV for M <= kGemvRows, so the capture holds
  // kernels and one copy only)
  check_cancel(ctl, "run the model");
  if (!(graphable && replay_decode_graph(m, dm, e, ws, p, in))) enqueue_forward(m, dm, e, ws, p, in, ctl);
  if (in.hidden_out)
    KF_CUDA(cudaMemcpyAsync(in.hidden_out, ws.hidden.get(), size_t(p.T) * c.hidden_size * 4, cudaMemcpyDeviceToHost, s));
  KF_CUDA(cudaMemcpyAsync(logits, ws.logits.get(), size_t(p.T - p.first) * c.vocab_size * 4, cudaMemcpyDeviceToHost,
                          s));
  KF_CUDA(cudaStreamSynchronize(s));
}

}  // namespace

void forward(const kf_model &m, kf_session *scratch, const Rows &rows, const ChunkInput &in, float *logits,
             bool all_logits, kf_control *ctl) {
  Doing op("run the model");
  Model &dm = dev(m);
  Engine &e = *dm.engine;
  use_device(e);
  Scratch *ws = nullptr;
  if (scratch) {
    ws = &dev(*scratch).ws;
  } else {
    if (!dm.batch || dm.batch->rows < rows.n) {
      dm.batch.reset();  // the old scratch's memory counts against the budget: free it first
      auto fresh = std::make_unique<Scratch>();
      scratch_init(*fresh, e, m, std::max(rows.n, 8));
      dm.batch = std::move(fresh);
    }
    ws = dm.batch.get();
  }
  try {
    run_forward(m, dm, e, *ws, scratch != nullptr, rows, in, logits, all_logits, ctl);
  } catch (...) {
    // Nothing may still be running on the scratch (or reading the pinned staging) once the call returns.
    cudaStreamSynchronize(e.stream);
    cudaGetLastError();
    throw;
  }
}

void read_cache(const kf_session &s, int32_t layer, float *keys, float *values, float *scores, int32_t n_slots) {
  Doing op("read cache");
  const Session &ds = dev(s);
  use_device(*ds.engine);
  if (scores && n_slots > 0) {
    const size_t ns = size_t(n_slots) * size_t(s.cache.n_kv);
    KF_CUDA(cudaMemcpy(scores, ds.score.as<float>() + int64_t(layer) * s.cache.capacity * s.cache.n_kv, ns * 4,
                       cudaMemcpyDeviceToHost));
  }
  const ModelConfig &c = s.model->cfg;
  const size_t n = size_t(n_slots) * size_t(c.n_kv_heads) * size_t(c.head_dim);
  const DType dt = dev(*s.model).dt;
  std::vector<uint16_t> raw(n);
  for (int which = 0; which < 2; which++) {
    float *dst = which == 0 ? keys : values;
    if (!dst || n == 0) continue;
    const uint16_t *src = static_cast<const uint16_t *>((which == 0 ? ds.k : ds.v).get()) + layer * ds.layer_stride;
    KF_CUDA(cudaMemcpy(raw.data(), src, n * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; i++) dst[i] = dt == DType::F16 ? f16_to_f32(raw[i]) : bf16_to_f32(raw[i]);
  }
}

// ---- compressing caches: shrunk on the device; the ranking (top_slots, as kv_cache.cpp and lococo.cpp
// choose) is made on the host from one layer's scores at a time ----

void cache_checkpoint(kf_session &s) {
  Doing op("run the model");
  Session &ds = dev(s);
  ds.slots_saved = false;
  if (!ds.score.get()) return;
  use_device(*ds.engine);
  KF_CUDA(cudaMemcpyAsync(ds.score_saved.get(), ds.score.get(), ds.score.bytes(), cudaMemcpyDeviceToDevice,
                          ds.engine->stream));
}

void cache_restore(kf_session &s) {
  Doing op("roll the cache back");
  Session &ds = dev(s);
  use_device(*ds.engine);
  const cudaStream_t st = ds.engine->stream;
  if (ds.slots_saved) {  // the slots as the call found them
    KF_CUDA(cudaMemcpyAsync(ds.k.get(), ds.k_saved.get(), ds.k.bytes(), cudaMemcpyDeviceToDevice, st));
    KF_CUDA(cudaMemcpyAsync(ds.v.get(), ds.v_saved.get(), ds.v.bytes(), cudaMemcpyDeviceToDevice, st));
    ds.slots_saved = false;
  }
  if (ds.score.get())
    KF_CUDA(cudaMemcpyAsync(ds.score.get(), ds.score_saved.get(), ds.score.bytes(), cudaMemcpyDeviceToDevice, st));
  KF_CUDA(cudaStreamSynchronize(st));
}

void cache_shrink(kf_session &s) {
  Doing op("compress the cache");
  Session &ds = dev(s);
  Engine &e = *ds.engine;
  use_device(e);
  KvCache &c = s.cache;
  const DType dt = dev(*s.model).dt;
  const auto t0 = std::chrono::steady_clock::now();
  const int32_t n = c.n_slots, nkv = c.n_kv, hd = c.head_dim;
  if (!ds.slots_saved) {  // once per call, before its first shrink rewrites slots
    KF_CUDA(cudaMemcpyAsync(ds.k_saved.get(), ds.k.get(), ds.k.bytes(), cudaMemcpyDeviceToDevice, e.stream));
    KF_CUDA(cudaMemcpyAsync(ds.v_saved.get(), ds.v.get(), ds.v.bytes(), cudaMemcpyDeviceToDevice, e.stream));
    ds.slots_saved = true;
  }
  std::vector<int32_t> &ih = ds.idx_host;
  int32_t *order = ds.order.data();
  auto layer_k = [&](int32_t l) { return static_cast<uint16_t *>(ds.k.get()) + int64_t(l) * ds.layer_stride; };
  auto layer_v = [&](int32_t l) { return static_cast<uint16_t *>(ds.v.get()) + int64_t(l) * ds.layer_stride; };
  int32_t kept_slots = 0;

  if (c.kind == KF_CACHE_STREAMING) {
    // The first `sinks` slots and the last `window`, the same for every head and layer.
    kept_slots = c.sinks + c.window;
    for (int32_t g = 0; g < nkv; g++)
      for (int32_t m = 0; m < kept_slots; m++)
        ih[size_t(g) * kept_slots + m] = m < c.sinks ? m : n - c.window + (m - c.sinks);
    KF_CUDA(cudaMemcpyAsync(ds.idx.get(), ih.data(), size_t(nkv) * kept_slots * 4, cudaMemcpyHostToDevice, e.stream));
    for (int32_t l = 0; l < c.n_layers; l++)
      gather_slots(layer_k(l), layer_v(l), ds.idx.as<const int32_t>(), nkv, hd, kept_slots, ds.gathered.get(), dt,
                   e.stream);
  } else {
    const int32_t M = c.slots;
    const kf_lococo_heads *H = c.kind == KF_CACHE_LOCOCO ? c.heads : nullptr;
    if (H && !H->device) raise(KF_ERR_INTERNAL, "cannot compress the cache: the LoCoCo heads have no device copy");
    const int32_t Mc = H ? H->fused : 0, Mh = M - Mc, S = n - Mh;  // h2o: Mh = M heavy hitters, nothing fused
    kept_slots = M;
    for (int32_t l = 0; l < c.n_layers; l++) {
      float *sc_dev = ds.score.as<float>() + int64_t(l) * c.capacity * nkv;
      // Stream-ordered copies to and from pageable memory return once the host side is done with.
      KF_CUDA(cudaMemcpyAsync(ds.score_host.data(), sc_dev, size_t(n) * nkv * 4, cudaMemcpyDeviceToHost, e.stream));
      const float *sc = ds.score_host.data();
      float *sn = ds.score_new.data();
      int32_t *pick_h = ih.data() + int64_t(nkv) * (Mh + S);
      for (int32_t g = 0; g < nkv; g++) {
        // Heavy hitters order[0..Mh), the rest order[Mh..n), both in cache order.
        std::iota(order, order + n, 0);
        top_slots(sc + g, nkv, order, n, Mh);
        for (int32_t m = 0; m < Mh; m++) sn[int64_t(m) * nkv + g] = sc[int64_t(order[m]) * nkv + g];
        if (!H) {
          std::copy(order, order + Mh, ih.data() + int64_t(g) * Mh);
          continue;
        }
        std::copy(order, order + n, ih.data() + int64_t(g) * (Mh + S));
        float *rest = ds.rest_score.data();
        int32_t *pick = order + n;
        for (int32_t t = 0; t < S; t++) rest[t] = sc[int64_t(order[Mh + t]) * nkv + g];
        std::iota(pick, pick + S, 0);
        top_slots(rest, 1, pick, S, Mc);
        std::copy(pick, pick + Mc, pick_h + int64_t(g) * Mc);
        // Scores move with the heavy hitters; a fused slot takes its picked slot's score.
        for (int32_t ch = 0; ch < Mc; ch++) sn[int64_t(Mh + ch) * nkv + g] = rest[pick[ch]];
      }
      const size_t n_idx = H ? size_t(nkv) * (Mh + S + Mc) : size_t(nkv) * Mh;
      KF_CUDA(cudaMemcpyAsync(ds.idx.get(), ih.data(), n_idx * 4, cudaMemcpyHostToDevice, e.stream));
      KF_CUDA(cudaMemcpyAsync(sc_dev, sn, size_t(M) * nkv * 4, cudaMemcpyHostToDevice, e.stream));
      if (!H) {
        gather_slots(layer_k(l), layer_v(l), ds.idx.as<const int32_t>(), nkv, hd, M, ds.gathered.get(), dt, e.stream);
        continue;
      }
      LococoFuse f;
      f.dt = dt;
      f.K = layer_k(l);
      f.V = layer_v(l);
      f.idx = ds.idx.as<const int32_t>();
      f.pick = ds.idx.as<const int32_t>() + int64_t(nkv) * (Mh + S);
      f.weight = dev(*H).weight[size_t(l)];
      f.bias = dev(*H).bias[size_t(l)];
      f.lambda = H->layers[size_t(l)].lambda;
      f.nkv = nkv;
      f.hd = hd;
      f.Mh = Mh;
      f.Mc = Mc;
      f.S = S;
      f.kernel = H->kernel;
      f.pad = (H->kernel - 1) / 2;
      f.x_pad = ds.x_pad.get();
      f.x_t = ds.x_t.get();
      f.kept = ds.kept.get();
      f.mix = ds.mix.get();
      f.conv = ds.conv.as<float>();
      f.fused = ds.fused.as<float>();
      lococo_fuse_layer(f, e.stream);
    }
  }
  KF_CUDA(cudaStreamSynchronize(e.stream));
  c.n_slots = kept_slots;
  c.compressions++;
  c.compress_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace kf::cuda

// forward.cu — the forward pass that drives the kernels: forward_rows (forward_cpu.cpp) step for step,
// with f32 residual stream and f32 matrix-product outputs, 16-bit weights, activations and KV cache.
//
// Its buffers were allocated at model load / session create (upload.cu), or, for kf_batch_decode, in
// a model-level scratch grown to the largest batch seen. A forward ends with one stream
// synchronisation, after the logits are copied back.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <numeric>
#include <cstring>
#include <vector>

#include "device_state.cuh"

namespace kf::cuda {

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

}  // namespace kf::cuda

/**
 * An independent float64 reference forward pass of Hugging Face `LlamaForCausalLM` (and its Mistral
 * and Qwen2 variants), in plain TypeScript: the oracle the native engine is checked against.
 *
 * Readable over fast: one straight pass, a shape comment on every buffer, no caching.
 *
 * @module
 */

import { join } from "node:path";
import { KvfoldError } from "../src/errors.ts";
import { readSafetensorsFile, type TensorView, toFloat64 } from "../src/formats/safetensors.ts";

/** The config fields the forward pass uses, with HF's defaults filled in. */
export interface ReferenceConfig {
  modelType: string;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKeyValueHeads: number;
  headDim: number;
  vocabSize: number;
  rmsNormEps: number;
  ropeTheta: number;
  /** `rope_scaling` as in config.json (`type` is accepted for `rope_type`), or null. */
  ropeScaling: Record<string, unknown> | null;
  tieWordEmbeddings: boolean;
  /** Mistral's `sliding_window`: a query sees keys at most `slidingWindow - 1` positions back; 0 = none. */
  slidingWindow: number;
}

/** A loaded model: its config and every tensor as float64, with shapes. */
export interface ReferenceModel {
  config: ReferenceConfig;
  /** Tensor values by HF name, row-major float64. */
  tensors: Map<string, Float64Array>;
  /** Tensor shapes by HF name. */
  shapes: Map<string, number[]>;
}

/** Optional inputs of {@link referenceLogits}. */
export interface ReferenceOptions {
  /**
   * Input embeddings [K, hidden] placed before the ids at positions 0..K-1; the ids follow from
   * position K. Only the ids' logits are returned.
   */
  prefixEmbeddings?: Float64Array;
}

function num(cfg: Record<string, unknown>, key: string, fallback?: number): number {
  const v = cfg[key] ?? fallback;
  if (typeof v !== "number" || !Number.isFinite(v)) {
    throw new KvfoldError(
      "FORMAT",
      `Cannot load reference model: config.json field ${key} is missing or not a number`,
    );
  }
  return v;
}

/**
 * Builds a {@link ReferenceConfig} from a parsed HF config.json object.
 *
 * @example
 * ```ts
 * import { parseReferenceConfig } from "./reference_forward.ts";
 * const c = parseReferenceConfig({
 *   hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4,
 *   vocab_size: 512, rms_norm_eps: 1e-5,
 * });
 * console.log(c.headDim, c.numKeyValueHeads); // 16 4
 * ```
 */
export function parseReferenceConfig(cfg: Record<string, unknown>): ReferenceConfig {
  const hiddenSize = num(cfg, "hidden_size");
  const numHeads = num(cfg, "num_attention_heads");
  const scaling = (cfg.rope_scaling ?? null) as Record<string, unknown> | null;
  return {
    modelType: String(cfg.model_type ?? "llama"),
    hiddenSize,
    intermediateSize: num(cfg, "intermediate_size"),
    numLayers: num(cfg, "num_hidden_layers"),
    numHeads,
    numKeyValueHeads: num(cfg, "num_key_value_heads", numHeads),
    headDim: num(cfg, "head_dim", hiddenSize / numHeads),
    vocabSize: num(cfg, "vocab_size"),
    rmsNormEps: num(cfg, "rms_norm_eps", 1e-6),
    ropeTheta: num(cfg, "rope_theta", 10000),
    ropeScaling: scaling,
    tieWordEmbeddings: Boolean(cfg.tie_word_embeddings ?? false),
    slidingWindow: cfg.model_type === "mistral" && typeof cfg.sliding_window === "number"
      ? cfg.sliding_window
      : 0,
  };
}

/**
 * Loads an HF model folder (config.json plus `model.safetensors` or the sharded
 * `model.safetensors.index.json`) into float64 arrays.
 *
 * @example
 * ```ts
 * import { makeTestModel } from "../testing/mod.ts";
 * import { loadReferenceModel } from "./reference_forward.ts";
 * const dir = await Deno.makeTempDir();
 * await makeTestModel(dir, { seed: 3 });
 * const model = await loadReferenceModel(dir);
 * console.log(model.shapes.get("model.embed_tokens.weight")); // [512, 64]
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function loadReferenceModel(dir: string): Promise<ReferenceModel> {
  const config = parseReferenceConfig(JSON.parse(await Deno.readTextFile(join(dir, "config.json"))));
  let files: string[];
  try {
    const index = JSON.parse(await Deno.readTextFile(join(dir, "model.safetensors.index.json")));
    files = [...new Set(Object.values(index.weight_map as Record<string, string>))];
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    files = ["model.safetensors"];
  }
  const tensors = new Map<string, Float64Array>();
  const shapes = new Map<string, number[]>();
  for (const f of files) {
    const st = await readSafetensorsFile(join(dir, f));
    for (const [name, view] of st.tensors as Map<string, TensorView>) {
      tensors.set(name, toFloat64(view));
      shapes.set(name, view.shape);
    }
  }
  const model = { config, tensors, shapes };
  checkShapes(model);
  return model;
}

/** Refuses a model whose tensors do not have the shapes its config implies. */
function checkShapes(model: ReferenceModel): void {
  const c = model.config;
  const expect = (name: string, shape: number[], optional = false) => {
    const got = model.shapes.get(name);
    if (got === undefined) {
      if (optional) return;
      throw new KvfoldError("FORMAT", `Cannot load reference model: tensor ${name} is missing`);
    }
    if (got.join(",") !== shape.join(",")) {
      throw new KvfoldError(
        "FORMAT",
        `Cannot load reference model: tensor ${name} has shape [${got}], config says [${shape}]`,
      );
    }
  };
  const [H, I, D, V] = [c.hiddenSize, c.intermediateSize, c.headDim, c.vocabSize];
  expect("model.embed_tokens.weight", [V, H]);
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}`;
    expect(`${p}.input_layernorm.weight`, [H]);
    expect(`${p}.post_attention_layernorm.weight`, [H]);
    expect(`${p}.self_attn.q_proj.weight`, [c.numHeads * D, H]);
    expect(`${p}.self_attn.k_proj.weight`, [c.numKeyValueHeads * D, H]);
    expect(`${p}.self_attn.v_proj.weight`, [c.numKeyValueHeads * D, H]);
    expect(`${p}.self_attn.o_proj.weight`, [H, c.numHeads * D]);
    expect(`${p}.self_attn.q_proj.bias`, [c.numHeads * D], true);
    expect(`${p}.self_attn.k_proj.bias`, [c.numKeyValueHeads * D], true);
    expect(`${p}.self_attn.v_proj.bias`, [c.numKeyValueHeads * D], true);
    expect(`${p}.self_attn.o_proj.bias`, [H], true);
    expect(`${p}.mlp.gate_proj.weight`, [I, H]);
    expect(`${p}.mlp.up_proj.weight`, [I, H]);
    expect(`${p}.mlp.down_proj.weight`, [H, I]);
  }
  expect("model.norm.weight", [H]);
  if (!c.tieWordEmbeddings) expect("lm_head.weight", [V, H]);
}

export function weight(model: ReferenceModel, name: string): Float64Array {
  const w = model.tensors.get(name);
  if (w === undefined) {
    throw new KvfoldError("FORMAT", `Cannot run reference forward: tensor ${name} is missing`);
  }
  return w;
}

// ---------------------------------------------------------------------------------------------
// Building blocks

/** y[n, out] = x[n, in] · W[out, in]ᵀ (+ b[out]), like torch.nn.Linear. */
export function linear(
  x: Float64Array,
  n: number,
  w: Float64Array,
  inDim: number,
  b?: Float64Array,
): Float64Array {
  const outDim = w.length / inDim;
  const y = new Float64Array(n * outDim);
  for (let t = 0; t < n; t++) {
    const xo = t * inDim;
    for (let o = 0; o < outDim; o++) {
      const wo = o * inDim;
      let s = b !== undefined ? b[o] : 0;
      for (let i = 0; i < inDim; i++) s += x[xo + i] * w[wo + i];
      y[t * outDim + o] = s;
    }
  }
  return y;
}

/** HF LlamaRMSNorm per row: w * (x / sqrt(mean(x²) + eps)). x: [n, dim] → [n, dim]. */
export function rmsNorm(x: Float64Array, n: number, w: Float64Array, eps: number): Float64Array {
  const dim = w.length;
  const y = new Float64Array(n * dim);
  for (let t = 0; t < n; t++) {
    let ss = 0;
    for (let i = 0; i < dim; i++) ss += x[t * dim + i] ** 2;
    const r = 1 / Math.sqrt(ss / dim + eps);
    for (let i = 0; i < dim; i++) y[t * dim + i] = w[i] * (x[t * dim + i] * r);
  }
  return y;
}

/**
 * RoPE inverse frequencies [head_dim / 2], HF `ROPE_INIT_FUNCTIONS` semantics: default
 * theta^(-2i/d); `linear` divides by factor; `llama3` follows `_compute_llama3_parameters`.
 *
 * @example
 * ```ts
 * import { ropeInvFreq } from "./reference_forward.ts";
 * console.log(ropeInvFreq(4, 10000, null)); // Float64Array [1, 0.01]
 * ```
 */
export function ropeInvFreq(
  headDim: number,
  theta: number,
  scaling: Record<string, unknown> | null,
): Float64Array {
  const half = headDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / theta ** ((2 * i) / headDim);
  const type = scaling === null ? "default" : String(scaling.rope_type ?? scaling.type ?? "default");
  if (type === "default") return inv;
  const factor = Number(scaling!.factor);
  if (type === "linear") {
    for (let i = 0; i < half; i++) inv[i] /= factor;
    return inv;
  }
  if (type === "llama3") {
    const low = Number(scaling!.low_freq_factor);
    const high = Number(scaling!.high_freq_factor);
    const oldLen = Number(scaling!.original_max_position_embeddings);
    const lowFreqWavelen = oldLen / low;
    const highFreqWavelen = oldLen / high;
    for (let i = 0; i < half; i++) {
      const wavelen = (2 * Math.PI) / inv[i];
      // Low frequencies (long wavelengths) are divided by factor, high ones kept, and the band
      // between is interpolated smoothly.
      const scaled = wavelen > lowFreqWavelen ? inv[i] / factor : inv[i];
      const smooth = (oldLen / wavelen - low) / (high - low);
      const smoothed = ((1 - smooth) * scaled) / factor + smooth * scaled;
      const isMedium = !(wavelen < highFreqWavelen) && !(wavelen > lowFreqWavelen);
      inv[i] = isMedium ? smoothed : scaled;
    }
    return inv;
  }
  throw new KvfoldError(
    "UNSUPPORTED",
    `Cannot run reference forward: rope_scaling type ${type} is not supported`,
  );
}

/**
 * Applies RoPE in place in HF's rotate_half layout: within each head, element i pairs with
 * i + head_dim/2. x: [n, heads, head_dim], row t at position pos0 + t.
 */
export function applyRope(
  x: Float64Array,
  n: number,
  heads: number,
  headDim: number,
  invFreq: Float64Array,
  pos0 = 0,
): void {
  const half = headDim / 2;
  for (let t = 0; t < n; t++) {
    for (let h = 0; h < heads; h++) {
      const base = (t * heads + h) * headDim;
      for (let i = 0; i < half; i++) {
        const angle = (pos0 + t) * invFreq[i];
        const cos = Math.cos(angle);
        const sin = Math.sin(angle);
        const a = x[base + i];
        const b = x[base + i + half];
        // q * cos + rotate_half(q) * sin, rotate_half(q) = [-q2, q1]
        x[base + i] = a * cos - b * sin;
        x[base + i + half] = b * cos + a * sin;
      }
    }
  }
}

/**
 * Causal grouped-query attention. q: [n, heads, hd], k/v: [n, kvHeads, hd] → out [n, heads, hd].
 * Query head h reads kv head floor(h / (heads / kvHeads)); scores scaled by 1/sqrt(hd); a query
 * sees keys at most `window - 1` positions back when window > 0.
 */
function attention(
  q: Float64Array,
  k: Float64Array,
  v: Float64Array,
  n: number,
  heads: number,
  kvHeads: number,
  hd: number,
  window: number,
): Float64Array {
  const out = new Float64Array(n * heads * hd);
  const group = heads / kvHeads;
  const scale = 1 / Math.sqrt(hd);
  const scores = new Float64Array(n); // [n] for one query row
  for (let h = 0; h < heads; h++) {
    const kvh = Math.floor(h / group);
    for (let i = 0; i < n; i++) {
      const qo = (i * heads + h) * hd;
      let max = -Infinity;
      // Keys j0..i: causal, and within the sliding window when the model has one (HF masks i - j >= window).
      const j0 = window > 0 ? Math.max(0, i - window + 1) : 0;
      for (let j = j0; j <= i; j++) {
        const ko = (j * kvHeads + kvh) * hd;
        let s = 0;
        for (let d = 0; d < hd; d++) s += q[qo + d] * k[ko + d];
        scores[j] = s * scale;
        if (scores[j] > max) max = scores[j];
      }
      let sum = 0;
      for (let j = j0; j <= i; j++) {
        scores[j] = Math.exp(scores[j] - max);
        sum += scores[j];
      }
      for (let j = j0; j <= i; j++) {
        const p = scores[j] / sum;
        const vo = (j * kvHeads + kvh) * hd;
        for (let d = 0; d < hd; d++) out[qo + d] += p * v[vo + d];
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The forward pass

/**
 * Runs the decoder over input embeddings [n, hidden] at positions 0..n-1 and returns the
 * final-normed hidden states [n, hidden] (what AutoCompressor summary vectors are taken from).
 *
 * @example
 * ```ts
 * import { makeTestModel } from "../testing/mod.ts";
 * import { embedTokens, loadReferenceModel, referenceHidden } from "./reference_forward.ts";
 * const dir = await Deno.makeTempDir();
 * await makeTestModel(dir, { seed: 3 });
 * const model = await loadReferenceModel(dir);
 * const hidden = referenceHidden(model, embedTokens(model, [1, 40, 41]));
 * console.log(hidden.length); // 3 * 64
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export function referenceHidden(
  model: ReferenceModel,
  inputs: Float64Array,
  /** Called per layer with the post-RoPE queries [n, heads, hd] and keys [n, kvHeads, hd]. */
  onAttention?: (layer: number, q: Float64Array, k: Float64Array) => void,
): Float64Array {
  const c = model.config;
  const H = c.hiddenSize;
  const hd = c.headDim;
  if (inputs.length % H !== 0) {
    throw new RangeError(`Cannot run reference forward: ${inputs.length} input values are not rows of ${H}`);
  }
  const n = inputs.length / H;
  const invFreq = ropeInvFreq(hd, c.ropeTheta, c.ropeScaling);
  const x = Float64Array.from(inputs); // residual stream [n, H]
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}`;
    const w = (s: string) => weight(model, `${p}.${s}`);
    const bias = (s: string) => model.tensors.get(`${p}.${s}`);
    // --- attention block
    const h = rmsNorm(x, n, w("input_layernorm.weight"), c.rmsNormEps); // [n, H]
    const q = linear(h, n, w("self_attn.q_proj.weight"), H, bias("self_attn.q_proj.bias")); // [n, heads, hd]
    const k = linear(h, n, w("self_attn.k_proj.weight"), H, bias("self_attn.k_proj.bias")); // [n, kvHeads, hd]
    const v = linear(h, n, w("self_attn.v_proj.weight"), H, bias("self_attn.v_proj.bias")); // [n, kvHeads, hd]
    applyRope(q, n, c.numHeads, hd, invFreq);
    applyRope(k, n, c.numKeyValueHeads, hd, invFreq);
    onAttention?.(l, q, k);
    const att = attention(q, k, v, n, c.numHeads, c.numKeyValueHeads, hd, c.slidingWindow); // [n, heads, hd]
    const o = linear(att, n, w("self_attn.o_proj.weight"), c.numHeads * hd, bias("self_attn.o_proj.bias")); // [n, H]
    for (let i = 0; i < x.length; i++) x[i] += o[i];
    // --- MLP block: down(silu(gate(h)) * up(h))
    const h2 = rmsNorm(x, n, w("post_attention_layernorm.weight"), c.rmsNormEps); // [n, H]
    const gate = linear(h2, n, w("mlp.gate_proj.weight"), H, bias("mlp.gate_proj.bias")); // [n, I]
    const up = linear(h2, n, w("mlp.up_proj.weight"), H, bias("mlp.up_proj.bias")); // [n, I]
    for (let i = 0; i < gate.length; i++) gate[i] = (gate[i] / (1 + Math.exp(-gate[i]))) * up[i];
    const down = linear(gate, n, w("mlp.down_proj.weight"), c.intermediateSize, bias("mlp.down_proj.bias")); // [n, H]
    for (let i = 0; i < x.length; i++) x[i] += down[i];
  }
  return rmsNorm(x, n, weight(model, "model.norm.weight"), c.rmsNormEps); // [n, H]
}

/**
 * Embedding rows of `ids`: [ids.length, hidden].
 *
 * @example
 * ```ts
 * import { makeTestModel } from "../testing/mod.ts";
 * import { embedTokens, loadReferenceModel } from "./reference_forward.ts";
 * const dir = await Deno.makeTempDir();
 * await makeTestModel(dir, { seed: 3 });
 * console.log(embedTokens(await loadReferenceModel(dir), [1, 2]).length); // 128
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export function embedTokens(model: ReferenceModel, ids: readonly number[]): Float64Array {
  const { hiddenSize: H, vocabSize: V } = model.config;
  const table = weight(model, "model.embed_tokens.weight"); // [V, H]
  const out = new Float64Array(ids.length * H);
  ids.forEach((id, t) => {
    if (!Number.isInteger(id) || id < 0 || id >= V) {
      throw new RangeError(`Cannot embed tokens: id ${id} at index ${t} is outside the vocabulary of ${V}`);
    }
    out.set(table.subarray(id * H, (id + 1) * H), t * H);
  });
  return out;
}

/**
 * Logits [ids.length, vocab] (row-major) of a causal LM forward over `ids` at positions
 * 0..n-1, or, with `prefixEmbeddings` [K, hidden], over those rows at 0..K-1 and the ids from K on
 * (only the ids' rows are returned).
 *
 * @example
 * ```ts
 * import { makeTestModel } from "../testing/mod.ts";
 * import { loadReferenceModel, referenceLogits } from "./reference_forward.ts";
 * const dir = await Deno.makeTempDir();
 * await makeTestModel(dir, { seed: 3 });
 * const logits = referenceLogits(await loadReferenceModel(dir), [1, 100, 200]);
 * console.log(logits.length); // 3 * 512
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export function referenceLogits(
  model: ReferenceModel,
  ids: readonly number[],
  opts: ReferenceOptions = {},
): Float64Array {
  const c = model.config;
  const H = c.hiddenSize;
  const prefix = opts.prefixEmbeddings ?? new Float64Array(0);
  if (prefix.length % H !== 0) {
    throw new RangeError(
      `Cannot run reference forward: prefixEmbeddings length ${prefix.length} is not rows of ${H}`,
    );
  }
  const K = prefix.length / H;
  const inputs = new Float64Array(prefix.length + ids.length * H); // [K + n, H]
  inputs.set(prefix, 0);
  inputs.set(embedTokens(model, ids), prefix.length);
  const hidden = referenceHidden(model, inputs).subarray(K * H); // [n, H]
  const head = c.tieWordEmbeddings
    ? weight(model, "model.embed_tokens.weight")
    : weight(model, "lm_head.weight");
  return linear(hidden, ids.length, head, H); // [n, V]
}

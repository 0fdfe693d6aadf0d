/**
 * An independent float64 reference of ONE LoCoCo compression step of one layer, exactly as
 * DESIGN.md ("LoCoCo: fixed-size KV cache by convolutional fusion") states it, plus the attention
 * scores that drive it. The oracle the native cache policy is checked against.
 *
 * Readable over fast: straight loops, a shape comment on every buffer, no caching.
 *
 * Layouts (row-major, float64):
 * - caches K, V: [S_total, n_kv, hd] (post-RoPE keys, values), slot-major as the engine stores them;
 * - scores: [S_total, n_kv], already summed over the query heads of each KV group;
 * - conv weight [Mc, 2·hd, k] (PyTorch Conv1d layout: out channel, in channel, tap), bias [Mc].
 *
 * Choices beyond DESIGN.md's text:
 * - ties in every top-n by score are broken by the lower cache index first;
 * - the step compresses whenever S_total > M (the "+16" hysteresis is the caller's decision);
 *   with S_total <= M nothing is compressed and the cache is returned unchanged (so S, the
 *   number of non-heavy slots, is always > Mc when fusion runs: S < Mc cannot arise);
 * - GQA: one compressor per layer, shared by all KV heads; heavy hitters, the one-hot selection
 *   and the fusion are done per KV head with that head's own scores.
 *
 * @module
 */

import {
  applyRope,
  embedTokens,
  linear,
  type ReferenceModel,
  rmsNorm,
  ropeInvFreq,
  weight,
} from "./reference_forward.ts";

/** Inputs of {@link referenceLococoStep}. */
export interface LococoStepInput {
  /** [S_total, n_kv, hd]: post-RoPE keys. */
  keys: ArrayLike<number>;
  /** [S_total, n_kv, hd]: values. */
  values: ArrayLike<number>;
  /** [S_total, n_kv]: each slot's score (column sums of the last forward's probabilities). */
  scores: ArrayLike<number>;
  /** n_kv. */
  numKvHeads: number;
  /** hd. */
  headDim: number;
  /** M: slots per KV head after the step. */
  slots: number;
  /** r: keep rate, 0 < r < 1; Mc = floor(M · (1 − r)). */
  keepRate: number;
  /** [Mc, 2·hd, k], k odd. */
  weight: ArrayLike<number>;
  /** [Mc]. */
  bias: ArrayLike<number>;
  /** k. */
  kernel: number;
  /** λ. */
  lambda: number;
}

/** Per-KV-head intermediate results of a step (for checks and debugging). */
export interface LococoHeadTrace {
  /** Cache indices of the Mh heavy hitters, in cache order. */
  heavy: number[];
  /** Cache indices of the S remaining slots, in cache order (the conv's slot axis). */
  rest: number[];
  /** Positions in `rest` (0..S-1) of the Mc one-hot selected slots, in cache order. */
  selected: number[];
  /** [Mc, S]: softmax_over_slots(ReLU(Conv1d(x))). */
  softmax: Float64Array;
  /** [Mc, S]: W' = (1 − λ) R + λ W. */
  mix: Float64Array;
}

/** Output of {@link referenceLococoStep}. */
export interface LococoStepOutput {
  /** False when S_total <= M: the cache is returned unchanged. */
  compressed: boolean;
  /** Slots per KV head in the output: M when compressed, else S_total. */
  slots: number;
  /** [slots, n_kv, hd]: per head [heavy hitters ; fused] when compressed. */
  keys: Float64Array;
  /** [slots, n_kv, hd]. */
  values: Float64Array;
  /** Per KV head, when compressed. */
  trace: LococoHeadTrace[];
}

/**
 * Indices of the top `n` entries of `score` (ties: lower index first), returned in ascending
 * (cache) order.
 */
export function topIndices(score: ArrayLike<number>, n: number): number[] {
  const idx = Array.from({ length: score.length }, (_, i) => i);
  idx.sort((a, b) => (score[b] - score[a]) || (a - b));
  return idx.slice(0, n).sort((a, b) => a - b);
}

/**
 * One compression step of one layer (DESIGN.md): per KV head, keep the top Mh = M − Mc slots by
 * score (in cache order); over the other S slots (in cache order) compute
 * W = softmax_over_slots(ReLU(Conv1d(2·hd → Mc, k, same zero padding)(concat(K_r, V_r)))), R = one-hot
 * rows of the next Mc slots by score (in cache order), W' = (1 − λ) R + λ W, and the new cache
 * [heavy ; W' K_r] / [heavy ; W' V_r] of M slots.
 */
export function referenceLococoStep(input: LococoStepInput): LococoStepOutput {
  const { numKvHeads: nKv, headDim: hd, slots: M, keepRate: r, kernel: k, lambda } = input;
  const sTotal = input.scores.length / nKv;
  if (!Number.isInteger(sTotal)) {
    throw new Error(`scores length ${input.scores.length} is not S_total * n_kv`);
  }
  if (input.keys.length !== sTotal * nKv * hd || input.values.length !== sTotal * nKv * hd) {
    throw new Error(`keys/values must be [S_total=${sTotal}, n_kv=${nKv}, hd=${hd}]`);
  }
  if (k % 2 !== 1) throw new Error(`kernel ${k} must be odd`);
  const mc = Math.floor(M * (1 - r)); // Mc, fused slots
  const mh = M - mc; // Mh, heavy hitters
  if (input.weight.length !== mc * 2 * hd * k) throw new Error(`weight must be [Mc=${mc}, ${2 * hd}, ${k}]`);
  if (input.bias.length !== mc) throw new Error(`bias must be [Mc=${mc}]`);

  if (sTotal <= M) {
    return {
      compressed: false,
      slots: sTotal,
      keys: Float64Array.from(input.keys),
      values: Float64Array.from(input.values),
      trace: [],
    };
  }

  const outK = new Float64Array(M * nKv * hd); // [M, n_kv, hd]
  const outV = new Float64Array(M * nKv * hd); // [M, n_kv, hd]
  const trace: LococoHeadTrace[] = [];
  const pad = (k - 1) / 2;
  const twoHd = 2 * hd;

  for (let g = 0; g < nKv; g++) {
    const score = new Float64Array(sTotal); // [S_total]: this head's scores
    for (let s = 0; s < sTotal; s++) score[s] = input.scores[s * nKv + g];
    const kAt = (s: number, d: number) => input.keys[(s * nKv + g) * hd + d];
    const vAt = (s: number, d: number) => input.values[(s * nKv + g) * hd + d];

    // Heavy hitters: top Mh by score, in cache order.
    const heavy = topIndices(score, mh);
    const isHeavy = new Set(heavy);
    const rest: number[] = []; // [S]: the other slots, in cache order
    for (let s = 0; s < sTotal; s++) if (!isHeavy.has(s)) rest.push(s);
    const S = rest.length; // = S_total − Mh > Mc

    // x = concat(K_r, V_r): [2·hd, S] (channels along the slot axis).
    const x = new Float64Array(twoHd * S);
    for (let t = 0; t < S; t++) {
      for (let d = 0; d < hd; d++) {
        x[d * S + t] = kAt(rest[t], d);
        x[(hd + d) * S + t] = vAt(rest[t], d);
      }
    }

    // Conv1d(2·hd → Mc, k, padding (k−1)/2 zeros each side, stride 1), then ReLU: [Mc, S].
    // PyTorch cross-correlation: y[c, t] = b[c] + Σ_i Σ_j w[c, i, j] · x[i, t + j − pad].
    const y = new Float64Array(mc * S);
    for (let c = 0; c < mc; c++) {
      for (let t = 0; t < S; t++) {
        let acc = input.bias[c];
        for (let i = 0; i < twoHd; i++) {
          for (let j = 0; j < k; j++) {
            const u = t + j - pad;
            if (u < 0 || u >= S) continue; // zero padding
            acc += input.weight[(c * twoHd + i) * k + j] * x[i * S + u];
          }
        }
        y[c * S + t] = Math.max(0, acc);
      }
    }

    // W = softmax over slots, per output channel: [Mc, S], rows sum to 1.
    const W = new Float64Array(mc * S);
    for (let c = 0; c < mc; c++) {
      let max = -Infinity;
      for (let t = 0; t < S; t++) max = Math.max(max, y[c * S + t]);
      let sum = 0;
      for (let t = 0; t < S; t++) sum += W[c * S + t] = Math.exp(y[c * S + t] - max);
      for (let t = 0; t < S; t++) W[c * S + t] /= sum;
    }

    // R: one-hot rows of the next Mc slots by score among the S remaining, in cache order: [Mc, S].
    const restScore = rest.map((s) => score[s]); // [S]
    const selected = topIndices(restScore, mc); // [Mc]: positions in rest, ascending
    // W' = (1 − λ) R + λ W: [Mc, S].
    const mix = new Float64Array(mc * S);
    for (let c = 0; c < mc; c++) {
      for (let t = 0; t < S; t++) {
        mix[c * S + t] = (1 - lambda) * (t === selected[c] ? 1 : 0) + lambda * W[c * S + t];
      }
    }

    // New cache for head g: rows 0..Mh-1 heavy hitters, rows Mh..M-1 fused = W' K_r, W' V_r.
    for (let m = 0; m < mh; m++) {
      for (let d = 0; d < hd; d++) {
        outK[(m * nKv + g) * hd + d] = kAt(heavy[m], d);
        outV[(m * nKv + g) * hd + d] = vAt(heavy[m], d);
      }
    }
    for (let c = 0; c < mc; c++) {
      for (let d = 0; d < hd; d++) {
        let ak = 0, av = 0;
        for (let t = 0; t < S; t++) {
          const w = mix[c * S + t];
          if (w === 0) continue; // exact: a zero weight adds nothing (and skips 0 · Inf)
          ak += w * kAt(rest[t], d);
          av += w * vAt(rest[t], d);
        }
        outK[((mh + c) * nKv + g) * hd + d] = ak;
        outV[((mh + c) * nKv + g) * hd + d] = av;
      }
    }
    trace.push({ heavy, rest, selected, softmax: W, mix });
  }
  return { compressed: true, slots: M, keys: outK, values: outV, trace };
}

/** Inputs of {@link referenceScores}. */
export interface ScoresInput {
  /** [T, n_heads, hd]: post-RoPE queries. */
  queries: ArrayLike<number>;
  /** [S, n_kv, hd]: post-RoPE keys the queries attend to. */
  keys: ArrayLike<number>;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  /** Whether query t (0..T-1) sees key s (0..S-1). */
  visible: (t: number, s: number) => boolean;
  /** Logit scale; default 1 / sqrt(hd). */
  scale?: number;
}

/**
 * Slot scores of one forward: for each key slot s and KV head g, the sum over queries t and over
 * the query heads h of g's group (h in [g·n_rep, (g+1)·n_rep), n_rep = n_heads / n_kv, HF's
 * `repeat_kv` order) of softmax_s(scale · q_{t,h} · k_{s,g}) over the visible keys.
 * Returns [S, n_kv]. Throws when a query sees no key.
 */
export function referenceScores(input: ScoresInput): Float64Array {
  const { numHeads: nh, numKvHeads: nKv, headDim: hd, visible } = input;
  if (nh % nKv !== 0) throw new Error(`n_heads ${nh} is not a multiple of n_kv ${nKv}`);
  const rep = nh / nKv;
  const T = input.queries.length / (nh * hd);
  const S = input.keys.length / (nKv * hd);
  if (!Number.isInteger(T) || !Number.isInteger(S)) {
    throw new Error("queries/keys lengths do not match shapes");
  }
  const scale = input.scale ?? 1 / Math.sqrt(hd);
  const out = new Float64Array(S * nKv); // [S, n_kv]
  const logits = new Float64Array(S); // [S]: one query head's logits
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < nh; h++) {
      const g = Math.floor(h / rep);
      let max = -Infinity;
      for (let s = 0; s < S; s++) {
        if (!visible(t, s)) {
          logits[s] = -Infinity;
          continue;
        }
        let dot = 0;
        for (let d = 0; d < hd; d++) {
          dot += input.queries[(t * nh + h) * hd + d] * input.keys[(s * nKv + g) * hd + d];
        }
        logits[s] = scale * dot;
        max = Math.max(max, logits[s]);
      }
      if (max === -Infinity) throw new Error(`query ${t} sees no key`);
      let sum = 0;
      for (let s = 0; s < S; s++) sum += logits[s] === -Infinity ? 0 : Math.exp(logits[s] - max);
      for (let s = 0; s < S; s++) {
        if (logits[s] !== -Infinity) out[s * nKv + g] += Math.exp(logits[s] - max) / sum;
      }
    }
  }
  return out;
}

/**
 * DESIGN.md's segment visibility: keys are [cache (cacheLen slots) ; the segment's own keys];
 * every cache slot is visible, causal within the segment.
 */
export function segmentVisible(cacheLen: number): (t: number, s: number) => boolean {
  return (t, s) => s < cacheLen || s - cacheLen <= t;
}

/** Heads and shape of {@link referenceSegmentedLoss}. */
export interface SegmentedLossOptions {
  /** M. */
  slots: number;
  /** r. */
  keepRate: number;
  /** k. */
  kernel: number;
  /** B. */
  segment: number;
  /** Per layer: conv weight [Mc, 2·hd, k] (PyTorch layout), bias [Mc], λ. */
  layers: readonly { weight: ArrayLike<number>; bias: ArrayLike<number>; lambda: number }[];
}

/**
 * The loss LoCoCo calibration minimises, in float64: `ids` run in segments of B tokens at their true
 * positions; before a segment, a cache of more than M + 16 slots is compressed per layer by
 * {@link referenceLococoStep} with the scores of the last forward; the segment attends to [cache ;
 * its own rows] (every cache slot visible, causal within); each token predicts the next. Returns the
 * mean over segments of each segment's mean cross-entropy.
 */
export function referenceSegmentedLoss(
  model: ReferenceModel,
  ids: readonly number[],
  opts: SegmentedLossOptions,
): number {
  const c = model.config;
  const H = c.hiddenSize, hd = c.headDim, nh = c.numHeads, nKv = c.numKeyValueHeads, V = c.vocabSize;
  const invFreq = ropeInvFreq(hd, c.ropeTheta, c.ropeScaling);
  const scale = 1 / Math.sqrt(hd);
  const rep = nh / nKv;
  let keys: Float64Array[] = Array.from({ length: c.numLayers }, () => new Float64Array(0)); // [n, nKv, hd]
  let values: Float64Array[] = Array.from({ length: c.numLayers }, () => new Float64Array(0));
  let scores: Float64Array[] = Array.from({ length: c.numLayers }, () => new Float64Array(0)); // [n, nKv]
  let n = 0;
  const losses: number[] = [];
  for (let p0 = 0; p0 < ids.length; p0 += opts.segment) {
    const T = Math.min(opts.segment, ids.length - p0);
    const targets: [number, number][] = [];
    for (let t = 0; t < T && p0 + t + 1 < ids.length; t++) targets.push([t, ids[p0 + t + 1]]);
    if (targets.length === 0) break;
    if (n > opts.slots + 16) {
      for (let l = 0; l < c.numLayers; l++) {
        const out = referenceLococoStep({
          keys: keys[l],
          values: values[l],
          scores: scores[l],
          numKvHeads: nKv,
          headDim: hd,
          slots: opts.slots,
          keepRate: opts.keepRate,
          weight: opts.layers[l].weight,
          bias: opts.layers[l].bias,
          kernel: opts.kernel,
          lambda: opts.layers[l].lambda,
        });
        keys[l] = out.keys;
        values[l] = out.values;
      }
      n = opts.slots;
    }
    const x = embedTokens(model, ids.slice(p0, p0 + T)); // [T, H]
    const nextKeys: Float64Array[] = [], nextValues: Float64Array[] = [], nextScores: Float64Array[] = [];
    for (let l = 0; l < c.numLayers; l++) {
      const p = `model.layers.${l}`;
      const w = (s: string) => weight(model, `${p}.${s}`);
      const bias = (s: string) => model.tensors.get(`${p}.${s}`);
      const h = rmsNorm(x, T, w("input_layernorm.weight"), c.rmsNormEps);
      const q = linear(h, T, w("self_attn.q_proj.weight"), H, bias("self_attn.q_proj.bias")); // [T, nh, hd]
      const k = linear(h, T, w("self_attn.k_proj.weight"), H, bias("self_attn.k_proj.bias")); // [T, nKv, hd]
      const v = linear(h, T, w("self_attn.v_proj.weight"), H, bias("self_attn.v_proj.bias"));
      applyRope(q, T, nh, hd, invFreq, p0);
      applyRope(k, T, nKv, hd, invFreq, p0);
      const K = new Float64Array((n + T) * nKv * hd), Vv = new Float64Array((n + T) * nKv * hd); // [cache ; own]
      K.set(keys[l].subarray(0, n * nKv * hd));
      K.set(k, n * nKv * hd);
      Vv.set(values[l].subarray(0, n * nKv * hd));
      Vv.set(v, n * nKv * hd);
      const visible = segmentVisible(n);
      nextScores.push(
        referenceScores({ queries: q, keys: K, numHeads: nh, numKvHeads: nKv, headDim: hd, visible }),
      );
      const att = new Float64Array(T * nh * hd); // [T, nh, hd]
      const logit = new Float64Array(n + T);
      for (let t = 0; t < T; t++) {
        for (let hh = 0; hh < nh; hh++) {
          const g = Math.floor(hh / rep);
          let mx = -Infinity;
          for (let s = 0; s < n + T; s++) {
            if (!visible(t, s)) continue;
            let d = 0;
            for (let i = 0; i < hd; i++) d += q[(t * nh + hh) * hd + i] * K[(s * nKv + g) * hd + i];
            logit[s] = d * scale;
            mx = Math.max(mx, logit[s]);
          }
          let sum = 0;
          for (let s = 0; s < n + T; s++) if (visible(t, s)) sum += Math.exp(logit[s] - mx);
          for (let s = 0; s < n + T; s++) {
            if (!visible(t, s)) continue;
            const pr = Math.exp(logit[s] - mx) / sum;
            for (let i = 0; i < hd; i++) att[(t * nh + hh) * hd + i] += pr * Vv[(s * nKv + g) * hd + i];
          }
        }
      }
      const o = linear(att, T, w("self_attn.o_proj.weight"), nh * hd, bias("self_attn.o_proj.bias"));
      for (let i = 0; i < x.length; i++) x[i] += o[i];
      const h2 = rmsNorm(x, T, w("post_attention_layernorm.weight"), c.rmsNormEps);
      const gate = linear(h2, T, w("mlp.gate_proj.weight"), H);
      const up = linear(h2, T, w("mlp.up_proj.weight"), H);
      for (let i = 0; i < gate.length; i++) gate[i] = (gate[i] / (1 + Math.exp(-gate[i]))) * up[i];
      const down = linear(gate, T, w("mlp.down_proj.weight"), c.intermediateSize);
      for (let i = 0; i < x.length; i++) x[i] += down[i];
      nextKeys.push(K);
      nextValues.push(Vv);
    }
    keys = nextKeys;
    values = nextValues;
    scores = nextScores;
    n += T;
    const xn = rmsNorm(x, T, weight(model, "model.norm.weight"), c.rmsNormEps);
    const head = c.tieWordEmbeddings
      ? weight(model, "model.embed_tokens.weight")
      : weight(model, "lm_head.weight");
    const logits = linear(xn, T, head, H); // [T, V]
    let loss = 0;
    for (const [t, y] of targets) {
      const row = logits.subarray(t * V, (t + 1) * V);
      let mx = -Infinity;
      for (const z of row) mx = Math.max(mx, z);
      let sum = 0;
      for (const z of row) sum += Math.exp(z - mx);
      loss += Math.log(sum) + mx - row[y];
    }
    losses.push(loss / targets.length);
  }
  return losses.reduce((a, b) => a + b, 0) / losses.length;
}

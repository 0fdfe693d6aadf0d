/**
 * The LoCoCo heads file (DESIGN.md, "LoCoCo: fixed-size KV cache by convolutional fusion"): one
 * safetensors file holding, per layer i,
 *
 * - `model.layers.{i}.self_attn.memory_saver.layers.0.weight` [Mc, 2·head_dim, k] (the Conv1d),
 * - `model.layers.{i}.self_attn.memory_saver.layers.0.bias` [Mc],
 * - `model.layers.{i}.self_attn.memory_saver.normalizer` [1] (λ, the one-hot mix),
 *
 * with Mc = floor(M · (1 − r)), plus the `__metadata__` keys `kvfold.lococo.slots` (M),
 * `kvfold.lococo.keep_rate` (r), `kvfold.lococo.kernel` (k) and `kvfold.lococo.segment` (B) as
 * decimal strings (the released checkpoints do not record them).
 *
 * Mc is computed in float64 exactly as written, `Math.floor(M * (1 - r))`; the native loader must
 * compute it the same way.
 *
 * @module
 */

import { KvfoldError } from "../errors.ts";
import { readSafetensorsFile, type TensorInput, toFloat64, writeSafetensorsFile } from "./safetensors.ts";
import { uniformTensor } from "../_seeded_random.ts";

/** Metadata keys of a heads file. */
export const LOCOCO_METADATA_KEYS = Object.freeze(
  {
    slots: "kvfold.lococo.slots",
    keepRate: "kvfold.lococo.keep_rate",
    kernel: "kvfold.lococo.kernel",
    segment: "kvfold.lococo.segment",
  } as const,
);

/** Tensor names of layer `i` in a heads file. */
export function lococoTensorNames(i: number): { weight: string; bias: string; normalizer: string } {
  const p = `model.layers.${i}.self_attn.memory_saver`;
  return { weight: `${p}.layers.0.weight`, bias: `${p}.layers.0.bias`, normalizer: `${p}.normalizer` };
}

/** Mc = floor(M · (1 − r)): the number of fused slots per KV head. */
export function lococoFusedSlots(slots: number, keepRate: number): number {
  return Math.floor(slots * (1 - keepRate));
}

/** One layer's compressor, as float64. */
export interface LococoLayerHeads {
  /** Conv1d weight [Mc, 2·head_dim, k], row-major (PyTorch layout: out, in, tap). */
  weight: Float64Array;
  /** Conv1d bias [Mc]. */
  bias: Float64Array;
  /** λ, the weight of the convolution's softmax against the one-hot selection. */
  lambda: number;
}

/** A loaded and validated heads file. */
export interface LococoHeadsFile {
  /** M: slots per KV head after a compression. */
  slots: number;
  /** r: keep rate; Mh = M − Mc heavy hitters are kept. */
  keepRate: number;
  /** k: the Conv1d kernel size (odd). */
  kernel: number;
  /** B: prefill segment length in tokens. */
  segment: number;
  /** Mc = floor(M · (1 − r)). */
  fusedSlots: number;
  /** head_dim the heads were made for (from the weight shape; equals the model's). */
  headDim: number;
  /** One entry per model layer. */
  layers: LococoLayerHeads[];
}

/** The model facts a heads file is checked against. */
export interface LococoModelShape {
  /** num_hidden_layers. */
  layers: number;
  /** head_dim. */
  headDim: number;
}

/** Given values of one layer for {@link writeLococoHeads} (instead of random ones). */
export interface LococoLayerValues {
  /** [Mc, 2·head_dim, k]. */
  weight: ArrayLike<number>;
  /** [Mc]. */
  bias: ArrayLike<number>;
  /** λ. */
  lambda: number;
}

/** Options of {@link writeLococoHeads}. */
export interface WriteLococoHeadsOptions {
  /** Number of layers (num_hidden_layers of the model). */
  layers: number;
  headDim: number;
  /** M. */
  slots: number;
  /** r, 0 < r < 1. */
  keepRate: number;
  /** k, odd. */
  kernel: number;
  /** B. */
  segment: number;
  /** PRNG seed of the random weights. Default 0. */
  seed?: number;
  /** λ of every layer for random heads. Default 0.5 (both terms of W' contribute). */
  lambda?: number;
  /** Exact values per layer (length `layers`); when given, `seed` and `lambda` are not used. */
  values?: readonly LococoLayerValues[];
  /** Tensor dtype. Default `"F32"` (the released checkpoints are 32-bit). */
  dtype?: "F32" | "F16" | "BF16";
}

function invalid(what: string): KvfoldError {
  return new KvfoldError("INVALID_ARGUMENT", `Cannot write LoCoCo heads: ${what}`);
}

/** Checks (M, r, k, B) and returns Mc; `fail` builds the error. */
export function checkLococoShape(
  h: { slots: number; keepRate: number; kernel: number; segment: number },
  fail: (why: string) => KvfoldError,
): number {
  if (!Number.isSafeInteger(h.slots) || h.slots < 1) {
    throw fail(`slots M must be an integer >= 1, got ${h.slots}`);
  }
  if (!Number.isSafeInteger(h.segment) || h.segment < 1) {
    throw fail(`segment B must be an integer >= 1, got ${h.segment}`);
  }
  if (!Number.isSafeInteger(h.kernel) || h.kernel < 1) {
    throw fail(`kernel k must be a positive integer, got ${h.kernel}`);
  }
  if (h.kernel % 2 === 0) throw fail(`kernel k must be odd for "same" padding, got ${h.kernel}`);
  if (!(Number.isFinite(h.keepRate) && h.keepRate > 0 && h.keepRate < 1)) {
    throw fail(`keep rate r must satisfy 0 < r < 1, got ${h.keepRate}`);
  }
  const mc = lococoFusedSlots(h.slots, h.keepRate);
  if (mc < 1) {
    throw fail(
      `Mc = floor(M * (1 - r)) = floor(${h.slots} * (1 - ${h.keepRate})) is 0: no slot to fuse ` +
        `(use the h2o cache, or a larger M or smaller r)`,
    );
  }
  return mc;
}

/**
 * Writes a heads file: given values, or random ones drawn as PyTorch initializes a Conv1d (weight
 * and bias uniform in ±1/sqrt(2·head_dim·k)), seeded per tensor name. Refuses bad options with
 * `KvfoldError("INVALID_ARGUMENT")`; `KvfoldError("IO")` when the file cannot be written.
 *
 * @example
 * ```ts
 * import { readLococoHeads, writeLococoHeads } from "./lococo_heads.ts";
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * await writeLococoHeads(path, { layers: 2, headDim: 16, slots: 64, keepRate: 0.5, kernel: 5, segment: 32 });
 * const heads = await readLococoHeads(path, { layers: 2, headDim: 16 });
 * console.log(heads.fusedSlots); // 32
 * await Deno.remove(path);
 * ```
 */
export async function writeLococoHeads(path: string, options: WriteLococoHeadsOptions): Promise<void> {
  const { layers, headDim, slots, keepRate, kernel, segment } = options;
  if (!Number.isSafeInteger(layers) || layers < 1) {
    throw invalid(`layers must be an integer >= 1, got ${layers}`);
  }
  if (!Number.isSafeInteger(headDim) || headDim < 1) {
    throw invalid(`head_dim must be an integer >= 1, got ${headDim}`);
  }
  const mc = checkLococoShape({ slots, keepRate, kernel, segment }, invalid);
  const seed = options.seed ?? 0;
  const lambda = options.lambda ?? 0.5;
  if (!Number.isFinite(lambda)) throw invalid(`lambda must be finite, got ${lambda}`);
  if (options.values !== undefined && options.values.length !== layers) {
    throw invalid(`values has ${options.values.length} layers, expected ${layers}`);
  }
  const dtype = options.dtype ?? "F32";
  const wLen = mc * 2 * headDim * kernel;
  const bound = 1 / Math.sqrt(2 * headDim * kernel);
  const tensors: TensorInput[] = [];
  for (let i = 0; i < layers; i++) {
    const names = lococoTensorNames(i);
    const given = options.values?.[i];
    if (given !== undefined) {
      if (given.weight.length !== wLen) {
        throw invalid(
          `layer ${i} weight has ${given.weight.length} values, [${mc}, ${
            2 * headDim
          }, ${kernel}] holds ${wLen}`,
        );
      }
      if (given.bias.length !== mc) {
        throw invalid(`layer ${i} bias has ${given.bias.length} values, expected Mc = ${mc}`);
      }
    }
    tensors.push({
      name: names.weight,
      dtype,
      shape: [mc, 2 * headDim, kernel],
      data: given ? Float64Array.from(given.weight) : uniformTensor(seed, names.weight, wLen, bound),
    });
    tensors.push({
      name: names.bias,
      dtype,
      shape: [mc],
      data: given ? Float64Array.from(given.bias) : uniformTensor(seed, names.bias, mc, bound),
    });
    tensors.push({ name: names.normalizer, dtype, shape: [1], data: [given ? given.lambda : lambda] });
  }
  await writeSafetensorsFile(path, tensors, {
    format: "pt",
    [LOCOCO_METADATA_KEYS.slots]: String(slots),
    [LOCOCO_METADATA_KEYS.keepRate]: String(keepRate),
    [LOCOCO_METADATA_KEYS.kernel]: String(kernel),
    [LOCOCO_METADATA_KEYS.segment]: String(segment),
  });
}

const INT_RE = /^[0-9]+$/;
const DECIMAL_RE = /^[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?$|^[0-9]+\.$/;
const FLOAT_DTYPES = new Set(["F64", "F32", "F16", "BF16"]);

/**
 * Reads a heads file and validates it against the model: metadata present and decimal (M >= 1,
 * 0 < r < 1, k odd, B >= 1, Mc >= 1), exactly one weight/bias/normalizer per model layer and no
 * other tensors, weight [Mc, 2·head_dim, k] with the model's head_dim, bias [Mc], normalizer [1],
 * float dtypes, finite values. Errors: `KvfoldError("FORMAT")` naming the problem, `"IO"` when the
 * file cannot be read.
 *
 * @example
 * ```ts
 * import { readLococoHeads, writeLococoHeads } from "./lococo_heads.ts";
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * await writeLococoHeads(path, { layers: 1, headDim: 8, slots: 16, keepRate: 0.25, kernel: 3, segment: 8 });
 * const h = await readLococoHeads(path, { layers: 1, headDim: 8 });
 * console.log(h.slots, h.keepRate, h.kernel, h.segment, h.fusedSlots); // 16 0.25 3 8 12
 * await Deno.remove(path);
 * ```
 */
export async function readLococoHeads(path: string, model: LococoModelShape): Promise<LococoHeadsFile> {
  const fail = (why: string) => new KvfoldError("FORMAT", `Cannot load LoCoCo heads ${path}: ${why}`);
  const file = await readSafetensorsFile(path);
  const md = file.metadata;
  const intKey = (key: string): number => {
    const s = md[key];
    if (s === undefined) throw fail(`__metadata__ has no "${key}"`);
    if (!INT_RE.test(s)) throw fail(`__metadata__ "${key}" is "${s}", not a decimal integer`);
    return Number(s);
  };
  const slots = intKey(LOCOCO_METADATA_KEYS.slots);
  const kernel = intKey(LOCOCO_METADATA_KEYS.kernel);
  const segment = intKey(LOCOCO_METADATA_KEYS.segment);
  const rs = md[LOCOCO_METADATA_KEYS.keepRate];
  if (rs === undefined) throw fail(`__metadata__ has no "${LOCOCO_METADATA_KEYS.keepRate}"`);
  if (!DECIMAL_RE.test(rs)) {
    throw fail(`__metadata__ "${LOCOCO_METADATA_KEYS.keepRate}" is "${rs}", not a decimal number`);
  }
  const keepRate = Number(rs);
  const mc = checkLococoShape({ slots, keepRate, kernel, segment }, (why) => fail(`metadata: ${why}`));

  // Layers: exactly 0..L-1, nothing else.
  const layerRe =
    /^model\.layers\.([0-9]+)\.self_attn\.memory_saver\.(layers\.0\.weight|layers\.0\.bias|normalizer)$/;
  let maxLayer = -1;
  for (const name of file.tensors.keys()) {
    const m = layerRe.exec(name);
    if (!m) throw fail(`unexpected tensor "${name}" (not a LoCoCo memory_saver tensor)`);
    maxLayer = Math.max(maxLayer, Number(m[1]));
  }
  if (maxLayer + 1 !== model.layers) {
    throw fail(
      `heads are for ${
        maxLayer + 1
      } layer(s) (highest layer index ${maxLayer}), the model has ${model.layers}`,
    );
  }
  const twoHd = 2 * model.headDim;
  const layers: LococoLayerHeads[] = [];
  for (let i = 0; i < model.layers; i++) {
    const names = lococoTensorNames(i);
    const get = (name: string, shape: number[], what: string) => {
      const t = file.tensors.get(name);
      if (t === undefined) throw fail(`missing tensor "${name}" (layer ${i} of ${model.layers})`);
      if (!FLOAT_DTYPES.has(t.dtype)) {
        throw fail(`tensor "${name}" has dtype ${t.dtype}, expected a float dtype`);
      }
      if (t.shape.length !== shape.length || t.shape.some((d, j) => d !== shape[j])) {
        throw fail(
          `tensor "${name}" has shape [${t.shape.join(", ")}], expected [${shape.join(", ")}] (${what})`,
        );
      }
      const v = toFloat64(t);
      for (let j = 0; j < v.length; j++) {
        if (!Number.isFinite(v[j])) {
          throw fail(`tensor "${name}" has a non-finite value ${v[j]} at index ${j}`);
        }
      }
      return v;
    };
    const wt = file.tensors.get(names.weight);
    if (wt !== undefined && wt.shape.length === 3) {
      // Name the likely cause before the generic shape message.
      if (wt.shape[1] !== twoHd) {
        throw fail(
          `tensor "${names.weight}" has ${wt.shape[1]} input channels, i.e. head_dim ${wt.shape[1] / 2}; ` +
            `the model's head_dim is ${model.headDim} (2·head_dim = ${twoHd} channels expected)`,
        );
      }
      if (wt.shape[2] !== kernel) {
        throw fail(`tensor "${names.weight}" has kernel size ${wt.shape[2]}, metadata kernel is ${kernel}`);
      }
      if (wt.shape[0] !== mc) {
        throw fail(
          `tensor "${names.weight}" has ${
            wt.shape[0]
          } output channels, metadata gives Mc = floor(${slots} * ` +
            `(1 - ${keepRate})) = ${mc}`,
        );
      }
    }
    const weight = get(names.weight, [mc, twoHd, kernel], `Mc = ${mc}, 2·head_dim = ${twoHd}, k = ${kernel}`);
    const bias = get(names.bias, [mc], `Mc = floor(${slots} * (1 - ${keepRate})) = ${mc}`);
    const lam = get(names.normalizer, [1], "λ, one scalar per layer");
    layers.push({ weight, bias, lambda: lam[0] });
  }
  return { slots, keepRate, kernel, segment, fusedSlots: mc, headDim: model.headDim, layers };
}

/**
 * Generator of random Llama-family models in Hugging Face layout, for tests and benchmarks:
 * `config.json`, `model.safetensors` (or shards plus `model.safetensors.index.json`),
 * `tokenizer.json`, `tokenizer_config.json` and `generation_config.json`.
 *
 * Weights are seeded per tensor (seed and tensor name), so changing an option that adds or drops a
 * tensor (tying, biases) leaves every other tensor's values as they were.
 *
 * The tokenizer is a real byte-level BPE `tokenizer.json`: ids 0 `<unk>`, 1 `<s>`, 2 `</s>`,
 * 3 `<|system|>`, 4 `<|user|>`, 5 `<|assistant|>`, then the 256 byte tokens (ids 6..261, byte b at
 * 6 + b), then merges learned on a small embedded English corpus, then filler words up to
 * `vocab_size`. Its post-processor adds `<s>` in front (as Llama 3's `TemplateProcessing` does), so
 * `encode(text)` starts with id 1 and `encode(text, { add_special_tokens: false })` does not. The
 * chat template writes `bos_token` itself, so a rendered chat is encoded with
 * `add_special_tokens: false`, as `transformers` does in `apply_chat_template`.
 *
 * @module
 */

import { join } from "node:path";
import { KvfoldError } from "./errors.ts";
import { readBoundedJson } from "./_bounded_read.ts";
import { DTYPE_SIZES, type SafetensorsDtype, type TensorInput, writeSafetensorsFile } from "./safetensors.ts";

/** Architecture sizes of a preset. */
export interface TestModelPreset {
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKeyValueHeads: number;
  intermediateSize: number;
  vocabSize: number;
  maxPositionEmbeddings: number;
  /** Standard deviation of the random weight matrices. */
  initStd: number;
}

/**
 * The presets `makeTestModel` knows, as data (benches print them).
 *
 * @example
 * ```ts
 * import { TEST_MODEL_PRESETS } from "./test_model.ts";
 * console.log(TEST_MODEL_PRESETS.tiny.hiddenSize); // 64
 * ```
 */
export const TEST_MODEL_PRESETS: Readonly<Record<"tiny" | "small", Readonly<TestModelPreset>>> = Object
  .freeze({
    tiny: Object.freeze({
      hiddenSize: 64,
      numLayers: 2,
      numHeads: 4,
      numKeyValueHeads: 2,
      intermediateSize: 128,
      vocabSize: 512,
      maxPositionEmbeddings: 256,
      initStd: 0.1,
    }),
    small: Object.freeze({
      hiddenSize: 768,
      numLayers: 12,
      numHeads: 12,
      numKeyValueHeads: 12,
      intermediateSize: 2048,
      vocabSize: 32000,
      maxPositionEmbeddings: 2048,
      initStd: 0.02,
    }),
  });

/** `rope_scaling` as HF config.json writes it. */
export type RopeScaling =
  | null
  | { rope_type: "linear"; factor: number }
  | {
    rope_type: "llama3";
    factor: number;
    low_freq_factor: number;
    high_freq_factor: number;
    original_max_position_embeddings: number;
  };

/** Options of {@link makeTestModel}; everything but `seed` and `preset` overrides the preset. */
export interface TestModelOptions {
  /** PRNG seed (integer); same seed and options give byte-identical files. Default 0. */
  seed?: number;
  /** Mistral's `sliding_window` (only with modelType "mistral"); default none. */
  slidingWindow?: number;
  /** Size preset. Default `"tiny"`. */
  preset?: "tiny" | "small";
  /** Architecture family. `qwen2` has q/k/v biases. Default `"llama"`. */
  modelType?: "llama" | "mistral" | "qwen2";
  /** Llama only: biases on q, k, v and o (`attention_bias: true`). Default false. */
  attentionBias?: boolean;
  numKeyValueHeads?: number;
  /** Omit `lm_head.weight` and reuse the embedding. Default false. */
  tieWordEmbeddings?: boolean;
  /** Default 10000. */
  ropeTheta?: number;
  /** Default null. */
  ropeScaling?: RopeScaling;
  /** Tensor dtype and config `torch_dtype`. Default `"float32"`. */
  dtype?: "float32" | "float16" | "bfloat16";
  hiddenSize?: number;
  numLayers?: number;
  numHeads?: number;
  intermediateSize?: number;
  /** At least 262 (specials and the 256 byte tokens). */
  vocabSize?: number;
  maxPositionEmbeddings?: number;
  /** Explicit `head_dim` (written to config.json); default hidden_size / num_attention_heads. */
  headDim?: number;
  /** Default 1e-5. */
  rmsNormEps?: number;
  /** Standard deviation of the weight matrices; default from the preset. */
  initStd?: number;
  /**
   * Makes an AutoCompressor-style checkpoint: adds `embed_summary.weight` [summaryLength, hidden]
   * and `summary_length` to config.json. Default: none (a plain model).
   */
  summaryLength?: number;
  /** Number of safetensors files; above 1 writes HF's sharded layout. Default 1. */
  shards?: number;
}

/** What {@link makeTestModel} wrote. */
export interface TestModelInfo {
  /** The model folder. */
  dir: string;
  /** The object written to config.json. */
  config: Record<string, unknown>;
  /** Names of the files written, relative to `dir`. */
  files: string[];
  /** Tensor names in the order written. */
  tensorNames: string[];
}

// ---------------------------------------------------------------------------------------------
// Seeded random numbers: xoshiro128** seeded through splitmix32, table-driven normals.

function hashString(seed: number, s: string): number {
  let h = (0x811c9dc5 ^ (seed >>> 0)) >>> 0;
  h = Math.imul(h ^ Math.floor(seed / 0x100000000), 0x01000193) >>> 0;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

function splitmix32(state: { s: number }): number {
  state.s = (state.s + 0x9e3779b9) | 0;
  let z = state.s;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

/** xoshiro128** state for one tensor, from (seed, name). */
function rngFor(seed: number, name: string): Uint32Array {
  const st = { s: hashString(seed, name) };
  const s = new Uint32Array(4);
  for (let i = 0; i < 4; i++) s[i] = splitmix32(st);
  if ((s[0] | s[1] | s[2] | s[3]) === 0) s[0] = 1;
  return s;
}

/** Acklam's rational approximation of the standard normal quantile (relative error below 1.2e-9). */
function normalQuantile(p: number): number {
  const a = [
    -39.6968302866538,
    220.946098424521,
    -275.928510446969,
    138.357751867269,
    -30.6647980661472,
    2.50662827745924,
  ];
  const b = [-54.4760987982241, 161.585836858041, -155.698979859887, 66.8013118877197, -13.2806815528857];
  const c = [
    -0.00778489400243029,
    -0.322396458041136,
    -2.40075827716184,
    -2.54973253934373,
    4.37466414146497,
    2.93816398269878,
  ];
  const d = [0.00778469570904146, 0.32246712907004, 2.445134137143, 3.75440866190742];
  const lo = 0.02425;
  if (p < lo || p > 1 - lo) {
    const q = Math.sqrt(-2 * Math.log(p < lo ? p : 1 - p));
    const x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
      ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
    return p < lo ? x : -x;
  }
  const q = p - 0.5;
  const r = q * q;
  return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
    (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
}

let normalTable: Float64Array | undefined;
/** 65536 equiprobable standard normal values (quantiles at bin midpoints), built once. */
function normalBins(): Float64Array {
  if (normalTable === undefined) {
    normalTable = new Float64Array(65536);
    for (let i = 0; i < 65536; i++) normalTable[i] = normalQuantile((i + 0.5) / 65536);
  }
  return normalTable;
}

/**
 * Fills `out` with mean + std · N(0, 1) from the xoshiro128** state `st` (advanced in place),
 * through a 65536-bin inverse-CDF table: a normal discretized to 16 bits (tails to about ±4.3σ),
 * which random weights need, and fast enough for 100M+ values.
 */
function fillNormal(out: Float32Array, mean: number, std: number, st: Uint32Array): void {
  const bins = normalBins();
  const table = new Float32Array(65536);
  for (let i = 0; i < 65536; i++) table[i] = mean + std * bins[i];
  fillFromTable(out, table, st);
}

/** Fills `out` with table[u16] for 16-bit draws of xoshiro128** (two per 32-bit output). */
function fillFromTable(out: Float32Array, table: Float32Array, st: Uint32Array): void {
  let s0 = st[0] | 0, s1 = st[1] | 0, s2 = st[2] | 0, s3 = st[3] | 0;
  const n = out.length;
  const even = n & ~1;
  for (let i = 0; i <= even; i += 2) {
    let r = Math.imul(s1, 5);
    r = Math.imul((r << 7) | (r >>> 25), 9);
    const t = s1 << 9;
    s2 ^= s0;
    s3 ^= s1;
    s1 ^= s2;
    s0 ^= s3;
    s2 ^= t;
    s3 = (s3 << 11) | (s3 >>> 21);
    if (i === even) {
      if (i < n) out[i] = table[r >>> 16];
      break;
    }
    out[i] = table[r >>> 16];
    out[i + 1] = table[r & 0xffff];
  }
  st[0] = s0;
  st[1] = s1;
  st[2] = s2;
  st[3] = s3;
}

function normalTensor(seed: number, name: string, n: number, mean: number, std: number): Float32Array {
  const out = new Float32Array(n);
  fillNormal(out, mean, std, rngFor(seed, name));
  return out;
}

/**
 * `n` values uniform in (-bound, bound) (65536 equiprobable levels), seeded by (seed, name) with the
 * same generator as the test models' normal weights.
 *
 * @example
 * ```ts
 * import { uniformTensor } from "./test_model.ts";
 * const w = uniformTensor(1, "conv.weight", 4, 0.5);
 * console.log(w.every((x) => Math.abs(x) < 0.5)); // true
 * ```
 */
export function uniformTensor(seed: number, name: string, n: number, bound: number): Float32Array {
  const table = new Float32Array(65536);
  for (let i = 0; i < 65536; i++) table[i] = ((2 * i + 1) / 65536 - 1) * bound;
  const out = new Float32Array(n);
  fillFromTable(out, table, rngFor(seed, name));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

/** Plain English the BPE merges are learned from. */
const CORPUS = `
The river town woke slowly on the first cold morning of the autumn. Bakers opened their shutters,
children ran along the stone bridge, and the old ferryman counted the boats that had come in during
the night. Nobody in the town could remember a season when the water had been so high, but nobody
seemed worried either. They had seen floods before, and they knew that the river always went back
to where it belonged.

A library is a quiet machine for remembering. Every book on its shelves was written by someone who
wanted a thought to outlive the moment it was born. When you open a book, that moment comes back,
and for a while the writer is sitting beside you, explaining what they saw and why it mattered to
them. Good questions are the keys to that machine; a reader who asks better questions finds better
answers in the same pages.

Computers read text by splitting it into small pieces called tokens. A token can be a whole word,
part of a word, a single letter, or even one byte of a character that has no shorter form. The model
never sees letters at all: it sees numbers, one for each token, and it learns which numbers tend to
follow which others. From those patterns it can continue a sentence, answer a question, or summarize
a long document into a few short lines.

The garden behind the school was planted by the students themselves. In the spring they sowed beans,
peas, carrots and sunflowers; in the summer they watered the rows every evening; and in the autumn
they weighed what they had grown and wrote the numbers on a board by the door. The best year gave
them forty kilograms of potatoes and more tomatoes than anyone could eat.

What is the capital of France? Paris is the capital of France, and it is also its largest city. What
is the tallest mountain in the world? Mount Everest, which stands on the border between Nepal and
China, is the tallest mountain above sea level. How many days are there in a week? There are seven
days in a week, and most people work on five of them.

The user asked the assistant a question, and the assistant answered it. The system told the
assistant to be helpful, honest and brief. When the answer was not in the documents, the assistant
said that it did not know, which is better than making something up. Short answers that are true are
worth more than long answers that are wrong.

Memory is expensive, so engineers compress what they keep. A long report can be folded into a handful
of vectors, stored on a disk, and unfolded again when someone asks about it. The trick is to keep
what matters for the questions people will ask, and to forget the rest without regret.
`;

const GPT2_PATTERN = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/** GPT-2's byte → printable character map, as the ByteLevel pre-tokenizer uses it. */
const BYTE_TO_CHAR: readonly string[] = (() => {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const map = new Array<string>(256);
  for (const b of bs) map[b] = String.fromCharCode(b);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (map[b] === undefined) map[b] = String.fromCharCode(256 + n++);
  }
  return map;
})();

/** The special tokens, in id order from 0. */
export const TEST_SPECIAL_TOKENS: readonly string[] = Object.freeze([
  "<unk>",
  "<s>",
  "</s>",
  "<|system|>",
  "<|user|>",
  "<|assistant|>",
]);

const CHAT_TEMPLATE = "{{ bos_token }}" +
  "{% for message in messages %}" +
  "{% if message['role'] == 'system' %}{{ '<|system|>\\n' + message['content'] + eos_token + '\\n' }}" +
  "{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + eos_token + '\\n' }}" +
  "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' + message['content'] + eos_token + '\\n' }}" +
  "{% else %}{{ raise_exception('Unknown role: ' + message['role']) }}{% endif %}" +
  "{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}";

let learnedMerges: [string, string][] | undefined;

/**
 * Learns BPE merges on the embedded corpus (deterministic: most frequent pair first, ties by the
 * pair's text), stopping when no pair occurs twice. Computed once per process.
 */
function corpusMerges(): [string, string][] {
  if (learnedMerges !== undefined) return learnedMerges;
  const enc = new TextEncoder();
  const counts = new Map<string, number>();
  for (const piece of CORPUS.match(GPT2_PATTERN) ?? []) {
    const w = Array.from(enc.encode(piece), (b) => BYTE_TO_CHAR[b]).join("");
    counts.set(w, (counts.get(w) ?? 0) + 1);
  }
  const words = [...counts].map(([w, c]) => ({ syms: Array.from(w), count: c }));
  const merges: [string, string][] = [];
  for (;;) {
    const pairs = new Map<string, number>();
    for (const { syms, count } of words) {
      for (let i = 0; i + 1 < syms.length; i++) {
        const key = syms[i] + " " + syms[i + 1];
        pairs.set(key, (pairs.get(key) ?? 0) + count);
      }
    }
    let best = "";
    let bestCount = 1;
    for (const [key, c] of pairs) {
      if (c > bestCount || (c === bestCount && c > 1 && key < best)) {
        best = key;
        bestCount = c;
      }
    }
    if (bestCount < 2) break;
    const [a, b] = best.split(" ");
    merges.push([a, b]);
    for (const w of words) {
      const s = w.syms;
      const next: string[] = [];
      for (let i = 0; i < s.length; i++) {
        if (i + 1 < s.length && s[i] === a && s[i + 1] === b) {
          next.push(a + b);
          i++;
        } else next.push(s[i]);
      }
      w.syms = next;
    }
  }
  learnedMerges = merges;
  return merges;
}

const CONSONANTS = "bdfgklmnprstvz";
const VOWELS = "aeiou";

/** The k-th filler word: "Ġ" (a space) plus pronounceable syllables. */
function fillerWord(k: number): string {
  let s = "";
  let x = k;
  do {
    const syl = x % (CONSONANTS.length * VOWELS.length);
    s += CONSONANTS[Math.floor(syl / VOWELS.length)] + VOWELS[syl % VOWELS.length];
    x = Math.floor(x / (CONSONANTS.length * VOWELS.length));
  } while (x > 0);
  return BYTE_TO_CHAR[0x20] + s;
}

/**
 * Builds the tokenizer files of a test model: a byte-level BPE `tokenizer.json` of exactly
 * `vocabSize` tokens and its `tokenizer_config.json` (with a Zephyr-style `chat_template`).
 * `modelMaxLength` (default 2048) is written as `model_max_length`.
 *
 * @example
 * ```ts
 * import { makeTestTokenizer } from "./test_model.ts";
 * const { tokenizerJson } = makeTestTokenizer(512);
 * console.log((tokenizerJson.added_tokens as unknown[]).length); // 6
 * ```
 */
export function makeTestTokenizer(
  vocabSize: number,
  options: { modelMaxLength?: number } = {},
): { tokenizerJson: Record<string, unknown>; tokenizerConfig: Record<string, unknown> } {
  const base = TEST_SPECIAL_TOKENS.length + 256;
  if (!Number.isSafeInteger(vocabSize) || vocabSize < base) {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      `Cannot make test tokenizer: vocab_size ${vocabSize} is below ${base} (specials and 256 bytes)`,
    );
  }
  const vocab = new Map<string, number>();
  TEST_SPECIAL_TOKENS.forEach((t, i) => vocab.set(t, i));
  for (let b = 0; b < 256; b++) vocab.set(BYTE_TO_CHAR[b], TEST_SPECIAL_TOKENS.length + b);
  // Merges: learned pairs whose result is new take one id each; keep merges up to the budget of
  // 2000 merge tokens or what the vocabulary has room for, whichever is smaller.
  const budget = Math.min(2000, vocabSize - base);
  const merges: string[] = [];
  for (const [a, b] of corpusMerges()) {
    const t = a + b;
    if (!vocab.has(t)) {
      if (vocab.size - base >= budget) break;
      vocab.set(t, vocab.size);
    }
    merges.push(`${a} ${b}`);
  }
  for (let k = 0; vocab.size < vocabSize; k++) {
    const w = fillerWord(k);
    if (!vocab.has(w)) vocab.set(w, vocab.size);
  }
  const added = TEST_SPECIAL_TOKENS.map((content, id) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  }));
  const tokenizerJson: Record<string, unknown> = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      pair: [
        { SpecialToken: { id: "<s>", type_id: 0 } },
        { Sequence: { id: "A", type_id: 0 } },
        { SpecialToken: { id: "<s>", type_id: 1 } },
        { Sequence: { id: "B", type_id: 1 } },
      ],
      special_tokens: { "<s>": { id: "<s>", ids: [1], tokens: ["<s>"] } },
    },
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab: Object.fromEntries(vocab),
      merges,
    },
  };
  const addedTokensDecoder: Record<string, unknown> = {};
  for (const { id, ...rest } of added) addedTokensDecoder[String(id)] = rest;
  const tokenizerConfig: Record<string, unknown> = {
    add_bos_token: true,
    add_eos_token: false,
    added_tokens_decoder: addedTokensDecoder,
    additional_special_tokens: ["<|system|>", "<|user|>", "<|assistant|>"],
    bos_token: "<s>",
    chat_template: CHAT_TEMPLATE,
    clean_up_tokenization_spaces: false,
    eos_token: "</s>",
    model_max_length: options.modelMaxLength ?? 2048,
    pad_token: null,
    tokenizer_class: "PreTrainedTokenizerFast",
    unk_token: "<unk>",
  };
  return { tokenizerJson, tokenizerConfig };
}

// ---------------------------------------------------------------------------------------------
// The model

const DTYPES: Record<"float32" | "float16" | "bfloat16", SafetensorsDtype> = {
  float32: "F32",
  float16: "F16",
  bfloat16: "BF16",
};

function positiveInt(name: string, v: number): number {
  if (!Number.isSafeInteger(v) || v <= 0) {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      `Cannot make test model: ${name} must be a positive integer, got ${v}`,
    );
  }
  return v;
}

/**
 * Writes a random Llama-family model in Hugging Face layout into `outDir` (created if missing).
 * Deterministic in `seed`: the same seed and options give byte-identical files.
 *
 * @example
 * ```ts
 * import { makeTestModel } from "./test_model.ts";
 * const dir = await Deno.makeTempDir();
 * const info = await makeTestModel(dir, { seed: 1, preset: "tiny", modelType: "qwen2" });
 * console.log(info.files.includes("model.safetensors")); // true
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function makeTestModel(outDir: string, options: TestModelOptions = {}): Promise<TestModelInfo> {
  const presetName = options.preset ?? "tiny";
  const preset = TEST_MODEL_PRESETS[presetName];
  if (preset === undefined) {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      `Cannot make test model: unknown preset ${JSON.stringify(presetName)}`,
    );
  }
  const seed = options.seed ?? 0;
  if (!Number.isSafeInteger(seed)) {
    throw new KvfoldError("INVALID_ARGUMENT", `Cannot make test model: seed must be an integer, got ${seed}`);
  }
  const modelType = options.modelType ?? "llama";
  if (!["llama", "mistral", "qwen2"].includes(modelType)) {
    throw new KvfoldError("INVALID_ARGUMENT", `Cannot make test model: unknown modelType ${modelType}`);
  }
  const hidden = positiveInt("hiddenSize", options.hiddenSize ?? preset.hiddenSize);
  const layers = positiveInt("numLayers", options.numLayers ?? preset.numLayers);
  const heads = positiveInt("numHeads", options.numHeads ?? preset.numHeads);
  const kvHeads = positiveInt(
    "numKeyValueHeads",
    options.numKeyValueHeads ?? Math.min(preset.numKeyValueHeads, heads),
  );
  const inter = positiveInt("intermediateSize", options.intermediateSize ?? preset.intermediateSize);
  const vocab = positiveInt("vocabSize", options.vocabSize ?? preset.vocabSize);
  const maxPos = positiveInt(
    "maxPositionEmbeddings",
    options.maxPositionEmbeddings ?? preset.maxPositionEmbeddings,
  );
  const shards = positiveInt("shards", options.shards ?? 1);
  if (heads % kvHeads !== 0) {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      `Cannot make test model: num_attention_heads ${heads} is not a multiple of num_key_value_heads ${kvHeads}`,
    );
  }
  if (options.headDim === undefined && hidden % heads !== 0) {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      `Cannot make test model: hidden_size ${hidden} is not a multiple of num_attention_heads ${heads}`,
    );
  }
  const headDim = positiveInt("headDim", options.headDim ?? hidden / heads);
  if (headDim % 2 !== 0) {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      `Cannot make test model: head_dim ${headDim} must be even for RoPE`,
    );
  }
  const attentionBias = options.attentionBias ?? false;
  if (attentionBias && modelType !== "llama") {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      `Cannot make test model: attentionBias is a llama option (${modelType} has fixed biases)`,
    );
  }
  const dtypeName = options.dtype ?? "float32";
  const dtype = DTYPES[dtypeName];
  if (dtype === undefined) {
    throw new KvfoldError("INVALID_ARGUMENT", `Cannot make test model: unknown dtype ${dtypeName}`);
  }
  const tie = options.tieWordEmbeddings ?? false;
  const summaryLength = options.summaryLength === undefined
    ? undefined
    : positiveInt("summaryLength", options.summaryLength);
  const std = options.initStd ?? preset.initStd;
  const ropeTheta = options.ropeTheta ?? 10000;
  const ropeScaling = options.ropeScaling ?? null;
  const eps = options.rmsNormEps ?? 1e-5;

  const architectures = {
    llama: "LlamaForCausalLM",
    mistral: "MistralForCausalLM",
    qwen2: "Qwen2ForCausalLM",
  };
  const config: Record<string, unknown> = {
    architectures: [architectures[modelType]],
    attention_dropout: 0.0,
    bos_token_id: 1,
    eos_token_id: 2,
    hidden_act: "silu",
    hidden_size: hidden,
    initializer_range: std,
    intermediate_size: inter,
    max_position_embeddings: maxPos,
    model_type: modelType,
    num_attention_heads: heads,
    num_hidden_layers: layers,
    num_key_value_heads: kvHeads,
    rms_norm_eps: eps,
    rope_scaling: ropeScaling,
    rope_theta: ropeTheta,
    tie_word_embeddings: tie,
    torch_dtype: dtypeName,
    transformers_version: "4.46.0",
    use_cache: true,
    vocab_size: vocab,
  };
  if (modelType === "llama") {
    config.attention_bias = attentionBias;
    config.mlp_bias = false;
    config.pretraining_tp = 1;
  } else if (modelType === "mistral") {
    config.sliding_window = options.slidingWindow ?? null;
  } else {
    config.use_sliding_window = false;
    config.sliding_window = null;
    config.max_window_layers = layers;
  }
  if (options.headDim !== undefined) config.head_dim = headDim;

  // Tensors, in HF's order; each seeded by (seed, name).
  const tensors: TensorInput[] = [];
  const add = (name: string, shape: number[], mean: number, s: number) => {
    const n = shape.reduce((a, b) => a * b, 1);
    tensors.push({ name, dtype, shape, data: normalTensor(seed, name, n, mean, s) });
  };
  const qkvBias = modelType === "qwen2" || attentionBias;
  add("model.embed_tokens.weight", [vocab, hidden], 0, std);
  for (let i = 0; i < layers; i++) {
    const p = `model.layers.${i}`;
    add(`${p}.input_layernorm.weight`, [hidden], 1, 0.05);
    add(`${p}.self_attn.q_proj.weight`, [heads * headDim, hidden], 0, std);
    if (qkvBias) add(`${p}.self_attn.q_proj.bias`, [heads * headDim], 0, std);
    add(`${p}.self_attn.k_proj.weight`, [kvHeads * headDim, hidden], 0, std);
    if (qkvBias) add(`${p}.self_attn.k_proj.bias`, [kvHeads * headDim], 0, std);
    add(`${p}.self_attn.v_proj.weight`, [kvHeads * headDim, hidden], 0, std);
    if (qkvBias) add(`${p}.self_attn.v_proj.bias`, [kvHeads * headDim], 0, std);
    add(`${p}.self_attn.o_proj.weight`, [hidden, heads * headDim], 0, std);
    if (attentionBias) add(`${p}.self_attn.o_proj.bias`, [hidden], 0, std);
    add(`${p}.post_attention_layernorm.weight`, [hidden], 1, 0.05);
    add(`${p}.mlp.gate_proj.weight`, [inter, hidden], 0, std);
    add(`${p}.mlp.up_proj.weight`, [inter, hidden], 0, std);
    add(`${p}.mlp.down_proj.weight`, [hidden, inter], 0, std);
  }
  add("model.norm.weight", [hidden], 1, 0.05);
  if (!tie) add("lm_head.weight", [vocab, hidden], 0, std);
  // AutoCompressor checkpoints add the rows that become summary vectors, and record their count.
  if (summaryLength !== undefined) {
    config.summary_length = summaryLength;
    add("embed_summary.weight", [summaryLength, hidden], 0, std);
  }

  const { tokenizerJson, tokenizerConfig } = makeTestTokenizer(vocab, { modelMaxLength: maxPos });
  const generationConfig = {
    _from_model_config: true,
    bos_token_id: 1,
    eos_token_id: 2,
    transformers_version: "4.46.0",
  };

  try {
    await Deno.mkdir(outDir, { recursive: true });
    // Drop weights of an earlier run in the other layout, so loaders never see both.
    for await (const entry of Deno.readDir(outDir)) {
      if (
        entry.isFile &&
        (entry.name === "model.safetensors" || entry.name === "model.safetensors.index.json" ||
          /^model-\d{5}-of-\d{5}\.safetensors$/.test(entry.name))
      ) {
        await Deno.remove(join(outDir, entry.name));
      }
    }
    const files: string[] = [];
    const writeJson = async (name: string, value: unknown) => {
      await Deno.writeTextFile(join(outDir, name), JSON.stringify(value, null, 2) + "\n");
      files.push(name);
    };
    await writeJson("config.json", config);
    await writeJson("generation_config.json", generationConfig);
    await writeJson("tokenizer.json", tokenizerJson);
    await writeJson("tokenizer_config.json", tokenizerConfig);
    const meta = { format: "pt" };
    if (shards === 1) {
      await writeSafetensorsFile(join(outDir, "model.safetensors"), tensors, meta);
      files.push("model.safetensors");
    } else {
      if (shards > tensors.length) {
        throw new KvfoldError(
          "INVALID_ARGUMENT",
          `Cannot make test model: ${shards} shards for ${tensors.length} tensors`,
        );
      }
      const sizes = tensors.map((t) => t.data.length * DTYPE_SIZES[dtype]);
      const total = sizes.reduce((a, b) => a + b, 0);
      // Greedy split in order: shard k ends once it reaches (k+1)/shards of the bytes, leaving
      // at least one tensor for each later shard.
      const groups: TensorInput[][] = Array.from({ length: shards }, () => []);
      let acc = 0;
      let k = 0;
      tensors.forEach((t, i) => {
        groups[k].push(t);
        acc += sizes[i];
        const remainingTensors = tensors.length - i - 1;
        const remainingShards = shards - k - 1;
        if (
          remainingShards > 0 && (acc >= (total * (k + 1)) / shards || remainingTensors === remainingShards)
        ) k++;
      });
      const weightMap: Record<string, string> = {};
      const pad = (x: number) => String(x).padStart(5, "0");
      for (let s = 0; s < shards; s++) {
        const name = `model-${pad(s + 1)}-of-${pad(shards)}.safetensors`;
        await writeSafetensorsFile(join(outDir, name), groups[s], meta);
        files.push(name);
        for (const t of groups[s]) weightMap[t.name] = name;
      }
      await writeJson("model.safetensors.index.json", {
        metadata: { total_size: total },
        weight_map: weightMap,
      });
    }
    return { dir: outDir, config, files, tensorNames: tensors.map((t) => t.name) };
  } catch (e) {
    if (e instanceof KvfoldError) throw e;
    throw new KvfoldError(
      "IO",
      `Cannot make test model in ${outDir}: ${e instanceof Error ? e.message : String(e)}`,
      { cause: e },
    );
  }
}

/** Options of {@link makeTestAdapter}. */
export interface TestAdapterOptions {
  /** The base model folder (its config.json gives the shapes). */
  base: string;
  /** Seed of the random A and B matrices; default 1. */
  seed?: number;
  /** `r` of adapter_config.json; default 8. */
  rank?: number;
  /** `lora_alpha`; default 2 × rank. */
  alpha?: number;
  /** Projections to adapt; default q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj. */
  targetModules?: readonly string[];
  /** `use_rslora`; default false. */
  rslora?: boolean;
  /** `rank_pattern` (module key → rank), as PEFT writes it. */
  rankPattern?: Record<string, number>;
  /** `alpha_pattern` (module key → alpha). */
  alphaPattern?: Record<string, number>;
  /** Only these layers get LoRA pairs (written as `layers_to_transform`, as PEFT does); default all. */
  layers?: readonly number[];
  /** Tensor dtype; default F32. */
  dtype?: "F32" | "F16" | "BF16";
  /** Standard deviation of A and of B; default 0.05 (B is random, not PEFT's zeros, so it shows). */
  std?: number;
}

const MODULE_PARENT: Record<string, string> = {
  q_proj: "self_attn",
  k_proj: "self_attn",
  v_proj: "self_attn",
  o_proj: "self_attn",
  gate_proj: "mlp",
  up_proj: "mlp",
  down_proj: "mlp",
};

/**
 * Writes a random PEFT LoRA adapter for a base model folder: `adapter_config.json` and
 * `adapter_model.safetensors` with PEFT's tensor names. Returns the tensor names written.
 *
 * @example
 * ```ts ignore
 * await makeTestModel("./models/tiny");
 * await makeTestAdapter("./adapters/a", { base: "./models/tiny", rank: 4, targetModules: ["q_proj", "v_proj"] });
 * ```
 */
export async function makeTestAdapter(outDir: string, options: TestAdapterOptions): Promise<string[]> {
  const json = await readBoundedJson(join(options.base, "config.json"), { action: "make test adapter" });
  const cfg = json as Record<string, number>;
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new KvfoldError(
      "FORMAT",
      `Cannot make test adapter: ${options.base}/config.json is not a JSON object`,
    );
  }
  const hidden = cfg.hidden_size, heads = cfg.num_attention_heads;
  const kvHeads = cfg.num_key_value_heads ?? heads;
  const headDim = cfg.head_dim ?? hidden / heads;
  const inter = cfg.intermediate_size, nLayers = cfg.num_hidden_layers;
  const shapes: Record<string, [number, number]> = { // [out, in]
    q_proj: [heads * headDim, hidden],
    k_proj: [kvHeads * headDim, hidden],
    v_proj: [kvHeads * headDim, hidden],
    o_proj: [hidden, heads * headDim],
    gate_proj: [inter, hidden],
    up_proj: [inter, hidden],
    down_proj: [hidden, inter],
  };
  const rank = positiveInt("rank", options.rank ?? 8);
  const seed = options.seed ?? 1;
  const targets = options.targetModules ?? Object.keys(shapes);
  const layers = options.layers ?? Array.from({ length: nLayers }, (_, i) => i);
  const dtype = options.dtype ?? "F32";
  const std = options.std ?? 0.05;
  const tensors: TensorInput[] = [];
  for (const l of layers) {
    for (const m of targets) {
      const shape = shapes[m];
      if (!shape) {
        throw new KvfoldError("INVALID_ARGUMENT", `Cannot make test adapter: ${m} is not a projection`);
      }
      const [out, inp] = shape;
      const key = `model.layers.${l}.${MODULE_PARENT[m]}.${m}`;
      const r = options.rankPattern?.[m] ?? rank;
      const name = `base_model.model.${key}`;
      tensors.push({
        name: `${name}.lora_A.weight`,
        dtype,
        shape: [r, inp],
        data: normalTensor(seed, `${name}.A`, r * inp, 0, std),
      });
      tensors.push({
        name: `${name}.lora_B.weight`,
        dtype,
        shape: [out, r],
        data: normalTensor(seed, `${name}.B`, out * r, 0, std),
      });
    }
  }
  const config = {
    alpha_pattern: options.alphaPattern ?? {},
    base_model_name_or_path: options.base,
    bias: "none",
    fan_in_fan_out: false,
    inference_mode: true,
    layers_pattern: null,
    layers_to_transform: options.layers ? [...options.layers] : null,
    lora_alpha: options.alpha ?? 2 * rank,
    lora_dropout: 0.05,
    peft_type: "LORA",
    r: rank,
    rank_pattern: options.rankPattern ?? {},
    target_modules: [...targets],
    task_type: "CAUSAL_LM",
    use_dora: false,
    use_rslora: options.rslora ?? false,
  };
  try {
    await Deno.mkdir(outDir, { recursive: true });
    await Deno.writeTextFile(join(outDir, "adapter_config.json"), JSON.stringify(config, null, 2) + "\n");
    await writeSafetensorsFile(join(outDir, "adapter_model.safetensors"), tensors, { format: "pt" });
  } catch (e) {
    throw new KvfoldError("IO", `Cannot make test adapter in ${outDir}: ${(e as Error).message}`, {
      cause: e,
    });
  }
  return tensors.map((t) => t.name);
}

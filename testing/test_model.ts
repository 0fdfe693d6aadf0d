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
import { KvfoldError } from "../src/errors.ts";
import {
  DTYPE_SIZES,
  type SafetensorsDtype,
  type TensorInput,
  writeSafetensorsFile,
} from "../src/formats/safetensors.ts";
import { normalTensor } from "../src/_seeded_random.ts";
import { makeTestTokenizer } from "./test_tokenizer.ts";

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
// The model

const DTYPES: Record<"float32" | "float16" | "bfloat16", SafetensorsDtype> = {
  float32: "F32",
  float16: "F16",
  bfloat16: "BF16",
};

/** `v` if it is a positive integer; else INVALID_ARGUMENT naming `name`. */
export function positiveInt(name: string, v: number): number {
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

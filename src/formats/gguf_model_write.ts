/**
 * A Hugging Face Llama / Mistral / Qwen2 folder (config.json, safetensors, tokenizer.json) as a GGUF
 * file llama.cpp loads: its hparams as `llama.*` / `qwen2.*` metadata, its tensors renamed
 * (`blk.N.attn_q.weight`, ...), llama's q/k rows permuted as llama.cpp's converter does, 2-D weights
 * in the dtype asked for (q8_0/q4_0 as ggml's reference quantizer writes them; norms and biases f32),
 * and the tokenizer as `tokenizer.ggml.*`.
 *
 * @module
 */

import { KvfoldError } from "../errors.ts";
import { configPositiveInt } from "../_int_args.ts";
import { readBoundedJson } from "../_bounded_read.ts";
import { readSafetensorsFile, type TensorView, toFloat32 } from "./safetensors.ts";
import { GGML_BLOCKS, type GgmlType } from "./ggml_quant.ts";
import { tokenizerMetadata } from "./gguf_tokenizer.ts";
import { type GgufContents, type GgufMetadataValue, type GgufTensorInput, writeGguf } from "./gguf_write.ts";

/**
 * The dtypes {@link writeModelGguf} writes the weight matrices in: one ggml type for all, or
 * "q4_k_m", llama.cpp's most published mix (q6_K for attn_v, ffn_down and output, q4_K for the rest).
 */
export type GgufModelDtype = GgmlType | "q4_k_m";

/** Options of {@link writeModelGguf}. */
export interface WriteModelGgufOptions {
  /** Type of the 2-D weights (embedding and output included). Default "f32". */
  dtype?: GgufModelDtype;
  /** `general.name`; default the folder's name. */
  name?: string;
  /** llama.cpp's pre-tokenizer name, when the tokenizer's cannot be told from tokenizer.json. */
  pre?: string;
}

// llama_ftype ids (llama.h) written as general.file_type.
const FILE_TYPES: Record<GgufModelDtype, number> = {
  f32: 0,
  f16: 1,
  q4_0: 2,
  q8_0: 7,
  q4_k: 14, // LLAMA_FTYPE_MOSTLY_Q4_K_S
  q4_k_m: 15,
  q6_k: 18,
  bf16: 32,
};

type Json = Record<string, unknown>;
const u32 = (value: number): GgufMetadataValue => ({ type: "uint32", value });
const f32 = (value: number): GgufMetadataValue => ({ type: "float32", value });

/**
 * Rows of q or k reordered as llama.cpp's converter does for llama: within each head of `headDim`
 * rows, the two halves that HF's rotate_half pairs are interleaved (row 2i+j of a head takes row
 * j*headDim/2 + i), so that llama.cpp's adjacent-pair RoPE computes the same product.
 *
 * @example
 * ```ts
 * import { permuteLlamaRows } from "./gguf_model_write.ts";
 * const rows = Float32Array.from([0, 1, 2, 3]); // one head of 4 rows of 1 column
 * console.log(Array.from(permuteLlamaRows(rows, 4, 1, 1))); // [0, 2, 1, 3]
 * ```
 */
export function permuteLlamaRows(w: Float32Array, rows: number, cols: number, heads: number): Float32Array {
  const headDim = rows / heads;
  const half = headDim / 2;
  const out = new Float32Array(w.length);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      for (let j = 0; j < 2; j++) {
        const dst = (h * headDim + 2 * i + j) * cols;
        const src = (h * headDim + j * half + i) * cols;
        out.set(w.subarray(src, src + cols), dst);
      }
    }
  }
  return out;
}

function intOf(config: Json, key: string, path: string, fallback?: number): number {
  return configPositiveInt(
    config,
    key,
    { code: "FORMAT", action: "Cannot convert model", source: path },
    fallback,
  );
}

/** All tensors of the folder's safetensors file(s), by name. */
async function readTensors(dir: string): Promise<Map<string, TensorView>> {
  const index = `${dir}/model.safetensors.index.json`;
  let files = ["model.safetensors"];
  try {
    await Deno.stat(index);
    const json = await readBoundedJson(index, { action: "convert model" }) as Json;
    const map = json.weight_map;
    if (typeof map !== "object" || map === null) {
      throw new KvfoldError("FORMAT", `Cannot convert model: ${index} has no weight_map`);
    }
    files = [...new Set(Object.values(map as Record<string, string>))];
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  const out = new Map<string, TensorView>();
  for (const f of files) {
    if (f.includes("/") || f.includes("..")) {
      throw new KvfoldError("FORMAT", `Cannot convert model: shard ${f} is not a file name`);
    }
    for (const [name, t] of (await readSafetensorsFile(`${dir}/${f}`)).tensors) out.set(name, t);
  }
  return out;
}

async function optionalJson(path: string): Promise<Json | undefined> {
  try {
    await Deno.stat(path);
  } catch {
    return undefined;
  }
  return await readBoundedJson(path, { action: "convert model" }) as Json;
}

/**
 * Converts a model folder to a GGUF v3 file at `outPath` (written atomically). Architectures:
 * `llama` (and `mistral` without a sliding window) as "llama", `qwen2` as "qwen2". Refused with
 * `KvfoldError("UNSUPPORTED")`: other architectures, llama3/YaRN rope scaling, AutoCompressor extras,
 * q8_0/q4_0 for a matrix whose rows are not whole blocks of 32.
 *
 * @example
 * ```ts
 * import { writeModelGguf } from "./gguf_write.ts";
 * import { makeTestModel } from "../../testing/mod.ts";
 * const dir = await Deno.makeTempDir();
 * await makeTestModel(dir, { seed: 1 });
 * await writeModelGguf(dir, `${dir}/model-q8_0.gguf`, { dtype: "q8_0" });
 * console.log((await Deno.stat(`${dir}/model-q8_0.gguf`)).isFile); // true
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function writeModelGguf(
  modelDir: string,
  outPath: string,
  options: WriteModelGgufOptions = {},
): Promise<void> {
  await writeGguf(outPath, await modelGgufContents(modelDir, options));
}

/**
 * What {@link writeModelGguf} writes, before it is written: metadata and tensors (each tensor's
 * data produced when it is written), for callers that add or change entries first.
 *
 * @example
 * ```ts
 * import { modelGgufContents } from "./gguf_model_write.ts";
 * import { makeTestModel } from "../../testing/mod.ts";
 * const dir = await Deno.makeTempDir();
 * await makeTestModel(dir, { seed: 1 });
 * const { metadata, tensors } = await modelGgufContents(dir);
 * console.log(metadata["general.architecture"], tensors[0].name); // llama token_embd.weight
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function modelGgufContents(
  modelDir: string,
  options: WriteModelGgufOptions = {},
): Promise<GgufContents> {
  const dtype = options.dtype ?? "f32";
  if (!Object.hasOwn(FILE_TYPES, dtype)) {
    throw new RangeError(
      `Cannot convert model: dtype ${dtype} is not one of ${Object.keys(FILE_TYPES).join(", ")}`,
    );
  }
  const configPath = `${modelDir}/config.json`;
  const config = await readBoundedJson(configPath, { action: "convert model" }) as Json;
  const modelType = config.model_type;
  const unsupported = (why: string) =>
    new KvfoldError("UNSUPPORTED", `Cannot convert model ${modelDir} to GGUF: ${why}`);
  if (modelType === "mistral" && config.sliding_window != null) {
    throw unsupported("mistral with a sliding window has no llama.cpp 'llama' equivalent");
  }
  if (modelType !== "llama" && modelType !== "mistral" && modelType !== "qwen2") {
    throw unsupported(`model_type ${JSON.stringify(modelType)} is not llama, mistral or qwen2`);
  }
  const arch = modelType === "qwen2" ? "qwen2" : "llama";
  if (config.summary_length !== undefined) {
    throw unsupported("AutoCompressor summary embeddings have no GGUF tensor");
  }
  const hidden = intOf(config, "hidden_size", configPath);
  const layers = intOf(config, "num_hidden_layers", configPath);
  const heads = intOf(config, "num_attention_heads", configPath);
  const kvHeads = intOf(config, "num_key_value_heads", configPath, heads);
  const headDim = intOf(config, "head_dim", configPath, hidden / heads);
  const vocab = intOf(config, "vocab_size", configPath);
  const scaling = config.rope_scaling as Json | null | undefined;
  const scalingType = scaling ? scaling.rope_type ?? scaling.type : undefined;
  if (scaling && scalingType !== "linear") {
    throw unsupported(`rope_scaling ${JSON.stringify(scalingType)} is not written`);
  }

  const p = arch;
  const metadata: Record<string, GgufMetadataValue> = {
    "general.architecture": arch,
    "general.name": options.name ?? (modelDir.replace(/\/+$/, "").split("/").pop() || "model"),
    "general.file_type": u32(FILE_TYPES[dtype]),
  };
  if (!["f32", "f16", "bf16"].includes(dtype)) metadata["general.quantization_version"] = u32(2);
  metadata[`${p}.context_length`] = u32(intOf(config, "max_position_embeddings", configPath));
  metadata[`${p}.embedding_length`] = u32(hidden);
  metadata[`${p}.block_count`] = u32(layers);
  metadata[`${p}.feed_forward_length`] = u32(intOf(config, "intermediate_size", configPath));
  metadata[`${p}.attention.head_count`] = u32(heads);
  metadata[`${p}.attention.head_count_kv`] = u32(kvHeads);
  metadata[`${p}.rope.freq_base`] = f32(Number(config.rope_theta ?? 10000));
  metadata[`${p}.attention.layer_norm_rms_epsilon`] = f32(Number(config.rms_norm_eps ?? 1e-6));
  metadata[`${p}.vocab_size`] = u32(vocab);
  metadata[`${p}.rope.dimension_count`] = u32(headDim);
  if (headDim * heads !== hidden) {
    metadata[`${p}.attention.key_length`] = u32(headDim);
    metadata[`${p}.attention.value_length`] = u32(headDim);
  }
  if (scaling) {
    metadata[`${p}.rope.scaling.type`] = "linear";
    metadata[`${p}.rope.scaling.factor`] = f32(Number(scaling.factor));
  }

  const tokPath = `${modelDir}/tokenizer.json`;
  const tokJson = await readBoundedJson(tokPath, { action: "convert model" }) as Json;
  const tokConfig = await optionalJson(`${modelDir}/tokenizer_config.json`);
  const idOf = (
    v: unknown,
  ) => (typeof v === "number" ? v : Array.isArray(v) && typeof v[0] === "number" ? v[0] : undefined);
  Object.assign(
    metadata,
    tokenizerMetadata(tokJson, {
      vocabSize: vocab,
      path: tokPath,
      bosTokenId: idOf(config.bos_token_id),
      eosTokenId: idOf(config.eos_token_id),
      addBos: typeof tokConfig?.add_bos_token === "boolean" ? tokConfig.add_bos_token : undefined,
      addEos: typeof tokConfig?.add_eos_token === "boolean" ? tokConfig.add_eos_token : undefined,
      chatTemplate: typeof tokConfig?.chat_template === "string" ? tokConfig.chat_template : undefined,
      pre: options.pre,
    }),
  );

  const source = await readTensors(modelDir);
  const tied = config.tie_word_embeddings === true || !source.has("lm_head.weight");
  const tensors: GgufTensorInput[] = [];
  const used = new Set<string>();
  const add = (hf: string, gguf: string, permuteHeads?: number, optional = false) => {
    const t = source.get(hf);
    if (!t) {
      if (optional) return;
      throw new KvfoldError("FORMAT", `Cannot convert model ${modelDir}: tensor ${hf} is missing`);
    }
    used.add(hf);
    const matrix = t.shape.length === 2;
    const type: GgmlType = !matrix
      ? "f32"
      : dtype !== "q4_k_m"
      ? dtype
      : /attn_v|ffn_down|^output\./.test(gguf)
      ? "q6_k"
      : "q4_k";
    const block = GGML_BLOCKS[type].values;
    if (matrix && t.shape[1] % block !== 0) {
      throw unsupported(
        `tensor ${hf} has rows of ${t.shape[1]} values, not whole ${type} blocks of ${block}`,
      );
    }
    const rows = t.shape[0];
    const cols = matrix ? t.shape[1] : 1;
    if (permuteHeads !== undefined && rows % (2 * permuteHeads) !== 0) {
      throw new KvfoldError(
        "FORMAT",
        `Cannot convert model ${modelDir}: tensor ${hf} has ${rows} rows, not ${permuteHeads} heads`,
      );
    }
    const same = (type === "f16" && t.dtype === "F16") || (type === "bf16" && t.dtype === "BF16");
    tensors.push({
      name: gguf,
      type,
      shape: t.shape,
      data: () => {
        if (same && permuteHeads === undefined) return t.data;
        const x = toFloat32(t);
        return permuteHeads === undefined ? x : permuteLlamaRows(x, rows, cols, permuteHeads);
      },
    });
  };
  const qHeads = arch === "llama" ? heads : undefined;
  const kHeads = arch === "llama" ? kvHeads : undefined;
  add("model.embed_tokens.weight", "token_embd.weight");
  for (let i = 0; i < layers; i++) {
    const hf = `model.layers.${i}.`;
    const g = `blk.${i}.`;
    add(hf + "input_layernorm.weight", g + "attn_norm.weight");
    add(hf + "self_attn.q_proj.weight", g + "attn_q.weight", qHeads);
    add(hf + "self_attn.q_proj.bias", g + "attn_q.bias", qHeads, true);
    add(hf + "self_attn.k_proj.weight", g + "attn_k.weight", kHeads);
    add(hf + "self_attn.k_proj.bias", g + "attn_k.bias", kHeads, true);
    add(hf + "self_attn.v_proj.weight", g + "attn_v.weight");
    add(hf + "self_attn.v_proj.bias", g + "attn_v.bias", undefined, true);
    add(hf + "self_attn.o_proj.weight", g + "attn_output.weight");
    add(hf + "self_attn.o_proj.bias", g + "attn_output.bias", undefined, true);
    add(hf + "post_attention_layernorm.weight", g + "ffn_norm.weight");
    add(hf + "mlp.gate_proj.weight", g + "ffn_gate.weight");
    add(hf + "mlp.up_proj.weight", g + "ffn_up.weight");
    add(hf + "mlp.down_proj.weight", g + "ffn_down.weight");
  }
  add("model.norm.weight", "output_norm.weight");
  if (!tied) add("lm_head.weight", "output.weight");
  else used.add("lm_head.weight");
  const left = [...source.keys()].filter((n) => !used.has(n) && !n.endsWith("rotary_emb.inv_freq"));
  if (left.length > 0) throw unsupported(`tensor ${left[0]} has no GGUF equivalent`);
  return { metadata, tensors };
}

/**
 * Training runs over a {@link ModelTrainer}: a model from scratch (a random Hugging Face folder from a
 * config), language modelling on texts, AutoCompressor training on documents and questions, the
 * JSONL data formats the CLI reads, with progress, checkpoint/resume and abort like `finetuneLora`.
 *
 * @module
 */

import { readBoundedJson, readBoundedText } from "./_bounded_read.ts";
import { configPositiveInt } from "./_int_args.ts";
import { normalTensor } from "./_seeded_random.ts";
import { KvfoldError } from "./errors.ts";
import type { Model } from "./model.ts";
import {
  readSafetensorsFile,
  type TensorInput,
  toFloat32,
  writeSafetensorsFile,
} from "./formats/safetensors.ts";
import { type CompressorExample, ModelTrainer, type ModelTrainOptions } from "./model_train.ts";
import { qaTokens } from "./train.ts";
import { runTrainingLoop, type TrainingLoopOptions, type TrainingProgress } from "./training_loop.ts";

/** Options of {@link initModelFolder}. */
export interface InitModelOptions {
  /** Seed of every weight; default 0. */
  seed?: number;
  /** Standard deviation of the matrices (HF's initializer_range); default config.initializer_range or 0.02. */
  initStd?: number;
  /** A folder whose tokenizer files (tokenizer.json, tokenizer_config.json, ...) are copied. */
  tokenizerDir?: string;
}

/**
 * Writes a randomly initialised model folder from an HF `config.json` object, as `from_config` does:
 * matrices normal(0, initializer_range), norms 1, biases 0; f32 safetensors. Llama, Mistral and
 * Qwen2 (`model_type` "qwen2" has q/k/v biases; Llama's `attention_bias` adds them with o's).
 *
 * @example
 * ```ts ignore
 * await initModelFolder("./models/scratch", {
 *   model_type: "llama", hidden_size: 128, intermediate_size: 352, num_hidden_layers: 4,
 *   num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 1024, max_position_embeddings: 2048,
 *   rms_norm_eps: 1e-5, tie_word_embeddings: true,
 * }, { seed: 1, tokenizerDir: "./demo/tokenizer" });
 * ```
 */
export async function initModelFolder(
  dir: string,
  config: Record<string, unknown>,
  options: InitModelOptions = {},
): Promise<void> {
  const num = (k: string, fallback?: number): number =>
    configPositiveInt(config, k, {
      code: "INVALID_ARGUMENT",
      action: "Cannot initialise model",
      source: "config",
    }, fallback);
  const H = num("hidden_size"), I = num("intermediate_size"), L = num("num_hidden_layers");
  const nh = num("num_attention_heads"), nkv = num("num_key_value_heads", nh), V = num("vocab_size");
  const hd = num("head_dim", Math.floor(H / nh));
  const seed = options.seed ?? 0;
  const std = options.initStd ??
    (typeof config.initializer_range === "number" ? config.initializer_range : 0.02);
  const qkvBias = config.model_type === "qwen2" || config.attention_bias === true;
  const oBias = config.model_type !== "qwen2" && config.attention_bias === true;
  const tensors: TensorInput[] = [];
  const matrix = (name: string, rows: number, cols: number) =>
    tensors.push({
      name,
      dtype: "F32",
      shape: [rows, cols],
      data: normalTensor(seed, name, rows * cols, 0, std),
    });
  const vector = (name: string, n: number, value: number) =>
    tensors.push({ name, dtype: "F32", shape: [n], data: new Float32Array(n).fill(value) });
  matrix("model.embed_tokens.weight", V, H);
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}`;
    vector(`${p}.input_layernorm.weight`, H, 1);
    matrix(`${p}.self_attn.q_proj.weight`, nh * hd, H);
    matrix(`${p}.self_attn.k_proj.weight`, nkv * hd, H);
    matrix(`${p}.self_attn.v_proj.weight`, nkv * hd, H);
    matrix(`${p}.self_attn.o_proj.weight`, H, nh * hd);
    if (qkvBias) {
      vector(`${p}.self_attn.q_proj.bias`, nh * hd, 0);
      vector(`${p}.self_attn.k_proj.bias`, nkv * hd, 0);
      vector(`${p}.self_attn.v_proj.bias`, nkv * hd, 0);
    }
    if (oBias) vector(`${p}.self_attn.o_proj.bias`, H, 0);
    vector(`${p}.post_attention_layernorm.weight`, H, 1);
    matrix(`${p}.mlp.gate_proj.weight`, I, H);
    matrix(`${p}.mlp.up_proj.weight`, I, H);
    matrix(`${p}.mlp.down_proj.weight`, H, I);
  }
  vector("model.norm.weight", H, 1);
  if (config.tie_word_embeddings !== true) matrix("lm_head.weight", V, H);
  await Deno.mkdir(dir, { recursive: true });
  await writeSafetensorsFile(`${dir}/model.safetensors`, tensors, { format: "pt" });
  const written = {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    torch_dtype: "float32",
    ...config,
  };
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(written, null, 2) + "\n");
  if (options.tokenizerDir !== undefined) {
    for (
      const f of [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
      ]
    ) {
      try {
        await Deno.copyFile(`${options.tokenizerDir}/${f}`, `${dir}/${f}`);
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
      }
    }
  }
}

/** Reads an HF config.json (through the bounded reader) for {@link initModelFolder}. */
export async function readModelConfig(path: string): Promise<Record<string, unknown>> {
  const c = await readBoundedJson(path, { action: "read model config" });
  if (typeof c !== "object" || c === null || Array.isArray(c)) {
    throw new KvfoldError("FORMAT", `Cannot read model config: ${path} is not a JSON object`);
  }
  return c as Record<string, unknown>;
}

/** One compressor training document: text, and optionally a question and its answer (or several). */
export interface CompressorDocument {
  document: string;
  question?: string;
  answer?: string;
  /** Several questions over the document instead of `question` / `answer`: one compression serves them all. */
  pairs?: { question: string; answer: string }[];
}

/**
 * Reads training JSONL: `{"text": ...}` lines for `"lm"`, `{"document"|"text", "question",
 * "answer"}` lines for `"compressor"` (question and answer together, or neither; or `"pairs"`, an
 * array of `{"question", "answer"}`, instead of both). Blank lines are skipped; a bad line is a
 * FORMAT error naming its line number.
 *
 * @example
 * ```ts ignore
 * const docs = await readTrainingData("./corpus/train.jsonl", "compressor");
 * ```
 */
export async function readTrainingData(path: string, kind: "lm"): Promise<string[]>;
export async function readTrainingData(path: string, kind: "compressor"): Promise<CompressorDocument[]>;
export async function readTrainingData(
  path: string,
  kind: "lm" | "compressor",
): Promise<string[] | CompressorDocument[]> {
  const text = await readBoundedText(path, { action: "read training data", maxBytes: 1024 ** 3 });
  const out: (string | CompressorDocument)[] = [];
  const bad = (line: number, why: string) =>
    new KvfoldError("FORMAT", `Cannot read training data: ${path} line ${line} ${why}`);
  for (const [i, line] of text.split("\n").entries()) {
    if (line.trim() === "") continue;
    let e: unknown;
    try {
      e = JSON.parse(line);
    } catch (err) {
      throw bad(i + 1, `is not JSON (${(err as Error).message})`);
    }
    if (typeof e !== "object" || e === null || Array.isArray(e)) throw bad(i + 1, "is not a JSON object");
    const r = e as Record<string, unknown>;
    if (kind === "lm") {
      if (typeof r.text !== "string" || r.text === "") throw bad(i + 1, 'needs a non-empty string "text"');
      out.push(r.text);
      continue;
    }
    const document = r.document ?? r.text;
    if (typeof document !== "string" || document === "") {
      throw bad(i + 1, 'needs a non-empty string "document" (or "text")');
    }
    if (r.pairs !== undefined) {
      if (r.question !== undefined || r.answer !== undefined) {
        throw bad(i + 1, 'has "pairs" and "question"/"answer"; give one or the other');
      }
      if (!Array.isArray(r.pairs)) throw bad(i + 1, 'has "pairs" that is not an array');
      const pairs = r.pairs.map((p: unknown, j: number) => {
        const q = (p as Record<string, unknown> | null)?.question,
          a = (p as Record<string, unknown> | null)?.answer;
        if (typeof q !== "string" || typeof a !== "string" || a === "") {
          throw bad(i + 1, `pairs[${j}] needs a string "question" and a non-empty string "answer"`);
        }
        return { question: q, answer: a };
      });
      out.push({ document, pairs });
      continue;
    }
    const hasQ = r.question !== undefined, hasA = r.answer !== undefined;
    if (hasQ !== hasA || (hasQ && (typeof r.question !== "string" || typeof r.answer !== "string"))) {
      throw bad(i + 1, 'needs string "question" and "answer" together, or neither');
    }
    if (hasA && r.answer === "") throw bad(i + 1, 'has an empty "answer"');
    out.push({
      document,
      question: r.question as string | undefined,
      answer: r.answer as string | undefined,
    });
  }
  if (out.length === 0) throw new KvfoldError("FORMAT", `Cannot read training data: ${path} has no examples`);
  return out as string[] | CompressorDocument[];
}

/** Options of {@link trainModel}. */
export interface TrainModelOptions extends ModelTrainOptions, TrainingLoopOptions {
  /** Tokens per training sequence (texts are cut into pieces this long); default 512. */
  sequenceLength?: number;
  onProgress?: (p: TrainingProgress) => void;
}

/**
 * Trains every weight of `model` on texts (next-token prediction over sequences of
 * `sequenceLength` tokens) and returns the trainer (save it with {@link ModelTrainer.saveModel}).
 * With `checkpoint`, a killed run resumes to the same weights as an uninterrupted one.
 *
 * @example
 * ```ts ignore
 * using trainer = await trainModel(model, texts, { steps: 500, learningRate: 3e-3, warmupSteps: 20,
 *   checkpoint: "./run.ckpt.safetensors", onProgress: (p) => console.log(p.step, p.loss) });
 * await trainer.saveModel("./models/trained");
 * ```
 */
export async function trainModel(
  model: Model,
  texts: readonly string[],
  options: TrainModelOptions = {},
): Promise<ModelTrainer> {
  const len = options.sequenceLength ?? 512;
  if (!Number.isInteger(len) || len < 2) {
    throw new RangeError(`Cannot train model: sequenceLength ${len} is not an integer >= 2`);
  }
  const sequences: number[][] = [];
  for (const t of texts) {
    const ids = model.tokenizer.encode(t);
    for (let i = 0; i + 1 < ids.length; i += len) sequences.push(ids.slice(i, i + len + 1));
  }
  if (sequences.length === 0) {
    throw new KvfoldError("INVALID_ARGUMENT", "Cannot train model: no text of 2+ tokens");
  }
  return await runModelLoop(model, sequences.length, options, async (trainer, i) => {
    const s = sequences[i];
    // Each of the first len tokens predicts the next; the extra token is only a target.
    const ids = s.slice(0, -1), labels = s.slice(1);
    const loss = await trainer.accumulate({ ids, labels }, { signal: options.signal });
    return { loss, rows: ids.length };
  });
}

/** Options of {@link trainCompressor}. */
export interface TrainCompressorOptions extends ModelTrainOptions, TrainingLoopOptions {
  /** Wrap questions in the chat template (default: when the model has one), as answerFromChunks does. */
  chat?: boolean;
  /** Start from the model folder's own embed_summary.weight when it has one (default true). */
  resumeSummary?: boolean;
  onProgress?: (p: TrainingProgress) => void;
}

/**
 * Trains an AutoCompressor: `model` with `summaryLength` summary rows, on documents (next-segment
 * LM) and their questions (`[summary vectors | question] -> answer EOS`, encoded as
 * answerFromChunks encodes them). Returns the trainer; {@link ModelTrainer.saveModel} writes a
 * folder `Compressor.load` reads.
 *
 * @example
 * ```ts ignore
 * using trainer = await trainCompressor(model, docs, { summaryLength: 16, segmentLength: 256,
 *   steps: 300, learningRate: 2e-3, checkpoint: "./c.ckpt.safetensors" });
 * await trainer.saveModel("./models/compressor");
 * ```
 */
export async function trainCompressor(
  model: Model,
  documents: readonly CompressorDocument[],
  options: TrainCompressorOptions = {},
): Promise<ModelTrainer> {
  if (!(options.summaryLength !== undefined && options.summaryLength > 0)) {
    throw new RangeError("Cannot train compressor: summaryLength must be a positive integer");
  }
  const examples: CompressorExample[] = documents.map((d, i) => {
    const ids = model.tokenizer.encode(d.document);
    if (ids.length === 0) {
      throw new KvfoldError("INVALID_ARGUMENT", `Cannot train compressor: document ${i} is empty`);
    }
    const qa = (question: string, answer: string) => {
      const { prompt, target } = qaTokens(model, question, answer, { chat: options.chat });
      return { question: prompt, answer: target };
    };
    if (d.pairs !== undefined) return { ids, pairs: d.pairs.map((p) => qa(p.question, p.answer)) };
    if (d.answer === undefined) return { ids };
    return { ids, ...qa(d.question ?? "", d.answer) };
  });
  const initSummary = options.resumeSummary ?? true ? await readEmbedSummaryOf(model.dir) : undefined;
  return await runModelLoop(model, examples.length, options, async (trainer, i) => {
    const e = examples[i];
    const l = await trainer.accumulateDocument(e, { signal: options.signal });
    const o = trainer.options;
    const loss = (Number.isNaN(l.lm) ? 0 : o.lmWeight * l.lm) + (Number.isNaN(l.qa) ? 0 : o.qaWeight * l.qa);
    const qaRows = (e.pairs ?? [e]).reduce(
      (n, p) => n + (p.question?.length ?? 0) + (p.answer?.length ?? 0),
      0,
    );
    return { loss, rows: e.ids.length + qaRows };
  }, initSummary);
}

async function readEmbedSummaryOf(dir: string): Promise<Float32Array | undefined> {
  try {
    const t = (await readSafetensorsFile(`${dir}/model.safetensors`)).tensors.get("embed_summary.weight");
    return t ? toFloat32(t) : undefined;
  } catch (e) {
    if (e instanceof KvfoldError && e.code === "IO") return undefined;
    throw e;
  }
}

async function runModelLoop(
  model: Model,
  items: number,
  options: ModelTrainOptions & TrainingLoopOptions & { onProgress?: (p: TrainingProgress) => void },
  accumulateItem: (trainer: ModelTrainer, index: number) => Promise<{ loss: number; rows: number }>,
  initSummary?: Float32Array,
): Promise<ModelTrainer> {
  const accumulate = options.accumulate ?? 1;
  const steps = options.steps ?? Math.max(1, Math.floor(items / accumulate));
  const trainer = ModelTrainer.create(model, { ...options, totalSteps: options.totalSteps ?? steps });
  try {
    if (initSummary && trainer.summaryLength > 0) {
      if (initSummary.length !== trainer.read("embed_summary.weight").length) {
        throw new KvfoldError(
          "INVALID_ARGUMENT",
          `Cannot train compressor: ${model.dir} has embed_summary.weight of another shape than summaryLength ` +
            `${trainer.summaryLength} x ${model.info.hiddenSize}`,
        );
      }
      trainer.write("embed_summary.weight", initSummary);
    }
    await runTrainingLoop(
      trainer,
      items,
      { ...options, seed: trainer.options.seed, steps },
      (i) => accumulateItem(trainer, i),
    );
    return trainer;
  } catch (e) {
    trainer.dispose();
    throw e;
  }
}

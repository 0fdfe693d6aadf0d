/**
 * LoRA finetuning with the base model frozen, as LLoCO trains one adapter per document group:
 * examples `[summary vectors | prompt | answer]` with the loss on the answer tokens only, AdamW with
 * warmup and cosine decay, gradient accumulation and clipping, checkpoints a killed run resumes
 * from, and a PEFT folder at the end (`adapter_config.json` + `adapter_model.safetensors`).
 *
 * @module
 */

import { alloc, check, outPointer, sym } from "./_binding.ts";
import { HandleOwner, NativeHandle } from "./_handle.ts";
import { int32Arg, int64Arg, showValue, tokenIdsArg } from "./_int_args.ts";
import { LORA_PROJECTIONS, type LoraProjection } from "./adapter.ts";
import type { Compressor } from "./compressor.ts";
import { KvfoldError } from "./errors.ts";
import type { Model } from "./model.ts";
import { type TensorInput, writeSafetensorsFile } from "./formats/safetensors.ts";
import { NativeStruct } from "./_abi.ts";
import {
  type OptimizerOptions,
  optimizerStep,
  readCheckpointFile,
  resolveOptimizer,
  runTrainingLoop,
  setOptimizer,
  type TrainingLoopOptions,
  type TrainingProgress,
  type TrainStep,
  writeCheckpointFile,
} from "./training_loop.ts";

export type { OptimizerOptions, TrainingLoopOptions, TrainingProgress, TrainStep } from "./training_loop.ts";

/** Settings of a {@link LoraTrainer}; the defaults follow PEFT and common LLoCO finetuning. */
export interface LoraTrainOptions extends OptimizerOptions {
  /** r; default 8. */
  rank?: number;
  /** lora_alpha; default 16. */
  alpha?: number;
  /** Projections to train; default q, k, v, o. */
  targets?: readonly LoraProjection[];
  /** Scale alpha / sqrt(r) instead of alpha / r. */
  rslora?: boolean;
  /** Seed of A's initialisation and of the example order; default 0. */
  seed?: number;
}

/** Which tensor of a pair {@link LoraTrainer.read} and {@link LoraTrainer.write} address. */
export const TRAIN_TENSORS = Object.freeze(
  {
    A: 0,
    B: 1,
    gradA: 2,
    gradB: 3,
    momentA: 4,
    varianceA: 5,
    momentB: 6,
    varianceB: 7,
  } as const,
);
/** A key of {@link TRAIN_TENSORS}. */
export type TrainTensor = keyof typeof TRAIN_TENSORS;

/** One finetuning example: rows `[prefix | ids]`; `labels[t]` is what row `prefix rows + t` predicts, or -1. */
export interface TrainExample {
  /** Summary vectors (or any embeddings) [rows, hidden] placed first; none by default. */
  prefix?: Float32Array;
  ids: readonly number[];
  labels: readonly number[];
}

// The native (layer, projection, tensor) of a trainer read or write, checked before they cross.
function tensorArgs(action: string, layer: number, proj: LoraProjection, which: TrainTensor): number[] {
  const p = LORA_PROJECTIONS.indexOf(proj);
  if (p < 0) {
    throw new TypeError(`Cannot ${action}: ${showValue(proj)} is not one of ${LORA_PROJECTIONS.join(", ")}`);
  }
  if (!Object.hasOwn(TRAIN_TENSORS, which)) {
    throw new TypeError(
      `Cannot ${action}: ${showValue(which)} is not one of ${Object.keys(TRAIN_TENSORS).join(", ")}`,
    );
  }
  return [int32Arg(action, "layer", layer), p, TRAIN_TENSORS[which]];
}

/**
 * LoRA pairs being trained for one model. Each {@link accumulate} runs one example forward and
 * backward; {@link step} applies AdamW to the averaged gradients.
 *
 * @example
 * ```ts ignore
 * using trainer = LoraTrainer.create(model, { rank: 8, targets: ["q_proj", "v_proj"], learningRate: 1e-3 });
 * const loss = await trainer.accumulate({ ids: [1, 5, 9, 4], labels: [-1, -1, 4, 2] });
 * trainer.step();
 * await trainer.saveAdapter("./adapters/mine");
 * ```
 */
export class LoraTrainer extends HandleOwner {
  /** The frozen base model. */
  readonly model: Model;
  /** r, alpha, targets, scale and size. */
  readonly info: { rank: number; alpha: number; scale: number; targets: LoraProjection[]; params: number };
  /** The settings it was created with (defaults filled in). */
  readonly options: Required<LoraTrainOptions>;

  private constructor(handle: NativeHandle, model: Model, options: Required<LoraTrainOptions>) {
    super(handle);
    this.model = model;
    this.options = options;
    const info = trainerInfo(handle.ptr);
    const mask = info.get("target_mask");
    this.info = {
      rank: info.get("rank"),
      alpha: info.get("alpha"),
      scale: info.get("scale"),
      targets: LORA_PROJECTIONS.filter((_, i) => (mask & (1 << i)) !== 0),
      params: info.get("n_params"),
    };
  }

  /** New pairs: A uniform in ±1/√in (PEFT's init), B zero, so training starts at the base model. */
  static create(model: Model, options: LoraTrainOptions = {}): LoraTrainer {
    const o: Required<LoraTrainOptions> = {
      rank: options.rank ?? 8,
      alpha: options.alpha ?? 16,
      targets: options.targets ?? ["q_proj", "k_proj", "v_proj", "o_proj"],
      rslora: options.rslora ?? false,
      seed: options.seed ?? 0,
      ...resolveOptimizer(options, 2e-4),
    };
    let mask = 0;
    for (const t of o.targets) {
      const i = LORA_PROJECTIONS.indexOf(t);
      if (i < 0) {
        throw new KvfoldError(
          "INVALID_ARGUMENT",
          `Cannot create trainer: target ${t} is not one of ${LORA_PROJECTIONS.join(", ")}`,
        );
      }
      mask |= 1 << i;
    }
    const action = "create trainer";
    const p = new NativeStruct("kf_lora_train_params")
      .set("rank", int32Arg(action, "rank", o.rank))
      .set("alpha", o.alpha)
      .set("target_mask", mask)
      .set("use_rslora", o.rslora ? 1 : 0)
      .set("seed", int64Arg(action, "seed", o.seed, { min: 0n }));
    setOptimizer(p, action, o);
    const out = outPointer();
    check(sym().kf_lora_trainer_create(model._handle.ptr, p.buf, out.buf));
    const handle = new NativeHandle(
      out.get(),
      "the trainer",
      (ptr) => check(sym().kf_lora_trainer_free(ptr)),
      model._handle,
    );
    return new LoraTrainer(handle, model, o);
  }

  /** Optimizer steps taken. */
  get stepCount(): number {
    return trainerInfo(this._handle.ptr).get("step");
  }

  /** Examples whose gradients wait for the next {@link step}. */
  get accumulated(): number {
    return trainerInfo(this._handle.ptr).get("accumulated");
  }

  /**
   * Runs one example forward and backward and adds the gradient of its mean cross-entropy over the
   * labelled rows; returns that mean. Aborting leaves the accumulated gradients unchanged.
   */
  async accumulate(
    example: TrainExample,
    options: { signal?: AbortSignal; onProgress?: (done: number, total: number) => void } = {},
  ): Promise<number> {
    const { ids, labels } = example;
    const H = this.model.info.hiddenSize;
    if (ids.length !== labels.length) {
      throw new KvfoldError(
        "INVALID_ARGUMENT",
        `Cannot train: ${ids.length} ids but ${labels.length} labels (one label per id)`,
      );
    }
    const prefix = example.prefix ?? new Float32Array(0);
    if (prefix.length % H !== 0) {
      throw new KvfoldError(
        "INVALID_ARGUMENT",
        `Cannot train: the prefix holds ${prefix.length} values, not rows of the hidden size ${H}`,
      );
    }
    const V = this.model.info.vocabSize;
    const idBuf = tokenIdsArg("train", ids, V);
    const labelBuf = tokenIdsArg("train", labels, V, { what: "label", ignore: -1 });
    const nIds = int32Arg("train", "ids.length", ids.length),
      nPrefix = int32Arg("train", "prefix rows", prefix.length / H);
    const prefixBuf = alloc(prefix.length * 4);
    new Float32Array(prefixBuf.buffer).set(prefix);
    const loss = alloc(4);
    await this._handle.runControlled(
      (ptr, ctl) =>
        sym().kf_lora_trainer_accumulate(
          ptr,
          prefixBuf,
          nPrefix,
          idBuf,
          labelBuf,
          nIds,
          loss,
          ctl.buf,
        ),
      { signal: options.signal, onProgress: options.onProgress },
    );
    return new DataView(loss.buffer).getFloat32(0, true);
  }

  /** AdamW over the accumulated gradients (averaged, clipped), with the scheduled learning rate. */
  step(): TrainStep {
    return optimizerStep((info) => sym().kf_lora_trainer_step(this._handle.ptr, info));
  }

  /** Shape of a pair's tensor: A and its moments [r, in], B and its moments [out, r]. */
  shapeOf(proj: LoraProjection, which: TrainTensor): [number, number] {
    const { hiddenSize: H, heads, kvHeads, headDim, intermediateSize: I } = this.model.info;
    const io: Record<LoraProjection, [number, number]> = {
      q_proj: [H, heads * headDim],
      k_proj: [H, kvHeads * headDim],
      v_proj: [H, kvHeads * headDim],
      o_proj: [heads * headDim, H],
      gate_proj: [H, I],
      up_proj: [H, I],
      down_proj: [I, H],
    };
    const [inDim, outDim] = io[proj];
    const r = this.info.rank;
    return ["A", "gradA", "momentA", "varianceA"].includes(which) ? [r, inDim] : [outDim, r];
  }

  /** A copy of one pair's tensor (row-major, see {@link shapeOf}). */
  read(layer: number, proj: LoraProjection, which: TrainTensor): Float32Array {
    const [l, p, w] = tensorArgs("read trainer tensor", layer, proj, which);
    const [r, c] = this.shapeOf(proj, which);
    const out = new Float32Array(r * c);
    const bytes = new Uint8Array(out.buffer);
    check(sym().kf_lora_trainer_read(this._handle.ptr, l, p, w, bytes, BigInt(out.length)));
    return out;
  }

  /** Overwrites one pair's tensor (checkpoint restore, tests). */
  write(layer: number, proj: LoraProjection, which: TrainTensor, data: Float32Array): void {
    const [l, p, w] = tensorArgs("write trainer tensor", layer, proj, which);
    const copy = new Float32Array(data);
    const bytes = new Uint8Array(copy.buffer);
    check(sym().kf_lora_trainer_write(this._handle.ptr, l, p, w, bytes, BigInt(copy.length)));
  }

  /** Sets the step count (for the learning-rate schedule) and drops accumulated gradients. */
  setStep(step: number): void {
    check(sym().kf_lora_trainer_set_step(this._handle.ptr, int64Arg("set trainer step", "step", step)));
  }

  /** Every trained (layer, projection). */
  *pairs(): Generator<[number, LoraProjection]> {
    for (let l = 0; l < this.model.info.layers; l++) {
      for (const p of this.info.targets) yield [l, p];
    }
  }

  /**
   * Writes the adapter as a PEFT folder: `adapter_config.json` (peft_type LORA, r, lora_alpha,
   * target_modules, use_rslora, base_model_name_or_path) and `adapter_model.safetensors` with
   * `base_model.model.model.layers.{i}.{self_attn|mlp}.{proj}.lora_{A|B}.weight` in f32.
   */
  async saveAdapter(dir: string, options: { baseModelName?: string } = {}): Promise<void> {
    const tensors: TensorInput[] = [];
    for (const [l, p] of this.pairs()) {
      const parent = ["gate_proj", "up_proj", "down_proj"].includes(p) ? "mlp" : "self_attn";
      const name = `base_model.model.model.layers.${l}.${parent}.${p}`;
      for (const which of ["A", "B"] as const) {
        tensors.push({
          name: `${name}.lora_${which}.weight`,
          dtype: "F32",
          shape: this.shapeOf(p, which),
          data: this.read(l, p, which),
        });
      }
    }
    await Deno.mkdir(dir, { recursive: true });
    const config = {
      peft_type: "LORA",
      task_type: "CAUSAL_LM",
      base_model_name_or_path: options.baseModelName ?? this.model.dir,
      r: this.info.rank,
      lora_alpha: this.info.alpha,
      lora_dropout: 0,
      target_modules: this.info.targets,
      use_rslora: this.options.rslora,
      use_dora: false,
      fan_in_fan_out: false,
      bias: "none",
      inference_mode: true,
    };
    await writeSafetensorsFile(`${dir}/adapter_model.safetensors.tmp`, tensors, { format: "pt" });
    await Deno.rename(`${dir}/adapter_model.safetensors.tmp`, `${dir}/adapter_model.safetensors`);
    await Deno.writeTextFile(`${dir}/adapter_config.json`, JSON.stringify(config, null, 2) + "\n");
  }

  /**
   * Writes weights, AdamW moments and `state` (the caller's loop position) to one safetensors file,
   * atomically (a temp file renamed over the old one), so a killed run never leaves a torn checkpoint.
   */
  async saveCheckpoint(path: string, state: Record<string, string | number>): Promise<void> {
    const tensors: TensorInput[] = [];
    for (const [l, p] of this.pairs()) {
      for (const which of CHECKPOINT_TENSORS) {
        tensors.push({
          name: `${l}.${p}.${which}`,
          dtype: "F32",
          shape: this.shapeOf(p, which),
          data: this.read(l, p, which),
        });
      }
    }
    await writeCheckpointFile(path, tensors, this.stepCount, this.#identity(), state);
  }

  /** Restores {@link saveCheckpoint}'s weights, moments and step; returns its `state`. */
  async loadCheckpoint(path: string): Promise<Record<string, string>> {
    const ckpt = await readCheckpointFile(path, this.#identity());
    for (const [l, p] of this.pairs()) {
      for (const which of CHECKPOINT_TENSORS) this.write(l, p, which, ckpt.tensor(`${l}.${p}.${which}`));
    }
    this.setStep(ckpt.step);
    return ckpt.state;
  }

  /** What a checkpoint must match to resume this trainer. */
  #identity(): string {
    return `rank ${this.info.rank} on ${this.info.targets.join(",")}`;
  }
}

// What a LoRA checkpoint holds per pair: weights and AdamW moments (gradients are empty at a step boundary).
function trainerInfo(ptr: Deno.PointerValue): NativeStruct<"kf_lora_trainer_info"> {
  const info = new NativeStruct("kf_lora_trainer_info");
  check(sym().kf_lora_trainer_get_info(ptr, info.buf));
  return info;
}

const CHECKPOINT_TENSORS = ["A", "B", "momentA", "varianceA", "momentB", "varianceB"] as const;

/** A question-answer pair over a document (text to compress) or ready summary vectors. */
export interface QaExample {
  /** Text compressed with the `compressor` option (LLoCO: the decoder's own checkpoint). */
  document?: string;
  /** Summary vectors [rows, hidden] used as given. */
  vectors?: Float32Array;
  question: string;
  answer: string;
}

/** Progress of {@link finetuneLora}. */
export type FinetuneProgress = TrainingProgress;

/** Options of {@link finetuneLora}. */
export interface FinetuneOptions extends LoraTrainOptions, TrainingLoopOptions {
  /** Compresses `document` examples (required when some example has one). */
  compressor?: Compressor;
  /** Wrap questions in the chat template (default: when the model has one), as answerFromChunks does. */
  chat?: boolean;
  onProgress?: (p: FinetuneProgress) => void;
}

/**
 * The token ids of a question (the prompt, encoded as {@link answerFromChunks} encodes it) and of
 * its answer followed by EOS (what the rows after the prompt predict).
 */
export function qaTokens(
  model: Model,
  question: string,
  answer: string,
  options: { chat?: boolean } = {},
): { prompt: number[]; target: number[] } {
  const chat = options.chat ?? model.tokenizer.hasChatTemplate;
  const prompt = model.encodePrompt(question, { chat });
  const answerIds = model.tokenizer.encode(answer, { addSpecialTokens: false });
  const eos = model.eosTokenIds[0];
  const target = eos === undefined ? answerIds : [...answerIds, eos];
  if (target.length === 0) throw new KvfoldError("INVALID_ARGUMENT", "Cannot train: the answer is empty");
  return { prompt, target };
}

/**
 * The rows and labels of one LLoCO example: `[vectors | prompt | answer EOS]`, each answer token
 * (and the EOS) labelled at the row before it. The prompt is encoded as {@link answerFromChunks}
 * encodes questions, so the adapter is trained on what it will serve.
 */
export function qaExampleRows(
  model: Model,
  vectors: Float32Array | undefined,
  question: string,
  answer: string,
  options: { chat?: boolean } = {},
): TrainExample {
  const { prompt, target } = qaTokens(model, question, answer, options);
  const ids = [...prompt, ...target.slice(0, -1)];
  const labels = ids.map((_, t) => (t >= prompt.length - 1 ? target[t - (prompt.length - 1)] : -1));
  return { prefix: vectors, ids, labels };
}

/**
 * Finetunes a LoRA on question-answer examples over compressed contexts and returns the trainer
 * (save it with {@link LoraTrainer.saveAdapter}). With `checkpoint`, a run killed at any point
 * resumes from its last checkpoint and ends with the same weights as an uninterrupted run.
 *
 * @example
 * ```ts ignore
 * using trainer = await finetuneLora(compressor.model, examples, { compressor, steps: 200, accumulate: 4,
 *   learningRate: 1e-4, warmupSteps: 10, checkpoint: "./run.ckpt.safetensors",
 *   onProgress: (p) => console.log(p.step, p.loss.toFixed(3), p.tokensPerSecond.toFixed(0)) });
 * await trainer.saveAdapter("./adapters/finance");
 * ```
 */
export async function finetuneLora(
  model: Model,
  examples: readonly QaExample[],
  options: FinetuneOptions = {},
): Promise<LoraTrainer> {
  if (examples.length === 0) throw new KvfoldError("INVALID_ARGUMENT", "Cannot finetune: no examples");
  const accumulate = options.accumulate ?? 1;
  const steps = options.steps ?? Math.max(1, Math.floor(examples.length / accumulate));
  // Rows of every example, made once (compressing documents is the expensive part).
  const rows: TrainExample[] = [];
  for (const [i, e] of examples.entries()) {
    let vectors = e.vectors;
    if (!vectors && e.document !== undefined) {
      if (!options.compressor) {
        throw new KvfoldError(
          "INVALID_ARGUMENT",
          `Cannot finetune: example ${i} has a document but no compressor was given`,
        );
      }
      vectors = (await options.compressor.compress(e.document, { signal: options.signal })).data;
    }
    rows.push(qaExampleRows(model, vectors, e.question, e.answer, { chat: options.chat }));
  }
  const trainer = LoraTrainer.create(model, { ...options, totalSteps: options.totalSteps ?? steps });
  try {
    const H = model.info.hiddenSize;
    await runTrainingLoop(
      trainer,
      rows.length,
      { ...options, seed: trainer.options.seed, steps },
      async (i) => {
        const ex = rows[i];
        const loss = await trainer.accumulate(ex, { signal: options.signal });
        return { loss, rows: ex.ids.length + (ex.prefix?.length ?? 0) / H };
      },
    );
    return trainer;
  } catch (e) {
    trainer.dispose();
    throw e;
  }
}

/**
 * Full-parameter training of a model, and AutoCompressor training (the model with its
 * `embed_summary.weight` rows, on documents and LLoCO questions), in the native engine: f32 master
 * copies of every tensor, AdamW with the LoRA trainer's schedule and clipping, checkpoints a killed
 * run resumes from exactly, and a Hugging Face model folder at the end that `loadModel` and
 * `Compressor.load` read.
 *
 * @module
 */

import { NativeStruct } from "./_abi.ts";
import { alloc, check, cString, outPointer, sym } from "./_binding.ts";
import { HandleOwner, NativeHandle } from "./_handle.ts";
import { int32Arg, showValue, tokenIdsArg, uint64Arg } from "./_int_args.ts";
import { readBoundedJson } from "./_bounded_read.ts";
import { KvfoldError } from "./errors.ts";
import type { Model } from "./model.ts";
import { type TensorInput, writeSafetensorsFile } from "./formats/safetensors.ts";
import type { TrainExample } from "./train.ts";
import { batchItemWork, splitOverReplicas } from "./replica_split.ts";
import type {
  AccumulateOptions,
  CompressorExample,
  CompressorLoss,
  CompressorQaPair,
  TrainBatchItem,
  TrainedTensor,
} from "./model_train_types.ts";
import {
  type OptimizerOptions,
  optimizerStep,
  readCheckpointFile,
  resolveOptimizer,
  setOptimizer,
  type TrainStep,
  writeCheckpointFile,
} from "./training_loop.ts";

/** Settings of a {@link ModelTrainer}. */
export interface ModelTrainOptions extends OptimizerOptions {
  /** Seed of embed_summary's initialisation and of the example order; default 0. */
  seed?: number;
  /** Rows of `embed_summary.weight`; 0 (default) trains a plain language model, no compressor. */
  summaryLength?: number;
  /** Compressor: document tokens per segment; default 512. */
  segmentLength?: number;
  /**
   * Compressor: segments per gradient window (>= 1; default 2). Summary vectors pass gradient to the
   * encoder pass that made them only within a window; the last window ends at the document's last
   * segment (so the QA loss reaches the last `backpropSegments` segments); earlier summaries are
   * constants.
   */
  backpropSegments?: number;
  /** Compressor: weight of the next-segment LM loss; default 1. */
  lmWeight?: number;
  /** Compressor: weight of the `[summaries | question] -> answer` loss; default 1. */
  qaWeight?: number;
  /** Compressor: `embed_summary.weight` starts normal(0, this); default 0.02. */
  summaryInitStd?: number;
}

export type * from "./model_train_types.ts";

/** Which copy of a tensor {@link ModelTrainer.read} and {@link ModelTrainer.write} address. */
export const MODEL_TRAIN_TENSORS = Object.freeze({ weight: 0, grad: 1, moment: 2, variance: 3 } as const);
/** A key of {@link MODEL_TRAIN_TENSORS}. */
export type ModelTrainTensor = keyof typeof MODEL_TRAIN_TENSORS;

/**
 * Every tensor of a model being trained (and `embed_summary.weight` for a compressor). The loaded
 * model is only the starting point: its weights are copied, and it stays unchanged.
 *
 * @example
 * ```ts ignore
 * using model = await kv.loadModel("./models/from-scratch");
 * using trainer = ModelTrainer.create(model, { learningRate: 1e-3, summaryLength: 8, segmentLength: 256 });
 * const loss = await trainer.accumulateDocument({ ids: docIds, question: qIds, answer: aIds });
 * trainer.step();
 * await trainer.saveModel("./models/trained");
 * ```
 */
export class ModelTrainer extends HandleOwner {
  /** The model it started from (config, tokenizer). */
  readonly model: Model;
  /** Every trained tensor in a fixed order. */
  readonly tensors: readonly TrainedTensor[];
  /** Rows of embed_summary (0: not a compressor). */
  readonly summaryLength: number;
  /** Whether lm_head is the embedding. */
  readonly tied: boolean;
  /** Trained values. */
  readonly params: number;
  /** The settings it was created with (defaults filled in). */
  readonly options: Readonly<Required<ModelTrainOptions>>;

  private constructor(handle: NativeHandle, model: Model, options: Required<ModelTrainOptions>) {
    super(handle);
    this.model = model;
    this.options = options;
    const info = modelTrainerInfo(handle.ptr);
    this.summaryLength = info.get("summary_length");
    this.tied = info.get("tied") !== 0;
    this.params = info.get("n_params");
    const tensors: TrainedTensor[] = [];
    const name = alloc(256), rows = alloc(8), cols = alloc(8);
    for (let i = 0; i < info.get("n_tensors"); i++) {
      check(sym().kf_model_trainer_tensor_name(handle.ptr, i, name, name.length, rows, cols));
      const r = Number(new DataView(rows.buffer).getBigInt64(0, true));
      const c = Number(new DataView(cols.buffer).getBigInt64(0, true));
      tensors.push({
        name: new TextDecoder().decode(name.subarray(0, name.indexOf(0))),
        shape: c === 1 ? [r] : [r, c],
      });
    }
    this.tensors = tensors;
  }

  /** f32 copies of every weight of `model`; with `summaryLength`, a new embed_summary too. */
  static create(model: Model, options: ModelTrainOptions = {}): ModelTrainer {
    const o: Required<ModelTrainOptions> = {
      seed: options.seed ?? 0,
      summaryLength: options.summaryLength ?? 0,
      segmentLength: options.segmentLength ?? 512,
      backpropSegments: options.backpropSegments ?? 2,
      lmWeight: options.lmWeight ?? 1,
      qaWeight: options.qaWeight ?? 1,
      summaryInitStd: options.summaryInitStd ?? 0.02,
      ...resolveOptimizer(options, 1e-3),
    };
    const action = "create model trainer";
    const p = new NativeStruct("kf_model_train_params")
      .set("seed", uint64Arg(action, "seed", o.seed))
      .set("summary_length", int32Arg(action, "summaryLength", o.summaryLength, { min: 0 }))
      .set("segment_length", int32Arg(action, "segmentLength", o.segmentLength, { min: 1 }))
      .set("backprop_segments", int32Arg(action, "backpropSegments", o.backpropSegments, { min: 1 }))
      .set("lm_weight", o.lmWeight)
      .set("qa_weight", o.qaWeight)
      .set("init_std", o.summaryInitStd);
    setOptimizer(p, action, o);
    const out = outPointer();
    check(sym().kf_model_trainer_create(model._handle.ptr, p.buf, out.buf));
    const handle = new NativeHandle(
      out.get(),
      "the model trainer",
      (ptr) => check(sym().kf_model_trainer_free(ptr)),
      model._handle,
    );
    return new ModelTrainer(handle, model, o);
  }

  /** Optimizer steps taken. */
  get stepCount(): number {
    return Number(modelTrainerInfo(this._handle.ptr).get("step"));
  }

  /** Examples whose gradients wait for the next {@link step}. */
  get accumulated(): number {
    return modelTrainerInfo(this._handle.ptr).get("accumulated");
  }

  /**
   * One language-modelling example, rows `[prefix | ids]`, `labels[t]` what row `prefix rows + t`
   * predicts (or -1): adds the gradient of the mean cross-entropy for every tensor and returns that
   * mean. Aborting drops the gradients accumulated since the last step.
   */
  async accumulate(example: TrainExample, options: AccumulateOptions = {}): Promise<number> {
    const { ids, labels } = example;
    const H = this.model.info.hiddenSize, V = this.model.info.vocabSize;
    if (ids.length !== labels.length) {
      throw new KvfoldError(
        "INVALID_ARGUMENT",
        `Cannot train model: ${ids.length} ids but ${labels.length} labels`,
      );
    }
    const prefix = example.prefix ?? new Float32Array(0);
    if (prefix.length % H !== 0) {
      throw new KvfoldError(
        "INVALID_ARGUMENT",
        `Cannot train model: the prefix holds ${prefix.length} values, not rows of the hidden size ${H}`,
      );
    }
    const idBuf = tokenIdsArg("train model", ids, V);
    const labelBuf = tokenIdsArg("train model", labels, V, { what: "label", ignore: -1 });
    const nIds = int32Arg("train model", "ids.length", ids.length, { min: 1 });
    const nPrefix = int32Arg("train model", "prefix rows", prefix.length / H);
    const prefixBuf = alloc(prefix.length * 4);
    new Float32Array(prefixBuf.buffer).set(prefix);
    const loss = alloc(4);
    const replica = replicaArg(options.replica);
    await this._handle.runControlled(
      (ptr, ctl) => {
        const args = [prefixBuf, nPrefix, idBuf, labelBuf, nIds, loss, ctl.buf] as const;
        return replica === undefined
          ? sym().kf_model_trainer_accumulate(ptr, ...args)
          : sym().kf_model_trainer_accumulate_on(ptr, replica, ...args);
      },
      { signal: options.signal, onProgress: options.onProgress },
    );
    return new DataView(loss.buffer).getFloat32(0, true);
  }

  /**
   * One compressor document (needs `summaryLength`): the next-segment LM loss over its segments
   * and, with an answer, the QA loss of `[summaries | question] -> answer` (or of each of `pairs`,
   * all over one compression of the document); adds the gradients of `lmWeight · lm + qaWeight · qa`
   * and returns both means.
   *
   * @example
   * ```ts ignore
   * const { lm, qa } = await trainer.accumulateDocument({
   *   ids: documentIds,
   *   pairs: [{ question: q1, answer: a1 }, { question: q2, answer: a2 }],
   * });
   * ```
   */
  async accumulateDocument(
    example: CompressorExample,
    options: AccumulateOptions = {},
  ): Promise<CompressorLoss> {
    const V = this.model.info.vocabSize, action = "train compressor";
    if (example.pairs !== undefined) return await this.#accumulatePairs(example, example.pairs, options);
    if (example.summaryTargets !== undefined || options.replica !== undefined) {
      const { question, answer, ...rest } = example;
      return await this.#accumulatePairs(rest, [{ question, answer }], options);
    }
    const ids = tokenIdsArg(action, example.ids, V);
    const q = tokenIdsArg(action, example.question ?? [], V, { what: "question id" });
    const a = tokenIdsArg(action, example.answer ?? [], V, { what: "answer id" });
    const n = int32Arg(action, "ids.length", example.ids.length, { min: 1 });
    const nq = int32Arg(action, "question.length", example.question?.length ?? 0);
    const na = int32Arg(action, "answer.length", example.answer?.length ?? 0);
    const lm = alloc(4), qa = alloc(4);
    await this._handle.runControlled(
      (ptr, ctl) => sym().kf_model_trainer_accumulate_document(ptr, ids, n, q, nq, a, na, lm, qa, ctl.buf),
      { signal: options.signal, onProgress: options.onProgress },
    );
    return {
      lm: new DataView(lm.buffer).getFloat32(0, true),
      qa: new DataView(qa.buffer).getFloat32(0, true),
      summary: NaN,
    };
  }

  async #accumulatePairs(
    example: CompressorExample,
    pairs: readonly CompressorQaPair[],
    options: AccumulateOptions,
  ): Promise<CompressorLoss> {
    const V = this.model.info.vocabSize, action = "train compressor";
    if (example.question !== undefined || example.answer !== undefined) {
      throw new TypeError(`Cannot ${action}: give either pairs or question/answer, not both`);
    }
    if (!Array.isArray(pairs)) throw new TypeError(`Cannot ${action}: pairs is not an array`);
    const ids = tokenIdsArg(action, example.ids, V);
    const n = int32Arg(action, "ids.length", example.ids.length, { min: 1 });
    const nPairs = int32Arg(action, "pairs.length", pairs.length);
    // Pair j's ids follow those of pairs < j, as kvfold.h lays them out; each is checked by its name.
    const flat = (part: "question" | "answer") => {
      const bufs = pairs.map((p, j) =>
        tokenIdsArg(action, p[part] ?? [], V, { what: `pairs[${j}].${part} id` })
      );
      const out = alloc(Math.max(4, pairs.reduce((sum, p) => sum + (p[part]?.length ?? 0), 0) * 4));
      let at = 0;
      pairs.forEach((p, j) => {
        const len = (p[part]?.length ?? 0) * 4;
        out.set(bufs[j].subarray(0, len), at);
        at += len;
      });
      return out;
    };
    const q = flat("question"), a = flat("answer");
    const ql = alloc(Math.max(4, nPairs * 4)), al = alloc(Math.max(4, nPairs * 4));
    new Int32Array(ql.buffer).set(pairs.map((p) => p.question?.length ?? 0));
    new Int32Array(al.buffer).set(pairs.map((p) => p.answer?.length ?? 0));
    const targets = example.summaryTargets ?? [];
    if (!Array.isArray(targets)) throw new TypeError(`Cannot ${action}: summaryTargets is not an array`);
    const nTargets = int32Arg(action, "summaryTargets.length", targets.length);
    const weight = example.summaryTargetWeight ?? 1;
    if (!Number.isFinite(weight) || weight < 0) {
      throw new RangeError(`Cannot ${action}: summaryTargetWeight ${weight} is not a finite number >= 0`);
    }
    const rows = alloc(Math.max(4, nTargets * 4)), tokens = alloc(Math.max(4, nTargets * 4));
    const rowView = new Int32Array(rows.buffer), tokenView = new Int32Array(tokens.buffer);
    targets.forEach((t, i) => {
      rowView[i] = int32Arg(action, `summaryTargets[${i}].row`, t.row, { min: 0 });
      tokenView[i] = int32Arg(action, `summaryTargets[${i}].token`, t.token, { min: 0 });
    });
    const lm = alloc(4), qa = alloc(4), summary = alloc(4);
    const replica = replicaArg(options.replica);
    // The same arguments either way; replica calls name their replica first.
    const args = [ids, n, q, ql, a, al, nPairs, rows, tokens, nTargets, weight, lm, qa, summary] as const;
    await this._handle.runControlled(
      (ptr, ctl) =>
        replica !== undefined
          ? sym().kf_model_trainer_accumulate_document_on(ptr, replica, ...args, ctl.buf)
          : sym().kf_model_trainer_accumulate_document_targets(ptr, ...args, ctl.buf),
      { signal: options.signal, onProgress: options.onProgress },
    );
    return {
      lm: new DataView(lm.buffer).getFloat32(0, true),
      qa: new DataView(qa.buffer).getFloat32(0, true),
      summary: new DataView(summary.buffer).getFloat32(0, true),
    };
  }

  /**
   * A batch of examples over `replicas` gradient replicas at once (data parallelism: one thread
   * each, so up to `replicas` cores). The examples are shared out by their estimated work
   * ({@link splitOverReplicas}: the largest first, each to the least loaded replica) and each
   * replica runs its share in order, so the gradients the next {@link step} sums, and every bit of
   * it, depend on the batch and `replicas`, never on timing or the thread count; one replica runs
   * the batch in order, as one call per example does. Returns each example's loss in order (a number
   * for `text`, {@link CompressorLoss} for `document`). A failure or abort drops every gradient
   * accumulated since the last step, as one call's does, and throws the first error.
   *
   * @example
   * ```ts ignore
   * await trainer.accumulateBatch([{ document: doc1 }, { document: doc2 }, { text: qa }], { replicas: 2 });
   * trainer.step();
   * ```
   */
  async accumulateBatch(
    items: readonly TrainBatchItem[],
    options: { replicas?: number; signal?: AbortSignal } = {},
  ): Promise<(number | CompressorLoss)[]> {
    if (!Array.isArray(items)) throw new TypeError("Cannot train model: items is not an array");
    const replicas = options.replicas ?? 1;
    if (!Number.isInteger(replicas) || replicas < 1 || replicas > MAX_REPLICAS) {
      throw new RangeError(
        `Cannot train model: replicas ${showValue(replicas)} is not an integer in [1, ${MAX_REPLICAS}]`,
      );
    }
    const out: (number | CompressorLoss)[] = new Array(items.length);
    // The first failure stops the other replicas' chains at their next example.
    const stop = new AbortController();
    const signal = options.signal ? AbortSignal.any([options.signal, stop.signal]) : stop.signal;
    const plan = this.replicaPlan(items, replicas);
    const chain = async (r: number) => {
      for (const i of plan[r]) {
        const item = items[i];
        try {
          if (item && "text" in item) out[i] = await this.accumulate(item.text, { signal, replica: r });
          else if (item && "document" in item) {
            out[i] = await this.accumulateDocument(item.document, { signal, replica: r });
          } else throw new TypeError(`Cannot train model: items[${i}] has neither text nor document`);
        } catch (e) {
          stop.abort(e);
          throw e;
        }
      }
    };
    const settled = await Promise.allSettled(plan.map((_, r) => chain(r)));
    const failed = settled.find((s): s is PromiseRejectedResult => s.status === "rejected");
    if (failed) {
      this.setStep(this.stepCount); // drops every replica's gradients
      throw options.signal?.aborted
        ? options.signal.reason ?? failed.reason
        : stop.signal.reason ?? failed.reason;
    }
    return out;
  }

  /**
   * Which items of a batch each replica runs in {@link accumulateBatch} (indices, in the order run):
   * by their estimated work on this model ({@link batchItemWork}), split by {@link splitOverReplicas}.
   */
  replicaPlan(items: readonly TrainBatchItem[], replicas: number): number[][] {
    return splitOverReplicas(items.map((item) => this.batchItemWork(item)), replicas);
  }

  /** The estimated work of one batch item on this trainer's model (0 for a malformed one). */
  private batchItemWork(item: TrainBatchItem): number {
    const m = this.model.info;
    try {
      const work = batchItemWork(item, {
        rowWork: this.params,
        pairWork: 2 * m.layers * m.heads * m.headDim,
        hidden: m.hiddenSize,
        summaryLength: this.summaryLength,
        segmentLength: this.options.segmentLength,
      });
      return Number.isFinite(work) ? work : 0;
    } catch {
      return 0; // a malformed item: refused, with its own message, when its replica reaches it
    }
  }

  /** AdamW over the accumulated gradients (averaged, clipped), with the scheduled learning rate. */
  step(): TrainStep {
    return optimizerStep((info) => sym().kf_model_trainer_step(this._handle.ptr, info));
  }

  /** The shape of the tensor `name` (see {@link tensors}). */
  shapeOf(name: string): number[] {
    const t = this.tensors.find((t) => t.name === name);
    if (!t) {
      throw new KvfoldError(
        "INVALID_ARGUMENT",
        `Cannot find trainer tensor: the trainer has no ${showValue(name)}`,
      );
    }
    return t.shape;
  }

  /** A copy of one tensor (weight, summed gradient, or an AdamW moment), row-major. */
  read(name: string, which: ModelTrainTensor = "weight"): Float32Array {
    const out = new Float32Array(this.shapeOf(name).reduce((a, b) => a * b, 1));
    check(
      sym().kf_model_trainer_read(
        this._handle.ptr,
        cString(name),
        whichArg("read model trainer tensor", which),
        new Uint8Array(out.buffer),
        BigInt(out.length),
      ),
    );
    return out;
  }

  /** Overwrites one tensor (checkpoint restore, a compressor's saved embed_summary, tests). */
  write(name: string, data: Float32Array, which: ModelTrainTensor = "weight"): void {
    const copy = new Float32Array(data);
    check(
      sym().kf_model_trainer_write(
        this._handle.ptr,
        cString(name),
        whichArg("write model trainer tensor", which),
        new Uint8Array(copy.buffer),
        BigInt(copy.length),
      ),
    );
  }

  /** Sets the step count (for the learning-rate schedule) and drops accumulated gradients. */
  setStep(step: number): void {
    if (!Number.isSafeInteger(step) || step < 0) {
      throw new RangeError(`Cannot set trainer step: ${showValue(step)} is not a non-negative integer`);
    }
    check(sym().kf_model_trainer_set_step(this._handle.ptr, BigInt(step)));
  }

  /**
   * Writes weights, AdamW moments, the step and `state` to one safetensors file, atomically, so a
   * killed run never leaves a torn checkpoint.
   */
  async saveCheckpoint(path: string, state: Record<string, string | number>): Promise<void> {
    const tensors: TensorInput[] = [];
    for (const t of this.tensors) {
      for (const which of ["weight", "moment", "variance"] as const) {
        tensors.push({
          name: `${t.name}#${which}`,
          dtype: "F32",
          shape: t.shape,
          data: this.read(t.name, which),
        });
      }
    }
    await writeCheckpointFile(path, tensors, this.stepCount, this.#identity(), state);
  }

  /** Restores {@link saveCheckpoint}'s weights, moments and step; returns its `state`. */
  async loadCheckpoint(path: string): Promise<Record<string, string>> {
    const ckpt = await readCheckpointFile(path, this.#identity());
    for (const t of this.tensors) {
      for (const which of ["weight", "moment", "variance"] as const) {
        this.write(t.name, ckpt.tensor(`${t.name}#${which}`), which);
      }
    }
    this.setStep(ckpt.step);
    return ckpt.state;
  }

  /**
   * Writes the trained model as a Hugging Face folder: `config.json` (the base model's, with
   * `summary_length` and `segment_length` for a compressor, so `Compressor.load` compresses as it was
   * trained, and `torch_dtype` float32), `model.safetensors` (every tensor
   * in f32, `embed_summary.weight` included) and the base folder's tokenizer files. `weights` gives
   * other values for the tensors than the trainer's own (a `WeightAverage`'s), by name.
   */
  async saveModel(
    dir: string,
    weights: (name: string) => Float32Array = (name) => this.read(name),
  ): Promise<void> {
    const base = this.model.dir;
    const config = await readBoundedJson(`${base}/config.json`, { action: "save model" }) as Record<
      string,
      unknown
    >;
    config.torch_dtype = "float32";
    config.tie_word_embeddings = this.tied;
    if (this.summaryLength > 0) {
      config.summary_length = this.summaryLength;
      config.segment_length = this.options.segmentLength;
    }
    await Deno.mkdir(dir, { recursive: true });
    const tensors: TensorInput[] = this.tensors.map((t) => ({
      name: t.name,
      dtype: "F32",
      shape: t.shape,
      data: weights(t.name),
    }));
    await writeSafetensorsFile(`${dir}/model.safetensors.tmp`, tensors, { format: "pt" });
    await Deno.rename(`${dir}/model.safetensors.tmp`, `${dir}/model.safetensors`);
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(config, null, 2) + "\n");
    for (const f of TOKENIZER_FILES) {
      try {
        await Deno.copyFile(`${base}/${f}`, `${dir}/${f}`);
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
      }
    }
  }

  /**
   * Every trained tensor's name and shape in order (`"embed_tokens.weight[1333,128] ..."`): what a
   * checkpoint of this trainer, or of a weight average over it, must match to be loaded.
   */
  get tensorShapes(): string {
    return this.tensors.map((t) => `${t.name}[${t.shape}]`).join(" ");
  }

  /** What a checkpoint must match to resume this trainer. */
  #identity(): string {
    return `model ${this.tensorShapes}`;
  }
}

/** Files of a model folder that describe its tokenizer and generation, copied by saveModel. */
const TOKENIZER_FILES = [
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "generation_config.json",
  "tokenizer.model",
];

function whichArg(action: string, which: ModelTrainTensor): number {
  if (!Object.hasOwn(MODEL_TRAIN_TENSORS, which)) {
    throw new TypeError(
      `Cannot ${action}: ${showValue(which)} is not one of ${Object.keys(MODEL_TRAIN_TENSORS).join(", ")}`,
    );
  }
  return MODEL_TRAIN_TENSORS[which];
}

function modelTrainerInfo(ptr: Deno.PointerValue): NativeStruct<"kf_model_trainer_info"> {
  const info = new NativeStruct("kf_model_trainer_info");
  check(sym().kf_model_trainer_get_info(ptr, info.buf));
  return info;
}

/** Gradient replicas a trainer holds (kvfold.h: kf_model_trainer_accumulate_on). */
const MAX_REPLICAS = 64;

/** A replica index for the *_on calls, checked; undefined stays undefined (replica 0 over the pool). */
function replicaArg(replica: number | undefined): number | undefined {
  if (replica === undefined) return undefined;
  if (!Number.isInteger(replica) || replica < 0 || replica >= MAX_REPLICAS) {
    throw new RangeError(
      `Cannot train model: replica ${showValue(replica)} is not an integer in [0, ${MAX_REPLICAS})`,
    );
  }
  return replica;
}

/**
 * LoCoCo head calibration, as the released code trains heads: text cut into sequences, each fed in
 * segments of B tokens through the frozen model with the bounded cache, the loss of every segment
 * backpropagated into the heads (Conv1d weight, bias, λ) through the fused slots it attended to,
 * the cache detached between segments. Writes a heads file sessions load with
 * `model.loadLococoHeads(path)`.
 *
 * @module
 */

import { alloc, check, outPointer, sym } from "./_binding.ts";
import { HandleOwner, NativeHandle } from "./_handle.ts";
import { int32Arg, int64Arg, showValue, tokenIdsArg } from "./_int_args.ts";
import type { Adapter } from "./adapter.ts";
import { KvfoldError } from "./errors.ts";
import type { LococoHeads } from "./lococo.ts";
import { lococoFusedSlots, type LococoLayerValues, writeLococoHeads } from "./formats/lococo_heads.ts";
import type { Model } from "./model.ts";
import type { TensorInput } from "./formats/safetensors.ts";
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
import { NativeStruct } from "./_abi.ts";

/** Settings of a {@link LococoTrainer} (`learningRate` defaults to 1e-3 here). */
export interface LococoTrainOptions extends OptimizerOptions {
  /** Calibrate for the model with this LoRA applied. */
  adapter?: Adapter;
  /** Start from these heads (their M, r, k, B win); default: new random heads. */
  init?: LococoHeads;
  /** M; default 512. */
  slots?: number;
  /** B; default 512. */
  segment?: number;
  /** k, odd; default 21. */
  kernel?: number;
  /** r; default 0.5. */
  keepRate?: number;
  /** Seed of new heads and of the sequence order; default 0. */
  seed?: number;
  /** λ of new heads; default 0.5. */
  initLambda?: number;
}

/** Tensors of one layer, as {@link LococoTrainer.read} names them (native `kf_lococo_tensor`). */
export const LOCOCO_TENSORS = Object.freeze(
  {
    weight: 0,
    bias: 1,
    lambda: 2,
    gradWeight: 3,
    gradBias: 4,
    gradLambda: 5,
    momentWeight: 6,
    varianceWeight: 7,
    momentBias: 8,
    varianceBias: 9,
    momentLambda: 10,
    varianceLambda: 11,
  } as const,
);
/** A key of {@link LOCOCO_TENSORS}. */
export type LococoTensor = keyof typeof LOCOCO_TENSORS;

function lococoTensorArg(action: string, which: LococoTensor): number {
  if (!Object.hasOwn(LOCOCO_TENSORS, which)) {
    throw new TypeError(
      `Cannot ${action}: ${showValue(which)} is not one of ${Object.keys(LOCOCO_TENSORS).join(", ")}`,
    );
  }
  return LOCOCO_TENSORS[which];
}

/**
 * Trainable LoCoCo heads for one model; the model stays frozen.
 *
 * @example
 * ```ts ignore
 * using trainer = LococoTrainer.create(model, { slots: 512, segment: 512 });
 * const loss = await trainer.accumulate(model.tokenizer.encode(longText));
 * trainer.step();
 * await trainer.saveHeads("./heads.safetensors");
 * ```
 */
export class LococoTrainer extends HandleOwner {
  /** The frozen model. */
  readonly model: Model;
  /** M, Mc, k, B, r of the heads being trained. */
  readonly shape: { slots: number; fusedSlots: number; kernel: number; segment: number; keepRate: number };
  #step = 0;

  private constructor(handle: NativeHandle, model: Model, shape: LococoTrainer["shape"]) {
    super(handle);
    this.model = model;
    this.shape = shape;
  }

  /** New heads (or a copy of `init`) to train. */
  static create(model: Model, options: LococoTrainOptions = {}): LococoTrainer {
    const init = options.init;
    const shape = init
      ? {
        slots: init.info.slots,
        fusedSlots: init.info.fusedSlots,
        kernel: init.info.kernel,
        segment: init.info.segment,
        keepRate: init.info.keepRate,
      }
      : {
        slots: options.slots ?? 512,
        fusedSlots: 0,
        kernel: options.kernel ?? 21,
        segment: options.segment ?? 512,
        keepRate: options.keepRate ?? 0.5,
      };
    shape.fusedSlots = init ? shape.fusedSlots : lococoFusedSlots(shape.slots, shape.keepRate);
    const action = "create LoCoCo trainer";
    const p = new NativeStruct("kf_lococo_train_params")
      .set("slots", int32Arg(action, "slots", shape.slots))
      .set("segment", int32Arg(action, "segment", shape.segment))
      .set("kernel", int32Arg(action, "kernel", shape.kernel))
      .set("keep_rate", shape.keepRate)
      .set("seed", int64Arg(action, "seed", options.seed ?? 0, { min: 0n }))
      .set("init_lambda", options.initLambda ?? 0.5);
    setOptimizer(p, action, resolveOptimizer(options, 1e-3));
    if (init && init.model !== model) {
      throw new KvfoldError(
        "INVALID_ARGUMENT",
        "Cannot create LoCoCo trainer: the heads belong to another model",
      );
    }
    const out = outPointer();
    check(sym().kf_lococo_trainer_create(model._handle.ptr, p.buf, init ? init._handle.ptr : null, out.buf));
    const handle = new NativeHandle(
      out.get(),
      "the LoCoCo trainer",
      (ptr) => check(sym().kf_lococo_trainer_free(ptr)),
      model._handle,
    );
    const trainer = new LococoTrainer(handle, model, shape);
    if (options.adapter) trainer.setAdapter(options.adapter);
    return trainer;
  }

  /** Optimizer steps taken. */
  get stepCount(): number {
    return this.#step;
  }

  /**
   * One sequence, segment by segment as inference runs it; adds the gradient of the mean segment
   * loss (next-token cross-entropy) and returns that mean. Aborting adds nothing.
   */
  async accumulate(
    ids: readonly number[],
    options: { signal?: AbortSignal; onProgress?: (done: number, total: number) => void } = {},
  ): Promise<number> {
    const buf = tokenIdsArg("calibrate", ids, this.model.info.vocabSize);
    const n = int32Arg("calibrate", "ids.length", ids.length);
    const loss = alloc(4);
    await this._handle.runControlled(
      (ptr, ctl) => sym().kf_lococo_trainer_accumulate(ptr, buf, n, loss, ctl.buf),
      { signal: options.signal, onProgress: options.onProgress },
    );
    return new DataView(loss.buffer).getFloat32(0, true);
  }

  /** AdamW over the accumulated gradients (averaged over sequences, clipped, scheduled rate). */
  step(): TrainStep {
    const step = optimizerStep((info) => sym().kf_lococo_trainer_step(this._handle.ptr, info));
    this.#step = step.step;
    return step;
  }

  /** Values in a tensor of layer `l`: weight-shaped [Mc, 2·head_dim, k], bias-shaped [Mc], λ-shaped 1. */
  sizeOf(which: LococoTensor): number {
    if (which.toLowerCase().includes("lambda")) return 1;
    if (which.toLowerCase().includes("bias")) return this.shape.fusedSlots;
    return this.shape.fusedSlots * 2 * this.model.info.headDim * this.shape.kernel;
  }

  /** A copy of one layer's tensor (weights in PyTorch's Conv1d layout). */
  read(layer: number, which: LococoTensor): Float32Array {
    const out = new Float32Array(this.sizeOf(which));
    check(
      sym().kf_lococo_trainer_read(
        this._handle.ptr,
        int32Arg("read LoCoCo trainer tensor", "layer", layer),
        lococoTensorArg("read LoCoCo trainer tensor", which),
        new Uint8Array(out.buffer),
        BigInt(out.length),
      ),
    );
    return out;
  }

  /** Overwrites one layer's tensor. */
  write(layer: number, which: LococoTensor, data: Float32Array): void {
    const copy = new Float32Array(data);
    check(
      sym().kf_lococo_trainer_write(
        this._handle.ptr,
        int32Arg("write LoCoCo trainer tensor", "layer", layer),
        lococoTensorArg("write LoCoCo trainer tensor", which),
        new Uint8Array(copy.buffer),
        BigInt(copy.length),
      ),
    );
  }

  /**
   * Calibrates for the model with this LoRA applied (its weights are copied; `null`: none). Heads
   * calibrated this way serve sessions that use the same adapter.
   */
  setAdapter(adapter: Adapter | null): void {
    if (adapter && adapter.model !== this.model) {
      throw new KvfoldError(
        "INVALID_ARGUMENT",
        "Cannot set the LoCoCo trainer's adapter: it belongs to another model",
      );
    }
    check(sym().kf_lococo_trainer_set_adapter(this._handle.ptr, adapter ? adapter._handle.ptr : null));
  }

  /** Sets the step count (resume) and drops accumulated gradients. */
  setStep(step: number): void {
    check(
      sym().kf_lococo_trainer_set_step(this._handle.ptr, int64Arg("set LoCoCo trainer step", "step", step)),
    );
    this.#step = step;
  }

  /** Writes the heads file (DESIGN.md names, f32, M/r/k/B metadata) that `model.loadLococoHeads` reads. */
  async saveHeads(path: string): Promise<void> {
    const values: LococoLayerValues[] = [];
    for (let l = 0; l < this.model.info.layers; l++) {
      values.push({
        weight: this.read(l, "weight"),
        bias: this.read(l, "bias"),
        lambda: this.read(l, "lambda")[0],
      });
    }
    await writeLococoHeads(`${path}.tmp`, {
      layers: this.model.info.layers,
      headDim: this.model.info.headDim,
      slots: this.shape.slots,
      keepRate: this.shape.keepRate,
      kernel: this.shape.kernel,
      segment: this.shape.segment,
      values,
    });
    await Deno.rename(`${path}.tmp`, path);
  }

  /** Heads, moments and `state`, atomically (temp file renamed over the old one). */
  async saveCheckpoint(path: string, state: Record<string, string | number>): Promise<void> {
    const tensors: TensorInput[] = [];
    for (let l = 0; l < this.model.info.layers; l++) {
      for (const which of CHECKPOINT_TENSORS) {
        const data = this.read(l, which);
        tensors.push({ name: `${l}.${which}`, dtype: "F32", shape: [data.length], data });
      }
    }
    await writeCheckpointFile(path, tensors, this.#step, `heads ${JSON.stringify(this.shape)}`, state);
  }

  /** Restores {@link saveCheckpoint}; returns its `state`. */
  async loadCheckpoint(path: string): Promise<Record<string, string>> {
    const ckpt = await readCheckpointFile(path, `heads ${JSON.stringify(this.shape)}`);
    for (let l = 0; l < this.model.info.layers; l++) {
      for (const which of CHECKPOINT_TENSORS) this.write(l, which, ckpt.tensor(`${l}.${which}`));
    }
    this.setStep(ckpt.step);
    return ckpt.state;
  }
}

// What a heads checkpoint holds per layer: values and AdamW moments (gradients are empty at a step boundary).
const CHECKPOINT_TENSORS = (Object.keys(LOCOCO_TENSORS) as LococoTensor[]).filter((w) =>
  !w.startsWith("grad")
);

/** Progress of {@link calibrateLococo}. */
export type CalibrateProgress = TrainingProgress;

/** Options of {@link calibrateLococo}. */
export interface CalibrateOptions extends LococoTrainOptions, TrainingLoopOptions {
  /** Tokens per training sequence; default 4 × B. */
  sequenceLength?: number;
  onProgress?: (p: CalibrateProgress) => void;
}

/**
 * Calibrates LoCoCo heads on text (or token ids): the token stream is cut into sequences of
 * `sequenceLength`, visited in a seeded order per epoch. Returns the trainer; write the heads with
 * {@link LococoTrainer.saveHeads}. With `checkpoint`, a killed run resumes to the same heads.
 */
export async function calibrateLococo(
  model: Model,
  corpus: string | readonly number[],
  options: CalibrateOptions = {},
): Promise<LococoTrainer> {
  const ids = typeof corpus === "string"
    ? model.tokenizer.encode(corpus, { addSpecialTokens: false })
    : [...corpus];
  const trainer = LococoTrainer.create(model, options);
  try {
    const len = options.sequenceLength ?? 4 * trainer.shape.segment;
    if (!Number.isInteger(len) || len < 2) throw new RangeError(`Cannot calibrate: sequenceLength ${len}`);
    const sequences: number[][] = [];
    for (let i = 0; i + 2 <= ids.length; i += len) sequences.push(ids.slice(i, i + len));
    if (sequences.length === 0) {
      throw new KvfoldError("INVALID_ARGUMENT", "Cannot calibrate: the corpus has fewer than 2 tokens");
    }
    const steps = options.steps ?? Math.max(1, Math.floor(sequences.length / (options.accumulate ?? 1)));
    await runTrainingLoop(
      trainer,
      sequences.length,
      { ...options, seed: options.seed ?? 0, steps },
      async (i) => ({
        loss: await trainer.accumulate(sequences[i], { signal: options.signal }),
        rows: sequences[i].length,
      }),
    );
    return trainer;
  } catch (e) {
    trainer.dispose();
    throw e;
  }
}

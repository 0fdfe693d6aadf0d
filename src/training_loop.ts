/**
 * What the LoRA and the LoCoCo trainers share: AdamW options and their place in the native params,
 * one optimizer step's report, atomic checkpoint files, and the resumable training loop.
 *
 * @module
 */

import { NativeStruct } from "./_abi.ts";
import { check } from "./_binding.ts";
import { int32Arg } from "./_int_args.ts";
import { KvfoldError } from "./errors.ts";
import {
  readSafetensorsFile,
  type TensorInput,
  toFloat32,
  writeSafetensorsFile,
} from "./formats/safetensors.ts";

/** AdamW and its schedule, as both trainers take them. */
export interface OptimizerOptions {
  /** Peak learning rate (LoRA default 2e-4, LoCoCo heads 1e-3). */
  learningRate?: number;
  /** AdamW decoupled weight decay; default 0. */
  weightDecay?: number;
  /** Default [0.9, 0.999]. */
  betas?: readonly [number, number];
  /** Default 1e-8. */
  epsilon?: number;
  /** Clip the global gradient norm to this; 0 disables; default 1. */
  maxGradNorm?: number;
  /** Linear warmup steps; default 0. */
  warmupSteps?: number;
  /** Steps of the cosine decay (usually the run's total); 0 keeps the rate constant; default 0. */
  totalSteps?: number;
  /** The cosine ends at this fraction of the peak rate; default 0. */
  minLearningRateRatio?: number;
}

/** The loop settings both `finetuneLora` and `calibrateLococo` take. */
export interface TrainingLoopOptions {
  /** Optimizer steps; default: one pass over the data. */
  steps?: number;
  /** Examples (sequences) per optimizer step (gradient accumulation); default 1. */
  accumulate?: number;
  /** Saves a checkpoint here every `checkpointEvery` steps, and resumes from it when it exists. */
  checkpoint?: string;
  /** Default 10. */
  checkpointEvery?: number;
  signal?: AbortSignal;
}

/** One optimizer step's report. */
export interface TrainStep {
  /** Steps taken, this one included. */
  step: number;
  /** Learning rate used. */
  learningRate: number;
  /** Global norm of the averaged gradient before clipping. */
  gradNorm: number;
  /** Examples averaged. */
  examples: number;
}

/** Progress of a training loop ({@link finetuneLora}, `calibrateLococo`), after every optimizer step. */
export interface TrainingProgress extends TrainStep {
  /** Mean loss of the step's examples. */
  loss: number;
  /** Steps the run will take. */
  totalSteps: number;
  /** Rows (prefix + tokens) trained per second, since this process started the run. */
  tokensPerSecond: number;
  /** Seconds left at the current rate. */
  etaSeconds: number;
}

/** The optimizer settings resolved to values, as {@link setOptimizer} writes them. */
export type ResolvedOptimizer = Required<Omit<OptimizerOptions, "betas">> & {
  betas: readonly [number, number];
};

/** `options` with every unset optimizer setting at its default (`learningRate` differs per trainer). */
export function resolveOptimizer(options: OptimizerOptions, learningRate: number): ResolvedOptimizer {
  return {
    learningRate: options.learningRate ?? learningRate,
    weightDecay: options.weightDecay ?? 0,
    betas: options.betas ?? [0.9, 0.999],
    epsilon: options.epsilon ?? 1e-8,
    maxGradNorm: options.maxGradNorm ?? 1,
    warmupSteps: options.warmupSteps ?? 0,
    totalSteps: options.totalSteps ?? 0,
    minLearningRateRatio: options.minLearningRateRatio ?? 0,
  };
}

/**
 * Writes AdamW and its schedule into a trainer's native params (`kf_lora_train_params`,
 * `kf_lococo_train_params` and `kf_model_train_params` name these fields alike).
 * @internal
 */
export function setOptimizer(
  params:
    | NativeStruct<"kf_lora_train_params">
    | NativeStruct<"kf_lococo_train_params">
    | NativeStruct<"kf_model_train_params">,
  action: string,
  o: ResolvedOptimizer,
): void {
  params.set("lr", o.learningRate)
    .set("weight_decay", o.weightDecay)
    .set("beta1", o.betas[0])
    .set("beta2", o.betas[1])
    .set("eps", o.epsilon)
    .set("max_grad_norm", o.maxGradNorm)
    .set("min_lr_ratio", o.minLearningRateRatio)
    .set("warmup_steps", int32Arg(action, "warmupSteps", o.warmupSteps))
    .set("total_steps", int32Arg(action, "totalSteps", o.totalSteps));
}

/**
 * Runs a trainer's native step (`call` fills a `kf_train_step_info`) and returns its report.
 * @internal
 */
export function optimizerStep(call: (info: Uint8Array<ArrayBuffer>) => number): TrainStep {
  const info = new NativeStruct("kf_train_step_info");
  check(call(info.buf));
  return {
    step: info.get("step"),
    learningRate: info.get("lr"),
    gradNorm: info.get("grad_norm"),
    examples: info.get("examples"),
  };
}

/**
 * Writes a trainer checkpoint: f32 tensors, the step, an identity a resuming trainer must match, and
 * the loop's `state`, atomically (a temp file renamed over the old one), so a killed run never leaves
 * a torn checkpoint.
 * @internal
 */
export async function writeCheckpointFile(
  path: string,
  tensors: TensorInput[],
  step: number,
  identity: string,
  state: Record<string, string | number>,
): Promise<void> {
  const meta: Record<string, string> = {
    "kvfold.train.step": String(step),
    "kvfold.train.identity": identity,
  };
  for (const [k, v] of Object.entries(state)) meta[`kvfold.loop.${k}`] = String(v);
  await writeSafetensorsFile(`${path}.tmp`, tensors, meta);
  await Deno.rename(`${path}.tmp`, path);
}

/**
 * Reads {@link writeCheckpointFile}'s file, refusing one written for another `identity`; `tensor`
 * throws a FORMAT error naming a missing tensor.
 * @internal
 */
export async function readCheckpointFile(
  path: string,
  identity: string,
): Promise<{ tensor(name: string): Float32Array; step: number; state: Record<string, string> }> {
  const f = await readSafetensorsFile(path);
  const saved = f.metadata["kvfold.train.identity"];
  if (saved !== identity) {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      `Cannot resume from ${path}: it holds ${saved ?? "no trainer identity"}, this run trains ${identity}`,
    );
  }
  const state: Record<string, string> = {};
  for (const [k, v] of Object.entries(f.metadata)) if (k.startsWith("kvfold.loop.")) state[k.slice(12)] = v;
  return {
    tensor(name: string): Float32Array {
      const t = f.tensors.get(name);
      if (!t) throw new KvfoldError("FORMAT", `Cannot resume from ${path}: tensor ${name} is missing`);
      return toFloat32(t);
    },
    step: Number(f.metadata["kvfold.train.step"] ?? 0),
    state,
  };
}

/** What {@link runTrainingLoop} drives: either trainer. */
export interface LoopTrainer {
  readonly stepCount: number;
  step(): TrainStep;
  saveCheckpoint(path: string, state: Record<string, string | number>): Promise<void>;
  loadCheckpoint(path: string): Promise<Record<string, string>>;
}

/**
 * The loop both trainers run: resume from `checkpoint` when it exists (weights, moments, step and
 * the cursor of items consumed), then until `steps`: `accumulate` items in a seeded order per epoch,
 * one optimizer step, a checkpoint every `checkpointEvery` steps (and at the end), progress with
 * tokens/s and ETA. Deterministic: a resumed run visits the same items in the same order.
 * @internal
 */
export async function runTrainingLoop(
  trainer: LoopTrainer,
  items: number,
  options: TrainingLoopOptions & { seed: number; steps: number; onProgress?: (p: TrainingProgress) => void },
  accumulateItem: (index: number) => Promise<{ loss: number; rows: number }>,
): Promise<void> {
  const accumulate = options.accumulate ?? 1;
  if (!Number.isInteger(accumulate) || accumulate < 1) {
    throw new RangeError(`Cannot train: accumulate ${accumulate} is not a positive integer`);
  }
  let cursor = 0; // items consumed, over all epochs
  if (options.checkpoint) {
    try {
      cursor = Number((await trainer.loadCheckpoint(options.checkpoint)).cursor ?? 0);
    } catch (e) {
      if (!(e instanceof KvfoldError && e.code === "IO")) throw e;
      // No checkpoint yet: a fresh run.
    }
  }
  const every = options.checkpointEvery ?? 10, steps = options.steps;
  const t0 = performance.now();
  let rowsDone = 0, stepsHere = 0;
  let order = epochOrder(items, options.seed, Math.floor(cursor / items));
  while (trainer.stepCount < steps) {
    let lossSum = 0;
    for (let k = 0; k < accumulate; k++) {
      if (cursor % items === 0) order = epochOrder(items, options.seed, cursor / items);
      const r = await accumulateItem(order[cursor % items]);
      lossSum += r.loss;
      rowsDone += r.rows;
      cursor++;
    }
    const s = trainer.step();
    stepsHere++;
    if (options.checkpoint && (s.step % every === 0 || s.step === steps)) {
      await trainer.saveCheckpoint(options.checkpoint, { cursor });
    }
    const elapsed = (performance.now() - t0) / 1000;
    options.onProgress?.({
      ...s,
      loss: lossSum / accumulate,
      totalSteps: steps,
      tokensPerSecond: rowsDone / Math.max(elapsed, 1e-9),
      etaSeconds: (elapsed / stepsHere) * (steps - s.step),
    });
  }
}

/** Deterministic order of `n` examples in epoch `epoch` for `seed` (Fisher-Yates over mulberry32). */
function epochOrder(n: number, seed: number, epoch: number): number[] {
  let a = (seed * 0x9e3779b1 + epoch * 0x85ebca6b) >>> 0;
  const rand = () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const order = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  return order;
}

/**
 * The seeded recipe that trains the demo model from zero on the CPU, in four phases:
 *
 * 1. **reader**: a 4-layer Llama (hidden 128) learns the corpus language and text QA
 *    (`[<s> | document window | question] -> answer </s>`), full-parameter.
 * 2. **compressor**: the same weights plus `embed_summary` learn AutoCompressor compression of store
 *    chunks (512 tokens, segments of 256 -> 8 summary vectors each: 32x), with the next-segment LM loss
 *    and LLoCO's QA loss backpropagated through the summary vectors into both segments' encoder passes;
 *    text-QA examples stay in the mix so the reader keeps reading text.
 * 3. **adapters**: one LoRA per document group, finetuned on `[summary vectors | question] -> answer`
 *    with the compressor frozen (LLoCO's per-group finetuning).
 * 4. **LoCoCo heads**: calibrated on corpus text (M = 512 slots) for the fixed-memory cache baseline.
 *
 * With `budget.decoder`, a decoder phase runs between 2 and 3 (`demo/recipe_decoder.ts`): a copy of the
 * model finetuned on the frozen compressor's vectors answers, and phases 3-4 train on it.
 *
 * Every draw comes from seeds fixed here; the training documents come from `demoDocuments` at seed
 * {@link TRAIN_SEED}, which no evaluation seed shares.
 *
 * @module
 */

import { join } from "node:path";
import { seededUint32 } from "../src/_seeded_random.ts";
import type { Kvfold } from "../src/engine.ts";
import { type CompressorLoss, ModelTrainer, type TrainBatchItem } from "../src/model_train.ts";
import { initModelFolder } from "../src/model_train_loop.ts";
import { Compressor } from "../src/compressor.ts";
import { finetuneLora, type QaExample } from "../src/train.ts";
import { calibrateLococo } from "../src/lococo_train.ts";
import { WeightAverage } from "../src/weight_average.ts";
import { demoDocuments } from "./corpus.ts";
import {
  chunkDraws,
  type Draw,
  factPairDraws,
  twinDraws,
  twinSentences,
  windowDraws,
} from "./recipe_draws.ts";
import { writeDemoTokenizer } from "./tokenizer.ts";
import { documentIds, textQaExample } from "./examples.ts";
import { pathExists } from "../src/_path_exists.ts";
import {
  bestStart,
  readStartsRecord,
  startSeed,
  type StartsRecord,
  validationScore,
  writeStartsRecord,
} from "./recipe_select.ts";
import { CHUNK_TOKENS, demoConfig, type DemoShape, GROUPS, SUMMARY_VECTORS } from "./recipe_shape.ts";
import { compressorExample } from "./compressor_examples.ts";
import { trainDecoder } from "./recipe_decoder.ts";
import {
  checkedBudget,
  type RecipeBudget,
  segmentTokensOf,
  SHIPPED_BUDGET,
  STREAM,
} from "./recipe_budget.ts";
import { decoderOr, trainedSegmentTokens } from "./trained.ts";

export * from "./recipe_shape.ts";
export {
  EVALUATION_SEEDS,
  overShippedBudget,
  type RecipeBudget,
  recipeSeed,
  segmentTokensOf,
  SHIPPED_BUDGET,
} from "./recipe_budget.ts";
export {
  compressorExample,
  factSlots,
  factTargets,
  factTokens,
  questionsBySegment,
  segmentTargets,
  SUMMARY_LAYOUTS,
  type SummaryLayout,
} from "./compressor_examples.ts";

/** What the recipe reports as it goes. */
export interface RecipeProgress {
  phase: "reader" | "compressor" | "decoder" | "adapters" | "lococo" | "select";
  /** With several starts, the start being trained or scored (0-based). */
  start?: number;
  /** Phase "select": the start's validation score. */
  score?: number;
  step: number;
  steps: number;
  /** Mean losses of the step's examples (NaN where an objective is off). */
  loss: { lm: number; qa: number };
  seconds: number;
}

/** Options of {@link trainDemoModel}. */
export interface RecipeOptions {
  /** Where the model folder, adapters and heads go. */
  outDir: string;
  budget?: RecipeBudget;
  onProgress?: (p: RecipeProgress) => void;
  signal?: AbortSignal;
  /**
   * Go on from the checkpoint a stopped run left in `outDir` (same budget), instead of starting
   * over: the result has the bits of a run that was never stopped. Default false.
   */
  resume?: boolean;
  /**
   * How a start is scored when the budget has several (higher is better): given a folder with the
   * start's `model/` and `adapters/`. Default `validationScore` (the validation seed's LLoCO exact match).
   */
  scoreStart?: (trainedDir: string) => Promise<number>;
  /** Optimizer steps between checkpoints of phases 1 and 2 (default 500; also written when aborted). */
  checkpointEvery?: number;
}

/** What {@link trainDemoModel} wrote. */
export interface RecipeOutput {
  modelDir: string;
  adapters: Record<string, string>;
  lococoHeads: string;
  /** The budget's snapshots, each a folder with `model/` and `adapters/` ("step-S", "step-S-ema"). */
  snapshots: string[];
  seconds: number;
}

/** Mean of numbers, NaN for none. */
const mean = (xs: number[]) => xs.length === 0 ? NaN : xs.reduce((a, b) => a + b, 0) / xs.length;

/**
 * Trains the demo model, its group adapters and LoCoCo heads from zero into `options.outDir`
 * (`model/`, `adapters/<group>/`, `lococo.safetensors`).
 *
 * @example
 * ```ts ignore
 * await using kv = await Kvfold.open();
 * await trainDemoModel(kv, { outDir: "./demo/trained", onProgress: (p) => console.log(p) });
 * ```
 */
export async function trainDemoModel(kv: Kvfold, options: RecipeOptions): Promise<RecipeOutput> {
  const budget = options.budget ?? SHIPPED_BUDGET;
  const { seed, shape, starts } = checkedBudget(budget);
  const t0 = performance.now();
  const seconds = () => (performance.now() - t0) / 1000;
  const init = join(options.outDir, "init"), modelDir = join(options.outDir, "model");
  // Phases 1 and 2 share one trainer: the compressor is the reader plus embed_summary.
  // Resuming: a checkpoint goes on from its step; without one, a saved model means they are done.
  const ckpt = join(options.outDir, "train.ckpt.safetensors");
  let resumable = options.resume === true && await pathExists(ckpt);
  const trained = options.resume === true && !resumable &&
    await pathExists(join(modelDir, "model.safetensors"));
  // Several starts: the chosen one's checkpoint becomes this run's, and its seed the run's seed.
  let runSeed = seed;
  if (starts > 1) {
    const chosen = await chooseStart(kv, { ...options, budget, seed, seconds }, shape);
    runSeed = startSeed(seed, chosen);
    resumable ||= !trained;
  }
  if (!trained) {
    if (!resumable) await initRunFolder(init, shape, runSeed);
    await trainReaderAndCompressor(kv, { ...options, budget, seed: runSeed, seconds, resumable });
    await Deno.remove(ckpt).catch(() => {});
  }
  await Deno.remove(init, { recursive: true }).catch(() => {});
  const snapshots = snapshotDirs(options.outDir, budget);

  // Optional: a decoder of its own, finetuned on the frozen compressor's vectors.
  if (budget.decoder && budget.decoder.steps > 0) {
    await trainDecoder(kv, {
      dir: options.outDir,
      budget: budget.decoder,
      batch: budget.batch,
      replicas: budget.replicas ?? 1,
      seed: runSeed + STREAM.decoder,
      signal: options.signal,
      onProgress: (step, steps, loss) =>
        options.onProgress?.({
          phase: "decoder",
          step,
          steps,
          loss: { lm: NaN, qa: loss },
          seconds: seconds(),
        }),
    });
  }

  // Phase 3: one adapter per group on the frozen compressor's vectors (and each snapshot's).
  const adapters = await trainGroupAdapters(kv, options.outDir, budget, runSeed, options, seconds);
  for (const dir of snapshots) await trainGroupAdapters(kv, dir, budget, runSeed, options, seconds);

  // Phase 4: LoCoCo heads for the fixed-memory baseline (M = 512 slots, segments of 256).
  const lococoHeads = join(options.outDir, "lococo.safetensors");
  {
    using model = await kv.loadModel(await decoderOr(options.outDir));
    const corpus: number[] = [];
    for (const doc of demoDocuments({ seed: runSeed + STREAM.lococo })) {
      corpus.push(...documentIds(doc));
      if (corpus.length > budget.lococoSteps * 2048) break;
    }
    using trainer = await calibrateLococo(model, corpus, {
      slots: 512,
      segment: 256,
      steps: budget.lococoSteps,
      sequenceLength: 2048,
      seed: runSeed,
      signal: options.signal,
      onProgress: (p) =>
        options.onProgress?.({
          phase: "lococo",
          step: p.step,
          steps: budget.lococoSteps,
          loss: { lm: p.loss, qa: NaN },
          seconds: seconds(),
        }),
    });
    await trainer.saveHeads(lococoHeads);
  }
  return { modelDir, adapters, lococoHeads, snapshots, seconds: seconds() };
}

/** What phases 1 and 2 need from {@link trainDemoModel}. */
interface CompressorRun extends RecipeOptions {
  budget: RecipeBudget;
  seed: number;
  seconds: () => number;
  /** Whether `train.ckpt.safetensors` in outDir holds the run to resume. */
  resumable: boolean;
  /** Stop after this many steps of phases 1-2 together, with a checkpoint and the model saved. */
  stopAt?: number;
}

/** A new model folder (`init/`) with random weights from `seed` and the demo tokenizer. */
async function initRunFolder(init: string, shape: DemoShape, seed: number): Promise<void> {
  await Deno.mkdir(init, { recursive: true });
  await initModelFolder(init, demoConfig(shape), { seed });
  await writeDemoTokenizer(init);
}

/**
 * Trains each start of the budget up to its `selectAt` compressor step in `outDir/starts/start-k/`,
 * scores it, and makes the best one's checkpoint (and weight average, snapshots, init) `outDir`'s,
 * so phases 1-2 go on from it. Returns the chosen start. With `resume`, starts already scored in
 * `starts.json` are kept and a start's own checkpoint is gone on from.
 */
async function chooseStart(
  kv: Kvfold,
  run: Omit<CompressorRun, "resumable">,
  shape: DemoShape,
): Promise<number> {
  const { budget, seed, outDir } = run;
  const starts = budget.starts ?? 1;
  const selectAt = budget.selectAt ?? Math.max(1, Math.round(budget.compressorSteps / 4));
  const startDir = (k: number) => join(outDir, "starts", `start-${k}`);
  const record: StartsRecord = (run.resume ? await readStartsRecord(outDir) : undefined) ??
    { budget: JSON.stringify(budget), scores: [] };
  if (record.budget !== JSON.stringify(budget)) {
    throw new RangeError(
      `Cannot resume the demo recipe in ${outDir}: its starts were trained with budget ${record.budget}, not ${
        JSON.stringify(budget)
      }`,
    );
  }
  await Deno.mkdir(outDir, { recursive: true });
  for (let k = 0; k < starts && record.chosen === undefined; k++) {
    if (record.scores[k] !== undefined) continue;
    const dir = startDir(k), s = startSeed(seed, k);
    const resumable = run.resume === true && await pathExists(join(dir, "train.ckpt.safetensors"));
    if (!resumable) await initRunFolder(join(dir, "init"), shape, s);
    const onProgress = (p: RecipeProgress) => run.onProgress?.({ ...p, start: k });
    const stopAt = budget.readerSteps + selectAt;
    await trainReaderAndCompressor(kv, { ...run, outDir: dir, seed: s, resumable, stopAt, onProgress });
    await trainGroupAdapters(kv, dir, budget, s, { ...run, onProgress }, run.seconds);
    record.scores[k] = await (run.scoreStart ?? ((d) => validationScore(kv, d, run.signal)))(dir);
    await writeStartsRecord(outDir, record);
    onProgress({
      phase: "select",
      step: k + 1,
      steps: starts,
      score: record.scores[k],
      loss: { lm: NaN, qa: NaN },
      seconds: run.seconds(),
    });
  }
  if (record.chosen === undefined) {
    record.chosen = bestStart(record.scores);
    await writeStartsRecord(outDir, record);
  }
  // Idempotent, so a run stopped half-way through it finishes it when resumed.
  const from = startDir(record.chosen);
  if (await pathExists(from)) {
    for await (const e of Deno.readDir(from)) {
      if (e.name === "init" || e.name === "snapshots" || e.name.endsWith(".ckpt.safetensors")) {
        await Deno.remove(join(outDir, e.name), { recursive: true }).catch(() => {});
        await Deno.rename(join(from, e.name), join(outDir, e.name));
      }
    }
    await Deno.remove(join(outDir, "starts"), { recursive: true });
  }
  return record.chosen;
}

/** The folder of the snapshot at compressor step `step`: the weights then, or their average. */
function snapshotDir(outDir: string, step: number, averaged: boolean): string {
  return join(outDir, "snapshots", `step-${step}${averaged ? "-ema" : ""}`);
}

/** Every snapshot folder of the budget, in order ("step-S", then "step-S-ema" with `ema`). */
function snapshotDirs(outDir: string, budget: RecipeBudget): string[] {
  return (budget.snapshots ?? []).flatMap((s) =>
    budget.ema
      ? [snapshotDir(outDir, s, false), snapshotDir(outDir, s, true)]
      : [snapshotDir(outDir, s, false)]
  );
}

/**
 * Phases 1 and 2 on `outDir/init` into `outDir/model`, with a checkpoint (`train.ckpt.safetensors`,
 * the weight average beside it) every {@link RecipeOptions.checkpointEvery} steps and when aborted.
 * A resumed run replays the draws of the steps done without training on them, so it ends with the
 * bits of a run that was never stopped.
 */
async function trainReaderAndCompressor(kv: Kvfold, run: CompressorRun): Promise<void> {
  const { budget, seed, outDir } = run;
  const ckpt = join(outDir, "train.ckpt.safetensors");
  const averageFile = (step: number) => join(outDir, `average-${step}.ckpt.safetensors`);
  const segmentTokens = segmentTokensOf(budget);
  using model = await kv.loadModel(join(outDir, "init"), { dtype: "f32" });
  using trainer = ModelTrainer.create(model, {
    seed,
    summaryLength: budget.summaryVectors ?? SUMMARY_VECTORS,
    segmentLength: segmentTokens,
    backpropSegments: 2,
    lmWeight: 0.5,
    qaWeight: 1,
    learningRate: budget.optimizer?.learningRate ?? 3e-3,
    betas: budget.optimizer?.betas,
    warmupSteps: 50,
    totalSteps: budget.readerSteps + budget.compressorSteps,
    minLearningRateRatio: 0.1,
    weightDecay: 0.01,
  });
  let done = 0;
  if (run.resumable) {
    const state = await trainer.loadCheckpoint(ckpt);
    if (state.budget !== JSON.stringify(budget)) {
      throw new RangeError(
        `Cannot resume the demo recipe in ${outDir}: it was started with budget ${state.budget}, not ${
          JSON.stringify(budget)
        }`,
      );
    }
    done = trainer.stepCount;
  }
  let average: WeightAverage | undefined;
  const checkpoint = async () => {
    const step = trainer.stepCount;
    await average?.saveState(averageFile(step));
    await trainer.saveCheckpoint(ckpt, { budget: JSON.stringify(budget) });
    for await (const e of Deno.readDir(outDir)) {
      const m = /^average-(\d+)\.ckpt\.safetensors$/.exec(e.name);
      if (m && Number(m[1]) !== step) await Deno.remove(join(outDir, e.name));
    }
  };

  // The reader: short text windows (16 to 64 tokens) around one fact, where the lookup forms fast.
  const rnd = seededUint32(seed, "demo recipe: lengths");
  const unit = () => rnd() / 2 ** 32;
  const windows = windowDraws(seed + STREAM.reader, () => Math.round(16 * 4 ** unit()));
  // With `twinsFrom`, one text example in four (from the start) is two facts of one attribute side
  // by side, so the text lookup learns to match the entity, not just the attribute.
  const twinTexts = twinDraws(seed + STREAM.twinTexts, CHUNK_TOKENS, () => 0);
  const twinText = (): TrainBatchItem => {
    const d = twinTexts.next().value as Draw;
    return {
      text: textQaExample(twinSentences(d), d.question.question, d.question.answer, { languageModel: true }),
    };
  };
  const twinsOn = budget.twinsFrom !== undefined;
  const readerBatch = () =>
    Array.from({ length: budget.batch }, (_, b): TrainBatchItem => {
      if (twinsOn && b % 4 === 1) return twinText();
      const d = windows.next().value as Draw;
      // Half the examples also model the context's language; the other half are answers only.
      return {
        text: textQaExample(d.ids, d.question.question, d.question.answer, { languageModel: b % 2 === 0 }),
      };
    });
  // The compressor: windows of log-uniform length in [16, max], max growing to a whole chunk over
  // the first 40% of the phase; from `wholeChunksFrom` (70%) on, half the documents are whole store
  // chunks, as the evaluation cuts them. One text example in four keeps the reader reading text.
  let longest = 16;
  const grow = Math.max(1, Math.floor(0.4 * budget.compressorSteps));
  // A window length in [16, longest], log-uniform in u.
  const windowLength = (u: number) => Math.round(16 * (longest / 16) ** u);
  const docs = windowDraws(seed + STREAM.windows, () => windowLength(unit()));
  const chunks = chunkDraws(seed + STREAM.chunks, CHUNK_TOKENS);
  // From `factPairsFrom` on, one document in four is a window with two facts in one segment.
  const pairs = factPairDraws(seed + STREAM.factPairs, segmentTokens, (_, u) => windowLength(u));
  const pairsFrom = (budget.factPairsFrom ?? Infinity) * budget.compressorSteps;
  // From `twinsFrom` on, one document in four is a window with two facts of one attribute.
  const twins = twinDraws(seed + STREAM.twins, CHUNK_TOKENS, (_, u) => windowLength(u));
  const twinsFrom = (budget.twinsFrom ?? Infinity) * budget.compressorSteps;
  const compressorBatch = (s: number) => {
    longest = Math.round(16 * (CHUNK_TOKENS / 16) ** Math.min(1, s / grow));
    return Array.from({ length: budget.batch }, (_, b): TrainBatchItem => {
      if (b % 4 === 3) {
        if (twinsOn && b % 8 === 7) return twinText();
        const d = windows.next().value as Draw;
        return {
          text: textQaExample(d.ids, d.question.question, d.question.answer, { languageModel: true }),
        };
      }
      const whole = s >= (budget.wholeChunksFrom ?? 0.7) * budget.compressorSteps && b % 2 === 0;
      const pair = s >= pairsFrom && b % 4 === 1;
      const twin = s >= twinsFrom && b % 4 === 1;
      return {
        document: compressorExample(
          (whole ? chunks : pair ? pairs : twin ? twins : docs).next().value as Draw,
          budget.layout,
          budget.summaryVectors,
          segmentTokens,
        ),
      };
    });
  };

  const replicas = budget.replicas ?? 1, every = run.checkpointEvery ?? 500;
  const total = run.stopAt ?? budget.readerSteps + budget.compressorSteps;
  try {
    for (let g = 0; g < total; g++) {
      const phase = g < budget.readerSteps ? "reader" : "compressor";
      const s = phase === "reader" ? g : g - budget.readerSteps;
      const items = phase === "reader" ? readerBatch() : compressorBatch(s);
      if (g < done) continue; // resuming: these draws were trained on before the checkpoint
      run.signal?.throwIfAborted();
      if (phase === "compressor" && budget.ema && !average) {
        average = new WeightAverage(trainer, budget.ema);
        if (s > 0) await average.loadState(averageFile(g));
      }
      const losses = await trainer.accumulateBatch(items, { replicas, signal: run.signal });
      trainer.step();
      average?.update();
      const documents = losses.filter((l): l is CompressorLoss => typeof l !== "number");
      if (phase === "compressor" && budget.snapshots?.includes(s + 1)) {
        await trainer.saveModel(join(snapshotDir(outDir, s + 1, false), "model"));
        if (average) await average.saveModel(join(snapshotDir(outDir, s + 1, true), "model"));
      }
      if ((g + 1) % every === 0) await checkpoint();
      run.onProgress?.({
        phase,
        step: s + 1,
        steps: phase === "reader" ? budget.readerSteps : budget.compressorSteps,
        loss: phase === "reader"
          ? { lm: mean(losses as number[]), qa: NaN }
          : { lm: mean(documents.map((l) => l.lm)), qa: mean(documents.map((l) => l.qa)) },
        seconds: run.seconds(),
      });
    }
  } catch (e) {
    // Stopped between steps (Ctrl-C): keep the last whole step so `resume` goes on from it.
    if (run.signal?.aborted && trainer.stepCount > done) await checkpoint();
    throw e;
  }
  if (run.stopAt !== undefined && trainer.stepCount % every !== 0) await checkpoint();
  await (average ?? trainer).saveModel(join(outDir, "model"));
}

/**
 * LLoCO's per-group finetuning: one LoRA per group on `[summary vectors | question] -> answer`, with
 * the compressor in `dir/model` frozen; writes `dir/adapters/<group>/`.
 */
export async function trainGroupAdapters(
  kv: Kvfold,
  dir: string,
  budget: RecipeBudget,
  seed: number,
  options: RecipeOptions,
  seconds: () => number,
): Promise<Record<string, string>> {
  const adapters: Record<string, string> = {};
  using compressor = await Compressor.load(kv, join(dir, "model"));
  // With a decoder phase the adapters go on the decoder; otherwise the compressor decodes.
  const decoderDir = await decoderOr(dir);
  using decoder = decoderDir === join(dir, "model") ? undefined : await kv.loadModel(decoderDir);
  const reader = decoder ?? compressor.model;
  for (const group of GROUPS) {
    const examples: QaExample[] = [];
    const draws = chunkDraws(seed + STREAM.adapters + GROUPS.indexOf(group), CHUNK_TOKENS, group);
    const n = budget.adapterSteps * budget.batch;
    for (let i = 0; i < n; i++) {
      const d = draws.next().value as Draw;
      const vectors = await compressor.compress(d.ids, { segmentLength: trainedSegmentTokens(compressor) });
      examples.push({ vectors: vectors.data, question: d.question.question, answer: d.question.answer });
    }
    using trainer = await finetuneLora(reader, examples, {
      steps: budget.adapterSteps,
      accumulate: budget.batch,
      rank: budget.adapter?.rank ?? 8,
      alpha: budget.adapter?.alpha ?? 16,
      learningRate: budget.adapter?.learningRate ?? 1e-3,
      targets: budget.adapter?.targets,
      warmupSteps: 10,
      totalSteps: budget.adapterSteps,
      seed,
      signal: options.signal,
      onProgress: (p) =>
        options.onProgress?.({
          phase: "adapters",
          step: p.step,
          steps: budget.adapterSteps,
          loss: { lm: NaN, qa: p.loss },
          seconds: seconds(),
        }),
    });
    adapters[group] = join(dir, "adapters", group);
    await trainer.saveAdapter(adapters[group]);
  }
  return adapters;
}

/**
 * The recipe's optional decoder phase: a full-parameter copy of the trained model finetuned as the
 * LLoCO decoder on `[summary vectors | question] -> answer`, with the compressor (`model/`) frozen,
 * written to `decoder/`. The compressor keeps encoding; the decoder answers (and the group adapters
 * are trained on it).
 *
 * Why: in one weak run (`bench/demo_summary_probe.ts`), the summary vectors carried a segment's facts
 * (90% and more of entities and value words read back through the LM head) while the shared weights
 * answered only 57% of the questions on them, so the lookup, not the compression, was what lost.
 * Phase 2 trains one set of weights to do both; here the decoder's weights get the QA loss alone.
 *
 * @module
 */

import { join } from "node:path";
import type { Kvfold } from "../src/engine.ts";
import { Compressor } from "../src/compressor.ts";
import { ModelTrainer, type TrainBatchItem } from "../src/model_train.ts";
import { qaExampleRows } from "../src/train.ts";
import { seededUint32 } from "../src/_seeded_random.ts";
import { chunkDraws, type Draw } from "./recipe_draws.ts";
import { CHUNK_TOKENS } from "./recipe_shape.ts";
import { trainedSegmentTokens } from "./trained.ts";

/** The decoder phase's settings (`RecipeBudget.decoder`). */
export interface DecoderBudget {
  /** Optimizer steps (0: no decoder phase; the compressor's weights decode). */
  steps: number;
  /** Distinct store chunks compressed once and drawn from (default 2000). */
  chunks?: number;
  /** Peak learning rate of AdamW (default 1e-3; betas 0.9, 0.95; cosine to a tenth). */
  learningRate?: number;
}

/** What the decoder phase needs of the recipe's run. */
export interface DecoderRun {
  /** Folder with the trained `model/`; `decoder/` is written beside it. */
  dir: string;
  budget: DecoderBudget;
  /** Examples per step. */
  batch: number;
  replicas: number;
  /** Seed of the chunk draws and of the example order. */
  seed: number;
  signal?: AbortSignal;
  onProgress?: (step: number, steps: number, loss: number) => void;
}

/**
 * Trains `run.dir/decoder/` from `run.dir/model/`: every chunk of a seeded pool is compressed once by
 * the frozen compressor; each step draws `batch` (chunk, question) pairs of the pool, every question
 * whose fact lies in the chunk eligible. Returns the decoder's folder.
 */
export async function trainDecoder(kv: Kvfold, run: DecoderRun): Promise<string> {
  const { budget } = run;
  const out = join(run.dir, "decoder");
  using compressor = await Compressor.load(kv, join(run.dir, "model"));
  // The pool: each chunk's vectors with its questions.
  const pool: { vectors: Float32Array; draw: Draw }[] = [];
  const draws = chunkDraws(run.seed, CHUNK_TOKENS);
  for (let i = 0; i < (budget.chunks ?? 2000); i++) {
    run.signal?.throwIfAborted();
    const draw = draws.next().value as Draw;
    const vectors = (await compressor.compress(draw.ids, { segmentLength: trainedSegmentTokens(compressor) }))
      .data;
    pool.push({ vectors, draw });
  }
  // The trainer copies the compressor's weights to f32 and leaves them as they are, so the decoder
  // starts from the loaded model itself rather than a second load of the same folder.
  const decoder = compressor.model;
  using trainer = ModelTrainer.create(decoder, {
    seed: run.seed,
    learningRate: budget.learningRate ?? 1e-3,
    betas: [0.9, 0.95],
    warmupSteps: Math.min(50, Math.floor(budget.steps / 10)),
    totalSteps: budget.steps,
    minLearningRateRatio: 0.1,
    weightDecay: 0.01,
  });
  const rnd = seededUint32(run.seed, "demo recipe: decoder draws");
  for (let s = 0; s < budget.steps; s++) {
    run.signal?.throwIfAborted();
    const items = Array.from({ length: run.batch }, (): TrainBatchItem => {
      const { vectors, draw } = pool[rnd() % pool.length];
      const q = draw.questions[rnd() % draw.questions.length];
      return { text: qaExampleRows(decoder, vectors, q.question, q.answer) };
    });
    const losses = await trainer.accumulateBatch(items, { replicas: run.replicas, signal: run.signal });
    trainer.step();
    const mean = (losses as number[]).reduce((a, b) => a + b, 0) / losses.length;
    run.onProgress?.(s + 1, budget.steps, mean);
  }
  await trainer.saveModel(out);
  // The decoder reads vectors; it has no summary rows of its own.
  const configPath = join(out, "config.json");
  const config = JSON.parse(await Deno.readTextFile(configPath));
  delete config.summary_length;
  await Deno.writeTextFile(configPath, JSON.stringify(config, null, 2) + "\n");
  return out;
}

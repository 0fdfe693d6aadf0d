/**
 * `kvfold train model|compressor`: full-parameter training of a model (from a config, from scratch,
 * or from a model folder) on text, and AutoCompressor training on documents and questions. Both
 * write a Hugging Face folder that `loadModel` and the Compressor read.
 *
 * @module
 */

import {
  initModelFolder,
  KvfoldError,
  type ModelTrainOptions,
  readModelConfig,
  readTrainingData,
  trainCompressor,
  trainModel,
} from "../mod.ts";
import { dtypeOpt, intOpt, need, numOpt, openEngine, seedOpt } from "./_options.ts";
import { interruptSignal, note, noteTrainingStep } from "./_console.ts";

type Values = Record<string, string | boolean | undefined>;

// What train model and train compressor share: the optimizer, the loop, and the starting folder.
function common(v: Values) {
  const s = (k: string) => v[k] as string | undefined;
  return {
    steps: intOpt(s("steps"), "steps", 1),
    accumulate: intOpt(s("accumulate"), "accumulate", 1),
    learningRate: numOpt(s("lr"), "lr"),
    weightDecay: numOpt(s("weight-decay"), "weight-decay"),
    warmupSteps: intOpt(s("warmup"), "warmup"),
    minLearningRateRatio: numOpt(s("min-lr-ratio"), "min-lr-ratio"),
    seed: seedOpt(s("seed")),
    checkpoint: s("checkpoint"),
    checkpointEvery: intOpt(s("checkpoint-every"), "checkpoint-every", 1),
  } satisfies ModelTrainOptions & Record<string, unknown>;
}

// The folder training starts from: --base DIR, or --init CONFIG.json written as a random model
// (seeded) next to the output, with the tokenizer of --tokenizer (default: CONFIG.json's folder).
async function startingFolder(v: Values, out: string): Promise<string> {
  const base = v.base as string | undefined, init = v.init as string | undefined;
  if ((base === undefined) === (init === undefined)) {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      "Cannot train: give exactly one of --base DIR and --init CONFIG.json",
    );
  }
  if (base !== undefined) return base;
  const config = await readModelConfig(init!);
  const dir = `${out}.init`;
  const tokenizerDir = (v.tokenizer as string | undefined) ??
    (init!.includes("/") ? init!.replace(/\/[^/]*$/, "") : ".");
  await initModelFolder(dir, config, { seed: seedOpt(v.seed as string | undefined) ?? 0, tokenizerDir });
  return dir;
}

/** `train model`: every weight trained on `{"text"}` lines. */
export async function trainModelCommand(v: Values): Promise<void> {
  const out = need(v.out as string | undefined, "out");
  const texts = await readTrainingData(need(v.data as string | undefined, "data"), "lm");
  const dir = await startingFolder(v, out);
  using kv = await openEngine(v as { threads?: string; backend?: string });
  using model = await kv.loadModel(dir, { dtype: dtypeOpt(v as { dtype?: string }) });
  using interrupt = interruptSignal();
  const t0 = performance.now();
  using trainer = await trainModel(model, texts, {
    ...common(v),
    sequenceLength: intOpt(v["sequence-length"] as string | undefined, "sequence-length", 2),
    signal: interrupt.signal,
    onProgress: noteTrainingStep,
  });
  await trainer.saveModel(out);
  note(
    `wrote ${out}: ${trainer.params} parameters, ${texts.length} texts, ${trainer.stepCount} steps, ` +
      `${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
}

/** `train compressor`: the model and its embed_summary rows on `{"document","question","answer"}` lines. */
export async function trainCompressorCommand(v: Values): Promise<void> {
  const s = (k: string) => v[k] as string | undefined;
  const out = need(s("out"), "out");
  const docs = await readTrainingData(need(s("data"), "data"), "compressor");
  const dir = await startingFolder(v, out);
  using kv = await openEngine(v as { threads?: string; backend?: string });
  using model = await kv.loadModel(dir, { dtype: dtypeOpt(v as { dtype?: string }) });
  using interrupt = interruptSignal();
  const t0 = performance.now();
  using trainer = await trainCompressor(model, docs, {
    ...common(v),
    summaryLength: intOpt(need(s("summary-length"), "summary-length"), "summary-length", 1),
    segmentLength: intOpt(s("segment-length"), "segment-length", 1),
    backpropSegments: intOpt(s("backprop-segments"), "backprop-segments", 1),
    lmWeight: numOpt(s("lm-weight"), "lm-weight"),
    qaWeight: numOpt(s("qa-weight"), "qa-weight"),
    signal: interrupt.signal,
    onProgress: noteTrainingStep,
  });
  await trainer.saveModel(out);
  note(
    `wrote ${out}: ${trainer.summaryLength} summary rows, ${trainer.params} parameters, ${docs.length} documents, ` +
      `${trainer.stepCount} steps, ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
}

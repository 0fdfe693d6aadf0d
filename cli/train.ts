/**
 * `kvfold train lora|lococo`: finetune a LoRA adapter on question/answer lines, or calibrate LoCoCo heads on text.
 *
 * @module
 */

import {
  calibrateLococo,
  Compressor,
  finetuneLora,
  KvfoldError,
  type LoraProjection,
  type QaExample,
} from "../mod.ts";
import {
  BOOLEAN,
  COMMON,
  dtypeOpt,
  intOpt,
  need,
  numOpt,
  openEngine,
  parseCommand,
  seedOpt,
  STRING,
} from "./_options.ts";
import { interruptSignal, note, noteTrainingStep, readUserText } from "./_console.ts";

/** `train lococo`: calibrate heads on a text file, printing progress, writing the heads file. */
async function trainLococo(v: Record<string, string | boolean | undefined>) {
  const str = (k: string) => v[k] as string | undefined;
  const dir = need(str("model"), "model"), out = need(str("out"), "out");
  const text = await readUserText(need(str("data"), "data"), "train lococo");
  using kv = await openEngine(v as { threads?: string; backend?: string });
  using model = await kv.loadModel(dir, { dtype: dtypeOpt({ dtype: str("dtype") }) });
  using interrupt = interruptSignal();
  const init = str("init") !== undefined ? model.loadLococoHeads(str("init")!) : undefined;
  const t0 = performance.now();
  using trainer = await calibrateLococo(model, text, {
    init,
    slots: intOpt(str("slots"), "slots", 1),
    segment: intOpt(str("segment"), "segment", 1),
    kernel: intOpt(str("kernel"), "kernel", 1),
    keepRate: numOpt(str("keep-rate"), "keep-rate"),
    sequenceLength: intOpt(str("sequence-length"), "sequence-length", 2),
    steps: intOpt(str("steps"), "steps", 1),
    accumulate: intOpt(str("accumulate"), "accumulate", 1),
    learningRate: numOpt(str("lr"), "lr"),
    weightDecay: numOpt(str("weight-decay"), "weight-decay"),
    warmupSteps: intOpt(str("warmup"), "warmup"),
    seed: seedOpt(str("seed")),
    checkpoint: str("checkpoint"),
    checkpointEvery: intOpt(str("checkpoint-every"), "checkpoint-every", 1),
    signal: interrupt.signal,
    onProgress: noteTrainingStep,
  });
  await trainer.saveHeads(out);
  const s = trainer.shape;
  note(
    `wrote ${out}: M ${s.slots}, Mc ${s.fusedSlots}, k ${s.kernel}, B ${s.segment}, r ${s.keepRate}; ` +
      `${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
}

export async function cmdTrain(args: string[]) {
  const { values: v, positionals } = parseCommand(args, {
    ...COMMON,
    model: STRING,
    data: STRING,
    out: STRING,
    rank: STRING,
    alpha: STRING,
    targets: STRING,
    rslora: BOOLEAN,
    steps: STRING,
    accumulate: STRING,
    lr: STRING,
    "weight-decay": STRING,
    warmup: STRING,
    seed: STRING,
    checkpoint: STRING,
    "checkpoint-every": STRING,
    slots: STRING,
    segment: STRING,
    kernel: STRING,
    "keep-rate": STRING,
    "sequence-length": STRING,
    init: STRING,
  }, true);
  if (positionals[0] === "lococo") return await trainLococo(v);
  if (positionals[0] !== "lora") {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      "Usage: kvfold train lora|lococo --model DIR --data FILE --out PATH [options]",
    );
  }
  const dir = need(v.model, "model"), out = need(v.out, "out");
  const examples: QaExample[] = [];
  const lines = (await readUserText(need(v.data, "data"), "train lora")).split("\n");
  for (const [i, line] of lines.entries()) {
    if (line.trim() === "") continue;
    let e: Record<string, unknown>;
    try {
      e = JSON.parse(line);
    } catch (err) {
      throw new KvfoldError(
        "FORMAT",
        `Cannot read --data: line ${i + 1} is not JSON (${(err as Error).message})`,
      );
    }
    if (typeof e.question !== "string" || typeof e.answer !== "string") {
      throw new KvfoldError(
        "FORMAT",
        `Cannot read --data: line ${i + 1} needs string "question" and "answer"`,
      );
    }
    if (e.document !== undefined && typeof e.document !== "string") {
      throw new KvfoldError("FORMAT", `Cannot read --data: line ${i + 1}: "document" must be a string`);
    }
    examples.push({ question: e.question, answer: e.answer, document: e.document as string | undefined });
  }
  using kv = await openEngine(v);
  // Documents are compressed by the checkpoint itself (LLoCO: the decoder is the AutoCompressor).
  const needsCompressor = examples.some((e) => e.document !== undefined);
  const compressor = needsCompressor ? await Compressor.load(kv, dir) : undefined;
  using model = compressor ? compressor.model : await kv.loadModel(dir, { dtype: dtypeOpt(v) });
  using interrupt = interruptSignal();
  const t0 = performance.now();
  using trainer = await finetuneLora(model, examples, {
    compressor,
    rank: intOpt(v.rank, "rank", 1),
    alpha: numOpt(v.alpha, "alpha"),
    targets: v.targets?.split(",").map((t) => t.trim()) as LoraProjection[] | undefined,
    rslora: v.rslora,
    steps: intOpt(v.steps, "steps", 1),
    accumulate: intOpt(v.accumulate, "accumulate", 1),
    learningRate: numOpt(v.lr, "lr"),
    weightDecay: numOpt(v["weight-decay"], "weight-decay"),
    warmupSteps: intOpt(v.warmup, "warmup"),
    seed: seedOpt(v.seed),
    checkpoint: v.checkpoint,
    checkpointEvery: intOpt(v["checkpoint-every"], "checkpoint-every", 1),
    signal: interrupt.signal,
    onProgress: noteTrainingStep,
  });
  await trainer.saveAdapter(out);
  note(
    `wrote ${out}: rank ${trainer.info.rank} on ${
      trainer.info.targets.join(", ")
    }, ${trainer.info.params} parameters, ` +
      `${examples.length} examples, ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
}

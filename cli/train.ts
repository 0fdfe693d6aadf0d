/**
 * `kvfold train lora|lococo|model|compressor`: finetune a LoRA adapter on question/answer lines,
 * calibrate LoCoCo heads on text, or train every weight of a model or an AutoCompressor
 * (cli/train_model.ts).
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
  bool,
  COMMON,
  defineCommand,
  dtypeOpt,
  intOpt,
  need,
  numOpt,
  openEngine,
  parseCommand,
  seedOpt,
  str,
} from "./_options.ts";
import { interruptSignal, note, noteTrainingStep, readUserText } from "./_console.ts";
import { trainCompressorCommand, trainModelCommand } from "./train_model.ts";

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

const LORA = "LoRA options (train lora)";
const LOCOCO = "LoCoCo options (train lococo)";
const FULL = "Model options (train model, train compressor)";
const COMPRESSOR = "Compressor options (train compressor)";

/** `kvfold train`'s usage and options. */
export const TRAIN = defineCommand({
  name: "train",
  summary: "finetune a LoRA adapter, calibrate LoCoCo heads, or train a model or a compressor",
  usage: [
    "train lora --model DIR --data FILE.jsonl --out DIR [options]",
    "train lococo --model DIR --data FILE.txt --out HEADS.safetensors [options]",
    "train model --init CONFIG.json|--base DIR --data FILE.jsonl --out DIR [options]",
    "train compressor --init CONFIG.json|--base DIR --data FILE.jsonl --summary-length N --out DIR [options]",
  ],
  details: 'train lora finetunes on {"question","answer"[,"document"]} lines (documents are compressed\n' +
    "by the checkpoint itself) and writes a PEFT folder; train lococo calibrates LoCoCo heads on text\n" +
    'with the model frozen. train model trains every weight on {"text"} lines (next-token prediction\n' +
    "over --sequence-length pieces); train compressor trains the model and its embed_summary rows on\n" +
    '{"document" (or "text")[,"question","answer" | ,"pairs":[{"question","answer"},...]]} lines:\n' +
    "each document segment predicts its next tokens from the summaries of the segments before it, and\n" +
    "[summaries | question] predicts the answer (for each pair, over one compression). --init writes a random model from an HF config.json (weights normal(0, 0.02), seeded by\n" +
    "--seed) beside --out and trains it from scratch. Both write an HF folder (config.json,\n" +
    "model.safetensors, the tokenizer files). --checkpoint resumes a killed run.",
  options: {
    model: str("DIR", "model folder (Hugging Face layout)"),
    data: str("FILE", "training data (.jsonl for lora, text for lococo)"),
    out: str("PATH", "the adapter folder or heads file to write"),
    steps: str("N", "optimizer steps (default: one pass over the data)"),
    accumulate: str("N", "examples per optimizer step (default 1)"),
    lr: str("LR", "learning rate"),
    "weight-decay": str("W", "AdamW weight decay"),
    warmup: str("N", "warmup steps"),
    seed: str("S", "random seed"),
    checkpoint: str("FILE", "save progress here, and resume from it"),
    "checkpoint-every": str("N", "steps between checkpoints"),
    rank: str("R", "the LoRA rank", LORA),
    alpha: str("A", "the LoRA alpha", LORA),
    targets: str("q_proj,...", "the projections adapted", LORA),
    rslora: bool("rank-stabilised scaling (alpha / sqrt(rank))", LORA),
    slots: str("M", "KV slots (default 512)", LOCOCO),
    segment: str("B", "tokens per segment (default 512)", LOCOCO),
    kernel: str("K", "convolution kernel size, odd (default 21)", LOCOCO),
    "keep-rate": str("R", "keep rate r (default 0.5)", LOCOCO),
    init: str(
      "HEADS|CONFIG",
      "lococo: heads file to start from; model, compressor: a config.json to start from scratch",
    ),
    base: str("DIR", "model folder to start from", FULL),
    tokenizer: str("DIR", "with --init: folder of tokenizer.json (default: the config's folder)", FULL),
    "sequence-length": str("N", "lococo: tokens per sequence (default 4 x B); model: default 512"),
    "min-lr-ratio": str("R", "the cosine ends at R x lr (default 0)", FULL),
    "summary-length": str("N", "summary vectors per segment (embed_summary rows)", COMPRESSOR),
    "segment-length": str("N", "document tokens per segment (default 512)", COMPRESSOR),
    "backprop-segments": str("N", "segments a gradient crosses through summaries (default 2)", COMPRESSOR),
    "lm-weight": str("W", "weight of the next-segment LM loss (default 1)", COMPRESSOR),
    "qa-weight": str("W", "weight of the question-answer loss (default 1)", COMPRESSOR),
    ...COMMON,
  },
  positionals: true,
});

export async function cmdTrain(args: string[]) {
  const { values: v, positionals } = parseCommand(args, TRAIN);
  if (positionals[0] === "lococo") return await trainLococo(v);
  if (positionals[0] === "model") return await trainModelCommand(v);
  if (positionals[0] === "compressor") return await trainCompressorCommand(v);
  if (positionals[0] !== "lora") {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      "Usage: kvfold train lora|lococo|model|compressor --data FILE --out PATH [options]; see kvfold train --help",
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

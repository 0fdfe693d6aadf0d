/**
 * The `kvfold` command line: `deno task kvfold <command> ...`.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { Kvfold } from "../src/engine.ts";
import { KvfoldError } from "../src/errors.ts";
import type { Model, WeightDType } from "../src/model.ts";
import type { CacheOptions } from "../src/lococo.ts";
import type { Session } from "../src/session.ts";
import { ensureNativeLibrary } from "../src/_native_build.ts";
import { readBoundedText } from "../src/_bounded_read.ts";
import { readSafetensorsFile, writeSafetensorsFile } from "../src/formats/safetensors.ts";
import { makeTestAdapter, makeTestModel, TEST_MODEL_PRESETS } from "../testing/mod.ts";
import { makeTestLococoHeads } from "../testing/mod.ts";
import { convertTorchCheckpoint } from "../src/formats/torch_bin.ts";
import { Compressor } from "../src/compressor.ts";
import { answerFromChunks, compressIntoStore } from "../src/lloco.ts";
import { finetuneLora, type QaExample, type TrainingProgress } from "../src/train.ts";
import { calibrateLococo } from "../src/lococo_train.ts";
import type { LoraProjection } from "../src/adapter.ts";
import { DocumentStore } from "../src/store.ts";
import { measureDecode, measurePrefill } from "../src/throughput.ts";

const USAGE = `kvfold — Llama-family models with compressed context, from Deno

Usage: deno task kvfold <command> [options]

Commands:
  info                                   version, backends built, threads, GPU found or not
  build [--force]                        build the native library (done on first use anyway)
  generate --model DIR --prompt TEXT     stream a completion to stdout
      [--max-tokens N] [--temperature T] [--top-p P] [--top-k K] [--min-p P]
      [--repetition-penalty R] [--seed S] [--stop TEXT]... [--chat] [--system TEXT] [--adapter DIR]
      [CACHE]
  logits --model DIR --ids 1,2,3 --out FILE.safetensors [--prefix EMB.safetensors] [--adapter DIR]
      [CACHE]                            logits [n_ids, vocab] f32 at every position (no BOS added);
                                         --prefix runs its tensor "embeddings" [K, hidden] first;
                                         a compressing cache prefills segment by segment
  make-test-model OUT_DIR [--seed S] [--preset tiny|small|compressor] [--dtype float32|float16|bfloat16]
                                         write a random Llama-family model in Hugging Face layout
  make-test-model OUT_DIR --preset lora --base DIR [--rank R] [--targets q_proj,v_proj,...] [--seed S]
                                         write a random PEFT LoRA adapter for the model in DIR
  make-test-model FILE.safetensors --preset lococo-heads --base DIR [--slots M] [--segment B] [--seed S]
                                         write random LoCoCo heads (k 21, r 0.5; M, B default 512)
  compress --compressor DIR --ids 1,2,3 [--segment-length N] --out FILE.safetensors
                                         AutoCompressor summary vectors: tensor "summary" [K, hidden] f32
  compress --compressor DIR --store FILE [--group NAME] [--chunk-tokens N] FILES...
                                         compress documents into the SQLite store, with progress
  ask --model DIR --store FILE [--k N] [--adapter [GROUP=]DIR]... [CACHE] QUESTION
                                         stream an answer from the best chunks' summary vectors;
                                         GROUP=DIR adapters are chosen by the best chunk's group,
                                         a plain DIR is used whatever the group
  train lora --model DIR --data FILE.jsonl --out DIR [--rank R] [--alpha A] [--targets q_proj,...]
      [--rslora] [--steps N] [--accumulate N] [--lr LR] [--weight-decay W] [--warmup N] [--seed S]
      [--checkpoint FILE [--checkpoint-every N]]
                                         finetune a LoRA on {"question","answer"[,"document"]} lines
                                         (documents compressed by the checkpoint); writes a PEFT
                                         folder; --checkpoint resumes a killed run
  train lococo --model DIR --data FILE.txt --out HEADS.safetensors [--slots M] [--segment B]
      [--kernel K] [--keep-rate R] [--init HEADS] [--sequence-length N] [--steps N] [--lr LR]
      [--seed S] [--checkpoint FILE [--checkpoint-every N]]
                                         calibrate LoCoCo heads on text (model frozen)
  store stats FILE                       documents, tokens in, vectors kept, ratio, bytes
  convert SRC DST [--max-memory SIZE]    PyTorch .bin checkpoints (torch.save zip; sharded; PEFT
                                         adapter_model.bin) to safetensors; refuses non-tensor pickles
                                         and corrupt files; SIZE (e.g. 8G) bounds the memory per file
  bench decode|prefill --model DIR [--tokens N] [--repeats N]
                                         tokens/s and the fraction of the memory-bandwidth limit

Common options: --threads N (default: all cores), --backend auto|cpu|cuda, --dtype auto|f32|f16|bf16
CACHE: --cache full|lococo|h2o|streaming (default full)
  lococo:    --heads FILE.safetensors [--slots M] [--segment B]   (M, B default to the file's)
  h2o:       --slots M [--segment B]
  streaming: --window W [--sinks N] [--segment B]                  (sinks default 4)
`;

const enc = new TextEncoder();
const write = (s: string) => Deno.stdout.writeSync(enc.encode(s));
const note = (s: string) => Deno.stderr.writeSync(enc.encode(s + "\n"));

// Integer flags are decimal digits with an optional sign, nothing else ("1e3", "0x10", "2.0", ""
// are refused), within [min, max] as written: every one of them ends in an int32 field, so the
// default max is 2**31 - 1, and past 2**53 a number would no longer be the one written.
const INT32_MAX = 0x7fffffff;

// `what` leads the message: "--max-tokens:" or "--ids: item 3".
function parseInteger(text: string, what: string, min: number, max: number): number {
  if (!/^[+-]?\d+$/.test(text)) {
    throw new KvfoldError("INVALID_ARGUMENT", `Cannot parse ${what} "${text}" is not an integer`);
  }
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    throw new KvfoldError("INVALID_ARGUMENT", `Cannot parse ${what} "${text}" is outside [${min}, ${max}]`);
  }
  return n;
}

function intOpt(v: string | undefined, name: string, min = 0, max = INT32_MAX): number | undefined {
  return v === undefined ? undefined : parseInteger(v, `--${name}:`, min, max);
}

/** --seed: any non-negative integer a JS number holds exactly. */
function seedOpt(v: string | undefined): number | undefined {
  return intOpt(v, "seed", 0, Number.MAX_SAFE_INTEGER);
}

function numOpt(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  // Decimal notation only: Number() would also take "", " ", "0x10" and "0b1".
  if (!/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(v) || !Number.isFinite(Number(v))) {
    throw new KvfoldError("INVALID_ARGUMENT", `Cannot parse --${name}: "${v}" is not a number`);
  }
  return Number(v);
}

/** A flag that takes one of a few words. */
function choiceOpt<T extends string>(
  v: string | undefined,
  name: string,
  choices: readonly T[],
): T | undefined {
  if (v === undefined || (choices as readonly string[]).includes(v)) return v as T | undefined;
  throw new KvfoldError(
    "INVALID_ARGUMENT",
    `Cannot parse --${name}: "${v}" is not one of ${choices.join(", ")}`,
  );
}

/** --dtype of commands that load a model. */
function dtypeOpt(v: { dtype?: string }): WeightDType {
  return choiceOpt(v.dtype, "dtype", ["auto", "f32", "f16", "bf16"] as const) ?? "auto";
}

/** "12.3 tok/s" for the tokens decoded after the first (sampled from the prefill), or "n/a". */
function decodeRate(generated: number, decodeMs: number): string {
  return generated > 1 && decodeMs > 0
    ? `${((generated - 1) / (decodeMs / 1000)).toFixed(1)} tok/s`
    : "n/a tok/s";
}

function need(v: string | undefined, name: string): string {
  if (v === undefined || v === "") {
    throw new KvfoldError("INVALID_ARGUMENT", `Missing --${name}; see \`kvfold --help\``);
  }
  return v;
}

// Token ids: non-negative integers here; the model checks them against its vocabulary.
function parseIds(list: string): number[] {
  return list.split(",").map((s, i) =>
    parseInteger(s.trim(), `--ids: item ${i}`, 0, Number.MAX_SAFE_INTEGER)
  );
}

/** An AbortSignal that Ctrl-C fires while it is in scope. */
function interruptSignal(): { signal: AbortSignal; [Symbol.dispose](): void } {
  const ac = new AbortController();
  const onSig = () => ac.abort(new Error("interrupted"));
  Deno.addSignalListener("SIGINT", onSig);
  return { signal: ac.signal, [Symbol.dispose]: () => Deno.removeSignalListener("SIGINT", onSig) };
}

const COMMON = {
  threads: { type: "string" },
  backend: { type: "string" },
  dtype: { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

// --cache and its settings, on generate, logits and ask.
const CACHE = {
  cache: { type: "string" },
  heads: { type: "string" },
  slots: { type: "string" },
  segment: { type: "string" },
  sinks: { type: "string" },
  window: { type: "string" },
} as const;

/** The session cache the --cache options ask for (undefined: full), loading --heads for lococo. */
function cacheFromArgs(
  model: Model,
  v: { cache?: string; heads?: string; slots?: string; segment?: string; sinks?: string; window?: string },
): CacheOptions | undefined {
  const kind = v.cache ?? "full";
  const slots = intOpt(v.slots, "slots", 1), segment = intOpt(v.segment, "segment", 1);
  const unused = (names: string[]) => {
    for (const n of names) {
      if ((v as Record<string, string | undefined>)[n] !== undefined) {
        throw new KvfoldError("INVALID_ARGUMENT", `--${n} does not apply to --cache ${kind}`);
      }
    }
  };
  switch (kind) {
    case "full":
      unused(["heads", "slots", "segment", "sinks", "window"]);
      return undefined;
    case "lococo":
      unused(["sinks", "window"]);
      return { kind, heads: model.loadLococoHeads(need(v.heads, "heads")), slots, segment };
    case "h2o":
      unused(["heads", "sinks", "window"]);
      return { kind, slots: intOpt(need(v.slots, "slots"), "slots", 1)!, segment };
    case "streaming":
      unused(["heads", "slots"]);
      return {
        kind,
        sinks: intOpt(v.sinks, "sinks"),
        window: intOpt(need(v.window, "window"), "window", 1)!,
        segment,
      };
    default:
      throw new KvfoldError("INVALID_ARGUMENT", `--cache ${kind} is not one of full, lococo, h2o, streaming`);
  }
}

/** One stderr line on what a compressing cache did. */
function cacheNote(session: Session): void {
  const m = session.memory();
  if (m.cacheKind === "full") return;
  note(
    `[cache ${m.cacheKind}: ${m.position} positions seen, ${m.kvSlotsUsed} slots in use, peak ${m.kvSlotsPeak} of ` +
      `${m.kvSlots} allocated (${(m.kvBytes / 1048576).toFixed(2)} MiB KV), ${m.compressions} compressions]`,
  );
}

async function openEngine(v: { threads?: string; backend?: string }): Promise<Kvfold> {
  return await Kvfold.open({
    backend: choiceOpt(v.backend, "backend", ["auto", "cpu", "cuda"] as const),
    threads: intOpt(v.threads, "threads") ?? 0,
  });
}

function gpuVisible(): boolean {
  try {
    return Deno.statSync("/dev/nvidia0").isFile === false;
  } catch {
    return false;
  }
}

// --adapter specs: "DIR" (used as given) or "GROUP=DIR" (registered under the group's name, chosen
// by the retrieved chunks' group). Returns the adapter name to force, if a plain DIR was given.
async function loadAdapters(model: Model, specs: string[] | undefined): Promise<string | undefined> {
  let forced: string | undefined;
  for (const spec of specs ?? []) {
    const eq = spec.indexOf("=");
    if (eq > 0) {
      await model.adapters.load(spec.slice(eq + 1), { name: spec.slice(0, eq) });
      continue;
    }
    if (forced !== undefined) {
      throw new KvfoldError(
        "INVALID_ARGUMENT",
        "Cannot use two plain --adapter folders; name them GROUP=DIR",
      );
    }
    forced = (await model.adapters.load(spec)).name;
  }
  return forced;
}

async function cmdInfo(args: string[]) {
  parseArgs({ args, options: COMMON });
  const info = await Kvfold.info();
  using kv = await Kvfold.open({ backend: "cpu" });
  let build: { cxx?: string; nvcc?: string; cuda_built?: boolean; cuda_archs?: string[] } = {};
  try {
    build = JSON.parse(Deno.readTextFileSync(info.libraryPath.replace(/[^/]+$/, "build-info.json")));
  } catch { /* a prebuilt library ($KVFOLD_LIB) may come without it */ }
  const lines = [
    `kvfold ${info.version} (ABI ${info.abiVersion})`,
    `library:        ${info.libraryPath}`,
    `compiler:       ${build.cxx ?? "unknown"}; nvcc: ${build.nvcc ?? "unknown"}`,
    `backends built: ${info.backendsBuilt.join(", ")}${
      build.cuda_archs?.length ? ` (cuda for ${build.cuda_archs.join(", ")})` : ""
    }`,
    `cpu:            ${kv.name}, ${kv.threads} thread(s)`,
    `gpu:            ${
      info.gpuCount > 0
        ? `${info.gpuCount} CUDA device(s)`
        : !info.backendsBuilt.includes("cuda")
        ? gpuVisible() ? "an NVIDIA device is present, but the CUDA backend is not built" : "none found"
        : `none usable (${await cudaOpenError()})`
    }`,
  ];
  if (info.backendsBuilt.includes("cuda")) {
    let blas: string;
    try {
      blas = (await Kvfold.cublasLibrary()) || "none found; kvfold's own matrix kernels run";
    } catch (e) {
      blas = `error: ${(e as Error).message}`;
    }
    lines.push(`cublas:         ${blas}`);
  }
  write(lines.join("\n") + "\n");
}

// Why a cuda engine does not open here, in the library's words ("no NVIDIA driver is installed ...").
async function cudaOpenError(): Promise<string> {
  try {
    (await Kvfold.open({ backend: "cuda" }))[Symbol.dispose]();
    return "a cuda engine opens";
  } catch (e) {
    return (e as Error).message.replace(/^Cannot open engine: (cuda backend: )?/i, "");
  }
}

async function cmdGenerate(args: string[]) {
  const { values: v } = parseArgs({
    args,
    options: {
      ...COMMON,
      model: { type: "string" },
      prompt: { type: "string" },
      "max-tokens": { type: "string" },
      temperature: { type: "string" },
      "top-p": { type: "string" },
      "top-k": { type: "string" },
      "min-p": { type: "string" },
      "repetition-penalty": { type: "string" },
      seed: { type: "string" },
      stop: { type: "string", multiple: true },
      chat: { type: "boolean" },
      system: { type: "string" },
      "context-size": { type: "string" },
      adapter: { type: "string" },
      ...CACHE,
    },
  });
  const dir = need(v.model, "model");
  const prompt = need(v.prompt, "prompt");
  using kv = await openEngine(v);
  using model = await kv.loadModel(dir, { dtype: dtypeOpt(v) });
  using interrupt = interruptSignal(); // Ctrl-C aborts within one token
  const messages = v.system !== undefined
    ? [{ role: "system", content: v.system }, { role: "user", content: prompt }]
    : [{ role: "user", content: prompt }];
  const ids = v.chat || v.system !== undefined
    ? model.tokenizer.encodeChat(messages)
    : model.encodePrompt(prompt);
  const adapter = v.adapter === undefined ? null : (await model.adapters.load(v.adapter)).name;
  using session = model.session({
    contextSize: intOpt(v["context-size"], "context-size"),
    cache: cacheFromArgs(model, v),
  });
  for await (
    const piece of session.generate({
      prompt: ids,
      adapter,
      maxTokens: intOpt(v["max-tokens"], "max-tokens") ?? 128,
      temperature: numOpt(v.temperature, "temperature"),
      topP: numOpt(v["top-p"], "top-p"),
      topK: intOpt(v["top-k"], "top-k"),
      minP: numOpt(v["min-p"], "min-p"),
      repetitionPenalty: numOpt(v["repetition-penalty"], "repetition-penalty"),
      seed: seedOpt(v.seed),
      stop: v.stop,
      signal: interrupt.signal,
    })
  ) write(piece);
  const s = session.lastStats!;
  write("\n");
  note(
    `[${s.promptTokens} prompt tokens in ${s.prefillMs.toFixed(0)} ms; ${s.generatedTokens} generated at ` +
      `${decodeRate(s.generatedTokens, s.decodeMs)}; stop: ${s.stopReason}]`,
  );
  cacheNote(session);
}

async function cmdLogits(args: string[]) {
  const { values: v } = parseArgs({
    args,
    options: {
      ...COMMON,
      model: { type: "string" },
      ids: { type: "string" },
      out: { type: "string" },
      prefix: { type: "string" },
      adapter: { type: "string" },
      ...CACHE,
    },
  });
  const dir = need(v.model, "model");
  const out = need(v.out, "out");
  // --prefix FILE.safetensors: tensor "embeddings" [K, hidden] runs first, at positions 0..K-1.
  let prefix: { data: Float32Array | Uint16Array; dtype: "f32" | "f16" | "bf16"; shape: number[] } | null =
    null;
  if (v.prefix !== undefined) {
    const t = (await readSafetensorsFile(v.prefix)).tensors.get("embeddings");
    if (!t || t.shape.length !== 2) {
      throw new KvfoldError(
        "FORMAT",
        `Cannot read --prefix ${v.prefix}: it has no 2-D tensor "embeddings" [K, hidden]`,
      );
    }
    if (t.dtype !== "F32" && t.dtype !== "F16" && t.dtype !== "BF16") {
      throw new KvfoldError(
        "UNSUPPORTED",
        `Cannot read --prefix ${v.prefix}: embeddings are ${t.dtype}; use F32, F16 or BF16`,
      );
    }
    const bytes = t.data.slice(); // aligned copy
    prefix = {
      data: t.dtype === "F32" ? new Float32Array(bytes.buffer) : new Uint16Array(bytes.buffer),
      dtype: t.dtype === "F32" ? "f32" : t.dtype === "F16" ? "f16" : "bf16",
      shape: t.shape,
    };
  }
  const ids = parseIds(need(v.ids, "ids"));
  using kv = await openEngine(v);
  using model = await kv.loadModel(dir, { dtype: dtypeOpt(v) });
  if (prefix && prefix.shape[1] !== model.info.hiddenSize) {
    throw new KvfoldError(
      "FORMAT",
      `Cannot read --prefix ${v.prefix}: "embeddings" is [${prefix.shape.join(", ")}], but the model's ` +
        `hidden size is ${model.info.hiddenSize} (want [K, ${model.info.hiddenSize}])`,
    );
  }
  const k = prefix?.shape[0] ?? 0;
  // A compressing cache prefills segment by segment; the logits of every position are kept on the way.
  const cache = cacheFromArgs(model, v);
  using session = model.session({
    contextSize: cache ? 0 : k + ids.length,
    batchSize: Math.min(k + ids.length, 256),
    cache,
  });
  if (v.adapter !== undefined) await session.setAdapter(await model.adapters.load(v.adapter));
  if (prefix) await session.prefillEmbeddings(prefix.data, { dtype: prefix.dtype, shape: prefix.shape });
  const logits = (await session.prefill(ids, { logits: "all" }))!;
  await writeSafetensorsFile(out, [{
    name: "logits",
    dtype: "F32",
    shape: [ids.length, model.info.vocabSize],
    data: logits,
  }], {
    "kvfold.model": dir,
    "kvfold.ids": ids.join(","),
    "kvfold.prefix_rows": String(k),
    ...(v.adapter !== undefined ? { "kvfold.adapter": v.adapter } : {}),
    "kvfold.cache": cache?.kind ?? "full",
  });
  note(`wrote ${out}: logits [${ids.length}, ${model.info.vocabSize}] f32`);
  cacheNote(session);
}

/** One stderr line per optimizer step of `train lora` and `train lococo`. */
function noteTrainingStep(p: TrainingProgress): void {
  note(
    `step ${p.step}/${p.totalSteps}  loss ${p.loss.toFixed(4)}  lr ${p.learningRate.toExponential(2)}  ` +
      `|g| ${p.gradNorm.toFixed(3)}  ${p.tokensPerSecond.toFixed(0)} tok/s  ETA ${p.etaSeconds.toFixed(0)} s`,
  );
}

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

async function cmdTrain(args: string[]) {
  const { values: v, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      ...COMMON,
      model: { type: "string" },
      data: { type: "string" },
      out: { type: "string" },
      rank: { type: "string" },
      alpha: { type: "string" },
      targets: { type: "string" },
      rslora: { type: "boolean" },
      steps: { type: "string" },
      accumulate: { type: "string" },
      lr: { type: "string" },
      "weight-decay": { type: "string" },
      warmup: { type: "string" },
      seed: { type: "string" },
      checkpoint: { type: "string" },
      "checkpoint-every": { type: "string" },
      slots: { type: "string" },
      segment: { type: "string" },
      kernel: { type: "string" },
      "keep-rate": { type: "string" },
      "sequence-length": { type: "string" },
      init: { type: "string" },
    },
  });
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

async function cmdMakeTestModel(args: string[]) {
  const { values: v, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      seed: { type: "string" },
      preset: { type: "string" },
      dtype: { type: "string" },
      base: { type: "string" },
      rank: { type: "string" },
      targets: { type: "string" },
      slots: { type: "string" },
      segment: { type: "string" },
      help: { type: "boolean" },
    },
  });
  const outDir = positionals[0];
  if (!outDir) {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      "Missing OUT_DIR: kvfold make-test-model OUT_DIR [--seed S] [--preset tiny|small|compressor|lora|lococo-heads]",
    );
  }
  const requested = v.preset ?? "tiny";
  if (requested === "lococo-heads") {
    // OUT_DIR is the heads FILE here (e.g. heads.safetensors).
    const base = need(v.base, "base");
    const info = await makeTestLococoHeads(outDir, {
      base,
      seed: seedOpt(v.seed) ?? 0,
      slots: intOpt(v.slots, "slots", 1),
      segment: intOpt(v.segment, "segment", 1),
    });
    note(
      `wrote LoCoCo heads for ${base} to ${outDir}: ${info.layers} layers, head_dim ${info.headDim}, ` +
        `M ${info.slots}, r ${info.keepRate}, k ${info.kernel}, B ${info.segment}, Mc ${info.fusedSlots}`,
    );
    return;
  }
  if (requested === "lora") {
    const base = need(v.base, "base");
    const names = await makeTestAdapter(outDir, {
      base,
      seed: seedOpt(v.seed) ?? 0,
      rank: intOpt(v.rank, "rank", 1),
      targetModules: v.targets?.split(",").map((t) => t.trim()).filter(Boolean),
    });
    note(`wrote a LoRA adapter for ${base} to ${outDir}: ${names.length} tensors`);
    return;
  }
  // "compressor": the tiny preset as an AutoCompressor (embed_summary.weight, summary_length 50).
  const preset = (requested === "compressor" ? "tiny" : requested) as "tiny" | "small";
  if (!(preset in TEST_MODEL_PRESETS)) {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      `Cannot make test model: unknown preset "${preset}" (tiny, small, compressor, lora, lococo-heads)`,
    );
  }
  const dtype = (v.dtype ?? "float32") as "float32" | "float16" | "bfloat16";
  if (!["float32", "float16", "bfloat16"].includes(dtype)) {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      `Cannot make test model: --dtype must be float32, float16 or bfloat16`,
    );
  }
  const info = await makeTestModel(outDir, {
    seed: seedOpt(v.seed) ?? 0,
    preset,
    dtype,
    summaryLength: requested === "compressor" ? 50 : undefined,
  });
  note(`wrote ${requested} test model to ${info.dir}: ${info.files.join(", ")}`);
}

async function cmdBench(args: string[]) {
  const { values: v, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      ...COMMON,
      model: { type: "string" },
      tokens: { type: "string" },
      repeats: { type: "string" },
    },
  });
  const kind = positionals[0];
  if (kind !== "decode" && kind !== "prefill") {
    throw new KvfoldError("INVALID_ARGUMENT", "Usage: kvfold bench decode|prefill --model DIR");
  }
  const dir = need(v.model, "model");
  using kv = await openEngine(v);
  using model = await kv.loadModel(dir, { dtype: dtypeOpt(v) });
  const bw = await kv.measureReadBandwidth();
  const tokens = intOpt(v.tokens, "tokens", 1);
  const repeats = intOpt(v.repeats, "repeats", 1);
  const r = kind === "decode"
    ? await measureDecode(model, { tokens, repeats })
    : await measurePrefill(model, { tokens, repeats });
  const gb = model.info.weightBytes / 1e9;
  write(
    [
      `model:            ${dir} (${model.info.modelType}, ${
        (model.info.params / 1e6).toFixed(1)
      }M params, ${model.info.weightDType})`,
      `engine:           ${kv.name}, ${kv.threads} thread(s)`,
      `read bandwidth:   ${bw.toFixed(2)} GB/s (measured now)`,
      `${kind}:`.padEnd(18) +
      `${r.tokensPerSecond.toFixed(1)} tok/s best, ${
        r.medianTokensPerSecond.toFixed(1)
      } median (${r.tokens} tokens x ${r.repeats})`,
      kind === "decode"
        ? `bandwidth limit:  ${(bw / gb).toFixed(1)} tok/s; reached ${
          ((100 * r.tokensPerSecond * gb) / bw).toFixed(1)
        }%`
        : `compute:          ${
          ((2 * (model.info.weightBytes / (model.info.weightDType === "f32" ? 4 : 2) -
            model.info.vocabSize * model.info.hiddenSize) *
            r.tokensPerSecond) / 1e9).toFixed(1)
        } GFLOP/s (2 x layer weights x tok/s)`,
    ].join("\n") + "\n",
  );
}

/** "4G", "512MiB", "1e9": a byte count for --max-memory (K/M/G/T are powers of 1024). */
function parseByteSize(text: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?(?:e\d+)?)\s*([kmgt]?)(?:i?b)?$/i.exec(text.trim());
  const bytes = m ? Math.floor(Number(m[1]) * 1024 ** " kmgt".indexOf((m[2] || " ").toLowerCase())) : NaN;
  if (!Number.isSafeInteger(bytes) || bytes <= 0) {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      `Cannot convert: ${flag} ${text} is not a size (e.g. 8G, 512M)`,
    );
  }
  return bytes;
}

async function cmdConvert(args: string[]) {
  const { values: v, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { "max-memory": { type: "string" } },
  });
  const [src, dst] = positionals;
  if (!src || !dst || positionals.length > 2) {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      "Usage: kvfold convert SRC DST [--max-memory SIZE] (a .bin file or a folder with PyTorch checkpoints)",
    );
  }
  const maxBytes = v["max-memory"] === undefined ? undefined : parseByteSize(v["max-memory"], "--max-memory");
  const r = await convertTorchCheckpoint(src, dst, { maxBytes });
  note(`converted ${r.tensors} tensor(s): ${r.files.join(", ")}`);
}

async function cmdCompress(args: string[]) {
  const { values: v, positionals: files } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      ...COMMON,
      compressor: { type: "string" },
      ids: { type: "string" },
      "segment-length": { type: "string" },
      "chunk-tokens": { type: "string" },
      out: { type: "string" },
      store: { type: "string" },
      group: { type: "string" },
      replace: { type: "boolean" },
    },
  });
  const dir = need(v.compressor, "compressor");
  if (v.store === undefined && v.ids === undefined) {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      "Missing --store FILE with FILES..., or --ids 1,2,3 with --out FILE",
    );
  }
  using kv = await openEngine(v);
  using compressor = await Compressor.load(kv, dir, { dtype: dtypeOpt(v) });
  const segmentLength = intOpt(v["segment-length"], "segment-length", 1);
  if (v.store === undefined) {
    // Inspection mode: exact summary vectors of given ids.
    const out = need(v.out, "out");
    const summary = await compressor.compress(parseIds(need(v.ids, "ids")), { segmentLength });
    await writeSafetensorsFile(
      out,
      [{ name: "summary", dtype: "F32", shape: [summary.rows, summary.hidden], data: summary.data }],
      { "kvfold.compressor": dir, "kvfold.tokens": String(summary.tokens) },
    );
    note(`wrote ${out}: summary [${summary.rows}, ${summary.hidden}] f32 from ${summary.tokens} tokens`);
    return;
  }
  if (files.length === 0) {
    throw new KvfoldError("INVALID_ARGUMENT", "Missing FILES to compress into the store");
  }
  using store = DocumentStore.open(v.store);
  using interrupt = interruptSignal(); // Ctrl-C aborts within one token
  const texts = await Promise.all(files.map((f) => readUserText(f, "compress")));
  const totals = texts.map((t) => compressor.model.tokenizer.encode(t).length);
  const all = totals.reduce((a, b) => a + b, 0);
  const bar = new ProgressBar(all);
  let before = 0;
  for (let i = 0; i < files.length; i++) {
    const r = await compressIntoStore(compressor, store, {
      source: files[i],
      text: texts[i],
      group: v.group,
    }, {
      chunkTokens: intOpt(v["chunk-tokens"], "chunk-tokens", 1),
      segmentLength,
      replace: v.replace,
      signal: interrupt.signal,
      onProgress: (done) => bar.update(before + done, files[i]),
    });
    before += totals[i];
    bar.update(before, files[i]);
    bar.done(
      `${files[i]}: ${r.tokens} tokens -> ${r.vectors} vectors (${(r.tokens / r.vectors).toFixed(1)}x)`,
    );
  }
}

/** A one-line progress bar on stderr: percentage, tokens/s and ETA. */
class ProgressBar {
  #total: number;
  #t0 = performance.now();
  constructor(total: number) {
    this.#total = Math.max(total, 1);
  }
  update(done: number, label: string) {
    const secs = (performance.now() - this.#t0) / 1000;
    const rate = done / Math.max(secs, 1e-9);
    const eta = rate > 0 ? (this.#total - done) / rate : 0;
    const width = 24, filled = Math.round((width * done) / this.#total);
    const line =
      `[${"#".repeat(filled)}${"-".repeat(width - filled)}] ${(100 * done / this.#total).toFixed(0)}% ` +
      `${done}/${this.#total} tokens, ${rate.toFixed(0)} tok/s, ETA ${eta.toFixed(0)} s  ${label}`;
    Deno.stderr.writeSync(enc.encode(`\r${line.slice(0, 150).padEnd(150)}`));
  }
  done(message: string) {
    Deno.stderr.writeSync(enc.encode(`\r${message.padEnd(150)}\n`));
  }
}

async function cmdAsk(args: string[]) {
  const { values: v, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      ...COMMON,
      model: { type: "string" },
      store: { type: "string" },
      k: { type: "string" },
      "max-tokens": { type: "string" },
      temperature: { type: "string" },
      seed: { type: "string" },
      adapter: { type: "string", multiple: true },
      ...CACHE,
    },
  });
  const question = positionals.join(" ");
  if (!question) {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      "Missing QUESTION: kvfold ask --model DIR --store FILE QUESTION",
    );
  }
  using store = DocumentStore.open(need(v.store, "store"), { readOnly: true });
  const chunks = store.retrieve(question, { k: intOpt(v.k, "k", 1) ?? 2 });
  for (const c of chunks) {
    note(`[retrieved ${c.source} #${c.ordinal}, score ${c.score.toFixed(3)}, ${c.vectors.rows} vectors]`);
  }
  if (chunks.length === 0) note("[nothing retrieved: answering without context]");
  using kv = await openEngine(v);
  using model = await kv.loadModel(need(v.model, "model"), { dtype: dtypeOpt(v) });
  const forced = await loadAdapters(model, v.adapter);
  using interrupt = interruptSignal(); // Ctrl-C aborts within one token
  let stats:
    | {
      prefixPositions: number;
      promptTokens: number;
      generatedTokens: number;
      decodeMs: number;
      adapter: string | null;
    }
    | undefined;
  for await (
    const piece of answerFromChunks(model, chunks, question, {
      adapter: forced,
      cache: cacheFromArgs(model, v),
      maxTokens: intOpt(v["max-tokens"], "max-tokens") ?? 128,
      temperature: numOpt(v.temperature, "temperature"),
      seed: seedOpt(v.seed),
      signal: interrupt.signal,
      onStats: (s) => (stats = s),
    })
  ) write(piece);
  write("\n");
  if (stats) {
    const tokensIn = chunks.reduce((n, c) => n + c.tokens, 0);
    note(
      `[${stats.prefixPositions} prefix positions for ${tokensIn} context tokens; ${stats.promptTokens} prompt tokens; ` +
        `adapter ${stats.adapter ?? "none"}; ` +
        `${stats.generatedTokens} generated at ${decodeRate(stats.generatedTokens, stats.decodeMs)}]`,
    );
  }
}

function cmdStore(args: string[]): Promise<void> {
  // FILE or --store FILE, as `compress` and `ask` take it.
  const { values: v, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { store: { type: "string" } },
  });
  const [sub, ...rest] = positionals;
  const file = v.store ?? rest[0];
  if (sub !== "stats" || !file || rest.length > (v.store === undefined ? 1 : 0)) {
    throw new KvfoldError("INVALID_ARGUMENT", "Usage: kvfold store stats FILE (or --store FILE)");
  }
  using store = DocumentStore.open(file, { readOnly: true });
  const s = store.stats();
  write(
    [
      `store:        ${file}`,
      `documents:    ${s.documents} (${s.chunks} chunks; groups: ${s.groups.join(", ") || "none"})`,
      `tokens in:    ${s.tokensIn}`,
      `vectors kept: ${s.vectorsKept}`,
      `ratio:        ${s.ratio.toFixed(1)}x fewer positions`,
      `bytes:        ${s.vectorBytes} in vectors, ${s.fileBytes} on disk`,
    ].join("\n") + "\n",
  );
  return Promise.resolve();
}

async function cmdBuild(args: string[]) {
  const { values: v } = parseArgs({ args, options: { force: { type: "boolean" } } });
  const path = await ensureNativeLibrary({ force: v.force });
  note(`libkvfold: ${path}`);
}

const COMMANDS: Record<string, (args: string[]) => Promise<void>> = {
  info: cmdInfo,
  build: cmdBuild,
  generate: cmdGenerate,
  logits: cmdLogits,
  "make-test-model": cmdMakeTestModel,
  compress: cmdCompress,
  ask: cmdAsk,
  store: cmdStore,
  convert: cmdConvert,
  bench: cmdBench,
  train: cmdTrain,
};

/** Runs the CLI with `args`; returns the process exit code. */
export async function main(args: string[]): Promise<number> {
  const [cmd, ...rest] = args;
  if (!cmd || cmd === "--help" || cmd === "-h" || cmd === "help" || rest.includes("--help")) {
    write(USAGE);
    return cmd ? 0 : 2;
  }
  const run = COMMANDS[cmd];
  if (!run) {
    note(`kvfold: unknown command "${cmd}"\n\n${USAGE}`);
    return 2;
  }
  try {
    await run(rest);
    return 0;
  } catch (e) {
    if (e instanceof KvfoldError) {
      note(`kvfold ${cmd}: ${e.message} [${e.code}]`);
      return e.code === "ABORTED" ? 130 : 1;
    }
    if (e instanceof TypeError && (e as { code?: string }).code?.startsWith("ERR_PARSE_ARGS")) {
      note(`kvfold ${cmd}: ${e.message}`);
      return 2;
    }
    // Anything else is a kvfold bug: one line, and the stack only on request.
    const err = e instanceof Error ? e : new Error(String(e));
    note(`kvfold ${cmd}: ${err.name}: ${err.message} [INTERNAL]`);
    if (Deno.env.get("KVFOLD_DEBUG")) note(err.stack ?? "");
    else note("kvfold: this is a bug in kvfold; run again with KVFOLD_DEBUG=1 for the stack trace");
    return 70; // EX_SOFTWARE
  }
}

/** A text file named on the command line: regular files only, at most 1 GiB (documents, data sets). */
function readUserText(path: string, action: string): Promise<string> {
  return readBoundedText(path, { action, maxBytes: 1024 ** 3 });
}

if (import.meta.main) Deno.exit(await main(Deno.args));

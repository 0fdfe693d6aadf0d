/**
 * What the fuzz suite attacks: one target per input kvfold reads. Each target names the pristine
 * files it starts from, mutates a copy of them with a seeded generator, and feeds the copy to
 * kvfold's public API. The case passes when kvfold returns correct output or refuses with a
 * `KvfoldError`; an oracle per target says what "correct" means (finite logits, the original
 * tensors, the original vectors), and an accepted input that fails it is garbage.
 *
 * @module
 */

import { join } from "node:path";
import { DocumentStore, type Kvfold, KvfoldError, type Model } from "../../mod.ts";
import { readSafetensorsFile } from "../../src/formats/safetensors.ts";
import { writeModelGguf } from "../../src/formats/gguf_write.ts";
import { makeTestAdapter, makeTestModel } from "../../testing/mod.ts";
import { makeTestLococoHeads } from "../../testing/mod.ts";
import { mutateBytes, mutateJson, mutateSafetensors, type Rng } from "./mutate.ts";
import { readZipEntries, writeZip } from "./zip_entries.ts";

/** Raised by an oracle: the input was accepted and the output is wrong. */
export class Garbage extends Error {
  override name = "Garbage";
}

/** What a target's `run` gets. */
export interface CaseContext {
  /** The engine of this worker (one CPU thread). */
  kv: Kvfold;
  /** The pristine corpus (read only). */
  corpus: string;
  /** A fresh folder holding a copy of the target's pristine files, mutated. */
  dir: string;
  /** The case's number (for unique names). */
  index: number;
  /** Per-worker memo of references (pristine model, reference outputs). */
  memo: Map<string, unknown>;
}

/** One attacked input. */
export interface FuzzTarget {
  name: string;
  /** Folder of the corpus whose files each case copies. */
  from: string;
  /** Mutates the copy in `dir`. */
  mutate(rng: Rng, dir: string): void;
  /** Feeds the copy to kvfold; throws `Garbage` when accepted output is wrong. */
  run(ctx: CaseContext): Promise<void>;
  /** Errors that count as a clean refusal besides `KvfoldError` (API misuse). */
  misuseErrors?: boolean;
}

function mutateFile(rng: Rng, path: string, hot = 0) {
  Deno.writeFileSync(path, mutateBytes(rng, Deno.readFileSync(path), hot));
}

function mutateSafetensorsFile(rng: Rng, path: string) {
  Deno.writeFileSync(path, mutateSafetensors(rng, Deno.readFileSync(path)));
}

function mutateJsonFile(rng: Rng, path: string) {
  Deno.writeTextFileSync(path, mutateJson(rng, Deno.readTextFileSync(path)));
}

/** Loads a model folder and checks it as a user would use it: finite logits, sane tokenizer. */
async function checkModel(kv: Kvfold, dir: string): Promise<void> {
  await using model = await kv.loadModel(dir);
  const vocab = model.info.vocabSize;
  const ids = model.tokenizer.encode("Hello, world 123");
  for (const id of ids) {
    if (!Number.isInteger(id) || id < 0 || id >= vocab) {
      throw new Garbage(`tokenizer gave id ${id}, vocab ${vocab}`);
    }
  }
  if (typeof model.tokenizer.decode(ids) !== "string") throw new Garbage("decode did not give a string");
  for (const id of model.eosTokenIds) {
    if (!Number.isInteger(id) || id < 0 || id >= vocab) {
      throw new Garbage(`eos id ${id} out of vocab ${vocab}`);
    }
  }
  using s = model.session({ contextSize: 32 });
  await s.prefill(ids.length > 0 ? ids.slice(0, 16) : [1]);
  finite(s.logits(), "logits");
}

function finite(xs: Float32Array, what: string) {
  for (let i = 0; i < xs.length; i++) {
    if (!Number.isFinite(xs[i])) throw new Garbage(`${what}[${i}] is ${xs[i]}`);
  }
}

/** The pristine tiny model of the corpus, loaded once per worker. */
async function baseModel(ctx: CaseContext): Promise<Model> {
  let m = ctx.memo.get("model") as Promise<Model> | undefined;
  if (!m) ctx.memo.set("model", m = ctx.kv.loadModel(join(ctx.corpus, "model")));
  return await m;
}

function modelFileTarget(name: string, file: string, from = "model"): FuzzTarget {
  const json = file.endsWith(".json");
  return {
    name,
    from,
    mutate: (rng, dir) =>
      json ? mutateJsonFile(rng, join(dir, file)) : mutateSafetensorsFile(rng, join(dir, file)),
    run: (ctx) => checkModel(ctx.kv, ctx.dir),
  };
}

/** Pickle opcodes mutated inside a zip whose CRCs are then made right again. */
function pickleMutation(rng: Rng, dir: string) {
  const path = join(dir, "pytorch_model.bin");
  const entries = readZipEntries(Deno.readFileSync(path));
  const pkl = entries.find((e) => e.name.endsWith("/data.pkl"))!;
  pkl.data = mutateBytes(rng, pkl.data);
  Deno.writeFileSync(path, writeZip(entries));
}

async function checkConverted(ctx: CaseContext, exact: boolean) {
  const out = join(ctx.dir, "out.safetensors");
  const { convertTorchCheckpoint } = await import("../../src/formats/torch_bin.ts");
  await convertTorchCheckpoint(join(ctx.dir, "pytorch_model.bin"), out);
  const got = await readSafetensorsFile(out);
  if (got.tensors.size === 0) throw new Garbage("converted zero tensors");
  if (!exact) {
    for (const name of got.tensors.keys()) {
      if (!/^[\p{L}\p{N}_.\-]+$/u.test(name)) {
        throw new Garbage(`implausible tensor name ${JSON.stringify(name)}`);
      }
    }
    return;
  }
  // A zip whose every entry is CRC-checked either converts to exactly the original or is refused.
  const want = await readSafetensorsFile(join(ctx.corpus, "torch", "expected.safetensors"));
  if (got.tensors.size !== want.tensors.size) {
    throw new Garbage(`${got.tensors.size} tensors, want ${want.tensors.size}`);
  }
  for (const [name, w] of want.tensors) {
    const g = got.tensors.get(name);
    if (!g) throw new Garbage(`tensor ${name} missing`);
    if (g.dtype !== w.dtype || g.shape.join() !== w.shape.join()) {
      throw new Garbage(`tensor ${name} changed shape or dtype`);
    }
    const a = g.data, b = w.data;
    if (a.length !== b.length || a.some((x: number, i: number) => x !== b[i])) {
      throw new Garbage(`tensor ${name} changed values`);
    }
  }
}

type StoreView = { stats: string; docs: string };

function readStore(path: string): StoreView {
  const store = DocumentStore.open(path, { readOnly: true });
  try {
    const stats = store.stats();
    for (const [k, v] of Object.entries(stats)) {
      if (typeof v === "number" && k !== "ratio" && (!Number.isSafeInteger(v) || v < 0)) {
        throw new Garbage(`stats.${k} is ${v}`);
      }
    }
    const docs: unknown[] = [];
    for (const source of ["a.txt", "b.txt", "c.txt"]) {
      const d = store.getDocument(source);
      if (!d) continue;
      const chunks = store.getChunks(d.chunkIds).map((c) => [c.chunkId, c.vectors.rows, [...c.vectors.data]]);
      docs.push([d.documentId, d.chunkIds, chunks]);
    }
    store.retrieve("alpha beta", { k: 3 });
    return { stats: JSON.stringify(stats), docs: JSON.stringify(docs) };
  } finally {
    store.close();
  }
}

/** Every target, in a fixed order. */
export const TARGETS: readonly FuzzTarget[] = [
  modelFileTarget("safetensors", "model.safetensors"),
  modelFileTarget("config", "config.json"),
  modelFileTarget("tokenizer", "tokenizer.json"),
  modelFileTarget("tokenizer-config", "tokenizer_config.json"),
  modelFileTarget("generation-config", "generation_config.json"),
  // GGUF files: the header (first 20 KB, with the tokenizer) is where mutations are aimed. Alone, the
  // tokenizer comes from the metadata (TypeScript's reader sees the file first); with a tokenizer.json
  // beside it, only the native reader does.
  ...(["gguf", "gguf-beside"] as const).map((from): FuzzTarget => ({
    name: from,
    from,
    mutate: (rng, dir) => mutateFile(rng, join(dir, "model.gguf"), 20_000),
    run: (ctx) => checkModel(ctx.kv, join(ctx.dir, "model.gguf")),
  })),
  modelFileTarget("sharded-index", "model.safetensors.index.json", "sharded"),
  modelFileTarget("shard", "model-00001-of-00002.safetensors", "sharded"),
  {
    name: "adapter-config",
    from: "adapter",
    mutate: (rng, dir) => mutateJsonFile(rng, join(dir, "adapter_config.json")),
    run: (ctx) => checkAdapter(ctx),
  },
  {
    name: "adapter-weights",
    from: "adapter",
    mutate: (rng, dir) => mutateSafetensorsFile(rng, join(dir, "adapter_model.safetensors")),
    run: (ctx) => checkAdapter(ctx),
  },
  {
    name: "lococo-heads",
    from: "heads",
    mutate: (rng, dir) => mutateSafetensorsFile(rng, join(dir, "heads.safetensors")),
    run: async (ctx) => {
      const model = await baseModel(ctx);
      using heads = model.loadLococoHeads(join(ctx.dir, "heads.safetensors"));
      using s = model.session({ cache: { kind: "lococo", heads } });
      const ids = Array.from({ length: 40 }, (_, i) => 3 + ((i * 37) % 200));
      await s.prefill(ids);
      finite(s.logits(), "logits");
    },
  },
  {
    name: "store",
    from: "store",
    mutate: (rng, dir) => {
      // Flips inside pages past the first (the header page is tested too, less often).
      const path = join(dir, "store.sqlite");
      const b = Deno.readFileSync(path);
      const n = 1 + rng.int(4);
      for (let i = 0; i < n; i++) {
        const pos = rng.next() < 0.1 ? rng.int(Math.min(4096, b.length)) : rng.int(b.length);
        b[pos] ^= 1 << rng.int(8);
      }
      Deno.writeFileSync(path, b);
    },
    run: (ctx) => {
      let want = ctx.memo.get("store") as StoreView | undefined;
      if (!want) ctx.memo.set("store", want = readStore(join(ctx.corpus, "store", "store.sqlite")));
      const got = readStore(join(ctx.dir, "store.sqlite"));
      // Vectors are checksummed: a read that returns vectors returns the original ones.
      if (got.docs !== want.docs) throw new Garbage("documents read back differ from the original");
      return Promise.resolve();
    },
  },
  {
    name: "torch-zip",
    from: "torch",
    mutate: (rng, dir) => mutateFile(rng, join(dir, "pytorch_model.bin"), 256),
    run: (ctx) => checkConverted(ctx, true),
  },
  {
    name: "torch-pickle",
    from: "torch",
    mutate: pickleMutation,
    run: (ctx) => checkConverted(ctx, false),
  },
  {
    name: "cli-args",
    from: "cli",
    mutate: mutateCommandLine,
    run: runCommandLine,
  },
  {
    name: "api-integers",
    from: "calls",
    misuseErrors: true,
    mutate: (rng, dir) => {
      const edge = [-1, 0, 1, 2 ** 31, 2 ** 32 + 5, 2 ** 32 + 16, 2 ** 53 + 1, 511, 512, 1e300, 0.5, NaN];
      Deno.writeTextFileSync(join(dir, "call.json"), JSON.stringify({ op: rng.int(5), v: rng.pick(edge) }));
    },
    run: async (ctx) => {
      const { op, v: raw } = JSON.parse(Deno.readTextFileSync(join(ctx.dir, "call.json")));
      const v = raw === null ? NaN : raw as number; // JSON has no NaN
      const model = await baseModel(ctx);
      const vocab = model.info.vocabSize;
      if (op === 0) {
        using s = model.session({ contextSize: 16 });
        await s.prefill([1, v]);
        if (!(Number.isInteger(v) && v >= 0 && v < vocab)) {
          throw new Garbage(`prefill accepted token id ${v}`);
        }
      } else if (op === 1) {
        using s = model.session({ contextSize: v });
        if (s.contextSize !== v) throw new Garbage(`contextSize ${v} became ${s.contextSize}`);
      } else if (op === 2) {
        using s = model.session({ contextSize: 16, batchSize: v });
        if (!(Number.isInteger(v) && v >= 1)) throw new Garbage(`batchSize ${v} accepted`);
        await s.prefill([1, 2, 3]);
      } else if (op === 3) {
        using s = model.session({ cache: { kind: "h2o", slots: v } });
        if (!(Number.isInteger(v) && v >= 1 && v < 2 ** 31)) throw new Garbage(`h2o slots ${v} accepted`);
        await s.prefill([1, 2, 3]);
        finite(s.logits(), "logits");
      } else {
        using s = model.session({ contextSize: 16 });
        await s.prefill([1, 2]);
        await s.decode(v);
        if (!(Number.isInteger(v) && v >= 0 && v < vocab)) throw new Garbage(`decode accepted token id ${v}`);
      }
    },
  },
];

// Command lines the CLI target starts from; $NAME stands for a corpus path filled in at run time.
const COMMAND_LINES: readonly string[][] = [
  ["generate", "--model", "$MODEL", "--prompt", "hi", "--max-tokens", "3", "--threads", "1"],
  ["generate", "--model", "$MODEL", "--prompt", "hi", "--max-tokens", "2", "--cache", "h2o", "--slots", "8"],
  ["generate", "--model", "$MODEL", "--prompt", "hi", "--max-tokens", "2", "--adapter", "$ADAPTER"],
  [
    "generate",
    "--model",
    "$MODEL",
    "--prompt",
    "hi",
    "--max-tokens",
    "2",
    "--cache",
    "lococo",
    "--heads",
    "$HEADS",
  ],
  ["logits", "--model", "$MODEL", "--ids", "1,2,3", "--threads", "1"],
  ["info", "--model", "$MODEL"],
  ["store", "stats", "$STORE"],
  ["convert", "$TORCH", "$OUT"],
];
const EDGE_ARGS = [
  "",
  "-1",
  "0",
  "2147483648",
  "9007199254740993",
  "1e3",
  "0x10",
  "abc",
  "1,,2",
  "/dev/zero",
  "/nonexistent",
  "$DIR",
  "$MODEL",
  "--xyz",
  "--backend",
  "xyz",
  "--dtype",
  "int4",
];

function mutateCommandLine(rng: Rng, dir: string) {
  const args = [...rng.pick(COMMAND_LINES)];
  for (let m = 0, n = 1 + rng.int(2); m < n; m++) {
    const i = rng.int(args.length);
    const op = rng.int(4);
    if (op === 0) args.splice(i, 1);
    else if (op === 1) args.splice(i, 0, rng.pick(EDGE_ARGS));
    else args[i] = rng.pick(EDGE_ARGS);
  }
  Deno.writeTextFileSync(join(dir, "args.json"), JSON.stringify(args));
}

async function runCommandLine(ctx: CaseContext) {
  const paths: Record<string, string> = {
    $MODEL: join(ctx.corpus, "model"),
    $ADAPTER: join(ctx.corpus, "adapter"),
    $HEADS: join(ctx.corpus, "heads", "heads.safetensors"),
    $STORE: join(ctx.corpus, "store", "store.sqlite"),
    $TORCH: join(ctx.corpus, "torch", "pytorch_model.bin"),
    $OUT: join(ctx.dir, "out.safetensors"),
    $DIR: ctx.dir,
  };
  const args = (JSON.parse(Deno.readTextFileSync(join(ctx.dir, "args.json"))) as string[])
    .map((a) => paths[a] ?? a);
  const { main } = await import("../../cli/main.ts");
  const code = await main(args);
  // 1: a KvfoldError printed as one line; 2: a usage error. Anything thrown is a stack trace.
  if (code !== 0) {
    throw new KvfoldError("INVALID_ARGUMENT", `Cannot run kvfold ${args.join(" ")}: exit ${code}`);
  }
}

async function checkAdapter(ctx: CaseContext) {
  const model = await baseModel(ctx);
  const adapter = await model.adapters.load(ctx.dir, { name: `case-${ctx.index}` });
  try {
    using s = model.session({ contextSize: 16 });
    await s.prefill([1, 5, 9, 13], { adapter });
    finite(s.logits(), "logits");
  } finally {
    adapter.dispose();
  }
}

/** Writes the pristine corpus every target starts from into `dir`. */
export async function makeCorpus(dir: string, torchFixture: string): Promise<void> {
  const model = join(dir, "model");
  await makeTestModel(model, { preset: "tiny", seed: 1 });
  await makeTestModel(join(dir, "sharded"), { preset: "tiny", seed: 2, shards: 2 });
  Deno.mkdirSync(join(dir, "gguf"));
  await writeModelGguf(model, join(dir, "gguf", "model.gguf"), { dtype: "q8_0" });
  Deno.mkdirSync(join(dir, "gguf-beside"));
  await writeModelGguf(model, join(dir, "gguf-beside", "model.gguf"), { dtype: "f16" });
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) {
    Deno.copyFileSync(join(model, f), join(dir, "gguf-beside", f));
  }
  await makeTestAdapter(join(dir, "adapter"), { base: model, rank: 4, seed: 3 });
  Deno.mkdirSync(join(dir, "heads"));
  await makeTestLococoHeads(join(dir, "heads", "heads.safetensors"), {
    base: model,
    slots: 16,
    segment: 8,
    kernel: 3,
  });
  Deno.mkdirSync(join(dir, "torch"));
  for (const f of ["pytorch_model.bin", "expected.safetensors"]) {
    Deno.copyFileSync(join(torchFixture, f), join(dir, "torch", f));
  }
  Deno.mkdirSync(join(dir, "cli"));
  Deno.writeTextFileSync(join(dir, "cli", "args.json"), JSON.stringify(COMMAND_LINES[0]));
  Deno.mkdirSync(join(dir, "calls"));
  Deno.writeTextFileSync(join(dir, "calls", "call.json"), JSON.stringify({ op: 0, v: 5 }));
  Deno.mkdirSync(join(dir, "store"));
  const store = DocumentStore.open(join(dir, "store", "store.sqlite"));
  try {
    let x = 7;
    const vec = (rows: number) => ({
      rows,
      hidden: 64,
      data: Float32Array.from(
        { length: rows * 64 },
        () => ((x = (x * 1103515245 + 12345) >>> 0) / 2 ** 32) - 0.5,
      ),
    });
    const words = ["alpha", "beta", "gamma", "delta", "epsilon"];
    ["a.txt", "b.txt", "c.txt"].forEach((source, d) => {
      const chunks = Array.from({ length: 3 }, (_, c) => ({
        text: `${words[(d + c) % 5]} ${words[(d * 2 + c) % 5]} chunk ${c} of ${source}`,
        tokens: 40 + c,
        vectors: vec(4),
      }));
      store.addDocument({ source, group: d % 2 ? "odd" : "even", metadata: { d }, chunks });
    });
  } finally {
    store.close();
  }
}

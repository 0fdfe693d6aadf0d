// Adapter composition (issue 18, "Questions that span document groups"), two measurements:
//
// 1. Decode speed on the CPU with 0, 1, 2 and 4 composed adapters (rank 8 on all seven
//    projections, weights summing to 1), on a test-model preset (default `small`, the demo's
//    shape, bf16): one session, best of `--repeats` runs of `--steps` decode steps each.
// 2. Exact match on cross-group questions, best-group adapter vs composed adapters vs no adapter:
//      deno run -A bench/adapter_compose.ts --model DIR --store FILE --questions FILE \
//        --adapter GROUP=DIR [--adapter GROUP=DIR ...] [--k 2] [--max-tokens 16]
//    `--questions` is JSON lines of { question, answer, groups?: string[] } (a row whose `groups`
//    has two or more entries is a cross-group question; exact match is also reported over those).
//    The store holds the documents compressed with their groups (`kvfold compress`). Without
//    `--model` the harness runs on the random test compressor with two random adapters and a tiny
//    two-group corpus, so it is exercised; its exact match is meaningless (random weights).
//
//   deno run -A bench/adapter_compose.ts [--threads 2] [--preset small] [--steps 32]
//     [--out bench/results/adapter_compose.json]
import { parseArgs } from "node:util";
import { join } from "node:path";
import {
  type AdapterMode,
  answerFromChunks,
  type AnswerStats,
  compressIntoStore,
  Compressor,
  DocumentStore,
  Kvfold,
  type Model,
} from "../mod.ts";
import { makeTestAdapter, makeTestModel, TEST_MODEL_PRESETS } from "../testing/mod.ts";
import { readBoundedText } from "../src/_bounded_read.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    threads: { type: "string", default: "2" },
    preset: { type: "string", default: "small" },
    rank: { type: "string", default: "8" },
    steps: { type: "string", default: "32" },
    repeats: { type: "string", default: "3" },
    model: { type: "string" },
    store: { type: "string" },
    questions: { type: "string" },
    adapter: { type: "string", multiple: true },
    k: { type: "string", default: "2" },
    "max-tokens": { type: "string", default: "16" },
    "skip-speed": { type: "boolean", default: false },
    out: { type: "string", default: new URL("./results/adapter_compose.json", import.meta.url).pathname },
  },
});
const preset = v.preset as keyof typeof TEST_MODEL_PRESETS;
if (!(preset in TEST_MODEL_PRESETS)) throw new RangeError(`--preset ${v.preset} is not tiny or small`);
const rank = Number(v.rank), steps = Number(v.steps), repeats = Number(v.repeats);
const root = new URL("../.kvfold/", import.meta.url).pathname;
const cpu = (await Deno.readTextFile("/proc/cpuinfo").catch(() => "")).match(/model name\s*:\s*(.*)/)?.[1] ??
  "unknown";
await using kv = await Kvfold.open({ backend: "cpu", threads: Number(v.threads) });

// ---- 1. decode tok/s with 0, 1, 2, 4 composed adapters ----
async function decodeSpeed() {
  const base = `${root}models/${preset}`;
  try {
    Deno.statSync(`${base}/model.safetensors`);
  } catch {
    console.error(`writing the ${preset} preset (bf16) to ${base} ...`);
    await makeTestModel(base, { preset, seed: 1, dtype: "bfloat16" });
  }
  await using model = await kv.loadModel(base);
  const names: string[] = [];
  for (let i = 0; i < 4; i++) {
    const dir = `${root}adapters/${preset}-r${rank}-${i}`;
    await makeTestAdapter(dir, { base, seed: 100 + i, rank, std: 0.02 });
    names.push((await model.adapters.load(dir, { name: `c${i}` })).name);
  }
  const prompt = Array.from({ length: 16 }, (_, i) => 3 + ((i * 7919) % (model.info.vocabSize - 3)));
  using s = model.session({ contextSize: prompt.length + steps + 4 });
  await s.prefill(prompt);
  const rate = async (n: number) => {
    await s.setAdapters(names.slice(0, n).map((adapter) => ({ adapter, weight: 1 / n })));
    s.truncate(prompt.length);
    const t0 = performance.now();
    for (let step = 0; step < steps; step++) await s.decode(3 + step);
    return steps / ((performance.now() - t0) / 1000);
  };
  const counts = [0, 1, 2, 4];
  const best = new Map(counts.map((n) => [n, 0]));
  await rate(4); // warm-up
  for (let r = 0; r < repeats; r++) { // interleaved, best of each
    for (const n of counts) best.set(n, Math.max(best.get(n)!, await rate(n)));
  }
  const rows = counts.map((n) => ({
    adapters: n,
    tokPerS: best.get(n)!,
    vsBase: best.get(n)! / best.get(0)!,
  }));
  console.log(
    `\ndecode with composed adapters — ${preset} preset, ${model.info.weightDType}, rank ${rank} on all 7 projections`,
  );
  console.log(
    `machine: ${cpu}, ${kv.name}, ${kv.threads} threads; best of ${repeats} runs of ${steps} steps\n`,
  );
  console.log("| adapters composed | decode tok/s | vs base |");
  console.log("| --- | --- | --- |");
  for (const r of rows) console.log(`| ${r.adapters} | ${r.tokPerS.toFixed(1)} | ${r.vsBase.toFixed(2)}x |`);
  return {
    preset: TEST_MODEL_PRESETS[preset],
    weightDType: model.info.weightDType,
    rank,
    steps,
    repeats,
    rows,
  };
}

// ---- 2. exact match: best-group vs composed vs no adapter ----
interface QuestionRow {
  question: string;
  answer: string;
  groups?: string[];
}

const normal = (s: string) => s.trim().split("\n")[0].trim().toLowerCase().replace(/[.!?]+$/, "");

async function answerOnce(model: Model, store: DocumentStore, q: QuestionRow, mode: AdapterMode, k: number) {
  const chunks = store.retrieve(q.question, { k });
  let text = "";
  let stats: AnswerStats | undefined;
  for await (
    const p of answerFromChunks(model, chunks, q.question, {
      adapterMode: mode,
      temperature: 0,
      maxTokens: Number(v["max-tokens"]),
      stop: ["\n"],
      onStats: (s) => (stats = s),
    })
  ) text += p;
  const groups = new Set(chunks.map((c) => c.group).filter((g) => g));
  return {
    exact: normal(text) === normal(q.answer),
    spans: groups.size > 1,
    adapter: stats?.adapter ?? null,
  };
}

async function exactMatch(model: Model, store: DocumentStore, questions: QuestionRow[], k: number) {
  const modes: AdapterMode[] = ["none", "best", "compose"];
  const tally = Object.fromEntries(modes.map((m) => [m, { all: 0, cross: 0 }])) as Record<
    AdapterMode,
    { all: number; cross: number }
  >;
  let crossQuestions = 0, spanningRetrievals = 0;
  const examples: unknown[] = [];
  for (const q of questions) {
    const cross = (q.groups?.length ?? 0) > 1;
    if (cross) crossQuestions++;
    for (const mode of modes) {
      const r = await answerOnce(model, store, q, mode, k);
      if (mode === "compose" && r.spans) spanningRetrievals++;
      if (mode === "compose" && examples.length < 3) {
        examples.push({ question: q.question, adapter: r.adapter });
      }
      if (r.exact) {
        tally[mode].all++;
        if (cross) tally[mode].cross++;
      }
    }
  }
  const rows = modes.map((mode) => ({
    mode,
    exactMatch: tally[mode].all / questions.length,
    crossGroupExactMatch: crossQuestions ? tally[mode].cross / crossQuestions : null,
  }));
  console.log(
    `\nexact match over ${questions.length} questions (${crossQuestions} cross-group; ` +
      `${spanningRetrievals} retrievals spanning several groups), k = ${k}\n`,
  );
  console.log("| adapters | exact match | cross-group exact match |");
  console.log("| --- | --- | --- |");
  const label = { none: "no adapter", best: "best group's adapter", compose: "composed adapters" };
  for (const r of rows) {
    const cross = r.crossGroupExactMatch === null ? "-" : r.crossGroupExactMatch.toFixed(3);
    console.log(`| ${label[r.mode]} | ${r.exactMatch.toFixed(3)} | ${cross} |`);
  }
  return { questions: questions.length, crossQuestions, spanningRetrievals, k, rows, examples };
}

async function exactMatchGiven() {
  const model = await kv.loadModel(v.model!);
  for (const spec of v.adapter ?? []) {
    const eq = spec.indexOf("=");
    if (eq < 1) throw new TypeError(`--adapter ${spec} is not GROUP=DIR`);
    await model.adapters.load(spec.slice(eq + 1), { name: spec.slice(0, eq) });
  }
  using store = DocumentStore.open(v.store!, { readOnly: true });
  const text = await readBoundedText(v.questions!, { action: "read questions", maxBytes: 64 * 2 ** 20 });
  const questions = text.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l) as QuestionRow);
  return {
    source: { model: v.model, store: v.store, questions: v.questions },
    ...await exactMatch(model, store, questions, Number(v.k)),
  };
}

// The harness on random weights: the test compressor, two random adapters, a two-group corpus.
async function exactMatchSelfTest() {
  const dir = await Deno.makeTempDir({ prefix: "kvfold-compose-bench-" });
  try {
    await makeTestModel(join(dir, "model"), { summaryLength: 4, seed: 21 });
    using compressor = await Compressor.load(kv, join(dir, "model"));
    const model = compressor.model;
    for (const [group, seed] of [["harbour", 3], ["farm", 4]] as const) {
      await makeTestAdapter(join(dir, group), { base: model.dir, rank: 4, seed });
      await model.adapters.load(join(dir, group), { name: group });
    }
    using store = DocumentStore.open(join(dir, "kb.sqlite"));
    const docs = [
      {
        source: "ships.txt",
        group: "harbour",
        text: "The ship Aurora left the harbour at dawn with timber. ".repeat(4),
      },
      {
        source: "bees.txt",
        group: "farm",
        text: "The bees of the orchard sold honey at the harbour market. ".repeat(4),
      },
    ];
    for (const d of docs) {
      await compressIntoStore(compressor, store, d, { chunkTokens: 64, segmentLength: 32 });
    }
    const questions: QuestionRow[] = [
      {
        question: "Which ship took honey from the orchard to the harbour?",
        answer: "Aurora",
        groups: ["harbour", "farm"],
      },
      { question: "What did the harbour market sell at dawn?", answer: "honey", groups: ["harbour", "farm"] },
      { question: "What did the ship Aurora carry?", answer: "timber", groups: ["harbour"] },
    ];
    return {
      source: "self-test: random test compressor and adapters (exact match is meaningless)",
      ...await exactMatch(model, store, questions, Number(v.k)),
    };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const speed = v["skip-speed"] ? null : await decodeSpeed();
const match = v.model ? await exactMatchGiven() : await exactMatchSelfTest();
const result = { machine: cpu, engine: kv.name, threads: kv.threads, decode: speed, exactMatch: match };
await Deno.mkdir(new URL(".", `file://${v.out}`).pathname, { recursive: true });
await Deno.writeTextFile(v.out!, JSON.stringify(result, null, 2) + "\n");
console.log(`\nwrote ${v.out}`);

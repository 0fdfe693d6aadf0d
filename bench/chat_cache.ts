// Cache reuse on the CPU. (1) Ten questions over the same compressed document: time to first token
// of question 1 vs questions 2..10 with a PrefixCache, and every question without one. (2) A 10-turn
// chat: tokens and milliseconds prefilled per turn by a ChatSession vs recomputing the whole
// conversation in a fresh session each turn.
//
//   deno run -A bench/chat_cache.ts [--rows 500] [--threads 2] [--reply 16] [--out bench/results/chat_cache.json]
//
// The model is a random test model of tests/_fixtures.ts's WIDE_MODEL shape (8 layers, hidden 256)
// and the document random summary vectors (500 rows: a 16k-token document at 1536 -> 50). Its
// answers are noise; the positions and timings are what this measures.
import { parseArgs } from "node:util";
import {
  answerFromChunks,
  type AnswerOptions,
  type ChatMessage,
  Kvfold,
  type Model,
  PrefixCache,
} from "../mod.ts";
import { makeTestModel } from "../testing/mod.ts";
import { WIDE_MODEL } from "../tests/_fixtures.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    rows: { type: "string", default: "500" },
    threads: { type: "string", default: "2" },
    reply: { type: "string", default: "16" },
    out: { type: "string", default: new URL("./results/chat_cache.json", import.meta.url).pathname },
  },
});
const ROWS = Number(v.rows), REPLY = Number(v.reply);
const dir = await Deno.makeTempDir({ prefix: "kvfold-bench-chat-" });
await makeTestModel(dir, { preset: "tiny", ...WIDE_MODEL, maxPositionEmbeddings: 4096 });
await using kv = await Kvfold.open({ backend: "cpu", threads: Number(v.threads) });
using model = await kv.loadModel(dir);
const H = model.info.hiddenSize;
let x = 7;
const data = Float32Array.from({ length: ROWS * H }, () => {
  x = (Math.imul(x, 1103515245) + 12345) >>> 0;
  return ((x >>> 8) / 2 ** 24 - 0.5) * 0.2;
});
const context = [{ vectors: { rows: ROWS, hidden: H, data } }];
const QUESTIONS = [
  "What does the report conclude about the harbour?",
  "Which ship left at dawn and what did it carry?",
  "Who sold honey at the market?",
  "How many ships are listed in the log?",
  "What happened to the orchard in the spring?",
  "Which captain signed the manifest?",
  "When did the storm reach the coast?",
  "What was the price of timber that year?",
  "Who repaired the lighthouse?",
  "Why was the harbour closed in winter?",
];

/** Milliseconds to the first token (maxTokens 1: prefill + one sample) and the counters. */
async function firstToken(m: Model, question: string, options: AnswerOptions) {
  const t0 = performance.now();
  const stream = answerFromChunks(m, context, question, {
    temperature: 0,
    maxTokens: 1,
    ignoreEos: true,
    ...options,
  });
  let r = await stream.next();
  while (!r.done) r = await stream.next();
  return { ms: performance.now() - t0, prefilled: r.value.promptTokens, reused: r.value.reusedPositions };
}

// Warm up once (thread pool, page cache) outside the numbers.
await firstToken(model, "warm up", {});

type QaRow = Awaited<ReturnType<typeof firstToken>>;
const qa = { cached: [] as QaRow[], uncached: [] as QaRow[] };
{
  using prefixes = new PrefixCache(model);
  for (const q of QUESTIONS) qa.cached.push(await firstToken(model, q, { prefixCache: prefixes }));
}
for (const q of QUESTIONS) qa.uncached.push(await firstToken(model, q, {}));

const mean = (a: number[]) => a.reduce((s, y) => s + y, 0) / a.length;
console.log(`\nQuestions over one compressed document (${ROWS} vectors), time to first token, ms:`);
console.log("question | prefix cache: ms  reused  prefilled | no cache: ms  prefilled");
for (let i = 0; i < QUESTIONS.length; i++) {
  const c = qa.cached[i], u = qa.uncached[i];
  console.log(
    `${String(i + 1).padStart(8)} | ${c.ms.toFixed(1).padStart(16)} ${String(c.reused).padStart(7)} ${
      String(c.prefilled).padStart(10)
    } | ${u.ms.toFixed(1).padStart(12)} ${String(ROWS + u.prefilled).padStart(10)}`,
  );
}
const q1 = qa.cached[0].ms, q2to10 = mean(qa.cached.slice(1).map((r) => r.ms));
console.log(
  `question 1: ${q1.toFixed(1)} ms; questions 2..10: ${q2to10.toFixed(1)} ms mean (${
    (q1 / q2to10).toFixed(1)
  }x)`,
);

// (2) A 10-turn chat, no document.
const turns: { reuse: { ms: number; prefilled: number }; recompute: { ms: number; prefilled: number } }[] =
  [];
{
  using chat = model.chat({ system: "You answer briefly.", contextSize: 4096 });
  const sampling = { temperature: 0, maxTokens: REPLY, ignoreEos: true } as const;
  for (const q of QUESTIONS) {
    const conversation: ChatMessage[] = [...chat.messages, { role: "user", content: q }];
    for await (const _ of chat.send(q, sampling));
    const s = chat.lastStats!;
    const fresh = answerFromChunks(model, [], conversation, sampling);
    let r = await fresh.next();
    while (!r.done) r = await fresh.next();
    turns.push({
      reuse: { ms: s.prefillMs, prefilled: s.promptTokens },
      recompute: { ms: r.value.prefillMs, prefilled: r.value.promptTokens },
    });
  }
}
console.log(`\n10-turn chat (${REPLY}-token replies), prefill per turn:`);
console.log("turn | ChatSession: tokens  ms | recompute: tokens  ms");
for (const [i, t] of turns.entries()) {
  console.log(
    `${String(i + 1).padStart(4)} | ${String(t.reuse.prefilled).padStart(19)} ${
      t.reuse.ms.toFixed(1).padStart(4)
    } | ${String(t.recompute.prefilled).padStart(17)} ${t.recompute.ms.toFixed(1).padStart(4)}`,
  );
}
const sum = (f: (t: typeof turns[number]) => number) => turns.reduce((s, t) => s + f(t), 0);
console.log(
  `total: ${sum((t) => t.reuse.prefilled)} tokens ${sum((t) => t.reuse.ms).toFixed(1)} ms reused vs ` +
    `${sum((t) => t.recompute.prefilled)} tokens ${sum((t) => t.recompute.ms).toFixed(1)} ms recomputed`,
);

const result = {
  date: new Date().toISOString(),
  model: { shape: "WIDE_MODEL (tests/_fixtures.ts)", params: model.info.params },
  threads: Number(v.threads),
  documentVectors: ROWS,
  questions: { withPrefixCache: qa.cached, withoutCache: qa.uncached, q1Ms: q1, q2to10MeanMs: q2to10 },
  chat: { replyTokens: REPLY, turns },
};
await Deno.writeTextFile(v.out, JSON.stringify(result, null, 2) + "\n");
console.log(`\nwrote ${v.out}`);
await Deno.remove(dir, { recursive: true });

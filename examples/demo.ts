// `deno task demo`: kvfold's main job on a fresh machine, end to end, with a model kvfold trained.
//
//  1. loads the shipped demo model (demo/trained: a 4-layer reader that is also its own
//     AutoCompressor, one LoRA per document group), trained from zero by demo/recipe.ts;
//  2. draws held-out documents from a seed the recipe never trained on (`--seed` for others) and
//     compresses them into a temporary SQLite store in chunks of at most 256 tokens cut at sentence
//     ends, 8 summary vectors each;
//  3. answers every question through the LangChain adapter: KvfoldRetriever (BM25, k = 1) hands
//     the best chunk to ChatKvfold, which places its vectors before the question and decodes with
//     the chunk's group adapter, greedy;
//  4. prints each expected answer beside kvfold's, then exact match over all, the positions used
//     against the full text's, KV memory and speed.
//
//   deno task demo [--trained demo/trained] [--seed 90210] [--documents 4] [--questions 64]
import { parseArgs } from "node:util";
import { join } from "node:path";
import { DocumentStore, Kvfold, KvfoldError } from "../mod.ts";
import { ChatKvfold, type KvfoldResponseMetadata, KvfoldRetriever } from "../integrations/langchain/mod.ts";
import { exactMatch, generateDemoCorpus } from "../demo/mod.ts";
import { answerTokenBudget } from "../demo/evaluate.ts";
import { formatBytes } from "../demo/evaluate_table.ts";
import {
  compressDemoDocuments,
  DEFAULT_TRAINED_DIR,
  DEMO_RECIPE_COMMAND,
  loadTrainedDemo,
} from "../demo/trained.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    trained: { type: "string", default: DEFAULT_TRAINED_DIR },
    seed: { type: "string", default: "90210" },
    documents: { type: "string", default: "4" },
    questions: { type: "string", default: "64" },
  },
});
const count = (name: string, s: string | undefined) => {
  const n = Number(s);
  if (!Number.isSafeInteger(n) || n < 1) {
    console.error(`--${name} ${s} is not a positive integer`);
    Deno.exit(2);
  }
  return n;
};
const seed = count("seed", v.seed), documents = count("documents", v.documents);
const out = (s: string) => Deno.stdout.writeSync(new TextEncoder().encode(s));
const progress = (s: string) => Deno.stderr.writeSync(new TextEncoder().encode(s));

const explicit = Deno.args.some((a) => a === "--trained" || a.startsWith("--trained="));
if (!explicit && !(await Deno.stat(`${v.trained}/model/model.safetensors`).then(() => true, () => false))) {
  // No trained model in this checkout yet: run the end-to-end job on random weights instead, and say so.
  console.error(
    `note: ${v.trained} is not in this checkout (train it with \`${DEMO_RECIPE_COMMAND}\`); ` +
      "running the pipeline on a random model, whose answers are noise",
  );
  await import("./demo_random.ts");
  Deno.exit(0);
}
await using kv = await Kvfold.open();
let loaded;
try {
  loaded = await loadTrainedDemo(kv, v.trained!);
} catch (e) {
  if (!(e instanceof KvfoldError)) throw e;
  console.error(e.message);
  Deno.exit(1);
}
using trained = loaded;
const { model } = trained;
console.log(
  `model: ${v.trained} (${(model.info.params / 1e6).toFixed(2)}M params, ${model.info.layers} layers, ` +
    `adapters: ${trained.groups.join(", ")}), ${kv.name}`,
);

// Held-out documents: a seed the recipe never trained on, so nothing here was seen in training.
const corpus = generateDemoCorpus({ seed, documents });
const questions = corpus.questions.slice(0, count("questions", v.questions));
const tmp = await Deno.makeTempDir({ prefix: "kvfold-demo-" });
try {
  using store = DocumentStore.open(join(tmp, "heldout.sqlite"));
  const t0 = performance.now();
  await compressDemoDocuments(trained.compressor, store, corpus.documents, {
    onProgress: (done, total, file) => {
      const rate = done / Math.max((performance.now() - t0) / 1000, 1e-3);
      const bar = "#".repeat(Math.round((24 * done) / total)).padEnd(24, "-");
      progress(`\r[${bar}] ${file} ${done}/${total} tokens, ${rate.toFixed(0)} tok/s  `);
    },
  });
  const stats = store.stats();
  progress("\r".padEnd(90) + "\r");
  console.log(
    `held-out corpus (seed ${seed}): ${stats.documents} documents, ${stats.tokensIn} tokens -> ` +
      `${stats.vectorsKept} summary vectors (${stats.ratio.toFixed(1)}x fewer positions) in ` +
      `${((performance.now() - t0) / 1000).toFixed(1)} s\n`,
  );

  const retriever = new KvfoldRetriever({ store, k: 1 });
  const chat = new ChatKvfold({
    model,
    store,
    temperature: 0,
    maxTokens: answerTokenBudget(model, questions.map((q) => q.answer)),
  });
  const docTokens = new Map(corpus.documents.map((d) => [d.file, d.tokens.length]));
  const { layers, kvHeads, headDim } = model.info;
  const bytesPerPosition = 2 * layers * kvHeads * headDim * 4; // keys and values, every layer, f32
  let right = 0, used = 0, full = 0, generated = 0, decodeMs = 0, prefillMs = 0;
  const width = Math.max(...questions.map((q) => q.question.length));
  for (const [i, q] of questions.entries()) {
    const docs = await retriever.invoke(q.question);
    let answer = "";
    let meta: KvfoldResponseMetadata | undefined;
    for await (const chunk of await chat.stream(q.question, { documents: docs })) {
      answer += chunk.text;
      meta = (chunk.response_metadata.kvfold as KvfoldResponseMetadata | undefined) ?? meta;
    }
    const ok = exactMatch(answer, q.answer);
    right += +ok;
    // Positions held when the answer ends: vectors, prompt and answer (the last token is never fed).
    const tail = meta!.promptTokens + Math.max(meta!.generatedTokens - 1, 0);
    used += meta!.prefixPositions + tail;
    full += docTokens.get(q.document)! + tail;
    generated += meta!.generatedTokens;
    decodeMs += meta!.decodeMs;
    prefillMs += meta!.prefillMs;
    const from = docs.map((d) => `${d.metadata.source}#${d.metadata.ordinal}`).join(", ");
    out(
      `${String(i + 1).padStart(3)}. ${q.question.padEnd(width)}  expected: ${q.answer.padEnd(16)} kvfold: ` +
        `${answer.trim().padEnd(16)} ${ok ? "✓" : "✗"}  (${from})\n`,
    );
  }
  const n = questions.length;
  console.log(
    `\nexact match: ${right}/${n} = ${(right / n).toFixed(3)} (greedy, held-out seed ${seed})\n` +
      `positions per answer: ${(used / n).toFixed(0)} (summary vectors + question + answer) vs ` +
      `${(full / n).toFixed(0)} with the full document text (${(full / used).toFixed(1)}x fewer)\n` +
      `KV memory per answer: ${formatBytes((used / n) * bytesPerPosition)} vs ${
        formatBytes((full / n) * bytesPerPosition)
      } with the full text\n` +
      `speed: question prefill after the vectors ${(prefillMs / n).toFixed(1)} ms on average, decode ${
        (generated / (decodeMs / 1000)).toFixed(0)
      } tok/s`,
  );
} finally {
  await Deno.remove(tmp, { recursive: true }).catch(() => {});
}

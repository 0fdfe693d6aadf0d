// The demo as it ran before a trained model shipped (random weights): `deno task demo` falls back to it
// while `demo/trained/` is missing from the checkout. kvfold's main job end to end:
//
//  1. makes the `small` test model as an AutoCompressor (134M parameters, random weights) and a
//     synthetic set of long documents, if they are not there yet (under .kvfold/demo);
//  2. compresses the documents into one SQLite store, with a progress bar;
//  3. answers questions through the LangChain adapter (retriever → chat model), the summary
//     vectors placed before each question as input embeddings;
//  4. prints the positions used, the compression ratio, KV memory and speed.
//
// The model's weights are random, so its answers are noise; the retrieval, the compression ratio,
// the memory and the speed are real. Point MODEL_DIR at a converted AutoCompressor for real answers.
import { compressIntoStore, Compressor, DocumentStore, Kvfold } from "../mod.ts";
import { ChatKvfold, type KvfoldResponseMetadata, KvfoldRetriever } from "../integrations/langchain/mod.ts";
import { makeTestModel } from "../testing/mod.ts";

const root = new URL("../.kvfold/", import.meta.url).pathname;
const modelDir = Deno.env.get("MODEL_DIR") ?? `${root}models/small-compressor`;
const out = (s: string) => Deno.stdout.writeSync(new TextEncoder().encode(s));

if (!Deno.env.get("MODEL_DIR")) {
  try {
    Deno.statSync(`${modelDir}/model.safetensors`);
  } catch {
    console.error(`making the random small AutoCompressor in ${modelDir} ...`);
    await makeTestModel(modelDir, { preset: "small", seed: 1, dtype: "bfloat16", summaryLength: 50 });
  }
}

// A synthetic document set: each document states a few facts among plenty of filler.
const TOPICS = [
  {
    source: "harbour-log.txt",
    fact: "The ship Aurora left the harbour at dawn carrying timber to Northport.",
  },
  {
    source: "orchard-report.txt",
    fact: "Honey from the orchard hives sold at the June market for nine crowns.",
  },
  {
    source: "audit-notes.txt",
    fact: "The audit found that the east warehouse had lost forty crates of salt.",
  },
  { source: "weather-diary.txt", fact: "A storm in October flooded the lower mill and stopped the wheel." },
];
const FILLER = "Clerks copied the ledgers, the bell rang at noon, and carts crossed the square. ";
const documents = TOPICS.map((t, i) => ({
  source: t.source,
  group: "demo",
  text: Array.from({ length: 6 }, (_, k) => (k % 4 === i % 4 ? t.fact + " " : "") + FILLER.repeat(12)).join(
    "\n",
  ),
}));

await using kv = await Kvfold.open();
using compressor = await Compressor.load(kv, modelDir);
const model = compressor.model; // the LLoCO decoder is the compressor checkpoint (+ a group LoRA)
await Deno.mkdir(`${root}demo`, { recursive: true });
using store = DocumentStore.open(`${root}demo/kb.sqlite`);
console.log(`model: ${(model.info.params / 1e6).toFixed(0)}M params, ${model.info.weightDType}, ${kv.name}`);

for (const doc of documents) {
  if (store.getDocument(doc.source)) continue; // compressed by an earlier run
  const t0 = performance.now();
  const r = await compressIntoStore(compressor, store, doc, {
    chunkTokens: 1536,
    onProgress: (done, total) => {
      const rate = done / Math.max((performance.now() - t0) / 1000, 1e-3);
      const bar = "#".repeat(Math.round((24 * done) / total)).padEnd(24, "-");
      Deno.stderr.writeSync(
        new TextEncoder().encode(
          `\r[${bar}] ${doc.source} ${done}/${total} tokens, ${rate.toFixed(0)} tok/s, ETA ${
            ((total - done) / rate).toFixed(0)
          } s  `,
        ),
      );
    },
  });
  console.error(
    `\r${doc.source}: ${r.tokens} tokens -> ${r.vectors} vectors in ${
      ((performance.now() - t0) / 1000).toFixed(1)
    } s`.padEnd(90),
  );
}
const stats = store.stats();
console.log(
  `store: ${stats.documents} documents, ${stats.tokensIn} tokens -> ${stats.vectorsKept} vectors (${
    stats.ratio.toFixed(1)
  }x fewer positions), ${(stats.fileBytes / 2 ** 20).toFixed(1)} MiB on disk\n`,
);

const retriever = new KvfoldRetriever({ store, k: 1 });
const chat = new ChatKvfold({ model, store, maxTokens: 24, temperature: 0 });
// Per position, a full-cache session holds keys and values of every layer in f32.
const kvBytesPerPosition = 2 * model.info.layers * model.info.kvHeads * model.info.headDim * 4;
for (const question of ["Which ship left the harbour at dawn?", "What did the audit find?"]) {
  const docs = await retriever.invoke(question);
  out(`Q: ${question}\n   retrieved: ${docs.map((d) => d.metadata.source).join(", ")}\nA: `);
  let meta: KvfoldResponseMetadata | undefined;
  for await (const chunk of await chat.stream(question, { documents: docs })) {
    out(chunk.text);
    meta = (chunk.response_metadata.kvfold as KvfoldResponseMetadata | undefined) ?? meta;
  }
  const tokensIn = docs.reduce((n, d) => n + Number(d.metadata.kvfold.tokens), 0);
  const positions = meta!.prefixPositions + meta!.promptTokens + meta!.generatedTokens;
  const fullPositions = tokensIn + meta!.promptTokens + meta!.generatedTokens;
  console.log(
    `\n   positions: ${meta!.prefixPositions} summary vectors for ${tokensIn} context tokens (${
      (tokensIn / meta!.prefixPositions).toFixed(1)
    }x); ` +
      `KV ${(positions * kvBytesPerPosition / 2 ** 20).toFixed(1)} MiB vs ${
        (fullPositions * kvBytesPerPosition / 2 ** 20).toFixed(1)
      } MiB with the full text; ` +
      `first token after ${meta!.prefillMs.toFixed(0)} ms, ${
        ((meta!.generatedTokens - 1) / (meta!.decodeMs / 1000)).toFixed(1)
      } tok/s\n`,
  );
}
console.log("(random weights: the answers are noise; retrieval, positions, memory and speed are real)");

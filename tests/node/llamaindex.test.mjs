// kvfold/llamaindex under Node.js/Bun with the real @llamaindex/core: the retriever, the LLM's
// chat and abort, and KvfoldQueryEngine (a RetrieverQueryEngine) streamed and whole, each answer
// checked against the core's answerFromChunks.
import { answerFromChunks, compressIntoStore, Compressor, DocumentStore, KvfoldError } from "kvfold";
import { KvfoldLLM, KvfoldQueryEngine, KvfoldRetriever } from "kvfold/llamaindex";
import { RetrieverQueryEngine } from "@llamaindex/core/query-engine";
import assert from "node:assert/strict";
import { rm } from "node:fs/promises";
import { after, before, test } from "node:test";
import { collect, removeTestModels, tempDir, TEST_COMPRESSOR, testEngine, testModel } from "./_fixtures.mjs";

const DOCS = [
  {
    source: "ships.txt",
    text: "The harbour log lists every ship. The ship Aurora left the harbour at dawn with timber. ".repeat(
      6,
    ),
    metadata: { kind: "log", year: 1893 },
  },
  {
    source: "bees.txt",
    text: "Bees keep the orchard alive. Honey from the hives was sold at the market in June. ".repeat(6),
    metadata: { kind: "farm" },
  },
];
const QUESTION = "which ship left the harbour";
const GREEDY = { temperature: 0, maxTokens: 8, ignoreEos: true };

let dir, compressor, store, model;

before(async () => {
  dir = await tempDir();
  compressor = await Compressor.load(await testEngine(), await testModel("compressor", TEST_COMPRESSOR));
  model = compressor.model;
  store = DocumentStore.open(`${dir}/kb.sqlite`);
  for (const d of DOCS) {
    await compressIntoStore(compressor, store, { ...d, group: "demo" }, {
      chunkTokens: 64,
      segmentLength: 32,
    });
  }
});

after(async () => {
  store?.close();
  compressor?.dispose();
  await rm(dir, { recursive: true, force: true });
  await removeTestModels();
});

const answer = (chunks) => collect(answerFromChunks(model, chunks, QUESTION, GREEDY));

test("llamaindex: KvfoldRetriever nodes are the store's BM25 hits with metadata and payload", async () => {
  const nodes = await new KvfoldRetriever({ store, k: 3 }).retrieve(QUESTION);
  const hits = store.retrieve(QUESTION, { k: 3 });
  assert.ok(hits.length >= 2);
  assert.equal(nodes.length, hits.length);
  nodes.forEach(({ node, score }, i) => {
    assert.equal(score, hits[i].score);
    assert.equal(node.id_, `kvfold:${store.path}#${hits[i].chunkId}`);
    assert.equal(node.text, hits[i].text);
    assert.equal(node.metadata.year, hits[i].metadata.year);
    assert.deepEqual(node.metadata.kvfold.chunkIds, [hits[i].chunkId]);
  });
  assert.equal(nodes[0].node.metadata.source, "ships.txt");
});

test("llamaindex: KvfoldQueryEngine answers as answerFromChunks, streamed and whole", async () => {
  const engine = new KvfoldQueryEngine({
    retriever: new KvfoldRetriever({ store, k: 2 }),
    llm: new KvfoldLLM({ model, ...GREEDY }),
  });
  assert.ok(engine instanceof RetrieverQueryEngine);
  const hits = store.retrieve(QUESTION, { k: 2 });
  const expected = await answer(hits);
  assert.ok(expected.length > 0);

  const pieces = [];
  for await (const chunk of await engine.query({ query: QUESTION, stream: true })) {
    pieces.push(chunk.delta);
    assert.deepEqual(chunk.sourceNodes?.map((n) => n.node.metadata.chunkId), hits.map((h) => h.chunkId));
  }
  assert.ok(pieces.length > 1);
  assert.equal(pieces.join(""), expected);

  const response = await engine.query({ query: QUESTION });
  assert.equal(response.message.content, expected);
  assert.deepEqual(response.sourceNodes?.map((n) => n.score), hits.map((h) => h.score));

  // Without contexts the LLM answers from the question alone, which differs.
  const llm = new KvfoldLLM({ model, ...GREEDY });
  const alone = await llm.complete({ prompt: QUESTION });
  assert.notEqual(alone.text, expected);
});

test("llamaindex: aborting a streamed chat rejects with ABORTED", async () => {
  const hits = store.retrieve(QUESTION, { k: 2 });
  // A piece per token, so the abort lands while the stream still runs.
  const llm = new KvfoldLLM({ model, temperature: 0, maxTokens: 64, ignoreEos: true, streamIntervalMs: 0 });
  const controller = new AbortController();
  const stream = await llm.chat({
    messages: [{ role: "user", content: QUESTION }],
    stream: true,
    additionalChatOptions: { contexts: hits, signal: controller.signal },
  });
  let received = 0;
  await assert.rejects(async () => {
    for await (const _ of stream) {
      received++;
      if (received === 2) controller.abort();
    }
  }, (e) => e instanceof KvfoldError && e.code === "ABORTED");
  assert.equal(received, 2);
});

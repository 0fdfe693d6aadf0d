// kvfold/langchain under Node.js/Bun with the real @langchain/core and @langchain/classic: the
// retriever, ChatKvfold invoke/stream with compressed payloads, the contextual compression
// retriever, and abort; each answer is checked against the core's answerFromChunks.
import { answerFromChunks, compressIntoStore, Compressor, DocumentStore } from "kvfold";
import { ChatKvfold, createKvfoldQaChain, KvfoldDocumentCompressor, KvfoldRetriever } from "kvfold/langchain";
import { ContextualCompressionRetriever } from "@langchain/classic/retrievers/contextual_compression";
import { Document } from "@langchain/core/documents";
import { BaseRetriever } from "@langchain/core/retrievers";
import assert from "node:assert/strict";
import { rm } from "node:fs/promises";
import { after, before, test } from "node:test";
import { collect, removeTestModels, tempDir, TEST_COMPRESSOR, testEngine, testModel } from "./_fixtures.mjs";

const DOCS = [
  {
    source: "ships.txt",
    text: "The harbour log lists every ship. The ship Aurora left the harbour at dawn with timber. ".repeat(
      3,
    ),
  },
  {
    source: "bees.txt",
    text: "Bees keep the orchard alive. Honey from the hives was sold at the market in June. ".repeat(3),
  },
];
const QUESTION = "Which ship left the harbour?";
const GREEDY = { temperature: 0, maxTokens: 8, ignoreEos: true };

/** A fixed list of documents: stands in for any retriever a pipeline already has. */
class FixedRetriever extends BaseRetriever {
  lc_namespace = ["tests"];
  constructor(documents) {
    super();
    this.documents = documents;
  }
  _getRelevantDocuments() {
    return Promise.resolve(this.documents.map((d) => new Document({ ...d, metadata: { ...d.metadata } })));
  }
}

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

const coreAnswer = (chunks) => collect(answerFromChunks(model, chunks, QUESTION, { ...GREEDY, chat: true }));

test("langchain: KvfoldRetriever returns the store's BM25 hits with their compressed payload", async () => {
  const docs = await new KvfoldRetriever({ store, k: 3 }).invoke(QUESTION);
  const hits = store.retrieve(QUESTION, { k: 3 });
  assert.ok(hits.length >= 2);
  assert.equal(docs.length, hits.length);
  docs.forEach((doc, i) => {
    assert.equal(doc.pageContent, hits[i].text);
    assert.equal(doc.metadata.chunkId, hits[i].chunkId);
    assert.equal(doc.metadata.group, "demo");
    assert.equal(doc.metadata.kvfold.rows, hits[i].vectors.rows);
  });
  assert.equal(docs[0].metadata.source, "ships.txt");
});

test("langchain: ChatKvfold stream and invoke answer exactly as answerFromChunks", async () => {
  const documents = await new KvfoldRetriever({ store, k: 2 }).invoke(QUESTION);
  const hits = store.retrieve(QUESTION, { k: 2 });
  const want = await coreAnswer(hits);
  assert.ok(want.length > 0);
  const chat = new ChatKvfold({ model, store, ...GREEDY });

  const tokens = [];
  let streamed = "";
  const stream = await chat.stream(QUESTION, {
    documents,
    callbacks: [{ handleLLMNewToken: (t) => void tokens.push(t) }],
  });
  for await (const chunk of stream) streamed += chunk.text;
  assert.equal(streamed, want);
  assert.equal(tokens.join(""), want);
  assert.ok(tokens.length > 1);

  const reply = await chat.invoke(QUESTION, { documents });
  assert.equal(reply.text, want);
  assert.equal(reply.usage_metadata?.output_tokens, GREEDY.maxTokens);
  const rows = hits.reduce((n, h) => n + h.vectors.rows, 0);
  assert.equal(
    reply.usage_metadata?.input_tokens,
    rows + model.encodePrompt(QUESTION, { chat: true }).length,
  );

  // Without documents it is the plain chat template, which differs: the prefix is really read.
  const plain = await collect(model.generate(QUESTION, { ...GREEDY, chat: true }));
  assert.equal((await chat.invoke([["human", QUESTION]])).text, plain);
  assert.notEqual(plain, want);
});

test("langchain: a ContextualCompressionRetriever with KvfoldDocumentCompressor feeds the QA chain", async () => {
  const base = new FixedRetriever([
    new Document({ pageContent: DOCS[0].text, metadata: { source: DOCS[0].source } }),
  ]);
  const retriever = new ContextualCompressionRetriever({
    baseRetriever: base,
    baseCompressor: new KvfoldDocumentCompressor({ compressor, store }),
  });
  const docs = await retriever.invoke(QUESTION);
  assert.ok(docs.length >= 1);
  assert.ok(docs.every((d) => d.metadata.kvfold !== undefined), JSON.stringify(docs.map((d) => d.metadata)));
  const chain = createKvfoldQaChain({ retriever, model: new ChatKvfold({ model, store, ...GREEDY }) });
  const answer = await chain.invoke(QUESTION);
  const chunks = store.getChunks(docs.flatMap((d) => d.metadata.kvfold.chunkIds));
  assert.equal(answer, await coreAnswer(chunks));
});

test("langchain: aborting a streamed chain stops it", async () => {
  const controller = new AbortController();
  const chain = createKvfoldQaChain({
    retriever: new KvfoldRetriever({ store, k: 2 }),
    model: new ChatKvfold({ model, store, ...GREEDY, maxTokens: 200 }),
  });
  let got = 0;
  await assert.rejects(async () => {
    for await (const _ of await chain.stream(QUESTION, { signal: controller.signal })) {
      got++;
      controller.abort();
    }
  }, (e) => e.name === "AbortError");
  assert.equal(got, 1);
});

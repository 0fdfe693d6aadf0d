// The LangChain.js adapters through the framework's own API: invoke, stream, streamEvents (v2) and
// ContextualCompressionRetriever, checked against the core LLoCO functions on the same chunks.
import assert from "node:assert/strict";
import { Document, type DocumentInterface } from "npm:@langchain/core@1.4.0/documents";
import { BaseRetriever } from "npm:@langchain/core@1.4.0/retrievers";
import { ContextualCompressionRetriever } from "npm:@langchain/classic@1.0.50/retrievers/contextual_compression";
import {
  answerFromChunks,
  type Compressor,
  type DocumentStore,
  KvfoldError,
  type Model,
  type RetrievedChunk,
  type Session,
} from "../mod.ts";
import {
  ChatKvfold,
  createKvfoldQaChain,
  formatTextContext,
  KVFOLD_COMPRESSION_EVENT,
  type KvfoldCompressionReport,
  KvfoldDocumentCompressor,
  KvfoldLLM,
  type KvfoldPayloadRef,
  type KvfoldResponseMetadata,
  KvfoldRetriever,
  resolveKvfoldChunks,
} from "../integrations/langchain/mod.ts";
import { withCompressorAndStore } from "./_fixtures.ts";
import { makeTestAdapter } from "../testing/mod.ts";

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
/** Greedy, fixed length: two runs over the same inputs give the same text. */
const GREEDY = { temperature: 0, maxTokens: 8, ignoreEos: true } as const;

interface KnowledgeBase {
  compressor: Compressor;
  model: Model;
  store: DocumentStore;
  dir: string;
}

/** A store with DOCS compressed in 64-token chunks (4 vectors per 32-token segment), group "demo". */
function withKnowledgeBase(
  fn: (kb: KnowledgeBase) => Promise<void>,
  options: { fill?: boolean } = {},
): Promise<void> {
  const docs = options.fill === false ? [] : DOCS.map((d) => ({ ...d, group: "demo" }));
  return withCompressorAndStore(
    (compressor, store, dir) => fn({ compressor, model: compressor.model, store, dir }),
    docs,
  );
}

async function collect(pieces: AsyncIterable<string>): Promise<string> {
  let text = "";
  for await (const p of pieces) text += p;
  return text;
}

/** The core's answer from these chunks: the reference every adapter answer is compared with. */
function coreAnswer(model: Model, chunks: readonly RetrievedChunk[], question: string): Promise<string> {
  return collect(answerFromChunks(model, chunks, question, { ...GREEDY, chat: true }));
}

function refOf(doc: DocumentInterface): KvfoldPayloadRef {
  return doc.metadata.kvfold as KvfoldPayloadRef;
}

/** A retriever that always finds the same documents (stands in for any vector store). */
class FixedRetriever extends BaseRetriever {
  override lc_namespace = ["tests"];
  constructor(readonly documents: DocumentInterface[]) {
    super();
  }
  override _getRelevantDocuments(): Promise<DocumentInterface[]> {
    return Promise.resolve(this.documents.map((d) => new Document({ ...d, metadata: { ...d.metadata } })));
  }
}

Deno.test("langchain: KvfoldRetriever returns the store's BM25 hits with payload references", async () => {
  await withKnowledgeBase(async ({ store }) => {
    const docs = await new KvfoldRetriever({ store, k: 3 }).invoke(QUESTION);
    const hits = store.retrieve(QUESTION, { k: 3 });
    assert.ok(hits.length >= 2);
    assert.equal(docs.length, hits.length);
    docs.forEach((doc, i) => {
      const hit = hits[i];
      assert.equal(doc.pageContent, hit.text);
      assert.equal(doc.metadata.source, hit.source);
      assert.equal(doc.metadata.chunkId, hit.chunkId);
      assert.equal(doc.metadata.score, hit.score);
      assert.equal(doc.metadata.group, "demo");
      assert.deepEqual(JSON.parse(JSON.stringify(refOf(doc))), {
        documentId: hit.documentId,
        storeSource: hit.source,
        chunkIds: [hit.chunkId],
        rows: hit.vectors.rows,
        hidden: hit.vectors.hidden,
        tokens: hit.tokens,
        group: "demo",
      });
      // The vectors ride along in memory, not in the metadata's JSON.
      assert.ok(JSON.stringify(doc.metadata).length < 600, JSON.stringify(doc.metadata));
      assert.deepEqual(resolveKvfoldChunks(doc)![0].vectors.data, hit.vectors.data);
      // A deep copy keeps only the reference: it resolves through the store, and not without it.
      const copy = structuredClone(doc);
      assert.throws(() => resolveKvfoldChunks(copy), TypeError);
      assert.deepEqual(resolveKvfoldChunks(copy, store)![0].vectors.data, hit.vectors.data);
    });
    assert.equal(docs[0].metadata.source, "ships.txt");
    assert.deepEqual(await new KvfoldRetriever({ store, group: "other" }).invoke(QUESTION), []);
  });
});

Deno.test("langchain: ChatKvfold answers from payload documents exactly as answerFromChunks does", async () => {
  await withKnowledgeBase(async ({ model, store }) => {
    const documents = await new KvfoldRetriever({ store, k: 2 }).invoke(QUESTION);
    const hits = store.retrieve(QUESTION, { k: 2 });
    const want = await coreAnswer(model, hits, QUESTION);
    assert.ok(want.length > 0);
    const chat = new ChatKvfold({ model, store, ...GREEDY });

    // stream: the pieces, as handleLLMNewToken sees them too.
    const tokens: string[] = [];
    let streamed = "";
    let last: KvfoldResponseMetadata | undefined;
    const stream = await chat.stream(QUESTION, {
      documents,
      callbacks: [{ handleLLMNewToken: (t: string) => void tokens.push(t) }],
    });
    for await (const chunk of stream) {
      streamed += chunk.text;
      last = (chunk.response_metadata.kvfold as KvfoldResponseMetadata | undefined) ?? last;
    }
    assert.equal(streamed, want);
    assert.equal(tokens.join(""), want);
    assert.ok(tokens.length > 1);
    const rows = hits.reduce((n, h) => n + h.vectors.rows, 0);
    assert.equal(last?.prefixPositions, rows);
    assert.equal(last?.generatedTokens, GREEDY.maxTokens);
    assert.deepEqual(last?.groups, ["demo"]);

    // invoke: the same text, with usage counting the prefix.
    const reply = await chat.invoke(QUESTION, { documents });
    assert.equal(reply.text, want);
    assert.equal(reply.usage_metadata?.output_tokens, GREEDY.maxTokens);
    assert.equal(
      reply.usage_metadata?.input_tokens,
      rows + model.encodePrompt(QUESTION, { chat: true }).length,
    );

    // Copies without the in-memory vectors read them back from the store: same answer.
    const copies = documents.map((d) => structuredClone(d));
    assert.equal((await chat.invoke(QUESTION, { documents: copies })).text, want);
    await assert.rejects(
      () => new ChatKvfold({ model, ...GREEDY }).invoke(QUESTION, { documents: copies }),
      TypeError,
    );

    // Without documents, it is the plain chat template.
    const plain = await collect(model.generate(QUESTION, { ...GREEDY, chat: true }));
    assert.equal((await chat.invoke([["human", QUESTION]])).text, plain);
    assert.notEqual(plain, want); // the prefix is really read
  });
});

Deno.test("langchain: ChatKvfold streamEvents v2 carries the same tokens", async () => {
  await withKnowledgeBase(async ({ model, store }) => {
    const documents = await new KvfoldRetriever({ store, k: 2 }).invoke(QUESTION);
    const want = await coreAnswer(model, store.retrieve(QUESTION, { k: 2 }), QUESTION);
    const chat = new ChatKvfold({ model, store, ...GREEDY });
    const kinds = new Set<string>();
    let text = "";
    for await (const event of chat.streamEvents(QUESTION, { version: "v2", documents })) {
      kinds.add(event.event);
      if (event.event === "on_chat_model_stream") text += event.data.chunk.text;
    }
    assert.equal(text, want);
    assert.ok(kinds.has("on_chat_model_start") && kinds.has("on_chat_model_end"), [...kinds].join());
  });
});

Deno.test("langchain: ChatKvfold stop strings and abort mid-stream", async () => {
  await withKnowledgeBase(async ({ model, store }) => {
    const documents = await new KvfoldRetriever({ store, k: 2 }).invoke(QUESTION);
    const chat = new ChatKvfold({ model, store, temperature: 0, ignoreEos: true, maxTokens: 12 });
    const full = (await chat.invoke(QUESTION, { documents })).text;
    // Stop at a piece of the text past its start: the answer is what came before its first occurrence.
    const stop = full.slice(4, 7);
    const cut = (await chat.invoke(QUESTION, { documents, stop: [stop] })).text;
    assert.equal(cut, full.slice(0, full.indexOf(stop)));

    // Abort after the first piece: the stream rejects with an AbortError, generates no more, and
    // closes its session although LangChain never resumes the abandoned generator.
    const opened: Session[] = [];
    const openSession = model.session.bind(model);
    model.session = (options) => {
      const session = openSession(options);
      opened.push(session);
      return session;
    };
    const long = new ChatKvfold({ model, store, temperature: 0, ignoreEos: true, maxTokens: 200 });
    const controller = new AbortController();
    let pieces = 0;
    let generated = 0;
    await assert.rejects(async () => {
      const stream = await long.stream(QUESTION, {
        documents,
        signal: controller.signal,
        callbacks: [{ handleLLMNewToken: () => void generated++ }],
      });
      for await (const _ of stream) {
        pieces++;
        controller.abort();
      }
    }, (e: Error) => e.name === "AbortError");
    assert.equal(pieces, 1);
    // Nothing keeps generating behind the rejection (a token takes about a millisecond here).
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(generated, 1);
    assert.equal(opened.length, 1);
    assert.throws(
      () => opened[0].position,
      (e: unknown) => e instanceof KvfoldError && e.code === "DISPOSED",
    );

    // invoke aborted from a token callback rejects the same way.
    const second = new AbortController();
    let seen = 0;
    await assert.rejects(
      () =>
        long.invoke(QUESTION, {
          documents,
          signal: second.signal,
          callbacks: [{ handleLLMNewToken: () => void (++seen === 2 && second.abort()) }],
        }),
      (e: Error) => e.name === "AbortError",
    );
    const seenAtRejection = seen;
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(seen, seenAtRejection); // nothing generated after the rejection
    assert.ok(seen >= 2 && seen <= 3, `${seen} tokens`);
    assert.equal(opened.length, 2);
    assert.throws(
      () => opened[1].position,
      (e: unknown) => e instanceof KvfoldError && e.code === "DISPOSED",
    );

    // Leaving a stream early closes its session too.
    for await (const _ of await long.stream(QUESTION, { documents })) break;
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(opened.length, 3);
    assert.throws(
      () => opened[2].position,
      (e: unknown) => e instanceof KvfoldError && e.code === "DISPOSED",
    );

    // The model is free again afterwards.
    assert.equal((await chat.invoke(QUESTION, { documents })).text, full);
  });
});

Deno.test("langchain: KvfoldLLM completes through the chat template, with payload documents", async () => {
  await withKnowledgeBase(async ({ model, store }) => {
    const documents = await new KvfoldRetriever({ store, k: 2 }).invoke(QUESTION);
    const want = await coreAnswer(model, store.retrieve(QUESTION, { k: 2 }), QUESTION);
    const llm = new KvfoldLLM({ model, store, ...GREEDY });
    assert.equal(llm.chat, true);
    assert.equal(await llm.invoke(QUESTION, { documents }), want);
    const pieces: string[] = [];
    for await (const p of await llm.stream(QUESTION, { documents })) pieces.push(p);
    assert.equal(pieces.join(""), want);
    assert.ok(pieces.length > 1);
    // Aborted mid-stream, it rejects too.
    const controller = new AbortController();
    await assert.rejects(async () => {
      const stream = await new KvfoldLLM({ model, ...GREEDY, maxTokens: 200 }).stream(QUESTION, {
        signal: controller.signal,
      });
      for await (const _ of stream) controller.abort();
    }, (e: Error) => e.name === "AbortError");
  });
});

Deno.test("langchain: KvfoldDocumentCompressor in ContextualCompressionRetriever compresses once and keeps metadata", async () => {
  await withKnowledgeBase(async ({ compressor, model, store }) => {
    const found = [
      new Document({ pageContent: DOCS[0].text, metadata: { source: "log.md", page: 3, tags: ["sea"] } }),
      new Document({ pageContent: DOCS[1].text, metadata: { source: "log.md", page: 4, group: "bees" } }),
      new Document({ pageContent: "   ", metadata: { source: "blank.md" } }),
    ];
    const reports: KvfoldCompressionReport[] = [];
    const docCompressor = new KvfoldDocumentCompressor({
      compressor,
      store,
      group: "demo",
      chunkTokens: 64,
      segmentLength: 32,
      onCompressed: (r) => reports.push(r),
    });
    const retriever = new ContextualCompressionRetriever({
      baseRetriever: new FixedRetriever(found),
      baseCompressor: docCompressor,
    });
    const first = await retriever.invoke(QUESTION);
    assert.equal(first.length, 3);
    const tok = model.tokenizer;
    for (const [i, doc] of first.slice(0, 2).entries()) {
      const { kvfold, ...rest } = doc.metadata;
      assert.deepEqual(rest, found[i].metadata); // the original metadata, untouched
      assert.equal(doc.pageContent, found[i].pageContent);
      const tokens = tok.encode(found[i].pageContent).length;
      let rows = 0;
      for (let off = 0; off < tokens; off += 64) rows += 4 * Math.ceil(Math.min(64, tokens - off) / 32);
      assert.equal((kvfold as KvfoldPayloadRef).tokens, tokens);
      assert.equal((kvfold as KvfoldPayloadRef).rows, rows);
      assert.equal((kvfold as KvfoldPayloadRef).chunkIds.length, Math.ceil(tokens / 64));
      assert.match((kvfold as KvfoldPayloadRef).storeSource, /^log\.md#[0-9a-f]{16}$/);
    }
    assert.equal(refOf(first[0]).group, "demo");
    assert.equal(refOf(first[1]).group, "bees");
    assert.equal(first[2].metadata.kvfold, undefined); // nothing to compress: stays text
    assert.deepEqual(reports.map((r) => r.cached), [false, false]);
    assert.deepEqual(reports.map((r) => r.tokens), first.slice(0, 2).map((d) => refOf(d).tokens));
    const stats = docCompressor.stats;
    assert.equal(stats.compressed, 2);
    assert.equal(stats.tokensIn, refOf(first[0]).tokens + refOf(first[1]).tokens);
    assert.equal(stats.vectorsOut, refOf(first[0]).rows + refOf(first[1]).rows);
    const storeAfterFirst = store.stats();
    assert.equal(storeAfterFirst.documents, 2);

    // Second call: nothing recompressed, the same chunks referenced.
    const second = await retriever.invoke(QUESTION);
    assert.equal(docCompressor.stats.compressed, 2);
    assert.equal(docCompressor.stats.reused, 2);
    assert.deepEqual(reports.slice(2).map((r) => r.cached), [true, true]);
    assert.deepEqual(store.stats(), storeAfterFirst);
    assert.deepEqual(second.map((d) => d.metadata.kvfold), first.map((d) => d.metadata.kvfold));

    // A fresh compressor (as in a new process) finds them in the store instead of compressing.
    const fresh = new KvfoldDocumentCompressor({
      compressor,
      store,
      group: "demo",
      chunkTokens: 64,
      segmentLength: 32,
    });
    const again = await fresh.compressDocuments(found, QUESTION);
    assert.deepEqual(fresh.stats, { compressed: 0, reused: 2, tokensIn: 0, vectorsOut: 0 });
    assert.deepEqual(again.map((d) => d.metadata.kvfold), first.map((d) => d.metadata.kvfold));

    // streamEvents shows each document's report as a custom event.
    const events: KvfoldCompressionReport[] = [];
    for await (const e of retriever.streamEvents(QUESTION, { version: "v2" })) {
      if (e.event === "on_custom_event" && e.name === KVFOLD_COMPRESSION_EVENT) {
        events.push(e.data as KvfoldCompressionReport);
      }
    }
    assert.deepEqual(
      events.map((r) => [r.storeSource, r.cached]),
      reports.slice(0, 2).map((r) => [r.storeSource, true]),
    );

    // The compressed documents answer as answerFromChunks over the same stored chunks.
    const chat = new ChatKvfold({ model, store, ...GREEDY });
    const want = await coreAnswer(model, store.getChunks(refOf(first[0]).chunkIds), QUESTION);
    assert.equal((await chat.invoke(QUESTION, { documents: [first[0]] })).text, want);

    // And the whole retriever feeds the QA chain: two prefixes plus one blank text document.
    const chunks = first.slice(0, 2).flatMap((d) => store.getChunks(refOf(d).chunkIds));
    const all = await collect(
      answerFromChunks(model, chunks, formatTextContext([first[2]], QUESTION), { ...GREEDY, chat: true }),
    );
    assert.equal(await createKvfoldQaChain({ retriever, model: chat }).invoke(QUESTION), all);
    assert.equal(docCompressor.stats.compressed, 2);
  }, { fill: false });
});

Deno.test("langchain: createKvfoldQaChain retrieves then streams the answer", async () => {
  await withKnowledgeBase(async ({ model, store }) => {
    const chat = new ChatKvfold({ model, store, ...GREEDY });
    const chain = createKvfoldQaChain({ retriever: new KvfoldRetriever({ store, k: 2 }), model: chat });
    const want = await coreAnswer(model, store.retrieve(QUESTION, { k: 2 }), QUESTION);
    assert.equal(await chain.invoke(QUESTION), want);
    const pieces: string[] = [];
    for await (const p of await chain.stream(QUESTION)) pieces.push(p);
    assert.equal(pieces.join(""), want);
    assert.ok(pieces.length > 1);

    // streamEvents v2: the retriever's run, then the model's tokens.
    const kinds: string[] = [];
    let text = "";
    for await (const e of chain.streamEvents(QUESTION, { version: "v2" })) {
      kinds.push(e.event);
      if (e.event === "on_chat_model_stream") text += e.data.chunk.text;
    }
    assert.equal(text, want);
    assert.ok(kinds.indexOf("on_retriever_end") < kinds.indexOf("on_chat_model_start"), kinds.join());

    // An empty retrieval still answers: the question alone.
    assert.deepEqual(store.retrieve("zebra quartz", { k: 2 }), []);
    const alone = await collect(model.generate("zebra quartz", { ...GREEDY, chat: true }));
    assert.equal(await chain.invoke("zebra quartz"), alone);

    // Abort mid-stream.
    const controller = new AbortController();
    const long = createKvfoldQaChain({
      retriever: new KvfoldRetriever({ store, k: 2 }),
      model: new ChatKvfold({ model, store, ...GREEDY, maxTokens: 200 }),
    });
    let got = 0;
    await assert.rejects(async () => {
      for await (const _ of await long.stream(QUESTION, { signal: controller.signal })) {
        got++;
        controller.abort();
      }
    }, (e: Error) => e.name === "AbortError");
    assert.equal(got, 1);
  });
});

Deno.test("langchain: documents without a payload are read as text context", async () => {
  await withKnowledgeBase(async ({ model, store }) => {
    const plain = [
      new Document({ pageContent: "The ship Aurora left at dawn.", metadata: { source: "memo" } }),
    ];
    const chat = new ChatKvfold({ model, ...GREEDY });
    const want = await collect(model.generate(formatTextContext(plain, QUESTION), { ...GREEDY, chat: true }));
    assert.equal((await chat.invoke(QUESTION, { documents: plain })).text, want);
    const chain = createKvfoldQaChain({ retriever: new FixedRetriever(plain), model: chat });
    assert.equal(await chain.invoke(QUESTION), want);

    // Mixed: payload documents make the prefix, plain ones the text context.
    const [hit] = store.retrieve(QUESTION, { k: 1 });
    const [withPayload] = await new KvfoldRetriever({ store, k: 1 }).invoke(QUESTION);
    const mixed = await collect(
      answerFromChunks(model, [hit], formatTextContext(plain, QUESTION), { ...GREEDY, chat: true }),
    );
    assert.equal((await chat.invoke(QUESTION, { documents: [withPayload, ...plain] })).text, mixed);
  });
});

Deno.test("langchain: ChatKvfold decodes with the LoRA registered under the documents' group", async () => {
  await withKnowledgeBase(async ({ model, store, dir }) => {
    await makeTestAdapter(`${dir}/demo-lora`, { base: model.dir, rank: 4, seed: 3 });
    const documents = await new KvfoldRetriever({ store, k: 2 }).invoke(QUESTION);
    const hits = store.retrieve(QUESTION, { k: 2 });
    const base = await coreAnswer(model, hits, QUESTION);
    await model.adapters.load(`${dir}/demo-lora`, { name: "demo" }); // the documents' group
    const withLora = await coreAnswer(model, hits, QUESTION); // answerFromChunks picks "demo" too
    assert.notEqual(withLora, base, "the adapter changed nothing");
    const chat = new ChatKvfold({ model, store, ...GREEDY });
    assert.equal((await chat.invoke(QUESTION, { documents })).text, withLora);
  });
});

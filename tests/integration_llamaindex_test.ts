// The LlamaIndex.TS adapters through LlamaIndex's own API (retrieve, chat, complete, query,
// postprocessNodes), against kvfold's answerFromChunks on the same chunks with greedy decoding.
import assert from "node:assert/strict";
import {
  BaseRetriever,
  defaultTextQAPrompt,
  MetadataMode,
  type NodeWithScore,
  RetrieverQueryEngine,
  Settings,
  TextNode,
} from "npm:llamaindex@0.12.1";
import {
  answerFromChunks,
  type ChatMessage,
  type Compressor,
  type DocumentStore,
  KvfoldError,
  type Model,
  type RetrievedChunk,
} from "../mod.ts";
import {
  compressedContextOf,
  KvfoldLLM,
  KvfoldNodeCompressor,
  KvfoldQueryEngine,
  KvfoldRetriever,
  type NodeCompressionEvent,
  payloadRefOf,
} from "../integrations/llamaindex/mod.ts";
import { withCompressorAndStore } from "./_fixtures.ts";
import { makeTestAdapter } from "../testing/mod.ts";

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
/** Greedy and a fixed length, so two runs over the same inputs must give the same text. */
const GREEDY = { temperature: 0, maxTokens: 8, ignoreEos: true };

interface Pipeline {
  dir: string;
  compressor: Compressor;
  model: Model;
  store: DocumentStore;
}

/** A store with DOCS compressed (group "demo"), 64-token chunks of two 32-token segments. */
function withPipeline(fn: (p: Pipeline) => Promise<void>): Promise<void> {
  const docs = DOCS.map((d) => ({ ...d, group: "demo" }));
  return withCompressorAndStore(
    (compressor, store, dir) => fn({ dir, compressor, model: compressor.model, store }),
    docs,
  );
}

async function answer(model: Model, chunks: readonly RetrievedChunk[], question: string): Promise<string> {
  let text = "";
  for await (const piece of answerFromChunks(model, chunks, question, GREEDY)) text += piece;
  return text;
}

async function concat<T>(stream: AsyncIterable<T>, text: (item: T) => string): Promise<string[]> {
  const pieces: string[] = [];
  for await (const item of stream) pieces.push(text(item));
  return pieces;
}

/** Stands for any LlamaIndex retriever (a vector index, a keyword table...): returns fixed nodes. */
class FixedRetriever extends BaseRetriever {
  constructor(readonly nodes: () => NodeWithScore[]) {
    super();
  }
  _retrieve(): Promise<NodeWithScore[]> {
    return Promise.resolve(this.nodes());
  }
}

/** Metadata without the symbol-keyed in-memory payload (which deepEqual would compare). */
const stringKeyed = (metadata: object) => Object.fromEntries(Object.entries(metadata));

const isAborted = (e: unknown) => e instanceof KvfoldError && e.code === "ABORTED";

Deno.test("llamaindex retriever: nodes are the store's BM25 hits with metadata and payload", async () => {
  await withPipeline(async ({ store }) => {
    const retriever = new KvfoldRetriever({ store, k: 3 });
    const nodes = await retriever.retrieve(QUESTION);
    const hits = store.retrieve(QUESTION, { k: 3 });
    assert.ok(hits.length >= 2);
    assert.equal(nodes.length, hits.length);
    assert.equal(hits[0].source, "ships.txt");
    nodes.forEach(({ node, score }, i) => {
      const hit = hits[i];
      assert.equal(score, hit.score);
      assert.equal(node.id_, `kvfold:${store.path}#${hit.chunkId}`);
      assert.equal((node as TextNode).text, hit.text);
      assert.deepEqual(
        stringKeyed(node.metadata),
        {
          ...hit.metadata,
          source: hit.source,
          documentId: hit.documentId,
          chunkId: hit.chunkId,
          ordinal: hit.ordinal,
          tokens: hit.tokens,
          group: "demo",
          kvfold: {
            store: store.path,
            source: hit.source,
            documentId: hit.documentId,
            chunkIds: [hit.chunkId],
            rows: hit.vectors.rows,
            hidden: hit.vectors.hidden,
            group: "demo",
          },
        },
      );
      // The payload is in memory, equal to the store's vectors, and never serialised into prompts.
      assert.deepEqual(compressedContextOf(node)?.vectors, hit.vectors);
      assert.ok(!JSON.stringify(node.toJSON()).includes(String(hit.vectors.data[0])));
      const llmText = node.getContent(MetadataMode.LLM);
      assert.match(llmText, /source: /);
      assert.doesNotMatch(llmText, /kvfold|chunkId|documentId/);
    });
    // A query bundle with multi-modal text parts searches the same text.
    const viaBundle = await retriever.retrieve({ query: [{ type: "text", text: QUESTION }] });
    assert.deepEqual(viaBundle.map((n) => n.node.id_), nodes.map((n) => n.node.id_));
    assert.deepEqual(await new KvfoldRetriever({ store, group: "elsewhere" }).retrieve(QUESTION), []);
    assert.throws(() => new KvfoldRetriever({ store, k: 0 }), RangeError);
  });
});

Deno.test("llamaindex LLM: chat and complete, streamed or not, equal answerFromChunks", async () => {
  await withPipeline(async ({ model, store }) => {
    const hits = store.retrieve(QUESTION, { k: 2 });
    const expected = await answer(model, hits, QUESTION);
    // The summary vectors matter: without them the same prompt continues differently.
    assert.notEqual(expected, await answer(model, [], QUESTION));
    const llm = new KvfoldLLM({ model, ...GREEDY });
    assert.deepEqual(llm.metadata, {
      model: "compressor",
      temperature: 0,
      topP: 0.95,
      maxTokens: 8,
      contextWindow: model.info.maxPositions,
      tokenizer: undefined,
      structuredOutput: true, // responseFormat constrains the reply (grammar)
    });

    const completion = await llm.complete({ prompt: QUESTION, contexts: hits });
    assert.equal(completion.text, expected);
    const stats = completion.raw as { prefixPositions: number; group: string; generatedTokens: number };
    assert.equal(stats.prefixPositions, hits[0].vectors.rows + hits[1].vectors.rows);
    assert.equal(stats.group, "demo");
    assert.equal(stats.generatedTokens, 8);

    const completionPieces = await concat(
      await llm.complete({ prompt: QUESTION, contexts: hits, stream: true }),
      (c) => c.text,
    );
    assert.ok(completionPieces.length > 1);
    assert.equal(completionPieces.join(""), expected);

    const messages = [{ role: "user" as const, content: QUESTION }];
    const chat = await llm.chat({ messages, additionalChatOptions: { contexts: hits } });
    assert.deepEqual(chat.message, { role: "assistant", content: expected });
    const chatPieces = await concat(
      await llm.chat({ messages, stream: true, additionalChatOptions: { contexts: hits } }),
      (c) => c.delta,
    );
    assert.equal(chatPieces.join(""), expected);

    // Without contexts, a conversation goes through the model's chat template.
    const conversation = [
      { role: "system" as const, content: "Answer briefly." },
      { role: "user" as const, content: [{ type: "text" as const, text: "Name a ship." }] },
    ];
    let plain = "";
    const asKvfold: ChatMessage[] = [{ role: "system", content: "Answer briefly." }, {
      role: "user",
      content: "Name a ship.",
    }];
    for await (const p of model.generate(asKvfold, GREEDY)) plain += p;
    const reply = await llm.chat({ messages: conversation, additionalChatOptions: { maxTokens: 8 } });
    assert.equal(reply.message.content, plain);
    // Per-call options override the defaults: 3 tokens are a prefix of the 8.
    const short = await llm.complete({ prompt: QUESTION, contexts: hits, maxTokens: 3 });
    assert.equal((short.raw as { generatedTokens: number }).generatedTokens, 3);
    assert.ok(
      expected.startsWith(short.text),
      `${JSON.stringify(short.text)} vs ${JSON.stringify(expected)}`,
    );
  });
});

Deno.test("llamaindex LLM: abort mid-stream, early break, bad contexts", async () => {
  await withPipeline(async ({ model, store, dir }) => {
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
    }, isAborted);
    assert.equal(received, 2);
    // An aborted signal refuses at once; the model stays usable, and a broken-off stream frees its session.
    await assert.rejects(
      () => llm.complete({ prompt: QUESTION, signal: AbortSignal.abort() }),
      isAborted,
    );
    for await (const _ of await llm.complete({ prompt: QUESTION, stream: true })) break;
    const after = await llm.complete({ prompt: QUESTION, contexts: hits, maxTokens: 2 });
    assert.equal((after.raw as { generatedTokens: number }).generatedTokens, 2);

    // Contexts from two adapter groups whose adapters differ (a LoRA for "a", none for "b") compose
    // (by default; "best" takes the best context's group) or follow an explicit group; vectors of
    // another width are refused.
    await makeTestAdapter(`${dir}/a-lora`, { base: model.dir, rank: 4, seed: 3 });
    await model.adapters.load(`${dir}/a-lora`, { name: "a" });
    const mixed = [{ ...hits[0], group: "a" }, { ...hits[1], group: "b" }];
    const composed = await llm.complete({ prompt: QUESTION, contexts: mixed, maxTokens: 1 });
    // Weighted by the BM25 scores: a's share of the two contexts' scores; b's share stays base.
    const share = hits[0].score / (hits[0].score + hits[1].score);
    assert.deepEqual((composed.raw as { adapters: unknown }).adapters, [{ name: "a", weight: share }]);
    const best = await llm.complete({ prompt: QUESTION, contexts: mixed, adapterMode: "best", maxTokens: 1 });
    assert.equal((best.raw as { adapter: string }).adapter, "a");
    const chosen = await llm.complete({ prompt: QUESTION, contexts: mixed, group: "b", maxTokens: 1 });
    assert.equal((chosen.raw as { group: string }).group, "b");
    const narrow = { vectors: { rows: 1, hidden: 3, data: new Float32Array(3) } };
    await assert.rejects(
      () => llm.complete({ prompt: QUESTION, contexts: [narrow] }),
      (e: unknown) =>
        e instanceof KvfoldError && e.code === "INVALID_ARGUMENT" && /3 dimensions/.test(e.message),
    );
    await assert.rejects(
      () =>
        llm.chat({
          messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "x.png" } }] }],
        }),
      TypeError,
    );
  });
});

Deno.test("llamaindex postprocessor: compresses foreign nodes once, keeps metadata, reuses the store", async () => {
  await withPipeline(async ({ compressor, model, store }) => {
    const texts = [
      "The lighthouse keeper counted forty gulls on the pier every morning. ".repeat(4),
      "Tide tables were pinned beside the door of the harbour office. ".repeat(3),
    ];
    const foreignNodes = () =>
      texts.map((text, i) => ({
        node: new TextNode({
          id_: `vec-${i}`,
          text,
          metadata: { file_path: "notes/harbour.md", author: "ann", group: "demo" },
        }),
        score: 0.9 - i / 10,
      }));
    const events: NodeCompressionEvent[] = [];
    const options = {
      chunkTokens: 64,
      segmentLength: 32,
      onNode: (e: NodeCompressionEvent) => events.push(e),
    };
    const postprocessor = new KvfoldNodeCompressor({ compressor, store, ...options });
    const documentsBefore = store.stats().documents;

    const first = foreignNodes();
    const out = await postprocessor.postprocessNodes(first, "gulls");
    assert.equal(out, first);
    assert.deepEqual(events.map((e) => e.action), ["compressed", "compressed"]);
    assert.equal(store.stats().documents, documentsBefore + 2);
    for (const [i, { node, score }] of out.entries()) {
      assert.equal(node.id_, `vec-${i}`);
      assert.equal(score, 0.9 - i / 10);
      const { kvfold: _, ...kept } = stringKeyed(node.metadata);
      const kvfold = payloadRefOf(node)!;
      assert.deepEqual(kept, { file_path: "notes/harbour.md", author: "ann", group: "demo" });
      const tokens = model.tokenizer.encode(texts[i]).length;
      assert.equal(events[i].tokens, tokens);
      assert.match(kvfold.source, /^notes\/harbour\.md#[0-9a-f]{16}$/);
      assert.equal(kvfold.store, store.path);
      assert.equal(kvfold.group, "demo");
      // 4 summary vectors per 32-token segment, chunk by chunk; the payload is the stored chunks.
      let rows = 0;
      for (let off = 0; off < tokens; off += 64) rows += 4 * Math.ceil(Math.min(64, tokens - off) / 32);
      const stored = store.getChunks(kvfold.chunkIds);
      assert.equal(stored.length, Math.ceil(tokens / 64));
      assert.equal(kvfold.rows, rows);
      const payload = compressedContextOf(node)!;
      assert.equal(payload.vectors.rows, rows);
      assert.deepEqual([...payload.vectors.data], stored.flatMap((c) => [...c.vectors.data]));
    }
    assert.notEqual(payloadRefOf(first[0].node)!.source, payloadRefOf(first[1].node)!.source);

    // Fresh node objects with the same text: cached, nothing recompressed.
    events.length = 0;
    const second = await postprocessor.postprocessNodes(foreignNodes());
    assert.deepEqual(events.map((e) => e.action), ["cached", "cached"]);
    assert.deepEqual(second.map((n) => payloadRefOf(n.node)), first.map((n) => payloadRefOf(n.node)));
    // A new postprocessor (another process, say) reads them back from the store instead.
    events.length = 0;
    await new KvfoldNodeCompressor({ compressor, store, ...options }).postprocessNodes(foreignNodes());
    assert.deepEqual(events.map((e) => e.action), ["stored", "stored"]);
    assert.equal(store.stats().documents, documentsBefore + 2);
    // Nodes that already carry a payload (from KvfoldRetriever) pass through untouched.
    events.length = 0;
    await postprocessor.postprocessNodes(await new KvfoldRetriever({ store }).retrieve(QUESTION));
    assert.deepEqual(events, []);

    // In a query engine behind a foreign retriever, the answer is the stored chunks' answer.
    const engine = new KvfoldQueryEngine({
      retriever: new FixedRetriever(foreignNodes),
      nodePostprocessors: [postprocessor],
      llm: new KvfoldLLM({ model, ...GREEDY }),
    });
    const response = await engine.query({ query: "how many gulls" });
    const chunks = store.getChunks(first.flatMap((n) => payloadRefOf(n.node)!.chunkIds));
    assert.equal(response.message.content, await answer(model, chunks, "how many gulls"));
  });
});

Deno.test("llamaindex query engine: streamed and whole answers equal answerFromChunks", async () => {
  await withPipeline(async ({ model, store }) => {
    const engine = new KvfoldQueryEngine({
      retriever: new KvfoldRetriever({ store, k: 2 }),
      llm: new KvfoldLLM({ model, ...GREEDY }),
    });
    assert.ok(engine instanceof RetrieverQueryEngine);
    const hits = store.retrieve(QUESTION, { k: 2 });
    const expected = await answer(model, hits, QUESTION);

    // LlamaIndex's callbacks see the LLM call, as for its own LLMs.
    const llmEnds: string[] = [];
    const onLLMEnd = (e: CustomEvent<{ response: { message: { content: unknown } } }>) =>
      llmEnds.push(String(e.detail.response.message.content));
    Settings.callbackManager.on("llm-end", onLLMEnd);
    const pieces: string[] = [];
    try {
      const stream = await engine.query({ query: QUESTION, stream: true });
      for await (const chunk of stream) {
        pieces.push(chunk.delta);
        assert.deepEqual(chunk.sourceNodes?.map((n) => n.node.metadata.chunkId), hits.map((h) => h.chunkId));
      }
    } finally {
      Settings.callbackManager.off("llm-end", onLLMEnd);
    }
    assert.ok(pieces.length > 1);
    assert.equal(pieces.join(""), expected);
    assert.deepEqual(llmEnds, [expected]);

    const response = await engine.query({ query: QUESTION });
    assert.equal(response.message.content, expected);
    assert.deepEqual(response.sourceNodes?.map((n) => n.score), hits.map((h) => h.score));

    // Breaking off a stream frees its session for the next query.
    for await (const _ of await engine.query({ query: QUESTION, stream: true })) break;
    assert.equal((await engine.query({ query: QUESTION })).message.content, expected);
  });
});

Deno.test("llamaindex query engine: nodes without a payload fall back to text; no nodes still answers", async () => {
  await withPipeline(async ({ model, store }) => {
    const [hit] = store.retrieve(QUESTION, { k: 1 });
    const plain = new TextNode({
      text: "The Aurora carried timber to Leith.",
      metadata: { source: "memo.txt" },
    });
    // One compressed node (KvfoldRetriever's, its vectors not in memory after a JSON round trip) and one plain.
    const reloaded = new TextNode({
      ...(await new KvfoldRetriever({ store, k: 1 }).retrieve(QUESTION))[0].node.toMutableJSON(),
    });
    assert.equal(compressedContextOf(reloaded), undefined);
    const engine = new KvfoldQueryEngine({
      retriever: new FixedRetriever(() => [{ node: reloaded, score: 2 }, { node: plain, score: 1 }]),
      llm: new KvfoldLLM({ model, ...GREEDY }),
      store,
    });
    const prompt = defaultTextQAPrompt.format({
      context: plain.getContent(MetadataMode.LLM),
      query: QUESTION,
    });
    assert.match(prompt, /source: memo\.txt\n\nThe Aurora carried timber/);
    const expected = await answer(model, [hit], prompt);
    assert.notEqual(expected, await answer(model, [], prompt));
    const pieces = await concat(await engine.query({ query: QUESTION, stream: true }), (c) => c.delta);
    assert.equal(pieces.join(""), expected);

    // Nothing retrieved: the question alone, not LlamaIndex's "Empty Response".
    const empty = new KvfoldQueryEngine({
      retriever: new KvfoldRetriever({ store, k: 2 }),
      llm: new KvfoldLLM({ model, ...GREEDY }),
    });
    assert.deepEqual(await empty.retrieve("zebra quasar"), []);
    const alone = await answer(model, [], "zebra quasar");
    const response = await empty.query({ query: "zebra quasar" });
    assert.equal(response.message.content, alone);
    assert.deepEqual(response.sourceNodes, []);
    const streamed = await concat(await empty.query({ query: "zebra quasar", stream: true }), (c) => c.delta);
    assert.equal(streamed.join(""), alone);
  });
});

Deno.test("llamaindex query engine: decodes with the LoRA registered under the nodes' group", async () => {
  await withPipeline(async ({ model, store, dir }) => {
    await makeTestAdapter(`${dir}/demo-lora`, { base: model.dir, rank: 4, seed: 3 });
    const hits = store.retrieve(QUESTION, { k: 2 });
    const base = await answer(model, hits, QUESTION);
    await model.adapters.load(`${dir}/demo-lora`, { name: "demo" }); // the nodes' group
    const withLora = await answer(model, hits, QUESTION); // answerFromChunks picks "demo" too
    assert.notEqual(withLora, base, "the adapter changed nothing");
    const engine = new KvfoldQueryEngine({
      retriever: new KvfoldRetriever({ store, k: 2 }),
      llm: new KvfoldLLM({ model, ...GREEDY }),
    });
    assert.equal((await engine.query({ query: QUESTION })).message.content, withLora);
  });
});

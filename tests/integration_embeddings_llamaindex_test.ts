// KvfoldEmbedding through LlamaIndex's own VectorStoreIndex and SummaryIndex, with kvfold as the only
// provider (Settings.embedModel, Settings.llm, Settings.tokenizer), and no network.
import assert from "node:assert/strict";
import {
  BaseEmbedding,
  Document,
  MetadataMode,
  Settings,
  SummaryIndex,
  VectorStoreIndex,
} from "npm:llamaindex@0.12.1";
// llamaindex's Settings leaves the tokenizer out; the core's (the same global state) has it.
import { Settings as CoreSettings } from "npm:@llamaindex/core@0.6.22/global";
import type { Model } from "../mod.ts";
import { KvfoldEmbedding, KvfoldLLM, kvfoldTokenizer } from "../integrations/llamaindex/mod.ts";
import { testEngine, testModel } from "./_fixtures.ts";
import { dot, QUERY, TEXTS, withoutNetwork } from "./_embedding_corpus.ts";

// The tiny test model with room for LlamaIndex's QA prompt around the documents.
async function withModel(fn: (model: Model) => Promise<void>): Promise<void> {
  const dir = await testModel("embed-2k", { seed: 11, maxPositionEmbeddings: 2048 });
  using model = await (await testEngine()).loadModel(dir);
  await fn(model);
}

// kvfold as LlamaIndex's only provider while `fn` runs; fails the test when fetch is called.
function asOnlyProvider<T>(
  model: Model,
  fn: () => Promise<T>,
  llm = new KvfoldLLM({ model, temperature: 0, maxTokens: 4 }),
): Promise<T> {
  return withoutNetwork(() =>
    Settings.withEmbedModel(
      new KvfoldEmbedding({ model }),
      () => Settings.withLLM(llm, () => CoreSettings.withTokenizer(llm.tokenizer, fn)),
    )
  );
}

Deno.test("llamaindex embedding: a real BaseEmbedding whose vectors are model.embed's", async () => {
  await withModel(async (model) => {
    const embedding = new KvfoldEmbedding({ model, embedBatchSize: 3 });
    assert.ok(embedding instanceof BaseEmbedding);
    const want = (await model.embed(TEXTS)).map((v) => Array.from(v));
    assert.deepEqual(await embedding.getTextEmbeddings(TEXTS), want);
    assert.deepEqual(await embedding.getTextEmbeddingsBatch(TEXTS), want); // in batches of 3
    assert.deepEqual(await embedding.getTextEmbedding(TEXTS[1]), want[1]);
    assert.deepEqual(await embedding.getQueryEmbedding({ type: "text", text: TEXTS[2] }), want[2]);
    const last = new KvfoldEmbedding({ model, pooling: "last" });
    assert.deepEqual(
      await last.getTextEmbedding(TEXTS[0]),
      Array.from((await model.embed([TEXTS[0]], { pooling: "last" }))[0]),
    );
    assert.equal(embedding.embedInfo?.dimensions, model.info.hiddenSize);
  });
});

Deno.test("llamaindex: VectorStoreIndex with kvfold alone retrieves the nearest document", async () => {
  await withModel(async (model) => {
    const documents = TEXTS.map((text, i) => new Document({ text, id_: `doc-${i}` }));
    const results = await asOnlyProvider(model, async () => {
      const index = await VectorStoreIndex.fromDocuments(documents);
      return await index.asRetriever({ similarityTopK: TEXTS.length }).retrieve({ query: QUERY });
    });
    // One node per (short) document, embedded from exactly its text.
    assert.deepEqual(results.map((r) => r.node.getContent(MetadataMode.EMBED)).sort(), [...TEXTS].sort());
    const [q, ...docs] = await model.embed([QUERY, ...TEXTS]);
    const cosines = docs.map((d) => dot(q, d));
    const order = cosines.map((c, i) => [c, i]).sort((a, b) => b[0] - a[0]).map(([, i]) => i);
    assert.ok(cosines[order[0]] - cosines[order[1]] > 1e-6, "a unique nearest document");
    assert.deepEqual(results.map((r) => TEXTS.indexOf(r.node.getContent(MetadataMode.EMBED))), order);
    for (const r of results) {
      assert.ok(Math.abs(r.score! - cosines[TEXTS.indexOf(r.node.getContent(MetadataMode.EMBED))]) < 1e-6);
    }
  });
});

Deno.test("llamaindex: VectorStoreIndex and SummaryIndex query engines answer with kvfold alone", async () => {
  await withModel(async (model) => {
    const documents = TEXTS.map((text, i) => new Document({ text, id_: `doc-${i}` }));
    // The synthesizers call complete(); every prompt they send is kept.
    const prompts: string[] = [];
    const llm = new KvfoldLLM({ model, temperature: 0, maxTokens: 4 });
    const complete = llm.complete.bind(llm);
    llm.complete = ((params: { prompt: unknown }) => {
      prompts.push(String(params.prompt));
      return complete(params as never);
    }) as unknown as typeof llm.complete;
    await asOnlyProvider(model, async () => {
      const vector = await VectorStoreIndex.fromDocuments(documents);
      const a = await vector.asQueryEngine({ similarityTopK: 1 }).query({ query: QUERY });
      assert.equal(typeof a.message.content, "string");
      assert.equal(a.sourceNodes?.length, 1);
      const summary = await SummaryIndex.fromDocuments(documents);
      const b = await summary.asQueryEngine().query({ query: QUERY });
      assert.equal(typeof b.message.content, "string");
      // The summary index puts every document in front of the model.
      assert.equal(b.sourceNodes?.length, TEXTS.length);
    }, llm);
    assert.ok(prompts.length >= 2, `${prompts.length} LLM calls`);
    assert.ok(TEXTS.every((t) => prompts.some((p) => p.includes(t))), "every document reached the LLM");
  });
});

Deno.test("llamaindex: the model's own tokenizer for Settings.tokenizer", async () => {
  await withModel(async (model) => {
    const text = "The harbour log lists every ship.";
    const tok = kvfoldTokenizer(model);
    assert.deepEqual(Array.from(tok.encode(text)), model.tokenizer.encode(text));
    assert.equal(tok.decode(tok.encode(text)), text);
    const llm = new KvfoldLLM({ model });
    assert.deepEqual(llm.tokenizer.encode(text), tok.encode(text));
    await asOnlyProvider(model, () => {
      assert.deepEqual(CoreSettings.tokenizer.encode(text), tok.encode(text));
      return Promise.resolve();
    });
  });
});

Deno.test("llamaindex embedding: a path string or another object is refused with a TypeError", async () => {
  await withModel((model) => {
    assert.throws(() => new KvfoldEmbedding("./models/tiny" as never), {
      name: "TypeError",
      message: "KvfoldEmbedding takes { model }, a loaded model (await kv.loadModel(path)), not the path " +
        'string "./models/tiny"',
    });
    assert.throws(() => new KvfoldEmbedding({ model: model.tokenizer } as never), {
      name: "TypeError",
      message: "KvfoldEmbedding takes { model }, a loaded kvfold Model; got model: a TextTokenizer",
    });
    return Promise.resolve();
  });
});

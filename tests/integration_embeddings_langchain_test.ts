// KvfoldEmbeddings through LangChain's own MemoryVectorStore, and getNumTokens by the model's tokenizer.
import assert from "node:assert/strict";
import { Embeddings } from "npm:@langchain/core@1.4.0/embeddings";
import { MemoryVectorStore } from "npm:@langchain/classic@1.0.50/vectorstores/memory";
import type { Model } from "../mod.ts";
import { ChatKvfold, KvfoldEmbeddings, KvfoldLLM } from "../integrations/langchain/mod.ts";
import { testEngine, testModel } from "./_fixtures.ts";
import { dot, QUERY, TEXTS, withoutNetwork } from "./_embedding_corpus.ts";

async function withModel(fn: (model: Model) => Promise<void>): Promise<void> {
  using model = await (await testEngine()).loadModel(await testModel("gqa", { seed: 11 }));
  await fn(model);
}

Deno.test("langchain embeddings: a real Embeddings whose vectors are model.embed's", async () => {
  await withModel(async (model) => {
    const embeddings = new KvfoldEmbeddings({ model });
    assert.ok(embeddings instanceof Embeddings);
    const docs = await embeddings.embedDocuments(TEXTS);
    const want = await model.embed(TEXTS);
    assert.deepEqual(docs, want.map((v) => Array.from(v)));
    assert.deepEqual(await embeddings.embedQuery(TEXTS[2]), docs[2]);
    const last = new KvfoldEmbeddings({ model, pooling: "last" });
    assert.deepEqual(
      await last.embedQuery(TEXTS[0]),
      Array.from((await model.embed([TEXTS[0]], { pooling: "last" }))[0]),
    );
  });
});

Deno.test("langchain embeddings: MemoryVectorStore with kvfold alone retrieves the nearest document", async () => {
  await withModel(async (model) => {
    const embeddings = new KvfoldEmbeddings({ model });
    const store = await withoutNetwork(() =>
      MemoryVectorStore.fromTexts(TEXTS, TEXTS.map((_, i) => ({ i })), embeddings)
    );
    // The expected order from our own cosines (vectors have norm 1: cosine = dot product).
    const [q, ...docs] = await model.embed([QUERY, ...TEXTS]);
    const cosines = docs.map((d) => dot(q, d));
    const order = cosines.map((c, i) => [c, i]).sort((a, b) => b[0] - a[0]).map(([, i]) => i);
    assert.ok(cosines[order[0]] - cosines[order[1]] > 1e-6, "a unique nearest document");
    const scored = await withoutNetwork(() => store.similaritySearchWithScore(QUERY, TEXTS.length));
    assert.deepEqual(scored.map(([d]) => d.metadata.i), order);
    for (const [d, score] of scored) assert.ok(Math.abs(score - cosines[d.metadata.i]) < 1e-6);
    const [top] = await store.asRetriever({ k: 1 }).invoke(QUERY);
    assert.equal(top.pageContent, TEXTS[order[0]]);
  });
});

Deno.test("langchain: getNumTokens counts with the model's tokenizer, never the network", async () => {
  await withModel(async (model) => {
    const text = "The harbour log lists every ship.";
    const n = model.tokenizer.encode(text).length;
    assert.notEqual(n, Math.ceil(text.length / 4), "distinguishable from LangChain's length/4 fallback");
    for (const lc of [new ChatKvfold({ model }), new KvfoldLLM({ model })]) {
      await withoutNetwork(async () => {
        assert.equal(await lc.getNumTokens(text), n);
        assert.equal(
          await lc.getNumTokens([{ type: "text", text }, { type: "image_url", image_url: "x" }]),
          n,
        );
      });
    }
  });
});

Deno.test("langchain embeddings: a path string or another object is refused with a TypeError", async () => {
  await withModel((model) => {
    assert.throws(() => new KvfoldEmbeddings("./models/tiny" as never), {
      name: "TypeError",
      message: "KvfoldEmbeddings takes { model }, a loaded model (await kv.loadModel(path)), not the path " +
        'string "./models/tiny"',
    });
    assert.throws(() => new KvfoldEmbeddings({ model: "./models/tiny" } as never), {
      name: "TypeError",
      message: /not the path string "\.\/models\/tiny"/,
    });
    assert.throws(() => new KvfoldEmbeddings({ model: model.tokenizer } as never), {
      name: "TypeError",
      message: "KvfoldEmbeddings takes { model }, a loaded kvfold Model; got model: a TextTokenizer",
    });
    assert.throws(() => new KvfoldEmbeddings(undefined as never), {
      name: "TypeError",
      message: "KvfoldEmbeddings takes { model }, a loaded kvfold Model; got undefined",
    });
    return Promise.resolve();
  });
});

// Embeddings under Node.js/Bun, with the package imported by name: Model.embed against the float64
// reference, KvfoldEmbeddings in LangChain's MemoryVectorStore, KvfoldEmbedding in LlamaIndex's
// VectorStoreIndex, and getNumTokens by the model's own tokenizer (no network).
import { KvfoldEmbeddings, KvfoldLLM as LangChainLLM } from "kvfold/langchain";
import { KvfoldEmbedding, KvfoldLLM, kvfoldTokenizer } from "kvfold/llamaindex";
import { MemoryVectorStore } from "@langchain/classic/vectorstores/memory";
import { Embeddings } from "@langchain/core/embeddings";
import { Settings as CoreSettings } from "@llamaindex/core/global";
import { Document, Settings, VectorStoreIndex } from "llamaindex";
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { embedTokens, loadReferenceModel, referenceHidden } from "../../dist/tests/reference_forward.js";
import { removeTestModels, testEngine, testModel } from "./_fixtures.mjs";

const TEXTS = [
  "The harbour log lists every ship that left at dawn.",
  "Bees keep the orchard alive and honey is sold in June.",
  "A library is a quiet machine for remembering.",
];
const QUERY = "Which ship left the harbour?";

after(removeTestModels);

async function loaded() {
  const dir = await testModel("embed", { seed: 11 });
  return { dir, model: await (await testEngine()).loadModel(dir) };
}

const dot = (a, b) => a.reduce((s, v, i) => s + v * b[i], 0);

// The index of the document nearest to the query by our own cosines (unique, or the test is void).
async function nearest(model) {
  const [q, ...docs] = await model.embed([QUERY, ...TEXTS]);
  const cosines = docs.map((d) => dot(q, d));
  const order = cosines.map((c, i) => [c, i]).sort((a, b) => b[0] - a[0]);
  assert.ok(order[0][0] - order[1][0] > 1e-6, "a unique nearest document");
  return { best: order[0][1], cosines };
}

function noNetwork() {
  const real = globalThis.fetch, calls = [];
  globalThis.fetch = (input) => {
    calls.push(String(input?.url ?? input));
    return Promise.reject(new Error("no network in this test"));
  };
  return () => {
    globalThis.fetch = real;
    assert.deepEqual(calls, [], "fetch was called");
  };
}

test("Model.embed: mean pooling of final-normed hidden states matches the float64 reference", async () => {
  const { dir, model } = await loaded();
  try {
    const ref = await loadReferenceModel(dir);
    const H = model.info.hiddenSize;
    const got = await model.embed(TEXTS);
    for (const [i, text] of TEXTS.entries()) {
      const ids = model.encodePrompt(text);
      const hidden = referenceHidden(ref, embedTokens(ref, ids));
      const want = new Float64Array(H);
      for (let r = 1; r < ids.length; r++) for (let j = 0; j < H; j++) want[j] += hidden[r * H + j];
      const norm = Math.hypot(...want);
      let err = 0;
      for (let j = 0; j < H; j++) err = Math.max(err, Math.abs(got[i][j] - want[j] / norm));
      assert.ok(err < 1e-4, `text ${i}: max error ${err}`);
    }
  } finally {
    model.dispose();
  }
});

test("KvfoldEmbeddings: LangChain's MemoryVectorStore retrieves the nearest document, offline", async () => {
  const { model } = await loaded();
  const restore = noNetwork();
  try {
    const embeddings = new KvfoldEmbeddings({ model });
    assert.ok(embeddings instanceof Embeddings);
    const store = await MemoryVectorStore.fromTexts(TEXTS, TEXTS.map((_, i) => ({ i })), embeddings);
    const { best, cosines } = await nearest(model);
    const [[doc, score]] = await store.similaritySearchWithScore(QUERY, 1);
    assert.equal(doc.metadata.i, best);
    assert.ok(Math.abs(score - cosines[best]) < 1e-6);
    const text = "The harbour log lists every ship.";
    assert.equal(await new LangChainLLM({ model }).getNumTokens(text), model.tokenizer.encode(text).length);
  } finally {
    restore();
    model.dispose();
  }
});

test("KvfoldEmbedding: LlamaIndex's VectorStoreIndex retrieves the nearest document, offline", async () => {
  const { model } = await loaded();
  const restore = noNetwork();
  try {
    const { best, cosines } = await nearest(model);
    const llm = new KvfoldLLM({ model, maxTokens: 4, temperature: 0 });
    const hits = await Settings.withEmbedModel(
      new KvfoldEmbedding({ model }),
      () =>
        Settings.withLLM(llm, () =>
          CoreSettings.withTokenizer(kvfoldTokenizer(model), async () => {
            const index = await VectorStoreIndex.fromDocuments(TEXTS.map((text) => new Document({ text })));
            return await index.asRetriever({ similarityTopK: 1 }).retrieve({ query: QUERY });
          })),
    );
    assert.equal(hits[0].node.text, TEXTS[best]);
    assert.ok(Math.abs(hits[0].score - cosines[best]) < 1e-6);
  } finally {
    restore();
    model.dispose();
  }
});

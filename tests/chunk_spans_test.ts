// Where documents are cut into store chunks (src/chunk_spans.ts): every N tokens, or at the last
// sentence end of a chunk's second half. Checked against a brute-force restatement of the rule on
// random sentence patterns, with a real tokenizer's pieces, and through every path that stores chunks
// (compressIntoStore, the LangChain and LlamaIndex compressors, which must recompute the same texts
// to find a stored document again).
import assert from "node:assert/strict";
import {
  chunkSpans,
  chunkTexts,
  compressIntoStore,
  Compressor,
  documentChunkSpans,
  sentenceEnds,
} from "../mod.ts";
import { DocumentStore } from "../src/store.ts";
import { KvfoldDocumentCompressor } from "../integrations/langchain/mod.ts";
import { Document } from "../integrations/langchain/_deps.ts";
import { KvfoldNodeCompressor } from "../integrations/llamaindex/mod.ts";
import { TextNode } from "../integrations/llamaindex/_deps.ts";
import { runCli, tempDir, TEST_COMPRESSOR, testEngine, testModel } from "./_fixtures.ts";

/** A seeded generator in [0, 1). */
function random(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

Deno.test("chunk spans: every N tokens, the last one short", () => {
  assert.deepEqual(chunkSpans(10, { chunkTokens: 4 }), [[0, 4], [4, 8], [8, 10]]);
  assert.deepEqual(chunkSpans(8, { chunkTokens: 4 }), [[0, 4], [4, 8]]);
  assert.deepEqual(chunkSpans(3, { chunkTokens: 4 }), [[0, 3]]);
  assert.deepEqual(chunkSpans(0, { chunkTokens: 4 }), []);
  assert.equal(chunkSpans(5000).length, 4); // default 1536 tokens
});

Deno.test("chunk spans: at sentences, each chunk ends at the last sentence end of its second half", () => {
  const next = random(7);
  for (let trial = 0; trial < 300; trial++) {
    const length = Math.floor(next() * 400);
    const chunkTokens = 1 + Math.floor(next() * 60);
    const density = next() * 0.3;
    const ends = Array.from({ length }, () => next() < density);
    const spans = chunkSpans(length, { chunkTokens, breakAt: "sentence" }, (i) => ends[i]);
    // The spans tile [0, length).
    let at = 0;
    for (const [a, b] of spans) {
      assert.equal(a, at);
      assert.ok(b > a && b - a <= chunkTokens, `${a}-${b} of at most ${chunkTokens}`);
      at = b;
    }
    assert.equal(at, length);
    // Restated by brute force: a chunk that is not the document's end stops after the last sentence
    // end among its tokens [start + ceil(N / 2), start + N), else after N tokens.
    for (const [a, b] of spans.slice(0, -1)) {
      const window = [];
      for (let i = a + Math.ceil(chunkTokens / 2); i < a + chunkTokens; i++) if (ends[i]) window.push(i);
      assert.equal(
        b,
        window.length ? window.at(-1)! + 1 : a + chunkTokens,
        `trial ${trial}: chunk ${a}-${b}`,
      );
    }
  }
  // Without sentence ends it is the token rule.
  assert.deepEqual(chunkSpans(10, { chunkTokens: 4, breakAt: "sentence" }, () => false), [[0, 4], [4, 8], [
    8,
    10,
  ]]);
});

Deno.test("chunk spans: bad options are refused by name", () => {
  assert.throws(() => chunkSpans(10, { chunkTokens: 0 }), /chunkTokens 0 is not a positive integer/);
  assert.throws(() => chunkSpans(10, { chunkTokens: 2.5 }), /chunkTokens 2.5/);
  assert.throws(
    // deno-lint-ignore no-explicit-any
    () => chunkSpans(10, { breakAt: "paragraph" as any }),
    /breakAt "paragraph" is not one of tokens, sentence/,
  );
  assert.throws(() => chunkSpans(10, { breakAt: "sentence" }), /no sentence-end test/);
});

Deno.test("chunk spans: sentence ends from a real tokenizer's pieces, and compressIntoStore cuts there", async () => {
  const kv = await testEngine();
  using compressor = await Compressor.load(kv, await testModel("compressor", TEST_COMPRESSOR));
  const tok = compressor.model.tokenizer;
  const ends = sentenceEnds(tok);
  const text = "The ship Aurora left the harbour at dawn. Did the bees keep the orchard alive? " +
    "Honey was sold at the market in June! ";
  const ids = tok.encode(text.repeat(8));
  const marked = ids.filter((id) => ends(id)).map((id) => tok.decode([id]).trim());
  // Every marked piece ends in . ? or !, and there is one per sentence (24).
  assert.ok(marked.every((p) => /[.?!]$/.test(p)), marked.join(" | "));
  assert.equal(marked.length, 24);

  const options = { chunkTokens: 40, breakAt: "sentence" as const };
  const spans = documentChunkSpans(ids, tok, options);
  const dir = await tempDir();
  try {
    using store = DocumentStore.open(`${dir}/kb.sqlite`);
    const r = await compressIntoStore(compressor, store, { source: "s.txt", text: text.repeat(8) }, {
      ...options,
      segmentLength: 32,
    });
    const chunks = store.getChunks(r.chunkIds);
    assert.deepEqual(chunks.map((c) => c.tokens), spans.map(([a, b]) => b - a));
    assert.deepEqual(chunks.map((c) => c.text), chunkTexts(tok, text.repeat(8), options));
    // Sentences here are 9-10 tokens, so every chunk but the last ends one and holds 20-40 tokens.
    for (const c of chunks.slice(0, -1)) {
      assert.match(c.text, /[.?!]\s*$/);
      assert.ok(c.tokens > 20 && c.tokens <= 40, `${c.tokens} tokens`);
    }
    // The token rule would have cut sentences: the two rules differ on this text.
    assert.notDeepEqual(spans, chunkSpans(ids.length, { chunkTokens: 40 }));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("chunk spans: the LangChain and LlamaIndex compressors store sentence chunks and find them again", async () => {
  const kv = await testEngine();
  using compressor = await Compressor.load(kv, await testModel("compressor", TEST_COMPRESSOR));
  const tok = compressor.model.tokenizer;
  const text = "The harbour log lists every ship. The ship Aurora left the harbour at dawn with timber. "
    .repeat(5);
  const options = { chunkTokens: 48, breakAt: "sentence" as const, segmentLength: 24 };
  const want = chunkTexts(tok, text, options);
  const dir = await tempDir();
  try {
    using store = DocumentStore.open(`${dir}/kb.sqlite`);
    const docs = [new Document({ pageContent: text, metadata: { source: "log.md" } })];
    const lc = new KvfoldDocumentCompressor({ compressor, store, ...options });
    const [out] = await lc.compressDocuments(docs, "ship");
    const ref = out.metadata.kvfold as { chunkIds: number[] };
    assert.deepEqual(store.getChunks(ref.chunkIds).map((c) => c.text), want);
    // A fresh compressor with the same options finds the document; one cutting by tokens does not.
    const again = new KvfoldDocumentCompressor({ compressor, store, ...options });
    await again.compressDocuments(docs, "ship");
    assert.deepEqual(again.stats, { compressed: 0, reused: 1, tokensIn: 0, vectorsOut: 0 });
    const byTokens = new KvfoldDocumentCompressor({ compressor, store, chunkTokens: 48, segmentLength: 24 });
    await byTokens.compressDocuments(docs, "ship");
    assert.equal(byTokens.stats.compressed, 1);

    const nodes = new KvfoldNodeCompressor({ compressor, store, ...options });
    const [{ node }] = await nodes.postprocessNodes([{
      node: new TextNode({ id_: "n", text, metadata: { file_path: "notes.md" } }),
      score: 1,
    }]);
    const payload = (node.metadata as Record<string, { chunkIds: number[] }>).kvfold;
    assert.deepEqual(store.getChunks(payload.chunkIds).map((c) => c.text), want);
    assert.throws(
      // deno-lint-ignore no-explicit-any
      () => new KvfoldNodeCompressor({ compressor, store, breakAt: "line" as any }),
      /breakAt "line" is not one of tokens, sentence/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("chunk spans: kvfold compress --break-at sentence stores what the API stores; a bad value is named", async () => {
  const kv = await testEngine();
  const modelDir = await testModel("compressor", TEST_COMPRESSOR);
  using compressor = await Compressor.load(kv, modelDir);
  const text = "The ship Aurora left the harbour at dawn. Honey was sold at the market in June! ".repeat(6);
  const dir = await tempDir();
  try {
    await Deno.writeTextFile(`${dir}/log.txt`, text);
    const args = [
      "compress",
      "--compressor",
      modelDir,
      "--store",
      `${dir}/kb.sqlite`,
      "--chunk-tokens",
      "32",
    ];
    const c = await runCli(...args, "--break-at", "sentence", "--segment-length", "16", `${dir}/log.txt`);
    assert.equal(c.code, 0, c.err);
    using store = DocumentStore.open(`${dir}/kb.sqlite`);
    const stored = store.getChunks(store.getDocument(`${dir}/log.txt`)!.chunkIds).map((ch) => ch.text);
    assert.deepEqual(
      stored,
      chunkTexts(compressor.model.tokenizer, text, { chunkTokens: 32, breakAt: "sentence" }),
    );
    const bad = await runCli(...args, "--break-at", "paragraph", `${dir}/log.txt`);
    assert.equal(bad.code, 1, bad.err);
    assert.match(bad.err, /--break-at: "paragraph" is not one of tokens, sentence/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// The LLoCO pipeline end to end: documents compressed into the SQLite store chunk by chunk,
// retrieved by BM25, and answered from their summary vectors as an embedding prefix.
import assert from "node:assert/strict";
import { KvfoldError } from "../mod.ts";
import { Compressor } from "../src/compressor.ts";
import { answerFromChunks, compressIntoStore } from "../src/lloco.ts";
import { DocumentStore } from "../src/store.ts";
import { runCli, tempDir, TEST_COMPRESSOR, testEngine, testModel } from "./_fixtures.ts";

const DOCS = [
  {
    source: "ships.txt",
    text: "The harbour log lists every ship. The ship Aurora left the harbour at dawn with timber. ".repeat(
      6,
    ),
  },
  {
    source: "bees.txt",
    text: "Bees keep the orchard alive. Honey from the hives was sold at the market in June. ".repeat(6),
  },
];

Deno.test("lloco: compress into the store, retrieve by text, answer from the summary-vector prefix", async () => {
  const dir = await tempDir();
  try {
    const kv = await testEngine();
    using compressor = await Compressor.load(
      kv,
      await testModel("compressor", TEST_COMPRESSOR),
    );
    using store = DocumentStore.open(`${dir}/kb.sqlite`);
    let lastProgress = 0;
    for (const d of DOCS) {
      const r = await compressIntoStore(compressor, store, { ...d, group: "demo" }, {
        chunkTokens: 64,
        segmentLength: 32,
        onProgress: (done) => (lastProgress = done),
      });
      const tokens = compressor.model.tokenizer.encode(d.text).length;
      assert.equal(r.tokens, tokens);
      assert.equal(lastProgress, tokens);
      // 4 vectors per 32-token segment, chunk by chunk.
      let want = 0;
      for (let off = 0; off < tokens; off += 64) want += 4 * Math.ceil(Math.min(64, tokens - off) / 32);
      assert.equal(r.vectors, want);
      // The chunk ids come back in order and are the stored document's.
      const stored = store.getDocument(d.source)!;
      assert.equal(r.documentId, stored.documentId);
      assert.deepEqual(r.chunkIds, stored.chunkIds);
      assert.equal(r.chunkIds.length, Math.ceil(tokens / 64));
      assert.deepEqual(store.getChunks(r.chunkIds).map((c) => c.ordinal), r.chunkIds.map((_, i) => i));
      assert.equal(stored.tokens, r.tokens);
      assert.equal(stored.vectors, r.vectors);
    }
    const stats = store.stats();
    assert.equal(stats.documents, 2);
    assert.ok(stats.ratio > 7.5 && stats.ratio <= 8, `ratio ${stats.ratio}`);

    const hits = store.retrieve("which ship left the harbour", { k: 2 });
    assert.ok(hits.length > 0);
    assert.equal(hits[0].source, "ships.txt");
    assert.equal(hits[0].group, "demo");

    // The streamed answer equals a manual prefill of the same vectors followed by the same prompt.
    const model = compressor.model;
    let stats2: { prefixPositions: number } | undefined;
    let text = "";
    for await (
      const p of answerFromChunks(model, hits, "Which ship left?", {
        maxTokens: 8,
        temperature: 0,
        ignoreEos: true,
        onStats: (s) => (stats2 = s),
      })
    ) text += p;
    assert.equal(stats2!.prefixPositions, hits.reduce((n, h) => n + h.vectors.rows, 0));
    using s = model.session({ contextSize: 256 });
    const prefix = new Float32Array(hits.flatMap((h) => Array.from(h.vectors.data)));
    await s.prefillEmbeddings(prefix);
    let manual = "";
    const prompt = model.encodePrompt("Which ship left?", { chat: model.tokenizer.hasChatTemplate });
    for await (const p of s.generate({ prompt, maxTokens: 8, temperature: 0, ignoreEos: true })) manual += p;
    assert.equal(text, manual);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("lloco: an aborted compression commits nothing for that document", async () => {
  const dir = await tempDir();
  try {
    const kv = await testEngine();
    using compressor = await Compressor.load(
      kv,
      await testModel("compressor", TEST_COMPRESSOR),
    );
    using store = DocumentStore.open(`${dir}/kb.sqlite`);
    await compressIntoStore(compressor, store, DOCS[0], { chunkTokens: 64, segmentLength: 32 });
    const ac = new AbortController();
    await assert.rejects(() =>
      compressIntoStore(compressor, store, DOCS[1], {
        chunkTokens: 64,
        segmentLength: 32,
        signal: ac.signal,
        onProgress: (done) => done > 40 && ac.abort(),
      }), (e: unknown) => e instanceof KvfoldError && e.code === "ABORTED");
    assert.equal(store.hasDocument(DOCS[0].source), true);
    assert.equal(store.hasDocument(DOCS[1].source), false);
    assert.equal(store.stats().documents, 1);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("lloco: the CLI compresses files with progress, reports stats and answers", async () => {
  const dir = await tempDir();
  try {
    const run = runCli;
    const model = await testModel("compressor", TEST_COMPRESSOR);
    for (const d of DOCS) Deno.writeTextFileSync(`${dir}/${d.source}`, d.text);
    const c = await run(
      "compress",
      "--compressor",
      model,
      "--store",
      `${dir}/kb.sqlite`,
      "--group",
      "g1",
      "--chunk-tokens",
      "64",
      "--segment-length",
      "32",
      `${dir}/ships.txt`,
      `${dir}/bees.txt`,
    );
    assert.equal(c.code, 0, c.err);
    assert.match(c.err, /tok\/s, ETA/);
    assert.match(c.err, /ships\.txt: \d+ tokens -> \d+ vectors/);
    const st = await run("store", "stats", `${dir}/kb.sqlite`);
    assert.equal(st.code, 0, st.err);
    assert.match(st.out, /documents:\s+2/);
    assert.match(st.out, /groups: g1/);
    const a = await run(
      "ask",
      "--model",
      model,
      "--store",
      `${dir}/kb.sqlite`,
      "--max-tokens",
      "4",
      "--temperature",
      "0",
      "honey market",
    );
    assert.equal(a.code, 0, a.err);
    assert.match(a.err, /retrieved .*bees\.txt/);
    assert.match(a.err, /prefix positions for \d+ context tokens; \d+ prompt tokens; adapter none/);
    // The group's LoRA (g1=DIR) is picked by the retrieved chunks' group, as the API picks it.
    const lora = `${dir}/g1-lora`;
    const made = await run("make-test-model", lora, "--preset", "lora", "--base", model, "--rank", "4");
    assert.equal(made.code, 0, made.err);
    const q = [
      "ask",
      "--model",
      model,
      "--store",
      `${dir}/kb.sqlite`,
      "--max-tokens",
      "6",
      "--temperature",
      "0",
    ];
    const withLora = await run(...q, "--adapter", `g1=${lora}`, "honey market");
    assert.equal(withLora.code, 0, withLora.err);
    assert.match(withLora.err, /adapter g1;/);
    const kv = await testEngine();
    using m = await kv.loadModel(model);
    using store = DocumentStore.open(`${dir}/kb.sqlite`, { readOnly: true });
    const chunks = store.retrieve("honey market", { k: 2 });
    const answer = async () => {
      let text = "";
      for await (const p of answerFromChunks(m, chunks, "honey market", { maxTokens: 6, temperature: 0 })) {
        text += p;
      }
      return text;
    };
    const plain = await answer();
    // --cache: an h2o cache larger than the context answers exactly as the full cache; a tiny
    // streaming window runs too (the prefix is then mostly evicted).
    const h2o = await run(...q, "--cache", "h2o", "--slots", "4096", "honey market");
    assert.equal(h2o.code, 0, h2o.err);
    assert.equal(h2o.out, plain + "\n");
    const streaming = await run(
      ...q,
      "--cache",
      "streaming",
      "--window",
      "8",
      "--segment",
      "4",
      "honey market",
    );
    assert.equal(streaming.code, 0, streaming.err);
    await m.adapters.load(lora, { name: "g1" });
    assert.equal(withLora.out, (await answer()) + "\n");
    assert.notEqual(withLora.out, plain + "\n", "the adapter changed nothing");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

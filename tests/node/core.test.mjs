// The core API under Node.js/Bun, through the package's public entry points: model loading, the
// forward pass against the float64 reference, the embedding-prefix identity, KV-cache decode,
// greedy and seeded generation, streaming with abort, LoRA adapters in a mixed batch, and the store.
import { DocumentStore, KvfoldError, LoraTrainer } from "kvfold";
import { makeTestAdapter, makeTestLococoHeads } from "kvfold/test-model";
import assert from "node:assert/strict";
import { readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { after, test } from "node:test";
import { readSafetensorsFile, toFloat32 } from "../../dist/src/formats/safetensors.js";
import { loadReferenceModel, referenceLogits } from "../../dist/tests/reference_forward.js";
import {
  collect,
  relativeError,
  removeTestModels,
  someIds,
  tempDir,
  testEngine,
  testModel,
} from "./_fixtures.mjs";

after(removeTestModels);

/** The rows of the model's embedding table for `ids`, as one [ids.length, hidden] block. */
async function embeddingRows(dir, ids) {
  const f = await readSafetensorsFile(`${dir}/model.safetensors`);
  const t = f.tensors.get("model.embed_tokens.weight");
  const table = toFloat32(t), H = t.shape[1];
  const out = new Float32Array(ids.length * H);
  ids.forEach((id, i) => out.set(table.subarray(id * H, (id + 1) * H), i * H));
  return out;
}

test("model: info reflects config.json", async () => {
  const dir = await testModel("gqa", { seed: 11 });
  const cfg = JSON.parse(await readFile(join(dir, "config.json"), "utf8"));
  const kv = await testEngine();
  const model = await kv.loadModel(dir);
  try {
    assert.equal(model.info.vocabSize, cfg.vocab_size);
    assert.equal(model.info.hiddenSize, cfg.hidden_size);
    assert.equal(model.info.layers, cfg.num_hidden_layers);
    assert.equal(model.info.heads, cfg.num_attention_heads);
    assert.equal(model.info.kvHeads, cfg.num_key_value_heads);
    assert.equal(model.info.modelType, "llama");
    assert.deepEqual(model.tokenizer.decode(model.tokenizer.encode("the ship left")), "the ship left");
  } finally {
    model.dispose();
  }
});

test("forward: every position's logits match the float64 reference", async () => {
  const dir = await testModel("gqa", { seed: 11 });
  const kv = await testEngine();
  const model = await kv.loadModel(dir);
  try {
    const s = model.session({ contextSize: 64, batchSize: 8 });
    const ids = someIds(19, model.info.vocabSize, 5);
    const got = await s.prefill(ids, { logits: "all" });
    assert.equal(got.length, ids.length * model.info.vocabSize);
    const want = referenceLogits(await loadReferenceModel(dir), ids);
    const err = relativeError(got, want);
    assert.ok(err < 1e-4, `relative error ${err.toExponential(2)}`);
    s.dispose();
  } finally {
    model.dispose();
  }
});

test("embeddings: prefix rows equal to token embeddings give exactly the tokens' logits", async () => {
  const dir = await testModel("gqa", { seed: 11 });
  const kv = await testEngine();
  const model = await kv.loadModel(dir);
  try {
    const V = model.info.vocabSize;
    const prefix = someIds(7, V, 31), prompt = someIds(5, V, 32);
    const a = model.session({ contextSize: 32 });
    await a.prefill(prefix);
    await a.prefill(prompt);
    const b = model.session({ contextSize: 32 });
    await b.prefillEmbeddings(await embeddingRows(dir, prefix));
    await b.prefill(prompt);
    assert.equal(b.position, 12);
    assert.deepEqual(b.logits(), a.logits());
    a.dispose();
    b.dispose();
  } finally {
    model.dispose();
  }
});

test("decode: the KV cache gives the logits of a full recompute", async () => {
  const kv = await testEngine();
  const model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  try {
    const ids = someIds(10, model.info.vocabSize, 9);
    const a = model.session({ contextSize: 32 });
    await a.prefill(ids.slice(0, 7));
    for (const id of ids.slice(7)) await a.decode(id);
    const b = model.session({ contextSize: 32 });
    await b.prefill(ids);
    assert.equal(a.position, 10);
    assert.ok(relativeError(a.logits(), b.logits()) < 1e-5);
    a.dispose();
    b.dispose();
  } finally {
    model.dispose();
  }
});

test("generate: greedy follows the argmax and repeats; a seed reproduces its sample", async () => {
  const kv = await testEngine();
  const model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  try {
    const prompt = someIds(6, model.info.vocabSize, 12);
    const run = async (options) => {
      const s = model.session({ contextSize: 64 });
      const text = await collect(s.generate({ prompt, maxTokens: 10, ignoreEos: true, ...options }));
      const stats = s.lastStats;
      s.dispose();
      return { text, tokens: stats.tokens, stats };
    };
    const g1 = await run({ temperature: 0 });
    const g2 = await run({ temperature: 0 });
    assert.deepEqual(g1.tokens, g2.tokens);
    assert.equal(g1.text, g2.text);
    assert.equal(g1.stats.generatedTokens, 10);
    assert.equal(g1.stats.stopReason, "max-tokens");
    assert.equal(g1.text, model.tokenizer.decode(g1.tokens));
    // The first greedy token is the argmax of the prompt's last logits.
    const s = model.session({ contextSize: 64 });
    await s.prefill(prompt);
    const logits = s.logits();
    s.dispose();
    assert.equal(g1.tokens[0], logits.indexOf(Math.max(...logits)));

    const a = await run({ temperature: 1, seed: 7 });
    const b = await run({ temperature: 1, seed: 7 });
    const c = await run({ temperature: 1, seed: 8 });
    assert.deepEqual(a.tokens, b.tokens);
    assert.notDeepEqual(a.tokens, c.tokens);
  } finally {
    model.dispose();
  }
});

test("generate: streaming abort stops within one decode step and leaves the session usable", async () => {
  const kv = await testEngine();
  const model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  try {
    const s = model.session({ contextSize: 128 });
    const ac = new AbortController();
    let pieces = 0;
    await assert.rejects(
      async () => {
        for await (
          // A piece per token (streamIntervalMs 0), so the abort lands after the third.
          const _ of s.generate({
            prompt: [1, 2, 3],
            maxTokens: 100,
            temperature: 0,
            signal: ac.signal,
            streamIntervalMs: 0,
          })
        ) {
          if (++pieces === 3) ac.abort(new Error("user pressed stop"));
        }
      },
      (e) => e instanceof KvfoldError && e.code === "ABORTED",
    );
    assert.equal(pieces, 3);
    assert.ok(s.position <= 3 + 3, `position ${s.position}`);
    const more = await collect(s.generate({ maxTokens: 2, temperature: 0, ignoreEos: true }));
    assert.equal(s.lastStats.generatedTokens, 2);
    assert.equal(typeof more, "string");
    s.dispose();
  } finally {
    model.dispose();
  }
});

test("errors: bad token ids are refused by native code with its message; state is kept", async () => {
  const kv = await testEngine();
  const model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  try {
    const s = model.session({ contextSize: 8 });
    const V = model.info.vocabSize;
    await assert.rejects(
      () => s.prefill([1, V]),
      (e) =>
        e instanceof KvfoldError && e.code === "INVALID_ARGUMENT" &&
        e.message.includes(`token id ${V} at index 1 is outside [0, ${V})`),
    );
    await s.prefill([1, 2, 3, 4, 5, 6]);
    await assert.rejects(
      () => s.prefill([1, 2, 3]),
      (e) => e instanceof KvfoldError && e.code === "INVALID_STATE" && /exceed n_ctx 8/.test(e.message),
    );
    assert.equal(s.position, 6);
    s.dispose();
    assert.throws(() => s.logits(), (e) => e instanceof KvfoldError && e.code === "DISPOSED");
  } finally {
    model.dispose();
  }
});

test("lora: a mixed-adapter batch decode equals each session decoding alone", async () => {
  const kv = await testEngine();
  const base = await testModel("gqa", { seed: 11 });
  const dir = await tempDir();
  const model = await kv.loadModel(base);
  try {
    await makeTestAdapter(join(dir, "a"), { base, seed: 31 });
    await makeTestAdapter(join(dir, "b"), { base, seed: 32, rank: 4, targetModules: ["q_proj", "v_proj"] });
    const a = await model.adapters.load(join(dir, "a"));
    await model.adapters.load(join(dir, "b"));
    assert.equal(a.name, "a");
    assert.equal(a.info.rank, 8);
    const plan = ["a", "b", null, "a"];
    const prompts = plan.map((_, i) => someIds(3 + i, model.info.vocabSize, 40 + i));
    const next = plan.map((_, i) => 10 + i);
    const solo = [];
    for (let i = 0; i < plan.length; i++) {
      const s = model.session({ contextSize: 32 });
      await s.prefill(prompts[i], { adapter: plan[i] });
      await s.decode(next[i]);
      solo.push(s.logits());
      s.dispose();
    }
    // The adapter matters, or this test could not fail.
    assert.ok(relativeError(solo[0], solo[2]) > 1e-3 || plan[0] === plan[2]);
    const sessions = plan.map(() => model.session({ contextSize: 32 }));
    for (let i = 0; i < plan.length; i++) await sessions[i].prefill(prompts[i], { adapter: plan[i] });
    await model.decodeBatch(sessions.map((session, i) => ({ session, token: next[i] })));
    for (let i = 0; i < plan.length; i++) {
      assert.equal(sessions[i].position, prompts[i].length + 1);
      const err = relativeError(sessions[i].logits(), solo[i]);
      assert.ok(err < 1e-5, `row ${i}: relative error ${err}`);
    }
    const withA = model.session({ contextSize: 32 });
    const without = model.session({ contextSize: 32 });
    await withA.prefill(prompts[0], { adapter: "a" });
    await without.prefill(prompts[0]);
    assert.ok(relativeError(withA.logits(), without.logits()) > 1e-3, "adapter a changed nothing");
    for (const s of [...sessions, withA, without]) s.dispose();
  } finally {
    model.dispose();
    await rm(dir, { recursive: true, force: true });
  }
});

test("store: documents, chunks and vectors persist in the SQLite file across reopening", async () => {
  const dir = await tempDir();
  const path = join(dir, "kb.sqlite");
  try {
    const vectors = { rows: 2, hidden: 3, data: Float32Array.from([1, 2, 3, 4, 5, 6.5]) };
    const store = DocumentStore.open(path);
    const documentId = store.addDocument({
      source: "ships.txt",
      group: "demo",
      metadata: { year: 1893 },
      chunks: [
        { text: "The ship Aurora left the harbour at dawn.", tokens: 9, vectors },
        { text: "Bees keep the orchard alive.", tokens: 6, vectors },
      ],
    });
    assert.ok(documentId > 0);
    store.close();

    const again = DocumentStore.open(path, { readOnly: true });
    try {
      assert.ok(again.hasDocument("ships.txt"));
      const hits = again.retrieve("which ship left the harbour", { k: 1 });
      assert.equal(hits.length, 1);
      assert.equal(hits[0].source, "ships.txt");
      assert.match(hits[0].text, /Aurora/);
      assert.equal(hits[0].group, "demo");
      assert.deepEqual(Array.from(hits[0].vectors.data), [1, 2, 3, 4, 5, 6.5]);
      assert.equal(again.stats().documents, 1);
    } finally {
      again.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("lococo cache: equal to the full cache until it compresses, then bounded at M + B slots", async () => {
  const dir = await testModel("gqa", { seed: 11 });
  const tmp = await tempDir();
  const kv = await testEngine();
  const model = await kv.loadModel(dir);
  try {
    const path = join(tmp, "heads.safetensors");
    await makeTestLococoHeads(path, { base: dir, slots: 24, segment: 16, kernel: 5, seed: 5 });
    const heads = model.loadLococoHeads(path);
    const ids = someIds(200, model.info.vocabSize, 9);
    const full = model.session({ batchSize: 16 });
    const s = model.session({ cache: { kind: "lococo", heads } });
    const want = await full.prefill(ids.slice(0, 48), { logits: "all" });
    assert.deepEqual(await s.prefill(ids.slice(0, 48), { logits: "all" }), want); // 48 slots: not compressed yet
    await s.prefill(ids.slice(48));
    const m = s.memory();
    assert.equal(m.cacheKind, "lococo");
    assert.equal(m.position, 200);
    assert.ok(m.compressions >= 4, `${m.compressions} compressions`);
    assert.ok(m.kvSlotsPeak <= 24 + 16 + 16, `peak ${m.kvSlotsPeak}`);
    const { keys, scores } = s.readCache(0);
    assert.equal(keys.length, m.kvSlotsUsed * model.info.kvHeads * model.info.headDim);
    assert.equal(scores.length, m.kvSlotsUsed * model.info.kvHeads);
    assert.throws(() => heads.dispose(), /session\(s\) are using them/);
    s.dispose();
    full.dispose();
  } finally {
    model.dispose();
    await rm(tmp, { recursive: true, force: true });
  }
});

test("training: a LoRA step through the native backward pass changes the loss, and tensors round-trip", async () => {
  const dir = await testModel("gqa", { seed: 11 });
  const kv = await testEngine();
  const model = await kv.loadModel(dir);
  try {
    const tr = LoraTrainer.create(model, {
      rank: 2,
      targets: ["q_proj", "v_proj"],
      learningRate: 0.05,
      seed: 1,
    });
    const ids = someIds(12, model.info.vocabSize, 3);
    const labels = ids.map((_, t) => (t >= 6 ? ids[(t + 1) % ids.length] : -1));
    const first = await tr.accumulate({ ids, labels });
    const step = tr.step();
    assert.equal(step.step, 1);
    assert.ok(step.gradNorm > 0);
    for (let i = 0; i < 5; i++) {
      await tr.accumulate({ ids, labels });
      tr.step();
    }
    const later = await tr.accumulate({ ids, labels });
    assert.ok(later < first, `${first} -> ${later}`);
    const b = tr.read(0, "v_proj", "B");
    assert.ok(b.some((x) => x !== 0));
    tr.write(0, "v_proj", "B", b.map((x) => x * 2));
    assert.deepEqual(tr.read(0, "v_proj", "B"), b.map((x) => x * 2));
    tr.dispose();
  } finally {
    model.dispose();
  }
});

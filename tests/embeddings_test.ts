// Embedding-prefix prefill (the LLoCO decode path): rows of input embeddings at positions 0..K-1,
// then prompt tokens from K on.
import assert from "node:assert/strict";
import { KvfoldError } from "../mod.ts";
import { f32ToBf16, readSafetensorsFile, toFloat32 } from "../src/formats/safetensors.ts";
import { loadReferenceModel, referenceLogits } from "./reference_forward.ts";
import { relativeError, someIds, testEngine, testModel } from "./_fixtures.ts";

async function embeddingRows(dir: string, ids: number[]): Promise<Float32Array> {
  const f = await readSafetensorsFile(`${dir}/model.safetensors`);
  const table = toFloat32(f.tensors.get("model.embed_tokens.weight")!);
  const H = f.tensors.get("model.embed_tokens.weight")!.shape[1];
  const out = new Float32Array(ids.length * H);
  ids.forEach((id, i) => out.set(table.subarray(id * H, (id + 1) * H), i * H));
  return out;
}

Deno.test("embeddings: prefix rows equal to token embeddings give exactly the tokens' logits", async () => {
  const dir = await testModel("gqa", { seed: 11 });
  const kv = await testEngine();
  using model = await kv.loadModel(dir);
  const prefix = someIds(7, model.info.vocabSize, 31), prompt = someIds(5, model.info.vocabSize, 32);
  // Same chunking on both sides (7 then 5), so the arithmetic is identical to the bit.
  using a = model.session({ contextSize: 32 });
  await a.prefill(prefix);
  await a.prefill(prompt);
  using b = model.session({ contextSize: 32 });
  await b.prefillEmbeddings(await embeddingRows(dir, prefix));
  await b.prefill(prompt);
  assert.equal(b.position, 12);
  assert.deepEqual(b.logits(), a.logits());
  // And within float tolerance of running all 12 tokens as one chunk.
  using c = model.session({ contextSize: 32 });
  await c.prefill([...prefix, ...prompt]);
  assert.ok(relativeError(b.logits(), c.logits()) < 1e-5);
});

Deno.test("embeddings: random prefix vectors match the float64 reference, then generation continues", async () => {
  const dir = await testModel("qwen2-bias", { modelType: "qwen2", seed: 11 });
  const kv = await testEngine();
  using model = await kv.loadModel(dir);
  const H = model.info.hiddenSize, K = 6;
  const vectors = new Float32Array(K * H);
  let x = 17;
  for (let i = 0; i < vectors.length; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    vectors[i] = ((x >>> 8) / (1 << 24) - 0.5) * 0.4;
  }
  const ids = someIds(9, model.info.vocabSize, 40);
  using s = model.session({ contextSize: 64, batchSize: 4 });
  await s.prefillEmbeddings(vectors);
  const got = (await s.prefill(ids, { logits: "all" }))!;
  const want = referenceLogits(await loadReferenceModel(dir), ids, {
    prefixEmbeddings: Float64Array.from(vectors),
  });
  const err = relativeError(got, want);
  assert.ok(err < 1e-4, `relative error ${err.toExponential(2)}`);
  let n = 0;
  for await (const _ of s.generate({ maxTokens: 4, temperature: 0, ignoreEos: true })) n++;
  assert.equal(s.lastStats!.generatedTokens, 4);
});

Deno.test("embeddings: bf16 rows are read as bf16 (same result as their f32 values)", async () => {
  const dir = await testModel("gqa", { seed: 11 });
  const kv = await testEngine();
  using model = await kv.loadModel(dir);
  const rows = await embeddingRows(dir, [5, 6, 7]);
  const bf16 = Uint16Array.from(rows, (v) => f32ToBf16(v));
  const rounded = Float32Array.from(bf16, (b) => new Float32Array(new Uint32Array([b << 16]).buffer)[0]);
  using a = model.session({ contextSize: 8 });
  using b = model.session({ contextSize: 8 });
  const la = await a.prefillEmbeddings(bf16, { dtype: "bf16", logits: "all" });
  const lb = await b.prefillEmbeddings(rounded, { logits: "all" });
  assert.deepEqual(la, lb);
});

Deno.test("embeddings: wrong hidden size, NaN/Inf and an empty block are refused clearly", async () => {
  const kv = await testEngine();
  using model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  using s = model.session({ contextSize: 16 });
  const H = model.info.hiddenSize;
  const bad = (p: () => Promise<unknown>, re: RegExp) =>
    assert.rejects(
      p,
      (e: unknown) => e instanceof KvfoldError && e.code === "INVALID_ARGUMENT" && re.test(e.message),
    );
  await bad(
    () => s.prefillEmbeddings(new Float32Array(H + 3)),
    /not a whole number of rows of the hidden size/,
  );
  await bad(() => s.prefillEmbeddings(new Float32Array(0)), /empty/);
  const nan = new Float32Array(2 * H);
  nan[H + 5] = NaN;
  await bad(() => s.prefillEmbeddings(nan), /row 1, column 5 is NaN/);
  const inf = new Float32Array(H);
  inf[0] = -Infinity;
  await bad(() => s.prefillEmbeddings(inf), /row 0, column 0 is infinite/);
  await assert.rejects(() => s.prefillEmbeddings(new Uint16Array(H)), TypeError);
  assert.equal(s.position, 0);
  await assert.rejects(
    () => s.prefillEmbeddings(new Float32Array(17 * H)),
    (e: unknown) =>
      e instanceof KvfoldError && e.code === "INVALID_STATE" && /exceed n_ctx 16/.test(e.message),
  );
});

// The AutoCompressor path: KV-reusing compression against a float64 reference that recomputes the
// whole accumulated prefix every segment, exactly as DESIGN.md states the semantics.
import assert from "node:assert/strict";
import { KvfoldError } from "../mod.ts";
import { Compressor } from "../src/compressor.ts";
import { compressChunks } from "../src/lloco.ts";
import { ModelTrainer } from "../src/model_train.ts";
import { embedTokens, loadReferenceModel, referenceHidden } from "./reference_forward.ts";
import { relativeError, someIds, tempDir, TEST_COMPRESSOR, testEngine, testModel } from "./_fixtures.ts";

const S = TEST_COMPRESSOR.summaryLength!; // summary_length of the test compressor

/** Float64 reference: every segment from scratch over [summaries so far | segment | summary rows]. */
async function referenceCompress(dir: string, ids: number[], segLen: number): Promise<Float64Array> {
  const ref = await loadReferenceModel(dir);
  const H = ref.config.hiddenSize;
  const rows = ref.tensors.get("embed_summary.weight")!;
  const acc: number[] = [];
  for (let off = 0; off < ids.length; off += segLen) {
    const seg = embedTokens(ref, ids.slice(off, off + segLen));
    const inputs = Float64Array.from([...acc, ...seg, ...rows]);
    const hidden = referenceHidden(ref, inputs);
    acc.push(...hidden.subarray(hidden.length - S * H));
  }
  return Float64Array.from(acc);
}

Deno.test("compressor: KV-reusing compression equals recompute-every-segment in float64", async () => {
  const dir = await testModel("compressor", TEST_COMPRESSOR);
  const kv = await testEngine();
  using c = await Compressor.load(kv, dir);
  assert.equal(c.summaryLength, S);
  // 3 segments of 16 and a last, shorter one of 5.
  const ids = someIds(53, c.model.info.vocabSize, 77);
  const seen: number[] = [];
  const got = await c.compress(ids, { segmentLength: 16, onProgress: (d) => seen.push(d) });
  assert.equal(got.rows, 4 * S);
  assert.equal(got.tokens, 53);
  assert.deepEqual(seen, [16, 32, 48, 53]);
  const want = await referenceCompress(dir, ids, 16);
  const err = relativeError(got.data, want);
  assert.ok(err < 1e-4, `relative error ${err.toExponential(2)}`);
});

Deno.test("compressor: compressing in one segment equals the first summaries of a longer document", async () => {
  const dir = await testModel("compressor", TEST_COMPRESSOR);
  const kv = await testEngine();
  using c = await Compressor.load(kv, dir);
  const ids = someIds(40, c.model.info.vocabSize, 5);
  const long = await c.compress(ids, { segmentLength: 20 });
  const first = await c.compress(ids.slice(0, 20), { segmentLength: 20 });
  const H = c.model.info.hiddenSize;
  assert.ok(relativeError(first.data, long.data.subarray(0, S * H)) < 1e-6);
  // ...and the second segment's summaries depend on the first's (they are not the segment alone).
  const alone = await c.compress(ids.slice(20), { segmentLength: 20 });
  assert.ok(relativeError(alone.data, long.data.subarray(S * H)) > 1e-3);
});

Deno.test("compressor: empty documents, non-compressor checkpoints and aborts are refused clearly", async () => {
  const kv = await testEngine();
  using c = await Compressor.load(kv, await testModel("compressor", TEST_COMPRESSOR));
  await assert.rejects(
    () => c.compress([]),
    (e: unknown) => e instanceof KvfoldError && /document is empty/.test(e.message),
  );
  await assert.rejects(
    () => Compressor.load(kv, "/nonexistent-compressor"),
    (e: unknown) =>
      e instanceof KvfoldError && e.code === "FORMAT" && /embed_summary\.weight/.test(e.message),
  );
  await assert.rejects(
    async () => Compressor.load(kv, await testModel("gqa", { seed: 11 })),
    (e: unknown) => e instanceof KvfoldError && /not an AutoCompressor checkpoint/.test(e.message),
  );
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(
    () => c.compress(someIds(40, 500), { segmentLength: 8, signal: ac.signal }),
    (e: unknown) => e instanceof KvfoldError && e.code === "ABORTED",
  );
});

Deno.test("compressor: a trained checkpoint compresses by default with the segment length it was trained with", async () => {
  const kv = await testEngine();
  const base = await testModel("compressor-segment-base", { seed: 13, numHeads: 4, numKeyValueHeads: 2 });
  const dir = await tempDir();
  {
    using model = await kv.loadModel(base);
    using tr = ModelTrainer.create(model, { summaryLength: 2, segmentLength: 12, seed: 3 });
    await tr.saveModel(dir);
  }
  const config = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
  assert.equal(config.segment_length, 12);
  assert.equal(config.summary_length, 2);
  using c = await Compressor.load(kv, dir);
  assert.equal(c.segmentLength, 12);
  const ids = someIds(30, c.model.info.vocabSize, 8);
  const byDefault = await c.compress(ids);
  // 3 segments of 12, 12 and 6 tokens: the same bits as asking for 12, not LLoCO's 1536 (one segment).
  assert.equal(byDefault.rows, 3 * 2);
  assert.deepEqual(byDefault.data, (await c.compress(ids, { segmentLength: 12 })).data);
  assert.equal((await c.compress(ids, { segmentLength: 1536 })).rows, 2);
  // compressChunks takes it too: a 30-token chunk in segments of 12, not one of chunkTokens.
  const { chunks } = await compressChunks(c, { source: "a", text: c.model.tokenizer.decode(ids) }, {
    chunkTokens: 64,
  });
  const chunkIds = c.model.tokenizer.encode(c.model.tokenizer.decode(ids));
  assert.equal(chunks[0].vectors.rows, Math.ceil(chunkIds.length / 12) * 2);
  // A checkpoint whose config does not say keeps 1536.
  using plain = await Compressor.load(kv, await testModel("compressor", TEST_COMPRESSOR));
  assert.equal(plain.segmentLength, undefined);
  assert.equal((await plain.compress(someIds(40, plain.model.info.vocabSize, 2))).rows, S);
});

Deno.test("compressor: a segment_length that is not a positive integer is refused, naming it", async () => {
  const kv = await testEngine();
  const src = await testModel("compressor", TEST_COMPRESSOR);
  for (const bad of ["12", 0, -4, 2.5, null, 2 ** 31]) {
    const dir = await tempDir();
    for await (const e of Deno.readDir(src)) await Deno.copyFile(`${src}/${e.name}`, `${dir}/${e.name}`);
    const config = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify({ ...config, segment_length: bad }));
    await assert.rejects(
      () => Compressor.load(kv, dir),
      (e: unknown) =>
        e instanceof KvfoldError && e.code === "FORMAT" &&
        /segment_length .* not a positive integer/.test(e.message),
      `segment_length ${JSON.stringify(bad)}`,
    );
  }
});

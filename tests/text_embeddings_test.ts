// Model.embed: pooled, normalised final-normed hidden states, checked against the float64 reference.
import assert from "node:assert/strict";
import type { EmbeddingPooling, Model } from "../mod.ts";
import { embedTokens, loadReferenceModel, referenceHidden } from "./reference_forward.ts";
import { relativeError, someIds, testEngine, testModel } from "./_fixtures.ts";
import { rejectsWith } from "./_kvfold_asserts.ts";

const TEXTS = [
  "The river town woke slowly on the first cold morning.",
  "A library is a quiet machine for remembering.",
  "Computers read text by splitting it into tokens.",
  "ok",
];

// The reference's pooling, in float64: rows [from, to) averaged, then L2-normalised.
function referencePool(hidden: Float64Array, H: number, from: number, to: number): Float64Array {
  const v = new Float64Array(H);
  for (let r = from; r < to; r++) for (let j = 0; j < H; j++) v[j] += hidden[r * H + j] / (to - from);
  const norm = Math.hypot(...v);
  return v.map((x) => x / norm);
}

function norm(v: Float32Array): number {
  return Math.hypot(...v);
}

async function loaded(name: string, options: Parameters<typeof testModel>[1]): Promise<[Model, string]> {
  const dir = await testModel(name, options);
  return [await (await testEngine()).loadModel(dir), dir];
}

for (
  const [name, options] of [["gqa", { seed: 11 }], ["qwen2-bias", { modelType: "qwen2", seed: 11 }]] as const
) {
  Deno.test(`text embeddings (${name}): mean and last pooling match the float64 reference`, async () => {
    const [model, dir] = await loaded(name, options);
    using _ = model;
    const ref = await loadReferenceModel(dir);
    const H = model.info.hiddenSize, bos = model.tokenizer.bosTokenId;
    for (const pooling of ["mean", "last"] as EmbeddingPooling[]) {
      const got = await model.embed(TEXTS, { pooling });
      assert.equal(got.length, TEXTS.length);
      TEXTS.forEach((text, i) => {
        const ids = model.encodePrompt(text);
        assert.equal(ids[0], bos, "the test tokenizer adds BOS");
        const hidden = referenceHidden(ref, embedTokens(ref, ids));
        const want = pooling === "mean"
          ? referencePool(hidden, H, 1, ids.length) // BOS is run, not pooled
          : referencePool(hidden, H, ids.length - 1, ids.length);
        assert.equal(got[i].length, H);
        const err = relativeError(got[i], want);
        assert.ok(err < 1e-4, `${pooling} text ${i}: relative error ${err.toExponential(2)}`);
      });
    }
  });
}

Deno.test("text embeddings: a batch gives the same vectors as one text at a time, each of norm 1", async () => {
  const [model] = await loaded("gqa", { seed: 11 });
  using _ = model;
  for (const pooling of ["mean", "last"] as EmbeddingPooling[]) {
    const batch = await model.embed(TEXTS, { pooling });
    for (const [i, text] of TEXTS.entries()) {
      const [alone] = await model.embed([text], { pooling });
      assert.deepEqual(alone, batch[i], `${pooling} text ${i}`);
      assert.ok(Math.abs(norm(batch[i]) - 1) < 1e-6, `norm ${norm(batch[i])}`);
    }
  }
  // Different texts give different vectors (the pooling is not a constant).
  const [a, b] = await model.embed(TEXTS.slice(0, 2));
  assert.ok(relativeError(a, b) > 1e-2);
});

Deno.test("text embeddings: the same text gives the same vector; one token pools the same both ways", async () => {
  const [model] = await loaded("gqa", { seed: 11 });
  using _ = model;
  const twice = await model.embed([TEXTS[0], TEXTS[1], TEXTS[0]]);
  assert.deepEqual(twice[2], twice[0]);
  assert.deepEqual((await model.embed([TEXTS[0]]))[0], twice[0]);
  // A text of one token (after BOS): its mean over one row is that row.
  const one = "The";
  assert.equal(model.encodePrompt(one).length, 2, "one token after BOS");
  const [mean] = await model.embed([one], { pooling: "mean" });
  const [last] = await model.embed([one], { pooling: "last" });
  assert.deepEqual(mean, last);
  // An empty text still has BOS to run, and pools from it.
  const [empty] = await model.embed([""]);
  assert.ok(Math.abs(norm(empty) - 1) < 1e-6);
  assert.deepEqual(await model.embed([]), []);
});

Deno.test("text embeddings: prefill's hiddenOut equals prefillEmbeddings' for the same rows", async () => {
  const [model, dir] = await loaded("gqa", { seed: 11 });
  using _ = model;
  const ref = await loadReferenceModel(dir);
  const ids = someIds(9, model.info.vocabSize, 5);
  const H = model.info.hiddenSize;
  using a = model.session({ contextSize: 16 });
  const byIds = new Float32Array(ids.length * H);
  await a.prefill(ids, { hiddenOut: byIds });
  using b = model.session({ contextSize: 16 });
  const byRows = new Float32Array(ids.length * H);
  await b.prefillEmbeddings(Float32Array.from(embedTokens(ref, ids)), { hiddenOut: byRows });
  assert.deepEqual(byIds, byRows);
  assert.deepEqual(a.logits(), b.logits());
  await assert.rejects(a.prefill(ids, { hiddenOut: new Float32Array(3) }), {
    name: "RangeError",
    message: `Cannot prefill: hiddenOut holds 3 floats, ${ids.length * H} needed`,
  });
  assert.equal(a.position, ids.length, "a refused call runs nothing");
});

Deno.test("text embeddings: bad texts, pooling, too-long texts and an abort are refused clearly", async () => {
  const [model] = await loaded("gqa", { seed: 11 });
  using _ = model;
  await assert.rejects(model.embed("a text" as unknown as string[]), {
    name: "TypeError",
    message: "Cannot embed: texts must be an array of strings, got string a text",
  });
  await assert.rejects(model.embed(["a", 3 as unknown as string]), {
    name: "TypeError",
    message: "Cannot embed: text 1 is number 3, not a string",
  });
  await assert.rejects(model.embed(["a"], { pooling: "max" as EmbeddingPooling }), {
    name: "RangeError",
    message: 'Cannot embed: pooling "max" is not one of mean, last',
  });
  const long = "river town ".repeat(model.info.maxPositions);
  await rejectsWith(
    model.embed(["short", long]),
    "INVALID_ARGUMENT",
    /^Cannot embed: text 1 has \d+ tokens, more than the model's 256 positions/,
  );
  const ctl = new AbortController();
  ctl.abort();
  await rejectsWith(model.embed(["a"], { signal: ctl.signal }), "ABORTED", /^Cannot embed: aborted$/);
  const seen: number[] = [];
  const later = new AbortController();
  await rejectsWith(
    model.embed(TEXTS, {
      signal: later.signal,
      onProgress: (done) => {
        seen.push(done);
        if (done === 2) later.abort();
      },
    }),
    "ABORTED",
    /aborted/,
  );
  assert.deepEqual(seen, [1, 2]);
});

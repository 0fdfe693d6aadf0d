// Compressor training with several question/answer pairs over one document: the QA loss is one mean
// over every answer token of every pair, each pair its own [summaries | question | answer] pass. The
// 2- and 3-pair gradients against central finite differences of the float64 reference
// (tests/_reference_train.ts), the one-pair call against the old call bit for bit, and refusals.
import assert from "node:assert/strict";
import { ModelTrainer } from "../src/model_train.ts";
import { ControlBlock, Status, sym } from "../src/_binding.ts";
import type { ReferenceModel } from "./reference_forward.ts";
import { referenceCompressor, type ReferenceDocument } from "./_reference_train.ts";
import {
  checkCompressorTensors,
  COMPRESSOR_SETTINGS,
  compressorDocument,
  compressorSetup,
} from "./_compressor_grad_check.ts";
import { someIds } from "./_fixtures.ts";
import { rejectsWith } from "./_kvfold_asserts.ts";

const SETTINGS = COMPRESSOR_SETTINGS;
const setup = (name: string) => compressorSetup(name, 8);

/** The reference document of `pairs` over 12 ids (segments of 5, 5 and 2 tokens). */
const pairsDocument = (tr: ModelTrainer, V: number, pairs: ReferenceDocument["pairs"]) =>
  compressorDocument(tr, V, 11, { pairs });

const checkTensors = (
  tr: ModelTrainer,
  ref: ReferenceModel,
  doc: ReferenceDocument,
  objective: () => number,
) =>
  checkCompressorTensors(tr, ref, doc, objective, [
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.1.mlp.down_proj.weight",
    "lm_head.weight",
  ]);

Deno.test("train compressor pairs: two pairs' loss is one mean over all answer tokens, gradients equal finite differences", async () => {
  const { model, ref } = await setup("pairs-2");
  using _m = model;
  // backpropSegments 3 covers the whole document: the native gradient is the exact one.
  using tr = ModelTrainer.create(model, { ...SETTINGS, backpropSegments: 3 });
  const V = model.info.vocabSize;
  const pairs = [
    { question: someIds(3, V, 12), answer: someIds(2, V, 13) },
    { question: someIds(1, V, 14), answer: someIds(4, V, 15) },
  ];
  const doc = pairsDocument(tr, V, pairs);
  const loss = await tr.accumulateDocument({ ids: doc.ids, pairs });
  const r = referenceCompressor(ref, doc);
  assert.ok(Math.abs(r.lm - loss.lm) < 1e-4 * r.lm, `lm loss ${loss.lm} vs reference ${r.lm}`);
  assert.ok(Math.abs(r.qa - loss.qa) < 1e-4 * r.qa, `qa loss ${loss.qa} vs reference ${r.qa}`);
  // Not the mean of the two pairs' means: the 4-token answer weighs twice the 2-token one.
  const one = (p: typeof pairs[0]) => referenceCompressor(ref, { ...doc, pairs: [p] }).qa;
  const [q0, q1] = [one(pairs[0]), one(pairs[1])];
  assert.ok(Math.abs(r.qa - (2 * q0 + 4 * q1) / 6) < 1e-9 * r.qa, "qa is the token-weighted mean");
  // ... and the mean of the pairs' means is far outside the tolerance the native loss is held to.
  assert.ok(Math.abs(r.qa - (q0 + q1) / 2) > 10 * 1e-4 * r.qa, "the pairs' means are too close to tell");
  const worst = checkTensors(tr, ref, doc, () => referenceCompressor(ref, doc).objective);
  console.log(`  worst relative error ${worst.toExponential(2)}`);
});

Deno.test("train compressor pairs: three pairs (and one without an answer) under a window of 2 equal finite differences", async () => {
  const { model, ref } = await setup("pairs-3");
  using _m = model;
  using tr = ModelTrainer.create(model, { ...SETTINGS, backpropSegments: 2 });
  const V = model.info.vocabSize, H = model.info.hiddenSize;
  const pairs = [
    { question: someIds(2, V, 21), answer: someIds(3, V, 22) },
    { question: [], answer: someIds(1, V, 23) },
    { question: someIds(4, V, 24), answer: [] },
    { question: someIds(4, V, 25), answer: someIds(2, V, 26) },
  ];
  const doc = pairsDocument(tr, V, pairs);
  let progress = [0, 0];
  const loss = await tr.accumulateDocument({ ids: doc.ids, pairs }, {
    onProgress: (done, total) => (progress = [done, total]),
  });
  // Three segments (a forward and a backward each) and three answered pairs (two steps each).
  assert.deepEqual(progress, [12, 12]);
  // Windows [segment 0], [segments 1, 2]: segment 0's summaries are constants to every pair.
  const base = referenceCompressor(ref, doc);
  const objective = () =>
    referenceCompressor(ref, { ...doc, frozen: base.summaries.subarray(0, 2 * H) }).objective;
  assert.ok(Math.abs(base.qa - loss.qa) < 1e-4 * base.qa, `qa loss ${loss.qa} vs reference ${base.qa}`);
  const worst = checkTensors(tr, ref, doc, objective);
  console.log(`  worst relative error ${worst.toExponential(2)}`);
});

Deno.test("train compressor pairs: one pair is the old question/answer call bit for bit; no pair is no answer", async () => {
  const { model } = await setup("pairs-same");
  using _m = model;
  const V = model.info.vocabSize;
  const ids = someIds(12, V, 11), question = someIds(3, V, 12), answer = someIds(2, V, 13);
  const run = async (example: Parameters<ModelTrainer["accumulateDocument"]>[0]) => {
    using tr = ModelTrainer.create(model, { ...SETTINGS, backpropSegments: 2 });
    const loss = await tr.accumulateDocument(example);
    return { loss, grads: tr.tensors.map((t) => tr.read(t.name, "grad")) };
  };
  const same = (a: Awaited<ReturnType<typeof run>>, b: Awaited<ReturnType<typeof run>>, what: string) => {
    assert.ok(Object.is(a.loss.lm, b.loss.lm) && Object.is(a.loss.qa, b.loss.qa), `${what}: losses differ`);
    a.grads.forEach((g, i) => {
      const u = new Uint32Array(g.buffer), v = new Uint32Array(b.grads[i].buffer);
      assert.ok(u.every((x, j) => x === v[j]), `${what}: gradient of tensor ${i} differs`);
    });
  };
  const old = await run({ ids, question, answer });
  assert.ok(Number.isFinite(old.loss.qa));
  same(old, await run({ ids, pairs: [{ question, answer }] }), "one pair");
  const lmOnly = await run({ ids });
  assert.ok(Number.isNaN(lmOnly.loss.qa));
  same(lmOnly, await run({ ids, pairs: [] }), "no pair");
  same(lmOnly, await run({ ids, pairs: [{ question }] }), "a pair without an answer");
});

Deno.test("train compressor pairs: bad pairs are refused with the pair named", async () => {
  const { model } = await setup("pairs-bad");
  using _m = model;
  using tr = ModelTrainer.create(model, { ...SETTINGS });
  const ids = [5, 6, 7];
  await assert.rejects(
    tr.accumulateDocument({ ids, question: [5], pairs: [{ answer: [6] }] }),
    { name: "TypeError", message: /either pairs or question\/answer/ },
  );
  await rejectsWith(
    tr.accumulateDocument({ ids, pairs: [{ answer: [6] }, { question: [5], answer: [7, 9999] }] }),
    "INVALID_ARGUMENT",
    /pairs\[1\]\.answer id 9999 at index 1/,
  );
  // The native checks, past the TypeScript ones.
  const i32 = (...xs: number[]) => new Uint8Array(Int32Array.from(xs.length ? xs : [0]).buffer);
  const call = async (q: number[], ql: number[], a: number[], al: number[], n = ql.length) => {
    const ctl = new ControlBlock();
    const status = await sym().kf_model_trainer_accumulate_document_pairs(
      tr._handle.ptr,
      i32(...ids),
      ids.length,
      i32(...q),
      i32(...ql),
      i32(...a),
      i32(...al),
      n,
      null,
      null,
      ctl.buf,
    );
    return { status, error: ctl.error };
  };
  const refused = (r: { status: number; error: string }, message: RegExp) => {
    assert.equal(r.status, Status.INVALID_ARGUMENT, r.error);
    assert.match(r.error, message);
  };
  refused(await call([5], [1, -1], [6, 7], [1, 1]), /cannot train compressor: pair 1 has a negative length/);
  refused(await call([5], [1], [6], [1], 4097), /n_pairs 4097 is outside \[0, 4096\]/);
  refused(await call([5], [1], [6], [1], -1), /n_pairs -1 is outside/);
  refused(await call([5, 6], [1, 1], [6, 70000], [1, 1]), /answer 1 token id 70000 at index 0 is outside/);
  refused(await call([-2], [1], [6], [1]), /question token id -2 at index 0/);
  assert.equal(tr.accumulated, 0, "nothing was accumulated");
  assert.equal((await call([5], [1], [6], [1])).status, Status.OK);
  using plain = ModelTrainer.create(model);
  await rejectsWith(
    plain.accumulateDocument({ ids, pairs: [{ answer: [6] }] }),
    "INVALID_ARGUMENT",
    /summary_length 0/,
  );
});

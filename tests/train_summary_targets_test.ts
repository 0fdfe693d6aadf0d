// Compressor training with summary targets: summary row r predicts token t through the LM head, a
// third mean cross-entropy added to the objective times its weight. Losses and gradients against
// central finite differences of the float64 reference (tests/_reference_train.ts), the stop-gradient
// rule (a target in a constant window still trains its own segment's pass), identities with the
// call without targets, and refusals naming the target at fault.
import assert from "node:assert/strict";
import { ModelTrainer } from "../src/model_train.ts";
import type { ReferenceModel } from "./reference_forward.ts";
import { referenceCompressor, type ReferenceDocument } from "./_reference_train.ts";
import {
  checkCompressorTensors,
  COMPRESSOR_SETTINGS,
  compressorDocument,
  compressorSetup,
} from "./_compressor_grad_check.ts";
import { someIds } from "./_fixtures.ts";

const SETTINGS = COMPRESSOR_SETTINGS;
const setup = (name: string) => compressorSetup(name, 9);

/** 12 ids (segments of 5, 5 and 2: summary rows 0..5), one pair, and the given targets. */
const document = (tr: ModelTrainer, V: number, targets: { row: number; token: number }[], weight: number) =>
  compressorDocument(tr, V, 33, {
    pairs: [{ question: someIds(2, V, 31), answer: someIds(3, V, 32) }],
    summaryTargets: targets,
    summaryTargetWeight: weight,
  });

/** The native accumulation of the reference document `doc` (its ids, pairs and targets). */
const accumulate = (tr: ModelTrainer, doc: ReferenceDocument) =>
  tr.accumulateDocument({
    ids: doc.ids,
    pairs: doc.pairs!,
    summaryTargets: doc.summaryTargets,
    summaryTargetWeight: doc.summaryTargetWeight,
  });

const checkTensors = (
  tr: ModelTrainer,
  ref: ReferenceModel,
  doc: ReferenceDocument,
  objective: () => number,
) =>
  checkCompressorTensors(tr, ref, doc, objective, [
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.norm.weight",
  ]);

Deno.test("summary targets: losses equal the reference and gradients equal finite differences (whole-document window)", async () => {
  const { model, ref } = await setup("targets-exact");
  using _m = model;
  using tr = ModelTrainer.create(model, { ...SETTINGS, backpropSegments: 3 });
  const V = model.info.vocabSize;
  // Row 1 twice (two tokens pull one vector), rows 2 and 5: every segment has a target.
  const targets = [{ row: 1, token: 7 }, { row: 1, token: 11 }, { row: 2, token: 3 }, {
    row: 5,
    token: V - 1,
  }];
  const doc = document(tr, V, targets, 0.9);
  const loss = await accumulate(tr, doc);
  const r = referenceCompressor(ref, doc);
  for (const k of ["lm", "qa", "summary"] as const) {
    assert.ok(Math.abs(r[k] - loss[k]) < 1e-4 * r[k], `${k} loss ${loss[k]} vs reference ${r[k]}`);
  }
  // The targets change the objective (a test that cannot tell them apart would pass without them).
  const without = referenceCompressor(ref, { ...doc, summaryTargets: [] });
  assert.ok(Math.abs(r.objective - without.objective - 0.9 * r.summary) < 1e-9 * r.objective);
  assert.ok(r.summary > 1, "the targets' cross-entropy is too small to tell");
  const worst = checkTensors(tr, ref, doc, () => referenceCompressor(ref, doc).objective);
  console.log(`  worst relative error ${worst.toExponential(2)}`);
});

Deno.test("summary targets: a target in a constant window still trains its own segment's pass", async () => {
  const { model, ref } = await setup("targets-window");
  using _m = model;
  // Windows [segment 0], [segments 1, 2]: segment 0's summaries are constants to the later passes and
  // the QA pass, but its own target's loss reaches its pass.
  using tr = ModelTrainer.create(model, { ...SETTINGS, backpropSegments: 2 });
  const V = model.info.vocabSize, H = model.info.hiddenSize;
  const targets = [{ row: 0, token: 5 }, { row: 3, token: 9 }];
  const doc = document(tr, V, targets, 1.5);
  const loss = await accumulate(tr, doc);
  const base = referenceCompressor(ref, doc);
  assert.ok(Math.abs(base.summary - loss.summary) < 1e-4 * base.summary);
  const objective = () =>
    referenceCompressor(ref, { ...doc, frozen: base.summaries.subarray(0, 2 * H) }).objective;
  const worst = checkTensors(tr, ref, doc, objective);
  console.log(`  worst relative error ${worst.toExponential(2)}`);
});

Deno.test("summary targets: none (or weight 0) is the call without them, gradient for gradient", async () => {
  const { model } = await setup("targets-none");
  using _m = model;
  const V = model.info.vocabSize;
  const ids = someIds(12, V, 41), pairs = [{ question: someIds(2, V, 42), answer: someIds(2, V, 43) }];
  const grads = async (extra: object) => {
    using tr = ModelTrainer.create(model, { ...SETTINGS, backpropSegments: 2 });
    const loss = await tr.accumulateDocument({ ids, pairs, ...extra });
    return { loss, grad: tr.read("model.layers.1.self_attn.v_proj.weight", "grad") };
  };
  const plain = await grads({});
  for (
    const extra of [{ summaryTargets: [] }, {
      summaryTargets: [{ row: 4, token: 1 }],
      summaryTargetWeight: 0,
    }]
  ) {
    const got = await grads(extra);
    assert.deepEqual(got.grad, plain.grad);
    assert.equal(got.loss.qa, plain.loss.qa);
    assert.ok(Number.isNaN(got.loss.summary), "summary loss is NaN when off");
  }
  assert.ok(Number.isNaN(plain.loss.summary));
});

Deno.test("summary targets: a bad target is refused, naming it, and nothing accumulates", async () => {
  const { model } = await setup("targets-bad");
  using _m = model;
  using tr = ModelTrainer.create(model, { ...SETTINGS });
  const V = model.info.vocabSize, ids = someIds(12, V, 51);
  const cases: [object, RegExp][] = [
    [
      { summaryTargets: [{ row: 6, token: 1 }] },
      /summary target 0 names summary row 6, outside the document's 6 rows/,
    ],
    [
      { summaryTargets: [{ row: 0, token: 1 }, { row: 1, token: V }] },
      /summary target token id \d+ at index 1/,
    ],
    [{ summaryTargets: [{ row: -1, token: 1 }] }, /summaryTargets\[0\]\.row -1/],
    [{ summaryTargets: [{ row: 0, token: 1 }], summaryTargetWeight: -1 }, /summaryTargetWeight -1/],
    [{ summaryTargets: [{ row: 0, token: 1.5 }] }, /summaryTargets\[0\]\.token 1\.5/],
  ];
  for (const [extra, message] of cases) {
    await assert.rejects(tr.accumulateDocument({ ids, ...extra }), (e: Error) => {
      assert.match(e.message, message);
      return true;
    });
  }
  assert.equal(tr.accumulated, 0);
});

// Data-parallel accumulation (ModelTrainer.accumulateBatch over gradient replicas, kvfold.h
// kf_model_trainer_accumulate_on): one replica gives the bits of the one-call API; two give the same
// losses and, after the step, the same weights up to the order of the gradient sums; the split is
// deterministic; a failure anywhere drops every replica's gradients; bad replica counts are refused.
import assert from "node:assert/strict";
import { type CompressorLoss, ModelTrainer, type TrainBatchItem } from "../src/model_train.ts";
import { KvfoldError } from "../src/errors.ts";
import { COMPRESSOR_SETTINGS, compressorSetup } from "./_compressor_grad_check.ts";
import { someIds } from "./_fixtures.ts";

const SETTINGS = { ...COMPRESSOR_SETTINGS, learningRate: 1e-2, warmupSteps: 0 };

/** Seven examples: compressor documents with pairs and summary targets, and text examples. */
function batch(V: number): TrainBatchItem[] {
  const items: TrainBatchItem[] = [];
  for (let i = 0; i < 7; i++) {
    if (i % 3 === 2) {
      const ids = someIds(9 + i, V, 100 + i);
      items.push({ text: { ids, labels: [...ids.slice(1), -1] } });
    } else {
      items.push({
        document: {
          ids: someIds(12 + i, V, 200 + i),
          pairs: [{ question: someIds(2, V, 300 + i), answer: someIds(3, V, 400 + i) }],
          summaryTargets: [{ row: 1, token: (7 * i) % V }, { row: 2, token: (11 * i + 3) % V }],
        },
      });
    }
  }
  return items;
}

/** Every tensor of the trainer, concatenated. */
function weights(tr: ModelTrainer): Float32Array[] {
  return tr.tensors.map((t) => tr.read(t.name));
}

/** One step over `items`: one call each (replicas undefined) or accumulateBatch over `replicas`. */
async function trainStep(tr: ModelTrainer, items: TrainBatchItem[], replicas?: number) {
  let losses: (number | CompressorLoss)[];
  if (replicas === undefined) {
    losses = [];
    for (const item of items) {
      losses.push(
        "text" in item ? await tr.accumulate(item.text) : await tr.accumulateDocument(item.document),
      );
    }
  } else {
    losses = await tr.accumulateBatch(items, { replicas });
  }
  assert.equal(tr.accumulated, items.length);
  const step = tr.step();
  assert.equal(step.examples, items.length);
  return { losses, weights: weights(tr) };
}

Deno.test("replicas: one replica gives the one-call bits; two give the same losses, and weights up to summation order", async () => {
  const { model } = await compressorSetup("replicas", 12);
  using _m = model;
  const items = batch(model.info.vocabSize);
  const run = async (replicas?: number) => {
    using tr = ModelTrainer.create(model, SETTINGS);
    const before = weights(tr);
    return { before, ...await trainStep(tr, items, replicas) };
  };
  const serial = await run(),
    one = await run(1),
    two = await run(2),
    twoAgain = await run(2),
    three = await run(3);
  // Each example's loss is computed alone, whatever replica runs it.
  assert.deepEqual(one.losses, serial.losses);
  assert.deepEqual(two.losses, serial.losses);
  assert.deepEqual(three.losses, serial.losses);
  // One replica, inline on one thread: the same bits as the engine's threads.
  one.weights.forEach((w, i) => assert.deepEqual(w, serial.weights[i], `tensor ${i}, one replica`));
  // Two (three) replicas: the same step up to float reordering of the gradient sums, and the same bits
  // run after run (the split is by index, not by timing).
  for (const other of [two, three]) {
    let worst = 0;
    other.weights.forEach((w, i) => {
      const moved = serial.weights[i].reduce((m, x, j) => Math.max(m, Math.abs(x - serial.before[i][j])), 0);
      for (let j = 0; j < w.length; j++) {
        worst = Math.max(worst, Math.abs(w[j] - serial.weights[i][j]) / moved);
      }
    });
    assert.ok(worst < 1e-3, `weights differ from the one-call step by ${worst} of the step's size`);
  }
  two.weights.forEach((w, i) => assert.deepEqual(w, twoAgain.weights[i], `tensor ${i}, two replicas twice`));
  // And the step really moved them (a test of nothing would pass the comparisons above).
  assert.ok(serial.weights.some((w, i) => w.some((x, j) => x !== serial.before[i][j])));
});

Deno.test("replicas: a failure in one replica drops every gradient; bad replica counts and indices are refused", async () => {
  const { model } = await compressorSetup("replicas-errors", 13);
  using _m = model;
  const V = model.info.vocabSize;
  using tr = ModelTrainer.create(model, SETTINGS);
  const items = batch(V);
  items[4] = { text: { ids: [1, V + 5], labels: [2, -1] } };
  await assert.rejects(tr.accumulateBatch(items, { replicas: 2 }), (e: unknown) => {
    assert.ok(e instanceof KvfoldError || e instanceof RangeError, String(e));
    assert.match(String((e as Error).message), new RegExp(`${V + 5}`));
    return true;
  });
  assert.equal(tr.accumulated, 0);
  assert.throws(() => tr.step(), /no example was accumulated/);
  for (const replicas of [0, 65, 1.5]) {
    await assert.rejects(tr.accumulateBatch(batch(V), { replicas }), RangeError);
  }
  await assert.rejects(tr.accumulate({ ids: [1, 2], labels: [2, 3] }, { replica: 64 }), RangeError);
  // After the refusals the trainer still trains.
  await tr.accumulateBatch(batch(V), { replicas: 2 });
  assert.equal(tr.step().examples, 7);
});

Deno.test("replicas: an abort stops every replica and drops the gradients", async () => {
  const { model } = await compressorSetup("replicas-abort", 14);
  using _m = model;
  using tr = ModelTrainer.create(model, SETTINGS);
  const abort = new AbortController();
  abort.abort(new Error("stop"));
  await assert.rejects(
    tr.accumulateBatch(batch(model.info.vocabSize), { replicas: 2, signal: abort.signal }),
    /stop|abort/i,
  );
  assert.equal(tr.accumulated, 0);
});

Deno.test("replicas: accumulateBatch runs its replicaPlan, long examples spread over both replicas", async () => {
  const { model } = await compressorSetup("replicas-plan", 15);
  using _m = model;
  const V = model.info.vocabSize;
  // Long documents at even indices, short text examples at odd ones: by index (i % 2) one replica
  // would get every document.
  const items: TrainBatchItem[] = [];
  for (let i = 0; i < 8; i++) {
    if (i % 2 === 1) {
      const ids = someIds(3, V, 500 + i);
      items.push({ text: { ids, labels: [...ids.slice(1), -1] } });
    } else {
      items.push({
        document: {
          ids: someIds(16 + 2 * i, V, 600 + i),
          pairs: [{ question: someIds(2, V, i), answer: [1] }],
        },
      });
    }
  }
  using a = ModelTrainer.create(model, SETTINGS);
  const plan = a.replicaPlan(items, 2);
  assert.deepEqual(plan.flat().sort((x, y) => x - y), [0, 1, 2, 3, 4, 5, 6, 7]);
  for (const share of plan) assert.equal(share.filter((i) => i % 2 === 0).length, 2, JSON.stringify(plan));
  const batched = await a.accumulateBatch(items, { replicas: 2 });
  a.step();
  // The same plan by hand, one call at a time on the named replicas: the same bits.
  using b = ModelTrainer.create(model, SETTINGS);
  const byHand: (number | CompressorLoss)[] = new Array(items.length);
  for (const [r, share] of plan.entries()) {
    for (const i of share) {
      const item = items[i];
      byHand[i] = "text" in item
        ? await b.accumulate(item.text, { replica: r })
        : await b.accumulateDocument(item.document, { replica: r });
    }
  }
  b.step();
  assert.deepEqual(batched, byHand);
  const wa = weights(a), wb = weights(b);
  wa.forEach((w, i) => assert.deepEqual(w, wb[i], `tensor ${i}`));
});

// WeightAverage (src/weight_average.ts): the average against a float64 recomputation from the weights
// recorded after each step; the saved folder holds the average while the trainer keeps its own
// weights (training continues bit for bit as without the average); decay 0 is the last weights.
import assert from "node:assert/strict";
import { ModelTrainer, type TrainBatchItem } from "../src/model_train.ts";
import { WeightAverage } from "../src/weight_average.ts";
import { COMPRESSOR_SETTINGS, compressorSetup } from "./_compressor_grad_check.ts";
import { someIds, tempDir, testEngine } from "./_fixtures.ts";

const SETTINGS = { ...COMPRESSOR_SETTINGS, learningRate: 1e-2, warmupSteps: 0 };

function batch(V: number, step: number): TrainBatchItem[] {
  return [0, 1].map((i) => {
    const ids = someIds(10 + i, V, 50 * step + i);
    return { text: { ids, labels: [...ids.slice(1), -1] } };
  });
}

Deno.test("weight average: matches the float64 average of the recorded weights; training is unchanged", async () => {
  const { model } = await compressorSetup("weight-average", 12);
  using _m = model;
  using plain = ModelTrainer.create(model, SETTINGS);
  using tr = ModelTrainer.create(model, SETTINGS);
  const decay = 0.6, steps = 5;
  const average = new WeightAverage(tr, decay);
  // Reference: the same recurrence in float64 over the weights read after every step.
  const ref = tr.tensors.map((t) => Float64Array.from(tr.read(t.name)));
  for (let s = 0; s < steps; s++) {
    const items = batch(model.info.vocabSize, s);
    await plain.accumulateBatch(items);
    plain.step();
    await tr.accumulateBatch(items);
    tr.step();
    const d = Math.min(decay, (2 + s) / (11 + s));
    assert.equal(average.nextDecay, d);
    average.update();
    tr.tensors.forEach((t, k) => {
      const w = tr.read(t.name);
      for (let i = 0; i < w.length; i++) ref[k][i] = d * ref[k][i] + (1 - d) * w[i];
    });
  }
  assert.equal(average.updates, steps);
  // Early updates follow the weights (d = 2/11, 3/12, ...), the later ones use the decay itself.
  assert.equal(Math.min(decay, 6 / 15), 0.4);
  let moved = 0;
  tr.tensors.forEach((t, k) => {
    const got = average.read(t.name), w = tr.read(t.name), p = plain.read(t.name);
    for (let i = 0; i < got.length; i++) {
      assert.ok(Math.abs(got[i] - ref[k][i]) <= 1e-6 * (1 + Math.abs(ref[k][i])), `${t.name}[${i}]`);
      if (got[i] !== w[i]) moved++;
      assert.equal(w[i], p[i], `training changed by the average: ${t.name}[${i}]`);
    }
  });
  assert.ok(moved > 100, `the average equals the weights in all but ${moved} values`);

  // The saved folder holds the average; the trainer's weights are back afterwards.
  const dir = await tempDir();
  const before = tr.tensors.map((t) => tr.read(t.name));
  await average.saveModel(dir);
  tr.tensors.forEach((t, k) => assert.deepEqual(tr.read(t.name), before[k]));
  const kv = await testEngine();
  using saved = await kv.loadModel(dir, { dtype: "f32" });
  using reread = ModelTrainer.create(saved, SETTINGS);
  for (const t of tr.tensors) assert.deepEqual(reread.read(t.name), average.read(t.name), t.name);
});

Deno.test("weight average: decay 0 is the last weights; bad decays and names are refused", async () => {
  const { model } = await compressorSetup("weight-average-0", 12);
  using _m = model;
  using tr = ModelTrainer.create(model, SETTINGS);
  const average = new WeightAverage(tr, 0);
  await tr.accumulateBatch(batch(model.info.vocabSize, 0));
  tr.step();
  average.update();
  for (const t of tr.tensors) assert.deepEqual(average.read(t.name), tr.read(t.name));
  for (const bad of [-0.1, 1, NaN]) assert.throws(() => new WeightAverage(tr, bad), /decay/);
  assert.throws(() => average.read("no.such.weight"), /no tensor "no.such.weight"/);
});

Deno.test("weight average: a saved state resumes to the same average; another decay's file is refused", async () => {
  const { model } = await compressorSetup("weight-average-state", 12);
  using _m = model;
  using tr = ModelTrainer.create(model, SETTINGS);
  const run = new WeightAverage(tr, 0.7);
  const path = `${await tempDir()}/average.safetensors`;
  for (let s = 0; s < 4; s++) {
    await tr.accumulateBatch(batch(model.info.vocabSize, s));
    tr.step();
    run.update();
    if (s === 1) await run.saveState(path);
  }
  // Resume from the state after two updates and replay the last two steps' weights.
  using again = ModelTrainer.create(model, SETTINGS);
  const resumed = new WeightAverage(again, 0.7);
  await resumed.loadState(path);
  assert.equal(resumed.updates, 2);
  const ckpt = `${await tempDir()}/trainer.safetensors`;
  for (let s = 0; s < 4; s++) {
    await again.accumulateBatch(batch(model.info.vocabSize, s));
    again.step();
    if (s >= 2) resumed.update();
  }
  assert.equal(resumed.updates, 4);
  for (const t of tr.tensors) assert.deepEqual(resumed.read(t.name), run.read(t.name), t.name);
  await assert.rejects(
    new WeightAverage(again, 0.8).loadState(path),
    /weight average 0.7 of .*this run trains weight average 0.8/,
  );
  await again.saveCheckpoint(ckpt, {});
  await assert.rejects(new WeightAverage(again, 0.7).loadState(ckpt), /Cannot resume/);
});

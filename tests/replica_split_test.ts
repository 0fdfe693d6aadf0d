// How a batch is shared among gradient replicas (src/replica_split.ts): every index once, each share
// in order, loads within one item of each other (the greedy bound), deterministic; the work estimate
// against a hand count of each pass's rows.
import assert from "node:assert/strict";
import { batchItemWork, type CostShape, splitOverReplicas } from "../src/replica_split.ts";
import { seededUint32 } from "../src/_seeded_random.ts";

Deno.test("splitOverReplicas: each index once, shares in order, loads within the largest item", () => {
  const next = seededUint32(7, "replica split test");
  for (let trial = 0; trial < 200; trial++) {
    const n = next() % 40, R = 1 + next() % 5;
    const work = Array.from({ length: n }, () => 1 + next() % 1000);
    const plan = splitOverReplicas(work, R);
    assert.equal(plan.length, R);
    assert.deepEqual(plan.flat().sort((a, b) => a - b), Array.from({ length: n }, (_, i) => i));
    for (const share of plan) assert.deepEqual(share, [...share].sort((a, b) => a - b));
    const loads = plan.map((s) => s.reduce((t, i) => t + work[i], 0));
    const biggest = Math.max(0, ...work);
    assert.ok(Math.max(...loads) - Math.min(...loads) <= biggest, `${loads} with items up to ${biggest}`);
    assert.deepEqual(splitOverReplicas(work, R), plan);
  }
  assert.deepEqual(splitOverReplicas([3, 1, 2], 1), [[0, 1, 2]]);
  // Alternating long and short: by index one replica would get 4 x 8 and the other 4 x 1.
  assert.deepEqual(splitOverReplicas([8, 1, 8, 1, 8, 1, 8, 1], 2), [[0, 1, 4, 5], [2, 3, 6, 7]]);
  assert.deepEqual(splitOverReplicas([], 3), [[], [], []]);
});

Deno.test("batchItemWork: a pass of T rows costs T x rowWork + T(T+1)/2 x pairWork, summed over passes", () => {
  const shape: CostShape = { rowWork: 100, pairWork: 3, hidden: 4, summaryLength: 2, segmentLength: 5 };
  const pass = (T: number) => T * 100 + (T * (T + 1) / 2) * 3;
  // Text: 6 ids after a 2-row prefix (8 floats at hidden 4).
  const text = { ids: [1, 2, 3, 4, 5, 6], labels: [2, 3, 4, 5, 6, -1], prefix: new Float32Array(8) };
  assert.equal(batchItemWork({ text }, shape), pass(8));
  // A document of 12 ids: segments of 5, 5, 2 tokens, each after the earlier summaries, with 2 summary
  // rows; one pair over the 6 summaries with a 3-token question and a 2-token answer; a pair with no
  // answer runs no pass.
  const document = {
    ids: Array.from({ length: 12 }, (_, i) => i),
    pairs: [{ question: [1, 2, 3], answer: [4, 5] }, { question: [1] }],
  };
  assert.equal(
    batchItemWork({ document }, shape),
    pass(0 + 5 + 2) + pass(2 + 5 + 2) + pass(4 + 2 + 2) + pass(6 + 5),
  );
  // Metamorphic: a longer document never costs less.
  let last = 0;
  for (let n = 1; n < 40; n++) {
    const w = batchItemWork({ document: { ids: new Array(n).fill(1) } }, shape);
    assert.ok(w > last, `${n} ids: ${w} <= ${last}`);
    last = w;
  }
});

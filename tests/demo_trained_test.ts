// The shipped demo model (demo/trained) on documents it never saw: the numbers the README and
// bench/results/demo_qa.json report for LLoCO (seed 4242, 8 documents, 128 questions) reproduce
// through the evaluation's answer path, and reach the 0.8 exact match from 8 summary
// vectors per question. A change to the engine, the store's chunking or the answer path that costs
// answers fails here.
import assert from "node:assert/strict";
import { Kvfold } from "../mod.ts";
import { evaluateDemo } from "../demo/evaluate.ts";
import { DEFAULT_TRAINED_DIR } from "../demo/trained.ts";

Deno.test("demo trained: the shipped model answers held-out documents as the bench reports, at 0.8 or more", async () => {
  const bench = JSON.parse(
    await Deno.readTextFile(new URL("../bench/results/demo_qa.json", import.meta.url)),
  );
  await using kv = await Kvfold.open({ backend: "cpu" });
  const e = await evaluateDemo(kv, {
    trainedDir: DEFAULT_TRAINED_DIR,
    seed: bench.seed,
    documents: bench.documents,
    conditions: ["lloco", "lloco-oracle"],
  });
  assert.deepEqual(e.store, bench.store);
  assert.equal(e.retrievalAccuracy, bench.retrievalAccuracy);
  for (const c of e.conditions) {
    const reported = bench.conditions.find((r: { condition: string }) => r.condition === c.condition);
    // Within two answers of 128: thread counts change f32 sums, and so a close greedy choice.
    assert.ok(Math.abs(c.exactMatch - reported.exactMatch) <= 2 / 128, `${c.condition}: ${c.exactMatch}`);
    assert.ok(c.exactMatch >= 0.8, `${c.condition}: exact match ${c.exactMatch} is under 0.8`);
    assert.equal(c.meanContextPositions, 8, c.condition);
  }
});

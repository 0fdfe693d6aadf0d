// The fuzz suite's short run: a few hundred seeded mutations of every input kvfold reads, each of
// which must end in correct output or a KvfoldError, never a signal, a hang or a stack trace.
// `deno task fuzz` runs thousands with the same machinery.
import assert from "node:assert/strict";
import { isClean, runCampaign, summarize } from "./campaign.ts";
import { TARGETS } from "./targets.ts";

Deno.test("fuzz: every target's mutated inputs end in correct output or a KvfoldError", async () => {
  const results = await runCampaign({ cases: 25, seed: 20261204 });
  assert.equal(results.length, 25 * TARGETS.length, summarize(results));
  const bad = results.filter((r) => !isClean(r));
  const report = bad.map((r) => `${r.target} #${r.index}: ${r.outcome}: ${r.message.slice(0, 400)}`).join(
    "\n",
  );
  assert.equal(
    bad.length,
    0,
    `${summarize(results)}\n\nreplay one with: deno task fuzz --seed 20261204 --target T --case I\n${report}`,
  );
});

// Cases longer runs (`deno task fuzz`) found, replayed on every test run: [target, seed, index].
const REGRESSIONS: [string, number, number][] = [
  ["adapter-config", 7, 246], // lora_alpha 1e308: the folded scale overflowed to NaN logits
  ["store", 7, 310], // a flipped index page hid chunks (only integrity_check compares index and table)
  ["store", 7, 372], // the same for the documents index
  ["torch-pickle", 7, 107], // a garbled tensor name with punctuation was converted
  ["torch-pickle", 7, 189],
  ["torch-pickle", 7, 331],
  ["torch-pickle", 7, 339],
  ["tokenizer", 11, 216], // tokenizer.json with an id past the model's vocabulary was accepted
  ["gguf-beside", 7, 40], // bytes inserted in a GGUF data section shifted f16 weights into NaN logits
  ["gguf-beside", 7, 59],
  ["gguf-beside", 7, 80],
];

Deno.test("fuzz: cases found by longer runs stay fixed", async () => {
  const bySeed = new Map<number, { target: string; index: number }[]>();
  for (const [target, seed, index] of REGRESSIONS) {
    bySeed.set(seed, [...(bySeed.get(seed) ?? []), { target, index }]);
  }
  for (const [seed, only] of bySeed) {
    const results = await runCampaign({ cases: 0, seed, only });
    assert.equal(results.length, only.length, summarize(results));
    const bad = results.filter((r) => !isClean(r));
    assert.equal(
      bad.length,
      0,
      bad.map((r) => `${r.target} #${r.index}: ${r.message.slice(0, 400)}`).join("\n"),
    );
  }
});

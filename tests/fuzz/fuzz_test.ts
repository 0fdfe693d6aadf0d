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

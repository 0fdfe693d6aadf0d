// Finite weights whose forward pass overflows: generation must stop with an error that names the
// model and the adapter, not the bare "logit 0 is NaN" of the sampler.
import assert from "node:assert/strict";
import { KvfoldError } from "../mod.ts";
import { testEngine, testModel } from "./_fixtures.ts";

Deno.test("non-finite logits: generate names the model and the adapter", async () => {
  // Weights of 1e18 are finite in f32, but q·k overflows to infinity and softmax gives NaN.
  const dir = await testModel("overflowing", { seed: 4, initStd: 1e18 });
  const kv = await testEngine();
  using model = await kv.loadModel(dir);
  using s = model.session({ contextSize: 32 });
  await assert.rejects(
    async () => {
      for await (const _ of s.generate({ prompt: [1, 2, 3], maxTokens: 4 })) { /* stream */ }
    },
    (e: unknown) => {
      assert.ok(e instanceof KvfoldError, String(e));
      assert.equal(e.code, "INVALID_STATE");
      assert.match(e.message, /^Cannot generate: logit \d+ is NaN/);
      assert.ok(e.message.includes(dir), e.message);
      assert.match(e.message, /\(no adapter\)/);
      return true;
    },
  );
  // The session stays usable: the error ended the generation, not the session.
  assert.equal(s.position, 3);
});

// The recipe's decoder phase (RecipeBudget.decoder, demo/recipe_decoder.ts): a copy of the model
// finetuned on the frozen compressor's vectors, in decoder/. It must leave the compressor's bytes as a
// run without it writes them, learn (its QA loss falls on a small pool), carry the group adapters,
// and be what loadTrainedDemo answers with.
import assert from "node:assert/strict";
import { Kvfold } from "../mod.ts";
import { type RecipeBudget, type RecipeProgress, trainDemoModel } from "../demo/recipe.ts";
import { decoderOr, loadTrainedDemo } from "../demo/trained.ts";
import { sameBytes, tempDir } from "./_fixtures.ts";

const TINY: RecipeBudget = { readerSteps: 1, compressorSteps: 1, adapterSteps: 1, lococoSteps: 1, batch: 2 };

Deno.test("demo recipe decoder: trains decoder/ only, which answers and carries the adapters", async () => {
  await using kv = await Kvfold.open();
  const plain = await tempDir(), withDecoder = await tempDir();
  await trainDemoModel(kv, { outDir: plain, budget: TINY });
  const losses: number[] = [];
  await trainDemoModel(kv, {
    outDir: withDecoder,
    budget: { ...TINY, decoder: { steps: 30, chunks: 2, learningRate: 1e-2 } },
    onProgress: (p: RecipeProgress) => p.phase === "decoder" && losses.push(p.loss.qa),
  });
  const bytes = (dir: string, file: string) => Deno.readFile(`${dir}/${file}`);
  // The compressor is frozen: its file is the plain run's, byte for byte.
  assert.ok(
    sameBytes(
      await bytes(plain, "model/model.safetensors"),
      await bytes(withDecoder, "model/model.safetensors"),
    ),
  );
  // The decoder learned: its QA loss over a pool of 2 chunks falls.
  assert.equal(losses.length, 30);
  const tail = losses.slice(-5).reduce((a, b) => a + b, 0) / 5;
  assert.ok(tail < 0.7 * losses[0], `decoder QA loss ${losses[0]} -> ${tail}`);
  // Its weights moved away from the compressor's, and the adapters were trained on it.
  const decoderWeights = await bytes(withDecoder, "decoder/model.safetensors");
  assert.ok(!sameBytes(decoderWeights, await bytes(plain, "model/model.safetensors")));
  assert.ok(
    !sameBytes(
      await bytes(withDecoder, "adapters/ledger/adapter_model.safetensors"),
      await bytes(plain, "adapters/ledger/adapter_model.safetensors"),
    ),
  );
  assert.equal(await decoderOr(withDecoder), `${withDecoder}/decoder`);
  assert.equal(await decoderOr(plain), `${plain}/model`);
  {
    using trained = await loadTrainedDemo(kv, withDecoder);
    assert.equal(trained.model.dir, `${withDecoder}/decoder`);
    assert.equal(trained.compressor.model.dir, `${withDecoder}/model`);
    assert.deepEqual(trained.model.adapters.list().map((e) => e.name).sort(), ["ledger", "voyage"]);
  }
  for (
    const decoder of [{ steps: -1 }, { steps: 1.5 }, { steps: 1, chunks: 0 }, { steps: 1, learningRate: 0 }]
  ) {
    const out = `${await tempDir()}/out`;
    await assert.rejects(trainDemoModel(kv, { outDir: out, budget: { ...TINY, decoder } }), /decoder/);
    await assert.rejects(Deno.stat(out), Deno.errors.NotFound);
  }
});

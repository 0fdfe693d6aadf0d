// The recipe's seed (RecipeBudget.seed): another seed is another run (different weights from the same
// budget), and a seed whose document streams would reach an evaluation seed is refused before anything
// is written. The model's depth (RecipeBudget.layers), summary vectors and segment length go into its files, and the
// optimizer settings (RecipeBudget.optimizer) into the trainer.
import assert from "node:assert/strict";
import { Kvfold } from "../mod.ts";
import {
  EVALUATION_SEEDS,
  overShippedBudget,
  type RecipeBudget,
  recipeSeed,
  SHIPPED_BUDGET,
  TRAIN_SEED,
  trainDemoModel,
} from "../demo/recipe.ts";
import { Compressor } from "../src/compressor.ts";
import { sameBytes, tempDir } from "./_fixtures.ts";

const TINY: RecipeBudget = { readerSteps: 1, compressorSteps: 1, adapterSteps: 1, lococoSteps: 1, batch: 1 };

Deno.test("demo recipe seed: checked, and never one that draws evaluation documents", () => {
  assert.equal(recipeSeed(TINY), TRAIN_SEED);
  assert.equal(recipeSeed({ ...TINY, seed: 12345 }), 12345);
  for (const evaluation of EVALUATION_SEEDS) {
    for (const offset of [0, 1, 2, 7, 100, 200, 300, 400]) {
      assert.throws(() => recipeSeed({ ...TINY, seed: evaluation - offset }), /evaluation seed/);
    }
  }
  for (const seed of [-1, 1.5, NaN, 2 ** 60]) assert.throws(() => recipeSeed({ ...TINY, seed }), RangeError);
});

Deno.test("demo recipe seed: another seed trains other weights; a refused seed writes nothing", async () => {
  await using kv = await Kvfold.open();
  const weights = async (seed: number) => {
    const dir = await tempDir();
    await trainDemoModel(kv, { outDir: dir, budget: { ...TINY, seed } });
    return await Deno.readFile(`${dir}/model/model.safetensors`);
  };
  const a = await weights(12345), b = await weights(12346);
  assert.equal(a.length, b.length);
  assert.ok(a.some((x, i) => x !== b[i]), "two seeds trained the same bytes");
  const dir = `${await tempDir()}/out`;
  await assert.rejects(
    trainDemoModel(kv, { outDir: dir, budget: { ...TINY, seed: 4242 } }),
    /evaluation seed/,
  );
  await assert.rejects(Deno.stat(dir), Deno.errors.NotFound);
});

Deno.test("demo recipe layers and summary vectors: the model has that many; a bad count writes nothing", async () => {
  await using kv = await Kvfold.open();
  const dir = await tempDir();
  await trainDemoModel(kv, {
    outDir: dir,
    budget: { ...TINY, layers: 2, summaryVectors: 10, layout: "spans" },
  });
  const config = JSON.parse(await Deno.readTextFile(`${dir}/model/config.json`));
  assert.equal(config.num_hidden_layers, 2);
  using model = await kv.loadModel(`${dir}/model`);
  assert.equal(model.info.layers, 2);
  using compressor = await Compressor.load(kv, `${dir}/model`);
  assert.equal(compressor.summaryLength, 10);
  assert.equal(compressor.segmentLength, 256, "the default segment goes into config.json");
  // A wider model: 4 heads of width / 4, an MLP 2.75 times as wide; the default is the shipped shape.
  const wide = await tempDir();
  await trainDemoModel(kv, { outDir: wide, budget: { ...TINY, width: 160 } });
  const wideConfig = JSON.parse(await Deno.readTextFile(`${wide}/model/config.json`));
  assert.deepEqual(
    [
      wideConfig.hidden_size,
      wideConfig.head_dim,
      wideConfig.intermediate_size,
      wideConfig.num_attention_heads,
    ],
    [160, 40, 448, 4],
  );
  assert.deepEqual([config.hidden_size, config.head_dim, config.intermediate_size], [128, 32, 352]);
  // Shorter segments: the trained folder says so, and compresses a 512-token chunk into 4 x 4 vectors.
  const short = await tempDir();
  await trainDemoModel(kv, { outDir: short, budget: { ...TINY, segmentTokens: 128, summaryVectors: 4 } });
  using shortCompressor = await Compressor.load(kv, `${short}/model`);
  assert.equal(shortCompressor.segmentLength, 128);
  assert.equal((await shortCompressor.compress(Array.from({ length: 512 }, (_, i) => 10 + i % 50))).rows, 16);
  const bad: [Partial<RecipeBudget>, RegExp][] = [
    ...[0, 1.5, 33].map((layers): [Partial<RecipeBudget>, RegExp] => [
      { layers },
      /layers .* is not an integer in \[1, 32\]/,
    ]),
    ...[1, 2.5, 129].map((summaryVectors): [Partial<RecipeBudget>, RegExp] => [
      { summaryVectors },
      /summaryVectors .* is not an integer in \[2, 128\]/,
    ]),
    ...[8, 100, 1024, 1.5].map((segmentTokens): [Partial<RecipeBudget>, RegExp] => [
      { segmentTokens },
      /segmentTokens .* is not a divisor of the 512-token chunks, 16 or more/,
    ]),
    ...[100, 24, 520, 128.5].map((width): [Partial<RecipeBudget>, RegExp] => [
      { width },
      /width .* is not a multiple of 8 in \[32, 512\]/,
    ]),
    ...[-0.1, 1.5, NaN].map((wholeChunksFrom): [Partial<RecipeBudget>, RegExp] => [
      { wholeChunksFrom },
      /wholeChunksFrom .* is not a fraction in \[0, 1\]/,
    ]),
    ...[-0.1, 1.5, NaN].map((factPairsFrom): [Partial<RecipeBudget>, RegExp] => [
      { factPairsFrom },
      /factPairsFrom .* is not a fraction in \[0, 1\]/,
    ]),
    ...[-0.1, 1.5, NaN].map((twinsFrom): [Partial<RecipeBudget>, RegExp] => [
      { twinsFrom },
      /twinsFrom .* is not a fraction in \[0, 1\]/,
    ]),
    [{ twinsFrom: 0.5, factPairsFrom: 0.5 }, /twinsFrom and factPairsFrom both take one document in four/],
    [{ segmentTokens: 128, summaryVectors: 65 }, /summaryVectors 65 is not an integer in \[2, 64\]/],
  ];
  for (const [extra, message] of bad) {
    const out = `${await tempDir()}/out`;
    await assert.rejects(trainDemoModel(kv, { outDir: out, budget: { ...TINY, ...extra } }), message);
    await assert.rejects(Deno.stat(out), Deno.errors.NotFound);
  }
});

Deno.test("demo recipe optimizer: its settings reach the trainer; the defaults spelled out change no bit", async () => {
  await using kv = await Kvfold.open();
  const weights = async (budget: RecipeBudget) => {
    const dir = await tempDir();
    await trainDemoModel(kv, { outDir: dir, budget });
    return await Deno.readFile(`${dir}/model/model.safetensors`);
  };
  const plain = await weights(TINY);
  const spelled = await weights({ ...TINY, optimizer: { learningRate: 3e-3, betas: [0.9, 0.999] } });
  assert.ok(sameBytes(spelled, plain), "the default optimizer spelled out trained other bits");
  // Whole chunks from the phase's start change the documents; the default spelled out changes nothing.
  const long = { ...TINY, compressorSteps: 4, batch: 2 };
  const longPlain = await weights(long);
  assert.ok(sameBytes(await weights({ ...long, wholeChunksFrom: 0.7 }), longPlain), "wholeChunksFrom 0.7");
  assert.ok(!sameBytes(await weights({ ...long, wholeChunksFrom: 0 }), longPlain), "wholeChunksFrom 0");
  // Fact-pair windows from the phase's end on are none at all; from its start they change the documents.
  assert.ok(sameBytes(await weights({ ...long, factPairsFrom: 1 }), longPlain), "factPairsFrom 1");
  assert.ok(!sameBytes(await weights({ ...long, factPairsFrom: 0 }), longPlain), "factPairsFrom 0");
  // Twins change the text examples from the start, and the documents from their fraction on.
  const twinsLate = await weights({ ...long, twinsFrom: 1 });
  assert.ok(!sameBytes(twinsLate, longPlain), "twinsFrom 1 left the text examples alone");
  assert.ok(
    !sameBytes(await weights({ ...long, twinsFrom: 0 }), twinsLate),
    "twinsFrom 0 left the documents alone",
  );
  for (const optimizer of [{ betas: [0.9, 0.95] as const }, { learningRate: 1e-3 }]) {
    assert.ok(
      !sameBytes(await weights({ ...TINY, optimizer }), plain),
      `${JSON.stringify(optimizer)} changed nothing`,
    );
  }
});

Deno.test("demo recipe budget: overrides go over the shipped budget, the optimizer key by key", () => {
  const plain = overShippedBudget({});
  assert.deepEqual(plain, SHIPPED_BUDGET);
  assert.equal(
    JSON.stringify(plain),
    JSON.stringify(SHIPPED_BUDGET),
    "key order kept (resume compares JSON)",
  );
  const lr = overShippedBudget({ optimizer: { learningRate: 1e-3 } });
  assert.deepEqual(lr.optimizer, { ...SHIPPED_BUDGET.optimizer, learningRate: 1e-3 });
  assert.deepEqual(overShippedBudget({ optimizer: { betas: [0.9, 0.999] } }).optimizer!.betas, [0.9, 0.999]);
  const seeded = overShippedBudget({ seed: 2027, batch: 8 });
  assert.equal(seeded.seed, 2027);
  assert.equal(seeded.batch, 8);
  assert.deepEqual(seeded.optimizer, SHIPPED_BUDGET.optimizer);
});

// The recipe's weight average and snapshots (RecipeBudget.ema, .snapshots): snapshots do not change
// the trained model; the model is saved from the average when `ema` is set (the final step's -ema
// snapshot has its bytes, the raw one the bytes of a run without the average); each snapshot gets its
// group adapters; steps outside the phase are refused before anything is written.
import assert from "node:assert/strict";
import { Kvfold } from "../mod.ts";
import { GROUPS, type RecipeBudget, trainDemoModel } from "../demo/recipe.ts";
import { sameBytes, tempDir } from "./_fixtures.ts";

function assertSameFiles(got: Record<string, Uint8Array>, want: Record<string, Uint8Array>) {
  assert.deepEqual(Object.keys(got), Object.keys(want));
  for (const k of Object.keys(want)) {
    assert.ok(sameBytes(got[k], want[k]), `${k} differs from the unstopped run's`);
  }
}

const TINY: RecipeBudget = { readerSteps: 1, compressorSteps: 2, adapterSteps: 1, lococoSteps: 1, batch: 1 };

Deno.test("demo recipe: the model comes from the weight average; snapshots keep both and change nothing", async () => {
  await using kv = await Kvfold.open();
  const run = async (budget: RecipeBudget) => {
    const dir = await tempDir();
    const out = await trainDemoModel(kv, { outDir: dir, budget });
    return { dir, out, model: await Deno.readFile(`${dir}/model/model.safetensors`) };
  };
  const plain = await run(TINY);
  const snapped = await run({ ...TINY, snapshots: [1, 2] });
  const averaged = await run({ ...TINY, ema: 0.9, snapshots: [2] });
  assert.deepEqual(plain.out.snapshots, []);
  assert.ok(sameBytes(snapped.model, plain.model), "snapshots changed the trained model");
  assert.deepEqual(snapped.out.snapshots.map((d) => d.slice(snapped.dir.length)), [
    "/snapshots/step-1",
    "/snapshots/step-2",
  ]);
  const file = (dir: string) => Deno.readFile(`${dir}/model/model.safetensors`);
  assert.ok(
    sameBytes(await file(snapped.out.snapshots[1]), plain.model),
    "the last raw snapshot is not the model",
  );
  assert.ok(!sameBytes(await file(snapped.out.snapshots[0]), plain.model), "step 1 is the final model");
  for (const dir of snapped.out.snapshots) {
    for (const g of GROUPS) await Deno.stat(`${dir}/adapters/${g}/adapter_model.safetensors`);
  }
  const [raw, ema] = averaged.out.snapshots;
  assert.ok(ema.endsWith("step-2-ema"));
  assert.ok(sameBytes(await file(raw), plain.model), "the average changed the training");
  assert.ok(sameBytes(await file(ema), averaged.model), "the model is not the average");
  assert.ok(!sameBytes(averaged.model, plain.model), "the average is the last weights");
});

Deno.test("demo recipe: snapshot steps outside the compressor phase are refused before writing", async () => {
  await using kv = await Kvfold.open();
  for (const step of [0, 3, 1.5]) {
    const dir = `${await tempDir()}/out`;
    await assert.rejects(
      trainDemoModel(kv, { outDir: dir, budget: { ...TINY, snapshots: [step] } }),
      /snapshot step .* is not in \[1, 2\]/,
    );
    await assert.rejects(Deno.stat(dir), Deno.errors.NotFound);
  }
});

Deno.test("demo recipe: a stopped run resumed from its checkpoint ends with the bits of an unstopped one", async () => {
  await using kv = await Kvfold.open();
  const budget: RecipeBudget = { ...TINY, readerSteps: 2, compressorSteps: 3, ema: 0.9, snapshots: [1, 3] };
  const files = async (dir: string) => {
    const out: Record<string, Uint8Array> = {};
    for (const f of ["model", "snapshots/step-1-ema/model", "snapshots/step-3/model"]) {
      out[f] = await Deno.readFile(`${dir}/${f}/model.safetensors`);
    }
    for (const g of GROUPS) {
      out[g] = await Deno.readFile(`${dir}/adapters/${g}/adapter_model.safetensors`);
    }
    return out;
  };
  const whole = await tempDir();
  await trainDemoModel(kv, { outDir: whole, budget });
  const want = await files(whole);

  // Ctrl-C after the first compressor step (the checkpoint is written as it stops), then resume.
  const stopped = await tempDir();
  const abort = new AbortController();
  await assert.rejects(
    trainDemoModel(kv, {
      outDir: stopped,
      budget,
      checkpointEvery: 100,
      signal: abort.signal,
      onProgress: (p) => p.phase === "compressor" && p.step === 1 && abort.abort(new Error("stop")),
    }),
    /stop/,
  );
  await Deno.stat(`${stopped}/train.ckpt.safetensors`);
  await Deno.stat(`${stopped}/average-3.ckpt.safetensors`);
  await assert.rejects(
    trainDemoModel(kv, { outDir: stopped, budget: { ...budget, ema: 0.8 }, resume: true }),
    /started with budget/,
  );
  const out = await trainDemoModel(kv, { outDir: stopped, budget, resume: true });
  assertSameFiles(await files(stopped), want);
  assert.deepEqual(out.snapshots.map((d) => d.slice(stopped.length)), [
    "/snapshots/step-1",
    "/snapshots/step-1-ema",
    "/snapshots/step-3",
    "/snapshots/step-3-ema",
  ]);
  await assert.rejects(Deno.stat(`${stopped}/train.ckpt.safetensors`), Deno.errors.NotFound);

  // A crash in the last step (no checkpoint as it stops) goes on from the last periodic checkpoint
  // (step 4 of 5) and trains step 5 again.
  const crashed = await tempDir();
  await assert.rejects(
    trainDemoModel(kv, {
      outDir: crashed,
      budget,
      checkpointEvery: 2,
      onProgress: (p) => {
        if (p.phase === "compressor" && p.step === 3) throw new Error("killed");
      },
    }),
    /killed/,
  );
  await Deno.stat(`${crashed}/average-4.ckpt.safetensors`);
  await trainDemoModel(kv, { outDir: crashed, budget, resume: true });
  assertSameFiles(await files(crashed), want);
});

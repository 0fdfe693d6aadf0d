// The recipe's starts (RecipeBudget.starts, .selectAt): a run with several starts ends with the bits of
// a plain run seeded as the chosen start, whichever start its scorer prefers; the scores and the choice
// are kept in starts.json; a run stopped during the starts and resumed ends the same; bad counts and
// steps are refused before anything is written.
import assert from "node:assert/strict";
import { Kvfold } from "../mod.ts";
import { GROUPS, type RecipeBudget, TRAIN_SEED, trainDemoModel } from "../demo/recipe.ts";
import { bestStart, readStartsRecord, startSeed } from "../demo/recipe_select.ts";
import { sameBytes, tempDir } from "./_fixtures.ts";

const TINY: RecipeBudget = { readerSteps: 1, compressorSteps: 3, adapterSteps: 1, lococoSteps: 1, batch: 1 };
const STARTS: RecipeBudget = { ...TINY, starts: 3, selectAt: 1, snapshots: [1, 3] };

async function files(dir: string): Promise<Record<string, Uint8Array>> {
  const out: Record<string, Uint8Array> = {};
  for (const f of ["model", "snapshots/step-1/model", "snapshots/step-3/model"]) {
    out[f] = await Deno.readFile(`${dir}/${f}/model.safetensors`);
  }
  for (const g of GROUPS) out[g] = await Deno.readFile(`${dir}/adapters/${g}/adapter_model.safetensors`);
  out.lococo = await Deno.readFile(`${dir}/lococo.safetensors`);
  return out;
}

function assertSameFiles(got: Record<string, Uint8Array>, want: Record<string, Uint8Array>, what: string) {
  assert.deepEqual(Object.keys(got), Object.keys(want));
  for (const k of Object.keys(want)) assert.ok(sameBytes(got[k], want[k]), `${k} differs from ${what}`);
}

/** A scorer that ranks the starts by a fixed table, recording the folders it was given. */
function tableScorer(scores: number[], seen: string[]) {
  return (dir: string) => {
    seen.push(dir);
    const k = Number(/start-(\d+)$/.exec(dir)![1]);
    return Promise.resolve(scores[k]);
  };
}

Deno.test("demo recipe starts: the chosen start goes on to the bits of a plain run with its seed", async () => {
  await using kv = await Kvfold.open();
  const plain = await tempDir();
  await trainDemoModel(kv, {
    outDir: plain,
    budget: { ...TINY, snapshots: [1, 3], seed: startSeed(TRAIN_SEED, 1) },
  });
  const want = await files(plain);

  const dir = await tempDir(), seen: string[] = [];
  const progress: number[] = [], after: number[] = [];
  await trainDemoModel(kv, {
    outDir: dir,
    budget: STARTS,
    scoreStart: tableScorer([0.25, 0.5, 0.5], seen),
    onProgress: (p) => {
      if (p.phase === "select") progress.push(p.score!);
      if (p.start === undefined && (p.phase === "reader" || p.phase === "compressor")) after.push(p.step);
    },
  });
  // The chosen start went on from its checkpoint: only compressor steps 2 and 3 were trained after it.
  assert.deepEqual(after, [2, 3]);
  assert.deepEqual(seen.map((d) => d.slice(dir.length)), [
    "/starts/start-0",
    "/starts/start-1",
    "/starts/start-2",
  ]);
  assert.deepEqual(progress, [0.25, 0.5, 0.5]);
  assert.deepEqual(await readStartsRecord(dir), {
    budget: JSON.stringify(STARTS),
    scores: [0.25, 0.5, 0.5],
    chosen: 1,
  });
  assertSameFiles(await files(dir), want, "the plain run seeded as start 1");
  await assert.rejects(Deno.stat(`${dir}/starts`), Deno.errors.NotFound);
  await assert.rejects(Deno.stat(`${dir}/train.ckpt.safetensors`), Deno.errors.NotFound);

  // Another table chooses another start: the result is that start's plain run (start 0 = the default seed).
  const first = await tempDir();
  await trainDemoModel(kv, { outDir: first, budget: STARTS, scoreStart: tableScorer([0.9, 0.5, 0.5], []) });
  const zero = await tempDir();
  await trainDemoModel(kv, { outDir: zero, budget: { ...TINY, snapshots: [1, 3] } });
  assertSameFiles(await files(first), await files(zero), "the plain run with the default seed");
});

Deno.test("demo recipe starts: stopped while training a start, resumed, ends with the same bits", async () => {
  await using kv = await Kvfold.open();
  const scores = [0.1, 0.3, 0.2];
  const whole = await tempDir();
  await trainDemoModel(kv, { outDir: whole, budget: STARTS, scoreStart: tableScorer(scores, []) });
  const want = await files(whole);

  const stopped = await tempDir(), abort = new AbortController();
  await assert.rejects(
    trainDemoModel(kv, {
      outDir: stopped,
      budget: STARTS,
      checkpointEvery: 100,
      signal: abort.signal,
      scoreStart: tableScorer(scores, []),
      onProgress: (p) => p.start === 1 && p.phase === "reader" && abort.abort(new Error("stop")),
    }),
    /stop/,
  );
  assert.deepEqual(await readStartsRecord(stopped), { budget: JSON.stringify(STARTS), scores: [0.1] });
  await Deno.stat(`${stopped}/starts/start-1/train.ckpt.safetensors`);
  await assert.rejects(
    trainDemoModel(kv, { outDir: stopped, budget: { ...STARTS, selectAt: 2 }, resume: true }),
    /starts were trained with budget/,
  );
  const seen: string[] = [];
  await trainDemoModel(kv, {
    outDir: stopped,
    budget: STARTS,
    resume: true,
    scoreStart: tableScorer(scores, seen),
  });
  assert.equal(seen.length, 2, "start 0 was scored again");
  assertSameFiles(await files(stopped), want, "the unstopped run");
  assert.equal((await readStartsRecord(stopped))!.chosen, 1);
});

Deno.test("demo recipe starts: bad counts, steps and optimizer settings are refused before writing; ties go to the first", async () => {
  await using kv = await Kvfold.open();
  const bad: [Partial<RecipeBudget>, RegExp][] = [
    [{ starts: 0 }, /starts 0 is not an integer in \[1, 16\]/],
    [{ starts: 1.5 }, /starts 1.5 is not/],
    [{ starts: 17 }, /starts 17 is not/],
    [{ starts: 2, selectAt: 4 }, /selectAt 4 is not in \[1, 3\]/],
    [{ starts: 2, selectAt: 0 }, /selectAt 0 is not/],
    [
      { layout: "quads" as "pairs" },
      /layout "quads" is not "pairs" or "triples" or "spans" or "joint" or "owned"/,
    ],
    [{ optimizer: { learningRate: -1e-3 } }, /optimizer.learningRate -0.001 is not a finite number > 0/],
    [{ optimizer: { learningRate: NaN } }, /optimizer.learningRate NaN is not/],
    [{ optimizer: { betas: [0.9, 1] } }, /optimizer.betas \[0.9,1\] are not two numbers in \[0, 1\)/],
    [{ optimizer: { betas: [0.9] as unknown as [number, number] } }, /optimizer.betas \[0.9\] are not/],
    // Start 1 of seed 4242 - 1000 draws evaluation documents.
    [{ starts: 2, seed: 4242 - 1000 }, /evaluation seed/],
  ];
  for (const [extra, message] of bad) {
    const out = `${await tempDir()}/out`;
    await assert.rejects(trainDemoModel(kv, { outDir: out, budget: { ...TINY, ...extra } }), message);
    await assert.rejects(Deno.stat(out), Deno.errors.NotFound);
  }
  assert.equal(bestStart([0.5, 0.7, 0.7]), 1);
  assert.equal(bestStart([0.2]), 0);
  assert.equal(bestStart([0.4, 0.1, 0.4]), 0);
});

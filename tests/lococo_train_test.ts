// LoCoCo calibration: the loss equals the float64 segmented reference and the inference path, every
// head gradient (conv weight, bias, λ) equals central finite differences of the reference, a short
// run lowers the loss, a killed run resumes to the same heads, and the CLI writes heads that serve.
import assert from "node:assert/strict";
import { join } from "node:path";
import { KvfoldError } from "../src/errors.ts";
import { calibrateLococo, LococoTrainer } from "../src/lococo_train.ts";
import type { Model } from "../src/model.ts";
import type { Session } from "../src/session.ts";
import { loadReferenceModel } from "./reference_forward.ts";
import { referenceSegmentedLoss } from "./reference_lococo.ts";
import { runCli, someIds, tempDir, testEngine, testModel } from "./_fixtures.ts";

const GQA = { seed: 5, numHeads: 4, numKeyValueHeads: 2 };
// M = 24 (Mc = 12), B = 16, k = 5: a 64-token sequence is fused once, before its fourth segment.
const SHAPE = { slots: 24, segment: 16, kernel: 5, keepRate: 0.5 };

function headsOf(tr: LococoTrainer, layers: number) {
  return Array.from({ length: layers }, (_, l) => ({
    weight: Float64Array.from(tr.read(l, "weight")),
    bias: Float64Array.from(tr.read(l, "bias")),
    lambda: tr.read(l, "lambda")[0],
  }));
}

/** Mean over segments of the mean next-token loss, from a session's all-position logits. */
async function inferenceLoss(
  session: Session,
  ids: number[],
  segment: number,
  vocab: number,
): Promise<number> {
  const logits = (await session.prefill(ids, { logits: "all" }))!;
  const losses: number[] = [];
  for (let p0 = 0; p0 < ids.length; p0 += segment) {
    let sum = 0, n = 0;
    for (let t = p0; t < Math.min(p0 + segment, ids.length - 1); t++) {
      const row = logits.subarray(t * vocab, (t + 1) * vocab);
      const mx = Math.max(...row);
      sum += Math.log(row.reduce((a, x) => a + Math.exp(x - mx), 0)) + mx - row[ids[t + 1]];
      n++;
    }
    if (n > 0) losses.push(sum / n);
  }
  return losses.reduce((a, b) => a + b, 0) / losses.length;
}

async function withModel(fn: (model: Model, dir: string, tmp: string) => Promise<void>) {
  const dir = await testModel("lococo-train", GQA);
  const tmp = await tempDir();
  const kv = await testEngine();
  using model = await kv.loadModel(dir);
  try {
    await fn(model, dir, tmp);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
}

Deno.test("calibrate: the loss equals the float64 reference and inference; every head gradient equals finite differences", async () => {
  await withModel(async (model, dir, tmp) => {
    const ref = await loadReferenceModel(dir);
    using tr = LococoTrainer.create(model, { ...SHAPE, seed: 3, initLambda: 0.4 });
    const L = model.info.layers;
    // A non-zero bias so the ReLU sees both signs.
    for (let l = 0; l < L; l++) {
      tr.write(
        l,
        "bias",
        Float32Array.from({ length: 12 }, (_, i) => 0.05 * (i % 3 - 1)),
      );
    }
    const ids = someIds(64, model.info.vocabSize, 21);
    const loss = await tr.accumulate(ids);
    const heads = headsOf(tr, L);
    const want = referenceSegmentedLoss(ref, ids, { ...SHAPE, layers: heads });
    assert.ok(Math.abs(loss - want) < 1e-4 * want, `native ${loss}, reference ${want}`);

    // Inference with the same heads computes the same loss (the calibration mirrors serving).
    const path = join(tmp, "heads.safetensors");
    await tr.saveHeads(path);
    using loaded = model.loadLococoHeads(path);
    using session = model.session({ cache: { kind: "lococo", heads: loaded } });
    const served = await inferenceLoss(session, ids, 16, model.info.vocabSize);
    assert.ok(Math.abs(served - loss) < 1e-4 * loss, `inference ${served}, calibration ${loss}`);
    assert.equal(session.memory().compressions, 1);

    const eps = 1e-4;
    const fd = (set: (x: number) => void, x0: number) => {
      set(x0 + eps);
      const up = referenceSegmentedLoss(ref, ids, { ...SHAPE, layers: heads });
      set(x0 - eps);
      const down = referenceSegmentedLoss(ref, ids, { ...SHAPE, layers: heads });
      set(x0);
      return (up - down) / (2 * eps);
    };
    let checked = 0;
    for (let l = 0; l < L; l++) {
      const gw = tr.read(l, "gradWeight"), gb = tr.read(l, "gradBias"), gl = tr.read(l, "gradLambda")[0];
      const scaleW = Math.max(...gw.map(Math.abs)), scaleB = Math.max(...gb.map(Math.abs));
      assert.ok(scaleW > 1e-7 && scaleB > 1e-7, `layer ${l}: the head gradients are zero`);
      const top = gw.indexOf(gw.reduce((m, g) => (Math.abs(g) > Math.abs(m) ? g : m), 0));
      for (const i of [top, 7, gw.length - 3]) {
        const w = heads[l].weight;
        const got = fd((x) => (w[i] = x), w[i]);
        assert.ok(
          Math.abs(gw[i] - got) < 2e-3 * scaleW,
          `layer ${l} weight[${i}]: native ${gw[i]}, fd ${got}`,
        );
        checked++;
      }
      const topB = gb.indexOf(gb.reduce((m, g) => (Math.abs(g) > Math.abs(m) ? g : m), 0));
      for (const i of [topB, 4]) {
        const b = heads[l].bias;
        const got = fd((x) => (b[i] = x), b[i]);
        assert.ok(Math.abs(gb[i] - got) < 2e-3 * scaleB, `layer ${l} bias[${i}]: native ${gb[i]}, fd ${got}`);
        checked++;
      }
      const got = fd((x) => (heads[l].lambda = x), heads[l].lambda);
      assert.ok(
        Math.abs(gl - got) < 2e-3 * Math.max(Math.abs(got), 1e-6),
        `layer ${l} λ: native ${gl}, fd ${got}`,
      );
      checked++;
    }
    assert.equal(checked, 12);
  });
});

Deno.test("calibrate: a short run lowers the loss, and a killed run resumes to the same heads", async () => {
  await withModel(async (model, _dir, tmp) => {
    // A repetitive corpus: the fused slots can learn to keep what later segments need.
    const text = someIds(80, 40, 9, 3);
    const corpus = Array.from({ length: 4 }, () => text).flat();
    const opts = { ...SHAPE, seed: 2, sequenceLength: 80, learningRate: 5e-2, steps: 16 };
    const losses: number[] = [];
    using whole = await calibrateLococo(model, corpus, { ...opts, onProgress: (p) => losses.push(p.loss) });
    const first = (losses[0] + losses[1]) / 2, last = (losses[14] + losses[15]) / 2;
    assert.ok(last < first - 0.01, `loss ${first.toFixed(4)} → ${last.toFixed(4)}`);

    const ckpt = join(tmp, "ckpt.safetensors");
    const ac = new AbortController();
    await assert.rejects(
      calibrateLococo(model, corpus, {
        ...opts,
        checkpoint: ckpt,
        checkpointEvery: 3,
        signal: ac.signal,
        onProgress: (p) => p.step === 7 && ac.abort(),
      }),
      (e: unknown) => e instanceof KvfoldError && e.code === "ABORTED",
    );
    using resumed = await calibrateLococo(model, corpus, { ...opts, checkpoint: ckpt, checkpointEvery: 3 });
    assert.equal(resumed.stepCount, 16);
    for (let l = 0; l < model.info.layers; l++) {
      for (const which of ["weight", "bias", "lambda"] as const) {
        assert.deepEqual(resumed.read(l, which), whole.read(l, which), `layer ${l} ${which}`);
      }
    }
  });
});

Deno.test("calibrate: bad settings and sequences are refused; CLI train lococo writes heads that serve", async () => {
  await withModel(async (model, dir, tmp) => {
    assert.throws(() => LococoTrainer.create(model, { ...SHAPE, kernel: 4 }), /kernel 4 \(odd\)/);
    using tr = LococoTrainer.create(model, SHAPE);
    await assert.rejects(tr.accumulate([5]), /at least 2 tokens/);
    await assert.rejects(tr.accumulate([5, 99999]), /token id 99999 at index 1/);
    assert.throws(() => tr.step(), /no sequence was accumulated/);

    const data = join(tmp, "corpus.txt");
    await Deno.writeTextFile(data, "the ship left the harbour at dawn and the crew sang ".repeat(12));
    const out = join(tmp, "heads.safetensors");
    const r = await runCli(
      "train",
      "lococo",
      "--model",
      dir,
      "--data",
      data,
      "--out",
      out,
      "--slots",
      "24",
      "--segment",
      "16",
      "--kernel",
      "5",
      "--sequence-length",
      "64",
      "--steps",
      "3",
      "--threads",
      "2",
    );
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /step 3\/3 .*loss \d/);
    assert.match(r.err, /M 24, Mc 12, k 5, B 16/);
    const gen = await runCli(
      "generate",
      "--model",
      dir,
      "--prompt",
      "the ship ".repeat(20),
      "--max-tokens",
      "4",
      "--temperature",
      "0",
      "--cache",
      "lococo",
      "--heads",
      out,
    );
    assert.equal(gen.code, 0, gen.err);
    assert.match(gen.err, /cache lococo: .* [1-9]\d* compressions/);
  });
});

Deno.test("calibrate: with a LoRA set, the loss is the adapted model's, as a session with that adapter serves it", async () => {
  await withModel(async (model, dir, tmp) => {
    const { makeTestAdapter } = await import("../testing/mod.ts");
    const adapterDir = join(tmp, "lora");
    await makeTestAdapter(adapterDir, { base: dir, rank: 4, seed: 8, std: 0.2 });
    const adapter = await model.adapters.load(adapterDir);
    const ids = someIds(64, model.info.vocabSize, 33);
    using plain = LococoTrainer.create(model, { ...SHAPE, seed: 3 });
    using adapted = LococoTrainer.create(model, { ...SHAPE, seed: 3, adapter });
    const base = await plain.accumulate(ids), withLora = await adapted.accumulate(ids);
    assert.ok(Math.abs(base - withLora) > 1e-3, "the adapter changed nothing");
    const path = join(tmp, "heads.safetensors");
    await adapted.saveHeads(path);
    using heads = model.loadLococoHeads(path);
    using session = model.session({ cache: { kind: "lococo", heads } });
    await session.setAdapter(adapter);
    const served = await inferenceLoss(session, ids, 16, model.info.vocabSize);
    assert.ok(Math.abs(served - withLora) < 1e-4 * withLora, `inference ${served}, calibration ${withLora}`);
  });
});

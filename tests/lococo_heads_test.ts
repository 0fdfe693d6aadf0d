// The LoCoCo heads file: write, read, validation against the model, the CLI preset.
import assert from "node:assert/strict";
import { join } from "node:path";
import { KvfoldError } from "../src/errors.ts";
import { makeTestLococoHeads } from "../testing/mod.ts";
import {
  lococoFusedSlots,
  lococoTensorNames,
  readLococoHeads,
  writeLococoHeads,
} from "../src/formats/lococo_heads.ts";
import { readSafetensorsFile, type TensorInput, writeSafetensorsFile } from "../src/formats/safetensors.ts";
import { makeTestModel } from "../testing/mod.ts";
import { runCli, sameBytes, tempDir, uniformValues } from "./_fixtures.ts";

// ---------------------------------------------------------------------------------------------
// Helpers

async function withTemp(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await tempDir();
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const HYPER = { slots: 16, keepRate: 0.25, kernel: 3, segment: 8 }; // Mc = 12

/** The tensors and metadata writeLococoHeads would write, as plain inputs to corrupt. */
function headsTensors(layers: number, headDim: number, mc = 12, k = 3): TensorInput[] {
  const t: TensorInput[] = [];
  for (let i = 0; i < layers; i++) {
    const n = lococoTensorNames(i);
    t.push({
      name: n.weight,
      dtype: "F32",
      shape: [mc, 2 * headDim, k],
      data: uniformValues(mc * 2 * headDim * k, i),
    });
    t.push({ name: n.bias, dtype: "F32", shape: [mc], data: uniformValues(mc, 100 + i) });
    t.push({ name: n.normalizer, dtype: "F32", shape: [1], data: [0.5] });
  }
  return t;
}

function headsMetadata(over: Record<string, string | undefined> = {}): Record<string, string> {
  const md: Record<string, string | undefined> = {
    "kvfold.lococo.slots": "16",
    "kvfold.lococo.keep_rate": "0.25",
    "kvfold.lococo.kernel": "3",
    "kvfold.lococo.segment": "8",
    ...over,
  };
  return Object.fromEntries(Object.entries(md).filter(([, v]) => v !== undefined)) as Record<string, string>;
}

async function assertFormat(p: Promise<unknown>, re: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof KvfoldError, String(e));
    assert.equal(e.code, "FORMAT", e.message);
    assert.match(e.message, re);
    return true;
  });
}

// ---------------------------------------------------------------------------------------------
// Heads file

Deno.test("lococo heads: write/read round trip, given and random values", async () => {
  await withTemp(async (dir) => {
    const hd = 4, layers = 2, mc = lococoFusedSlots(16, 0.25);
    assert.equal(mc, 12);
    const values = [0, 1].map((i) => ({
      weight: uniformValues(mc * 2 * hd * 3, i + 1),
      bias: uniformValues(mc, i + 7),
      lambda: i === 0 ? 0.25 : -1.5,
    }));
    const path = join(dir, "given.safetensors");
    await writeLococoHeads(path, { layers, headDim: hd, ...HYPER, values });
    const f = await readSafetensorsFile(path);
    assert.deepEqual(f.metadata, { format: "pt", ...headsMetadata() });
    assert.deepEqual(f.tensors.get("model.layers.1.self_attn.memory_saver.layers.0.weight")!.shape, [
      12,
      8,
      3,
    ]);
    assert.deepEqual(f.tensors.get("model.layers.1.self_attn.memory_saver.layers.0.bias")!.shape, [12]);
    assert.deepEqual(f.tensors.get("model.layers.0.self_attn.memory_saver.normalizer")!.shape, [1]);
    const h = await readLococoHeads(path, { layers, headDim: hd });
    assert.equal(h.slots, 16);
    assert.equal(h.keepRate, 0.25);
    assert.equal(h.kernel, 3);
    assert.equal(h.segment, 8);
    assert.equal(h.fusedSlots, 12);
    assert.equal(h.layers.length, 2);
    for (let i = 0; i < 2; i++) {
      // F32 on disk: equal to the given values rounded to f32.
      assert.deepEqual(h.layers[i].weight, Float64Array.from(Float32Array.from(values[i].weight)));
      assert.deepEqual(h.layers[i].bias, Float64Array.from(Float32Array.from(values[i].bias)));
      assert.equal(h.layers[i].lambda, values[i].lambda);
    }

    // Random heads: deterministic per seed, within PyTorch's Conv1d init bound, λ default 0.5.
    const a = join(dir, "a.safetensors"), b = join(dir, "b.safetensors"), c = join(dir, "c.safetensors");
    const opts = { layers: 3, headDim: 8, slots: 10, keepRate: 0.5, kernel: 5, segment: 4 };
    await writeLococoHeads(a, { ...opts, seed: 3 });
    await writeLococoHeads(b, { ...opts, seed: 3 });
    await writeLococoHeads(c, { ...opts, seed: 4 });
    assert.ok(sameBytes(await Deno.readFile(a), await Deno.readFile(b)), `${a} and ${b} differ`);
    assert.notDeepEqual(await Deno.readFile(a), await Deno.readFile(c));
    const ha = await readLococoHeads(a, { layers: 3, headDim: 8 });
    assert.equal(ha.fusedSlots, 5);
    const bound = 1 / Math.sqrt(16 * 5);
    for (const l of ha.layers) {
      assert.equal(l.lambda, 0.5);
      assert.equal(l.weight.length, 5 * 16 * 5);
      assert.ok(l.weight.every((x) => Math.abs(x) <= bound));
      assert.ok(new Set(l.weight).size > l.weight.length / 2);
    }
    assert.notDeepEqual(ha.layers[0].weight, ha.layers[1].weight);

    // 16-bit dtypes read back too.
    await writeLococoHeads(a, { ...opts, dtype: "BF16", lambda: 0 });
    assert.equal((await readLococoHeads(a, { layers: 3, headDim: 8 })).layers[2].lambda, 0);
  });
});

Deno.test("lococo heads: writeLococoHeads refuses bad options", async () => {
  const base = { layers: 1, headDim: 4, ...HYPER };
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ kernel: 4 }, /kernel k must be odd/],
    [{ keepRate: 1 }, /0 < r < 1/],
    [{ keepRate: 0 }, /0 < r < 1/],
    [{ slots: 0 }, /slots M/],
    [{ segment: 0 }, /segment B/],
    [{ slots: 1, keepRate: 0.5 }, /Mc = floor.*is 0/],
    [{ layers: 0 }, /layers/],
    [{ values: [] }, /values has 0 layers/],
  ];
  for (const [over, re] of bad) {
    await assert.rejects(
      writeLococoHeads("/nonexistent-dir/x.safetensors", { ...base, ...over }),
      (e: unknown) => e instanceof KvfoldError && e.code === "INVALID_ARGUMENT" && re.test(e.message),
      JSON.stringify(over),
    );
  }
});

Deno.test("lococo heads: readLococoHeads names what does not fit the model", async () => {
  await withTemp(async (dir) => {
    const path = join(dir, "h.safetensors");
    const model = { layers: 2, headDim: 4 };
    const write = (t: TensorInput[], md = headsMetadata()) => writeSafetensorsFile(path, t, md);
    await write(headsTensors(2, 4));
    await readLococoHeads(path, model); // the baseline is valid

    // Layer count.
    await assertFormat(
      readLococoHeads(path, { layers: 3, headDim: 4 }),
      /heads are for 2 layer\(s\).*model has 3/,
    );
    await assertFormat(
      readLococoHeads(path, { layers: 1, headDim: 4 }),
      /heads are for 2 layer\(s\).*model has 1/,
    );
    await write(headsTensors(2, 4).filter((t) => t.name !== lococoTensorNames(0).bias));
    await assertFormat(
      readLococoHeads(path, model),
      /missing tensor "model\.layers\.0\.self_attn\.memory_saver\.layers\.0\.bias"/,
    );
    await write([...headsTensors(2, 4), { name: "lm_head.weight", dtype: "F32", shape: [1], data: [1] }]);
    await assertFormat(readLococoHeads(path, model), /unexpected tensor "lm_head\.weight"/);

    // head_dim.
    await write(headsTensors(2, 4));
    await assertFormat(
      readLococoHeads(path, { layers: 2, headDim: 8 }),
      /head_dim 4; the model's head_dim is 8/,
    );

    // Metadata.
    for (
      const [over, re] of [
        [{ "kvfold.lococo.slots": undefined }, /no "kvfold\.lococo\.slots"/],
        [{ "kvfold.lococo.keep_rate": undefined }, /no "kvfold\.lococo\.keep_rate"/],
        [{ "kvfold.lococo.kernel": undefined }, /no "kvfold\.lococo\.kernel"/],
        [{ "kvfold.lococo.segment": undefined }, /no "kvfold\.lococo\.segment"/],
        [{ "kvfold.lococo.slots": "sixteen" }, /"kvfold\.lococo\.slots" is "sixteen", not a decimal integer/],
        [{ "kvfold.lococo.slots": "16.0" }, /not a decimal integer/],
        [{ "kvfold.lococo.keep_rate": "1/4" }, /keep_rate" is "1\/4", not a decimal number/],
        [{ "kvfold.lococo.keep_rate": "1.5" }, /0 < r < 1, got 1\.5/],
        [{ "kvfold.lococo.keep_rate": "0" }, /0 < r < 1, got 0/],
        [{ "kvfold.lococo.slots": "0" }, /slots M must be an integer >= 1/],
        [{ "kvfold.lococo.segment": "0" }, /segment B must be an integer >= 1/],
        [{ "kvfold.lococo.kernel": "4" }, /kernel k must be odd/],
      ] as [Record<string, string | undefined>, RegExp][]
    ) {
      await write(headsTensors(2, 4), headsMetadata(over));
      await assertFormat(readLococoHeads(path, model), re);
    }
    // Even kernel with matching tensors is still refused.
    await write(headsTensors(2, 4, 12, 4), headsMetadata({ "kvfold.lococo.kernel": "4" }));
    await assertFormat(readLococoHeads(path, model), /kernel k must be odd for "same" padding, got 4/);

    // Shapes inconsistent with the metadata.
    await write(headsTensors(2, 4, 12, 5)); // kernel 5 on disk, metadata 3
    await assertFormat(readLococoHeads(path, model), /kernel size 5, metadata kernel is 3/);
    await write(headsTensors(2, 4, 10, 3)); // Mc 10 on disk, metadata gives 12
    await assertFormat(
      readLococoHeads(path, model),
      /10 output channels, metadata gives Mc = floor\(16 \* \(1 - 0\.25\)\) = 12/,
    );
    const badBias = headsTensors(2, 4).map((t) =>
      t.name === lococoTensorNames(1).bias ? { ...t, shape: [11], data: uniformValues(11, 1) } : t
    );
    await write(badBias);
    await assertFormat(
      readLococoHeads(path, model),
      /layers\.1\.self_attn\.memory_saver\.layers\.0\.bias" has shape \[11\], expected \[12\]/,
    );
    const badLambda = headsTensors(2, 4).map((t) =>
      t.name === lococoTensorNames(0).normalizer ? { ...t, shape: [2], data: [0.5, 0.5] } : t
    );
    await write(badLambda);
    await assertFormat(readLococoHeads(path, model), /normalizer" has shape \[2\], expected \[1\]/);
    const twoD = headsTensors(2, 4).map((t) =>
      t.name === lococoTensorNames(0).weight ? { ...t, shape: [12, 24] } : t
    );
    await write(twoD);
    await assertFormat(readLococoHeads(path, model), /weight" has shape \[12, 24\], expected \[12, 8, 3\]/);

    // Values and dtypes.
    const nan = headsTensors(2, 4).map((t) =>
      t.name === lococoTensorNames(1).normalizer ? { ...t, data: [NaN] } : t
    );
    await write(nan);
    await assertFormat(readLococoHeads(path, model), /normalizer" has a non-finite value NaN/);
    const ints = headsTensors(2, 4).map((t) =>
      t.name === lococoTensorNames(0).normalizer ? { ...t, dtype: "I32" as const, data: [1] } : t
    );
    await write(ints);
    await assertFormat(readLococoHeads(path, model), /dtype I32, expected a float dtype/);
  });
});

Deno.test("lococo heads: make-test-model --preset lococo-heads writes a readable heads file", async () => {
  await withTemp(async (dir) => {
    const modelDir = join(dir, "m");
    await makeTestModel(modelDir, { seed: 1 }); // tiny: 2 layers, head_dim 16
    const path = join(dir, "out", "heads.safetensors");
    const r = await runCli(
      "make-test-model",
      path,
      "--preset",
      "lococo-heads",
      "--base",
      modelDir,
      "--slots",
      "64",
      "--segment",
      "32",
      "--seed",
      "9",
    );
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /wrote LoCoCo heads/);
    const h = await readLococoHeads(path, { layers: 2, headDim: 16 });
    assert.equal(h.slots, 64);
    assert.equal(h.segment, 32);
    assert.equal(h.kernel, 21);
    assert.equal(h.keepRate, 0.5);
    assert.equal(h.fusedSlots, 32);
    assert.equal(h.layers[0].weight.length, 32 * 32 * 21);
    // The API with the same options writes the same bytes.
    const api = join(dir, "api.safetensors");
    await makeTestLococoHeads(api, { base: modelDir, slots: 64, segment: 32, seed: 9 });
    assert.ok(sameBytes(await Deno.readFile(api), await Deno.readFile(path)), "the API and CLI heads differ");

    // Defaults M = B = 512; an explicit head_dim in config.json wins over hidden / heads.
    const m8 = join(dir, "m8");
    await makeTestModel(m8, { seed: 1, headDim: 8, numLayers: 3 });
    const info = await makeTestLococoHeads(join(dir, "d.safetensors"), { base: m8 });
    assert.deepEqual(
      [info.layers, info.headDim, info.slots, info.keepRate, info.kernel, info.segment, info.fusedSlots],
      [3, 8, 512, 0.5, 21, 512, 256],
    );
    await readLococoHeads(join(dir, "d.safetensors"), { layers: 3, headDim: 8 });
    await assertFormat(
      readLococoHeads(join(dir, "d.safetensors"), { layers: 2, headDim: 16 }),
      /model has 2/,
    );

    const missing = await runCli("make-test-model", join(dir, "x.safetensors"), "--preset", "lococo-heads");
    assert.equal(missing.code, 1);
    assert.match(missing.err, /Missing --base/);
  });
});

// adapter_config.json as PEFT means it: target_modules and layers_to_transform decide which modules
// get LoRA (tensors of other modules are not loaded), and a malformed config is refused with a
// FORMAT error naming adapter_config.json and the key, where it was once ignored.
import assert from "node:assert/strict";
import { join } from "node:path";
import type { Adapter, KvfoldError, Model } from "../mod.ts";
import { readSafetensorsFile, writeSafetensorsFile } from "../src/formats/safetensors.ts";
import { makeTestAdapter } from "../testing/mod.ts";
import { relativeError, someIds, tempDir, testEngine, testModel } from "./_fixtures.ts";

type Config = Record<string, unknown>;

// A folder with the tensors of `from`, its config edited, and optionally some tensors zeroed.
async function variant(
  root: string,
  name: string,
  from: string,
  edit: (cfg: Config) => void,
  zero: (tensor: string) => boolean = () => false,
): Promise<string> {
  const dir = join(root, name);
  await Deno.mkdir(dir);
  const cfg = JSON.parse(await Deno.readTextFile(join(from, "adapter_config.json")));
  edit(cfg);
  await Deno.writeTextFile(join(dir, "adapter_config.json"), JSON.stringify(cfg));
  const { tensors } = await readSafetensorsFile(join(from, "adapter_model.safetensors"));
  await writeSafetensorsFile(
    join(dir, "adapter_model.safetensors"),
    [...tensors].map(([n, t]) => ({
      name: n,
      dtype: t.dtype,
      shape: t.shape,
      data: zero(n) ? new Uint8Array(t.data.length) : t.data.slice(),
    })),
  );
  return dir;
}

async function logitsWith(model: Model, adapter: Adapter | null): Promise<Float32Array> {
  using s = model.session({ contextSize: 32 });
  return (await s.prefill(someIds(9, model.info.vocabSize, 4), { logits: "all", adapter }))!;
}

const layer0B = (n: string) => n.includes(".layers.0.") && n.includes("lora_B");

Deno.test("lora config: layers_to_transform applies the adapter only to those layers", async () => {
  const kv = await testEngine();
  const base = await testModel("lora-base", { seed: 5, numHeads: 4, numKeyValueHeads: 2 });
  using model = await kv.loadModel(base);
  assert.equal(model.info.layers, 2);
  const root = await tempDir();
  try {
    const full = join(root, "full");
    await makeTestAdapter(full, { base, seed: 3, rank: 4, targetModules: ["q_proj", "v_proj", "down_proj"] });
    // The file holds pairs for layers 0 and 1; the config says only layer 1 is adapted.
    const only1 = await variant(root, "only1", full, (c) => (c.layers_to_transform = [1]));
    const only1Int = await variant(root, "only1-int", full, (c) => {
      c.layers_to_transform = 1;
      c.layers_pattern = "layers";
    });
    // The metamorphic twin: every layer adapted, but layer 0's B is zero, so layer 0 adds nothing.
    const zeroed = await variant(root, "zeroed", full, () => {}, layer0B);
    const want = await logitsWith(model, await model.adapters.load(zeroed));
    for (const dir of [only1, only1Int]) {
      const adapter = await model.adapters.load(dir);
      const got = await logitsWith(model, adapter);
      assert.ok(relativeError(got, want) < 1e-6, `${dir}: ${relativeError(got, want)}`);
    }
    // Neither the base model nor the whole adapter: the comparison above could fail.
    assert.ok(relativeError(await logitsWith(model, null), want) > 1e-3);
    assert.ok(relativeError(await logitsWith(model, await model.adapters.load(full)), want) > 1e-3);
    // Only layer 1's pairs are held.
    const a1 = model.adapters.get("only1")!, aFull = model.adapters.get("full")!;
    assert.equal(a1.info.params * 2, aFull.info.params);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("lora config: target_modules decides which projections are adapted", async () => {
  const kv = await testEngine();
  const base = await testModel("lora-base", { seed: 5, numHeads: 4, numKeyValueHeads: 2 });
  using model = await kv.loadModel(base);
  const root = await tempDir();
  try {
    const qv = join(root, "qv");
    await makeTestAdapter(qv, { base, seed: 4, rank: 4, targetModules: ["q_proj", "v_proj"] });
    const qOnly = await model.adapters.load(
      await variant(root, "q-only", qv, (c) => (c.target_modules = ["q_proj"])),
    );
    assert.deepEqual(qOnly.info.modules, ["q_proj"]);
    const vZeroed = await variant(root, "v-zeroed", qv, () => {}, (n) => n.includes("v_proj.lora_B"));
    const want = await logitsWith(model, await model.adapters.load(vZeroed));
    assert.ok(relativeError(await logitsWith(model, qOnly), want) < 1e-6);
    assert.ok(relativeError(await logitsWith(model, await model.adapters.load(qv)), want) > 1e-3);
    // A per-layer key, as PEFT matches it: the module name or a dotted suffix of it.
    const q1 = await model.adapters.load(
      await variant(root, "q1", qv, (c) => (c.target_modules = ["model.layers.1.self_attn.q_proj"])),
    );
    const q1Want = await variant(root, "q1-want", qv, () => {}, (n) => n.includes("v_proj") || layer0B(n));
    assert.ok(
      relativeError(await logitsWith(model, q1), await logitsWith(model, await model.adapters.load(q1Want))) <
        1e-6,
    );
    // "all-linear" adapts every projection the file has.
    const all = await model.adapters.load(
      await variant(root, "all", qv, (c) => (c.target_modules = "all-linear")),
    );
    assert.deepEqual(all.info.modules, ["q_proj", "v_proj"]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("lora config: malformed keys are refused, naming adapter_config.json and the key", async () => {
  const kv = await testEngine();
  const base = await testModel("lora-base", { seed: 5, numHeads: 4, numKeyValueHeads: 2 });
  using model = await kv.loadModel(base);
  const root = await tempDir();
  try {
    const good = join(root, "good");
    await makeTestAdapter(good, { base, seed: 2, rank: 4, targetModules: ["q_proj"] });
    const layer1 = join(root, "layer1");
    await makeTestAdapter(layer1, { base, seed: 2, rank: 4, targetModules: ["q_proj"], layers: [1] });
    let n = 0;
    const refuses = async (edit: (c: Config) => void, pattern: RegExp, code = "FORMAT", from = good) => {
      const dir = await variant(root, `bad${n++}`, from, edit);
      await assert.rejects(model.adapters.load(dir), (e: KvfoldError) => {
        assert.equal(e.code, code, e.message);
        assert.match(e.message, /adapter_config\.json/);
        assert.match(e.message, pattern);
        return true;
      });
      assert.equal(model.adapters.list().length, 0); // a folder that does not load is not registered
    };
    const ltt = (v: unknown) => (c: Config) => (c.layers_to_transform = v);
    await refuses(ltt([2]), /layers_to_transform .* names layer 2, but the model has 2 layers/);
    await refuses(ltt(-1), /layers_to_transform .* names layer -1/);
    await refuses(ltt(2 ** 32 + 1), /layers_to_transform .* names layer 4294967297/);
    await refuses(ltt("1"), /layers_to_transform .* is a string, not a layer index/);
    await refuses(ltt(true), /layers_to_transform .* is a boolean/);
    await refuses(ltt([]), /layers_to_transform .* is an empty list/);
    await refuses(ltt([0.5]), /layers_to_transform .* holds a number, not a layer index/);
    await refuses(ltt([[1]]), /layers_to_transform .* holds an array/);
    await refuses((c) => (c.layers_pattern = "layers"), /gives layers_pattern without layers_to_transform/);
    await refuses(
      (c) => Object.assign(c, { layers_to_transform: [0], layers_pattern: "h" }),
      /layers_pattern .*"layers"/,
    );
    await refuses(
      (c) => Object.assign(c, { layers_to_transform: [0], layers_pattern: 3 }),
      /layers_pattern .* not a name/,
    );
    const tm = (v: unknown) => (c: Config) => (c.target_modules = v);
    await refuses(tm(5), /target_modules .* is a number, not a list of module names/);
    await refuses(tm({ q_proj: true }), /target_modules .* is an object/);
    await refuses(tm([]), /target_modules .* is an empty list/);
    await refuses(tm(["q_proj", 3]), /target module a number of .* is not a projection/);
    await refuses(tm(["lm_head"]), /target module lm_head of .* is not a projection/);
    await refuses(
      tm(["model.layers.2.self_attn.q_proj"]),
      /target module model\.layers\.2\.self_attn\.q_proj/,
    );
    await refuses(tm(".*q_proj"), /target_modules .* regular expression/, "UNSUPPORTED");
    const rp = (v: unknown) => (c: Config) => (c.rank_pattern = v);
    await refuses(rp({ fc1: 4 }), /rank_pattern .* "fc1", which matches no adapted module/);
    await refuses(rp({ v_proj: 4 }), /rank_pattern .* "v_proj", which matches no adapted module/);
    await refuses(
      rp({ "layers\\.0\\..*q_proj": 4 }),
      /rank_pattern .* matches no adapted module .*literally/,
    );
    await refuses(rp({ q_proj: 0 }), /rank_pattern .* gives "q_proj" a number out of range/);
    await refuses(rp({ q_proj: 2.5 }), /rank_pattern .* gives "q_proj" a number out of range/);
    await refuses(rp({ q_proj: "4" }), /rank_pattern .* gives "q_proj" a string/);
    await refuses(rp([4]), /rank_pattern .* is an array, not an object/);
    // A rank_pattern entry for a layer layers_to_transform leaves out matches nothing adapted.
    await refuses(
      (c) =>
        Object.assign(c, {
          layers_to_transform: [1],
          rank_pattern: { "model.layers.0.self_attn.q_proj": 4 },
        }),
      /rank_pattern .* "model\.layers\.0\.self_attn\.q_proj", which matches no adapted module/,
    );
    const ap = (v: unknown) => (c: Config) => (c.alpha_pattern = v);
    await refuses(ap({ q_proj: -1 }), /alpha_pattern .* gives "q_proj" a number that is not positive/);
    await refuses(ap({ q_proj: null }), /alpha_pattern .* gives "q_proj" null/);
    await refuses(ap({ down_proj: 8 }), /alpha_pattern .* "down_proj", which matches no adapted module/);
    await refuses((c) => (c.r = 0), /needs "r", a rank in \[1, 65536\]/);
    await refuses((c) => (c.r = -4), /needs "r"/);
    await refuses((c) => (c.r = 2 ** 32 + 4), /needs "r"/);
    await refuses((c) => (c.r = "4"), /needs "r"/);
    await refuses((c) => (c.use_rslora = "yes"), /use_rslora in .* is a string, not a boolean/);
    // Every tensor belongs to a layer the config leaves out.
    await refuses(
      ltt([0]),
      /none of the 2 tensors .* target_modules and layers_to_transform/,
      "FORMAT",
      layer1,
    );
    // null means "not set", as PEFT writes it.
    const nulls = await variant(
      root,
      "nulls",
      good,
      (c) =>
        Object.assign(c, {
          layers_to_transform: null,
          layers_pattern: null,
          rank_pattern: null,
          alpha_pattern: null,
        }),
    );
    await model.adapters.load(nulls);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

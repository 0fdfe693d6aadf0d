// LoRA adapters: unmerged application against the float64 reference with merged weights, PEFT
// files written by PEFT itself (the torch.save fixture), isolation between sessions, batched
// mixed-adapter decode, the registry's budget and eviction, and bad adapters.
import assert from "node:assert/strict";
import { join } from "node:path";
import type { Adapter, KvfoldError, Model } from "../mod.ts";
import { DecodeBatcher } from "../src/batch.ts";
import { writeSafetensorsFile } from "../src/formats/safetensors.ts";
import { makeTestAdapter } from "../testing/mod.ts";
import { convertTorchCheckpoint } from "../src/formats/torch_bin.ts";
import { readSafetensorsFile, toFloat64 } from "../src/formats/safetensors.ts";
import { loadReferenceModel, referenceLogits, type ReferenceModel } from "./reference_forward.ts";
import { relativeError, runCli, someIds, tempDir, testEngine, testModel } from "./_fixtures.ts";

const FIXTURES = new URL("../../shared/fixtures/torch-bin/", import.meta.url).pathname;

// W += s · B A for every pair of a PEFT folder: the merged weights the reference runs.
async function mergeInto(ref: ReferenceModel, adapterDir: string): Promise<void> {
  const cfg = JSON.parse(await Deno.readTextFile(join(adapterDir, "adapter_config.json")));
  const { tensors } = await readSafetensorsFile(join(adapterDir, "adapter_model.safetensors"));
  for (const [name, a] of tensors) {
    if (!name.endsWith("lora_A.weight")) continue;
    const b = tensors.get(name.replace("lora_A", "lora_B"))!;
    const module = name.replace(/^base_model\.model\./, "").replace(/\.lora_A\.weight$/, "");
    const key = Object.keys(cfg.rank_pattern ?? {}).find((k) => module.endsWith(`.${k}`));
    const r = key ? cfg.rank_pattern[key] : cfg.r;
    const akey = Object.keys(cfg.alpha_pattern ?? {}).find((k) => module.endsWith(`.${k}`));
    const alpha = akey ? cfg.alpha_pattern[akey] : cfg.lora_alpha;
    const s = cfg.use_rslora ? alpha / Math.sqrt(r) : alpha / r;
    const A = toFloat64(a), B = toFloat64(b);
    const [out, rank] = b.shape, inp = a.shape[1];
    assert.equal(rank, r);
    const W = ref.tensors.get(`${module}.weight`)!;
    for (let o = 0; o < out; o++) {
      for (let i = 0; i < inp; i++) {
        let acc = 0;
        for (let j = 0; j < rank; j++) acc += B[o * rank + j] * A[j * inp + i];
        W[o * inp + i] += s * acc;
      }
    }
  }
}

let adapterRoot: Promise<string> | null = null;
async function adapterFor(name: string, options: Parameters<typeof makeTestAdapter>[1]): Promise<string> {
  adapterRoot ??= tempDir();
  const dir = join(await adapterRoot, name);
  await makeTestAdapter(dir, options);
  return dir;
}

async function tinyGqa(): Promise<string> {
  return await testModel("lora-base", { seed: 5, numHeads: 4, numKeyValueHeads: 2 });
}

// Prefill logits of every position, then `extra` decode steps' logits, concatenated.
async function runLogits(model: Model, ids: number[], extra: number[], adapter: Adapter | string | null) {
  using session = model.session({ contextSize: 64, batchSize: 8 });
  const all = (await session.prefill(ids, { logits: "all", adapter }))!;
  const out = [...all];
  for (const id of extra) {
    await session.decode(id);
    out.push(...session.logits());
  }
  return Float32Array.from(out);
}

Deno.test("lora: unmerged y = Wx + s·B(Ax) equals the float64 reference with merged weights", async () => {
  const kv = await testEngine();
  const base = await tinyGqa();
  using model = await kv.loadModel(base);
  const cases = [
    { name: "all-modules", rank: 4, alpha: 8 },
    { name: "qv-rslora", rank: 8, alpha: 16, rslora: true, targetModules: ["q_proj", "v_proj"] },
    {
      name: "patterns",
      rank: 4,
      alpha: 4,
      targetModules: ["k_proj", "o_proj", "down_proj", "up_proj"],
      rankPattern: { down_proj: 2 },
      alphaPattern: { o_proj: 12 },
      layers: [1],
      dtype: "BF16" as const,
    },
  ];
  const ids = someIds(11, model.info.vocabSize, 9);
  const extra = someIds(3, model.info.vocabSize, 10);
  const plain = await runLogits(model, ids, extra, null);
  for (const c of cases) {
    const dir = await adapterFor(c.name, { base, seed: 7, ...c });
    const adapter = await model.adapters.load(dir);
    assert.equal(adapter.name, c.name);
    assert.equal(adapter.info.rank, c.rank);
    const got = await runLogits(model, ids, extra, adapter);
    const ref = await loadReferenceModel(base);
    await mergeInto(ref, dir);
    const want = referenceLogits(ref, [...ids, ...extra]);
    const err = relativeError(got, want);
    assert.ok(err < 2e-5, `${c.name}: relative error ${err}`);
    // The adapter must matter, or this test could not fail.
    assert.ok(relativeError(plain, want) > 1e-3, `${c.name}: adapter changed nothing`);
  }
});

Deno.test("lora: a PEFT adapter saved by torch.save runs on its base after kvfold convert", async () => {
  const dir = await tempDir();
  try {
    // The fixture's base: hidden 16, 2 layers, q 16 rows, k/v 8 rows, intermediate 24, vocab 40.
    const base = join(dir, "base");
    await convertTorchCheckpoint(join(FIXTURES, "single"), base);
    // A 40-word word-level tokenizer: the fixture's vocabulary is too small for byte-level BPE.
    const vocab = Object.fromEntries(Array.from({ length: 40 }, (_, i) => [`w${i}`, i]));
    await Deno.writeTextFile(
      join(base, "tokenizer.json"),
      JSON.stringify({
        version: "1.0",
        added_tokens: [],
        normalizer: null,
        pre_tokenizer: { type: "Whitespace" },
        post_processor: null,
        decoder: null,
        model: { type: "WordLevel", vocab, unk_token: "w0" },
      }),
    );
    await Deno.writeTextFile(
      join(base, "config.json"),
      JSON.stringify({
        architectures: ["LlamaForCausalLM"],
        model_type: "llama",
        hidden_size: 16,
        intermediate_size: 24,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        vocab_size: 40,
        max_position_embeddings: 64,
        rms_norm_eps: 1e-6,
        rope_theta: 10000,
        tie_word_embeddings: false,
      }),
    );
    const adapterDir = join(dir, "adapter");
    const kv = await testEngine();
    using model = await kv.loadModel(base, { dtype: "f32" });
    // Straight from the .bin: refused with the way out.
    await assert.rejects(
      model.adapters.load(join(FIXTURES, "adapter")),
      (e: KvfoldError) =>
        e.code === "IO" && /adapter_model\.bin: convert it once with `kvfold convert/.test(e.message),
    );
    await convertTorchCheckpoint(join(FIXTURES, "adapter"), adapterDir);
    const adapter = await model.adapters.load(adapterDir);
    assert.deepEqual(adapter.info.modules, ["q_proj", "v_proj"]);
    assert.equal(adapter.info.rank, 4);
    assert.equal(adapter.info.alpha, 8);
    const ids = [1, 5, 9, 33, 2, 17, 39, 0];
    const got = await runLogits(model, ids, [4, 8], adapter);
    const ref = await loadReferenceModel(base);
    await mergeInto(ref, adapterDir);
    const want = referenceLogits(ref, [...ids, 4, 8]);
    assert.ok(relativeError(got, want) < 2e-5, `relative error ${relativeError(got, want)}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("lora: interleaved sessions with different adapters never see each other's", async () => {
  const kv = await testEngine();
  const base = await tinyGqa();
  using model = await kv.loadModel(base);
  const a = await model.adapters.load(await adapterFor("iso-a", { base, seed: 11 }));
  const b = await model.adapters.load(await adapterFor("iso-b", { base, seed: 12, rank: 2 }));
  const prompts = [someIds(7, 512, 1), someIds(5, 512, 2), someIds(6, 512, 3)];
  const adapters = [a, b, null];
  // Alone: each session's logits after its prompt and two decode steps.
  const alone = [];
  for (let i = 0; i < 3; i++) alone.push(await runLogits(model, prompts[i], [4, 5], adapters[i]));
  // Interleaved on one engine, one step of each in turn; session 2 switches adapters and back.
  const sessions = adapters.map(() => model.session({ contextSize: 64, batchSize: 8 }));
  const seen: number[][] = [[], [], []];
  for (let i = 0; i < 3; i++) {
    seen[i].push(...(await sessions[i].prefill(prompts[i], { logits: "all", adapter: adapters[i] }))!);
  }
  for (const id of [4, 5]) {
    for (let i = 0; i < 3; i++) {
      await sessions[i].decode(id);
      seen[i].push(...sessions[i].logits());
      if (i === 2) {
        await sessions[2].setAdapter(a); // a request on another adapter...
        await sessions[2].setAdapter(null); // ...then back: a pointer change both ways
      }
    }
  }
  for (let i = 0; i < 3; i++) assert.deepEqual(Float32Array.from(seen[i]), alone[i], `session ${i}`);
  assert.equal(a.users, 1);
  assert.equal(b.users, 1);
  sessions.forEach((s) => s.dispose());
  assert.equal(a.users, 0);
});

Deno.test("lora: one batched step over mixed adapters equals the sessions run one by one", async () => {
  const kv = await testEngine();
  const base = await tinyGqa();
  using model = await kv.loadModel(base);
  const a = await model.adapters.load(await adapterFor("batch-a", { base, seed: 21 }));
  const b = await model.adapters.load(
    await adapterFor("batch-b", { base, seed: 22, rank: 3, targetModules: ["v_proj", "down_proj"] }),
  );
  const plan = [a, null, b, a, null];
  const prompts = plan.map((_, i) => someIds(3 + i, 512, 40 + i));
  const next = [7, 8, 9, 10, 11];
  const solo: Float32Array[] = [];
  for (let i = 0; i < plan.length; i++) {
    using s = model.session({ contextSize: 32 });
    await s.prefill(prompts[i], { adapter: plan[i] });
    await s.decode(next[i]);
    solo.push(s.logits());
  }
  const sessions = plan.map(() => model.session({ contextSize: 32 }));
  for (let i = 0; i < plan.length; i++) await sessions[i].prefill(prompts[i], { adapter: plan[i] });
  await model.decodeBatch(sessions.map((session, i) => ({ session, token: next[i] })));
  for (let i = 0; i < plan.length; i++) {
    assert.equal(sessions[i].position, prompts[i].length + 1);
    const err = relativeError(sessions[i].logits(), solo[i]);
    assert.ok(err < 1e-5, `row ${i}: relative error ${err}`);
  }
  // Refusals leave every session as it was.
  await assert.rejects(
    model.decodeBatch([{ session: sessions[0], token: 1 }, { session: sessions[0], token: 2 }]),
    (e: KvfoldError) => e.code === "INVALID_ARGUMENT" && /repeats a session/.test(e.message),
  );
  await assert.rejects(
    model.decodeBatch([{ session: sessions[1], token: 1 }, { session: sessions[2], token: 99999 }]),
    (e: KvfoldError) => e.code === "INVALID_ARGUMENT" && /token id 99999/.test(e.message),
  );
  assert.equal(sessions[1].position, prompts[1].length + 1);
  sessions.forEach((s) => s.dispose());
});

Deno.test("lora: concurrent generate() loops through a DecodeBatcher give each one's solo tokens", async () => {
  const kv = await testEngine();
  const base = await tinyGqa();
  using model = await kv.loadModel(base);
  await model.adapters.load(await adapterFor("gen-a", { base, seed: 31 }), { name: "a" });
  await model.adapters.load(await adapterFor("gen-b", { base, seed: 32 }), { name: "b" });
  const requests = [
    { prompt: someIds(4, 512, 61), adapter: "a" },
    { prompt: someIds(6, 512, 62), adapter: "b" },
    { prompt: someIds(5, 512, 63), adapter: null },
    { prompt: someIds(3, 512, 64), adapter: "a" },
  ];
  const run = async (r: typeof requests[0], batcher?: DecodeBatcher) => {
    using s = model.session({ contextSize: 64 });
    for await (const _ of s.generate({ ...r, batcher, maxTokens: 12, temperature: 0, ignoreEos: true }));
    return s.lastStats!.tokens;
  };
  const solo = [];
  for (const r of requests) solo.push(await run(r));
  const batcher = new DecodeBatcher(model, { maxBatch: 8 });
  const together = await Promise.all(requests.map((r) => run(r, batcher)));
  assert.deepEqual(together, solo);
  assert.equal(batcher.stats.rows, 4 * 11);
  assert.ok(
    batcher.stats.steps < batcher.stats.rows / 2,
    `steps ${batcher.stats.steps}: rows were not batched`,
  );
});

Deno.test("lora: the registry evicts least recently used adapters, never one in use", async () => {
  const kv = await testEngine();
  const base = await tinyGqa();
  using model = await kv.loadModel(base);
  const dirs = [];
  for (let i = 0; i < 4; i++) dirs.push(await adapterFor(`lru-${i}`, { base, seed: 40 + i, rank: 4 }));
  const a0 = await model.adapters.load(dirs[0], { name: "a0" });
  const bytes = a0.info.bytes;
  model.adapters.budgetBytes = 2.5 * bytes;
  using session = model.session({ contextSize: 16 });
  await session.setAdapter("a0"); // in use, and about to become the least recently used
  await model.adapters.load(dirs[1], { name: "a1" });
  await model.adapters.load(dirs[2], { name: "a2" }); // over budget: a1 goes, a0 stays (in use)
  const loaded = () => model.adapters.list().filter((e) => e.loaded).map((e) => e.name).sort();
  assert.deepEqual(loaded(), ["a0", "a2"]);
  assert.equal(model.adapters.residentBytes, 2 * bytes);
  // A request naming an evicted adapter reloads it (evicting a2, the LRU unused one).
  using other = model.session({ contextSize: 16 });
  await other.prefill([1, 2, 3], { adapter: "a1" });
  assert.deepEqual(loaded(), ["a0", "a1"]);
  // Both resident adapters in use: a third cannot fit, and nothing in use is touched.
  await assert.rejects(
    model.adapters.load(dirs[3], { name: "a3" }),
    (e: KvfoldError) => e.code === "OUT_OF_MEMORY" && /budget/.test(e.message),
  );
  assert.deepEqual(loaded(), ["a0", "a1"]);
  assert.throws(() => model.adapters.unload("a0"), (e: KvfoldError) => e.code === "INVALID_STATE");
  assert.throws(
    () => a0.dispose(),
    (e: KvfoldError) => e.code === "INVALID_STATE" && /1 session/.test(e.message),
  );
  await session.setAdapter(null);
  model.adapters.unload("a0");
  assert.equal(a0.disposed, true);
  assert.deepEqual(model.adapters.list().map((e) => e.name).sort(), ["a1", "a2"]); // a3 never loaded
  await assert.rejects(session.setAdapter("a0"), (e: KvfoldError) => e.code === "INVALID_ARGUMENT");
});

Deno.test("lora: bad adapters are refused with a message naming the problem", async () => {
  const kv = await testEngine();
  const base = await tinyGqa();
  const wide = await testModel("lora-wide", { seed: 5, hiddenSize: 96, numHeads: 4, numKeyValueHeads: 2 });
  using model = await kv.loadModel(base);
  using other = await kv.loadModel(wide);
  const dir = await tempDir();
  try {
    const good = join(dir, "good");
    await makeTestAdapter(good, { base, rank: 4, targetModules: ["q_proj"] });
    const variant = async (name: string, edit: (cfg: Record<string, unknown>) => void) => {
      const d = join(dir, name);
      await Deno.mkdir(d);
      await Deno.copyFile(join(good, "adapter_model.safetensors"), join(d, "adapter_model.safetensors"));
      const cfg = JSON.parse(await Deno.readTextFile(join(good, "adapter_config.json")));
      edit(cfg);
      await Deno.writeTextFile(join(d, "adapter_config.json"), JSON.stringify(cfg));
      return d;
    };
    const refuses = async (d: string, code: string, pattern: RegExp) => {
      await assert.rejects(model.adapters.load(d), (e: KvfoldError) => {
        assert.equal(e.code, code, e.message);
        assert.match(e.message, pattern);
        return true;
      });
    };
    await refuses(
      await variant("rank", (c) => (c.r = 8)),
      "FORMAT",
      /rank 4, but adapter_config.json gives it r = 8/,
    );
    await refuses(
      await variant("target", (c) => (c.target_modules = ["fc1"])),
      "FORMAT",
      /target module fc1/,
    );
    await refuses(await variant("dora", (c) => (c.use_dora = true)), "UNSUPPORTED", /DoRA/);
    await refuses(
      await variant("prefix", (c) => (c.peft_type = "PREFIX_TUNING")),
      "UNSUPPORTED",
      /peft_type/,
    );
    const noConfig = join(dir, "no-config");
    await Deno.mkdir(noConfig);
    await refuses(noConfig, "IO", /adapter_config\.json does not exist/);
    // Tensors that do not fit the base.
    const tensors = async (name: string, list: Parameters<typeof writeSafetensorsFile>[1]) => {
      const d = await variant(name, () => {});
      await writeSafetensorsFile(join(d, "adapter_model.safetensors"), list);
      return d;
    };
    const pre = "base_model.model.model.layers.0";
    const f = (n: number) => new Float32Array(n).fill(0.01);
    await refuses(
      await tensors("module", [
        { name: `${pre}.mlp.fc1.lora_A.weight`, dtype: "F32", shape: [4, 64], data: f(256) },
        { name: `${pre}.mlp.fc1.lora_B.weight`, dtype: "F32", shape: [64, 4], data: f(256) },
      ]),
      "FORMAT",
      /no module mlp\.fc1/,
    );
    await refuses(
      await tensors("dtype", [
        {
          name: `${pre}.self_attn.q_proj.lora_A.weight`,
          dtype: "I32",
          shape: [4, 64],
          data: new Int32Array(256),
        },
        { name: `${pre}.self_attn.q_proj.lora_B.weight`, dtype: "F32", shape: [64, 4], data: f(256) },
      ]),
      "FORMAT",
      /is I32 \[4, 64\]/,
    );
    await refuses(
      await tensors("half", [{
        name: `${pre}.self_attn.q_proj.lora_A.weight`,
        dtype: "F32",
        shape: [4, 64],
        data: f(256),
      }]),
      "FORMAT",
      /has lora_A but no lora_B/,
    );
    await refuses(
      await tensors("layer", [
        {
          name: "base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight",
          dtype: "F32",
          shape: [4, 64],
          data: f(256),
        },
        {
          name: "base_model.model.model.layers.7.self_attn.q_proj.lora_B.weight",
          dtype: "F32",
          shape: [64, 4],
          data: f(256),
        },
      ]),
      "FORMAT",
      /adapts layer 7, but the model has 2 layers/,
    );
    // An adapter made for another base model: shapes do not match.
    const wideAdapter = join(dir, "wide");
    await makeTestAdapter(wideAdapter, { base: wide, rank: 4, targetModules: ["q_proj"] });
    await refuses(wideAdapter, "FORMAT", /maps 64 inputs to 64 outputs .*another base model/);
    // An adapter of one model cannot serve another model's session.
    const ok = await model.adapters.load(good);
    using s = other.session({ contextSize: 8 });
    await assert.rejects(
      s.setAdapter(ok),
      (e: KvfoldError) => e.code === "INVALID_ARGUMENT" && /another model/.test(e.message),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("lora: the CLI writes a PEFT adapter and applies --adapter in logits and generate", async () => {
  const base = await tinyGqa();
  const dir = await tempDir();
  try {
    const run = runCli;
    const made = await run("make-test-model", `${dir}/a`, "--preset", "lora", "--base", base, "--rank", "4");
    assert.equal(made.code, 0, made.err);
    const cfg = JSON.parse(await Deno.readTextFile(`${dir}/a/adapter_config.json`));
    assert.equal(cfg.r, 4);
    assert.equal(cfg.peft_type, "LORA");
    const ids = [1, 17, 300, 42, 7];
    const l = await run(
      "logits",
      "--model",
      base,
      "--ids",
      ids.join(","),
      "--adapter",
      `${dir}/a`,
      "--out",
      `${dir}/l.safetensors`,
    );
    assert.equal(l.code, 0, l.err);
    const got = toFloat64((await readSafetensorsFile(`${dir}/l.safetensors`)).tensors.get("logits")!);
    const ref = await loadReferenceModel(base);
    await mergeInto(ref, `${dir}/a`);
    assert.ok(relativeError(got, referenceLogits(ref, ids)) < 2e-5);
    const g = await run(
      "generate",
      "--model",
      base,
      "--prompt",
      "Once upon",
      "--max-tokens",
      "8",
      "--temperature",
      "0",
      "--adapter",
      `${dir}/a`,
    );
    assert.equal(g.code, 0, g.err);
    const kv = await testEngine();
    using model = await kv.loadModel(base);
    let want = "";
    for await (
      const p of model.generate("Once upon", {
        maxTokens: 8,
        temperature: 0,
        adapter: await model.adapters.load(`${dir}/a`),
      })
    ) want += p;
    assert.equal(g.out, want + "\n");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

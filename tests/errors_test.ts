// Bad input gets a KvfoldError that names the problem, and the process survives it.
import assert from "node:assert/strict";
import { Kvfold, KvfoldError, type KvfoldErrorCode } from "../mod.ts";
import { readSafetensorsFile, type TensorInput, writeSafetensorsFile } from "../src/formats/safetensors.ts";
import { tempDir, testEngine, testModel, WIDE_MODEL } from "./_fixtures.ts";
import { withBrokenModel } from "./_kvfold_asserts.ts";

async function expectLoadError(dir: string, code: KvfoldErrorCode, pattern: RegExp) {
  const kv = await testEngine();
  await assert.rejects(
    () => kv.loadModel(dir),
    (e: unknown) => {
      assert.ok(e instanceof KvfoldError, `not a KvfoldError: ${e}`);
      assert.equal(e.code, code, e.message);
      assert.match(e.message, pattern);
      return true;
    },
  );
}

const editJson = (path: string, f: (o: Record<string, unknown>) => void) => {
  const o = JSON.parse(Deno.readTextFileSync(path));
  f(o);
  Deno.writeTextFileSync(path, JSON.stringify(o));
};

Deno.test("errors: a folder that does not exist", async () => {
  await expectLoadError("/nonexistent/kvfold-model", "IO", /does not exist/);
});

Deno.test("errors: missing config.json, model.safetensors or tokenizer.json", async () => {
  await withBrokenModel(
    (d) => Deno.removeSync(`${d}/config.json`),
    (d) => expectLoadError(d, "IO", /config\.json/),
  );
  await withBrokenModel(
    (d) => Deno.removeSync(`${d}/model.safetensors`),
    (d) => expectLoadError(d, "IO", /model\.safetensors/),
  );
  await withBrokenModel(
    (d) => Deno.removeSync(`${d}/tokenizer.json`),
    (d) => expectLoadError(d, "IO", /tokenizer\.json/),
  );
});

Deno.test("errors: corrupt safetensors header", async () => {
  await withBrokenModel((d) => {
    const bytes = Deno.readFileSync(`${d}/model.safetensors`);
    bytes.fill(0x7b, 8, 40); // "{{{{..." is not JSON
    Deno.writeFileSync(`${d}/model.safetensors`, bytes);
  }, (d) => expectLoadError(d, "FORMAT", /model\.safetensors/));
  await withBrokenModel((d) => {
    const bytes = Deno.readFileSync(`${d}/model.safetensors`);
    new DataView(bytes.buffer).setBigUint64(0, BigInt(bytes.length) * 4n, true); // header longer than file
    Deno.writeFileSync(`${d}/model.safetensors`, bytes);
  }, (d) => expectLoadError(d, "FORMAT", /header/i));
  await withBrokenModel(
    (d) => Deno.writeFileSync(`${d}/model.safetensors`, new Uint8Array([1, 2, 3])),
    (d) => expectLoadError(d, "FORMAT", /model\.safetensors/),
  );
});

Deno.test("errors: truncated safetensors data", async () => {
  await withBrokenModel((d) => {
    const bytes = Deno.readFileSync(`${d}/model.safetensors`);
    Deno.writeFileSync(`${d}/model.safetensors`, bytes.subarray(0, Math.floor(bytes.length * 0.6)));
  }, (d) => expectLoadError(d, "FORMAT", /model\.safetensors/));
});

Deno.test("errors: a tensor whose shape does not match config.json", async () => {
  await withBrokenModel(
    (d) => editJson(`${d}/config.json`, (o) => (o.intermediate_size = 100)),
    (d) =>
      expectLoadError(
        d,
        "FORMAT",
        /mlp\.(gate|up|down)_proj\.weight has shape \[\d+, \d+\], config\.json says/,
      ),
  );
});

Deno.test("errors: a tensor with a dtype the engine does not run", async () => {
  await withBrokenModel(async (d) => {
    const f = await readSafetensorsFile(`${d}/model.safetensors`);
    const tensors: TensorInput[] = [];
    for (const [name, t] of f.tensors) {
      tensors.push(
        name === "model.norm.weight"
          ? { name, dtype: "I32", shape: t.shape, data: new Int32Array(t.shape[0]) }
          : { name, dtype: t.dtype, shape: t.shape, data: t.data.slice() },
      );
    }
    await writeSafetensorsFile(`${d}/model.safetensors`, tensors);
  }, (d) => expectLoadError(d, "UNSUPPORTED", /model\.norm\.weight.*I32/));
});

Deno.test("errors: a missing tensor is named", async () => {
  await withBrokenModel(async (d) => {
    const f = await readSafetensorsFile(`${d}/model.safetensors`);
    const tensors: TensorInput[] = [];
    for (const [name, t] of f.tensors) {
      if (name !== "model.layers.1.self_attn.k_proj.weight") {
        tensors.push({ name, dtype: t.dtype, shape: t.shape, data: t.data.slice() });
      }
    }
    await writeSafetensorsFile(`${d}/model.safetensors`, tensors);
  }, (d) => expectLoadError(d, "FORMAT", /model\.layers\.1\.self_attn\.k_proj\.weight is missing/));
});

Deno.test("errors: unknown model_type and unsupported rope scaling", async () => {
  await withBrokenModel(
    (d) => editJson(`${d}/config.json`, (o) => (o.model_type = "gpt2")),
    (d) => expectLoadError(d, "UNSUPPORTED", /model_type "gpt2"/),
  );
  await withBrokenModel(
    (d) => editJson(`${d}/config.json`, (o) => (o.rope_scaling = { rope_type: "yarn", factor: 4 })),
    (d) => expectLoadError(d, "UNSUPPORTED", /yarn/),
  );
});

Deno.test("errors: malformed config.json and tokenizer.json", async () => {
  await withBrokenModel(
    (d) => Deno.writeTextFileSync(`${d}/config.json`, '{"model_type": "llama", '),
    (d) => expectLoadError(d, "FORMAT", /config\.json/),
  );
  await withBrokenModel(
    (d) => Deno.writeTextFileSync(`${d}/tokenizer.json`, "not json"),
    (d) => expectLoadError(d, "FORMAT", /tokenizer\.json/),
  );
});

Deno.test("errors: a sharded index naming a missing shard", async () => {
  const src = await testModel("sharded", { shards: 2, seed: 11 });
  const dir = await tempDir();
  try {
    for (const f of Deno.readDirSync(src)) Deno.copyFileSync(`${src}/${f.name}`, `${dir}/${f.name}`);
    Deno.removeSync(`${dir}/model-00002-of-00002.safetensors`);
    await expectLoadError(dir, "IO", /model-00002-of-00002\.safetensors/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("errors: token ids out of range, non-integer, empty, and past the context", async () => {
  const kv = await testEngine();
  using model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  using s = model.session({ contextSize: 8 });
  const V = model.info.vocabSize;
  const rejects = (p: () => Promise<unknown>, code: KvfoldErrorCode, re: RegExp) =>
    assert.rejects(p, (e: unknown) => e instanceof KvfoldError && e.code === code && re.test(e.message));
  await rejects(
    () => s.prefill([1, V]),
    "INVALID_ARGUMENT",
    new RegExp(`token id ${V} at index 1 is outside \\[0, ${V}\\)`),
  );
  await rejects(() => s.prefill([-1]), "INVALID_ARGUMENT", /token id -1/);
  await rejects(() => s.prefill([1.5]), "INVALID_ARGUMENT", /not an integer/);
  await rejects(() => s.prefill([]), "INVALID_ARGUMENT", /no token ids/);
  await rejects(() => s.decode(V + 5), "INVALID_ARGUMENT", /outside/);
  assert.equal(s.position, 0);
  await s.prefill([1, 2, 3, 4, 5, 6]);
  await rejects(() => s.prefill([1, 2, 3]), "INVALID_STATE", /exceed n_ctx 8/);
  assert.equal(s.position, 6);
  assert.throws(
    () => s.logits().length === V ? s.truncate(7) : null,
    (e: unknown) => e instanceof KvfoldError && e.code === "INVALID_ARGUMENT",
  );
});

Deno.test("errors: disposed handles refuse use; disposing a model disposes its sessions", async () => {
  const kv = await testEngine();
  const model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  const s = model.session({ contextSize: 8 });
  await s.prefill([1, 2]);
  model.dispose();
  model.dispose(); // idempotent
  await assert.rejects(
    () => s.prefill([3]),
    (e: unknown) => e instanceof KvfoldError && e.code === "DISPOSED",
  );
  assert.throws(() => model.session(), (e: unknown) => e instanceof KvfoldError && e.code === "DISPOSED");
});

Deno.test("errors: disposing a session during a prefill cancels it and frees afterwards", async () => {
  const kv = await testEngine();
  using model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  const s = model.session({ contextSize: 256, batchSize: 1 });
  const running = s.prefill(Array.from({ length: 250 }, (_, i) => 3 + i));
  s.dispose();
  await assert.rejects(
    () => running,
    (e: unknown) =>
      e instanceof KvfoldError && e.code === "DISPOSED" && /session(: it)? was disposed/.test(e.message),
  );
  await s[Symbol.asyncDispose]();
});

Deno.test("errors: the cuda backend is refused clearly when not built; bad options are TypeErrors", async () => {
  const info = await Kvfold.info();
  if (!info.backendsBuilt.includes("cuda")) {
    await assert.rejects(
      () => Kvfold.open({ backend: "cuda" }),
      (e: unknown) =>
        e instanceof KvfoldError && e.code === "UNSUPPORTED" && /cuda backend is not built/.test(e.message),
    );
  }
  await assert.rejects(() => Kvfold.open({ backend: "tpu" as "cpu" }), TypeError);
  await assert.rejects(() => Kvfold.open({ threads: -1 }), RangeError);
  const kv = await testEngine();
  const dir = await testModel("gqa", { seed: 11 });
  await assert.rejects(() => kv.loadModel(dir, { dtype: "f8" as "f16" }), TypeError);
});

Deno.test("errors: a context that cannot fit in memory is refused before anything is allocated", async () => {
  const kv = await testEngine();
  // 8 layers x 2 (k, v) x 128 floats per position: 8 KiB a position, 128 GiB for 16M positions.
  const dir = await testModel("wide", WIDE_MODEL);
  using model = await kv.loadModel(dir);
  assert.throws(
    () => model.session({ contextSize: 1 << 24 }),
    (e: unknown) =>
      e instanceof KvfoldError && e.code === "OUT_OF_MEMORY" &&
      /16777216 KV slots per layer need 128\.00 GiB of KV cache/.test(e.message),
  );
  // The model is intact and a sensible session still works.
  using s = model.session({ contextSize: 64 });
  await s.prefill([1, 2, 3]);
  assert.equal(s.position, 3);
});

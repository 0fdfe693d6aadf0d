// The kvfold CLI as users and later issues call it, run as a subprocess.
import assert from "node:assert/strict";
import { readSafetensorsFile, toFloat32, writeSafetensorsFile } from "../src/formats/safetensors.ts";
import { loadReferenceModel, referenceLogits } from "./reference_forward.ts";
import { Compressor } from "../src/compressor.ts";
import { relativeError, runCli, sameBytes, tempDir, testEngine, testModel } from "./_fixtures.ts";

const kvfold = runCli;

Deno.test("cli: logits writes [n_ids, vocab] f32 that match the float64 reference", async () => {
  const model = await testModel("gqa", { seed: 11 });
  const dir = await tempDir();
  try {
    const r = await kvfold(
      "logits",
      "--model",
      model,
      "--ids",
      "1,17,300,42,7",
      "--out",
      `${dir}/l.safetensors`,
    );
    assert.equal(r.code, 0, r.err);
    const f = await readSafetensorsFile(`${dir}/l.safetensors`);
    const t = f.tensors.get("logits")!;
    assert.equal(t.dtype, "F32");
    assert.deepEqual(t.shape, [5, 512]);
    const want = referenceLogits(await loadReferenceModel(model), [1, 17, 300, 42, 7]);
    assert.ok(relativeError(toFloat32(t), want) < 1e-4);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli: generate at temperature 0 prints what the API generates", async () => {
  const model = await testModel("gqa", { seed: 11 });
  const r = await kvfold(
    "generate",
    "--model",
    model,
    "--prompt",
    "Once upon",
    "--max-tokens",
    "12",
    "--temperature",
    "0",
  );
  assert.equal(r.code, 0, r.err);
  const kv = await testEngine();
  using m = await kv.loadModel(model);
  let want = "";
  for await (const p of m.generate("Once upon", { maxTokens: 12, temperature: 0 })) want += p;
  assert.equal(r.out, want + "\n");
  assert.match(r.err, /prompt tokens.*generated/);
});

Deno.test("cli: make-test-model is deterministic per seed and loadable", async () => {
  const dir = await tempDir();
  try {
    for (const [name, seed] of [["a", "5"], ["b", "5"], ["c", "6"]]) {
      const r = await kvfold("make-test-model", `${dir}/${name}`, "--seed", seed);
      assert.equal(r.code, 0, r.err);
    }
    const bytes = (n: string) => Deno.readFileSync(`${dir}/${n}/model.safetensors`);
    assert.ok(sameBytes(bytes("a"), bytes("b")), "one seed, two models");
    assert.ok(!sameBytes(bytes("a"), bytes("c")), "two seeds, one model");
    for (const f of ["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"]) {
      assert.ok(Deno.statSync(`${dir}/a/${f}`).isFile, f);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli: info reports the version, backends and threads", async () => {
  const r = await kvfold("info");
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /kvfold \d+\.\d+\.\d+/);
  assert.match(r.out, /backends built: cpu/);
  assert.match(r.out, /\d+ thread/);
  assert.match(r.out, /gpu: /);
});

Deno.test("cli: bad usage gets a clear message and a non-zero exit", async () => {
  const missing = await kvfold("generate", "--prompt", "x");
  assert.equal(missing.code, 1);
  assert.match(missing.err, /Missing --model/);
  const badIds = await kvfold(
    "logits",
    "--model",
    await testModel("gqa", { seed: 11 }),
    "--ids",
    "1,x",
    "--out",
    "/tmp/none",
  );
  assert.equal(badIds.code, 1);
  assert.match(badIds.err, /item 1 "x" is not an integer/);
  const unknown = await kvfold("frobnicate");
  assert.equal(unknown.code, 2);
  assert.match(unknown.err, /unknown command/);
  const noModel = await kvfold("generate", "--model", "/nonexistent", "--prompt", "x");
  assert.equal(noModel.code, 1);
  assert.match(noModel.err, /does not exist \[IO\]/);
});

Deno.test("cli: logits --prefix runs the embeddings first and matches the reference", async () => {
  const model = await testModel("gqa", { seed: 11 });
  const dir = await tempDir();
  try {
    const H = 64, K = 3;
    const emb = Float32Array.from({ length: K * H }, (_, i) => Math.sin(i) * 0.1);
    await writeSafetensorsFile(`${dir}/p.safetensors`, [{
      name: "embeddings",
      dtype: "F32",
      shape: [K, H],
      data: emb,
    }]);
    const r = await kvfold(
      "logits",
      "--model",
      model,
      "--ids",
      "1,17,300",
      "--prefix",
      `${dir}/p.safetensors`,
      "--out",
      `${dir}/l.safetensors`,
    );
    assert.equal(r.code, 0, r.err);
    const t = (await readSafetensorsFile(`${dir}/l.safetensors`)).tensors.get("logits")!;
    assert.deepEqual(t.shape, [3, 512]);
    const want = referenceLogits(await loadReferenceModel(model), [1, 17, 300], {
      prefixEmbeddings: Float64Array.from(emb),
    });
    assert.ok(relativeError(toFloat32(t), want) < 1e-4);
    const bad = await kvfold(
      "logits",
      "--model",
      model,
      "--ids",
      "1",
      "--prefix",
      `${dir}/l.safetensors`,
      "--out",
      `${dir}/x.safetensors`,
    );
    assert.equal(bad.code, 1);
    assert.match(bad.err, /no 2-D tensor "embeddings"/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli: convert turns a torch.save checkpoint into the expected safetensors", async () => {
  const fixtures = new URL("../../shared/fixtures/torch-bin/", import.meta.url).pathname;
  const dir = await tempDir();
  try {
    const r = await kvfold("convert", `${fixtures}single`, `${dir}/out`);
    assert.equal(r.code, 0, r.err);
    const got = await readSafetensorsFile(`${dir}/out/model.safetensors`);
    const want = await readSafetensorsFile(`${fixtures}single/expected.safetensors`);
    assert.deepEqual([...got.tensors.keys()].sort(), [...want.tensors.keys()].sort());
    for (const [name, t] of want.tensors) assert.deepEqual(got.tensors.get(name)!.data, t.data, name);
    const hostile = await kvfold("convert", `${fixtures}hostile`, `${dir}/h`);
    assert.equal(hostile.code, 1);
    assert.match(hostile.err, /refusing to load it \[FORMAT\]/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli: make-test-model --preset compressor and compress --ids write summary vectors", async () => {
  const dir = await tempDir();
  try {
    const made = await kvfold("make-test-model", `${dir}/c`, "--preset", "compressor", "--seed", "2");
    assert.equal(made.code, 0, made.err);
    const r = await kvfold(
      "compress",
      "--compressor",
      `${dir}/c`,
      "--ids",
      "5,6,7,8,9,10,11",
      "--segment-length",
      "3",
      "--out",
      `${dir}/s.safetensors`,
    );
    assert.equal(r.code, 0, r.err);
    const t = (await readSafetensorsFile(`${dir}/s.safetensors`)).tensors.get("summary")!;
    assert.equal(t.dtype, "F32");
    assert.deepEqual(t.shape, [50 * 3, 64]); // ceil(7 / 3) segments of 50 summary rows
    // The CLI writes exactly what the API computes.
    const kv = await testEngine();
    using c = await Compressor.load(kv, `${dir}/c`);
    const api = await c.compress([5, 6, 7, 8, 9, 10, 11], { segmentLength: 3 });
    assert.deepEqual(toFloat32(t), api.data);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

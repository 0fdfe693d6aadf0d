// The native forward pass against the float64 TypeScript reference, across the architectures the
// design names, plus the metamorphic identities of the KV cache and weight conversion.
import assert from "node:assert/strict";
import type { TestModelOptions } from "../testing/mod.ts";
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from "../src/formats/safetensors.ts";
import { loadReferenceModel, referenceLogits } from "./reference_forward.ts";
import { relativeError, someIds, testEngine, testModel } from "./_fixtures.ts";

const CONFIGS: [string, TestModelOptions][] = [
  ["gqa", {}],
  ["mha", { numKeyValueHeads: 4 }],
  ["mqa", { numKeyValueHeads: 1 }],
  ["tied", { tieWordEmbeddings: true }],
  ["qwen2-bias", { modelType: "qwen2" }],
  ["llama-attention-bias", { attentionBias: true }],
  ["mistral", { modelType: "mistral" }],
  ["rope-theta", { ropeTheta: 500000 }],
  ["rope-linear", { ropeScaling: { rope_type: "linear", factor: 4 } }],
  ["rope-llama3", {
    ropeScaling: {
      rope_type: "llama3",
      factor: 8,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 64,
    },
  }],
  ["explicit-head-dim", { headDim: 24 }],
  ["sharded", { shards: 2 }],
  ["f16", { dtype: "float16" }],
  ["bf16", { dtype: "bfloat16" }],
];

for (const [name, options] of CONFIGS) {
  Deno.test(`forward: native logits match the float64 reference (${name})`, async () => {
    const dir = await testModel(name, { ...options, seed: 11 });
    const kv = await testEngine();
    using model = await kv.loadModel(dir);
    const ids = someIds(40, model.info.vocabSize, 5);
    // batchSize 16 forces three prefill chunks, so chunk boundaries are covered too.
    using session = model.session({ contextSize: 64, batchSize: 16 });
    const got = (await session.prefill(ids, { logits: "all" }))!;
    const want = referenceLogits(await loadReferenceModel(dir), ids);
    assert.equal(got.length, want.length);
    const err = relativeError(got, want);
    // bf16 weights on AVX512-BF16 CPUs: the prefill GEMM rounds activations to bf16 for vdpbf16ps, as
    // llama.cpp does (about 5e-3 here); every other path multiplies exactly (tests/cpu_kernels_test.ts
    // checks each path, KVFOLD_CPU=avx512 included, at 1e-4).
    const bound = name === "bf16" && kv.name.includes("avx512-bf16") ? 3e-2 : 1e-4;
    assert.ok(err < bound, `relative error ${err.toExponential(2)} >= ${bound}`);
  });
}

Deno.test("forward: positions far into the context stay accurate (rope at position 200)", async () => {
  const dir = await testModel("gqa", { seed: 11 });
  const kv = await testEngine();
  using model = await kv.loadModel(dir);
  const ids = someIds(210, model.info.vocabSize, 9);
  using session = model.session({ contextSize: 256, batchSize: 64 });
  const got = (await session.prefill(ids, { logits: "all" }))!;
  const want = referenceLogits(await loadReferenceModel(dir), ids);
  const V = model.info.vocabSize;
  const err = relativeError(got.subarray(200 * V), want.subarray(200 * V));
  assert.ok(err < 1e-4, `relative error ${err.toExponential(2)} at positions 200..209`);
});

Deno.test("forward: blocked attention kernels at head_dim 64 and 40 over many key tiles", async () => {
  // head_dim 64 runs the vector paths of the score and value tiles; 40 their scalar tails. 150
  // tokens in chunks of 37 give blocks of 16 rows plus remainders, and three tiles of 64 keys; in one
  // chunk of 150, blocks of 32 rows (2 heads, 2 threads: fewer rows would be needed for 4 tasks each)
  // or 64 (3 heads), each scored in runs of 16 rows over the keys they reach.
  // The window case is checked against a reference that masks keys window or more positions back.
  for (
    const [name, options] of [
      ["hd64", { hiddenSize: 128, numHeads: 2, numKeyValueHeads: 1 }],
      ["hd40", { hiddenSize: 120, numHeads: 3, numKeyValueHeads: 3, headDim: 40 }],
      // Mistral's window of 24 keys: rows of one block start their keys at different tiles.
      ["hd64-window", {
        hiddenSize: 128,
        numHeads: 2,
        numKeyValueHeads: 1,
        modelType: "mistral",
        slidingWindow: 24,
      }],
    ] as [string, TestModelOptions][]
  ) {
    const dir = await testModel(`attention-${name}`, { ...options, maxPositionEmbeddings: 256, seed: 13 });
    const kv = await testEngine();
    using model = await kv.loadModel(dir);
    const ids = someIds(150, model.info.vocabSize, 17);
    const want = referenceLogits(await loadReferenceModel(dir), ids);
    for (const batchSize of [37, 150]) {
      using session = model.session({ contextSize: 160, batchSize });
      const got = (await session.prefill(ids, { logits: "all" }))!;
      const err = relativeError(got, want);
      assert.ok(err < 1e-4, `${name}, chunks of ${batchSize}: relative error ${err.toExponential(2)}`);
    }
  }
});

Deno.test("forward: KV-cache decode equals full recompute, token by token", async () => {
  const dir = await testModel("gqa", { seed: 11 });
  const kv = await testEngine();
  using model = await kv.loadModel(dir);
  const V = model.info.vocabSize;
  const ids = someIds(20, V, 21);
  using full = model.session({ contextSize: 32 });
  const all = (await full.prefill(ids, { logits: "all" }))!;
  using inc = model.session({ contextSize: 32 });
  await inc.prefill(ids.slice(0, 5));
  for (let i = 5; i < ids.length; i++) {
    await inc.decode(ids[i]);
    const err = relativeError(inc.logits(), all.subarray(i * V, (i + 1) * V));
    assert.ok(err < 1e-5, `position ${i}: decode differs from full prefill by ${err.toExponential(2)}`);
  }
  assert.equal(inc.position, ids.length);
});

Deno.test("forward: prefill chunk size does not change the logits", async () => {
  const dir = await testModel("qwen2-bias", { modelType: "qwen2", seed: 11 });
  const kv = await testEngine();
  using model = await kv.loadModel(dir);
  const ids = someIds(33, model.info.vocabSize, 2);
  const results: Float32Array[] = [];
  for (const batchSize of [1, 7, 64]) {
    using s = model.session({ contextSize: 64, batchSize });
    results.push((await s.prefill(ids, { logits: "all" }))!);
  }
  assert.ok(relativeError(results[0], results[2]) < 1e-5);
  assert.ok(relativeError(results[1], results[2]) < 1e-5);
});

Deno.test("forward: weights converted to bf16/f16 at load match the reference with rounded matrices", async () => {
  const dir = await testModel("gqa", { seed: 11 });
  const kv = await testEngine();
  for (
    const [dtype, round] of [["bf16", (x: number) => bf16ToF32(f32ToBf16(x))], [
      "f16",
      (x: number) => f16ToF32(f32ToF16(x)),
    ]] as const
  ) {
    using model = await kv.loadModel(dir, { dtype });
    assert.equal(model.info.weightDType, dtype);
    // 8 rows: the matrix-vector path. It multiplies f16 weights exactly on every CPU, and bf16 ones
    // too except on AVX512-BF16 CPUs, where vdpbf16ps rounds the activations to bf16 as the GEMM does
    // (see above): there the bf16 case can only be held to that rounding's bound, and every path's
    // exact product is checked by tests/cpu_kernels_test.ts (KVFOLD_CPU=avx512 included).
    const roundsActivations = dtype === "bf16" && kv.name.includes("avx512-bf16");
    const ids = someIds(8, model.info.vocabSize, 8);
    using s = model.session({ contextSize: 16 });
    const got = (await s.prefill(ids, { logits: "all" }))!;
    // The reference with every matrix rounded the same way (vectors stay f32 in the engine).
    const ref = await loadReferenceModel(dir);
    for (const [name, shape] of ref.shapes) {
      if (shape.length === 2) ref.tensors.get(name)!.forEach((x, i, arr) => (arr[i] = round(x)));
    }
    const err = relativeError(got, referenceLogits(ref, ids));
    const bound = roundsActivations ? 3e-2 : 1e-4;
    assert.ok(err < bound, `${dtype}: relative error ${err.toExponential(2)} against rounded reference`);
    if (roundsActivations) continue;
    // ...and the rounding really happened: the unrounded reference is measurably further away.
    const errUnrounded = relativeError(got, referenceLogits(await loadReferenceModel(dir), ids));
    assert.ok(errUnrounded > 10 * err, `${dtype}: ${errUnrounded} vs ${err}`);
  }
});

Deno.test("forward: mmap and read-into-memory loads give identical logits", async () => {
  const dir = await testModel("gqa", { seed: 11 });
  const kv = await testEngine();
  using a = await kv.loadModel(dir, { mmap: true });
  using b = await kv.loadModel(dir, { mmap: false });
  const ids = someIds(9, a.info.vocabSize, 13);
  using sa = a.session({ contextSize: 16 });
  using sb = b.session({ contextSize: 16 });
  assert.deepEqual(await sa.prefill(ids, { logits: "all" }), await sb.prefill(ids, { logits: "all" }));
});

// Integers at the native boundary: every value past what its C type holds is refused as the caller
// gave it, never wrapped (2**32 + 5 once reached C as 5). Option values are RangeErrors (API
// misuse); token ids and labels are INVALID_ARGUMENT KvfoldErrors naming the id and the vocabulary.
import assert from "node:assert/strict";
import { Kvfold, KvfoldError } from "../mod.ts";
import { decodeBatch } from "../src/batch.ts";
import { LococoTrainer } from "../src/lococo_train.ts";
import { sampleFromLogits } from "../src/session.ts";
import { LoraTrainer } from "../src/train.ts";
import {
  configPositiveInt,
  int32Arg,
  int64Arg,
  showValue,
  tokenIdsArg,
  uint64Arg,
} from "../src/_int_args.ts";
import { initModelFolder } from "../src/model_train_loop.ts";
import { writeModelGguf } from "../src/formats/gguf_write.ts";
import { tempDir, testEngine, testModel } from "./_fixtures.ts";

const BIG = 2 ** 32 + 5; // wraps to 5 as an int32

function rangeError(re: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof RangeError, `expected a RangeError, got ${e}`);
    assert.match(e.message, re);
    return true;
  };
}

function invalidArgument(re: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof KvfoldError, `expected a KvfoldError, got ${e}`);
    assert.equal(e.code, "INVALID_ARGUMENT", e.message);
    assert.match(e.message, re);
    return true;
  };
}

Deno.test("int args: values are checked and named as given, never wrapped", () => {
  assert.equal(int32Arg("x", "n", 7, { min: 0 }), 7);
  assert.equal(int32Arg("x", "n", -(2 ** 31)), -(2 ** 31));
  assert.throws(() => int32Arg("create session", "contextSize", 2 ** 32 + 16, { min: 0 }), {
    name: "RangeError",
    message: "Cannot create session: contextSize 4294967312 is outside [0, 2147483647]",
  });
  assert.throws(() => int32Arg("x", "n", 2 ** 31), rangeError(/n 2147483648 is outside/));
  assert.throws(() => int32Arg("x", "n", 1.5), rangeError(/n 1\.5 is not an integer/));
  assert.throws(() => int32Arg("x", "n", NaN), rangeError(/n NaN is not an integer/));
  assert.throws(() => int32Arg("x", "n", "16"), TypeError);
  assert.throws(() => int32Arg("x", "n", 3n), TypeError);
  assert.equal(int64Arg("x", "n", 2 ** 40), 2n ** 40n);
  assert.throws(() => int64Arg("x", "n", 2 ** 60), rangeError(/not a safe integer/));
  assert.equal(uint64Arg("x", "seed", 2n ** 64n - 1n), 2n ** 64n - 1n);
  assert.throws(() => uint64Arg("x", "seed", 2n ** 64n), rangeError(/seed 18446744073709551616n is outside/));
  assert.throws(() => uint64Arg("x", "seed", -1), rangeError(/seed -1 is outside/));
  assert.equal(showValue(-0), "-0");
  assert.equal(showValue({}), "an object");
  const ids = tokenIdsArg("prefill", [0, 3, 9], 10);
  assert.deepEqual([...new Int32Array(ids.buffer)], [0, 3, 9]);
  assert.throws(
    () => tokenIdsArg("prefill", [1, BIG], 10),
    invalidArgument(/token id 4294967301 at index 1 is outside \[0, 10\), the vocabulary of 10 tokens/),
  );
  assert.deepEqual([...new Int32Array(tokenIdsArg("t", [-1, 2], 10, { ignore: -1 }).buffer)], [-1, 2]);
});

Deno.test("hostile integers: token ids past int32 or the vocabulary are refused, nothing runs", async () => {
  const kv = await testEngine();
  using model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  const V = model.info.vocabSize;
  using s = model.session({ contextSize: 32 });
  await assert.rejects(
    () => s.prefill([BIG]),
    invalidArgument(/token id 4294967301 at index 0 .*vocabulary of 512/),
  );
  await assert.rejects(() => s.prefill([1, 2 ** 31]), invalidArgument(/token id 2147483648 at index 1/));
  await assert.rejects(
    () => s.prefill([2 ** 53 + 2]),
    invalidArgument(/token id 9007199254740994 at index 0/),
  );
  await assert.rejects(
    () => s.prefill(["7" as unknown as number]),
    invalidArgument(/token id "7" .*not an integer/),
  );
  await assert.rejects(
    () => s.decode(V),
    invalidArgument(new RegExp(`token id ${V} is outside \\[0, ${V}\\)`)),
  );
  await assert.rejects(() => s.decode(-(2 ** 32) + 3), invalidArgument(/token id -4294967293/));
  assert.equal(s.position, 0);
  // The prompt of generate() goes through the same check.
  const gen = s.generate({ prompt: [1, BIG], maxTokens: 1 });
  await assert.rejects(() => gen.next(), invalidArgument(/4294967301/));
  assert.equal(s.position, 0);
  await s.prefill([1, 2, 3]); // still usable
  assert.equal(s.position, 3);
  await assert.rejects(
    () => sampleFromLogits(new Float32Array([1, 2, 3]), { history: [BIG] }),
    invalidArgument(/token id 4294967301 at index 0 is outside \[0, 3\)/),
  );
});

Deno.test("hostile integers: session and cache sizes past int32 are refused as given", async () => {
  const kv = await testEngine();
  using model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  assert.throws(
    () => model.session({ contextSize: 2 ** 32 + 16 }),
    rangeError(/contextSize 4294967312 is outside/),
  );
  assert.throws(
    () => model.session({ batchSize: 2 ** 32 + 1 }),
    rangeError(/batchSize 4294967297 is outside/),
  );
  assert.throws(
    () => model.session({ batchSize: 0 }),
    rangeError(/batchSize 0 is outside \[1, 2147483647\]/),
  );
  assert.throws(
    () => model.session({ cache: { kind: "h2o", slots: 2 ** 32 + 8 } }),
    rangeError(/cache slots 4294967304 is outside/),
  );
  assert.throws(
    () => model.session({ cache: { kind: "streaming", window: 16, sinks: 2 ** 33 } }),
    rangeError(/cache sinks 8589934592 is outside/),
  );
  assert.throws(
    () => model.session({ cache: { kind: "toString" } as never }),
    rangeError(/cache kind "toString" is not one of/),
  );
  using s = model.session({ contextSize: 16 });
  await s.prefill([1, 2, 3, 4]);
  assert.throws(() => s.truncate(2 ** 32 + 1), rangeError(/truncate: n 4294967297 is outside/));
  assert.equal(s.position, 4); // not truncated to 1
  assert.throws(() => s.readCache(2 ** 32), rangeError(/layer 4294967296/));
  // A bad sampling option fails before the session is marked busy.
  const gen = s.generate({ maxTokens: 1, topK: 2 ** 32 + 40 });
  await assert.rejects(() => gen.next(), rangeError(/topK 4294967336 is outside/));
  const gen2 = s.generate({ maxTokens: 1, seed: -1 });
  await assert.rejects(() => gen2.next(), rangeError(/seed -1 is outside/));
  await s.prefill([5]);
  assert.equal(s.position, 5);
  await assert.rejects(() => s.generate({ maxTokens: 2 ** 32 }).next(), rangeError(/maxTokens 4294967296/));
});

Deno.test("hostile integers: the engine's options and measurements", async () => {
  await assert.rejects(
    () => Kvfold.open({ threads: 2 ** 32 + 2 }),
    rangeError(/threads 4294967298 is outside/),
  );
  await assert.rejects(() => Kvfold.open({ device: 2 ** 31 }), rangeError(/device 2147483648/));
  await assert.rejects(() => Kvfold.open({ backend: "toString" as never }), TypeError);
  const kv = await testEngine();
  await assert.rejects(
    () => kv.measureMatmulRate({ m: 2 ** 32 + 64 }),
    rangeError(/m 4294967360 is outside \[1, 65536\]/),
  );
  await assert.rejects(
    () => kv.measureReadBandwidth({ repeats: 2 ** 32 + 1 }),
    rangeError(/repeats 4294967297/),
  );
  await assert.rejects(
    () => kv.measureReadBandwidth({ bytes: 2 ** 60 }),
    rangeError(/bytes 1152921504606846976/),
  );
});

Deno.test("hostile integers: a batched decode refuses a wrapped token and leaves every session free", async () => {
  const kv = await testEngine();
  using model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  using a = model.session({ contextSize: 16 }), b = model.session({ contextSize: 16 });
  await a.prefill([1, 2]);
  await b.prefill([3, 4]);
  await assert.rejects(
    () => decodeBatch([{ session: a, token: 7 }, { session: b, token: BIG }]),
    invalidArgument(/decode a batch: token id 4294967301 at index 1/),
  );
  assert.deepEqual([a.position, b.position], [2, 2]);
  await decodeBatch([{ session: a, token: 7 }, { session: b, token: 5 }]);
  assert.deepEqual([a.position, b.position], [3, 3]);
});

Deno.test("hostile integers: trainers refuse wrapped sizes, ids and labels", async () => {
  const kv = await testEngine();
  using model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  assert.throws(
    () => LoraTrainer.create(model, { rank: 2 ** 32 + 4 }),
    rangeError(/rank 4294967300 is outside/),
  );
  assert.throws(
    () => LoraTrainer.create(model, { rank: 2, totalSteps: 2 ** 32 }),
    rangeError(/totalSteps 4294967296/),
  );
  using t = LoraTrainer.create(model, { rank: 2, targets: ["q_proj"] });
  await assert.rejects(
    () => t.accumulate({ ids: [1, 2, 3], labels: [-1, 2 ** 32 + 3, 4] }),
    invalidArgument(/label 4294967299 at index 1 is outside \[0, 512\) \(or -1\)/),
  );
  await assert.rejects(
    () => t.accumulate({ ids: [1, BIG, 3], labels: [-1, 3, 4] }),
    invalidArgument(/token id 4294967301 at index 1/),
  );
  assert.equal(t.accumulated, 0);
  assert.throws(() => t.read(2 ** 32, "q_proj", "A"), rangeError(/layer 4294967296/));
  assert.throws(() => t.read(0, "fc1" as never, "A"), TypeError);
  assert.throws(() => t.setStep(2 ** 60), rangeError(/step 1152921504606846976 is not a safe integer/));
  assert.throws(() => t.setStep(1.5), rangeError(/step 1\.5 is not an integer/));
  assert.throws(
    () => LococoTrainer.create(model, { slots: 2 ** 32 + 8, segment: 8 }),
    rangeError(/slots 4294967304 is outside/),
  );
  using lt = LococoTrainer.create(model, { slots: 8, segment: 8, kernel: 3 });
  await assert.rejects(() => lt.accumulate([1, 2, 512]), invalidArgument(/token id 512 at index 2/));
  assert.throws(() => lt.read(2 ** 32 + 1, "weight"), rangeError(/layer 4294967297/));
});

Deno.test("hostile integers: prefillEmbeddings refuses a block whose shape is not [rows, hidden]", async () => {
  const kv = await testEngine();
  using model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  const H = model.info.hiddenSize;
  using s = model.session({ contextSize: 16 });
  const block = new Float32Array(4 * (H / 2)).fill(0.01); // [4, H/2]: as many values as [2, H]
  await assert.rejects(
    () => s.prefillEmbeddings(block, { shape: [4, H / 2] }),
    invalidArgument(new RegExp(`shape \\[4, ${H / 2}\\] .* is not \\[rows, ${H}\\]`)),
  );
  assert.equal(s.position, 0);
  await s.prefillEmbeddings(block, { shape: [2, H] });
  assert.equal(s.position, 2);
});

Deno.test("hostile integers: config.json sizes are positive int32s wherever a config is read", async () => {
  const reader = { code: "FORMAT", action: "Cannot load x", source: "m/config.json" } as const;
  assert.equal(configPositiveInt({ hidden_size: 64 }, "hidden_size", reader), 64);
  assert.equal(configPositiveInt({}, "head_dim", reader, 16), 16, "the fallback for an absent key");
  for (const bad of [0, -3, 1.5, 2 ** 31, "64", null, NaN, [64]]) {
    assert.throws(() => configPositiveInt({ k: bad }, "k", reader), (e: unknown) => {
      assert.ok(e instanceof KvfoldError && e.code === "FORMAT", String(e));
      assert.match(e.message, /^Cannot load x: m\/config.json: k is .*, not a positive integer$/);
      return true;
    });
  }
  // Two of its readers (the compressor's segment_length is in compressor_test.ts): a new model's config
  // (an argument) and a folder converted to GGUF (a file).
  const config = {
    model_type: "llama",
    hidden_size: 32,
    intermediate_size: 64,
    num_hidden_layers: 0,
    num_attention_heads: 2,
    num_key_value_heads: 2,
    vocab_size: 64,
    max_position_embeddings: 64,
    rms_norm_eps: 1e-5,
  };
  await assert.rejects(
    initModelFolder(`${await tempDir()}/m`, config),
    invalidArgument(/Cannot initialise model: config: num_hidden_layers is 0, not a positive integer/),
  );
  const dir = await tempDir();
  const source = await testModel("int-config", { seed: 2 });
  for await (const e of Deno.readDir(source)) await Deno.copyFile(`${source}/${e.name}`, `${dir}/${e.name}`);
  const json = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify({ ...json, vocab_size: 2 ** 32 + 5 }));
  await assert.rejects(writeModelGguf(dir, `${dir}/m.gguf`), (e: unknown) => {
    assert.ok(e instanceof KvfoldError && e.code === "FORMAT", String(e));
    assert.match(e.message, /config.json: vocab_size is 4294967301, not a positive integer/);
    return true;
  });
});

// Quantized weights (q8_0 / q4_0, llama.cpp's blocks quantized at load) through the public API:
// logits against the float64 reference, and every feature on a quantized base against the same base
// dequantized to f32 (LoRA, LLoCO prefix embeddings, LoCoCo, batched decode).
//
// Accuracy is measured as relativeError (max |a - b| / max |b|) over every logit of a prefill. The
// random test models (std 0.1 weights) show each format's intrinsic error; measured here (2 cores,
// this machine): bf16 0.8%, q8_0 2.7-5.8%, q4_0 33-55% (hidden 256: the worst). The weights' rounding
// alone (the float64 reference on the weights quantized and dequantized) is already q8_0 2.0-4.6% and
// q4_0 33-55% from the f32 logits, so the "q8_0 within 1%" is out of reach of llama.cpp's
// q8_0 blocks on these models, whatever the kernels do (on the trained demo model too: 1.2%). What
// the kernels add is the int8 rounding of the activations that llama.cpp's scheme implies; the test
// bounds it against that floor, and the bands below are the measurements with headroom: a model
// outside either fails.
import assert from "node:assert/strict";
import { join } from "node:path";
import type { Model } from "../mod.ts";
import { readSafetensorsFile, toFloat32, writeSafetensorsFile } from "../src/formats/safetensors.ts";
import { makeTestAdapter, makeTestLococoHeads } from "../testing/mod.ts";
import { ModelTrainer } from "../src/model_train.ts";
import { loadReferenceModel, referenceLogits } from "./reference_forward.ts";
import { quantizeDequantize } from "./_reference_quant.ts";
import { relativeError, someIds, tempDir, testEngine, testModel } from "./_fixtures.ts";
import { rejectsWith } from "./_kvfold_asserts.ts";

type QType = "q8_0" | "q4_0";
// Bands of relativeError against the float64 reference on the original f32 weights.
const BAND: Record<QType, number> = { q8_0: 0.08, q4_0: 0.7 };
// The quantized base against the same weights dequantized to f32: only the activations' int8
// rounding (and f32 summation order) differs.
const SAME_AS_DEQUANTIZED: Record<QType, number> = { q8_0: 0.08, q4_0: 0.1 };
// The engine's error against the weights' own rounding error (the format's floor): measured 1.2-1.4x
// for q8_0, 1.0x for q4_0.
const OVER_FLOOR: Record<QType, number> = { q8_0: 2, q4_0: 1.3 };

const MODELS = [
  { name: "quant-tiny", options: { seed: 1 } },
  { name: "quant-gqa", options: { seed: 5, numHeads: 4, numKeyValueHeads: 2 } },
  { name: "quant-wide", options: { seed: 3, hiddenSize: 256, numHeads: 4, intermediateSize: 512 } },
];

// A copy of `dir` whose matrices hold their values after quantizing to `q` and back, in f32.
const dequantized = new Map<string, Promise<string>>();
function dequantizedModel(dir: string, q: QType): Promise<string> {
  const key = `${dir}:${q}`;
  let p = dequantized.get(key);
  if (!p) {
    p = (async () => {
      const out = await tempDir();
      for await (const e of Deno.readDir(dir)) {
        if (e.isFile && e.name !== "model.safetensors") {
          await Deno.copyFile(join(dir, e.name), join(out, e.name));
        }
      }
      const { tensors } = await readSafetensorsFile(join(dir, "model.safetensors"));
      const written = [...tensors].map(([name, t]) => {
        const v = toFloat32(t);
        return {
          name,
          dtype: "F32" as const,
          shape: t.shape,
          data: t.shape.length === 2 ? quantizeDequantize(v, q) : v,
        };
      });
      await writeSafetensorsFile(join(out, "model.safetensors"), written);
      return out;
    })();
    dequantized.set(key, p);
  }
  return p;
}

async function prefillLogits(model: Model, ids: number[]): Promise<Float32Array> {
  using s = model.session({ contextSize: 128, batchSize: 64 });
  return (await s.prefill(ids, { logits: "all" }))!;
}

Deno.test("quant: q8_0 and q4_0 logits stay within their bands of the float64 reference", async () => {
  const kv = await testEngine();
  for (const { name, options } of MODELS) {
    const dir = await testModel(name, options);
    const ref = await loadReferenceModel(dir);
    const ids = someIds(24, ref.config.vocabSize, 4);
    const want = referenceLogits(ref, ids);
    for (const q of ["q8_0", "q4_0"] as const) {
      using model = await kv.loadModel(dir, { dtype: q });
      assert.equal(model.info.weightDType, q);
      const got = await prefillLogits(model, ids);
      const err = relativeError(got, want);
      console.log(`${name} ${q}: relative error ${err.toExponential(3)} (band ${BAND[q]})`);
      assert.ok(err <= BAND[q], `${name} ${q}: relative error ${err} is outside the band ${BAND[q]}`);
      // The kernels' own error: against the reference on the dequantized weights, far tighter.
      const deq = referenceLogits(await loadReferenceModel(await dequantizedModel(dir, q)), ids);
      const own = relativeError(got, deq);
      assert.ok(own <= SAME_AS_DEQUANTIZED[q], `${name} ${q}: ${own} from the dequantized reference`);
      // The format's floor: the weights' rounding alone, which no kernel can undo.
      const floor = relativeError(deq, want);
      console.log(`${name} ${q}: the weights' rounding alone ${floor.toExponential(3)}`);
      assert.ok(
        err <= OVER_FLOOR[q] * floor,
        `${name} ${q}: ${err} is over ${OVER_FLOOR[q]}x the floor ${floor}`,
      );
    }
  }
});

Deno.test("quant: weights bytes are llama.cpp's block sizes (34 and 18 bytes per 32 values)", async () => {
  const kv = await testEngine();
  const dir = await testModel("quant-tiny", { seed: 1 });
  using f32 = await kv.loadModel(dir, { dtype: "f32" });
  for (const [q, bytes] of [["q8_0", 34], ["q4_0", 18]] as const) {
    using model = await kv.loadModel(dir, { dtype: q });
    assert.equal(model.info.weightBytes, (f32.info.weightBytes / 4 / 32) * bytes);
  }
});

Deno.test("quant: a matrix row that is not whole blocks of 32 is refused, naming the tensor", async () => {
  const kv = await testEngine();
  const dir = await testModel("quant-odd", { seed: 2, hiddenSize: 48, numHeads: 4, intermediateSize: 96 });
  await rejectsWith(
    kv.loadModel(dir, { dtype: "q8_0" }),
    "UNSUPPORTED",
    /blocks of 32 values per row.*columns/,
  );
});

Deno.test("quant: LoRA, LLoCO prefix embeddings, LoCoCo and batched decode on a quantized base equal the dequantized base", async () => {
  const kv = await testEngine();
  const dir = await testModel("quant-gqa", { seed: 5, numHeads: 4, numKeyValueHeads: 2 });
  const tmp = await tempDir();
  try {
    const adapterDir = join(tmp, "adapter");
    await makeTestAdapter(adapterDir, { base: dir, rank: 8, alpha: 32, seed: 9, std: 0.2 });
    const headsPath = (await makeTestLococoHeads(join(tmp, "heads.safetensors"), {
      base: dir,
      slots: 24,
      // One heavy hitter, 23 fused slots: a top-k choice of many slots flips on small roundings
      // (q8_0 with 12 heavy hitters was 16% from the dequantized base), the fusion does not.
      keepRate: 0.04,
      kernel: 5,
      segment: 16,
      seed: 5,
      lambda: 0.4,
    })).path;
    const ids = someIds(80, 512, 11);
    const prefix = new Float32Array(4 * 64).map((_, i) => Math.sin(i * 0.37) * 0.5);
    // Each feature's logits on one model: [plain, with LoRA, after prefix embeddings, LoCoCo, batched decode].
    const features = async (model: Model) => {
      const adapter = await model.adapters.load(adapterDir);
      const out: Float32Array[] = [];
      out.push(await prefillLogits(model, ids.slice(0, 24)));
      {
        using s = model.session({ contextSize: 128, batchSize: 64 });
        out.push((await s.prefill(ids.slice(0, 24), { logits: "all", adapter }))!);
      }
      {
        using s = model.session({ contextSize: 128, batchSize: 64 });
        await s.prefillEmbeddings(prefix);
        out.push((await s.prefill(ids.slice(0, 16), { logits: "all" }))!);
      }
      {
        using heads = model.loadLococoHeads(headsPath);
        using s = model.session({ cache: { kind: "lococo", heads } });
        out.push((await s.prefill(ids, { logits: "all" }))!);
        assert.ok(s.memory().compressions > 0, "the LoCoCo cache compressed");
      }
      {
        const sessions = [0, 1, 2].map(() => model.session({ contextSize: 64 }));
        try {
          for (const [i, s] of sessions.entries()) {
            await s.prefill(ids.slice(i, i + 8), { adapter: i === 1 ? adapter : null });
          }
          const batched: number[] = [];
          for (let step = 0; step < 3; step++) {
            await model.decodeBatch(sessions.map((session, i) => ({ session, token: ids[20 + step + i] })));
            for (const s of sessions) batched.push(...s.logits());
          }
          out.push(Float32Array.from(batched));
        } finally {
          for (const s of sessions) s.dispose();
        }
      }
      return out;
    };
    for (const q of ["q8_0", "q4_0"] as const) {
      using quant = await kv.loadModel(dir, { dtype: q });
      using deq = await kv.loadModel(await dequantizedModel(dir, q));
      const a = await features(quant), b = await features(deq);
      const names = ["plain", "LoRA", "prefix embeddings", "LoCoCo", "batched decode"];
      for (let i = 0; i < names.length; i++) {
        const err = relativeError(a[i], b[i]);
        console.log(`${q} ${names[i]}: ${err.toExponential(3)} from the dequantized base`);
        assert.ok(err <= SAME_AS_DEQUANTIZED[q], `${q} ${names[i]}: ${err} from the dequantized base`);
      }
      // The features do something the tolerance could not hide.
      const loraEffect = relativeError(a[1], a[0]);
      assert.ok(loraEffect > 5 * SAME_AS_DEQUANTIZED[q], `${q}: LoRA moved the logits by only ${loraEffect}`);
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("quant: batched decode on a quantized base is bit-identical to decoding each session alone", async () => {
  const kv = await testEngine();
  const dir = await testModel("quant-tiny", { seed: 1 });
  using model = await kv.loadModel(dir, { dtype: "q4_0" });
  const ids = someIds(30, 512, 2);
  const alone: number[] = [], batched: number[] = [];
  for (const [out, batch] of [[alone, false], [batched, true]] as const) {
    const sessions = [0, 1, 2].map(() => model.session({ contextSize: 64 }));
    try {
      for (const [i, s] of sessions.entries()) await s.prefill(ids.slice(i, i + 6));
      for (let step = 0; step < 3; step++) {
        const entries = sessions.map((session, i) => ({ session, token: ids[10 + step + i] }));
        if (batch) await model.decodeBatch(entries);
        else for (const e of entries) await e.session.decode(e.token);
        for (const s of sessions) out.push(...s.logits());
      }
    } finally {
      for (const s of sessions) s.dispose();
    }
  }
  assert.deepEqual(batched, alone);
});

// Where AVX512-VNNI runs, the loader interleaves quantized matrices 16 rows at a time; a trainer
// started from that base still reads each row back exactly (the dequantized weights, bit for bit).
Deno.test("quant: a model trainer started from a quantized base holds exactly its dequantized weights", async () => {
  const kv = await testEngine();
  const dir = await testModel("quant-gqa", { seed: 5, numHeads: 4, numKeyValueHeads: 2 });
  const { tensors } = await readSafetensorsFile(join(dir, "model.safetensors"));
  for (const q of ["q8_0", "q4_0"] as const) {
    using model = await kv.loadModel(dir, { dtype: q });
    using tr = ModelTrainer.create(model, { learningRate: 0.01 });
    for (const name of ["model.layers.0.self_attn.k_proj.weight", "model.layers.1.mlp.down_proj.weight"]) {
      const want = quantizeDequantize(toFloat32(tensors.get(name)!), q), got = tr.read(name);
      assert.equal(got.length, want.length);
      const bad = got.findIndex((v, i) => v !== want[i]); // === : the reference writes -0 where kvfold has 0
      assert.equal(bad, -1, `${q} ${name}[${bad}]: ${got[bad]} vs ${want[bad]}`);
    }
  }
});

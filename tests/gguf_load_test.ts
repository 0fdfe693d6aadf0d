// Loading GGUF files (the native reader, ffi/src/gguf.cpp): a file the writer made from a model folder
// gives the folder's logits (f32/f16/bf16 exactly as the folder loaded in that dtype; q8_0/q4_0
// exactly as the folder quantized at load, since both follow ggml's quantizer), the f32 one within
// float tolerance of the float64 reference; llama's q/k permutation is undone, qwen2's biases load,
// tied and untied heads; the tokenizer comes from the metadata or from a tokenizer.json beside.
import assert from "node:assert/strict";
import type { Model, WeightDType } from "../mod.ts";
import { modelGgufContents, writeGguf, writeModelGguf } from "../src/formats/gguf_write.ts";
import type { GgmlType } from "../src/formats/ggml_quant.ts";
import { loadReferenceModel, referenceLogits } from "./reference_forward.ts";
import { dequantizeKQuant, quantizeDequantize } from "./_reference_quant.ts";
import { encodeGgml } from "../src/formats/ggml_quant.ts";
import { relativeError, runCli, someIds, tempDir, TEST_KQUANT, testEngine, testModel } from "./_fixtures.ts";
import { readSafetensorsFile } from "../src/formats/safetensors.ts";
import { rejectsWith } from "./_kvfold_asserts.ts";

async function prefillLogits(model: Model, ids: number[]): Promise<Float32Array> {
  using s = model.session({ contextSize: 64, batchSize: 32 });
  return (await s.prefill(ids, { logits: "all" }))!;
}

const MODELS = [
  { name: "gguf-llama", options: { seed: 5 } },
  { name: "gguf-tied", options: { seed: 6, tieWordEmbeddings: true } },
  { name: "gguf-qwen2", options: { seed: 7, modelType: "qwen2" as const } },
  { name: "gguf-mha", options: { seed: 8, numKeyValueHeads: 4, ropeTheta: 50000 } },
];

Deno.test("GGUF: each dtype gives the folder's logits loaded in that dtype; f32 matches the float64 reference", async () => {
  const kv = await testEngine();
  const out = await tempDir();
  try {
    for (const { name, options } of MODELS) {
      const dir = await testModel(name, options);
      const ids = someIds(20, 512, 3);
      const ref = referenceLogits(await loadReferenceModel(dir), ids);
      for (const dtype of ["f32", "f16", "bf16", "q8_0", "q4_0"] as const satisfies readonly GgmlType[]) {
        const path = `${out}/${name}-${dtype}.gguf`;
        await writeModelGguf(dir, path, { dtype });
        using fromFile = await kv.loadModel(path);
        using fromDir = await kv.loadModel(dir, { dtype: dtype as WeightDType });
        assert.equal(fromFile.info.weightDType, dtype);
        assert.equal(fromFile.info.modelType, name === "gguf-qwen2" ? "qwen2" : "llama");
        assert.equal(fromFile.info.tiedEmbeddings, name === "gguf-tied");
        assert.deepEqual({ ...fromFile.info, modelType: "" }, { ...fromDir.info, modelType: "" });
        const a = await prefillLogits(fromFile, ids);
        const b = await prefillLogits(fromDir, ids);
        assert.deepEqual(a, b, `${name} ${dtype}: GGUF and folder logits differ`);
        if (dtype === "f32") {
          const err = relativeError(a, ref);
          assert.ok(err < 1e-4, `${name} f32: ${err} from the float64 reference`);
        }
      }
    }
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("GGUF: the tokenizer rebuilt from tokenizer.ggml.* encodes, decodes and templates as the folder's", async () => {
  const kv = await testEngine();
  const dir = await testModel("gguf-llama", { seed: 5 });
  const out = await tempDir();
  try {
    await writeModelGguf(dir, `${out}/m.gguf`, { dtype: "q8_0" });
    using fromFile = await kv.loadModel(`${out}/m.gguf`);
    using fromDir = await kv.loadModel(dir);
    const a = fromFile.tokenizer, b = fromDir.tokenizer;
    assert.match(a.source, /m\.gguf \(tokenizer\.ggml\.\*\)/);
    for (
      const text of [
        "Hello, world 123",
        "  two  spaces\nand a newline\t tab",
        "über café 日本語 🙂",
        "<|user|>\nhi</s>",
        "it's don't we'll",
      ]
    ) {
      assert.deepEqual(a.encode(text), b.encode(text), text);
      assert.deepEqual(
        a.encode(text, { addSpecialTokens: true }),
        b.encode(text, { addSpecialTokens: true }),
      );
      assert.equal(a.decode(b.encode(text)), b.decode(b.encode(text)));
      assert.deepEqual(fromFile.encodePrompt(text), fromDir.encodePrompt(text));
    }
    assert.equal(a.bosTokenId, 1);
    assert.equal(a.eosTokenId, 2);
    assert.equal(a.addBosToken, true);
    assert.deepEqual(fromFile.eosTokenIds, [2]);
    const chat = [{ role: "user", content: "Hi" }];
    assert.deepEqual(a.encodeChat(chat), b.encodeChat(chat));
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("GGUF: a tokenizer.json beside the file wins over the metadata", async () => {
  const kv = await testEngine();
  const dir = await testModel("gguf-llama", { seed: 5 });
  const out = await tempDir();
  try {
    const contents = await modelGgufContents(dir);
    // A file whose own tokenizer cannot be rebuilt: only the one beside it makes it loadable.
    contents.metadata["tokenizer.ggml.model"] = "llama";
    await writeGguf(`${out}/m.gguf`, contents);
    await rejectsWith(
      kv.loadModel(`${out}/m.gguf`),
      "UNSUPPORTED",
      /"llama".*put the model's tokenizer\.json beside/,
    );
    for (const f of ["tokenizer.json", "tokenizer_config.json"]) {
      await Deno.copyFile(`${dir}/${f}`, `${out}/${f}`);
    }
    using model = await kv.loadModel(`${out}/m.gguf`);
    assert.equal(model.tokenizer.source, `${out}/tokenizer.json`);
    using fromDir = await kv.loadModel(dir);
    assert.deepEqual(model.tokenizer.encode("Hello, world"), fromDir.tokenizer.encode("Hello, world"));
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("GGUF: a dtype option converts the file's weights (q8_0 blocks dequantized to f32 give the dequantized weights' logits)", async () => {
  const kv = await testEngine();
  const dir = await testModel("gguf-llama", { seed: 5 });
  const out = await tempDir();
  try {
    await writeModelGguf(dir, `${out}/q8.gguf`, { dtype: "q8_0" });
    // The same weights after ggml's quantizer and back, as an f32 GGUF.
    const contents = await modelGgufContents(dir);
    contents.tensors = contents.tensors.map((t) => {
      if (t.shape.length !== 2) return t;
      const f32 = t.data as () => Float32Array;
      return { ...t, data: () => quantizeDequantize(f32(), "q8_0") };
    });
    await writeGguf(`${out}/deq.gguf`, contents);
    using q8AsF32 = await kv.loadModel(`${out}/q8.gguf`, { dtype: "f32" });
    using deq = await kv.loadModel(`${out}/deq.gguf`);
    assert.equal(q8AsF32.info.weightDType, "f32");
    const ids = someIds(16, 512, 9);
    assert.deepEqual(await prefillLogits(q8AsF32, ids), await prefillLogits(deq, ids));
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("GGUF: q4_K and q6_K blocks (a Q4_K_M mix, and all q6_K) load as llama.cpp's layouts say", async () => {
  const kv = await testEngine();
  const dir = await testModel("gguf-kquant", TEST_KQUANT);
  const out = await tempDir();
  try {
    const ids = someIds(16, 512, 13);
    for (const dtype of ["q4_k_m", "q6_k"] as const) {
      await writeModelGguf(dir, `${out}/${dtype}.gguf`, { dtype });
      // The same file's blocks decoded by the reference (tests/_reference_quant.ts), as an f32 GGUF.
      const contents = await modelGgufContents(dir, { dtype });
      const stored = contents.tensors.map((t) => ({ name: t.name, type: t.type, shape: t.shape }));
      const types = new Set<string>();
      contents.tensors = contents.tensors.map((t) => {
        if (t.type !== "q4_k" && t.type !== "q6_k") return t;
        types.add(t.type);
        const type = t.type, f32 = t.data as () => Float32Array;
        return { ...t, type: "f32", data: () => dequantizeKQuant(encodeGgml(f32(), type), type) };
      });
      assert.deepEqual([...types].sort(), dtype === "q6_k" ? ["q6_k"] : ["q4_k", "q6_k"]);
      await writeGguf(`${out}/${dtype}-deq.gguf`, contents);
      using asF32 = await kv.loadModel(`${out}/${dtype}.gguf`, { dtype: "f32" });
      using deq = await kv.loadModel(`${out}/${dtype}-deq.gguf`);
      assert.deepEqual(
        await prefillLogits(asF32, ids),
        await prefillLogits(deq, ids),
        `${dtype}: decoded blocks differ`,
      );
      // By default a k-quant file computes as q8_0, the nearest format kvfold runs, except that
      // where the AVX512-VNNI kernels run, Q4_K and Q6_K projections are computed as they are stored
      // (148 and 210 bytes per 256 values, rows interleaved); either stays close to its own decoded
      // weights (q8_0's band of tests/cpu_quant_test.ts).
      using auto = await kv.loadModel(`${out}/${dtype}.gguf`);
      assert.equal(auto.info.weightDType, "q8_0");
      const err = relativeError(await prefillLogits(auto, ids), await prefillLogits(deq, ids));
      assert.ok(err < 0.08, `${dtype} as q8_0: ${err} from its decoded weights`);
      // The bytes a decoded token reads: every matrix but the embedding table (or the tied head).
      const native = /avx512.*int8 vnni/.test(kv.name);
      let bytes = 0;
      for (const t of stored) {
        if (
          t.shape.length !== 2 ||
          (t.name === "token_embd.weight" && stored.some((u) => u.name === "output.weight"))
        ) continue;
        const n = t.shape[0] * t.shape[1];
        const asStored = native && t.name !== "token_embd.weight";
        bytes += asStored ? n / 256 * (t.type === "q4_k" ? 148 : 210) : n / 32 * 34;
      }
      assert.equal(
        auto.info.weightBytes,
        bytes,
        `${dtype}: bytes per token (${native ? "native Q4_K and Q6_K" : "all q8_0"})`,
      );
    }
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("GGUF: q4_K and q6_K encoders round-trip within each block's step", () => {
  const x = new Float32Array(4 * 256).map((_, i) =>
    Math.sin(i * 1.7) * (1 + (i % 97) / 10) - (i % 256 < 32 ? 3 : 0)
  );
  for (const type of ["q4_k", "q6_k"] as const) {
    const back = dequantizeKQuant(encodeGgml(x, type), type);
    // Per sub-block (32 values for q4_K, 16 for q6_K): half a step of the stored scale, plus the
    // 6/8-bit rounding of the scales themselves (a relative 1/63 or 1/127 of the range).
    const sub = type === "q4_k" ? 32 : 16;
    for (let s = 0; s < x.length; s += sub) {
      const v = x.subarray(s, s + sub);
      const range = type === "q4_k" ? Math.max(...v) - Math.min(0, ...v) : 2 * Math.max(...v.map(Math.abs));
      const levels = type === "q4_k" ? 15 : 62;
      let err = 0;
      for (let l = 0; l < sub; l++) err = Math.max(err, Math.abs(back[s + l] - v[l]));
      assert.ok(
        err <= range / levels * 0.5 + range / 10,
        `${type} sub-block at ${s}: error ${err}, range ${range}`,
      );
    }
  }
});

Deno.test("GGUF: the CLI takes a GGUF file wherever it takes a model folder", async () => {
  const dir = await testModel("gguf-llama", { seed: 5 });
  const out = await tempDir();
  try {
    await writeModelGguf(dir, `${out}/m.gguf`, { dtype: "q4_0" });
    const ids = "5,17,300,42";
    const a = await runCli(
      "logits",
      "--model",
      `${out}/m.gguf`,
      "--ids",
      ids,
      "--out",
      `${out}/a.safetensors`,
    );
    assert.equal(a.code, 0, a.err);
    const b = await runCli(
      "logits",
      "--model",
      dir,
      "--dtype",
      "q4_0",
      "--ids",
      ids,
      "--out",
      `${out}/b.safetensors`,
    );
    assert.equal(b.code, 0, b.err);
    const logits = async (f: string) => (await readSafetensorsFile(f)).tensors.get("logits")!.data;
    assert.deepEqual(await logits(`${out}/a.safetensors`), await logits(`${out}/b.safetensors`));
    const bad = await runCli(
      "logits",
      "--model",
      `${out}/a.safetensors`,
      "--ids",
      ids,
      "--out",
      `${out}/c.safetensors`,
    );
    assert.equal(bad.code, 1);
    assert.match(bad.err, /is not a GGUF file/);
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

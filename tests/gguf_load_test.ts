// Loading GGUF files (the native reader, ffi/src/gguf.cpp): a file the writer made from a model folder
// gives the folder's logits (f32/f16/bf16 exactly as the folder loaded in that dtype; q8_0/q4_0
// exactly as the folder quantized at load, since both follow ggml's quantizer), the f32 one within
// float tolerance of the float64 reference; llama's q/k permutation is undone, qwen2's biases load,
// tied and untied heads; the tokenizer comes from the metadata or from a tokenizer.json beside.
import assert from "node:assert/strict";
import type { Model, WeightDType } from "../mod.ts";
import { writeModelGguf } from "../src/formats/gguf_write.ts";
import type { GgmlType } from "../src/formats/ggml_quant.ts";
import { loadReferenceModel, referenceLogits } from "./reference_forward.ts";
import { relativeError, someIds, tempDir, testEngine, testModel } from "./_fixtures.ts";

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

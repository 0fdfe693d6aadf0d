/**
 * `kvfold make-test-model`: random test models, LoRA adapters and LoCoCo heads (from `testing/`).
 *
 * @module
 */

import { KvfoldError } from "../mod.ts";
import { makeTestAdapter, makeTestLococoHeads, makeTestModel, TEST_MODEL_PRESETS } from "../testing/mod.ts";
import { defineCommand, intOpt, need, parseCommand, seedOpt, str } from "./_options.ts";
import { note } from "./_console.ts";

/** `kvfold make-test-model`'s usage and options. */
export const MAKE_TEST_MODEL = defineCommand({
  name: "make-test-model",
  summary: "write a random Llama-family model, LoRA adapter or LoCoCo heads for tests",
  usage: [
    "make-test-model OUT_DIR [--seed S] [--preset tiny|small|compressor] [--dtype float32|float16|bfloat16]",
    "make-test-model OUT_DIR --preset lora --base DIR [--rank R] [--targets q_proj,v_proj,...] [--seed S]",
    "make-test-model FILE.safetensors --preset lococo-heads --base DIR [--slots M] [--segment B] [--seed S]",
  ],
  details: "Models are written in Hugging Face layout; compressor is the tiny preset as an\n" +
    "AutoCompressor. LoCoCo heads: kernel 21, keep rate 0.5; M and B default to 512.",
  options: {
    preset: str("NAME", "tiny (default), small, compressor, lora or lococo-heads"),
    seed: str("S", "random seed (default 0)"),
    dtype: str("float32|float16|bfloat16", "weight type of a model (default float32)"),
    base: str("DIR", "lora, lococo-heads: the model they are for"),
    rank: str("R", "lora: the rank"),
    targets: str("q_proj,v_proj,...", "lora: the projections adapted"),
    slots: str("M", "lococo-heads: KV slots"),
    segment: str("B", "lococo-heads: tokens per segment"),
  },
  positionals: true,
});

export async function cmdMakeTestModel(args: string[]) {
  const { values: v, positionals } = parseCommand(args, MAKE_TEST_MODEL);
  const outDir = positionals[0];
  if (!outDir) {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      "Missing OUT_DIR: kvfold make-test-model OUT_DIR [--seed S] [--preset tiny|small|compressor|lora|lococo-heads]",
    );
  }
  const requested = v.preset ?? "tiny";
  if (requested === "lococo-heads") {
    // OUT_DIR is the heads FILE here (e.g. heads.safetensors).
    const base = need(v.base, "base");
    const info = await makeTestLococoHeads(outDir, {
      base,
      seed: seedOpt(v.seed) ?? 0,
      slots: intOpt(v.slots, "slots", 1),
      segment: intOpt(v.segment, "segment", 1),
    });
    note(
      `wrote LoCoCo heads for ${base} to ${outDir}: ${info.layers} layers, head_dim ${info.headDim}, ` +
        `M ${info.slots}, r ${info.keepRate}, k ${info.kernel}, B ${info.segment}, Mc ${info.fusedSlots}`,
    );
    return;
  }
  if (requested === "lora") {
    const base = need(v.base, "base");
    const names = await makeTestAdapter(outDir, {
      base,
      seed: seedOpt(v.seed) ?? 0,
      rank: intOpt(v.rank, "rank", 1),
      targetModules: v.targets?.split(",").map((t) => t.trim()).filter(Boolean),
    });
    note(`wrote a LoRA adapter for ${base} to ${outDir}: ${names.length} tensors`);
    return;
  }
  // "compressor": the tiny preset as an AutoCompressor (embed_summary.weight, summary_length 50).
  const preset = (requested === "compressor" ? "tiny" : requested) as "tiny" | "small";
  if (!(preset in TEST_MODEL_PRESETS)) {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      `Cannot make test model: unknown preset "${preset}" (tiny, small, compressor, lora, lococo-heads)`,
    );
  }
  const dtype = (v.dtype ?? "float32") as "float32" | "float16" | "bfloat16";
  if (!["float32", "float16", "bfloat16"].includes(dtype)) {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      `Cannot make test model: --dtype must be float32, float16 or bfloat16`,
    );
  }
  const info = await makeTestModel(outDir, {
    seed: seedOpt(v.seed) ?? 0,
    preset,
    dtype,
    summaryLength: requested === "compressor" ? 50 : undefined,
  });
  note(`wrote ${requested} test model to ${info.dir}: ${info.files.join(", ")}`);
}

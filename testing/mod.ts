/**
 * Random test fixtures for kvfold and its users' tests (`kvfold/test-model` on Node.js and Bun):
 * tiny Llama-family models in Hugging Face layout, their BPE tokenizer, PEFT LoRA adapters,
 * AutoCompressor variants and LoCoCo heads, all seeded and byte-for-byte reproducible.
 *
 * @example
 * ```ts
 * import { makeTestModel } from "./mod.ts";
 * const dir = await Deno.makeTempDir();
 * const info = await makeTestModel(dir, { seed: 1 });
 * console.log(info.files.includes("config.json")); // true
 * await Deno.remove(dir, { recursive: true });
 * ```
 *
 * @module
 */

export { makeTestModel, TEST_MODEL_PRESETS } from "./test_model.ts";
export type { RopeScaling, TestModelInfo, TestModelOptions, TestModelPreset } from "./test_model.ts";
export { makeTestTokenizer, TEST_SPECIAL_TOKENS } from "./test_tokenizer.ts";
export { makeTestAdapter } from "./test_adapter.ts";
export type { TestAdapterOptions } from "./test_adapter.ts";
export { makeTestLococoHeads } from "./lococo_heads.ts";
export type { TestLococoHeadsInfo, TestLococoHeadsOptions } from "./lococo_heads.ts";
export { normalTensor, uniformTensor } from "../src/_seeded_random.ts";

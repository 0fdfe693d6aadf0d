/**
 * The random test-model generator for Node.js and Bun (`kvfold/test-model`): tiny Llama-family
 * models, PEFT adapters, AutoCompressor variants and LoCoCo heads, as the tests use them.
 *
 * @module
 */

import "./runtime.ts";
export * from "../src/test_model.ts";
export { makeTestLococoHeads } from "../src/lococo_heads.ts";

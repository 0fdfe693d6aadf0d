/**
 * The random test-model generator for Node.js and Bun (`kvfold/test-model`): tiny Llama-family
 * models, PEFT adapters, AutoCompressor variants and LoCoCo heads, as the tests use them
 * (`testing/mod.ts`).
 *
 * @module
 */

import "./runtime.ts";
export * from "../testing/mod.ts";

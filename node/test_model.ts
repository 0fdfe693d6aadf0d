/**
 * The random test-model generator for Node.js and Bun (`kvfold/test-model`): tiny Llama-family
 * models, PEFT adapters and AutoCompressor variants in Hugging Face layout, as the tests use them.
 *
 * @module
 */

import "./runtime.ts";
export * from "../src/test_model.ts";

/**
 * kvfold's LlamaIndex.TS components for Node.js and Bun (`kvfold/llamaindex`).
 *
 * @module
 */

import "./runtime.ts";
export * from "../integrations/llamaindex/mod.ts";

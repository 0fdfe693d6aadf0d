/**
 * kvfold's LangChain.js components for Node.js and Bun (`kvfold/langchain`).
 *
 * @module
 */

import "./runtime.ts";
export * from "../integrations/langchain/mod.ts";

/**
 * kvfold for Node.js and Bun: the API of `mod.ts`, with the runtime layer (`./runtime.ts`) installed
 * first. `npm run build` compiles this to `dist/node/mod.js`, the package's `kvfold` export.
 *
 * @module
 */

import "./runtime.ts";
export * from "../mod.ts";

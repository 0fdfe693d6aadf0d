/**
 * The demo's corpus and tokenizer: seeded synthetic documents with facts placed anywhere, their
 * questions and exact-match scoring, and the word-level tokenizer that covers their vocabulary.
 * `kvfold make-demo-corpus` writes them to a folder.
 *
 * @example
 * ```ts
 * import { exactMatch, generateDemoCorpus } from "./mod.ts";
 * const corpus = generateDemoCorpus({ seed: 11, documents: 2, tokensPerDocument: 400, factsPerDocument: 4 });
 * const q = corpus.questions[0];
 * console.log(exactMatch(q.answer, q.answer)); // true
 * ```
 *
 * @module
 */

export * from "./corpus.ts";
export * from "./tokenizer.ts";
export { ENTITY_POOL_SIZE, entityNames } from "./names.ts";

/**
 * The two answer paths of the demo's evaluation, greedy: text prompts in a fresh session (any KV
 * cache), and summary vectors through `answerFromChunks` with kvfold's adapter rule; and where a
 * question's fact lies among the store's chunks.
 *
 * @module
 */

import { answerFromChunks, type AnswerStats } from "../src/lloco.ts";
import type { CacheOptions } from "../src/lococo.ts";
import type { Model } from "../src/model.ts";
import type { GenerationStats } from "../src/session.ts";
import type { RetrievedChunk } from "../src/store_records.ts";
import type { DemoDocument, DemoFact } from "./corpus.ts";
import { DEMO_BOS_ID } from "./tokenizer.ts";

/** An answer's text and counters, from either answer path. */
export interface Answered {
  text: string;
  stats: GenerationStats;
  kvSlotsPeak: number;
  prefixPositions: number;
  adapter?: string | null;
}

/**
 * The text QA prompt: `[<s> | context | question]`, the prompt part of the recipe's `textQaExample`
 * (the question through the model's tokenizer, without `<s>`).
 *
 * @example
 * ```ts ignore
 * const prompt = textPrompt(model, documentIds(doc), "what is the trade of kesh?");
 * ```
 */
export function textPrompt(model: Model, context: readonly number[], question: string): number[] {
  return [DEMO_BOS_ID, ...context, ...model.tokenizer.encode(question)];
}

/**
 * Tokens the greedy decoder may generate for these answers: the longest answer's tokens, `</s>`
 * and one more, so a model that does not stop is caught rather than cut to a right answer.
 *
 * @example
 * ```ts ignore
 * answerTokenBudget(model, ["silk", "forty two"]); // 4
 * ```
 */
export function answerTokenBudget(model: Model, answers: readonly string[]): number {
  return Math.max(...answers.map((a) => model.tokenizer.encode(a).length)) + 2;
}

/**
 * The store chunk (ordinal) of `doc` holding the fact's value, given the chunks' `[start, end)`
 * token spans, and whether the fact's sentence straddles two chunks.
 *
 * @example
 * ```ts
 * import { generateDemoCorpus } from "./corpus.ts";
 * import { factChunk } from "./evaluate_paths.ts";
 * const [doc] = generateDemoCorpus({ seed: 3, documents: 1 }).documents;
 * const spans = [[0, 256], [256, 512], [512, 768], [768, 1024]] as [number, number][];
 * console.log(factChunk(doc, doc.facts[0], spans).ordinal === Math.floor(doc.facts[0].tokenStart / 256)); // true (unless split)
 * ```
 */
export function factChunk(
  doc: DemoDocument,
  fact: DemoFact,
  spans: readonly (readonly [number, number])[],
): { ordinal: number; split: boolean } {
  const value = fact.value.split(" ");
  let at = fact.tokenStart;
  for (let t = fact.tokenStart; t + value.length <= fact.tokenEnd; t++) {
    if (value.every((w, i) => doc.tokens[t + i] === w)) {
      at = t;
      break;
    }
  }
  const chunk = (t: number) => spans.findIndex(([a, b]) => a <= t && t < b);
  return { ordinal: chunk(at), split: chunk(fact.tokenStart) !== chunk(fact.tokenEnd - 1) };
}

/**
 * Greedy generation from prompt ids in a fresh session with `cache` (a full cache of just the
 * positions needed when absent); the peak KV slots come from the session.
 *
 * @example
 * ```ts ignore
 * const a = await generateFrom(model, textPrompt(model, ids, question), 6, { kind: "h2o", slots: 512 });
 * console.log(a.text, a.kvSlotsPeak);
 * ```
 */
export async function generateFrom(
  model: Model,
  prompt: number[],
  maxTokens: number,
  cache: CacheOptions | undefined,
  signal?: AbortSignal,
): Promise<Answered> {
  using session = model.session(cache ? { cache } : { contextSize: prompt.length + maxTokens + 1 });
  let text = "";
  for await (const piece of session.generate({ prompt, temperature: 0, maxTokens, signal })) text += piece;
  return { text, stats: session.lastStats!, kvSlotsPeak: session.memory().kvSlotsPeak, prefixPositions: 0 };
}

/**
 * Greedy LLoCO answer over chunks through `answerFromChunks` (a string question: `[vectors | <s>
 * question]`), with kvfold's adapter rule under `adapterMode`; the peak KV slots are counted.
 *
 * @example
 * ```ts ignore
 * const a = await answerOverChunks(model, store.retrieve(question, { k: 1 }), question, { maxTokens: 6 });
 * console.log(a.text, a.adapter);
 * ```
 */
export async function answerOverChunks(
  model: Model,
  chunks: readonly RetrievedChunk[],
  question: string,
  options: { maxTokens: number; adapterMode?: "best" | "compose" | "none"; signal?: AbortSignal },
): Promise<Answered & { stats: AnswerStats }> {
  let text = "";
  let stats: AnswerStats | undefined;
  for await (
    const piece of answerFromChunks(model, chunks, question, {
      temperature: 0,
      maxTokens: options.maxTokens,
      adapterMode: options.adapterMode,
      signal: options.signal,
      onStats: (s) => (stats = s),
    })
  ) text += piece;
  // The full cache holds the vectors, the prompt and every generated token but the last (never fed).
  const kvSlotsPeak = stats!.prefixPositions + stats!.promptTokens + Math.max(stats!.generatedTokens - 1, 0);
  return {
    text,
    stats: stats!,
    kvSlotsPeak,
    prefixPositions: stats!.prefixPositions,
    adapter: stats!.adapter,
  };
}

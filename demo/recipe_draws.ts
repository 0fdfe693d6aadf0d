/**
 * The recipe's seeded streams of training draws: a document span with a question over it, either a
 * chunk-aligned store chunk or a window of chosen length around one fact.
 *
 * @module
 */

import { seededUint32 } from "../src/_seeded_random.ts";
import { type DemoDocument, demoDocuments } from "./corpus.ts";
import { chunkRange, documentIds, questionsIn, type SpanQuestion } from "./examples.ts";

/** A window of a document with a question over it: a chunk-aligned store chunk or a random span. */
export interface Draw {
  doc: DemoDocument;
  ids: number[];
  start: number;
  end: number;
  question: SpanQuestion;
  /** Every question whose fact lies wholly inside the span. */
  questions: SpanQuestion[];
}

/**
 * An endless, seeded stream of (document span, question) draws: store chunks (chunk-aligned
 * `chunkTokens` windows), each with one of the questions wholly inside it.
 */
export function* chunkDraws(seed: number, chunkTokens: number, group?: string): Generator<Draw> {
  const next = seededUint32(seed, "demo recipe: chunk draws");
  for (const doc of demoDocuments({ seed, groups: group ? [group] : undefined })) {
    const ids = documentIds(doc);
    const chunks = Math.ceil(ids.length / chunkTokens);
    for (let c = 0; c < chunks; c++) {
      const [start, end] = chunkRange(doc, chunkTokens, c);
      const qs = questionsIn(doc, start, end);
      if (qs.length === 0) continue;
      yield { doc, ids: ids.slice(start, end), start, end, question: qs[next() % qs.length], questions: qs };
    }
  }
}

/**
 * An endless, seeded stream of text windows of `length(i)` tokens (for the i-th draw), each around
 * one fact, placed at random so the fact may sit anywhere in it: the reader's curriculum, which starts
 * with short windows so the lookup forms early, and grows to whole store chunks.
 */
export function* windowDraws(seed: number, length: (i: number, u: number) => number): Generator<Draw> {
  const next = seededUint32(seed, "demo recipe: window draws");
  let i = 0;
  for (const doc of demoDocuments({ seed })) {
    const ids = documentIds(doc);
    for (const fact of doc.facts) {
      const L = Math.min(ids.length, length(i++, next() / 2 ** 32));
      const lo = Math.max(0, fact.tokenEnd - L), hi = Math.min(fact.tokenStart, ids.length - L);
      const start = lo + (hi > lo ? next() % (hi - lo + 1) : 0);
      const questions = questionsIn(doc, start, start + L);
      const question = questions.find((q) => q.fact === fact);
      if (question === undefined) continue; // the window could not hold the whole fact sentence
      yield { doc, ids: ids.slice(start, start + L), start, end: start + L, question, questions };
    }
  }
}

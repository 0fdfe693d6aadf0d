/**
 * The recipe's seeded streams of training draws: a document span with a question over it, either a
 * chunk-aligned store chunk or a window of chosen length around one fact.
 *
 * @module
 */

import { seededUint32 } from "../src/_seeded_random.ts";
import { type DemoDocument, demoDocuments, type DemoFact } from "./corpus.ts";
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

/** An integer in [lo, hi] drawn from `next` (lo when the range holds one value or none). */
function drawIn(next: () => number, lo: number, hi: number): number {
  return lo + (hi > lo ? next() % (hi - lo + 1) : 0);
}

/**
 * Tokens [start, start + length) of `doc` with the question on `fact`, or undefined when the window
 * does not hold the fact's whole sentence.
 */
function windowOn(
  doc: DemoDocument,
  ids: number[],
  start: number,
  length: number,
  fact: DemoFact,
): Draw | undefined {
  const end = start + length;
  const questions = questionsIn(doc, start, end);
  const question = questions.find((q) => q.fact === fact);
  return question && { doc, ids: ids.slice(start, end), start, end, question, questions };
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
      const draw = windowOn(doc, ids, drawIn(next, lo, hi), L, fact);
      if (draw) yield draw; // else the window could not hold the whole fact sentence
    }
  }
}

/**
 * An endless, seeded stream of windows in which two neighbouring facts share one segment of
 * `segmentTokens`: for each pair of consecutive facts whose sentences fit in a segment, a window of
 * `length(i, u)` tokens (at least the pair's span) placed so both sentences lie wholly inside one of
 * its segments (which one is drawn). The question is the pair's second fact: the summary pairs that
 * carry a segment's second fact learn mostly from these, since a window around one fact rarely holds
 * another in the same segment.
 */
export function* factPairDraws(
  seed: number,
  segmentTokens: number,
  length: (i: number, u: number) => number,
): Generator<Draw> {
  const next = seededUint32(seed, "demo recipe: fact pair draws");
  let i = 0;
  for (const doc of demoDocuments({ seed })) {
    const ids = documentIds(doc);
    for (let f = 0; f + 1 < doc.facts.length; f++) {
      const a = doc.facts[f], b = doc.facts[f + 1];
      const span = b.tokenEnd - a.tokenStart;
      if (span > segmentTokens) continue;
      const L = Math.min(ids.length, Math.max(span, length(i++, next() / 2 ** 32)));
      // Segment k of the window spans [start + k*S, start + min(L, (k+1)*S)): one long enough for both.
      const fits = Math.floor(L / segmentTokens) + (L % segmentTokens >= span ? 1 : 0);
      const k = drawIn(next, 0, fits - 1);
      const segmentEnd = Math.min(L, (k + 1) * segmentTokens);
      const lo = Math.max(0, b.tokenEnd - segmentEnd);
      const hi = Math.min(a.tokenStart - k * segmentTokens, ids.length - L);
      if (hi < lo) continue;
      const draw = windowOn(doc, ids, drawIn(next, lo, hi), L, b);
      if (draw) yield draw;
    }
  }
}

/**
 * An endless, seeded stream of windows holding two facts of one attribute about different entities
 * ("twins": two seals, two trades), both asked: for each such pair whose sentences span at most
 * `maxSpan` tokens, a window of `length(i, u)` tokens (at least the pair's span) placed at random
 * around both. In a window around one fact the attribute alone names the answer, so a reader never
 * needs the entity; the shipped model answered questions with a twin in their chunk 0.38 and the
 * others 0.98 (README "Training the demo model"). The question is either twin, drawn.
 */
export function* twinDraws(
  seed: number,
  maxSpan: number,
  length: (i: number, u: number) => number,
): Generator<Draw> {
  const next = seededUint32(seed, "demo recipe: twin draws");
  let i = 0;
  for (const doc of demoDocuments({ seed })) {
    const ids = documentIds(doc);
    for (const [f, a] of doc.facts.entries()) {
      for (const b of doc.facts.slice(f + 1)) {
        const span = b.tokenEnd - a.tokenStart;
        if (span > maxSpan) break; // facts are in document order: the later ones are farther
        if (b.attribute !== a.attribute) continue;
        const L = Math.min(ids.length, Math.max(span, length(i++, next() / 2 ** 32)));
        const lo = Math.max(0, b.tokenEnd - L), hi = Math.min(a.tokenStart, ids.length - L);
        const draw = windowOn(doc, ids, drawIn(next, lo, hi), L, next() % 2 === 0 ? a : b);
        if (draw) yield draw;
      }
    }
  }
}

/**
 * The sentences of a draw's facts that share its question's attribute (its own included), in document
 * order and with the text between them cut out: a short text window where only the entity tells the
 * twins apart, for the text reader.
 */
export function twinSentences(d: Draw): number[] {
  const attribute = d.question.fact.attribute;
  return d.questions
    .filter((q) => q.fact.attribute === attribute)
    .flatMap((q) => d.ids.slice(q.fact.tokenStart - d.start, q.fact.tokenEnd - d.start));
}

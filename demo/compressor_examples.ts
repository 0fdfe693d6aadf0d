/**
 * What one compressor example of the demo recipe holds: the window's questions, the summary targets
 * that say which summary-vector pair carries which fact, and the reconstruction pair.
 *
 * @module
 */

import type { CompressorExample, CompressorQaPair, SummaryTarget } from "../src/model_train.ts";
import { DEMO_BOS_ID, DEMO_EOS_ID } from "./tokenizer.ts";
import { compressedQaExample, type SpanQuestion, textIds } from "./examples.ts";
import { SEGMENT_TOKENS, SUMMARY_VECTORS } from "./recipe_shape.ts";

/**
 * How a segment's summary vectors are assigned to its facts:
 * - `"pairs"`: the f-th fact in document order in vectors 2f (its entity) and 2f + 1 (its value's
 *   words, as a bag);
 * - `"triples"`: the f-th fact in vectors 3f (its entity), 3f + 1 (its value's first word) and 3f + 2
 *   (its second word, or `</s>` for a one-word value), so the vectors read like the text "entity value
 *   </s>" that the reader copies from; rows past the segment's vectors are dropped (the third fact
 *   keeps its entity and first word);
 * - `"spans"`: the segment cut into one equal span of tokens per two vectors; the fact whose
 *   sentence's midpoint lies in span s in vectors 2s and 2s + 1 as in pairs (a second fact in the same
 *   span gets no targets). A vector then learns to read a fixed stretch of positions, not to count
 *   facts, which is what a small encoder fails at for a segment's second and third fact;
 * - `"joint"`: the f-th fact in vector f alone, its entity and value words as one bag, so the reader
 *   finds the fact and reads its value in the same vector (one attention step instead of finding the
 *   entity's vector and reading the one after it);
 * - `"owned"`: pairs, and vector 2f + 1 also predicts its owner's entity, so a value vector says whose
 *   value it is. Where two facts of one attribute share a chunk the pairs model picks by attribute
 *   (0.41 against 0.98 for the other questions), though each entity and value is carried: which value
 *   goes with which entity is only their order, which the reader did not learn to use.
 *   Measured on two seeds: worse (validation 0.59 against 0.69-0.72), twins no better (README).
 *
 * What the pairs model learned (`bench/demo_summary_probe.ts`, held-out chunks, README "Training the demo
 * model"): a segment's first fact's entity and value words almost always, the second's owner only
 * with 16 examples per step; wrong answers were mostly a value of the right kind but another fact's,
 * or a two-word value with one word wrong, which the triples layout addresses.
 */
export type SummaryLayout = typeof SUMMARY_LAYOUTS[number];
/** Every {@link SummaryLayout}, for checking a layout given as a string. */
export const SUMMARY_LAYOUTS = ["pairs", "triples", "spans", "joint", "owned"] as const;

/** One fact of a segment as token ids: its entity's token and its value's words. */
export interface FactTokens {
  entity: number;
  value: readonly number[];
  /** Its sentence's midpoint in tokens from the segment's start (the `"spans"` layout needs it). */
  at?: number;
}

/**
 * The slot each of a segment's facts (in document order) takes in `layout` with `vectors` summary
 * vectors per segment of `segmentTokens` tokens: its index for pairs and triples, its span for spans
 * (`vectors / 2` spans of equal length), -1 for a fact sharing its span with an earlier one.
 *
 * @example
 * ```ts
 * import { factSlots } from "./compressor_examples.ts";
 * const fact = (at: number) => ({ entity: 7, value: [8], at });
 * console.log(factSlots([fact(10), fact(40), fact(200)], "spans")); // [0, -1, 3]
 * ```
 */
export function factSlots(
  facts: readonly FactTokens[],
  layout: SummaryLayout,
  vectors = SUMMARY_VECTORS,
  segmentTokens = SEGMENT_TOKENS,
): number[] {
  if (layout !== "spans") return facts.map((_, f) => f);
  const spans = Math.floor(vectors / 2), taken = new Set<number>();
  return facts.map(({ at }) => {
    if (at === undefined) throw new RangeError('factSlots: the "spans" layout needs each fact\'s `at`');
    const span = Math.min(spans - 1, Math.max(0, Math.floor(at * spans / segmentTokens)));
    if (taken.has(span)) return -1;
    taken.add(span);
    return span;
  });
}

/**
 * The summary targets of a fact in slot `f` of its segment (see {@link factSlots}; `row` relative to the
 * segment's first vector; the entity's first when its row exists), empty when the layout has no room
 * for it in `vectors` summary vectors.
 *
 * @example
 * ```ts
 * import { factTargets } from "./compressor_examples.ts";
 * console.log(factTargets({ entity: 7, value: [8] }, 1, "triples", 2));
 * // [{ row: 3, token: 7 }, { row: 4, token: 8 }, { row: 5, token: 2 }]
 * console.log(factTargets({ entity: 7, value: [8] }, 1, "owned", 2));
 * // [{ row: 2, token: 7 }, { row: 3, token: 8 }, { row: 3, token: 7 }]
 * ```
 */
export function factTargets(
  fact: FactTokens,
  f: number,
  layout: SummaryLayout,
  eos: number,
  vectors = SUMMARY_VECTORS,
): SummaryTarget[] {
  if (f < 0) return [];
  const rows = layout === "triples"
    ? [3 * f, 3 * f + 1, 3 * f + 2]
    : layout === "joint"
    ? [f, ...fact.value.map(() => f)]
    : (2 * f + 1 < vectors ? [2 * f, ...fact.value.map(() => 2 * f + 1)] : []);
  const tokens = layout === "triples"
    ? [fact.entity, fact.value[0], fact.value[1] ?? eos]
    : [fact.entity, ...fact.value];
  const targets = rows.map((row, i) => ({ row, token: tokens[i] })).filter((t) => t.row < vectors);
  // The owner last, so a fact's first two targets stay its entity row and its first value row.
  if (layout === "owned" && targets.length > 0) targets.push({ row: 2 * f + 1, token: fact.entity });
  return targets;
}

/**
 * The summary targets of one segment's facts, in order (`row` relative to the segment's first vector;
 * `vectors` per segment).
 *
 * @example
 * ```ts
 * import { segmentTargets } from "./compressor_examples.ts";
 * // Two facts: entity 7 with value [8, 9], entity 10 with value [11].
 * console.log(segmentTargets([{ entity: 7, value: [8, 9] }, { entity: 10, value: [11] }], "pairs", 2));
 * // [{ row: 0, token: 7 }, { row: 1, token: 8 }, { row: 1, token: 9 }, { row: 2, token: 10 }, { row: 3, token: 11 }]
 * ```
 */
export function segmentTargets(
  facts: readonly FactTokens[],
  layout: SummaryLayout,
  eos: number,
  vectors = SUMMARY_VECTORS,
  segmentTokens = SEGMENT_TOKENS,
): SummaryTarget[] {
  const slots = factSlots(facts, layout, vectors, segmentTokens);
  return facts.flatMap((fact, f) => factTargets(fact, slots[f], layout, eos, vectors));
}

/** A question's fact as {@link FactTokens}, `at` counted from `segmentStart` (a document position). */
export function factTokens(q: SpanQuestion, segmentStart: number): FactTokens {
  return {
    entity: textIds(q.fact.entity)[0],
    value: textIds(q.fact.value),
    at: (q.fact.tokenStart + q.fact.tokenEnd) / 2 - segmentStart,
  };
}

/**
 * The questions of a window grouped by the compressor segment (of `segmentTokens`) their fact
 * sentence's midpoint falls in (window-relative; segments in the order first met, questions in their
 * given order).
 */
export function questionsBySegment(
  questions: readonly SpanQuestion[],
  windowStart: number,
  segmentTokens = SEGMENT_TOKENS,
): Map<number, SpanQuestion[]> {
  const out = new Map<number, SpanQuestion[]>();
  for (const q of questions) {
    const segment = Math.floor(((q.fact.tokenStart + q.fact.tokenEnd) / 2 - windowStart) / segmentTokens);
    const list = out.get(segment);
    if (list) list.push(q);
    else out.set(segment, [q]);
  }
  return out;
}

/**
 * A compressor document with every question whose fact lies inside it, and two dense signals that
 * teach the compressor what to keep long before the QA loss alone does (a small model trained from
 * zero learns nothing from 32x-compressed QA otherwise; see README "Training the demo model"):
 * - summary targets: in each segment of `segmentTokens`, the vectors {@link SummaryLayout} gives a fact predict its
 *   entity and value words through the LM head (default `"pairs"`);
 * - a reconstruction pair: `[summaries | <s>] -> the window's fact sentences </s>`.
 */
export function compressorExample(
  d: {
    ids: readonly number[];
    start: number;
    questions: readonly SpanQuestion[];
  },
  layout: SummaryLayout = "pairs",
  vectors = SUMMARY_VECTORS,
  segmentTokens = SEGMENT_TOKENS,
): CompressorExample {
  const pairs: CompressorQaPair[] = d.questions.map((q) => compressedQaExample(d.ids, q.question, q.answer));
  const facts = d.questions.flatMap(({ fact }) =>
    d.ids.slice(fact.tokenStart - d.start, fact.tokenEnd - d.start)
  );
  const summaryTargets: SummaryTarget[] = [];
  for (const [segment, qs] of questionsBySegment(d.questions, d.start, segmentTokens)) {
    const facts = qs.map((q) => factTokens(q, d.start + segment * segmentTokens));
    for (const t of segmentTargets(facts, layout, DEMO_EOS_ID, vectors, segmentTokens)) {
      summaryTargets.push({ row: segment * vectors + t.row, token: t.token });
    }
  }
  pairs.push({ question: [DEMO_BOS_ID], answer: [...facts, DEMO_EOS_ID] });
  return { ids: d.ids, pairs, summaryTargets };
}

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
 * Which facts of one segment the summary-vector pairs carry: pair p (vectors 2p and 2p + 1) the
 * segment's p-th fact, in document order; facts past `SUMMARY_VECTORS / 2` have no pair.
 *
 * What the shipped model learned from it (`bench/demo_summary_probe.ts`, held-out chunks): pair 0
 * names its fact's entity 93% of the time, pair 1 almost never (the second fact's value words it gets
 * 64% right). Other layouts measured no better (README "Training the demo model").
 *
 * @example
 * ```ts
 * import { summaryPairSlots } from "./compressor_examples.ts";
 * console.log(summaryPairSlots(["a", "b"])); // ["a", "b", undefined, undefined]
 * ```
 */
export function summaryPairSlots<T>(facts: readonly T[]): (T | undefined)[] {
  return Array.from({ length: SUMMARY_VECTORS / 2 }, (_, p) => facts[p]);
}

/**
 * How a segment's summary vectors are assigned to its facts (in document order):
 * - `"pairs"`: fact p in vectors 2p (its entity) and 2p + 1 (its value's words, as a bag);
 * - `"triples"`: fact f in vectors 3f (its entity), 3f + 1 (its value's first word) and 3f + 2 (its
 *   second word, or `</s>` for a one-word value), so the vectors read like the text "entity value
 *   </s>" that the reader copies from; rows past the segment's vectors are dropped (the third fact
 *   keeps its entity and first word).
 */
export type SummaryLayout = "pairs" | "triples";

/**
 * The summary targets of one segment's facts (`row` relative to the segment's first vector).
 *
 * @example
 * ```ts
 * import { segmentTargets } from "./compressor_examples.ts";
 * // Two facts: entity 7 with value [8, 9], entity 10 with value [11].
 * console.log(segmentTargets([{ entity: 7, value: [8, 9] }, { entity: 10, value: [11] }], "triples", 2));
 * // [{row: 0, token: 7}, {row: 1, token: 8}, {row: 2, token: 9}, {row: 3, token: 10}, {row: 4, token: 11}, {row: 5, token: 2}]
 * ```
 */
export function segmentTargets(
  facts: readonly { entity: number; value: readonly number[] }[],
  layout: SummaryLayout,
  eos: number,
): SummaryTarget[] {
  const out: SummaryTarget[] = [];
  const keep = (t: SummaryTarget) => t.row < SUMMARY_VECTORS && out.push(t);
  if (layout === "pairs") {
    summaryPairSlots(facts).forEach((f, p) => {
      if (!f) return;
      keep({ row: 2 * p, token: f.entity });
      for (const token of f.value) keep({ row: 2 * p + 1, token });
    });
    return out;
  }
  facts.forEach((f, i) => {
    keep({ row: 3 * i, token: f.entity });
    keep({ row: 3 * i + 1, token: f.value[0] });
    keep({ row: 3 * i + 2, token: f.value[1] ?? eos });
  });
  return out;
}

/**
 * The questions of a window grouped by the compressor segment their fact sentence's midpoint falls in
 * (window-relative; segments in the order first met, questions in their given order).
 */
export function questionsBySegment(
  questions: readonly SpanQuestion[],
  windowStart: number,
): Map<number, SpanQuestion[]> {
  const out = new Map<number, SpanQuestion[]>();
  for (const q of questions) {
    const segment = Math.floor(((q.fact.tokenStart + q.fact.tokenEnd) / 2 - windowStart) / SEGMENT_TOKENS);
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
 * - summary targets: in each segment, the vectors {@link SummaryLayout} gives a fact predict its
 *   entity and value words through the LM head (default `"pairs"`);
 * - a reconstruction pair: `[summaries | <s>] -> the window's fact sentences </s>`.
 */
export function compressorExample(d: {
  ids: readonly number[];
  start: number;
  questions: readonly SpanQuestion[];
}, layout: SummaryLayout = "pairs"): CompressorExample {
  const pairs: CompressorQaPair[] = d.questions.map((q) => compressedQaExample(d.ids, q.question, q.answer));
  const facts = d.questions.flatMap(({ fact }) =>
    d.ids.slice(fact.tokenStart - d.start, fact.tokenEnd - d.start)
  );
  const summaryTargets: SummaryTarget[] = [];
  for (const [segment, qs] of questionsBySegment(d.questions, d.start)) {
    const facts = qs.map((q) => ({ entity: textIds(q.fact.entity)[0], value: textIds(q.fact.value) }));
    for (const t of segmentTargets(facts, layout, DEMO_EOS_ID)) {
      summaryTargets.push({ row: segment * SUMMARY_VECTORS + t.row, token: t.token });
    }
  }
  pairs.push({ question: [DEMO_BOS_ID], answer: [...facts, DEMO_EOS_ID] });
  return { ids: d.ids, pairs, summaryTargets };
}

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
 * - summary targets: in each segment, summary vector 2p predicts the entity of the fact that
 *   {@link summaryPairSlots} gives pair p, and vector 2p + 1 that fact's value words;
 * - a reconstruction pair: `[summaries | <s>] -> the window's fact sentences </s>`.
 */
export function compressorExample(d: {
  ids: readonly number[];
  start: number;
  questions: readonly SpanQuestion[];
}): CompressorExample {
  const pairs: CompressorQaPair[] = d.questions.map((q) => compressedQaExample(d.ids, q.question, q.answer));
  const facts = d.questions.flatMap(({ fact }) =>
    d.ids.slice(fact.tokenStart - d.start, fact.tokenEnd - d.start)
  );
  const summaryTargets: SummaryTarget[] = [];
  for (const [segment, qs] of questionsBySegment(d.questions, d.start)) {
    summaryPairSlots(qs).forEach((q, p) => {
      if (!q) return;
      const row = segment * SUMMARY_VECTORS + 2 * p;
      summaryTargets.push({ row, token: textIds(q.fact.entity)[0] });
      for (const token of textIds(q.fact.value)) summaryTargets.push({ row: row + 1, token });
    });
  }
  pairs.push({ question: [DEMO_BOS_ID], answer: [...facts, DEMO_EOS_ID] });
  return { ids: d.ids, pairs, summaryTargets };
}

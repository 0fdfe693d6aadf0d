// The demo recipe's compressor examples: which summary vector learns which fact (summaryPairSlots),
// checked on real corpus chunks against the rule the shipped weights were trained with, restated here.
import assert from "node:assert/strict";
import { generateDemoCorpus } from "../demo/corpus.ts";
import { chunkRange, documentIds, questionsIn, textIds } from "../demo/examples.ts";
import { compressorExample, SEGMENT_TOKENS, SUMMARY_VECTORS, summaryPairSlots } from "../demo/recipe.ts";
import { DEMO_BOS_ID, DEMO_EOS_ID } from "../demo/tokenizer.ts";

Deno.test("recipe: summary pair p carries the segment's p-th fact, none past the last pair", () => {
  assert.deepEqual(summaryPairSlots([]), [undefined, undefined, undefined, undefined]);
  assert.deepEqual(summaryPairSlots(["a"]), ["a", undefined, undefined, undefined]);
  assert.deepEqual(summaryPairSlots(["a", "b", "c"]), ["a", "b", "c", undefined]);
  assert.deepEqual(summaryPairSlots(["a", "b", "c", "d", "e"]), ["a", "b", "c", "d"]);
});

Deno.test("recipe: a whole chunk's summary targets follow the pair rule in each segment", () => {
  const { documents } = generateDemoCorpus({ seed: 77, documents: 4 });
  let checked = 0, twoFactSegments = 0;
  for (const doc of documents) {
    const ids = documentIds(doc);
    for (let c = 0; c * 2 * SEGMENT_TOKENS < ids.length; c++) {
      const [start, end] = chunkRange(doc, 2 * SEGMENT_TOKENS, c);
      const questions = questionsIn(doc, start, end);
      const ex = compressorExample({ ids: ids.slice(start, end), start, questions });
      // Expected targets, in order: the rule the shipped weights were trained with, restated: the
      // f-th fact of a segment (by its sentence's midpoint) gives vector 2f its entity and 2f + 1 its
      // value words, for 2f + 1 < SUMMARY_VECTORS.
      const want: { row: number; token: number }[] = [];
      const seen = new Map<number, number>();
      for (const q of questions) {
        const seg = Math.floor(((q.fact.tokenStart + q.fact.tokenEnd) / 2 - start) / SEGMENT_TOKENS);
        const f = seen.get(seg) ?? 0;
        seen.set(seg, f + 1);
        if (f === 1) twoFactSegments++;
        if (2 * f + 1 >= SUMMARY_VECTORS) continue;
        const row = seg * SUMMARY_VECTORS + 2 * f;
        want.push({ row, token: textIds(q.fact.entity)[0] });
        for (const token of textIds(q.fact.value)) want.push({ row: row + 1, token });
      }
      assert.deepEqual(ex.summaryTargets, want, `${doc.file} chunk ${c}`);
      // One QA pair per question, then the reconstruction pair of every fact sentence in order.
      const pairs = ex.pairs ?? [];
      assert.equal(pairs.length, questions.length + 1);
      const rec = pairs[pairs.length - 1];
      assert.deepEqual(rec.question, [DEMO_BOS_ID]);
      assert.deepEqual(
        rec.answer,
        [...questions.flatMap((q) => ids.slice(q.fact.tokenStart, q.fact.tokenEnd)), DEMO_EOS_ID],
      );
      checked++;
    }
  }
  assert.ok(checked >= 20, `${checked} chunks`);
  assert.ok(twoFactSegments >= 3, `${twoFactSegments} segments with two or more facts`);
});

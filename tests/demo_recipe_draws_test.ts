// The recipe's streams of training windows (demo/recipe_draws.ts): each window is a slice of its
// document holding its question's fact, and the fact-pair stream puts two neighbouring facts in one
// compressor segment, in any segment of the window, as the summary targets count segments; the twin
// stream holds two facts of one attribute about different entities.
import assert from "node:assert/strict";
import { factPairDraws, twinDraws, twinSentences, windowDraws } from "../demo/recipe_draws.ts";
import { questionsBySegment } from "../demo/compressor_examples.ts";
import { documentIds } from "../demo/examples.ts";

const take = <T>(g: Generator<T>, n: number): T[] => Array.from({ length: n }, () => g.next().value as T);

Deno.test("recipe draws: fact-pair windows hold two neighbouring facts in one segment", () => {
  for (const segment of [256, 128]) {
    const lengths = [16, 100, 512];
    const draws = take(factPairDraws(77, segment, (i) => lengths[i % 3]), 300);
    const segmentsUsed = new Set<number>();
    for (const d of draws) {
      assert.deepEqual(d.ids, documentIds(d.doc).slice(d.start, d.end));
      const f = d.doc.facts.indexOf(d.question.fact);
      assert.ok(f >= 1, "the question is a pair's second fact");
      const a = d.doc.facts[f - 1], b = d.question.fact;
      const k = Math.floor((a.tokenStart - d.start) / segment);
      // Both sentences wholly inside segment k of the window, and the window no shorter than the pair.
      assert.ok(
        a.tokenStart >= d.start + k * segment && b.tokenEnd <= Math.min(d.end, d.start + (k + 1) * segment),
      );
      assert.ok(d.end - d.start >= b.tokenEnd - a.tokenStart);
      segmentsUsed.add(k);
      // The summary targets' grouping sees the same: a segment with two or more of the window's facts.
      const shared = questionsBySegment(d.questions, d.start, segment).get(k) ?? [];
      assert.ok(shared.some((q) => q.fact === a) && shared.some((q) => q.fact === b));
    }
    assert.ok(segmentsUsed.has(0) && segmentsUsed.has(1), `pairs only in segments ${[...segmentsUsed]}`);
  }
  // Seeded: the same seed draws the same windows, another seed others.
  const starts = (seed: number) => take(factPairDraws(seed, 256, () => 200), 20).map((d) => d.start);
  assert.deepEqual(starts(5), starts(5));
  assert.notDeepEqual(starts(5), starts(6));
});

Deno.test("recipe draws: windows around one fact hold it wholly, at any place", () => {
  const draws = take(windowDraws(78, (i) => 16 + (i % 8) * 60), 200);
  const offsets = new Set<number>();
  for (const d of draws) {
    assert.ok(d.question.fact.tokenStart >= d.start && d.question.fact.tokenEnd <= d.end);
    assert.deepEqual(d.ids, documentIds(d.doc).slice(d.start, d.end));
    offsets.add(d.question.fact.tokenStart - d.start);
  }
  assert.ok(offsets.size > 50, "the fact is placed at few offsets");
});

Deno.test("recipe draws: twin windows hold two facts of one attribute, and their sentences side by side", () => {
  const lengths = [0, 100, 512];
  const draws = take(twinDraws(79, 512, (i) => lengths[i % 3]), 300);
  const asked = new Set<string>();
  for (const d of draws) {
    assert.deepEqual(d.ids, documentIds(d.doc).slice(d.start, d.end));
    const twins = d.questions.filter((q) => q.fact.attribute === d.question.fact.attribute);
    assert.ok(twins.length >= 2, "a twin window holds another fact of its question's attribute");
    assert.equal(
      new Set(twins.map((q) => q.fact.entity)).size,
      twins.length,
      "twins are about different entities",
    );
    assert.ok(d.end - d.start <= 512, "no window longer than the longest length or span");
    asked.add(d.question === twins[0] ? "first" : "later");
    // The side-by-side text: exactly the twins' sentences, in document order, nothing between them.
    const ids = documentIds(d.doc);
    assert.deepEqual(
      twinSentences(d),
      twins.flatMap((q) => ids.slice(q.fact.tokenStart, q.fact.tokenEnd)),
    );
    // A length-0 window is the pair's own span.
    if (d.end - d.start < 100) assert.ok(twins.some((q) => q.fact.tokenStart === d.start));
  }
  assert.deepEqual([...asked].sort(), ["first", "later"], "the question is drawn from either twin");
  const starts = (seed: number) => take(twinDraws(seed, 512, () => 200), 20).map((d) => d.start);
  assert.deepEqual(starts(5), starts(5));
  assert.notDeepEqual(starts(5), starts(6));
});

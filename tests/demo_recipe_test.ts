// The demo recipe's compressor examples: which summary vector learns which fact (factTargets),
// checked on real corpus chunks against the rule the shipped weights were trained with, restated here.
import assert from "node:assert/strict";
import { generateDemoCorpus } from "../demo/corpus.ts";
import { chunkRange, documentIds, questionsIn, textIds } from "../demo/examples.ts";
import {
  compressorExample,
  factSlots,
  factTargets,
  SEGMENT_TOKENS,
  SUMMARY_VECTORS,
} from "../demo/recipe.ts";
import { DEMO_BOS_ID, DEMO_EOS_ID } from "../demo/tokenizer.ts";

Deno.test("recipe: fact f's rows in each layout, none past the segment's vectors", () => {
  const fact = { entity: 7, value: [8, 9] }, one = { entity: 7, value: [8] };
  assert.deepEqual(factTargets(fact, 0, "pairs", 2), [{ row: 0, token: 7 }, { row: 1, token: 8 }, {
    row: 1,
    token: 9,
  }]);
  assert.deepEqual(factTargets(one, 3, "pairs", 2), [{ row: 6, token: 7 }, { row: 7, token: 8 }]);
  assert.deepEqual(factTargets(fact, 4, "pairs", 2), []);
  assert.deepEqual(factTargets(fact, 1, "triples", 2), [{ row: 3, token: 7 }, { row: 4, token: 8 }, {
    row: 5,
    token: 9,
  }]);
  assert.deepEqual(factTargets(one, 0, "triples", 2), [{ row: 0, token: 7 }, { row: 1, token: 8 }, {
    row: 2,
    token: 2,
  }]);
  assert.deepEqual(factTargets(fact, 2, "triples", 2), [{ row: 6, token: 7 }, { row: 7, token: 8 }]);
  assert.deepEqual(factTargets(fact, 3, "triples", 2), []);
  assert.equal(SUMMARY_VECTORS, 8, "the rows above assume 8 vectors per segment");
});

Deno.test("recipe: spans slots are a fact's 64-token stretch of its segment, the first fact of each", () => {
  const fact = (at: number) => ({ entity: 7, value: [8], at });
  assert.deepEqual(factSlots([fact(0), fact(63.5), fact(64), fact(130), fact(255.5)], "spans"), [
    0,
    -1,
    1,
    2,
    3,
  ]);
  assert.deepEqual(factSlots([fact(200), fact(10)], "pairs"), [0, 1]);
  assert.deepEqual(factTargets(fact(70), -1, "spans", 2), []);
  assert.deepEqual(factTargets(fact(70), 1, "spans", 2), [{ row: 2, token: 7 }, { row: 3, token: 8 }]);
  assert.throws(() => factSlots([{ entity: 7, value: [8] }], "spans"), /needs each fact's `at`/);
});

const SHAPES = [{ L: SEGMENT_TOKENS, V: SUMMARY_VECTORS }, { L: 128, V: 4 }];
for (const layout of ["pairs", "triples", "spans", "joint", "owned"] as const) {
  for (const { L, V } of SHAPES) {
    Deno.test(`recipe: a whole chunk's summary targets follow the ${layout} rule in each segment (${L} -> ${V})`, () => {
      const { documents } = generateDemoCorpus({ seed: 77, documents: 4 });
      let checked = 0, twoFactSegments = 0, sharedSpans = 0;
      for (const doc of documents) {
        const ids = documentIds(doc);
        for (let c = 0; c * 512 < ids.length; c++) {
          const [start, end] = chunkRange(doc, 512, c);
          const questions = questionsIn(doc, start, end);
          const ex = compressorExample({ ids: ids.slice(start, end), start, questions }, layout, V, L);
          // Expected targets, in order, restated. Pairs (the shipped weights' rule): the f-th fact of a
          // segment of L tokens (by its sentence's midpoint) gives vector 2f its entity and 2f + 1 its value
          // words, for 2f + 1 < V. Triples: 3f its entity, 3f + 1 and 3f + 2 its value's first and second
          // word (</s> for one word), each row kept while < V. Spans: the segment in V / 2 stretches of
          // 2L / V tokens; the fact whose midpoint lies in stretch s as pairs' fact s, a later fact in the
          // same stretch nothing. Joint: fact f's entity and value words all in vector f. Owned: pairs, and
          // vector 2f + 1 also the entity, after the value words.
          const want: { row: number; token: number }[] = [];
          const seen = new Map<number, number>(), spans = new Set<string>();
          for (const q of questions) {
            const mid = (q.fact.tokenStart + q.fact.tokenEnd) / 2 - start;
            const seg = Math.floor(mid / L);
            let f = seen.get(seg) ?? 0;
            seen.set(seg, f + 1);
            if (f === 1) twoFactSegments++;
            const base = seg * V,
              entity = textIds(q.fact.entity)[0],
              value = textIds(q.fact.value);
            if (layout === "spans") {
              f = Math.floor((mid - seg * L) / (2 * L / V));
              if (spans.has(`${seg} ${f}`)) {
                sharedSpans++;
                continue;
              }
              spans.add(`${seg} ${f}`);
            }
            if (layout === "joint") {
              if (f >= V) continue;
              for (const token of [entity, ...value]) want.push({ row: base + f, token });
            } else if (layout !== "triples") {
              if (2 * f + 1 >= V) continue;
              want.push({ row: base + 2 * f, token: entity });
              for (const token of value) want.push({ row: base + 2 * f + 1, token });
              if (layout === "owned") want.push({ row: base + 2 * f + 1, token: entity });
            } else {
              [entity, value[0], value[1] ?? DEMO_EOS_ID].forEach((token, i) => {
                if (3 * f + i < V) want.push({ row: base + 3 * f + i, token });
              });
            }
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
      if (layout === "spans") assert.ok(sharedSpans >= 1, `${sharedSpans} facts sharing a span`);
    });
  }
}

Deno.test("recipe: with 10 vectors a segment has 5 spans of 51.2 tokens and pairs room for 5 facts", () => {
  const fact = (at: number) => ({ entity: 7, value: [8], at });
  assert.deepEqual(factSlots([fact(51), fact(51.5), fact(204.8), fact(255)], "spans", 10), [0, 1, 4, -1]);
  assert.deepEqual(factTargets(fact(0), 4, "pairs", 2, 10), [{ row: 8, token: 7 }, { row: 9, token: 8 }]);
  assert.deepEqual(factTargets(fact(0), 4, "pairs", 2), []);
  // Every entity row of real chunks: 10 rows per segment, 2 per span of 51.2 tokens.
  const { documents } = generateDemoCorpus({ seed: 77, documents: 2 });
  let secondSegment = 0;
  for (const doc of documents) {
    const ids = documentIds(doc);
    for (let start = 0; start < ids.length; start += 512) {
      const questions = questionsIn(doc, start, start + 512);
      const ex = compressorExample({ ids: ids.slice(start, start + 512), start, questions }, "spans", 10);
      const entityRows = ex.summaryTargets!.filter((t) => t.row % 2 === 0).map((t) => t.row);
      const want = [
        ...new Set(questions.map((q) => {
          const mid = (q.fact.tokenStart + q.fact.tokenEnd) / 2 - start, seg = Math.floor(mid / 256);
          return seg * 10 + 2 * Math.floor((mid - seg * 256) / 51.2);
        })),
      ];
      assert.deepEqual(entityRows, want, `${doc.file} at ${start}`);
      secondSegment += want.filter((r) => r >= 10).length;
    }
  }
  assert.ok(secondSegment >= 3, `${secondSegment} facts in second segments`);
});

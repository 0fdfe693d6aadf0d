// The demo evaluation (demo/evaluate.ts): its prompts are the recipe's training layouts token for
// token, its scoring is exact match, and on a folder the recipe trained for a step or two (random
// quality, right files and shapes) every condition answers every question with positions, KV
// slots and retrieval that agree with independent counts and a direct store.retrieve. No
// assertion on the scores: the weights are untrained.
import assert from "node:assert/strict";
import { join } from "node:path";
import { DocumentStore, Kvfold } from "../mod.ts";
import { exactMatch, generateDemoCorpus, partsAnswered } from "../demo/mod.ts";
import { compressedQaExample, documentIds, textIds, textQaExample } from "../demo/examples.ts";
import {
  CACHE_SLOTS,
  DEMO_CONDITIONS,
  type DemoAnswerRow,
  type DemoEvaluation,
  evaluateDemo,
  summarizeCondition,
  textPrompt,
} from "../demo/evaluate.ts";
import { SEGMENT_TOKENS, trainDemoModel } from "../demo/recipe.ts";
import { compressDemoDocuments, loadTrainedDemo } from "../demo/trained.ts";
import { tempDir } from "./_fixtures.ts";
import { rejectsWith } from "./_kvfold_asserts.ts";

// Documents of about four and a half store chunks (one 256-token segment each), so a document has a
// short last chunk.
const CHUNK = SEGMENT_TOKENS;
const SHAPE = { seed: 90210, documents: 2, tokensPerDocument: 1200, factsPerDocument: 4 };

let folder: Promise<string> | undefined;
/** A trained demo folder from one optimizer step per phase, made once for the file. */
function trainedFolder(kv: Kvfold): Promise<string> {
  folder ??= (async () => {
    const dir = await tempDir();
    await trainDemoModel(kv, {
      outDir: dir,
      budget: { readerSteps: 1, compressorSteps: 1, adapterSteps: 1, lococoSteps: 1, batch: 1 },
    });
    return dir;
  })();
  return folder;
}

let evaluation: Promise<DemoEvaluation> | undefined;
function evaluated(kv: Kvfold): Promise<DemoEvaluation> {
  evaluation ??= (async () =>
    evaluateDemo(kv, {
      ...SHAPE,
      trainedDir: await trainedFolder(kv),
      questionsPerDocument: 3,
      crossGroup: 2,
    }))();
  return evaluation;
}

const rowsOf = (e: DemoEvaluation, condition: string) => e.rows.filter((r) => r.condition === condition);

Deno.test("demo evaluate: text and compressed prompts are the recipe's training layouts", async () => {
  await using kv = await Kvfold.open();
  using trained = await loadTrainedDemo(kv, await trainedFolder(kv));
  const { model } = trained;
  const corpus = generateDemoCorpus(SHAPE);
  for (const doc of corpus.documents) {
    const ids = documentIds(doc);
    // The store cuts chunks from the tokenizer's ids of the text: the recipe's document ids.
    assert.deepEqual(model.tokenizer.encode(doc.text), ids);
    for (const q of doc.questions) {
      for (const context of [[], ids, ids.slice(0, 16), ids.slice(CHUNK, 2 * CHUNK)]) {
        const example = textQaExample(context, q.question, q.answer);
        const promptLength = 1 + context.length + textIds(q.question).length;
        const prompt = textPrompt(model, context, q.question);
        assert.deepEqual(prompt, example.ids.slice(0, promptLength));
        // The prompt ends where the recipe's first answer label sits.
        assert.equal(example.labels[promptLength - 1], textIds(q.answer)[0]);
        assert.equal(example.ids[promptLength], textIds(q.answer)[0]);
      }
      // answerFromChunks's prompt for a string question on a model without a chat template.
      const compressed = compressedQaExample(ids.slice(0, CHUNK), q.question, q.answer);
      assert.equal(model.tokenizer.hasChatTemplate, false);
      assert.deepEqual(model.encodePrompt(q.question, { chat: false }), compressed.question);
    }
  }
});

Deno.test("demo evaluate: a condition's summary scores canned answers by exact match", () => {
  const row = (prediction: string, answer: string, extra: Partial<DemoAnswerRow> = {}): DemoAnswerRow => ({
    condition: "full",
    document: "ledger-0.txt",
    group: "ledger",
    question: "q?",
    answer,
    prediction,
    exact: exactMatch(prediction, answer),
    contextPositions: 100,
    promptPositions: 110,
    generatedTokens: 3,
    kvSlotsPeak: 112,
    prefillMs: 10,
    decodeMs: 2,
    ...extra,
  });
  const rows = [
    row("The silk.", "silk"),
    row("forty", "forty two"),
    row(" thirty seven", "thirty seven", { contextPositions: 300, promptPositions: 310, kvSlotsPeak: 312 }),
    row("red lion red", "red lion", { generatedTokens: 5, decodeMs: 6 }),
  ];
  assert.deepEqual(rows.map((r) => r.exact), [true, false, true, false]);
  const s = summarizeCondition("full", rows, 2048);
  assert.equal(s.n, 4);
  assert.equal(s.exactMatch, 0.5);
  assert.equal(s.meanContextPositions, 150);
  assert.equal(s.meanPromptPositions, 160);
  assert.equal(s.meanKvBytes, ((112 * 3 + 312) / 4) * 2048);
  assert.equal(s.decodeTokensPerSecond, 14 / 0.012);
  assert.equal(s.prefillPositionsPerSecond, 640 / 0.04);
  assert.equal(s.meanPrefillMs, 10);
});

Deno.test("demo evaluate: every condition answers every question with consistent positions", async () => {
  await using kv = await Kvfold.open();
  const e = await evaluated(kv);
  const corpus = generateDemoCorpus(SHAPE);
  assert.equal(e.questions, SHAPE.documents * 3);
  assert.deepEqual(e.conditions.map((c) => c.condition), [...DEMO_CONDITIONS]);
  const S = 8; // the recipe's summary vectors per segment
  for (const c of e.conditions) {
    const rows = rowsOf(e, c.condition);
    assert.equal(c.n, e.questions, c.condition);
    assert.equal(rows.length, e.questions);
    assert.equal(c.exactMatch, rows.filter((r) => exactMatch(r.prediction, r.answer)).length / rows.length);
    for (const r of rows) {
      assert.equal(r.exact, exactMatch(r.prediction, r.answer));
      assert.ok(r.generatedTokens >= 1 && r.generatedTokens <= e.maxTokens);
    }
  }
  const docLength = (file: string) => corpus.documents.find((d) => d.file === file)!.tokens.length;
  for (let i = 0; i < e.questions; i++) {
    const at = (condition: string) => rowsOf(e, condition)[i];
    const question = textIds(at("none").question).length;
    assert.equal(at("none").contextPositions, 0);
    assert.equal(at("none").promptPositions, 1 + question);
    // The full text: the document, <s> and the question; the full cache holds it all plus the answer.
    const full = at("full");
    assert.equal(full.contextPositions, docLength(full.document));
    assert.equal(full.promptPositions, 1 + docLength(full.document) + question);
    assert.equal(full.kvSlotsPeak, full.promptPositions + full.generatedTokens - 1);
    // LLoCO: a store chunk is one segment, so 8 vectors whatever its length.
    for (const name of ["lloco", "lloco-oracle"]) {
      const r = at(name);
      assert.equal(r.contextPositions, S, name);
      assert.equal(r.promptPositions, r.contextPositions + 1 + question);
      // The group adapter rule: the chunk's document group names the adapter.
      assert.equal(r.adapter, r.chunk!.source.split("-")[0], name);
    }
    assert.equal(at("lloco-oracle").chunk!.holdsFact, true);
    assert.equal(at("lloco-oracle").adapter, at("lloco-oracle").group);
    // Truncation gets exactly the vectors' positions; the chunk text gets the whole chunk.
    for (const name of ["truncated-document", "truncated-chunk"]) {
      assert.equal(at(name).contextPositions, at("lloco").contextPositions, name);
    }
    // (Its exact length, the stored chunk's tokens, is checked against the store below.)
    assert.ok(at("chunk-text").contextPositions <= CHUNK);
    // The bounded caches read the full text into at most M + one segment (+ 16) slots.
    for (const name of ["lococo", "h2o", "streaming"]) {
      const r = at(name);
      assert.equal(r.promptPositions, full.promptPositions, name);
      assert.ok(r.kvSlotsPeak <= CACHE_SLOTS + SEGMENT_TOKENS + 16, `${name}: ${r.kvSlotsPeak}`);
      assert.ok(r.kvSlotsPeak < full.kvSlotsPeak, name);
    }
  }
  assert.ok(e.crossGroup);
  assert.equal(e.crossGroup.questions, 2);
  assert.equal(e.crossGroup.results.length, 6);
  const crossRows = e.crossGroup.rows;
  for (const r of e.crossGroup.results) {
    assert.equal(r.n, 2);
    // Values stated: each row's count by the rule, and the result their share of 2 per question.
    const mine = crossRows.filter((x) => x.mode === r.mode && x.chunks === r.chunks);
    for (const x of mine) {
      assert.equal(x.parts, partsAnswered(x.prediction, x.answer.split(" and ")));
      assert.ok(!x.exact || x.parts === 2, "an exact answer states both values");
    }
    assert.equal(r.partsAnswered, mine.reduce((s, x) => s + x.parts, 0) / 4);
  }
  for (const r of e.crossGroup.rows.filter((r) => r.chunks === "oracle")) {
    assert.equal(r.context.length, 2);
    assert.deepEqual(new Set(r.context.map((c) => c.group)), new Set(["ledger", "voyage"]));
    // Two groups: compose weighs both adapters, best picks one, none decodes with the base model.
    if (r.mode === "none") assert.equal(r.adapter, null);
    if (r.mode === "best") assert.ok(r.adapter === "ledger" || r.adapter === "voyage");
    if (r.mode === "compose") {
      assert.match(r.adapter!, /ledger×0\.5 \+ voyage×0\.5|voyage×0\.5 \+ ledger×0\.5/);
    }
  }
});

Deno.test("demo evaluate: retrieval accuracy is what store.retrieve gives on the same store", async () => {
  await using kv = await Kvfold.open();
  const e = await evaluated(kv);
  using trained = await loadTrainedDemo(kv, await trainedFolder(kv));
  const corpus = generateDemoCorpus(SHAPE);
  const dir = await tempDir();
  try {
    using store = DocumentStore.open(join(dir, "kb.sqlite"));
    await compressDemoDocuments(trained.compressor, store, corpus.documents);
    let hits = 0;
    const llocoRows = rowsOf(e, "lloco"), textRows = rowsOf(e, "chunk-text");
    let i = 0;
    for (const doc of corpus.documents) {
      // The store's chunks: at most one segment each, every one but the last ending a sentence, and
      // over half a segment long; together the document's tokens.
      const chunks = store.getChunks(store.getDocument(doc.file)!.chunkIds);
      const spans: [number, number][] = [];
      for (const c of chunks) spans.push([spans.at(-1)?.[1] ?? 0, (spans.at(-1)?.[1] ?? 0) + c.tokens]);
      assert.equal(spans.at(-1)![1], doc.tokens.length);
      for (const [k, [a, b]] of spans.entries()) {
        assert.ok(b - a <= CHUNK, `${doc.file} chunk ${k}: ${b - a} tokens`);
        if (k < spans.length - 1) {
          assert.equal(doc.tokens[b - 1], ".", `${doc.file} chunk ${k} ends mid-sentence`);
          assert.ok(b - a > CHUNK / 2);
        }
      }
      const chunkOf = (t: number) => spans.findIndex(([a, b]) => a <= t && t < b);
      for (const [f, q] of doc.questions.slice(0, 3).entries()) {
        const [top] = store.retrieve(q.question, { k: 1 });
        const fact = doc.facts[f];
        // The fact's whole sentence lies in one chunk: chunks end at sentence ends.
        const ordinal = chunkOf(fact.tokenStart);
        assert.equal(chunkOf(fact.tokenEnd - 1), ordinal);
        const hit = top.source === doc.file && top.ordinal === ordinal;
        hits += +hit;
        const row = llocoRows[i];
        assert.equal(row.question, q.question);
        assert.deepEqual(row.chunk, { source: top.source, ordinal: top.ordinal, holdsFact: hit });
        assert.equal(textRows[i++].contextPositions, top.tokens);
      }
    }
    assert.equal(e.factsSplitAcrossChunks, 0);
    assert.equal(e.retrievalAccuracy, hits / e.questions);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("demo evaluate: a folder without the model names the recipe command", async () => {
  await using kv = await Kvfold.open();
  const dir = await tempDir();
  try {
    await rejectsWith(
      evaluateDemo(kv, { trainedDir: dir, seed: 1, documents: 1 }),
      "IO",
      /model\/config\.json is missing .*train it with `deno task train-demo`/,
    );
    await assert.rejects(
      evaluateDemo(kv, { trainedDir: dir, seed: 1, documents: 1, conditions: ["nope" as "none"] }),
      RangeError,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// The trained folder lives for the whole file; remove it after the last test.
Deno.test("demo evaluate: cleanup", async () => {
  if (folder) await Deno.remove(await folder, { recursive: true });
});

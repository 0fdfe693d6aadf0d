// What the demo model's summary vectors carry: for each held-out store chunk, the vectors the recipe
// trains to name a fact (demo/compressor_examples.ts factTargets, in the layout of the model's
// recipe.json) are read through the tied LM head, and the top-1 token (joint layout: top k, k the
// vector's targets) is checked against the fact's entity (its entity row) and its value's words (its
// first value row). Reported by the fact's rank in its segment
// (first, second, ...), since the owner of a second fact is what the reader needs to tell two facts of
// one kind apart. With --qa-rows (the JSON of `bench/demo_qa.ts --rows`, same seed and documents), the
// LLoCO answers' exact match is broken down by the same rank, which tells the encoder's misses (a fact
// no vector carries) from the reader's (a carried fact answered wrong), and by whether another fact of
// the chunk has the question's attribute (then only the entity names the answer). A diagnostic, not a timed
// bench; it never trains.
//
//   deno run -A bench/demo_summary_probe.ts [--trained demo/trained] [--seed 4242] [--documents 8]
//       [--qa-rows demo_qa_rows.json] [--layout pairs|triples|spans|joint (default: the model's recipe.json)]
//       [--chunk-tokens N (chunks every N tokens; default: the store's chunks, demo/trained.ts storeChunking)]
import { parseArgs } from "node:util";
import { join } from "node:path";
import { Kvfold } from "../mod.ts";
import { Compressor } from "../src/compressor.ts";
import { readSafetensorsFile, toFloat32 } from "../src/formats/safetensors.ts";
import { type DemoDocument, generateDemoCorpus } from "../demo/corpus.ts";
import { documentIds, questionsIn } from "../demo/examples.ts";
import { factSlots, factTargets, factTokens, questionsBySegment, SUMMARY_LAYOUTS } from "../demo/recipe.ts";
import { DEMO_EOS_ID } from "../demo/tokenizer.ts";
import { DEFAULT_TRAINED_DIR, demoChunkSpans, trainedSegmentTokens } from "../demo/trained.ts";
import { chunkSpans } from "../src/chunk_spans.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    trained: { type: "string", default: DEFAULT_TRAINED_DIR },
    seed: { type: "string", default: "4242" },
    documents: { type: "string", default: "8" },
    "qa-rows": { type: "string" },
    layout: { type: "string" },
    "chunk-tokens": { type: "string" },
  },
});
const recipe = await Deno.readTextFile(join(v.trained!, "recipe.json")).then(JSON.parse).catch(() => ({}));
const layout = v.layout ?? recipe.budget?.layout ?? "pairs";
if (!SUMMARY_LAYOUTS.includes(layout)) {
  throw new Error(`--layout ${layout}: expected ${SUMMARY_LAYOUTS.join(" or ")}`);
}
const modelDir = join(v.trained!, "model");
const { tensors } = await readSafetensorsFile(join(modelDir, "model.safetensors"));
const embed = tensors.get("model.embed_tokens.weight");
if (!embed || tensors.has("lm_head.weight")) throw new Error(`${modelDir}: expected tied embeddings`);
const E = toFloat32(embed);
const [V, H] = embed.shape;
/** The k tokens the LM head ranks first for summary row r. */
const topK = (vec: Float32Array, r: number, k: number) => {
  const scores = Array.from({ length: V }, (_, t) => {
    let s = 0;
    for (let i = 0; i < H; i++) s += vec[r * H + i] * E[t * H + i];
    return [t, s] as const;
  });
  return scores.sort((a, b) => b[1] - a[1]).slice(0, k).map(([t]) => t);
};

await using kv = await Kvfold.open({ backend: "cpu" });
using compressor = await Compressor.load(kv, modelDir);
const S = compressor.summaryLength, L = trainedSegmentTokens(compressor);
// The store's chunks (at most one segment each, cut at sentence ends, as bench/demo_qa.ts stores
// them) or, with --chunk-tokens 512, the recipe's two-segment training chunks.
const spansOf = (doc: DemoDocument) =>
  v["chunk-tokens"] === undefined
    ? demoChunkSpans(compressor, doc)
    : chunkSpans(doc.tokens.length, { chunkTokens: Number(v["chunk-tokens"]) });
const corpus = generateDemoCorpus({ seed: Number(v.seed), documents: Number(v.documents) });
// byRank[k] = [facts, entity right, value word right] for the k-th fact of its segment
const byRank: number[][] = [];
/** Each question's rank in its segment, by document file and question text. */
const rankOf = new Map<string, number>();
/** Whether another fact of the question's chunk has its attribute (only the entity tells them apart). */
const twinOf = new Map<string, boolean>();
for (const doc of corpus.documents) {
  const ids = documentIds(doc);
  for (const [start, end] of spansOf(doc)) {
    const vectors = (await compressor.compress(ids.slice(start, end), { segmentLength: L })).data;
    const inChunk = questionsIn(doc, start, end);
    for (const q of inChunk) {
      twinOf.set(
        `${doc.file}\n${q.question}`,
        inChunk.some((o) => o !== q && o.fact.attribute === q.fact.attribute),
      );
    }
    for (const [seg, inSeg] of questionsBySegment(inChunk, start, L)) {
      inSeg.forEach((q, rank) => rankOf.set(`${doc.file}\n${q.question}`, rank));
      const facts = inSeg.map((q) => factTokens(q, start + seg * L));
      const slots = factSlots(facts, layout, S, L);
      facts.forEach((fact, rank) => {
        const [entity, value] = factTargets(fact, slots[rank], layout, DEMO_EOS_ID, S);
        if (!value) return; // no room for its value in the layout
        const counts = byRank[rank] ??= [0, 0, 0];
        counts[0]++;
        // A joint vector holds its fact's entity and value words at once: its k = 1 + words targets
        // are looked for among its top k tokens; an owned value row (its owner as well) among its top
        // 2; every other row among its top 1.
        const k = layout === "joint" ? 1 + fact.value.length : 1;
        if (topK(vectors, seg * S + entity.row, k).includes(fact.entity)) counts[1]++;
        const kValue = layout === "owned" ? 2 : k;
        if (topK(vectors, seg * S + value.row, kValue).some((t) => fact.value.includes(t))) counts[2]++;
      });
    }
  }
}
console.log(
  `summary vectors of ${v.trained} (${layout}) on held-out documents (seed ${v.seed}, ${v.documents} documents)`,
);
console.log(
  `| fact in its segment | facts | entity top-${layout === "joint" ? "k" : 1} | value word top-${
    layout === "joint" ? "k" : 1
  } |`,
);
console.log("| --- | --- | --- | --- |");
byRank.forEach(([n, e, w], k) => {
  if (n) {
    console.log(
      `| ${["first", "second", "third", "fourth"][k] ?? k + 1} | ${n} | ${(e / n).toFixed(3)} | ${
        (w / n).toFixed(3)
      } |`,
    );
  }
});

if (v["qa-rows"]) {
  const { rows } = JSON.parse(await Deno.readTextFile(v["qa-rows"])) as {
    rows?: { condition: string; document: string; question: string; exact: boolean }[];
  };
  if (!rows) throw new Error(`${v["qa-rows"]}: no rows (run bench/demo_qa.ts with --rows)`);
  type Row = (typeof rows)[number];
  /** Exact match of the LLoCO rows per condition and per `column(row)`, as a table. */
  const breakdown = (heading: string, column: (r: Row) => string) => {
    const cells = new Map<string, [number, number]>();
    for (const r of rows.filter((r) => r.condition.startsWith("lloco"))) {
      const key = `${r.condition}\t${column(r)}`;
      const c = cells.get(key) ?? [0, 0];
      c[0]++, c[1] += Number(r.exact);
      cells.set(key, c);
    }
    console.log(`\n| LLoCO condition | ${heading} | questions | exact match |`);
    console.log("| --- | --- | --- | --- |");
    for (const [key, [n, e]] of [...cells].sort()) {
      const [condition, value] = key.split("\t");
      console.log(`| ${condition} | ${value} | ${n} | ${(e / n).toFixed(3)} |`);
    }
  };
  breakdown("fact's rank in its segment", (r) => {
    const rank = rankOf.get(`${r.document}\n${r.question}`);
    return rank === undefined ? "split across chunks" : String(rank + 1);
  });
  // Twins: a chunk with two facts of one attribute (two seals) can only be read by the entity.
  breakdown(
    "another fact of its attribute in its chunk",
    (r) => twinOf.get(`${r.document}\n${r.question}`) ? "yes" : "no",
  );
}

// Where in a segment the demo model loses facts, measured by moving the segments instead of the facts:
// each held-out question is answered from the 512-token chunk that holds its fact sentence's start,
// cut at N alignments (chunk starts at offsets 0, 512 / N, 2 * 512 / N, ... of the document), so the
// same fact sits at N different places of its 256-token segment. Per alignment it reports exact match;
// across them, "any" (some alignment answers right: what the vectors can give), "nearest start" (the
// one alignment whose segment starts closest before the fact: one read of 16 vectors) and "likeliest"
// (every alignment answered, the answer whose tokens and end the model gives the highest log-probability
// kept: N reads). Oracle chunks, not BM25: a diagnostic of the compressor, not a retrieval path; it
// never trains. Vectors are rounded to bf16 as the store keeps them.
//
//   deno run -A bench/demo_alignment_probe.ts [--trained demo/trained] [--seed 5150] [--documents 8]
//       [--alignments 8] [--out bench/results/demo_alignment.json]
import { parseArgs } from "node:util";
import { Kvfold } from "../mod.ts";
import type { Model } from "../src/model.ts";
import { answerFromChunks } from "../src/lloco.ts";
import { bf16Vectors, type StoredVectors } from "../src/store_records.ts";
import { f32ToBf16 } from "../src/formats/safetensors.ts";
import { exactMatch, generateDemoCorpus } from "../demo/corpus.ts";
import { documentIds } from "../demo/examples.ts";
import { CHUNK_TOKENS } from "../demo/recipe_shape.ts";
import { DEFAULT_TRAINED_DIR, loadTrainedDemo, trainedSegmentTokens } from "../demo/trained.ts";
import { DEMO_EOS_ID } from "../demo/tokenizer.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    trained: { type: "string", default: DEFAULT_TRAINED_DIR },
    seed: { type: "string", default: "5150" },
    documents: { type: "string", default: "8" },
    alignments: { type: "string", default: "8" },
    out: { type: "string", default: new URL("./results/demo_alignment.json", import.meta.url).pathname },
  },
});
const N = Number(v.alignments);
if (!Number.isInteger(N) || N < 1 || CHUNK_TOKENS % N !== 0) {
  throw new RangeError(`--alignments ${v.alignments}: expected a divisor of ${CHUNK_TOKENS}`);
}
const offsets = Array.from({ length: N }, (_, j) => (j * CHUNK_TOKENS) / N);

/** log p(answer tokens, then `</s>` | vectors, prompt) under the group's adapter. */
async function answerLogProb(
  model: Model,
  vectors: StoredVectors,
  group: string,
  prompt: number[],
  answer: number[],
): Promise<number> {
  const seq = [...prompt, ...answer, DEMO_EOS_ID];
  using s = model.session({ contextSize: vectors.rows + seq.length });
  await s.setAdapter(group);
  await s.prefillEmbeddings(vectors.data);
  const logits = (await s.prefill(seq, { logits: "all" }))!;
  const V = model.info.vocabSize;
  let sum = 0;
  for (let t = prompt.length - 1; t < seq.length - 1; t++) {
    const row = logits.subarray(t * V, (t + 1) * V);
    const max = row.reduce((m, x) => Math.max(m, x), -Infinity);
    const z = row.reduce((s, x) => s + Math.exp(x - max), 0);
    sum += row[seq[t + 1]] - max - Math.log(z);
  }
  return sum;
}

await using kv = await Kvfold.open({ backend: "cpu" });
using trained = await loadTrainedDemo(kv, v.trained!, { lococo: false });
const { model, compressor } = trained;
const L = trainedSegmentTokens(compressor);
const corpus = generateDemoCorpus({ seed: Number(v.seed), documents: Number(v.documents) });
interface Row {
  document: string;
  question: string;
  answer: string;
  /** Per alignment: the answer, whether right, its log-probability, the fact's offset in its segment. */
  alignments: { offset: number; text: string; exact: boolean; logProb: number; inSegment: number }[];
}
const rows: Row[] = [];
for (const doc of corpus.documents) {
  const ids = documentIds(doc);
  // Each chunk [start, end) compressed once, kept as the store keeps it (bf16 bits).
  const compressed = new Map<string, StoredVectors>();
  const chunkVectors = async (start: number, end: number) => {
    const key = `${start}:${end}`;
    if (!compressed.has(key)) {
      const { rows, hidden, data } = await compressor.compress(ids.slice(start, end), { segmentLength: L });
      compressed.set(key, bf16Vectors(rows, hidden, Uint16Array.from(data, f32ToBf16)));
    }
    return compressed.get(key)!;
  };
  for (const [i, q] of doc.questions.entries()) {
    const at = doc.facts[i].tokenStart;
    const prompt = model.encodePrompt(q.question, { chat: false });
    const row: Row = { document: doc.file, question: q.question, answer: q.answer, alignments: [] };
    for (const offset of offsets) {
      // The alignment's chunks start at offset + 512k (and one shorter chunk [0, offset) before them).
      const k = Math.floor((at - offset) / CHUNK_TOKENS);
      const start = k < 0 ? 0 : offset + k * CHUNK_TOKENS;
      const vectors = await chunkVectors(start, k < 0 ? offset : start + CHUNK_TOKENS);
      let text = "";
      for await (
        const piece of answerFromChunks(model, [{ vectors, group: doc.group }], prompt, {
          temperature: 0,
          maxTokens: 5,
        })
      ) {
        text += piece;
      }
      text = text.trim();
      const logProb = await answerLogProb(model, vectors, doc.group, prompt, model.tokenizer.encode(text));
      row.alignments.push({
        offset,
        text,
        exact: exactMatch(text, q.answer),
        logProb,
        inSegment: (at - start) % L,
      });
    }
    rows.push(row);
  }
  console.error(`${doc.file}: ${rows.length} questions`);
}

const share = (pick: (r: Row) => boolean) => rows.filter(pick).length / rows.length;
const byOffset = offsets.map((offset, j) => ({ offset, exactMatch: share((r) => r.alignments[j].exact) }));
// Evenly spaced subsets of 1, 2, 4, ... alignments (offset 0 in each).
const subsets: { alignments: number; any: number; nearestStart: number; likeliest: number }[] = [];
for (let n = 1; n <= N; n *= 2) {
  const sub = (r: Row) => r.alignments.filter((_, j) => j % (N / n) === 0);
  const best = (r: Row, key: (a: Row["alignments"][number]) => number) =>
    sub(r).reduce((x, y) => (key(y) > key(x) ? y : x));
  subsets.push({
    alignments: n,
    any: share((r) => sub(r).some((a) => a.exact)),
    nearestStart: share((r) => best(r, (a) => -a.inSegment).exact),
    likeliest: share((r) => best(r, (a) => a.logProb).exact),
  });
}
// Every read, by where the fact sentence starts in its segment (quarters of the segment).
const quarters = [0, 1, 2, 3].map((qtr) => {
  const reads = rows.flatMap((r) => r.alignments).filter((a) => Math.floor((4 * a.inSegment) / L) === qtr);
  return {
    from: (qtr * L) / 4,
    to: ((qtr + 1) * L) / 4,
    reads: reads.length,
    exactMatch: reads.filter((a) => a.exact).length / reads.length,
  };
});
console.log(`demo model ${v.trained}, held-out seed ${v.seed}, ${rows.length} questions, oracle chunks`);
console.log("\n| chunk alignment (tokens) | exact match |\n| --- | --- |");
for (const { offset, exactMatch } of byOffset) console.log(`| ${offset} | ${exactMatch.toFixed(3)} |`);
console.log("\n| fact starts at (tokens into its segment) | reads | exact match |\n| --- | --- | --- |");
for (const q of quarters) console.log(`| ${q.from}-${q.to - 1} | ${q.reads} | ${q.exactMatch.toFixed(3)} |`);
console.log("\n| alignments | any right | nearest segment start (1 read) | likeliest answer (N reads) |");
console.log("| --- | --- | --- | --- |");
for (const s of subsets) {
  console.log(
    `| ${s.alignments} | ${s.any.toFixed(3)} | ${s.nearestStart.toFixed(3)} | ${s.likeliest.toFixed(3)} |`,
  );
}
await Deno.writeTextFile(
  v.out!,
  JSON.stringify(
    {
      trained: v.trained,
      seed: Number(v.seed),
      documents: Number(v.documents),
      date: new Date().toISOString(),
      byOffset,
      quarters,
      subsets,
      rows,
    },
    null,
    2,
  ) + "\n",
);
console.log(`\nwrote ${v.out}`);

/**
 * Cross-group questions of the demo corpus ("what goods did X buy, and at which port did X go
 * ashore?"): one fact in a ledger document, one in a voyage log, so the answer needs two chunks of
 * two adapter groups. Measured with the best chunk's group adapter, the groups' adapters composed
 * (weighted by retrieval score), and no adapter, over the top two BM25 chunks and over the two
 * chunks that hold the facts (oracle retrieval).
 *
 * @module
 */

import type { AdapterMode } from "../src/adapter_composition.ts";
import { DocumentStore } from "../src/store.ts";
import type { RetrievedChunk } from "../src/store_records.ts";
import { exactMatch, partsAnswered } from "./answers.ts";
import { type DemoDocument, type DemoQuestion, generateDemoCorpus } from "./corpus.ts";
import { answerOverChunks, answerTokenBudget, factChunk } from "./evaluate_paths.ts";
import { compressDemoDocuments, demoChunkSpans, type TrainedDemo } from "./trained.ts";

/** Chunks retrieved per cross-group question. */
export const CROSS_GROUP_K = 2;
/** The adapter modes compared, in table order. */
export const CROSS_GROUP_MODES: readonly AdapterMode[] = ["best", "compose", "none"];
/** Where the chunks come from: the top BM25 chunks, or the two chunks holding the facts. */
export type CrossGroupChunks = "retrieved" | "oracle";

/** Options of {@link evaluateCrossGroup}. */
export interface CrossGroupOptions {
  seed: number;
  documents: number;
  /** Cross-group questions to draw. */
  crossGroup: number;
  tokensPerDocument?: number;
  factsPerDocument?: number;
  /** Where to write the corpus's store (a new SQLite file). */
  storePath: string;
  signal?: AbortSignal;
  /** Questions answered of all. */
  onProgress?: (done: number, total: number) => void;
}

/** One answer of one (mode, chunks) pair. */
export interface CrossGroupAnswerRow {
  mode: AdapterMode;
  chunks: CrossGroupChunks;
  question: string;
  answer: string;
  prediction: string;
  exact: boolean;
  /** How many of the answer's two values the prediction states (`partsAnswered`). */
  parts: number;
  /** The adapters that decoded ("ledger×0.55 + voyage×0.45"), null: the base model. */
  adapter: string | null;
  /** The chunks' sources and ordinals, in prefix order. */
  context: { source: string; ordinal: number; group: string | null }[];
}

/** Exact match of one (mode, chunks) pair. */
export interface CrossGroupResult {
  mode: AdapterMode;
  chunks: CrossGroupChunks;
  n: number;
  exactMatch: number;
  /** Share of the answers' values stated (each question has two), exact or not. */
  partsAnswered: number;
}

/** What {@link evaluateCrossGroup} returns. */
export interface CrossGroupEvaluation {
  questions: number;
  k: number;
  maxTokens: number;
  /** Share of questions whose top `k` chunks hold both facts. */
  bothFactsRetrieved: number;
  /** Share of questions whose top `k` chunks come from two groups. */
  spanningRetrievals: number;
  results: CrossGroupResult[];
  rows: CrossGroupAnswerRow[];
}

/**
 * Draws `generateDemoCorpus({ seed, documents, crossGroup })`, compresses it into a store at
 * `storePath`, and answers each cross-group question under every adapter mode, over the retrieved
 * and over the oracle chunks.
 *
 * @example
 * ```ts ignore
 * const r = await evaluateCrossGroup(trained, { seed: 5, documents: 4, crossGroup: 8, storePath: "/tmp/x.sqlite" });
 * console.log(r.results); // [{ mode: "best", chunks: "retrieved", n: 8, exactMatch: ... }, ...]
 * ```
 */
export async function evaluateCrossGroup(
  trained: TrainedDemo,
  options: CrossGroupOptions,
): Promise<CrossGroupEvaluation> {
  const { model } = trained;
  const corpus = generateDemoCorpus({
    seed: options.seed,
    documents: options.documents,
    crossGroup: options.crossGroup,
    tokensPerDocument: options.tokensPerDocument,
    factsPerDocument: options.factsPerDocument,
  });
  using store = DocumentStore.open(options.storePath);
  await compressDemoDocuments(trained.compressor, store, corpus.documents, { signal: options.signal });
  const cross = corpus.questions.filter((q) => (q.documents?.length ?? 0) > 1);
  const maxTokens = answerTokenBudget(model, cross.map((q) => q.answer));
  const rows: CrossGroupAnswerRow[] = [];
  let both = 0, spanning = 0;
  for (const [i, q] of cross.entries()) {
    options.signal?.throwIfAborted();
    const oracle = oracleChunks(corpus.documents, q, store, (d) => demoChunkSpans(trained.compressor, d));
    const top = store.retrieve(q.question, { k: CROSS_GROUP_K });
    const key = (c: RetrievedChunk) => `${c.source}#${c.ordinal}`;
    if (oracle.every((o) => top.some((c) => key(c) === key(o)))) both++;
    if (new Set(top.map((c) => c.group)).size > 1) spanning++;
    for (const [chunks, context] of [["retrieved", top], ["oracle", oracle]] as const) {
      for (const mode of CROSS_GROUP_MODES) {
        const a = await answerOverChunks(model, context, q.question, {
          maxTokens,
          adapterMode: mode,
          signal: options.signal,
        });
        rows.push({
          mode,
          chunks,
          question: q.question,
          answer: q.answer,
          prediction: a.text,
          exact: exactMatch(a.text, q.answer),
          parts: partsAnswered(a.text, answerParts(q)),
          adapter: a.adapter ?? null,
          context: context.map((c) => ({ source: c.source, ordinal: c.ordinal, group: c.group })),
        });
      }
    }
    options.onProgress?.(i + 1, cross.length);
  }
  const results: CrossGroupResult[] = [];
  for (const chunks of ["retrieved", "oracle"] as const) {
    for (const mode of CROSS_GROUP_MODES) {
      const mine = rows.filter((r) => r.mode === mode && r.chunks === chunks);
      results.push({
        mode,
        chunks,
        n: mine.length,
        exactMatch: mine.filter((r) => r.exact).length / mine.length,
        partsAnswered: mine.reduce((s, r) => s + r.parts, 0) / (2 * mine.length),
      });
    }
  }
  const n = cross.length;
  return {
    questions: n,
    k: CROSS_GROUP_K,
    maxTokens,
    bothFactsRetrieved: n ? both / n : NaN,
    spanningRetrievals: n ? spanning / n : NaN,
    results,
    rows,
  };
}

/**
 * A cross-group answer's two values: the corpus writes them as "X and Y", and no value holds the
 * word "and" (`SLOT_VALUES` in `demo/groups.ts`).
 *
 * @example
 * ```ts
 * import { answerParts } from "./evaluate_cross.ts";
 * console.log(answerParts({ answer: "wax and seventy" })); // ["wax", "seventy"]
 * ```
 */
export function answerParts(q: Pick<DemoQuestion, "answer">): string[] {
  return q.answer.split(" and ");
}

/**
 * The chunks holding a cross-group question's two facts, in the answer's order (each with a unit
 * score, so a composition weighs both groups alike). The entity is the one both documents state a
 * fact about whose name the question carries.
 */
function oracleChunks(
  documents: readonly DemoDocument[],
  q: DemoQuestion,
  store: DocumentStore,
  spansOf: (doc: DemoDocument) => [number, number][],
): RetrievedChunk[] {
  const docs = q.documents!.map((f) => documents.find((d) => d.file === f)!);
  const words = new Set(q.question.replace(/[?,.]/g, " ").split(/\s+/));
  const entity = docs[0].facts.map((f) => f.entity).find((e) =>
    words.has(e) && docs[1].facts.some((f) => f.entity === e)
  )!;
  return docs.map((doc) => {
    const fact = doc.facts.find((f) => f.entity === entity)!;
    const { ordinal } = factChunk(doc, fact, spansOf(doc));
    const [chunk] = store.getChunks([store.getDocument(doc.file)!.chunkIds[ordinal]]);
    return { ...chunk, score: 1 };
  });
}

/**
 * The demo model's evaluation on held-out documents, shared by `bench/demo_qa.ts`, `deno task demo`
 * and the recipe's final check: the same trained model answers every question of a corpus drawn with
 * a seed nobody trained on, given different context (the table), with greedy decoding.
 *
 * Text prompts are `[<s> | context ids | question ids]`, the prompt part of the recipe's text QA
 * examples (`textQaExample`); compressed prompts are `[summary vectors | <s> question]` through
 * `answerFromChunks`, as the recipe's compressed QA examples. The store holds every held-out
 * document cut and compressed as the recipe cut its training chunks.
 *
 * @module
 */

import { join } from "node:path";
import type { CacheOptions } from "../src/lococo.ts";
import type { Kvfold } from "../src/engine.ts";
import { DocumentStore } from "../src/store.ts";
import type { RetrievedChunk } from "../src/store_records.ts";
import type { ChunkBreak } from "../src/chunk_spans.ts";
import { exactMatch } from "./answers.ts";
import { generateDemoCorpus } from "./corpus.ts";
import { SEGMENT_TOKENS } from "./recipe_shape.ts";
import {
  type Answered,
  answerOverChunks,
  answerTokenBudget,
  factChunk,
  generateFrom,
  textPrompt,
} from "./evaluate_paths.ts";
import {
  compressDemoDocuments,
  demoChunkSpans,
  loadTrainedDemo,
  storeChunking,
  type TrainedDemo,
  trainedSegmentTokens,
} from "./trained.ts";
import { type CrossGroupEvaluation, evaluateCrossGroup } from "./evaluate_cross.ts";

export { answerOverChunks, answerTokenBudget, factChunk, textPrompt } from "./evaluate_paths.ts";

/** KV slots of the bounded caches (LoCoCo, H2O, StreamingLLM): M. */
export const CACHE_SLOTS = 512;
/** StreamingLLM's attention sinks (the rest of M is its window). */
export const STREAMING_SINKS = 4;

/** The context conditions, in table order. */
export const DEMO_CONDITIONS = [
  "none",
  "full",
  "lloco",
  "lloco-oracle",
  "truncated-document",
  "truncated-chunk",
  "chunk-text",
  "lococo",
  "h2o",
  "streaming",
] as const;
/** One context condition; see {@link CONDITION_LABELS}. */
export type DemoCondition = typeof DEMO_CONDITIONS[number];

/** What each condition gives the model, as the tables print it. */
export const CONDITION_LABELS: Readonly<Record<DemoCondition, string>> = {
  "none": "none (question only)",
  "full": "the full document text",
  "lloco": "LLoCO: summary vectors of the retrieved chunk (BM25, k = 1)",
  "lloco-oracle": "LLoCO: summary vectors of the fact's chunk (oracle retrieval)",
  "truncated-document": "document text truncated to the vectors' positions",
  "truncated-chunk": "retrieved chunk's text truncated to the vectors' positions",
  "chunk-text": "retrieved chunk's full text (what the vectors compress)",
  "lococo": `full text, LoCoCo cache (calibrated heads, M = ${CACHE_SLOTS})`,
  "h2o": `full text, H2O cache (M = ${CACHE_SLOTS})`,
  "streaming": `full text, StreamingLLM cache (${STREAMING_SINKS} sinks + ${CACHE_SLOTS - STREAMING_SINKS})`,
};

/** Options of {@link evaluateDemo}. */
export interface EvaluateDemoOptions {
  /** The trained folder (`model/`, `adapters/<group>/`, `lococo.safetensors`). */
  trainedDir: string;
  /** Seed of the held-out corpus (one the recipe did not train on). */
  seed: number;
  /** Held-out documents. */
  documents: number;
  /** Conditions to run, default all ({@link DEMO_CONDITIONS}). */
  conditions?: readonly DemoCondition[];
  /** Cross-group questions over a second corpus of the same seed and size (default 0: none). */
  crossGroup?: number;
  /** Most questions per document, taken in order (default all). */
  questionsPerDocument?: number;
  /** Document length in tokens (default the corpus's, 3000). */
  tokensPerDocument?: number;
  /** Facts (and questions) per document (default the corpus's, 16). */
  factsPerDocument?: number;
  onProgress?: (progress: DemoEvaluationProgress) => void;
  signal?: AbortSignal;
}

/** Progress: compressing the held-out documents, then answering (one step per question). */
export interface DemoEvaluationProgress {
  phase: "compress" | "answer" | "cross-group";
  done: number;
  total: number;
}

/** One answer of one condition. */
export interface DemoAnswerRow {
  condition: DemoCondition;
  /** The document file that answers it. */
  document: string;
  group: string;
  question: string;
  answer: string;
  prediction: string;
  exact: boolean;
  /** Positions of context before the question: tokens of text, or summary vectors. */
  contextPositions: number;
  /** Positions prefilled: context, `<s>` and the question. */
  promptPositions: number;
  generatedTokens: number;
  /** Most KV slots per layer in use at once. */
  kvSlotsPeak: number;
  prefillMs: number;
  decodeMs: number;
  /** LLoCO conditions: the chunk the vectors came from, and whether it holds the fact's value. */
  chunk?: { source: string; ordinal: number; holdsFact: boolean };
  /** LLoCO conditions: the adapter that decoded (kvfold's group rule), null: the base model. */
  adapter?: string | null;
}

/** One condition's summary. */
export interface DemoConditionResult {
  condition: DemoCondition;
  label: string;
  /** Questions answered. */
  n: number;
  /** Share answered exactly (`exactMatch` of `demo/answers.ts`). */
  exactMatch: number;
  /** Mean positions of context before the question. */
  meanContextPositions: number;
  /** Mean positions prefilled (context and prompt). */
  meanPromptPositions: number;
  /** Mean of the peak KV-cache bytes of an answer (keys and values of every layer, f32). */
  meanKvBytes: number;
  /** Decode speed over the condition: generated tokens / decode seconds. */
  decodeTokensPerSecond: number;
  /** Prefill speed over the condition: prefilled positions / prefill seconds. */
  prefillPositionsPerSecond: number;
  /** Mean milliseconds to prefill an answer's prompt (LLoCO: after the vectors' own prefill). */
  meanPrefillMs: number;
}

/** What {@link evaluateDemo} returns. */
export interface DemoEvaluation {
  trainedDir: string;
  seed: number;
  documents: number;
  questions: number;
  /** Tokens the greedy decoder may generate per answer: just above the longest answer and `</s>`. */
  maxTokens: number;
  /** The store: tokens in, vectors out, and tokens per chunk / per segment. */
  store: { tokens: number; vectors: number; chunkTokens: number; breakAt: ChunkBreak; segmentLength: number };
  /** Share of questions whose top BM25 chunk holds the fact's value (when a LLoCO condition ran). */
  retrievalAccuracy: number | null;
  /** Questions whose fact sentence straddles two chunks. */
  factsSplitAcrossChunks: number;
  /** KV bytes of one slot (keys and values, every layer, f32). */
  kvBytesPerSlot: number;
  conditions: DemoConditionResult[];
  rows: DemoAnswerRow[];
  crossGroup: CrossGroupEvaluation | null;
  seconds: number;
}

/**
 * A condition's summary from its answers: exact match, mean positions and KV bytes, and speed
 * (generated tokens over decode seconds; prefilled positions over prefill seconds).
 *
 * @example
 * ```ts ignore
 * const full = summarizeCondition("full", rows.filter((r) => r.condition === "full"), 2048);
 * ```
 */
export function summarizeCondition(
  condition: DemoCondition,
  rows: readonly DemoAnswerRow[],
  kvBytesPerSlot: number,
): DemoConditionResult {
  const n = rows.length;
  const sum = (f: (r: DemoAnswerRow) => number) => rows.reduce((s, r) => s + f(r), 0);
  return {
    condition,
    label: CONDITION_LABELS[condition],
    n,
    exactMatch: n ? sum((r) => +r.exact) / n : NaN,
    meanContextPositions: n ? sum((r) => r.contextPositions) / n : NaN,
    meanPromptPositions: n ? sum((r) => r.promptPositions) / n : NaN,
    meanKvBytes: n ? sum((r) => r.kvSlotsPeak) * kvBytesPerSlot / n : NaN,
    decodeTokensPerSecond: sum((r) => r.generatedTokens) / (sum((r) => r.decodeMs) / 1000),
    prefillPositionsPerSecond: sum((r) => r.promptPositions) / (sum((r) => r.prefillMs) / 1000),
    meanPrefillMs: n ? sum((r) => r.prefillMs) / n : NaN,
  };
}

/** The bounded cache of a condition, or undefined for the full cache. */
function cacheOf(condition: DemoCondition, trained: TrainedDemo): CacheOptions | undefined {
  switch (condition) {
    case "lococo":
      return { kind: "lococo", heads: trained.lococoHeads!, slots: CACHE_SLOTS };
    case "h2o":
      return { kind: "h2o", slots: CACHE_SLOTS, segment: SEGMENT_TOKENS };
    case "streaming":
      return {
        kind: "streaming",
        sinks: STREAMING_SINKS,
        window: CACHE_SLOTS - STREAMING_SINKS,
        segment: SEGMENT_TOKENS,
      };
    default:
      return undefined;
  }
}

/**
 * Evaluates the trained demo model on a held-out corpus (`generateDemoCorpus({ seed, documents })`)
 * under each context condition, greedy, and returns exact match, positions, KV memory and speed per
 * condition with every answer. With `crossGroup`, also the cross-group questions of a second corpus
 * of the same seed: best-group adapter vs composed adapters vs none ({@link evaluateCrossGroup}).
 *
 * @example
 * ```ts ignore
 * await using kv = await Kvfold.open();
 * const r = await evaluateDemo(kv, { trainedDir: "demo/trained", seed: 1234, documents: 8 });
 * for (const c of r.conditions) console.log(c.label, c.exactMatch);
 * ```
 */
export async function evaluateDemo(kv: Kvfold, options: EvaluateDemoOptions): Promise<DemoEvaluation> {
  const t0 = performance.now();
  const conditions = options.conditions ?? DEMO_CONDITIONS;
  for (const c of conditions) {
    if (!DEMO_CONDITIONS.includes(c)) {
      throw new RangeError(`Cannot evaluate the demo: "${c}" is not one of ${DEMO_CONDITIONS.join(", ")}`);
    }
  }
  const { signal, onProgress } = options;
  const shape = { tokensPerDocument: options.tokensPerDocument, factsPerDocument: options.factsPerDocument };
  const corpus = generateDemoCorpus({ seed: options.seed, documents: options.documents, ...shape });
  using trained = await loadTrainedDemo(kv, options.trainedDir, { lococo: conditions.includes("lococo") });
  const { model } = trained;
  const { layers, kvHeads, headDim } = model.info;
  const segmentTokens = trainedSegmentTokens(trained.compressor);
  const chunking = storeChunking(trained.compressor);
  const kvBytesPerSlot = 2 * layers * kvHeads * headDim * 4;
  const tmp = await Deno.makeTempDir({ prefix: "kvfold-demo-eval-" });
  try {
    using store = DocumentStore.open(join(tmp, "heldout.sqlite"));
    const compressed = await compressDemoDocuments(trained.compressor, store, corpus.documents, {
      signal,
      onProgress: (done, total) => onProgress?.({ phase: "compress", done, total }),
    });
    const chunkIds = new Map(corpus.documents.map((d) => [d.file, store.getDocument(d.file)!.chunkIds]));
    const limit = options.questionsPerDocument ?? Infinity;
    const items = corpus.documents.flatMap((doc) =>
      doc.questions.slice(0, limit).map((q, i) => ({ doc, q, fact: doc.facts[i] }))
    );
    const maxTokens = answerTokenBudget(model, items.map((it) => it.q.answer));
    // Ids as the store's chunks were cut from: the document's text through the model's tokenizer.
    const docIds = new Map(corpus.documents.map((d) => [d.file, model.tokenizer.encode(d.text)]));
    const spans = new Map(corpus.documents.map((d) => [d.file, demoChunkSpans(trained.compressor, d)]));
    const chunkIdsOf = (c: RetrievedChunk) => docIds.get(c.source)!.slice(...spans.get(c.source)![c.ordinal]);
    const rows: DemoAnswerRow[] = [];
    let retrieved = 0, split = 0;
    const wantsChunk = conditions.some((c) => c === "lloco" || c.endsWith("-chunk") || c === "chunk-text");
    for (const [index, { doc, q, fact }] of items.entries()) {
      signal?.throwIfAborted();
      const ids = docIds.get(doc.file)!;
      const where = factChunk(doc, fact, spans.get(doc.file)!);
      if (where.split) split++;
      const top = wantsChunk ? store.retrieve(q.question, { k: 1 }) : [];
      const holds = (c: RetrievedChunk) => c.source === doc.file && c.ordinal === where.ordinal;
      if (top.length > 0 && holds(top[0])) retrieved++;
      // The vectors' positions for one chunk: what the truncated conditions get.
      const budget = top[0]?.vectors.rows ?? trained.compressor.summaryLength;
      for (const condition of conditions) {
        let answered: Answered;
        let context = 0;
        let chunk: RetrievedChunk | undefined;
        if (condition === "lloco" || condition === "lloco-oracle") {
          chunk = condition === "lloco"
            ? top[0]
            : store.getChunks([chunkIds.get(doc.file)![where.ordinal]])[0];
          answered = await answerOverChunks(model, chunk ? [chunk] : [], q.question, { maxTokens, signal });
          context = answered.prefixPositions;
        } else {
          const ctx = condition === "none"
            ? []
            : condition === "truncated-document"
            ? ids.slice(0, budget)
            : condition === "truncated-chunk"
            ? (top[0] ? chunkIdsOf(top[0]).slice(0, budget) : [])
            : condition === "chunk-text"
            ? (top[0] ? chunkIdsOf(top[0]) : [])
            : ids;
          context = ctx.length;
          answered = await generateFrom(
            model,
            textPrompt(model, ctx, q.question),
            maxTokens,
            cacheOf(condition, trained),
            signal,
          );
        }
        rows.push({
          condition,
          document: doc.file,
          group: doc.group,
          question: q.question,
          answer: q.answer,
          prediction: answered.text,
          exact: exactMatch(answered.text, q.answer),
          contextPositions: context,
          promptPositions: answered.prefixPositions + answered.stats.promptTokens,
          generatedTokens: answered.stats.generatedTokens,
          kvSlotsPeak: answered.kvSlotsPeak,
          prefillMs: answered.stats.prefillMs,
          decodeMs: answered.stats.decodeMs,
          ...(chunk
            ? { chunk: { source: chunk.source, ordinal: chunk.ordinal, holdsFact: holds(chunk) } }
            : {}),
          ...(answered.adapter !== undefined ? { adapter: answered.adapter } : {}),
        });
      }
      onProgress?.({ phase: "answer", done: index + 1, total: items.length });
    }
    const crossGroup = (options.crossGroup ?? 0) > 0
      ? await evaluateCrossGroup(trained, {
        seed: options.seed,
        documents: options.documents,
        crossGroup: options.crossGroup!,
        ...shape,
        storePath: join(tmp, "cross.sqlite"),
        signal,
        onProgress: (done, total) => onProgress?.({ phase: "cross-group", done, total }),
      })
      : null;
    return {
      trainedDir: options.trainedDir,
      seed: options.seed,
      documents: options.documents,
      questions: items.length,
      maxTokens,
      store: {
        ...compressed,
        ...chunking,
        segmentLength: segmentTokens,
      },
      retrievalAccuracy: wantsChunk ? retrieved / items.length : null,
      factsSplitAcrossChunks: split,
      kvBytesPerSlot,
      conditions: conditions.map((c) =>
        summarizeCondition(c, rows.filter((r) => r.condition === c), kvBytesPerSlot)
      ),
      rows,
      crossGroup,
      seconds: (performance.now() - t0) / 1000,
    };
  } finally {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
}

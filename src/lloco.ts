/**
 * The LLoCO pipeline on top of the pieces: compress documents chunk by chunk into the store, and
 * answer a question from the retrieved chunks' summary vectors placed before the prompt.
 *
 * @module
 */

import type { CacheOptions } from "./lococo.ts";
import type { Compressor } from "./compressor.ts";
import { KvfoldError } from "./errors.ts";
import type { Model } from "./model.ts";
import type { GenerateOptions, GenerationStats } from "./session.ts";
import { concatVectors, type DocumentStore, type RetrievedChunk } from "./store.ts";

/** A document to compress. */
export interface SourceDocument {
  /** Unique name (a path or URL). */
  source: string;
  text: string;
  /** Adapter group (the LoRA that will decode it). */
  group?: string;
  metadata?: Record<string, unknown>;
}

/** Options of {@link compressIntoStore}. */
export interface CompressIntoStoreOptions {
  /** Tokens per chunk; each chunk is compressed and retrieved on its own. Default 1536. */
  chunkTokens?: number;
  /** Tokens per compressor segment; default = chunkTokens. */
  segmentLength?: number;
  /** Replace a document already stored under the same source. */
  replace?: boolean;
  signal?: AbortSignal;
  /** Called with (tokensDone, tokensTotal) of this document. */
  onProgress?: (done: number, total: number) => void;
}

/**
 * Splits a document into chunks of `chunkTokens` tokens, compresses each, and commits the document
 * with all its chunks in one transaction (an interrupted run leaves no half-written document).
 * Returns the document's id, its stored chunk ids in order (for `store.getChunks`), the tokens that
 * went in and the summary vectors that came out.
 *
 * @example
 * ```ts ignore
 * const r = await compressIntoStore(compressor, store, { source: "report.txt", text, group: "finance" });
 * const chunks = store.getChunks(r.chunkIds); // chunk 0 first
 * ```
 */
export async function compressIntoStore(
  compressor: Compressor,
  store: DocumentStore,
  doc: SourceDocument,
  options: CompressIntoStoreOptions = {},
): Promise<{ documentId: number; chunkIds: number[]; tokens: number; vectors: number }> {
  const tok = compressor.model.tokenizer;
  const ids = tok.encode(doc.text);
  if (ids.length === 0) {
    throw new KvfoldError("INVALID_ARGUMENT", `Cannot compress ${doc.source}: the document is empty`);
  }
  const chunkTokens = options.chunkTokens ?? 1536;
  if (!Number.isInteger(chunkTokens) || chunkTokens < 1) {
    throw new RangeError(`Cannot compress: chunkTokens ${chunkTokens} is not a positive integer`);
  }
  const chunks = [];
  for (let off = 0; off < ids.length; off += chunkTokens) {
    const part = ids.slice(off, off + chunkTokens);
    const summary = await compressor.compress(part, {
      segmentLength: options.segmentLength ?? chunkTokens,
      signal: options.signal,
      onProgress: (d) => options.onProgress?.(off + d, ids.length),
    });
    chunks.push({ text: tok.decode(part), tokens: part.length, vectors: summary });
  }
  const documentId = store.addDocument(
    { source: doc.source, group: doc.group, metadata: doc.metadata, chunks },
    { replace: options.replace },
  );
  // Read back at once on the same connection: only another process replacing the source in between
  // could make this differ.
  const stored = store.getDocument(doc.source);
  if (stored === undefined || stored.documentId !== documentId) {
    throw new KvfoldError(
      "INVALID_STATE",
      `Cannot compress ${doc.source}: another connection replaced or removed it as it was stored`,
    );
  }
  return {
    documentId,
    chunkIds: stored.chunkIds,
    tokens: ids.length,
    vectors: chunks.reduce((n, c) => n + c.vectors.rows, 0),
  };
}

/** Options of {@link answerFromChunks}. */
export interface AnswerOptions extends GenerateOptions {
  /** Wrap the question in the model's chat template (default: when it has one). */
  chat?: boolean;
  /**
   * The LoRA that decodes (prefix and prompt alike). Absent: the adapter registered in
   * `model.adapters` under the first chunk's group, if any, else the base model. `null`: base model.
   */
  adapter?: GenerateOptions["adapter"];
  /** How the answering session keeps its KV cache (default full). */
  cache?: CacheOptions;
}

/**
 * The adapter {@link answerFromChunks} decodes with: the explicit one, else the first chunk's
 * group when `model.adapters` knows that name, else none.
 */
export function adapterForChunks(
  model: Model,
  chunks: readonly RetrievedChunk[],
  explicit?: GenerateOptions["adapter"],
): GenerateOptions["adapter"] {
  if (explicit !== undefined) return explicit;
  const group = chunks.find((c) => c.group)?.group;
  if (!group) return null;
  return model.adapters.list().some((e) => e.name === group) ? group : null;
}

/**
 * Streams an answer to `question` with the chunks' summary vectors as the prefix: positions
 * 0..K-1 hold the vectors (in the given order), the prompt follows from K. Counters land in
 * `onStats` with the number of prefix positions.
 *
 * @example
 * ```ts ignore
 * const chunks = store.retrieve("What was the revenue?", { k: 2 });
 * for await (const piece of answerFromChunks(model, chunks, "What was the revenue?")) console.log(piece);
 * ```
 */
export async function* answerFromChunks(
  model: Model,
  chunks: readonly RetrievedChunk[],
  question: string,
  options: AnswerOptions & {
    /** Counters, the prefix length and the adapter used (its registry name, or null). */
    onStats?: (stats: GenerationStats & { prefixPositions: number; adapter: string | null }) => void;
  } = {},
): AsyncGenerator<string, void, undefined> {
  const H = model.info.hiddenSize;
  const rows = chunks.reduce((n, c) => n + c.vectors.rows, 0);
  for (const c of chunks) {
    if (c.vectors.hidden !== H) {
      throw new KvfoldError(
        "INVALID_ARGUMENT",
        `Cannot answer: chunk ${c.chunkId} was compressed to ${c.vectors.hidden} dimensions, the model has ${H}`,
      );
    }
  }
  const chat = options.chat ?? model.tokenizer.hasChatTemplate;
  const prompt = model.encodePrompt(question, { chat });
  const full = (options.cache?.kind ?? "full") === "full";
  using session = model.session({
    contextSize: full ? rows + prompt.length + (options.maxTokens ?? 256) + 1 : 0,
    cache: options.cache,
  });
  const adapter = adapterForChunks(model, chunks, options.adapter);
  await session.setAdapter(adapter ?? null);
  if (rows > 0) {
    await session.prefillEmbeddings(concatVectors(chunks.map((c) => c.vectors)).data, {
      signal: options.signal,
    });
  }
  yield* session.generate({ ...options, adapter: undefined, prompt });
  options.onStats?.({ ...session.lastStats!, prefixPositions: rows, adapter: session.adapter?.name ?? null });
}

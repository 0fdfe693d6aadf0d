/**
 * {@linkcode KvfoldDocumentCompressor}: compresses documents any retriever found into a kvfold store
 * (once per content), for `ContextualCompressionRetriever`.
 *
 * @module
 */

import {
  asStore,
  type ChunkBreak,
  chunkTexts,
  compressIntoStore,
  type Compressor,
  KvfoldError,
  type RetrievedChunk,
  type StoreLike,
} from "../../mod.ts";
import {
  BaseDocumentCompressor,
  type Callbacks,
  dispatchCustomEvent,
  Document,
  type DocumentInterface,
} from "./_deps.ts";
import { kvfoldPayloadOf, payloadRef } from "./payload.ts";
import { rememberPayloadText } from "../_payload_text.ts";
import { checkCompressorOption, checkStoreOption } from "../_model_option.ts";

/** What one document cost or saved; passed to `onCompressed` and dispatched as a custom event. */
export interface KvfoldCompressionReport {
  /** The key the document is stored under (see `sourceOf`). */
  storeSource: string;
  /** The store's document id. */
  documentId: number;
  /** Tokens of text that went in. */
  tokens: number;
  /** Summary vectors that came out. */
  vectors: number;
  /** True when the vectors were already in the store and nothing was compressed. */
  cached: boolean;
}

/** Running totals of a {@linkcode KvfoldDocumentCompressor}. */
export interface KvfoldCompressionStats {
  /** Documents compressed into the store. */
  compressed: number;
  /** Documents whose vectors were already stored. */
  reused: number;
  /** Tokens compressed. */
  tokensIn: number;
  /** Vectors produced by those compressions. */
  vectorsOut: number;
}

/** Fields of {@linkcode KvfoldDocumentCompressor}. */
export interface KvfoldDocumentCompressorInput {
  /** The AutoCompressor that turns text into summary vectors. */
  compressor: Compressor;
  /** Where compressed documents are kept (and found again). */
  store: StoreLike;
  /** Adapter group of documents whose `metadata.group` is not a string. */
  group?: string;
  /** Tokens per stored chunk (at most, with `breakAt: "sentence"`); default 1536. */
  chunkTokens?: number;
  /** Where stored chunks end: every `chunkTokens` tokens (default) or at a sentence end. */
  breakAt?: ChunkBreak;
  /**
   * Tokens per compressor segment; default the compressor's own (`Compressor.segmentLength`), else
   * `chunkTokens`.
   */
  segmentLength?: number;
  /**
   * The store key of a document. Default: `${metadata.source ?? "text"}#` followed by 16 hex digits
   * of the SHA-256 of group and text, so chunks a splitter cut from one file (all with the same
   * `metadata.source`) stay apart and a changed text never reuses stale vectors. A custom key whose
   * stored text differs from the document's is recompressed and replaced.
   */
  sourceOf?: (document: DocumentInterface, group: string | undefined) => string | Promise<string>;
  /** Attach the vectors to the returned documents in memory (default true). */
  attachVectors?: boolean;
  /** Cancels compression. */
  signal?: AbortSignal;
  /** Called once per document with what it cost (or saved). */
  onCompressed?: (report: KvfoldCompressionReport) => void;
}

/** A letter or digit: what the store's BM25 index keeps of a text. */
const INDEXABLE = /[\p{L}\p{N}]/u;

/**
 * The custom event name each {@linkcode KvfoldCompressionReport} is dispatched under.
 *
 * @example
 * ```ts ignore
 * for await (const event of retriever.streamEvents(question, { version: "v2" })) {
 *   if (event.event === "on_custom_event" && event.name === KVFOLD_COMPRESSION_EVENT) console.log(event.data);
 * }
 * ```
 */
export const KVFOLD_COMPRESSION_EVENT = "kvfold_compression";

/**
 * A LangChain document compressor that turns the documents another retriever found into kvfold
 * compressed payloads. Each document not yet in the store is compressed with `compressIntoStore`
 * (source: see `sourceOf`; group: `metadata.group` or the `group` option); documents already there
 * are reused, so a second call compresses nothing. Returned documents keep their `pageContent` and
 * metadata and gain `metadata.kvfold` (a {@linkcode KvfoldPayloadRef} with `tokens` in and `rows`
 * out). Documents that already carry a payload pass through; documents with no tokens pass through
 * unchanged (a chat model reads them as text).
 *
 * Each document's {@linkcode KvfoldCompressionReport} goes to `onCompressed`, is dispatched as the
 * custom event {@linkcode KVFOLD_COMPRESSION_EVENT} (visible in `streamEvents`), and is added to
 * `stats`.
 *
 * @example
 * ```ts ignore
 * import { ContextualCompressionRetriever } from "npm:@langchain/classic@1.0.50/retrievers/contextual_compression";
 * import { Compressor, DocumentStore, Kvfold } from "../../mod.ts";
 * import { KvfoldDocumentCompressor } from "./mod.ts";
 *
 * using kv = await Kvfold.open();
 * using compressor = await Compressor.load(kv, "./models/lloco");
 * using store = DocumentStore.open("cache.sqlite");
 * const retriever = new ContextualCompressionRetriever({
 *   baseRetriever: vectorStore.asRetriever(4),
 *   baseCompressor: new KvfoldDocumentCompressor({ compressor, store, group: "papers" }),
 * });
 * const docs = await retriever.invoke("What limits the KV cache?");
 * console.log(docs.map((d) => `${d.metadata.kvfold.tokens} tokens -> ${d.metadata.kvfold.rows} vectors`));
 * ```
 */
export class KvfoldDocumentCompressor extends BaseDocumentCompressor {
  /** The compressor used. */
  readonly compressor: Compressor;
  /** The store written to. */
  readonly store: StoreLike;
  /** Default adapter group. */
  readonly group?: string;
  readonly #options: KvfoldDocumentCompressorInput;
  readonly #stats: KvfoldCompressionStats = { compressed: 0, reused: 0, tokensIn: 0, vectorsOut: 0 };
  /** Chunk ids by store key, for documents this instance stored or found. */
  readonly #known = new Map<string, number[]>();
  /** Compressions under way, by store key, so concurrent calls compress a document once. */
  readonly #pending = new Map<string, Promise<{ chunks: RetrievedChunk[]; cached: boolean }>>();

  /**
   * Compresses with `fields.compressor` into `fields.store`; throws `TypeError` when `fields` is not
   * `{ compressor, store }` with a loaded `Compressor` and an open `DocumentStore`.
   */
  constructor(fields: KvfoldDocumentCompressorInput) {
    checkCompressorOption("KvfoldDocumentCompressor", fields);
    checkStoreOption("KvfoldDocumentCompressor", fields, true);
    super();
    this.compressor = fields.compressor;
    this.store = fields.store;
    this.group = fields.group;
    this.#options = fields;
  }

  /** Running totals since construction. */
  get stats(): KvfoldCompressionStats {
    return { ...this.#stats };
  }

  /** Compresses (or finds) every document; LangChain calls this from `ContextualCompressionRetriever`. */
  override async compressDocuments(
    documents: DocumentInterface[],
    _query: string,
    callbacks?: Callbacks,
  ): Promise<DocumentInterface[]> {
    const out: DocumentInterface[] = [];
    for (const doc of documents) {
      if (kvfoldPayloadOf(doc) !== undefined) {
        out.push(doc);
        continue;
      }
      const group = typeof doc.metadata?.group === "string" ? doc.metadata.group : this.group;
      const chunkTexts = this.#chunkTexts(doc.pageContent);
      // No tokens, or a chunk without a word the store can index (retrieve by): stays text.
      if (chunkTexts.length === 0 || !chunkTexts.every((t) => INDEXABLE.test(t))) {
        out.push(doc);
        continue;
      }
      const key = await (this.#options.sourceOf ?? defaultSourceOf)(doc, group);
      let pending = this.#pending.get(key);
      if (pending === undefined) {
        pending = this.#chunksFor(key, doc, chunkTexts, group);
        this.#pending.set(key, pending);
        pending.finally(() => this.#pending.delete(key)).catch(() => {});
      }
      const { chunks, cached } = await pending;
      const report: KvfoldCompressionReport = {
        storeSource: key,
        documentId: chunks[0].documentId,
        tokens: chunks.reduce((n, c) => n + c.tokens, 0),
        vectors: chunks.reduce((n, c) => n + c.vectors.rows, 0),
        cached,
      };
      this.#options.onCompressed?.(report);
      await dispatchCustomEvent(KVFOLD_COMPRESSION_EVENT, report, { callbacks });
      rememberPayloadText(doc.pageContent, chunks);
      out.push(
        new Document({
          id: doc.id,
          pageContent: doc.pageContent,
          metadata: {
            ...doc.metadata,
            kvfold: payloadRef(chunks, { attach: this.#options.attachVectors ?? true }),
          },
        }),
      );
    }
    return out;
  }

  /** The stored chunks of a document: reused when present with the same text, else compressed. */
  async #chunksFor(
    key: string,
    doc: DocumentInterface,
    chunkTexts: readonly string[],
    group: string | undefined,
  ): Promise<{ chunks: RetrievedChunk[]; cached: boolean }> {
    const known = this.#known.get(key);
    let chunks: RetrievedChunk[] | undefined;
    if (known !== undefined) {
      try {
        chunks = await asStore(this.store).getChunks(known);
      } catch (e) {
        if (!(e instanceof KvfoldError && e.code === "INVALID_ARGUMENT")) throw e;
        // Removed from the store since: compress again.
      }
    } else {
      const stored = await asStore(this.store).getDocument(key);
      // A document stored under another group (possible with a custom `sourceOf`) is recompressed.
      if (stored !== undefined && (group === undefined || stored.group === group)) {
        chunks = await asStore(this.store).getChunks(stored.chunkIds);
      }
    }
    const same = chunks !== undefined && chunks.length === chunkTexts.length &&
      chunks.every((c, i) => c.source === key && c.text === chunkTexts[i]);
    if (same) {
      this.#known.set(key, chunks!.map((c) => c.chunkId));
      this.#stats.reused++;
      return { chunks: chunks!, cached: true };
    }
    const r = await compressIntoStore(this.compressor, this.store, {
      source: key,
      text: doc.pageContent,
      group,
      metadata: jsonSafe(doc.metadata),
    }, {
      chunkTokens: this.#options.chunkTokens,
      breakAt: this.#options.breakAt,
      segmentLength: this.#options.segmentLength,
      replace: true,
      signal: this.#options.signal,
    });
    chunks = await asStore(this.store).getChunks(r.chunkIds);
    this.#known.set(key, r.chunkIds);
    this.#stats.compressed++;
    this.#stats.tokensIn += r.tokens;
    this.#stats.vectorsOut += r.vectors;
    return { chunks, cached: false };
  }

  /** The chunk texts `compressIntoStore` stores for this text (same split, same decode). */
  #chunkTexts(text: string): string[] {
    const { chunkTokens, breakAt } = this.#options;
    return chunkTexts(this.compressor.model.tokenizer, text, { chunkTokens, breakAt });
  }
}

async function defaultSourceOf(doc: DocumentInterface, group: string | undefined): Promise<string> {
  const base = typeof doc.metadata?.source === "string" && doc.metadata.source !== ""
    ? doc.metadata.source
    : "text";
  const bytes = new TextEncoder().encode(`${group ?? ""}\u0000${doc.pageContent}`);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  const hex = Array.from(digest.subarray(0, 8), (b) => b.toString(16).padStart(2, "0")).join("");
  return `${base}#${hex}`;
}

/** The metadata as the store can keep it (JSON), dropping what does not survive JSON. */
function jsonSafe(metadata: Record<string, unknown> | undefined): Record<string, unknown> | undefined {
  if (metadata === undefined) return undefined;
  try {
    return JSON.parse(JSON.stringify(metadata));
  } catch {
    return undefined; // cyclic or BigInt: keep none rather than fail the compression
  }
}

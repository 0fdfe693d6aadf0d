/**
 * {@linkcode KvfoldRetriever}: a LangChain retriever over a kvfold store's built-in BM25 index.
 *
 * @module
 */

import { asStore, type RetrievedChunk, type StoreLike } from "../../mod.ts";
import { BaseRetriever, type BaseRetrieverInput, Document, type DocumentInterface } from "./_deps.ts";
import { payloadRef } from "./payload.ts";
import { rememberPayloadText } from "../_payload_text.ts";
import { checkStoreOption } from "../_model_option.ts";

/** Fields of {@linkcode KvfoldRetriever}. */
export interface KvfoldRetrieverInput extends BaseRetrieverInput {
  /** The store to search. */
  store: StoreLike;
  /** Chunks to return; default 4. */
  k?: number;
  /** Only chunks of documents in this adapter group. */
  group?: string;
  /**
   * Attach the chunks' vectors to the documents in memory (default true), so a chat model uses them
   * without reading the store again; false keeps only the reference.
   */
  attachVectors?: boolean;
}

/**
 * A retriever over a kvfold {@linkcode DocumentStore}: `store.retrieve` (BM25) hits become
 * `Document`s, best first, whose `pageContent` is the chunk text and whose `metadata` holds the
 * stored document's metadata plus `source`, `chunkId`, `ordinal`, `score`, `group` and `kvfold` (a
 * {@linkcode KvfoldPayloadRef}). Pass them to {@linkcode ChatKvfold} as `documents` and their summary
 * vectors become the prompt's prefix.
 *
 * @example
 * ```ts ignore
 * import { DocumentStore } from "../../mod.ts";
 * import { KvfoldRetriever } from "./mod.ts";
 * using store = DocumentStore.open("kb.sqlite");
 * const retriever = new KvfoldRetriever({ store, k: 2 });
 * for (const doc of await retriever.invoke("which ship left the harbour")) {
 *   console.log(doc.metadata.source, doc.metadata.score, doc.metadata.kvfold.rows);
 * }
 * ```
 */
export class KvfoldRetriever extends BaseRetriever {
  /** The LangChain class name. */
  static override lc_name(): string {
    return "KvfoldRetriever";
  }
  lc_namespace: string[] = ["kvfold", "retrievers"];
  /** The store searched. */
  readonly store: StoreLike;
  /** Chunks returned per query. */
  readonly k: number;
  /** The adapter group searched, or all. */
  readonly group?: string;
  readonly #attachVectors: boolean;

  /**
   * Searches `fields.store`; throws `TypeError` when `fields` is not `{ store }` with an open
   * `DocumentStore` (a path string, a bare store) and `RangeError` when `k` is not a positive integer.
   */
  constructor(fields: KvfoldRetrieverInput) {
    checkStoreOption("KvfoldRetriever", fields, true);
    super(fields);
    const k = fields.k ?? 4;
    if (!Number.isSafeInteger(k) || k < 1) {
      throw new RangeError(`Cannot create KvfoldRetriever: k ${k} is not a positive integer`);
    }
    this.store = fields.store;
    this.k = k;
    this.group = fields.group;
    this.#attachVectors = fields.attachVectors ?? true;
  }

  /** Runs the BM25 search; LangChain calls this from `invoke`. */
  override async _getRelevantDocuments(query: string): Promise<DocumentInterface[]> {
    const hits = await asStore(this.store).retrieve(query, { k: this.k, group: this.group });
    return hits.map((hit) => chunkDocument(hit, this.#attachVectors));
  }
}

/** One retrieved chunk as a LangChain document. */
function chunkDocument(chunk: RetrievedChunk, attach: boolean): Document {
  rememberPayloadText(chunk.text, [chunk]);
  return new Document({
    pageContent: chunk.text,
    metadata: {
      ...chunk.metadata,
      source: chunk.source,
      chunkId: chunk.chunkId,
      ordinal: chunk.ordinal,
      score: chunk.score,
      group: chunk.group,
      kvfold: payloadRef([chunk], { attach }),
    },
  });
}

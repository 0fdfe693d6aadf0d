/**
 * The one interface every document store backend implements: {@linkcode Store}. Its methods return
 * promises, so that a store on another machine (PostgreSQL) and one in a local file (SQLite) are
 * used the same way by `compressIntoStore`, the CLI, the server and the framework integrations.
 * Open one with `openStore(location)`; the synchronous {@linkcode DocumentStore} (SQLite) is
 * accepted wherever a `Store` is (see {@linkcode StoreLike}).
 *
 * @module
 */

import type { DocumentStore } from "../store.ts";
import type { NewDocument, RetrievedChunk, StoredDocument, StoreStats } from "../store_records.ts";

/** Which backend holds a store. */
export type StoreBackend = "sqlite" | "postgres";

/**
 * A document store: documents of chunks with their text and compressed vectors, BM25 retrieval
 * over chunk text and retrieval by chunk id. The same behaviour on every backend: the same ids,
 * the same errors (`KvfoldError`, "Cannot X: Y" naming the store), the same BM25 scores.
 *
 * @example
 * ```ts ignore
 * import { openStore } from "./open_store.ts";
 * await using store = await openStore("postgres://kvfold@db.internal:5432/corpus");
 * const hits = await store.retrieve("rotary embeddings", { k: 3 });
 * console.log(hits.map((h) => `${h.source}#${h.ordinal}`));
 * ```
 */
export interface Store {
  /** Which backend this is. */
  readonly backend: StoreBackend;
  /** Where the store is, for messages: the file path, or the URL without its password. */
  readonly location: string;
  /**
   * Adds a document and all its chunks in one transaction and returns its id. A source already
   * present is refused with "INVALID_STATE" unless `replace`, which deletes the old document in
   * the same transaction.
   */
  addDocument(doc: NewDocument, options?: { replace?: boolean }): Promise<number>;
  /** Whether a document with this source is stored. */
  hasDocument(source: string): Promise<boolean>;
  /** The document stored under `source` with its chunk ids in ordinal order, or undefined. */
  getDocument(source: string): Promise<StoredDocument | undefined>;
  /** Removes a document, its chunks and their index entries; returns whether it existed. */
  removeDocument(source: string): Promise<boolean>;
  /** The sources of all documents, in the order they were added (document id order). */
  listSources(): Promise<string[]>;
  /** BM25 (k1 = 1.2, b = 0.75) search over chunk text, best first (see `DocumentStore.retrieve`). */
  retrieve(query: string, options?: { k?: number; group?: string }): Promise<RetrievedChunk[]>;
  /** Chunks by id, in the order given, with score 0; an unknown id is "INVALID_ARGUMENT". */
  getChunks(chunkIds: readonly number[]): Promise<RetrievedChunk[]>;
  /** Counts of documents, chunks, tokens in, vectors kept and bytes. */
  stats(): Promise<StoreStats>;
  /** Closes the store; later calls other than `close` throw "INVALID_STATE". */
  close(): Promise<void>;
  /** Closes the store (for `await using`). */
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * What the API takes where it needs a store: a {@linkcode Store} of any backend, or an open
 * synchronous {@linkcode DocumentStore} (SQLite), as before the `Store` interface existed.
 *
 * @example
 * ```ts ignore
 * import { DocumentStore } from "../store.ts";
 * import type { StoreLike } from "./store_api.ts";
 * const store: StoreLike = DocumentStore.open("docs.kvfold");
 * ```
 */
export type StoreLike = Store | DocumentStore;

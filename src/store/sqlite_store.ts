/**
 * The SQLite backend of {@linkcode Store}: the synchronous {@linkcode DocumentStore} (one file,
 * its format unchanged) behind the promise-returning interface.
 *
 * @module
 */

import { DocumentStore, type OpenStoreOptions } from "../store.ts";
import type { NewDocument, RetrievedChunk, StoredDocument, StoreStats } from "../store_records.ts";
import type { Store } from "./store_api.ts";

/**
 * A SQLite store file as a {@linkcode Store}. Each call runs synchronously (SQLite is in-process)
 * and its result or error is returned as a settled promise. `documents` is the synchronous store
 * underneath, for code that wants it.
 *
 * @example
 * ```ts ignore
 * import { SqliteStore } from "./sqlite_store.ts";
 * await using store = SqliteStore.open("docs.sqlite");
 * console.log((await store.stats()).documents);
 * ```
 */
export class SqliteStore implements Store {
  readonly backend = "sqlite" as const;
  /** The synchronous store this wraps. */
  readonly documents: DocumentStore;
  /** Whether `close` closes `documents` (false when it was given, not opened here). */
  readonly #owned: boolean;

  /** Wraps an open `DocumentStore`; `owned`: closing this closes it. */
  constructor(documents: DocumentStore, owned = false) {
    this.documents = documents;
    this.#owned = owned;
  }

  /**
   * Opens (creating when missing, unless `readOnly`) the SQLite store at `path`.
   *
   * @example
   * ```ts ignore
   * import { SqliteStore } from "./sqlite_store.ts";
   * const store = SqliteStore.open("docs.sqlite", { readOnly: true });
   * await store.close();
   * ```
   */
  static open(path: string, options: OpenStoreOptions = {}): SqliteStore {
    return new SqliteStore(DocumentStore.open(path, options), true);
  }

  /** The file path. */
  get location(): string {
    return this.documents.path;
  }

  addDocument(doc: NewDocument, options: { replace?: boolean } = {}): Promise<number> {
    return settle(() => this.documents.addDocument(doc, options));
  }

  hasDocument(source: string): Promise<boolean> {
    return settle(() => this.documents.hasDocument(source));
  }

  getDocument(source: string): Promise<StoredDocument | undefined> {
    return settle(() => this.documents.getDocument(source));
  }

  removeDocument(source: string): Promise<boolean> {
    return settle(() => this.documents.removeDocument(source));
  }

  listSources(): Promise<string[]> {
    return settle(() => this.documents.listSources());
  }

  retrieve(query: string, options: { k?: number; group?: string } = {}): Promise<RetrievedChunk[]> {
    return settle(() => this.documents.retrieve(query, options));
  }

  getChunks(chunkIds: readonly number[]): Promise<RetrievedChunk[]> {
    return settle(() => this.documents.getChunks(chunkIds));
  }

  stats(): Promise<StoreStats> {
    return settle(() => this.documents.stats());
  }

  close(): Promise<void> {
    return settle(() => {
      if (this.#owned) this.documents.close();
    });
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** `fn()`'s result as a promise, its throw as a rejection (callers `await` either way). */
function settle<T>(fn: () => T): Promise<T> {
  try {
    return Promise.resolve(fn());
  } catch (e) {
    return Promise.reject(e);
  }
}

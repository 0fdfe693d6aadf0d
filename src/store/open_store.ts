/**
 * `openStore(location)`: a {@linkcode Store} of the backend its location names, a SQLite file path
 * or a `postgres://` URL; and `asStore`, the one place where a synchronous `DocumentStore` given by
 * a caller becomes a `Store`.
 *
 * @module
 */

import type { DocumentStore } from "../store.ts";
import { KvfoldError } from "../errors.ts";
import { SqliteStore } from "./sqlite_store.ts";
import type { Store, StoreBackend, StoreLike } from "./store_api.ts";

/** Options of {@linkcode openStore}. */
export interface OpenStoreAtOptions {
  /** Open for reading only (SQLite: the file must exist; PostgreSQL: no schema is created). */
  readOnly?: boolean;
  /** SQLite: run `PRAGMA integrity_check` at open (default: files up to 64 MiB). */
  integrityCheck?: boolean;
  /** PostgreSQL: connections kept open at most. Default 4. */
  connections?: number;
}

/**
 * The backend a location names: `postgres://` or `postgresql://` URLs are PostgreSQL, anything
 * else a SQLite file path.
 *
 * @example
 * ```ts
 * import { storeBackendOf } from "./open_store.ts";
 * console.log(storeBackendOf("./corpus.sqlite"), storeBackendOf("postgres://kvfold@db/corpus")); // sqlite postgres
 * ```
 */
export function storeBackendOf(location: string): StoreBackend {
  return /^postgres(ql)?:\/\//i.test(location) ? "postgres" : "sqlite";
}

/**
 * Opens the store at `location`: a SQLite file (created when missing unless `readOnly`, format
 * unchanged) or a PostgreSQL database (`postgres://user:password@host:5432/db`, kvfold's tables in
 * the schema `kvfold` or `?schema=NAME`, created on first use). The PostgreSQL client is loaded
 * only when a URL is given.
 *
 * @example
 * ```ts ignore
 * import { openStore } from "./open_store.ts";
 * await using local = await openStore("./corpus.sqlite");
 * await using shared = await openStore("postgres://kvfold@db.internal/corpus", { readOnly: true });
 * console.log((await local.stats()).documents, (await shared.stats()).documents);
 * ```
 */
export async function openStore(location: string, options: OpenStoreAtOptions = {}): Promise<Store> {
  if (typeof location !== "string" || location === "") {
    throw new KvfoldError("INVALID_ARGUMENT", "Cannot open store: location must be a non-empty string");
  }
  if (storeBackendOf(location) === "postgres") {
    const { PostgresStore } = await import("./postgres_store.ts");
    return await PostgresStore.open(location, {
      readOnly: options.readOnly,
      connections: options.connections,
    });
  }
  return SqliteStore.open(location, { readOnly: options.readOnly, integrityCheck: options.integrityCheck });
}

const wrapped = new WeakMap<DocumentStore, SqliteStore>();

/**
 * `store` as a {@linkcode Store}: a `Store` as it is, a synchronous `DocumentStore` wrapped (one
 * wrapper per store; closing the wrapper leaves the `DocumentStore` open, its owner closes it).
 *
 * @example
 * ```ts ignore
 * import type { DocumentStore } from "../store.ts";
 * import { asStore } from "./open_store.ts";
 * using sync = DocumentStore.open("docs.sqlite");
 * console.log((await asStore(sync).stats()).documents);
 * ```
 */
export function asStore(store: StoreLike): Store {
  const s = store as Partial<Store> | null;
  if (s === null || typeof s !== "object" || typeof s.retrieve !== "function") {
    throw new TypeError("Expected a store: await openStore(location) or DocumentStore.open(path)");
  }
  // By shape, not instanceof: the Node.js build may hold more than one copy of the classes.
  if (typeof s.backend === "string") return store as Store;
  const sync = store as DocumentStore;
  let wrapper = wrapped.get(sync);
  if (wrapper === undefined) {
    wrapper = new SqliteStore(sync);
    wrapped.set(sync, wrapper);
  }
  return wrapper;
}

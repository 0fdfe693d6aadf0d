/**
 * `node:sqlite`'s `DatabaseSync` where the runtime has none. Deno, Bun and Node.js 22.5+ have
 * `node:sqlite`, and it is used as is; Node.js 20 lacks it, so there the store runs on
 * `node-sqlite3-wasm` (SQLite compiled to WebAssembly, reading and writing the file through `node:fs`)
 * behind the subset of `DatabaseSync` that `src/store.ts` calls.
 *
 * The Node.js build maps `src/store.ts`'s `import ... from "node:sqlite"` to this module.
 *
 * @module
 */

import { createRequire } from "node:module";

/** A bindable value, as `node:sqlite` takes them. */
export type SQLInputValue = null | number | bigint | string | Uint8Array;

/** The statement methods `src/store.ts` uses. */
export interface StatementSync {
  run(...params: SQLInputValue[]): { changes: number | bigint; lastInsertRowid: number | bigint };
  get(...params: SQLInputValue[]): Record<string, unknown> | undefined;
  all(...params: SQLInputValue[]): Record<string, unknown>[];
}

/** The database methods `src/store.ts` uses. */
export interface DatabaseSyncLike {
  exec(sql: string): void;
  prepare(sql: string): StatementSync;
  close(): void;
}

interface WasmStatement {
  run(values?: SQLInputValue[]): { changes: number; lastInsertRowid: number | bigint };
  get(values?: SQLInputValue[]): Record<string, unknown> | null;
  all(values?: SQLInputValue[]): Record<string, unknown>[];
  finalize(): void;
  readonly isFinalized: boolean;
}

interface WasmDatabase {
  exec(sql: string): void;
  prepare(sql: string): WasmStatement;
  close(): void;
}

type WasmDatabaseClass = new (path: string, options?: { readOnly?: boolean }) => WasmDatabase;

// Statements a wrapper no longer reaches are finalized when it is collected: the wasm heap is not
// garbage collected, and `src/store.ts` prepares one-off statements without finalizing them.
const statements = new FinalizationRegistry<{ db: WasmBackedDatabase; stmt: WasmStatement }>(
  ({ db, stmt }) => db._release(stmt),
);

/** `DatabaseSync` over node-sqlite3-wasm. */
class WasmBackedDatabase implements DatabaseSyncLike {
  #db: WasmDatabase | null;
  #live = new Set<WasmStatement>();

  constructor(path: string, options: { readOnly?: boolean } = {}) {
    const Database = (createRequire(import.meta.url)("node-sqlite3-wasm") as { Database: WasmDatabaseClass })
      .Database;
    this.#db = new Database(path, { readOnly: options.readOnly === true });
  }

  #open(): WasmDatabase {
    if (!this.#db) throw new Error("database is not open");
    return this.#db;
  }

  exec(sql: string): void {
    this.#open().exec(sql);
  }

  prepare(sql: string): StatementSync {
    const stmt = this.#open().prepare(sql);
    this.#live.add(stmt);
    const wrapper: StatementSync = {
      run: (...params) => stmt.run(params),
      // node:sqlite answers "no row" with undefined, node-sqlite3-wasm with null.
      get: (...params) => stmt.get(params) ?? undefined,
      all: (...params) => stmt.all(params),
    };
    statements.register(wrapper, { db: this, stmt });
    return wrapper;
  }

  /** @internal finalizes a statement whose wrapper was collected. */
  _release(stmt: WasmStatement): void {
    if (!this.#live.delete(stmt) || stmt.isFinalized) return;
    try {
      stmt.finalize();
    } catch { /* the database is already closed */ }
  }

  close(): void {
    const db = this.#open();
    // node-sqlite3-wasm leaks statements a closed database still has; node:sqlite finalizes them.
    for (const stmt of this.#live) if (!stmt.isFinalized) stmt.finalize();
    this.#live.clear();
    db.close();
    this.#db = null;
  }
}

async function pick(): Promise<new (path: string, options?: { readOnly?: boolean }) => DatabaseSyncLike> {
  try {
    const mod = await import("node:sqlite");
    return mod.DatabaseSync as unknown as new (
      path: string,
      options?: { readOnly?: boolean },
    ) => DatabaseSyncLike;
  } catch {
    return WasmBackedDatabase;
  }
}

/** `node:sqlite`'s `DatabaseSync` when the runtime has it, else the WebAssembly-backed one. */
export const DatabaseSync: new (path: string, options?: { readOnly?: boolean }) => DatabaseSyncLike =
  await pick();

/**
 * The layout of a store file: its schema, creating it in an empty file (safely when several
 * processes do it at once), and checking an existing file at open.
 *
 * @module
 */

import type { DatabaseSync } from "node:sqlite";
import { KvfoldError } from "./errors.ts";

/** The schema version this kvfold writes and reads. */
export const SCHEMA_VERSION = 1;

/**
 * The layout of schema version 1. `IF NOT EXISTS` everywhere: two processes creating one new store
 * run it one after the other (BEGIN IMMEDIATE), and the second finds everything made.
 *
 * `chunks.checksum` (see `chunkChecksum` in `_store_integrity.ts`) came later within version 1 and
 * is optional: stores written before it lack the column and open, read-only or not, unchanged; the
 * first write through this kvfold adds it (`ALTER TABLE ... ADD COLUMN`, which rewrites no row) in
 * the write's transaction. NULL means "not recorded" (rows written before, or by an older kvfold,
 * which names its columns and so reads and writes such stores as before); the schema version is not
 * bumped so that older kvfolds keep opening new stores.
 */
const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
  id INTEGER PRIMARY KEY,
  source TEXT NOT NULL UNIQUE,
  grp TEXT,
  metadata TEXT NOT NULL DEFAULT '{}',
  created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS documents_grp ON documents (grp);
CREATE TABLE IF NOT EXISTS chunks (
  id INTEGER PRIMARY KEY,
  document_id INTEGER NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
  ordinal INTEGER NOT NULL,
  text TEXT NOT NULL,
  tokens INTEGER NOT NULL,
  length INTEGER NOT NULL,
  rows INTEGER NOT NULL,
  hidden INTEGER NOT NULL,
  dtype TEXT NOT NULL DEFAULT 'bf16',
  vectors BLOB NOT NULL,
  checksum INTEGER,
  UNIQUE (document_id, ordinal)
);
CREATE TABLE IF NOT EXISTS postings (
  term TEXT NOT NULL,
  chunk_id INTEGER NOT NULL REFERENCES chunks (id) ON DELETE CASCADE,
  tf INTEGER NOT NULL,
  PRIMARY KEY (term, chunk_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS postings_term ON postings (term);
CREATE INDEX IF NOT EXISTS postings_chunk ON postings (chunk_id);
`;

/** The columns kvfold reads, checked at open so that a foreign layout fails there, by name. */
const COLUMNS: Record<string, string[]> = {
  meta: ["key", "value"],
  documents: ["id", "source", "grp", "metadata"],
  chunks: ["id", "document_id", "ordinal", "text", "tokens", "length", "rows", "hidden", "dtype", "vectors"],
  postings: ["term", "chunk_id", "tf"],
};

/**
 * Files up to this size (with their WAL) get `PRAGMA integrity_check` at open: about 65 ms warm.
 * integrity_check, not quick_check: a flipped index page loses rows silently, and only the full
 * check compares every index with its table.
 */
export const INTEGRITY_CHECK_MAX_BYTES = 64 * 1024 * 1024;

/** The statement reading one chunk with its document, checksum or NULL. */
export function chunkSelect(checksums: boolean): string {
  return `SELECT c.id AS chunk_id, c.document_id, d.source, c.ordinal, c.text, c.tokens, c.length, d.grp,
  c.rows, c.hidden, c.dtype, c.vectors, ${checksums ? "c.checksum" : "NULL AS checksum"}, d.metadata
  FROM chunks c JOIN documents d ON d.id = c.document_id WHERE c.id = ?`;
}

/** The column names of `table`. */
export function columnsOf(db: DatabaseSync, table: string): string[] {
  return db.prepare(`PRAGMA table_info(${table})`).all().map((r) => String(r.name));
}

/** Rolls back the open transaction, if any. */
export function rollback(db: DatabaseSync): void {
  try {
    db.exec("ROLLBACK");
  } catch { /* no transaction left to roll back */ }
}

/** Adds `chunks.checksum` to a store written before it; call inside a write transaction. */
export function addChecksumColumn(db: DatabaseSync): void {
  if (!columnsOf(db, "chunks").includes("checksum")) {
    db.exec("ALTER TABLE chunks ADD COLUMN checksum INTEGER");
  }
}

/**
 * Creates the schema in an empty file. Another process may be doing the same right now: the
 * journal mode is set outside any transaction (SQLite requires it) and the schema goes in one
 * BEGIN IMMEDIATE transaction of IF NOT EXISTS statements, so whichever comes second finds the
 * store made and adds nothing.
 */
function create(db: DatabaseSync): void {
  db.exec("PRAGMA journal_mode = WAL");
  db.exec("BEGIN IMMEDIATE");
  try {
    db.exec(SCHEMA);
    const put = db.prepare("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)");
    put.run("schema_version", String(SCHEMA_VERSION));
    put.run("created_by", "kvfold");
    put.run("created_at", new Date().toISOString());
    db.exec("COMMIT");
  } catch (e) {
    rollback(db);
    throw e;
  }
}

/**
 * Checks the store just opened at `path` (creating it in an empty file unless `readOnly`) and
 * returns whether `chunks` has the checksum column. SQLite's own errors propagate as they are.
 */
export function prepareStore(
  db: DatabaseSync,
  path: string,
  readOnly: boolean,
  integrityCheck: boolean,
): boolean {
  const format = (why: string) => new KvfoldError("FORMAT", `Cannot open store: ${path} ${why}`);
  // First, so that everything after waits for another process's transaction instead of failing.
  db.exec("PRAGMA busy_timeout = 5000");
  // Reading the schema forces SQLite to read the header: a non-SQLite file fails here.
  const tableNames = () =>
    db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all().map((r) => String(r.name));
  let tables = tableNames();
  if (tables.length === 0) {
    if (readOnly) throw format("is empty and the store was opened read-only");
    create(db);
    tables = tableNames();
  }
  if (integrityCheck) {
    const problems = db.prepare("PRAGMA integrity_check(5)").all().map((r) => String(Object.values(r)[0]));
    if (problems.length !== 1 || problems[0] !== "ok") {
      throw format(`is damaged (PRAGMA integrity_check: ${problems.join("; ")})`);
    }
  }
  db.exec("PRAGMA foreign_keys = ON");
  if (!tables.includes("meta")) throw format("is a SQLite file but not a kvfold store (no meta table)");
  const value = db.prepare("SELECT value FROM meta WHERE key = 'schema_version'").get()?.value;
  const version = typeof value === "string" && /^\d{1,9}$/.test(value) ? Number(value) : NaN;
  if (!(version >= 1)) throw format("has no valid schema_version in meta");
  if (version > SCHEMA_VERSION) {
    throw new KvfoldError(
      "UNSUPPORTED",
      `Cannot open store: ${path}: schema version ${version} is newer than this kvfold (${SCHEMA_VERSION}); upgrade kvfold`,
    );
  }
  for (const [table, wanted] of Object.entries(COLUMNS)) {
    if (!tables.includes(table)) throw format(`lacks table ${table}`);
    const have = columnsOf(db, table);
    const missing = wanted.filter((c) => !have.includes(c)).map((c) => `${table}.${c}`);
    if (missing.length > 0) {
      throw format(`lacks column${missing.length > 1 ? "s" : ""} ${missing.join(", ")}`);
    }
  }
  if (!readOnly) db.exec("PRAGMA journal_mode = WAL");
  return columnsOf(db, "chunks").includes("checksum");
}

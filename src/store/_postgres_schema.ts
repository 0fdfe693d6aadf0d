/**
 * The layout of a PostgreSQL store, created and versioned by kvfold itself: all its tables live in
 * one PostgreSQL schema (`kvfold` unless the URL says `?schema=NAME`), beside whatever else the
 * database holds. `schema_version` records each migration applied; a store whose version is newer
 * than this kvfold's is refused, an older one is migrated in one transaction, under an advisory
 * lock so that several workers opening one new store at once create it once.
 *
 * The document tables mirror the SQLite file's (`_store_schema.ts`): the same columns, vectors as
 * `bytea` in the same little-endian bf16 layout, the same per-chunk CRC-32, and a `postings` table
 * of term frequencies from the same tokenizer, so BM25 ranks identically on both backends.
 *
 * @module
 */

import { KvfoldError } from "../errors.ts";
import type { PgConnection, PgQueryable } from "./_postgres_connection.ts";

/**
 * The migrations, in order: the schema version after migration i is i + 1. Each runs in the one
 * transaction that records it.
 */
const MIGRATIONS: readonly string[] = [
  // 1: documents, chunks and the BM25 postings.
  `CREATE TABLE documents (
     id BIGSERIAL PRIMARY KEY,
     source TEXT NOT NULL UNIQUE,
     grp TEXT,
     metadata TEXT NOT NULL DEFAULT '{}',
     created_at TEXT NOT NULL
   );
   CREATE INDEX documents_grp ON documents (grp);
   CREATE TABLE chunks (
     id BIGINT PRIMARY KEY,
     document_id BIGINT NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
     ordinal INTEGER NOT NULL,
     text TEXT NOT NULL,
     tokens INTEGER NOT NULL,
     length INTEGER NOT NULL,
     rows INTEGER NOT NULL,
     hidden INTEGER NOT NULL,
     dtype TEXT NOT NULL DEFAULT 'bf16',
     vectors BYTEA NOT NULL,
     checksum BIGINT,
     UNIQUE (document_id, ordinal)
   );
   CREATE SEQUENCE chunks_id_seq OWNED BY chunks.id;
   CREATE TABLE postings (
     term TEXT NOT NULL,
     chunk_id BIGINT NOT NULL REFERENCES chunks (id) ON DELETE CASCADE,
     tf INTEGER NOT NULL,
     PRIMARY KEY (term, chunk_id)
   );
   CREATE INDEX postings_chunk ON postings (chunk_id);`,
  // 2: the work queue of distributed compression (see queue.ts).
  `CREATE TABLE work_items (
     id BIGSERIAL PRIMARY KEY,
     source TEXT NOT NULL UNIQUE,
     grp TEXT,
     text TEXT NOT NULL,
     options TEXT NOT NULL DEFAULT '{}',
     state TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'done', 'failed')),
     attempts INTEGER NOT NULL DEFAULT 0,
     worker TEXT,
     lease_until TIMESTAMPTZ,
     error TEXT,
     enqueued_at TIMESTAMPTZ NOT NULL DEFAULT now(),
     updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
   );
   CREATE INDEX work_items_state ON work_items (state, id);`,
];

/** The schema version this kvfold writes and reads. */
export const PG_SCHEMA_VERSION = MIGRATIONS.length;

/** The columns kvfold reads, checked at open so that a foreign layout fails there, by name. */
const COLUMNS: Record<string, string[]> = {
  documents: ["id", "source", "grp", "metadata", "created_at"],
  chunks: [
    "id",
    "document_id",
    "ordinal",
    "text",
    "tokens",
    "length",
    "rows",
    "hidden",
    "dtype",
    "vectors",
    "checksum",
  ],
  postings: ["term", "chunk_id", "tf"],
  work_items: [
    "id",
    "source",
    "grp",
    "text",
    "options",
    "state",
    "attempts",
    "worker",
    "lease_until",
    "error",
  ],
};

/** The tables of `schema` and their columns. */
async function tablesOf(db: PgQueryable, schema: string): Promise<Map<string, string[]>> {
  const { rows } = await db.query(
    `SELECT c.relname AS table, a.attname AS column
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
     WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')`,
    [schema],
  );
  const tables = new Map<string, string[]>();
  for (const r of rows) {
    const cols = tables.get(String(r.table)) ?? [];
    if (r.column !== null) cols.push(String(r.column));
    tables.set(String(r.table), cols);
  }
  return tables;
}

/** The version recorded in `schema_version`, or 0 when the table is missing. */
async function versionOf(db: PgQueryable, tables: Map<string, string[]>, where: string): Promise<number> {
  if (!tables.has("schema_version")) return 0;
  const { rows } = await db.query("SELECT MAX(version) AS v FROM schema_version");
  const v = rows[0]?.v;
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 1) {
    throw new KvfoldError("FORMAT", `Cannot open store: ${where}: schema_version holds no valid version`);
  }
  return v;
}

/**
 * Checks the store's schema on `conn`, creating or migrating it unless `readOnly`. Throws FORMAT
 * for a schema of other tables or a foreign layout, UNSUPPORTED for a newer version.
 */
export async function preparePgStore(conn: PgConnection, readOnly: boolean): Promise<void> {
  const schema = conn.schema;
  const where = `${conn.location} (schema ${schema})`;
  const action = "open store";
  const check = (tables: Map<string, string[]>, version: number) => {
    if (version > PG_SCHEMA_VERSION) {
      throw new KvfoldError(
        "UNSUPPORTED",
        `Cannot open store: ${where}: schema version ${version} is newer than this kvfold (${PG_SCHEMA_VERSION}); upgrade kvfold`,
      );
    }
    for (const [table, wanted] of Object.entries(COLUMNS)) {
      if (table === "work_items" && version < 2) continue;
      const have = tables.get(table);
      if (have === undefined) {
        throw new KvfoldError("FORMAT", `Cannot open store: ${where} lacks table ${table}`);
      }
      const missing = wanted.filter((c) => !have.includes(c)).map((c) => `${table}.${c}`);
      if (missing.length > 0) {
        throw new KvfoldError(
          "FORMAT",
          `Cannot open store: ${where} lacks column${missing.length > 1 ? "s" : ""} ${missing.join(", ")}`,
        );
      }
    }
  };
  const foreign = (tables: Map<string, string[]>) =>
    new KvfoldError(
      "FORMAT",
      `Cannot open store: ${where} holds tables kvfold did not create (${
        [...tables.keys()].sort().join(", ")
      }) ` +
        `and no schema_version; point kvfold at another schema with ?schema=NAME`,
    );
  const db: PgQueryable = { query: (sql, params) => conn.query(sql, params, action) };
  // The common case first, without a lock: a store of this version.
  let tables = await tablesOf(db, schema);
  let version = await versionOf(db, tables, where);
  if (version === 0 && tables.size > 0) throw foreign(tables);
  if (version >= PG_SCHEMA_VERSION || (readOnly && version > 0)) {
    check(tables, version);
    return;
  }
  if (readOnly) {
    throw new KvfoldError(
      "FORMAT",
      `Cannot open store: ${where} holds no kvfold store and the store was opened read-only`,
    );
  }
  await conn.transaction(action, async (tx) => {
    // One creator at a time per schema; whoever comes second finds the work done.
    await tx.query("SELECT pg_advisory_xact_lock(hashtext('kvfold schema ' || $1))", [schema]);
    await tx.query(`CREATE SCHEMA IF NOT EXISTS ${schema}`);
    tables = await tablesOf(tx, schema);
    version = await versionOf(tx, tables, where);
    if (version === 0 && tables.size > 0) throw foreign(tables);
    if (version > PG_SCHEMA_VERSION) return;
    if (version === 0) {
      await tx.query(
        `CREATE TABLE ${schema}.schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now(), applied_by TEXT NOT NULL)`,
      );
    }
    for (let v = version + 1; v <= PG_SCHEMA_VERSION; v++) {
      await tx.query(`SET LOCAL search_path = ${schema}`);
      await tx.query(MIGRATIONS[v - 1]);
      await tx.query("INSERT INTO schema_version (version, applied_by) VALUES ($1, 'kvfold')", [v]);
    }
  });
  tables = await tablesOf(db, schema);
  check(tables, await versionOf(db, tables, where));
}

/**
 * The PostgreSQL backend of {@linkcode Store}: the documents, chunks and BM25 postings of a store
 * in tables of one PostgreSQL schema (`_postgres_schema.ts`), written by many processes at once,
 * each document in one transaction, and ranked on the server.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { KvfoldError } from "../errors.ts";
import {
  checkNewChunk,
  checkNewDocument,
  encodeVectors,
  type NewChunk,
  type NewDocument,
  type RetrievedChunk,
  type StoredDocument,
  type StoreStats,
} from "../store_records.ts";
import { chunkChecksum, StoreValues } from "../_store_integrity.ts";
import { BM25_B, BM25_K1, termFrequencies, tokenize } from "../_store_bm25.ts";
import { chunkFromRow, documentFromRows } from "../_store_rows.ts";
import { PgConnection, type PgQueryable } from "./_postgres_connection.ts";
import { preparePgStore } from "./_postgres_schema.ts";
import type { Store } from "./store_api.ts";

function bad(message: string): KvfoldError {
  return new KvfoldError("INVALID_ARGUMENT", message);
}

/** Options of {@linkcode PostgresStore.open}. */
export interface PostgresStoreOptions {
  /** Open for reading only: no schema is created, writes are refused. Default false. */
  readOnly?: boolean;
  /** Connections kept open at most (concurrent statements of this process). Default 4. */
  connections?: number;
}

/** A document checked and encoded, ready to be written (nothing left to fail but the server). */
export interface EncodedDocument {
  source: string;
  group?: string;
  metaJson: string;
  chunks: { text: string; tokens: number; rows: number; hidden: number; blob: Uint8Array; terms: string[] }[];
}

/** Checks and encodes `doc` (INVALID_ARGUMENT naming what is wrong), before any transaction. */
export function encodeDocument(doc: NewDocument): EncodedDocument {
  const { source, group, metaJson, chunks } = checkNewDocument(doc);
  return {
    source,
    group,
    metaJson,
    chunks: chunks.map((chunk: NewChunk, ordinal) => {
      const where = `chunk ${ordinal} of ${source}`;
      checkNewChunk(chunk, where);
      const blob = encodeVectors(chunk.vectors, where);
      return {
        text: chunk.text,
        tokens: chunk.tokens,
        rows: chunk.vectors.rows,
        hidden: chunk.vectors.hidden,
        blob,
        terms: tokenize(chunk.text),
      };
    }),
  };
}

/**
 * Writes `doc` inside the caller's transaction on `db` and returns its id. Writers of one source
 * take turns (an advisory lock on it), so two processes adding or replacing it at once end with
 * exactly one document, never two or none.
 */
export async function writeDocument(
  db: PgQueryable,
  doc: EncodedDocument,
  replace: boolean,
): Promise<number> {
  const { source } = doc;
  await db.query("SELECT pg_advisory_xact_lock(hashtext('kvfold source ' || $1))", [source]);
  const existing = await db.query("SELECT id FROM documents WHERE source = $1 FOR UPDATE", [source]);
  if (existing.rows.length > 0) {
    if (!replace) {
      throw new KvfoldError(
        "INVALID_STATE",
        `Cannot add document: source ${source} is already in the store (pass { replace: true } to replace it)`,
      );
    }
    await db.query("DELETE FROM documents WHERE id = $1", [existing.rows[0].id]);
  }
  const inserted = await db.query(
    "INSERT INTO documents (source, grp, metadata, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
    [source, doc.group ?? null, doc.metaJson, new Date().toISOString()],
  );
  const documentId = Number(inserted.rows[0].id);
  // Chunk ids come from a sequence before the rows are written, because the checksum covers them.
  const ids = (await db.query("SELECT nextval('chunks_id_seq') AS id FROM generate_series(1, $1)", [
    doc.chunks.length,
  ])).rows.map((r) => Number(r.id)).sort((a, b) => a - b);
  const cols = {
    id: [] as number[],
    ordinal: [] as number[],
    text: [] as string[],
    tokens: [] as number[],
    length: [] as number[],
    rows: [] as number[],
    hidden: [] as number[],
    vectors: [] as Buffer[],
    checksum: [] as number[],
  };
  const postings = { term: [] as string[], chunk: [] as number[], tf: [] as number[] };
  doc.chunks.forEach((c, ordinal) => {
    const id = ids[ordinal];
    cols.id.push(id);
    cols.ordinal.push(ordinal);
    cols.text.push(c.text);
    cols.tokens.push(c.tokens);
    cols.length.push(c.terms.length);
    cols.rows.push(c.rows);
    cols.hidden.push(c.hidden);
    cols.vectors.push(Buffer.from(c.blob.buffer, c.blob.byteOffset, c.blob.byteLength));
    cols.checksum.push(chunkChecksum({
      id,
      documentId,
      ordinal,
      tokens: c.tokens,
      length: c.terms.length,
      rows: c.rows,
      hidden: c.hidden,
      dtype: "bf16",
      text: c.text,
      vectors: c.blob,
    }));
    for (const [term, n] of termFrequencies(c.terms)) {
      postings.term.push(term);
      postings.chunk.push(id);
      postings.tf.push(n);
    }
  });
  await db.query(
    `INSERT INTO chunks (id, document_id, ordinal, text, tokens, length, rows, hidden, dtype, vectors, checksum)
     SELECT id, $1, ordinal, text, tokens, length, rows, hidden, 'bf16', vectors, checksum
     FROM unnest($2::bigint[], $3::int[], $4::text[], $5::int[], $6::int[], $7::int[], $8::int[], $9::bytea[], $10::bigint[])
       AS t (id, ordinal, text, tokens, length, rows, hidden, vectors, checksum)`,
    [
      documentId,
      cols.id,
      cols.ordinal,
      cols.text,
      cols.tokens,
      cols.length,
      cols.rows,
      cols.hidden,
      cols.vectors,
      cols.checksum,
    ],
  );
  if (postings.term.length > 0) {
    await db.query(
      "INSERT INTO postings (term, chunk_id, tf) SELECT * FROM unnest($1::text[], $2::bigint[], $3::int[])",
      [postings.term, postings.chunk, postings.tf],
    );
  }
  return documentId;
}

/** The statement reading chunks with their documents (the columns `chunkFromRow` reads). */
const CHUNKS_BY_ID = `SELECT c.id AS chunk_id, c.document_id, d.source, c.ordinal, c.text, c.tokens, c.length,
  d.grp, c.rows, c.hidden, c.dtype, c.vectors, c.checksum, d.metadata
  FROM chunks c JOIN documents d ON d.id = c.document_id WHERE c.id = ANY($1::bigint[])`;

/**
 * A store in a PostgreSQL database, opened from a URL
 * (`postgres://user:password@host:5432/db?schema=kvfold`). Many processes on many machines may
 * read and write it at once. Every failure is a `KvfoldError` naming the store (its URL without
 * the password): an unreachable server, refused credentials or a lost connection are "IO" (a
 * transaction the server never saw committed is rolled back whole), a schema of other tables
 * "FORMAT", a newer kvfold's schema "UNSUPPORTED".
 *
 * @example
 * ```ts ignore
 * import { PostgresStore } from "./postgres_store.ts";
 * await using store = await PostgresStore.open("postgres://kvfold@localhost:5432/corpus");
 * console.log(await store.stats());
 * ```
 */
export class PostgresStore implements Store {
  readonly backend = "postgres" as const;
  /** The connections (the work queue shares them). */
  readonly connection: PgConnection;
  readonly #readOnly: boolean;

  private constructor(connection: PgConnection, readOnly: boolean) {
    this.connection = connection;
    this.#readOnly = readOnly;
  }

  /**
   * Connects to the database at `url`, creating or migrating kvfold's schema in it unless
   * `readOnly`.
   *
   * @example
   * ```ts ignore
   * import { PostgresStore } from "./postgres_store.ts";
   * const store = await PostgresStore.open("postgres://kvfold@localhost/corpus", { readOnly: true });
   * await store.close();
   * ```
   */
  static async open(url: string, options: PostgresStoreOptions = {}): Promise<PostgresStore> {
    const connection = new PgConnection(url, options.connections ?? 4);
    try {
      await preparePgStore(connection, options.readOnly === true);
    } catch (e) {
      await connection.close().catch(() => {});
      throw e;
    }
    return new PostgresStore(connection, options.readOnly === true);
  }

  /** The URL without its password. */
  get location(): string {
    return this.connection.location;
  }

  /** Whether writes are refused. */
  get readOnly(): boolean {
    return this.#readOnly;
  }

  #writable(action: string): void {
    this.connection.check();
    if (this.#readOnly) {
      throw new KvfoldError("INVALID_STATE", `Cannot ${action}: store ${this.location} is read-only`);
    }
  }

  async addDocument(doc: NewDocument, options: { replace?: boolean } = {}): Promise<number> {
    this.#writable("add document");
    const encoded = encodeDocument(doc);
    return await this.connection.transaction(
      `add document ${encoded.source} to store`,
      (db) => writeDocument(db, encoded, options.replace === true),
    );
  }

  async hasDocument(source: string): Promise<boolean> {
    const { rows } = await this.connection.query(
      "SELECT 1 AS x FROM documents WHERE source = $1",
      [source],
      "look up document in store",
    );
    return rows.length > 0;
  }

  async getDocument(source: string): Promise<StoredDocument | undefined> {
    this.connection.check();
    if (typeof source !== "string") throw bad("Cannot get document: source must be a string");
    const { rows } = await this.connection.query(
      `SELECT d.id, d.source, d.grp, d.metadata, c.id AS chunk_id, c.ordinal, c.tokens, c.rows
       FROM documents d LEFT JOIN chunks c ON c.document_id = d.id
       WHERE d.source = $1 ORDER BY c.ordinal`,
      [source],
      `read document ${source} of store`,
    );
    return documentFromRows(this.location, source, rows);
  }

  async removeDocument(source: string): Promise<boolean> {
    this.#writable("remove document");
    const r = await this.connection.query(
      "DELETE FROM documents WHERE source = $1",
      [source],
      `remove document ${source} from store`,
    );
    return (r.rowCount ?? 0) > 0;
  }

  async listSources(): Promise<string[]> {
    const action = "list documents of store";
    const { rows } = await this.connection.query("SELECT id, source FROM documents ORDER BY id", [], action);
    const v = new StoreValues(this.location, action);
    return rows.map((r) => v.text(r.source, "documents.source", `document ${r.id}`));
  }

  /**
   * BM25 over chunk text, computed by the server from the postings (the same terms, formula and
   * statistics as the SQLite backend: see `DocumentStore.retrieve`), best first, ties to the lower
   * chunk id.
   */
  async retrieve(query: string, options: { k?: number; group?: string } = {}): Promise<RetrievedChunk[]> {
    this.connection.check();
    if (typeof query !== "string") throw bad("Cannot retrieve: query must be a string");
    const k = options.k ?? 4;
    if (!Number.isSafeInteger(k) || k < 1) {
      throw bad(`Cannot retrieve: k must be a positive integer, got ${k}`);
    }
    const terms = [...new Set(tokenize(query))];
    if (terms.length === 0) return [];
    const action = "retrieve from store";
    const group = options.group;
    const { rows } = await this.connection.query(
      `WITH corpus AS (SELECT COUNT(*)::float8 AS n, COALESCE(AVG(length), 0)::float8 AS avg FROM chunks),
       df AS (SELECT term, COUNT(*)::float8 AS df FROM postings WHERE term = ANY($1::text[]) GROUP BY term)
       SELECT p.chunk_id, SUM(
         ln(1 + (corpus.n - df.df + 0.5) / (df.df + 0.5)) * (p.tf * $3::float8) /
         (p.tf + $4::float8 * (1 - $5::float8 + $5::float8 *
           CASE WHEN corpus.avg > 0 THEN c.length / corpus.avg ELSE 0 END))
       ) AS score
       FROM postings p JOIN df ON df.term = p.term JOIN chunks c ON c.id = p.chunk_id
       JOIN documents d ON d.id = c.document_id CROSS JOIN corpus
       WHERE p.term = ANY($1::text[]) AND ($6::text IS NULL OR d.grp = $6::text)
       GROUP BY p.chunk_id ORDER BY score DESC, p.chunk_id LIMIT $2`,
      [terms, k, BM25_K1 + 1, BM25_K1, BM25_B, group ?? null],
      action,
    );
    const v = new StoreValues(this.location, action);
    const ranked = rows.map((r) =>
      [
        v.int(r.chunk_id, "postings.chunk_id", "a posting", 1),
        v.real(r.score, "score", "a chunk", 0),
      ] as const
    );
    const chunks = await this.#read(ranked.map(([id]) => id));
    return ranked.map(([id, score]) => ({ ...chunks.get(id)!, score }));
  }

  async getChunks(chunkIds: readonly number[]): Promise<RetrievedChunk[]> {
    this.connection.check();
    if (!Array.isArray(chunkIds)) throw bad("Cannot get chunks: expected an array of chunk ids");
    for (const id of chunkIds) {
      if (!Number.isSafeInteger(id)) throw bad(`Cannot get chunks: ${id} is not a chunk id`);
    }
    const chunks = await this.#read(chunkIds);
    return chunkIds.map((id) => chunks.get(id)!);
  }

  /** Chunks by id in one statement, each checked; a missing id is INVALID_ARGUMENT. */
  async #read(ids: readonly number[]): Promise<Map<number, RetrievedChunk>> {
    const out = new Map<number, RetrievedChunk>();
    if (ids.length === 0) return out;
    const { rows } = await this.connection.query(CHUNKS_BY_ID, [[...new Set(ids)]], "read chunks of store");
    const byId = new Map(rows.map((r) => [r.chunk_id, r]));
    for (const id of ids) {
      if (out.has(id)) continue;
      const r = byId.get(id);
      if (r === undefined) throw bad(`Cannot get chunks: chunk ${id} does not exist`);
      out.set(id, chunkFromRow(this.location, r, id, 0));
    }
    return out;
  }

  async stats(): Promise<StoreStats> {
    const action = "read store stats";
    const v = new StoreValues(this.location, action);
    const q = (sql: string, params: unknown[] = []) => this.connection.query(sql, params, action);
    const c = (await q(
      `SELECT COUNT(*) AS chunks, COALESCE(SUM(tokens), 0)::bigint AS tokens_in,
       COALESCE(SUM(rows), 0)::bigint AS kept, COALESCE(SUM(octet_length(vectors)), 0)::bigint AS bytes,
       MIN(CASE WHEN tokens >= 0 THEN NULL ELSE id END) AS bad_tokens,
       MIN(CASE WHEN rows >= 1 THEN NULL ELSE id END) AS bad_rows FROM chunks`,
    )).rows[0];
    for (const [key, column, min] of [["bad_tokens", "tokens", 0], ["bad_rows", "rows", 1]] as const) {
      if (c[key] === null) continue;
      const id = v.int(c[key], "chunks.id", "a chunk", 1);
      const value = (await q(`SELECT ${column} AS x FROM chunks WHERE id = $1`, [id])).rows[0].x;
      v.int(value, `chunks.${column}`, `chunk ${id}`, min);
    }
    const documents = v.int(
      (await q("SELECT COUNT(*) AS n FROM documents")).rows[0].n,
      "COUNT(*)",
      "documents",
      0,
    );
    const groups = (await q("SELECT DISTINCT grp FROM documents WHERE grp IS NOT NULL ORDER BY grp")).rows
      .map((r) => v.text(r.grp, "documents.grp", "a document"));
    const size = (await q(
      `SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::bigint AS bytes
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'`,
      [this.connection.schema],
    )).rows[0].bytes;
    const tokensIn = v.int(c.tokens_in, "SUM(chunks.tokens)", "chunks", 0);
    const vectorsKept = v.int(c.kept, "SUM(chunks.rows)", "chunks", 0);
    return {
      documents,
      chunks: v.int(c.chunks, "COUNT(*)", "chunks", 0),
      tokensIn,
      vectorsKept,
      ratio: vectorsKept > 0 ? tokensIn / vectorsKept : 0,
      vectorBytes: v.int(c.bytes, "SUM(octet_length(chunks.vectors))", "chunks", 0),
      fileBytes: v.int(size, "pg_total_relation_size", "the schema's tables", 0),
      groups,
    };
  }

  close(): Promise<void> {
    return this.connection.close();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

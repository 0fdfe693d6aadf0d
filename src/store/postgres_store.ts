/**
 * The PostgreSQL backend of {@linkcode Store}: the documents, chunks and BM25 postings of a store
 * in tables of one PostgreSQL schema (`_postgres_schema.ts`), written by many processes at once,
 * each document in one transaction, and ranked on the server.
 *
 * @module
 */

import { KvfoldError } from "../errors.ts";
import type { NewDocument, RetrievedChunk, StoredDocument, StoreStats } from "../store_records.ts";
import { StoreValues } from "../_store_integrity.ts";
import { BM25_B, BM25_K1, tokenize } from "../_store_bm25.ts";
import { chunkFromRow, documentFromRows } from "../_store_rows.ts";
import { PgConnection } from "./_postgres_connection.ts";
import { encodeDocument, writeDocument } from "./_postgres_documents.ts";
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
    const groups =
      (await q('SELECT grp FROM documents WHERE grp IS NOT NULL GROUP BY grp ORDER BY grp COLLATE "C"')).rows
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

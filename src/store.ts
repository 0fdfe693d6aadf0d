/**
 * The LLoCO document store: one SQLite file holding documents, their chunks with text, each
 * chunk's compressed summary vectors as little-endian bf16 blobs, the adapter group of each
 * document, metadata and a schema version, plus a BM25 inverted index over chunk text. The file
 * layout is in `_store_schema.ts`; what is checked of what is read, in `_store_integrity.ts`.
 *
 * @module
 */

import { DatabaseSync, type SQLInputValue, type StatementSync } from "node:sqlite";
import { KvfoldError } from "./errors.ts";
import {
  checkNewChunk,
  checkNewDocument,
  encodeVectors,
  type NewChunk,
  type NewDocument,
  type RetrievedChunk,
  type StoredDocument,
  type StoreStats,
} from "./store_records.ts";
import {
  addChecksumColumn,
  chunkSelect,
  INTEGRITY_CHECK_MAX_BYTES,
  prepareStore,
  rollback,
} from "./_store_schema.ts";
import { chunkFromRow, documentFromRows } from "./_store_rows.ts";
import {
  checkStorePath,
  chunkChecksum,
  isBusy,
  sleepSync,
  storeFailure,
  StoreValues,
} from "./_store_integrity.ts";
import { rankBm25, termFrequencies, tokenize } from "./_store_bm25.ts";

export {
  concatVectors,
  type NewChunk,
  type NewDocument,
  type RetrievedChunk,
  type StoredDocument,
  type StoredVectors,
  type StoreStats,
} from "./store_records.ts";

/** Opens that meet "database is locked" (another process creating the store) try this often. */
const OPEN_ATTEMPTS = 8;

function bad(message: string): KvfoldError {
  return new KvfoldError("INVALID_ARGUMENT", message);
}

/** Options of {@linkcode DocumentStore.open}. */
export interface OpenStoreOptions {
  /** Open for reading only; the file must exist. Default false. */
  readOnly?: boolean;
  /**
   * Run SQLite's `PRAGMA integrity_check` (every page, and every index against its table) at open and
   * refuse a damaged file. Default: only for files of at most 64 MiB (it reads the whole file: about
   * 1 s per GB).
   */
  integrityCheck?: boolean;
}

/**
 * An open LLoCO store. Open with {@linkcode DocumentStore.open}; close with `close()` or `using`.
 *
 * Nothing read from the file is trusted: every failure (a damaged file, a foreign layout, a value
 * kvfold never writes, a chunk that does not match its checksum) is a `KvfoldError` naming the file.
 *
 * @example
 * ```ts ignore
 * import { DocumentStore } from "./store.ts";
 * using store = DocumentStore.open("docs.kvfold");
 * store.addDocument({
 *   source: "intro.md",
 *   group: "manuals",
 *   chunks: [{ text: "kvfold compresses context", tokens: 4, vectors: { rows: 1, hidden: 2, data: new Float32Array([1, 2]) } }],
 * });
 * for (const hit of store.retrieve("compresses", { k: 2 })) console.log(hit.source, hit.score);
 * ```
 */
export class DocumentStore {
  /** The path the store was opened from. */
  readonly path: string;
  #db: DatabaseSync | null;
  readonly #readOnly: boolean;
  /** Whether `chunks` has the checksum column (stores written before it lack it). */
  #checksums: boolean;
  readonly #stmts = new Map<string, StatementSync>();

  private constructor(path: string, db: DatabaseSync, readOnly: boolean, checksums: boolean) {
    this.path = path;
    this.#db = db;
    this.#readOnly = readOnly;
    this.#checksums = checksums;
  }

  /**
   * Opens (creating when missing, unless `readOnly`) the store at `path`. Several processes may
   * create the same new store at once.
   *
   * Throws `KvfoldError` "IO" when the path is not a regular file (a FIFO, a device, a directory)
   * or cannot be opened, "FORMAT" when the file is not SQLite, not a kvfold store or damaged,
   * "UNSUPPORTED" when its schema version is newer than this kvfold's.
   *
   * @example
   * ```ts ignore
   * import { DocumentStore } from "./store.ts";
   * const store = DocumentStore.open("docs.kvfold", { readOnly: true });
   * console.log(store.stats().documents);
   * store.close();
   * ```
   */
  static open(path: string, options: OpenStoreOptions = {}): DocumentStore {
    if (typeof path !== "string" || path === "") {
      throw bad("Cannot open store: path must be a non-empty string");
    }
    const readOnly = options.readOnly === true;
    // A FIFO would block SQLite's open forever, a device gives nonsense errors: refuse them first.
    const bytes = checkStorePath(path, readOnly);
    const integrityCheck = options.integrityCheck ?? bytes <= INTEGRITY_CHECK_MAX_BYTES;
    for (let attempt = 1;; attempt++) {
      let db: DatabaseSync;
      try {
        db = new DatabaseSync(path, { readOnly });
      } catch (e) {
        throw storeFailure(path, "open store", e);
      }
      try {
        const checksums = prepareStore(db, path, readOnly, integrityCheck);
        return new DocumentStore(path, db, readOnly, checksums);
      } catch (e) {
        try {
          db.close();
        } catch { /* already failing */ }
        // busy_timeout covers most waits; SQLite skips it where waiting could deadlock.
        if (isBusy(e) && attempt < OPEN_ATTEMPTS) {
          sleepSync(10 * attempt);
          continue;
        }
        throw storeFailure(path, "open store", e);
      }
    }
  }

  #conn(): DatabaseSync {
    if (this.#db === null) {
      throw new KvfoldError("INVALID_STATE", `Cannot use store ${this.path}: it is closed`);
    }
    return this.#db;
  }

  #stmt(sql: string): StatementSync {
    const db = this.#conn();
    let s = this.#stmts.get(sql);
    if (s === undefined) {
      s = db.prepare(sql);
      this.#stmts.set(sql, s);
    }
    return s;
  }

  #writable(action: string): DatabaseSync {
    const db = this.#conn();
    if (this.#readOnly) {
      throw new KvfoldError("INVALID_STATE", `Cannot ${action}: store ${this.path} is read-only`);
    }
    return db;
  }

  /**
   * Runs one operation on the file: the one place where SQLite's own errors ("database disk image
   * is malformed", "no such column", an integer past 2^53, ...) become `KvfoldError`s naming it.
   */
  #guard<T>(action: string, fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      throw storeFailure(this.path, action, e);
    }
  }

  /**
   * Adds a document and all its chunks in one transaction (nothing is kept if anything fails)
   * and returns the document's id. A source already present is refused with "INVALID_STATE"
   * unless `replace` is true, which deletes the old document in the same transaction.
   *
   * @example
   * ```ts ignore
   * import { DocumentStore } from "./store.ts";
   * using store = DocumentStore.open("docs.kvfold");
   * const vectors = { rows: 1, hidden: 2, data: new Float32Array([1, 2]) };
   * const id = store.addDocument({ source: "a.md", chunks: [{ text: "alpha", tokens: 3, vectors }] }, { replace: true });
   * console.log(id);
   * ```
   */
  addDocument(doc: NewDocument, options: { replace?: boolean } = {}): number {
    const db = this.#writable("add document");
    const { source, group, metaJson, chunks } = checkNewDocument(doc);
    const action = `add document ${source} to store`;
    return this.#guard(action, () => {
      db.exec("BEGIN IMMEDIATE");
      try {
        const id = this.#insert(db, action, { source, group, metaJson, chunks }, options.replace === true);
        db.exec("COMMIT");
        return id;
      } catch (e) {
        rollback(db);
        throw e;
      }
    });
  }

  /** The body of `addDocument`, inside its transaction. */
  #insert(
    db: DatabaseSync,
    action: string,
    doc: { source: string; group?: string; metaJson: string; chunks: NewChunk[] },
    replace: boolean,
  ): number {
    const { source, chunks } = doc;
    const values = new StoreValues(this.path, action);
    if (!this.#checksums) {
      // A store written before checksums: the first write adds the column (see SCHEMA).
      addChecksumColumn(db);
      this.#checksums = true;
    }
    const existing = this.#stmt("SELECT id FROM documents WHERE source = ?").get(source);
    if (existing !== undefined) {
      if (!replace) {
        throw new KvfoldError(
          "INVALID_STATE",
          `Cannot add document: source ${source} is already in the store (pass { replace: true } to replace it)`,
        );
      }
      this.#stmt("DELETE FROM documents WHERE id = ?").run(existing.id as SQLInputValue);
    }
    const res = this.#stmt("INSERT INTO documents (source, grp, metadata, created_at) VALUES (?, ?, ?, ?)")
      .run(source, doc.group ?? null, doc.metaJson, new Date().toISOString());
    const documentId = values.int(res.lastInsertRowid, "documents.id", `document ${source}`, 1);
    // Chunk ids are chosen here (as SQLite would: one past the largest) because the checksum covers
    // them; the transaction holds the write lock, so no other writer takes them meanwhile.
    const last = this.#stmt("SELECT MAX(id) AS id FROM chunks").get()!.id;
    let chunkId = (values.intOrNull(last, "chunks.id", "the last chunk", 0) ?? 0) + 1;
    const insChunk = this.#stmt(
      `INSERT INTO chunks (id, document_id, ordinal, text, tokens, length, rows, hidden, dtype, vectors, checksum)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'bf16', ?, ?)`,
    );
    const insPosting = this.#stmt("INSERT INTO postings (term, chunk_id, tf) VALUES (?, ?, ?)");
    chunks.forEach((chunk, ordinal) => {
      const where = `chunk ${ordinal} of ${source}`;
      checkNewChunk(chunk, where);
      const blob = encodeVectors(chunk.vectors, where);
      const terms = tokenize(chunk.text);
      const { rows, hidden } = chunk.vectors;
      const record = {
        id: chunkId,
        documentId,
        ordinal,
        tokens: chunk.tokens,
        length: terms.length,
        rows,
        hidden,
        dtype: "bf16",
        text: chunk.text,
        vectors: blob,
      };
      insChunk.run(
        chunkId,
        documentId,
        ordinal,
        chunk.text,
        chunk.tokens,
        terms.length,
        rows,
        hidden,
        blob,
        chunkChecksum(record),
      );
      for (const [term, n] of termFrequencies(terms)) insPosting.run(term, chunkId, n);
      chunkId++;
    });
    return documentId;
  }

  /**
   * Whether a document with this source is stored.
   *
   * @example
   * ```ts ignore
   * import { DocumentStore } from "./store.ts";
   * using store = DocumentStore.open("docs.kvfold");
   * console.log(store.hasDocument("a.md"));
   * ```
   */
  hasDocument(source: string): boolean {
    return this.#guard(
      "look up document in store",
      () => this.#stmt("SELECT 1 AS x FROM documents WHERE source = ?").get(source) !== undefined,
    );
  }

  /**
   * The document stored under `source`, with the ids of its chunks in ordinal order, or
   * `undefined` when there is none. Read in one statement, so a concurrent `replace` from another
   * connection yields either the old document or the new one, never a mix.
   *
   * @example
   * ```ts ignore
   * import { DocumentStore } from "./store.ts";
   * using store = DocumentStore.open("docs.kvfold");
   * const doc = store.getDocument("a.md");
   * if (doc !== undefined) {
   *   const chunks = store.getChunks(doc.chunkIds); // chunk 0 first
   *   console.log(doc.documentId, doc.tokens, doc.vectors, chunks.map((c) => c.text));
   * }
   * ```
   */
  getDocument(source: string): StoredDocument | undefined {
    this.#conn();
    if (typeof source !== "string") throw bad("Cannot get document: source must be a string");
    const action = `read document ${source} of store`;
    return this.#guard(action, () => {
      const rows = this.#stmt(
        `SELECT d.id, d.source, d.grp, d.metadata, c.id AS chunk_id, c.ordinal, c.tokens, c.rows
         FROM documents d LEFT JOIN chunks c ON c.document_id = d.id
         WHERE d.source = ? ORDER BY c.ordinal`,
      ).all(source);
      return documentFromRows(this.path, source, rows);
    });
  }

  /**
   * The sources of all documents, in the order they were added (document id order).
   *
   * @example
   * ```ts ignore
   * import { DocumentStore } from "./store.ts";
   * using store = DocumentStore.open("docs.kvfold");
   * console.log(store.listSources());
   * ```
   */
  listSources(): string[] {
    const action = "list documents of store";
    return this.#guard(action, () => {
      const v = new StoreValues(this.path, action);
      return this.#stmt("SELECT id, source FROM documents ORDER BY id").all()
        .map((r) => v.text(r.source, "documents.source", `document ${r.id}`));
    });
  }

  /**
   * Removes a document, its chunks and their index entries; returns whether it existed.
   *
   * @example
   * ```ts ignore
   * import { DocumentStore } from "./store.ts";
   * using store = DocumentStore.open("docs.kvfold");
   * console.log(store.removeDocument("a.md"));
   * ```
   */
  removeDocument(source: string): boolean {
    this.#writable("remove document");
    return this.#guard(`remove document ${source} from store`, () => {
      const r = this.#stmt("DELETE FROM documents WHERE source = ?").run(source);
      return Number(r.changes) > 0;
    });
  }

  /**
   * BM25 (k1 = 1.2, b = 0.75) search over chunk text, best first. Terms are lowercase runs of
   * Unicode letters and digits; each distinct query term adds
   * `idf · tf·(k1+1) / (tf + k1·(1 − b + b·len/avglen))` with
   * `idf = ln(1 + (N − df + 0.5)/(df + 0.5))`, where N, df and avglen are over all chunks of the
   * store (the `group` option filters results, not statistics). Ties go to the lower chunk id.
   *
   * @example
   * ```ts ignore
   * import { DocumentStore } from "./store.ts";
   * using store = DocumentStore.open("docs.kvfold");
   * const hits = store.retrieve("rotary embeddings", { k: 3, group: "papers" });
   * console.log(hits.map((h) => h.chunkId));
   * ```
   */
  retrieve(query: string, options: { k?: number; group?: string } = {}): RetrievedChunk[] {
    this.#conn();
    if (typeof query !== "string") throw bad("Cannot retrieve: query must be a string");
    const k = options.k ?? 4;
    if (!Number.isSafeInteger(k) || k < 1) {
      throw bad(`Cannot retrieve: k must be a positive integer, got ${k}`);
    }
    const terms = [...new Set(tokenize(query))];
    if (terms.length === 0) return [];
    const action = "retrieve from store";
    const ranked = this.#guard(
      action,
      () => rankBm25((sql) => this.#stmt(sql), terms, k, options.group, new StoreValues(this.path, action)),
    );
    return ranked.map(([id, score]) =>
      this.#guard(`read chunk ${id} of store`, () => this.#chunk(id, score))
    );
  }

  /**
   * Reads chunks by id (as found by an external retriever), in the order given, with score 0.
   * An unknown id throws "INVALID_ARGUMENT"; a chunk whose row does not match its checksum, or
   * holds values kvfold never writes, throws "FORMAT" naming the chunk and its document.
   *
   * @example
   * ```ts ignore
   * import { DocumentStore } from "./store.ts";
   * using store = DocumentStore.open("docs.kvfold");
   * const [chunk] = store.getChunks([1]);
   * console.log(chunk.text, chunk.vectors.rows);
   * ```
   */
  getChunks(chunkIds: readonly number[]): RetrievedChunk[] {
    this.#conn();
    if (!Array.isArray(chunkIds)) throw bad("Cannot get chunks: expected an array of chunk ids");
    return chunkIds.map((id) => {
      if (!Number.isSafeInteger(id)) throw bad(`Cannot get chunks: ${id} is not a chunk id`);
      return this.#guard(`read chunk ${id} of store`, () => this.#chunk(id, 0));
    });
  }

  #chunk(id: number, score: number): RetrievedChunk {
    const r = this.#stmt(chunkSelect(this.#checksums)).get(id);
    if (r === undefined) throw bad(`Cannot get chunks: chunk ${id} does not exist`);
    return chunkFromRow(this.path, r, id, score);
  }

  /**
   * Counts of documents, chunks, tokens in, vectors kept and bytes. A count column holding what
   * kvfold never writes (a negative count, text) throws "FORMAT" naming the column and the chunk.
   *
   * @example
   * ```ts ignore
   * import { DocumentStore } from "./store.ts";
   * using store = DocumentStore.open("docs.kvfold");
   * const s = store.stats();
   * console.log(`${s.tokensIn} tokens → ${s.vectorsKept} vectors (${s.ratio.toFixed(1)}×)`);
   * ```
   */
  stats(): StoreStats {
    this.#conn();
    const action = "read store stats";
    return this.#guard(action, () => {
      const v = new StoreValues(this.path, action);
      // One scan; the smallest id of a row with an impossible count finds it for the message.
      const c = this.#stmt(
        `SELECT COUNT(*) AS chunks, COALESCE(SUM(tokens), 0) AS tokens_in, COALESCE(SUM(rows), 0) AS kept,
         COALESCE(SUM(LENGTH(vectors)), 0) AS bytes,
         MIN(CASE WHEN typeof(tokens) = 'integer' AND tokens >= 0 THEN NULL ELSE id END) AS bad_tokens,
         MIN(CASE WHEN typeof(rows) = 'integer' AND rows >= 1 THEN NULL ELSE id END) AS bad_rows
         FROM chunks`,
      ).get()!;
      for (const [key, column, min] of [["bad_tokens", "tokens", 0], ["bad_rows", "rows", 1]] as const) {
        if (c[key] === null) continue;
        const id = v.int(c[key], "chunks.id", "a chunk", 1);
        const value = this.#stmt(`SELECT ${column} AS x FROM chunks WHERE id = ?`).get(id)!.x;
        v.int(value, `chunks.${column}`, `chunk ${id}`, min);
      }
      const documents = v.int(
        this.#stmt("SELECT COUNT(*) AS n FROM documents").get()!.n,
        "COUNT(*)",
        "documents",
        0,
      );
      const groups = this.#stmt(
        "SELECT id, grp FROM documents WHERE grp IS NOT NULL GROUP BY grp ORDER BY grp",
      )
        .all().map((r) => v.text(r.grp, "documents.grp", `document ${r.id}`));
      const pageCount = v.int(this.#stmt("PRAGMA page_count").get()!.page_count, "page_count", "the file", 0);
      const pageSize = v.int(this.#stmt("PRAGMA page_size").get()!.page_size, "page_size", "the file", 1);
      const tokensIn = v.int(c.tokens_in, "SUM(chunks.tokens)", "chunks", 0);
      const vectorsKept = v.int(c.kept, "SUM(chunks.rows)", "chunks", 0);
      return {
        documents,
        chunks: v.int(c.chunks, "COUNT(*)", "chunks", 0),
        tokensIn,
        vectorsKept,
        ratio: vectorsKept > 0 ? tokensIn / vectorsKept : 0,
        vectorBytes: v.int(c.bytes, "SUM(LENGTH(chunks.vectors))", "chunks", 0),
        fileBytes: pageCount * pageSize,
        groups,
      };
    });
  }

  /**
   * Closes the store; later calls other than `close` throw "INVALID_STATE".
   *
   * @example
   * ```ts ignore
   * import { DocumentStore } from "./store.ts";
   * const store = DocumentStore.open("docs.kvfold");
   * store.close();
   * ```
   */
  close(): void {
    if (this.#db === null) return;
    this.#stmts.clear();
    const db = this.#db;
    this.#db = null;
    this.#guard("close store", () => db.close());
  }

  /** Closes the store (for `using`). */
  [Symbol.dispose](): void {
    this.close();
  }
}

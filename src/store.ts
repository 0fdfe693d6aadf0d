/**
 * The LLoCO document store: one SQLite file holding documents, their chunks with text, each
 * chunk's compressed summary vectors as little-endian bf16 blobs, the adapter group of each
 * document, metadata and a schema version, plus a BM25 inverted index over chunk text.
 *
 * @module
 */

import { DatabaseSync, type SQLInputValue, type StatementSync } from "node:sqlite";
import { KvfoldError } from "./errors.ts";
import { bf16ToF32, f32ToBf16 } from "./safetensors.ts";

/** The schema version this kvfold writes and reads. */
const SCHEMA_VERSION = 1;
/** BM25 term-frequency saturation. */
const BM25_K1 = 1.2;
/** BM25 length normalisation. */
const BM25_B = 0.75;

/**
 * A chunk's summary vectors: `rows` vectors of `hidden` values each, row-major.
 *
 * @example
 * ```ts
 * import type { StoredVectors } from "./store.ts";
 * const v: StoredVectors = { rows: 1, hidden: 2, data: new Float32Array([0.5, -1]) };
 * console.log(v.data.length === v.rows * v.hidden); // true
 * ```
 */
export interface StoredVectors {
  /** Number of vectors (compressed tokens kept). */
  rows: number;
  /** Width of each vector. */
  hidden: number;
  /** `rows * hidden` values, row-major. */
  data: Float32Array;
}

/**
 * Row-wise concatenation of vector blocks of one width (a multi-chunk document's payload).
 *
 * @example
 * ```ts
 * import { concatVectors } from "./store.ts";
 * const v = concatVectors([
 *   { rows: 1, hidden: 2, data: new Float32Array([1, 2]) },
 *   { rows: 1, hidden: 2, data: new Float32Array([3, 4]) },
 * ]);
 * console.log(v.rows, [...v.data]); // 2 [ 1, 2, 3, 4 ]
 * ```
 */
export function concatVectors(blocks: readonly StoredVectors[]): StoredVectors {
  if (blocks.length === 1) return blocks[0];
  const hidden = blocks[0]?.hidden ?? 0;
  let rows = 0;
  for (const b of blocks) {
    if (b.hidden !== hidden) {
      throw new RangeError(`Cannot join vectors: widths ${hidden} and ${b.hidden} differ`);
    }
    rows += b.rows;
  }
  const data = new Float32Array(rows * hidden);
  let offset = 0;
  for (const b of blocks) {
    data.set(b.data, offset);
    offset += b.data.length;
  }
  return { rows, hidden, data };
}

/**
 * A chunk to add: its text, how many tokens it had before compression, and its vectors.
 *
 * @example
 * ```ts
 * import type { NewChunk } from "./store.ts";
 * const c: NewChunk = { text: "hello", tokens: 1, vectors: { rows: 1, hidden: 1, data: new Float32Array([1]) } };
 * console.log(c.tokens); // 1
 * ```
 */
export interface NewChunk {
  /** The chunk's text (indexed for BM25). */
  text: string;
  /** Tokens the chunk had before compression (non-negative integer). */
  tokens: number;
  /** The compressed summary vectors. */
  vectors: StoredVectors;
}

/**
 * A document to add: a unique source name, an optional adapter group, metadata and chunks.
 *
 * @example
 * ```ts
 * import type { NewDocument } from "./store.ts";
 * const d: NewDocument = { source: "a.txt", group: "papers", chunks: [] };
 * console.log(d.source); // "a.txt"
 * ```
 */
export interface NewDocument {
  /** Unique name of the document (a path, a URL, ...). */
  source: string;
  /** The adapter group the document belongs to. */
  group?: string;
  /** JSON-serialisable metadata. */
  metadata?: Record<string, unknown>;
  /** At least one chunk, in order. */
  chunks: NewChunk[];
}

/**
 * A chunk read back from the store, with its document's source, group and metadata.
 *
 * @example
 * ```ts
 * import type { RetrievedChunk } from "./store.ts";
 * function show(c: RetrievedChunk): string {
 *   return `${c.source}#${c.ordinal} (${c.score.toFixed(3)})`;
 * }
 * console.log(typeof show); // "function"
 * ```
 */
export interface RetrievedChunk {
  /** The chunk's id. */
  chunkId: number;
  /** The id of the chunk's document. */
  documentId: number;
  /** The document's source. */
  source: string;
  /** Position of the chunk in its document, from 0. */
  ordinal: number;
  /** The chunk's text. */
  text: string;
  /** Tokens the chunk had before compression. */
  tokens: number;
  /** The document's adapter group, or null. */
  group: string | null;
  /** BM25 score from {@linkcode DocumentStore.retrieve}; 0 from {@linkcode DocumentStore.getChunks}. */
  score: number;
  /** The vectors, converted back from bf16. */
  vectors: StoredVectors;
  /** The document's metadata. */
  metadata: Record<string, unknown>;
}

/**
 * A stored document as {@linkcode DocumentStore.getDocument} reads it: its id, source, group and
 * metadata, the ids of its chunks in order, and the totals of their tokens and vector rows. Read the
 * chunks themselves with {@linkcode DocumentStore.getChunks}.
 *
 * @example
 * ```ts
 * import type { StoredDocument } from "./store.ts";
 * const d: StoredDocument = {
 *   documentId: 1, source: "a.md", group: null, metadata: {}, chunkIds: [1, 2], tokens: 30, vectors: 4,
 * };
 * console.log(d.chunkIds.length); // 2
 * ```
 */
export interface StoredDocument {
  /** The document's id. */
  documentId: number;
  /** The document's source. */
  source: string;
  /** The document's adapter group, or null. */
  group: string | null;
  /** The document's metadata. */
  metadata: Record<string, unknown>;
  /** Ids of the document's chunks, in ordinal order (chunk 0 first). */
  chunkIds: number[];
  /** Sum of the chunks' `tokens` (tokens before compression). */
  tokens: number;
  /** Sum of the chunks' vector `rows` (summary vectors kept). */
  vectors: number;
}

/**
 * Counts describing a store.
 *
 * @example
 * ```ts
 * import type { StoreStats } from "./store.ts";
 * const s: StoreStats = {
 *   documents: 0, chunks: 0, tokensIn: 0, vectorsKept: 0, ratio: 0, vectorBytes: 0, fileBytes: 0, groups: [],
 * };
 * console.log(s.ratio); // 0
 * ```
 */
export interface StoreStats {
  /** Number of documents. */
  documents: number;
  /** Number of chunks. */
  chunks: number;
  /** Sum of the chunks' `tokens`. */
  tokensIn: number;
  /** Sum of the chunks' vector `rows`. */
  vectorsKept: number;
  /** `tokensIn / vectorsKept` (0 when no vectors are kept). */
  ratio: number;
  /** Bytes of vector blobs (2 per value). */
  vectorBytes: number;
  /** Size of the database (page_count × page_size, WAL content included). */
  fileBytes: number;
  /** Distinct adapter groups, sorted. */
  groups: string[];
}

/** Lowercase runs of Unicode letters and digits. */
function tokenize(text: string): string[] {
  return text.toLowerCase().match(/[\p{L}\p{N}]+/gu) ?? [];
}

function bad(message: string): KvfoldError {
  return new KvfoldError("INVALID_ARGUMENT", message);
}

function isNonNegativeInt(n: unknown): n is number {
  return typeof n === "number" && Number.isSafeInteger(n) && n >= 0;
}

/** Validates and encodes vectors as little-endian bf16 (round to nearest even). */
function encodeVectors(v: StoredVectors, where: string): Uint8Array {
  if (v === null || typeof v !== "object") throw bad(`Cannot add document: ${where} has no vectors`);
  const { rows, hidden, data } = v;
  if (!isNonNegativeInt(rows) || rows < 1 || !isNonNegativeInt(hidden) || hidden < 1) {
    throw bad(
      `Cannot add document: ${where} vectors need positive integer rows and hidden, got ${rows}×${hidden}`,
    );
  }
  if (!(data instanceof Float32Array)) {
    throw bad(`Cannot add document: ${where} vectors data is not a Float32Array`);
  }
  if (data.length !== rows * hidden) {
    throw bad(
      `Cannot add document: ${where} vectors hold ${data.length} values, expected rows*hidden = ${
        rows * hidden
      }`,
    );
  }
  const out = new Uint8Array(data.length * 2);
  const view = new DataView(out.buffer);
  for (let i = 0; i < data.length; i++) {
    const x = data[i];
    if (!Number.isFinite(x)) throw bad(`Cannot add document: ${where} vector value ${i} is ${x}`);
    const bits = f32ToBf16(x);
    if ((bits & 0x7f80) === 0x7f80) {
      throw bad(`Cannot add document: ${where} vector value ${i} (${x}) overflows bf16`);
    }
    view.setUint16(i * 2, bits, true);
  }
  return out;
}

function decodeVectors(blob: Uint8Array, rows: number, hidden: number): StoredVectors {
  const n = rows * hidden;
  if (blob.byteLength !== n * 2) {
    throw new KvfoldError(
      "FORMAT",
      `Cannot read chunk vectors: blob has ${blob.byteLength} bytes, expected ${n * 2}`,
    );
  }
  const view = new DataView(blob.buffer, blob.byteOffset, blob.byteLength);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = bf16ToF32(view.getUint16(i * 2, true));
  return { rows, hidden, data };
}

const SCHEMA = `
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE documents (
  id INTEGER PRIMARY KEY,
  source TEXT NOT NULL UNIQUE,
  grp TEXT,
  metadata TEXT NOT NULL DEFAULT '{}',
  created_at TEXT NOT NULL
);
CREATE INDEX documents_grp ON documents (grp);
CREATE TABLE chunks (
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
  UNIQUE (document_id, ordinal)
);
CREATE TABLE postings (
  term TEXT NOT NULL,
  chunk_id INTEGER NOT NULL REFERENCES chunks (id) ON DELETE CASCADE,
  tf INTEGER NOT NULL,
  PRIMARY KEY (term, chunk_id)
) WITHOUT ROWID;
CREATE INDEX postings_term ON postings (term);
CREATE INDEX postings_chunk ON postings (chunk_id);
`;

const CHUNK_SELECT = `SELECT c.id AS chunk_id, c.document_id, d.source, c.ordinal, c.text, c.tokens, d.grp,
  c.rows, c.hidden, c.dtype, c.vectors, d.metadata
  FROM chunks c JOIN documents d ON d.id = c.document_id WHERE c.id = ?`;

/**
 * An open LLoCO store. Open with {@linkcode DocumentStore.open}; close with `close()` or `using`.
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
  readonly #stmts = new Map<string, StatementSync>();

  private constructor(path: string, db: DatabaseSync, readOnly: boolean) {
    this.path = path;
    this.#db = db;
    this.#readOnly = readOnly;
  }

  /**
   * Opens (creating when missing, unless `readOnly`) the store at `path`.
   *
   * Throws `KvfoldError` "FORMAT" when the file is not SQLite or not a kvfold store,
   * "UNSUPPORTED" when its schema version is newer than this kvfold's, "IO" when it cannot be opened.
   *
   * @example
   * ```ts ignore
   * import { DocumentStore } from "./store.ts";
   * const store = DocumentStore.open("docs.kvfold", { readOnly: true });
   * console.log(store.stats().documents);
   * store.close();
   * ```
   */
  static open(path: string, options: { readOnly?: boolean } = {}): DocumentStore {
    if (typeof path !== "string" || path === "") {
      throw bad("Cannot open store: path must be a non-empty string");
    }
    const readOnly = options.readOnly === true;
    let db: DatabaseSync;
    try {
      db = new DatabaseSync(path, { readOnly });
    } catch (e) {
      throw new KvfoldError("IO", `Cannot open store: ${path}: ${(e as Error).message}`, { cause: e });
    }
    try {
      DocumentStore.#prepare(db, path, readOnly);
    } catch (e) {
      try {
        db.close();
      } catch { /* already failing */ }
      if (e instanceof KvfoldError) throw e;
      const msg = (e as Error).message ?? String(e);
      if (/not a database|file is encrypted|malformed/i.test(msg)) {
        throw new KvfoldError("FORMAT", `Cannot open store: ${path} is not a SQLite database (${msg})`, {
          cause: e,
        });
      }
      throw new KvfoldError("IO", `Cannot open store: ${path}: ${msg}`, { cause: e });
    }
    return new DocumentStore(path, db, readOnly);
  }

  static #prepare(db: DatabaseSync, path: string, readOnly: boolean): void {
    // Reading the schema forces SQLite to read the header: a non-SQLite file fails here.
    const tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all()
      .map((r) => String(r.name));
    db.exec("PRAGMA foreign_keys = ON");
    db.exec("PRAGMA busy_timeout = 5000");
    if (tables.length === 0) {
      if (readOnly) {
        throw new KvfoldError(
          "FORMAT",
          `Cannot open store: ${path} is empty and the store was opened read-only`,
        );
      }
      db.exec("PRAGMA journal_mode = WAL");
      db.exec("BEGIN IMMEDIATE");
      try {
        db.exec(SCHEMA);
        const put = db.prepare("INSERT INTO meta (key, value) VALUES (?, ?)");
        put.run("schema_version", String(SCHEMA_VERSION));
        put.run("created_by", "kvfold");
        put.run("created_at", new Date().toISOString());
        db.exec("COMMIT");
      } catch (e) {
        db.exec("ROLLBACK");
        throw e;
      }
      return;
    }
    if (!tables.includes("meta")) {
      throw new KvfoldError(
        "FORMAT",
        `Cannot open store: ${path} is a SQLite file but not a kvfold store (no meta table)`,
      );
    }
    const row = db.prepare("SELECT value FROM meta WHERE key = 'schema_version'").get();
    const version = row === undefined ? NaN : Number(row.value);
    if (!Number.isInteger(version) || version < 1) {
      throw new KvfoldError("FORMAT", `Cannot open store: ${path} has no valid schema_version in meta`);
    }
    if (version > SCHEMA_VERSION) {
      throw new KvfoldError(
        "UNSUPPORTED",
        `Cannot open store: ${path}: schema version ${version} is newer than this kvfold (${SCHEMA_VERSION}); upgrade kvfold`,
      );
    }
    for (const t of ["documents", "chunks", "postings"]) {
      if (!tables.includes(t)) throw new KvfoldError("FORMAT", `Cannot open store: ${path} lacks table ${t}`);
    }
    if (!readOnly) db.exec("PRAGMA journal_mode = WAL");
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
    if (doc === null || typeof doc !== "object") throw bad("Cannot add document: expected an object");
    const { source, group, metadata, chunks } = doc;
    if (typeof source !== "string" || source === "") {
      throw bad("Cannot add document: source must be a non-empty string");
    }
    if (group !== undefined && typeof group !== "string") {
      throw bad("Cannot add document: group must be a string");
    }
    if (!Array.isArray(chunks) || chunks.length === 0) {
      throw bad(`Cannot add document ${source}: it has no chunks`);
    }
    let metaJson = "{}";
    if (metadata !== undefined) {
      if (metadata === null || typeof metadata !== "object" || Array.isArray(metadata)) {
        throw bad(`Cannot add document ${source}: metadata must be a plain object`);
      }
      try {
        metaJson = JSON.stringify(metadata);
      } catch (e) {
        throw bad(
          `Cannot add document ${source}: metadata is not JSON-serialisable (${(e as Error).message})`,
        );
      }
    }
    db.exec("BEGIN IMMEDIATE");
    try {
      const existing = this.#stmt("SELECT id FROM documents WHERE source = ?").get(source);
      if (existing !== undefined) {
        if (options.replace !== true) {
          throw new KvfoldError(
            "INVALID_STATE",
            `Cannot add document: source ${source} is already in the store (pass { replace: true } to replace it)`,
          );
        }
        this.#stmt("DELETE FROM documents WHERE id = ?").run(existing.id as SQLInputValue);
      }
      const res = this.#stmt("INSERT INTO documents (source, grp, metadata, created_at) VALUES (?, ?, ?, ?)")
        .run(source, group ?? null, metaJson, new Date().toISOString());
      const documentId = Number(res.lastInsertRowid);
      const insChunk = this.#stmt(
        `INSERT INTO chunks (document_id, ordinal, text, tokens, length, rows, hidden, dtype, vectors)
         VALUES (?, ?, ?, ?, ?, ?, ?, 'bf16', ?)`,
      );
      const insPosting = this.#stmt("INSERT INTO postings (term, chunk_id, tf) VALUES (?, ?, ?)");
      chunks.forEach((chunk, ordinal) => {
        const where = `chunk ${ordinal} of ${source}`;
        if (chunk === null || typeof chunk !== "object") {
          throw bad(`Cannot add document: ${where} is not an object`);
        }
        if (typeof chunk.text !== "string") throw bad(`Cannot add document: ${where} text must be a string`);
        if (!isNonNegativeInt(chunk.tokens)) {
          throw bad(
            `Cannot add document: ${where} tokens must be a non-negative integer, got ${chunk.tokens}`,
          );
        }
        const blob = encodeVectors(chunk.vectors, where);
        const terms = tokenize(chunk.text);
        const r = insChunk.run(
          documentId,
          ordinal,
          chunk.text,
          chunk.tokens,
          terms.length,
          chunk.vectors.rows,
          chunk.vectors.hidden,
          blob,
        );
        const chunkId = Number(r.lastInsertRowid);
        const tf = new Map<string, number>();
        for (const t of terms) tf.set(t, (tf.get(t) ?? 0) + 1);
        for (const [term, n] of tf) insPosting.run(term, chunkId, n);
      });
      db.exec("COMMIT");
      return documentId;
    } catch (e) {
      try {
        db.exec("ROLLBACK");
      } catch { /* no transaction left to roll back */ }
      throw e;
    }
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
    return this.#stmt("SELECT 1 AS x FROM documents WHERE source = ?").get(source) !== undefined;
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
    const rows = this.#stmt(
      `SELECT d.id, d.source, d.grp, d.metadata, c.id AS chunk_id, c.tokens, c.rows
       FROM documents d LEFT JOIN chunks c ON c.document_id = d.id
       WHERE d.source = ? ORDER BY c.ordinal`,
    ).all(source);
    if (rows.length === 0) return undefined;
    const first = rows[0];
    const doc: StoredDocument = {
      documentId: Number(first.id),
      source: String(first.source),
      group: first.grp === null ? null : String(first.grp),
      metadata: JSON.parse(String(first.metadata)) as Record<string, unknown>,
      chunkIds: [],
      tokens: 0,
      vectors: 0,
    };
    for (const r of rows) {
      if (r.chunk_id === null) continue; // a document with no chunks (LEFT JOIN): none to list
      doc.chunkIds.push(Number(r.chunk_id));
      doc.tokens += Number(r.tokens);
      doc.vectors += Number(r.rows);
    }
    return doc;
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
    const r = this.#stmt("DELETE FROM documents WHERE source = ?").run(source);
    return Number(r.changes) > 0;
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
    const corpus = this.#stmt("SELECT COUNT(*) AS n, COALESCE(AVG(length), 0) AS avg FROM chunks").get()!;
    const n = Number(corpus.n);
    const avg = Number(corpus.avg);
    if (n === 0) return [];
    const dfStmt = this.#stmt("SELECT COUNT(*) AS df FROM postings WHERE term = ?");
    const postingsStmt = options.group === undefined
      ? this.#stmt(
        "SELECT p.chunk_id, p.tf, c.length FROM postings p JOIN chunks c ON c.id = p.chunk_id WHERE p.term = ?",
      )
      : this.#stmt(
        `SELECT p.chunk_id, p.tf, c.length FROM postings p JOIN chunks c ON c.id = p.chunk_id
         JOIN documents d ON d.id = c.document_id WHERE p.term = ? AND d.grp = ?`,
      );
    const scores = new Map<number, number>();
    for (const term of terms) {
      const df = Number(dfStmt.get(term)!.df);
      if (df === 0) continue;
      const idf = Math.log(1 + (n - df + 0.5) / (df + 0.5));
      const rows = options.group === undefined
        ? postingsStmt.all(term)
        : postingsStmt.all(term, options.group);
      for (const row of rows) {
        const tf = Number(row.tf);
        const len = Number(row.length);
        const norm = avg > 0 ? len / avg : 0;
        const s = idf * (tf * (BM25_K1 + 1)) / (tf + BM25_K1 * (1 - BM25_B + BM25_B * norm));
        const id = Number(row.chunk_id);
        scores.set(id, (scores.get(id) ?? 0) + s);
      }
    }
    const ranked = [...scores].sort((a, b) => b[1] - a[1] || a[0] - b[0]).slice(0, k);
    return ranked.map(([id, score]) => this.#chunk(id, score));
  }

  /**
   * Reads chunks by id (as found by an external retriever), in the order given, with score 0.
   * An unknown id throws "INVALID_ARGUMENT".
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
      return this.#chunk(id, 0);
    });
  }

  #chunk(id: number, score: number): RetrievedChunk {
    const r = this.#stmt(CHUNK_SELECT).get(id);
    if (r === undefined) throw bad(`Cannot get chunks: chunk ${id} does not exist`);
    if (r.dtype !== "bf16") {
      throw new KvfoldError(
        "UNSUPPORTED",
        `Cannot read chunk ${id}: vector dtype ${r.dtype} is not supported`,
      );
    }
    const rows = Number(r.rows);
    const hidden = Number(r.hidden);
    return {
      chunkId: Number(r.chunk_id),
      documentId: Number(r.document_id),
      source: String(r.source),
      ordinal: Number(r.ordinal),
      text: String(r.text),
      tokens: Number(r.tokens),
      group: r.grp === null ? null : String(r.grp),
      score,
      vectors: decodeVectors(r.vectors as Uint8Array, rows, hidden),
      metadata: JSON.parse(String(r.metadata)) as Record<string, unknown>,
    };
  }

  /**
   * Counts of documents, chunks, tokens in, vectors kept and bytes.
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
    const db = this.#conn();
    const c = this.#stmt(
      `SELECT COUNT(*) AS chunks, COALESCE(SUM(tokens), 0) AS tokens_in, COALESCE(SUM(rows), 0) AS kept,
       COALESCE(SUM(LENGTH(vectors)), 0) AS bytes FROM chunks`,
    ).get()!;
    const documents = Number(this.#stmt("SELECT COUNT(*) AS n FROM documents").get()!.n);
    const groups = this.#stmt("SELECT DISTINCT grp FROM documents WHERE grp IS NOT NULL ORDER BY grp").all()
      .map((r) => String(r.grp));
    const pageCount = Number(db.prepare("PRAGMA page_count").get()!.page_count);
    const pageSize = Number(db.prepare("PRAGMA page_size").get()!.page_size);
    const tokensIn = Number(c.tokens_in);
    const vectorsKept = Number(c.kept);
    return {
      documents,
      chunks: Number(c.chunks),
      tokensIn,
      vectorsKept,
      ratio: vectorsKept > 0 ? tokensIn / vectorsKept : 0,
      vectorBytes: Number(c.bytes),
      fileBytes: pageCount * pageSize,
      groups,
    };
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
    this.#db.close();
    this.#db = null;
  }

  /** Closes the store (for `using`). */
  [Symbol.dispose](): void {
    this.close();
  }
}

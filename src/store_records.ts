/**
 * The records a {@linkcode DocumentStore} takes and gives (documents, chunks, vectors, stats) and
 * the bf16 encoding of vectors in its blobs. Import them from `store.ts`, which re-exports them.
 *
 * @module
 */

import { KvfoldError } from "./errors.ts";
import { bf16ToF32, f32ToBf16 } from "./formats/safetensors.ts";

function bad(message: string): KvfoldError {
  return new KvfoldError("INVALID_ARGUMENT", message);
}

function isNonNegativeInt(n: unknown): n is number {
  return typeof n === "number" && Number.isSafeInteger(n) && n >= 0;
}

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

/** Validates and encodes vectors as little-endian bf16 (round to nearest even). */
export function encodeVectors(v: StoredVectors, where: string): Uint8Array {
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

/** Decodes a blob of `rows * hidden` bf16 values (its length checked by the caller). */
export function decodeVectors(blob: Uint8Array, rows: number, hidden: number): Float32Array {
  const n = rows * hidden;
  const view = new DataView(blob.buffer, blob.byteOffset, blob.byteLength);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = bf16ToF32(view.getUint16(i * 2, true));
  return data;
}

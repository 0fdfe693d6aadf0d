/**
 * The records a {@linkcode DocumentStore} takes and gives (documents, chunks, vectors, stats) and
 * the bf16 encoding of vectors in its blobs. Import them from `store.ts`, which re-exports them.
 *
 * @module
 */

import { KvfoldError } from "./errors.ts";
import { f32ToBf16 } from "./formats/safetensors.ts";

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
  /**
   * `rows * hidden` values, row-major. On vectors read from a store, decoded from {@link bf16}
   * when first read (the answer path never reads it).
   */
  data: Float32Array;
  /**
   * The same values as the bf16 bits the store holds (`rows * hidden`, row-major), present on
   * vectors read from a store or joined by {@linkcode concatVectors} from such vectors. The answer
   * path passes these to the model as they are; vectors built in memory (f32 only) go as f32.
   * Not enumerable, so vectors compare and serialise as `{ rows, hidden, data }`.
   */
  readonly bf16?: Uint16Array;
}

/**
 * Vectors backed by bf16 bits: `bf16` as given, `data` widened to f32 on first read (exact: a
 * bf16 value is the top half of an f32).
 */
export function bf16Vectors(rows: number, hidden: number, bits: Uint16Array): StoredVectors {
  let data: Float32Array | undefined;
  const v = {
    rows,
    hidden,
    get data(): Float32Array {
      if (data === undefined) {
        const wide = new Uint32Array(bits.length);
        for (let i = 0; i < bits.length; i++) wide[i] = bits[i] << 16;
        data = new Float32Array(wide.buffer);
      }
      return data;
    },
    set data(value: Float32Array) {
      // A caller replacing the values: the bf16 bits no longer describe them.
      data = value;
      Object.defineProperty(v, "bf16", { value: undefined });
    },
  };
  Object.defineProperty(v, "bf16", { value: bits, enumerable: false, configurable: true });
  return v;
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
  // All from a store: join the 16-bit blocks (half the bytes, no widening). Any block built in
  // memory: join as f32, which holds the store's values exactly too.
  const bits = blocks.every((b) => b.bf16 !== undefined) ? new Uint16Array(rows * hidden) : undefined;
  const data = bits === undefined ? new Float32Array(rows * hidden) : undefined;
  let offset = 0;
  for (const b of blocks) {
    if (bits !== undefined) bits.set(b.bf16!, offset);
    else data!.set(b.data, offset);
    offset += b.rows * hidden;
  }
  return bits !== undefined ? bf16Vectors(rows, hidden, bits) : { rows, hidden, data: data! };
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
  /** The vectors as stored: `bf16` holds the stored bits, `data` their f32 values. */
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

/** Whether this machine stores a Uint16Array little-endian, as the blobs are written. */
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * Vectors of a blob of `rows * hidden` little-endian bf16 values (its length checked by the
 * caller): the bits as they are, viewed in place when aligned, `data` widened only when read.
 */
export function decodeVectors(blob: Uint8Array, rows: number, hidden: number): StoredVectors {
  const n = rows * hidden;
  let bits: Uint16Array;
  if (LITTLE_ENDIAN && blob.byteOffset % 2 === 0) {
    bits = new Uint16Array(blob.buffer, blob.byteOffset, n);
  } else {
    const view = new DataView(blob.buffer, blob.byteOffset, blob.byteLength);
    bits = new Uint16Array(n);
    for (let i = 0; i < n; i++) bits[i] = view.getUint16(i * 2, true);
  }
  return bf16Vectors(rows, hidden, bits);
}

/**
 * The checked parts of a document to add: a non-empty source, an optional string group, chunks,
 * and the metadata as JSON. Throws INVALID_ARGUMENT naming what is wrong.
 */
export function checkNewDocument(
  doc: NewDocument,
): { source: string; group?: string; metaJson: string; chunks: NewChunk[] } {
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
      throw bad(`Cannot add document ${source}: metadata is not JSON-serialisable (${(e as Error).message})`);
    }
  }
  return { source, group, metaJson, chunks };
}

/** Throws INVALID_ARGUMENT unless `chunk` has string text and a non-negative integer token count. */
export function checkNewChunk(chunk: NewChunk, where: string): void {
  if (chunk === null || typeof chunk !== "object") {
    throw bad(`Cannot add document: ${where} is not an object`);
  }
  if (typeof chunk.text !== "string") throw bad(`Cannot add document: ${where} text must be a string`);
  if (!isNonNegativeInt(chunk.tokens)) {
    throw bad(`Cannot add document: ${where} tokens must be a non-negative integer, got ${chunk.tokens}`);
  }
}

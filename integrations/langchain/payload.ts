/**
 * Compressed payloads on LangChain documents: `metadata.kvfold` holds a small, JSON-safe reference to
 * chunks of a kvfold {@linkcode DocumentStore}; the chunks' summary vectors themselves ride along in
 * memory under a symbol key, so they never reach JSON (tracing, serialisation) and are resolved from
 * the store again when a copy lost them.
 *
 * @module
 */

import { asStore, type DocumentStore, type RetrievedChunk, type StoreLike } from "../../mod.ts";
import type { DocumentInterface } from "./_deps.ts";

/**
 * What `document.metadata.kvfold` holds: where the document's summary vectors live in a kvfold store,
 * and how many there are.
 *
 * @example
 * ```ts
 * import type { KvfoldPayloadRef } from "./payload.ts";
 * const ref: KvfoldPayloadRef = {
 *   documentId: 1, storeSource: "ships.txt", chunkIds: [3], rows: 4, hidden: 64, tokens: 32, group: "demo",
 * };
 * console.log(JSON.stringify(ref).length < 200); // true
 * ```
 */
export interface KvfoldPayloadRef {
  /** The store's id of the document the chunks belong to. */
  documentId: number;
  /** The store's `source` of that document (for documents the compressor added, a content-derived key). */
  storeSource: string;
  /** The chunks whose vectors form the payload, in prefix order: `store.getChunks(chunkIds)`. */
  chunkIds: number[];
  /** Summary vectors over all those chunks: the prefix positions the payload takes. */
  rows: number;
  /** Width of each vector (the model's hidden size). */
  hidden: number;
  /** Tokens of text the vectors stand for. */
  tokens: number;
  /** The document's adapter group, or null. */
  group: string | null;
}

/** Where the in-memory chunks hang on a {@linkcode KvfoldPayloadRef}; symbol keys stay out of JSON. */
const CHUNKS: unique symbol = Symbol.for("kvfold.langchain.chunks") as never;

type RefWithChunks = KvfoldPayloadRef & { [CHUNKS]?: readonly RetrievedChunk[] };

/**
 * A reference to `chunks` (all of one store document, in prefix order), with the chunks attached in
 * memory unless `attach` is false.
 *
 * @example
 * ```ts
 * import { payloadRef } from "./payload.ts";
 * const chunk = {
 *   chunkId: 7, documentId: 2, source: "a.txt", ordinal: 0, text: "alpha", tokens: 5, group: null, score: 0,
 *   vectors: { rows: 1, hidden: 2, data: new Float32Array([1, 2]) }, metadata: {},
 * };
 * console.log(JSON.stringify(payloadRef([chunk])));
 * // {"documentId":2,"storeSource":"a.txt","chunkIds":[7],"rows":1,"hidden":2,"tokens":5,"group":null}
 * ```
 */
export function payloadRef(
  chunks: readonly RetrievedChunk[],
  options: { attach?: boolean } = {},
): KvfoldPayloadRef {
  if (chunks.length === 0) throw new RangeError("Cannot reference a payload: no chunks given");
  const first = chunks[0];
  const ref: RefWithChunks = {
    documentId: first.documentId,
    storeSource: first.source,
    chunkIds: chunks.map((c) => c.chunkId),
    rows: chunks.reduce((n, c) => n + c.vectors.rows, 0),
    hidden: first.vectors.hidden,
    tokens: chunks.reduce((n, c) => n + c.tokens, 0),
    group: first.group,
  };
  if (options.attach !== false) {
    Object.defineProperty(ref, CHUNKS, { value: chunks, enumerable: false });
  }
  return ref;
}

/**
 * The payload reference a document carries in `metadata.kvfold`, or undefined when it has none (a
 * plain text document).
 *
 * @example
 * ```ts
 * import { kvfoldPayloadOf } from "./payload.ts";
 * console.log(kvfoldPayloadOf({ pageContent: "plain", metadata: {} })); // undefined
 * ```
 */
export function kvfoldPayloadOf(document: DocumentInterface): KvfoldPayloadRef | undefined {
  const ref = document.metadata?.kvfold as Partial<KvfoldPayloadRef> | undefined;
  if (ref === null || typeof ref !== "object") return undefined;
  const ok = Number.isSafeInteger(ref.documentId) && Array.isArray(ref.chunkIds) && ref.chunkIds.length > 0 &&
    ref.chunkIds.every(Number.isSafeInteger) && Number.isSafeInteger(ref.rows) &&
    Number.isSafeInteger(ref.hidden);
  return ok ? ref as KvfoldPayloadRef : undefined;
}

/**
 * The chunks (with their summary vectors) behind a document's payload: the ones attached in memory
 * when present, else read from `store` by id. Undefined for a document without a payload. Throws a
 * `TypeError` when the document references vectors that are neither attached nor resolvable.
 *
 * @example
 * ```ts ignore
 * const [doc] = await retriever.invoke("which ship left?");
 * const chunks = resolveKvfoldChunks(doc, store);
 * console.log(chunks?.map((c) => c.vectors.rows));
 * ```
 */
export function resolveKvfoldChunks(
  document: DocumentInterface,
  store?: DocumentStore,
): readonly RetrievedChunk[] | undefined {
  const ref = kvfoldPayloadOf(document) as RefWithChunks | undefined;
  if (ref === undefined) return undefined;
  const attached = ref[CHUNKS];
  if (attached !== undefined) return attached;
  if (store === undefined) {
    throw new TypeError(
      `Cannot use the compressed payload of ${ref.storeSource}: its vectors are not attached (the document ` +
        "was copied or deserialised) and no store was given to read them from",
    );
  }
  return store.getChunks(ref.chunkIds);
}

/**
 * {@link resolveKvfoldChunks} for a store of any backend (`openStore(location)`): the attached
 * chunks, else the referenced ones read from `store`.
 *
 * @example
 * ```ts ignore
 * const [doc] = await retriever.invoke("which ship left?");
 * const chunks = await loadKvfoldChunks(doc, await openStore("postgres://kvfold@db/corpus"));
 * console.log(chunks?.map((c) => c.vectors.rows));
 * ```
 */
export async function loadKvfoldChunks(
  document: DocumentInterface,
  store?: StoreLike,
): Promise<readonly RetrievedChunk[] | undefined> {
  const ref = kvfoldPayloadOf(document) as RefWithChunks | undefined;
  if (ref === undefined) return undefined;
  const attached = ref[CHUNKS];
  if (attached !== undefined || store === undefined) return resolveKvfoldChunks(document);
  return await asStore(store).getChunks(ref.chunkIds);
}

/**
 * How a LlamaIndex node carries a kvfold compressed context: a JSON reference in its metadata
 * (`metadata.kvfold`, which survives serialisation) and the summary vectors themselves under a
 * symbol key of the same metadata object (skipped by `JSON.stringify`, `Object.keys` and so by
 * prompts and hashes, but kept by `{ ...metadata }` copies), so the LLM need not re-read the store.
 *
 * @module
 */

import { asStore, concatVectors, type DocumentStore, type StoredVectors, type StoreLike } from "../../mod.ts";
import type { BaseNode, NodeWithScore } from "./_deps.ts";
import { rememberPayloadText } from "../_payload_text.ts";

export { concatVectors };

/**
 * Summary vectors to place before a prompt, with where they came from.
 * A kvfold `RetrievedChunk` is one.
 *
 * @example
 * ```ts
 * import type { CompressedContext } from "./payload.ts";
 * const context: CompressedContext = {
 *   vectors: { rows: 1, hidden: 2, data: new Float32Array([0.5, -1]) },
 *   group: "finance",
 *   source: "report.txt",
 * };
 * console.log(context.vectors.rows); // 1
 * ```
 */
export interface CompressedContext {
  /** The summary vectors, `rows × hidden`, row-major. */
  vectors: StoredVectors;
  /** Adapter group of the document (the LoRA that decodes it), or null. */
  group?: string | null;
  /** The document's source in the store. */
  source?: string;
  /** Retrieval score (higher is better): weighs the group's adapter when contexts of several groups compose. */
  score?: number;
}

/**
 * The JSON reference a node's `metadata.kvfold` holds: which store chunks make up its payload.
 *
 * @example
 * ```ts
 * import type { CompressedPayloadRef } from "./payload.ts";
 * const ref: CompressedPayloadRef = {
 *   store: "kb.sqlite", source: "a.txt", documentId: 1, chunkIds: [3], rows: 4, hidden: 64, group: null,
 * };
 * console.log(ref.chunkIds); // [3]
 * ```
 */
export interface CompressedPayloadRef {
  /** Where the store is (`Store.location`: its path, or its URL without the password). */
  store: string;
  /** The document's source in the store. */
  source: string;
  /** The document's id in the store. */
  documentId: number;
  /** The chunks whose vectors, concatenated in this order, are the payload. */
  chunkIds: number[];
  /** Summary vectors in all (prefix positions the payload takes). */
  rows: number;
  /** Width of each vector. */
  hidden: number;
  /** Adapter group of the document, or null. */
  group: string | null;
}

/** Metadata key of the JSON payload reference. */
export const PAYLOAD_REF_KEY = "kvfold";

/** Metadata key (a symbol, so never serialised) of the in-memory payload. */
const PAYLOAD = Symbol.for("kvfold.compressedContext");

/**
 * Metadata keys kept out of prompts and embeddings: ids and the reference mean nothing to a model.
 */
export const INTERNAL_METADATA_KEYS: readonly string[] = [
  PAYLOAD_REF_KEY,
  "chunkId",
  "documentId",
  "ordinal",
  "tokens",
];

type PayloadHolder = Record<string | symbol, unknown>;

/**
 * Keeps the vectors on the node and remembers its text as standing for them, so a stock response
 * synthesizer that writes the text into a prompt gets the vectors read instead (`_payload_text.ts`).
 */
function hold(node: BaseNode, context: CompressedContext): void {
  (node.metadata as PayloadHolder)[PAYLOAD] = context;
  const text = (node as { text?: unknown }).text;
  if (typeof text === "string") rememberPayloadText(text, [context]);
}

/**
 * Attaches a compressed context to a node: its reference under `metadata.kvfold` and its vectors
 * in memory; the reference keys are excluded from the node's LLM and embedding metadata.
 *
 * @example
 * ```ts
 * import { TextNode } from "npm:@llamaindex/core@0.6.22/schema";
 * import { attachCompressedContext, compressedContextOf } from "./payload.ts";
 * const node = new TextNode({ text: "alpha", metadata: { source: "a.txt" } });
 * const vectors = { rows: 1, hidden: 2, data: new Float32Array([1, 2]) };
 * attachCompressedContext(node, { vectors, group: null, source: "a.txt" }, {
 *   store: "kb.sqlite", source: "a.txt", documentId: 1, chunkIds: [1], rows: 1, hidden: 2, group: null,
 * });
 * console.log(compressedContextOf(node)?.vectors.rows); // 1
 * console.log(JSON.stringify(node.metadata).includes("Float32Array")); // false
 * ```
 */
export function attachCompressedContext(
  node: BaseNode,
  context: CompressedContext,
  ref: CompressedPayloadRef,
): void {
  node.metadata[PAYLOAD_REF_KEY] = ref;
  hold(node, context);
  for (const key of INTERNAL_METADATA_KEYS) {
    if (!node.excludedLlmMetadataKeys.includes(key)) node.excludedLlmMetadataKeys.push(key);
    if (!node.excludedEmbedMetadataKeys.includes(key)) node.excludedEmbedMetadataKeys.push(key);
  }
}

/**
 * The payload reference of a node (`metadata.kvfold`), if it has a well-formed one.
 *
 * @example
 * ```ts
 * import { TextNode } from "npm:@llamaindex/core@0.6.22/schema";
 * import { payloadRefOf } from "./payload.ts";
 * console.log(payloadRefOf(new TextNode({ text: "plain" }))); // undefined
 * ```
 */
export function payloadRefOf(node: BaseNode): CompressedPayloadRef | undefined {
  const ref = node.metadata?.[PAYLOAD_REF_KEY] as Partial<CompressedPayloadRef> | undefined;
  if (
    ref === null || typeof ref !== "object" || typeof ref.store !== "string" ||
    !Array.isArray(ref.chunkIds) || ref.chunkIds.length === 0 ||
    !ref.chunkIds.every((id) => Number.isSafeInteger(id))
  ) {
    return undefined;
  }
  return ref as CompressedPayloadRef;
}

/**
 * A node's compressed context: the in-memory payload when attached; else, when `store` is the
 * store its reference names, the referenced chunks read back (and attached for next time);
 * else undefined (the node is plain text).
 *
 * @example
 * ```ts
 * import { TextNode } from "npm:@llamaindex/core@0.6.22/schema";
 * import { compressedContextOf } from "./payload.ts";
 * console.log(compressedContextOf(new TextNode({ text: "plain" }))); // undefined
 * ```
 */
export function compressedContextOf(
  node: BaseNode | NodeWithScore,
  store?: DocumentStore,
): CompressedContext | undefined {
  const n = "node" in node ? node.node : node;
  const held = (n.metadata as PayloadHolder | undefined)?.[PAYLOAD] as CompressedContext | undefined;
  if (held !== undefined) return held;
  const ref = payloadRefOf(n);
  if (ref === undefined || store === undefined || store.path !== ref.store) return undefined;
  const chunks = store.getChunks(ref.chunkIds);
  const context = {
    vectors: concatVectors(chunks.map((c) => c.vectors)),
    group: ref.group,
    source: ref.source,
  };
  hold(n, context);
  return context;
}

/**
 * {@link compressedContextOf} for a store of any backend (`openStore(location)`): the in-memory
 * payload when attached; else, when `store` is the store the node's reference names, the
 * referenced chunks read back (and attached for next time); else undefined.
 *
 * @example
 * ```ts
 * import { TextNode } from "npm:@llamaindex/core@0.6.22/schema";
 * import { loadCompressedContext } from "./payload.ts";
 * console.log(await loadCompressedContext(new TextNode({ text: "plain" }))); // undefined
 * ```
 */
export async function loadCompressedContext(
  node: BaseNode | NodeWithScore,
  store?: StoreLike,
): Promise<CompressedContext | undefined> {
  const n = "node" in node ? node.node : node;
  const held = (n.metadata as PayloadHolder | undefined)?.[PAYLOAD] as CompressedContext | undefined;
  if (held !== undefined) return held;
  const ref = payloadRefOf(n);
  if (ref === undefined || store === undefined) return undefined;
  const s = asStore(store);
  if (s.location !== ref.store) return undefined;
  const chunks = await s.getChunks(ref.chunkIds);
  const context = {
    vectors: concatVectors(chunks.map((c) => c.vectors)),
    group: ref.group,
    source: ref.source,
  };
  hold(n, context);
  return context;
}

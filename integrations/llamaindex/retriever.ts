/**
 * A LlamaIndex retriever over a kvfold document store.
 *
 * @module
 */

import { asStore, type RetrievedChunk, type StoreLike } from "../../mod.ts";
import { BaseRetriever, extractText, type NodeWithScore, type QueryBundle, TextNode } from "./_deps.ts";
import { attachCompressedContext } from "./payload.ts";
import { checkStoreOption, fromPositional } from "../_model_option.ts";

/** Options of {@linkcode KvfoldRetriever}. */
export interface KvfoldRetrieverOptions {
  /** The store to search. */
  store: StoreLike;
  /** How many chunks to return; default 4. */
  k?: number;
  /** Only chunks of documents in this adapter group. */
  group?: string;
}

/**
 * A LlamaIndex node for a stored chunk: its text; its document's metadata plus `source`,
 * `documentId`, `chunkId`, `ordinal`, `tokens`, `group` and the payload reference `kvfold`; and
 * the chunk's summary vectors attached in memory. The id is `kvfold:<store path>#<chunk id>`.
 *
 * @example
 * ```ts ignore
 * import { DocumentStore } from "../../mod.ts";
 * import { nodeFromChunk } from "./retriever.ts";
 * using store = DocumentStore.open("kb.sqlite");
 * const [chunk] = store.getChunks([1]);
 * console.log(nodeFromChunk(chunk, store).metadata.source);
 * ```
 */
export function nodeFromChunk(chunk: RetrievedChunk, store: StoreLike): TextNode {
  const location = asStore(store).location;
  const node = new TextNode({
    id_: `kvfold:${location}#${chunk.chunkId}`,
    text: chunk.text,
    metadata: {
      ...chunk.metadata,
      source: chunk.source,
      documentId: chunk.documentId,
      chunkId: chunk.chunkId,
      ordinal: chunk.ordinal,
      tokens: chunk.tokens,
      group: chunk.group,
    },
  });
  attachCompressedContext(node, { vectors: chunk.vectors, group: chunk.group, source: chunk.source }, {
    store: location,
    source: chunk.source,
    documentId: chunk.documentId,
    chunkIds: [chunk.chunkId],
    rows: chunk.vectors.rows,
    hidden: chunk.vectors.hidden,
    group: chunk.group,
  });
  return node;
}

/**
 * Retrieves chunks from a kvfold store with its built-in BM25 (`store.retrieve`) and returns them
 * as LlamaIndex nodes (see {@linkcode nodeFromChunk}) scored by BM25, best first. Only the text
 * parts of a multi-modal query are searched.
 *
 * @example
 * ```ts ignore
 * import { DocumentStore } from "../../mod.ts";
 * import { KvfoldRetriever } from "./retriever.ts";
 * using store = DocumentStore.open("kb.sqlite");
 * const retriever = new KvfoldRetriever({ store, k: 2 });
 * for (const { node, score } of await retriever.retrieve("which ship left the harbour")) {
 *   console.log(node.metadata.source, node.metadata.chunkId, score);
 * }
 * ```
 */
export class KvfoldRetriever extends BaseRetriever {
  /** The store searched. */
  readonly store: StoreLike;
  /** Chunks per query. */
  readonly k: number;
  /** The adapter group results are limited to, if any. */
  readonly group?: string;

  /**
   * Searches `options.store`; throws `TypeError` when `options` is not `{ store }` with an open
   * `DocumentStore` (a path string, say) and `RangeError` when `k` is not a positive integer.
   */
  constructor(options: KvfoldRetrieverOptions);
  /** @deprecated Pass one options object: `new KvfoldRetriever({ store, ...options })`. */
  constructor(store: StoreLike, options?: Omit<KvfoldRetrieverOptions, "store">);
  constructor(...args: [KvfoldRetrieverOptions] | [StoreLike, Omit<KvfoldRetrieverOptions, "store">?]) {
    const options = fromPositional(args, ["store"]) as KvfoldRetrieverOptions;
    checkStoreOption("KvfoldRetriever", options, true);
    super();
    const k = options.k ?? 4;
    if (!Number.isSafeInteger(k) || k < 1) {
      throw new RangeError(`Cannot create retriever: k must be a positive integer, got ${k}`);
    }
    this.store = options.store;
    this.k = k;
    this.group = options.group;
  }

  /** BM25 search; called by `retrieve`, which adds LlamaIndex's events. */
  override async _retrieve(params: QueryBundle): Promise<NodeWithScore[]> {
    const hits = await asStore(this.store).retrieve(extractText(params.query), {
      k: this.k,
      group: this.group,
    });
    return hits.map((hit) => ({ node: nodeFromChunk(hit, this.store), score: hit.score }));
  }
}

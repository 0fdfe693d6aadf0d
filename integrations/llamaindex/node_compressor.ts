/**
 * A LlamaIndex node postprocessor that gives nodes from any retriever a compressed context:
 * each node's text is compressed into the kvfold store once, and its summary vectors attached.
 *
 * @module
 */

import {
  asStore,
  type ChunkBreak,
  chunkOptionsProblem,
  chunkTexts,
  compressIntoStore,
  type CompressIntoStoreOptions,
  type Compressor,
  KvfoldError,
  type RetrievedChunk,
  type StoreLike,
} from "../../mod.ts";
import { type BaseNode, type BaseNodePostprocessor, MetadataMode, type NodeWithScore } from "./_deps.ts";
import {
  attachCompressedContext,
  type CompressedContext,
  type CompressedPayloadRef,
  concatVectors,
  loadCompressedContext,
} from "./payload.ts";
import { checkCompressorOption, checkStoreOption, fromPositional } from "../_model_option.ts";

/** What {@linkcode KvfoldNodeCompressor} did with one node. */
export interface NodeCompressionEvent {
  /** The node's id. */
  nodeId: string;
  /** The store source the node is kept under. */
  source: string;
  /** `"compressed"`: new in the store; `"stored"`: read back from the store; `"cached"`: from memory. */
  action: "compressed" | "stored" | "cached";
  /** Tokens of the node's text. */
  tokens: number;
  /** Summary vectors of the node. */
  vectors: number;
}

/** Options of {@linkcode KvfoldNodeCompressor}. */
export interface KvfoldNodeCompressorOptions
  extends Pick<CompressIntoStoreOptions, "segmentLength" | "signal"> {
  /** The compressor (its tokenizer also splits nodes into chunks). */
  compressor: Compressor;
  /** The store nodes are compressed into. */
  store: StoreLike;
  /** Tokens per stored chunk (a longer node becomes several); default 1536. */
  chunkTokens?: number;
  /** Where stored chunks end: every `chunkTokens` tokens (default) or at a sentence end. */
  breakAt?: ChunkBreak;
  /**
   * The store source of a node; default: its `metadata.source` (or `file_path`, `file_name`)
   * followed by `#` and a hash of its text, else its id.
   */
  sourceOf?: (node: BaseNode) => string | Promise<string>;
  /** The adapter group of a node's document; default: its `metadata.group` when a string. */
  groupOf?: (node: BaseNode) => string | undefined;
  /** Told what happened to each node that needed a payload. */
  onNode?: (event: NodeCompressionEvent) => void;
}

/** A node's own text (`getContent` would trim it), which is what gets compressed. */
function nodeText(node: BaseNode): string {
  const text = (node as { text?: unknown }).text;
  return typeof text === "string" ? text : node.getContent(MetadataMode.NONE);
}

async function textHash(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest).subarray(0, 8), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Default store source: the node's origin plus a hash of its text, so two nodes of one file differ. */
async function defaultSourceOf(node: BaseNode): Promise<string> {
  const m = node.metadata ?? {};
  const origin = [m.source, m.file_path, m.file_name].find((v) => typeof v === "string" && v !== "");
  if (origin === undefined) return node.id_;
  return `${origin}#${await textHash(nodeText(node))}`;
}

/**
 * Compresses retrieved nodes into a kvfold store and attaches their payload, for nodes from any
 * retriever (a vector index, BM25, ...). A node that already carries a payload is passed through.
 * Every other node is stored as one document (chunked by `chunkTokens`) under
 * {@linkcode KvfoldNodeCompressorOptions.sourceOf} with `compressIntoStore` unless the store
 * already has that source with the same chunk texts, and its vectors are cached, so a node is
 * compressed once. Nodes keep their identity, text and metadata; the postprocessor adds the
 * payload reference `metadata.kvfold` and the in-memory vectors (see
 * {@linkcode compressedContextOf}). Nodes with no text pass through without a payload.
 *
 * @example
 * ```ts ignore
 * import { Compressor, DocumentStore, Kvfold } from "../../mod.ts";
 * import { KvfoldNodeCompressor } from "./node_compressor.ts";
 * using kv = await Kvfold.open();
 * using compressor = await Compressor.load(kv, "./models/lloco");
 * using store = DocumentStore.open("kb.sqlite");
 * const postprocessor = new KvfoldNodeCompressor({ compressor, store, groupOf: () => "manuals" });
 * const nodes = await postprocessor.postprocessNodes(await vectorIndex.asRetriever().retrieve("query"));
 * console.log(nodes.map(({ node }) => node.metadata.kvfold));
 * ```
 */
export class KvfoldNodeCompressor implements BaseNodePostprocessor {
  /** The compressor (its tokenizer also splits nodes into chunks). */
  readonly compressor: Compressor;
  /** The store nodes are compressed into. */
  readonly store: StoreLike;
  readonly #options: KvfoldNodeCompressorOptions;
  readonly #chunkTokens: number;
  /** Payloads by store source, with the chunk texts they were made from. */
  readonly #cache = new Map<
    string,
    { texts: string[]; context: CompressedContext; ref: CompressedPayloadRef }
  >();

  /**
   * Compresses with `options.compressor` into `options.store`; throws `TypeError` when `options` is
   * not `{ compressor, store }` with a loaded `Compressor` and an open `DocumentStore`, and
   * `RangeError` for a bad `chunkTokens` or `breakAt`.
   */
  constructor(options: KvfoldNodeCompressorOptions);
  /** @deprecated Pass one options object: `new KvfoldNodeCompressor({ compressor, store, ...options })`. */
  constructor(
    compressor: Compressor,
    store: StoreLike,
    options?: Omit<KvfoldNodeCompressorOptions, "compressor" | "store">,
  );
  constructor(
    ...args:
      | [KvfoldNodeCompressorOptions]
      | [Compressor, StoreLike, Omit<KvfoldNodeCompressorOptions, "compressor" | "store">?]
  ) {
    const options = fromPositional(args, ["compressor", "store"]) as KvfoldNodeCompressorOptions;
    checkCompressorOption("KvfoldNodeCompressor", options);
    checkStoreOption("KvfoldNodeCompressor", options, true);
    const problem = chunkOptionsProblem(options);
    if (problem) throw new RangeError(`Cannot create node compressor: ${problem}`);
    this.compressor = options.compressor;
    this.store = options.store;
    this.#options = options;
    this.#chunkTokens = options.chunkTokens ?? 1536;
  }

  /** Attaches a payload to every node with text (compressing those not stored yet); same order. */
  async postprocessNodes(nodes: NodeWithScore[], _query?: unknown): Promise<NodeWithScore[]> {
    for (const { node } of nodes) {
      if (await this.#hasPayload(node)) continue;
      if (nodeText(node).trim() === "") continue;
      await this.#attach(node);
    }
    return nodes;
  }

  /** Whether the node has vectors in memory or a reference into this store that still resolves. */
  async #hasPayload(node: BaseNode): Promise<boolean> {
    try {
      return (await loadCompressedContext(node, this.store)) !== undefined;
    } catch (e) {
      // The referenced chunks are gone from the store (document replaced or removed): recompress.
      if (e instanceof KvfoldError && e.code === "INVALID_ARGUMENT") return false;
      throw e;
    }
  }

  async #attach(node: BaseNode): Promise<void> {
    const text = nodeText(node);
    const source = await (this.#options.sourceOf ?? defaultSourceOf)(node);
    const tok = this.compressor.model.tokenizer;
    const ids = tok.encode(text);
    // The chunk texts compressIntoStore will store: what a stored document must match to be reused.
    const texts = chunkTexts(tok, ids, { chunkTokens: this.#chunkTokens, breakAt: this.#options.breakAt });
    const report = (action: NodeCompressionEvent["action"], context: CompressedContext) =>
      this.#options.onNode?.({
        nodeId: node.id_,
        source,
        action,
        tokens: ids.length,
        vectors: context.vectors.rows,
      });

    const cached = this.#cache.get(source);
    if (cached && sameTexts(cached.texts, texts) && (await asStore(this.store).hasDocument(source))) {
      attachCompressedContext(node, cached.context, cached.ref);
      report("cached", cached.context);
      return;
    }
    let chunks = await this.#findStored(source, texts);
    let action: NodeCompressionEvent["action"] = "stored";
    if (chunks === undefined) {
      const group = (this.#options.groupOf ?? defaultGroupOf)(node);
      const { chunkIds } = await compressIntoStore(this.compressor, this.store, { source, text, group }, {
        chunkTokens: this.#chunkTokens,
        breakAt: this.#options.breakAt,
        segmentLength: this.#options.segmentLength,
        signal: this.#options.signal,
        // A stored document under this source with other text is stale: this node replaces it.
        replace: true,
      });
      chunks = await asStore(this.store).getChunks(chunkIds);
      action = "compressed";
    }
    const context: CompressedContext = {
      vectors: concatVectors(chunks.map((c) => c.vectors)),
      group: chunks[0].group,
      source,
    };
    const ref: CompressedPayloadRef = {
      store: asStore(this.store).location,
      source,
      documentId: chunks[0].documentId,
      chunkIds: chunks.map((c) => c.chunkId),
      rows: context.vectors.rows,
      hidden: context.vectors.hidden,
      group: chunks[0].group,
    };
    this.#cache.set(source, { texts, context, ref });
    attachCompressedContext(node, context, ref);
    report(action, context);
  }

  /** The stored chunks of `source` in order, when they are exactly `texts`; else undefined. */
  async #findStored(source: string, texts: readonly string[]): Promise<RetrievedChunk[] | undefined> {
    const store = asStore(this.store);
    const stored = await store.getDocument(source);
    if (stored === undefined || stored.chunkIds.length !== texts.length) return undefined;
    const chunks = await store.getChunks(stored.chunkIds);
    return sameTexts(chunks.map((c) => c.text), texts) ? chunks : undefined;
  }
}

function defaultGroupOf(node: BaseNode): string | undefined {
  const group = node.metadata?.group;
  return typeof group === "string" ? group : undefined;
}

function sameTexts(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((t, i) => t === b[i]);
}

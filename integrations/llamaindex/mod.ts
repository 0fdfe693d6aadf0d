/**
 * kvfold for LlamaIndex.TS (`llamaindex` 0.12, `@llamaindex/core` 0.6): compressed-context
 * question answering through LlamaIndex's own extension points.
 *
 * - {@linkcode KvfoldRetriever}: a `BaseRetriever` over a kvfold `DocumentStore` (BM25) whose
 *   nodes carry their chunk's summary vectors.
 * - {@linkcode KvfoldLLM}: an `LLM` (chat + complete, streaming, abort) over a kvfold model that
 *   places compressed contexts before the prompt as input embeddings.
 * - {@linkcode KvfoldNodeCompressor}: a node postprocessor that compresses nodes from any
 *   retriever into the store once and attaches their vectors.
 * - {@linkcode KvfoldQueryEngine}: a `RetrieverQueryEngine` answering from compressed contexts,
 *   with text fallback for nodes without them.
 * - {@linkcode KvfoldEmbedding}: a `BaseEmbedding` (pooled final-normed hidden states of any kvfold
 *   model) for `Settings.embedModel`, so `VectorStoreIndex` needs no other provider; and
 *   {@linkcode kvfoldTokenizer} for `Settings.tokenizer` (the model's own token counts).
 *
 * Classes come from `npm:@llamaindex/core@0.6.22`, the exact version `npm:llamaindex@0.12.1`
 * depends on, so they mix with `llamaindex`'s own retrievers, nodes and engines.
 *
 * @example
 * ```ts ignore
 * import { Compressor, compressIntoStore, DocumentStore, Kvfold } from "../../mod.ts";
 * import { KvfoldLLM, KvfoldQueryEngine, KvfoldRetriever } from "./mod.ts";
 *
 * using kv = await Kvfold.open();
 * using compressor = await Compressor.load(kv, "./models/lloco"); // also the LLoCO decoder
 * using store = DocumentStore.open("kb.sqlite");
 * await compressIntoStore(compressor, store, { source: "log.txt", text: await Deno.readTextFile("log.txt") });
 *
 * const engine = new KvfoldQueryEngine({
 *   retriever: new KvfoldRetriever({ store, k: 2 }),
 *   llm: new KvfoldLLM({ model: compressor.model, temperature: 0, maxTokens: 128 }),
 * });
 * const response = await engine.query({ query: "Which ship left the harbour?" });
 * console.log(response.message.content, response.sourceNodes?.map((n) => n.node.metadata.source));
 * ```
 *
 * @module
 */

export { KvfoldRetriever, nodeFromChunk } from "./retriever.ts";
export type { KvfoldRetrieverOptions } from "./retriever.ts";
export { KvfoldLLM } from "./llm.ts";
export type {
  KvfoldCallOptions,
  KvfoldChatSignal,
  KvfoldGenerationOptions,
  KvfoldGenerationStats,
  KvfoldLLMOptions,
} from "./llm.ts";
export { KvfoldEmbedding, kvfoldTokenizer } from "./embedding.ts";
export type { KvfoldEmbeddingOptions, LlamaIndexTokenizer } from "./embedding.ts";
export { KvfoldNodeCompressor } from "./node_compressor.ts";
export type { KvfoldNodeCompressorOptions, NodeCompressionEvent } from "./node_compressor.ts";
export { KvfoldQueryEngine, KvfoldResponseSynthesizer } from "./query_engine.ts";
export type { KvfoldQueryEngineOptions, KvfoldResponseSynthesizerOptions } from "./query_engine.ts";
export {
  attachCompressedContext,
  compressedContextOf,
  concatVectors,
  INTERNAL_METADATA_KEYS,
  loadCompressedContext,
  PAYLOAD_REF_KEY,
  payloadRefOf,
} from "./payload.ts";
export type { CompressedContext, CompressedPayloadRef } from "./payload.ts";

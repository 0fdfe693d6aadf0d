/**
 * LangChain.js (`@langchain/core` 1.x) adapters for kvfold's compressed-context question answering.
 *
 * - {@linkcode KvfoldRetriever}: a `BaseRetriever` over a kvfold store's BM25 index; its documents
 *   carry compressed payload references in `metadata.kvfold`.
 * - {@linkcode KvfoldDocumentCompressor}: a `BaseDocumentCompressor` that compresses (once) what any
 *   other retriever found, for `ContextualCompressionRetriever` from `@langchain/classic`.
 * - {@linkcode ChatKvfold} and {@linkcode KvfoldLLM}: a `BaseChatModel` and an `LLM` with the model's
 *   chat template, streaming, `stop` and abort; documents passed as the `documents` call option are
 *   read from their summary vectors (prepended as input embeddings) or, without a payload, as text.
 * - {@linkcode createKvfoldQaChain}: retrieve → answer as one streaming runnable.
 * - {@linkcode KvfoldEmbeddings}: an `Embeddings` (pooled final-normed hidden states of any kvfold
 *   model) for `MemoryVectorStore` and other vector stores; `getNumTokens` of the models counts with
 *   the model's own tokenizer.
 *
 * A payload is a small JSON reference ({@linkcode KvfoldPayloadRef}: document id, chunk ids, vector
 * count, width, tokens, group); the vectors ride along in memory, out of JSON, and are read back from
 * the store (the models' `store` field) when a copy lost them.
 *
 * Built against `@langchain/core@1.4.0` and `@langchain/classic@1.0.50`.
 *
 * @example
 * ```ts ignore
 * import { Compressor, DocumentStore, Kvfold } from "../../mod.ts";
 * import { ChatKvfold, createKvfoldQaChain, KvfoldRetriever } from "./mod.ts";
 *
 * using kv = await Kvfold.open();
 * using compressor = await Compressor.load(kv, "./models/lloco");
 * using store = DocumentStore.open("kb.sqlite");
 * const chain = createKvfoldQaChain({
 *   retriever: new KvfoldRetriever({ store, k: 2 }),
 *   model: new ChatKvfold({ model: compressor.model, store, maxTokens: 128, temperature: 0 }),
 * });
 * for await (const piece of await chain.stream("Which ship left the harbour?")) console.log(piece);
 * ```
 *
 * @module
 */

export { KvfoldRetriever } from "./retriever.ts";
export type { KvfoldRetrieverInput } from "./retriever.ts";
export { KVFOLD_COMPRESSION_EVENT, KvfoldDocumentCompressor } from "./document_compressor.ts";
export type {
  KvfoldCompressionReport,
  KvfoldCompressionStats,
  KvfoldDocumentCompressorInput,
} from "./document_compressor.ts";
export { ChatKvfold } from "./chat_models.ts";
export type { ChatKvfoldCallOptions, ChatKvfoldInput } from "./chat_models.ts";
export { KvfoldLLM } from "./llms.ts";
export type { KvfoldLLMCallOptions, KvfoldLLMInput } from "./llms.ts";
export type { KvfoldModelFields, KvfoldResponseMetadata } from "./_model_fields.ts";
export { formatTextContext } from "./_generate.ts";
export type {
  KvfoldDocumentsCallOptions,
  KvfoldGenerationSettings,
  TextContextFormatter,
} from "./_generate.ts";
export { countModelTokens, KvfoldEmbeddings } from "./embeddings.ts";
export type { KvfoldEmbeddingsInput } from "./embeddings.ts";
export { createKvfoldQaChain } from "./chain.ts";
export type { KvfoldQaChainOptions } from "./chain.ts";
export { kvfoldPayloadOf, loadKvfoldChunks, payloadRef, resolveKvfoldChunks } from "./payload.ts";
export type { KvfoldPayloadRef } from "./payload.ts";
export { toolSpecs } from "./tools.ts";
export type { KvfoldToolCallOptions } from "./tools.ts";

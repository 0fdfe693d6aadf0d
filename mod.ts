/**
 * kvfold — compressed-context question answering over long documents, for Deno.
 *
 * @example
 * ```ts ignore
 * import { Kvfold } from "./mod.ts";
 * using kv = await Kvfold.open();
 * using model = await kv.loadModel("./models/tiny");
 * for await (const piece of model.generate("Hello", { maxTokens: 8 })) console.log(piece);
 * ```
 *
 * @module
 */

export { Kvfold } from "./src/engine.ts";
export type { BackendName, LibraryInfo, OpenOptions } from "./src/engine.ts";
export { Model } from "./src/model.ts";
export type { LoadModelOptions, ModelInfo, WeightDType } from "./src/model.ts";
export { sampleFromLogits, Session } from "./src/session.ts";
export type {
  GenerateOptions,
  GenerationStats,
  PrefillOptions,
  SamplingOptions,
  SessionMemory,
  SessionOptions,
  StopReason,
} from "./src/session.ts";
export { CACHE_KINDS, LococoHeads } from "./src/lococo.ts";
export type { CacheKind, CacheOptions, LococoHeadsInfo } from "./src/lococo.ts";
export { Adapter, AdapterRegistry, LORA_PROJECTIONS, MAX_COMPOSED_ADAPTERS } from "./src/adapter.ts";
export type {
  AdapterEntry,
  AdapterInfo,
  AdapterTerm,
  AppliedAdapterTerm,
  LoraProjection,
} from "./src/adapter.ts";
export { ADAPTER_MODES, adaptersForChunks, describeAdapters } from "./src/adapter_composition.ts";
export type { AdapterCompositionChoice, AdapterMode, ChunkGroupScore } from "./src/adapter_composition.ts";
export { finetuneLora, LoraTrainer, qaExampleRows, TRAIN_TENSORS } from "./src/train.ts";
export type {
  FinetuneOptions,
  FinetuneProgress,
  LoraTrainOptions,
  OptimizerOptions,
  QaExample,
  TrainExample,
  TrainingLoopOptions,
  TrainingProgress,
  TrainStep,
  TrainTensor,
} from "./src/train.ts";
export { calibrateLococo, LOCOCO_TENSORS, LococoTrainer } from "./src/lococo_train.ts";
export type {
  CalibrateOptions,
  CalibrateProgress,
  LococoTensor,
  LococoTrainOptions,
} from "./src/lococo_train.ts";
export { MODEL_TRAIN_TENSORS, ModelTrainer } from "./src/model_train.ts";
export { WeightAverage } from "./src/weight_average.ts";
export type {
  CompressorExample,
  CompressorLoss,
  CompressorQaPair,
  ModelTrainOptions,
  ModelTrainTensor,
  TrainedTensor,
} from "./src/model_train.ts";
export {
  initModelFolder,
  readModelConfig,
  readTrainingData,
  trainCompressor,
  trainModel,
} from "./src/model_train_loop.ts";
export type {
  CompressorDocument,
  InitModelOptions,
  TrainCompressorOptions,
  TrainModelOptions,
} from "./src/model_train_loop.ts";
export { decodeBatch, DecodeBatcher } from "./src/batch.ts";
export type { BatchEntry, BatcherStats } from "./src/batch.ts";
export { JsonGrammar } from "./src/grammar/json_grammar.ts";
export type { GrammarOption, JsonSchema } from "./src/grammar/json_grammar.ts";
export {
  parseToolReply,
  toolInstructions,
  toolReplySchema,
  withoutDialect,
} from "./src/grammar/tool_envelope.ts";
export type { ParsedReply, ParsedToolCall, ToolChoiceKind, ToolSpec } from "./src/grammar/tool_envelope.ts";
export { TextTokenizer } from "./src/tokenizer.ts";
export type { ChatMessage, ChatTemplateOptions } from "./src/tokenizer.ts";
export { KvfoldError } from "./src/errors.ts";
export type { KvfoldErrorCode } from "./src/errors.ts";
export { IncrementalDecoder, StopStringFilter } from "./src/text_stream.ts";
export { EMBEDDING_POOLINGS } from "./src/embeddings.ts";
export type { EmbeddingPooling, EmbedOptions } from "./src/embeddings.ts";
export { Compressor } from "./src/compressor.ts";
export type { CompressOptions, SummaryVectors } from "./src/compressor.ts";
export { concatVectors, DocumentStore } from "./src/store.ts";
export type {
  NewChunk,
  NewDocument,
  OpenStoreOptions,
  RetrievedChunk,
  StoredDocument,
  StoredVectors,
  StoreStats,
} from "./src/store.ts";
export { asStore, openStore, storeBackendOf } from "./src/store/open_store.ts";
export type { OpenStoreAtOptions } from "./src/store/open_store.ts";
export { SqliteStore } from "./src/store/sqlite_store.ts";
export type { Store, StoreBackend, StoreLike } from "./src/store/store_api.ts";
// PostgreSQL: the client loads only when openStore is given a postgres:// URL.
export type { PostgresStore, PostgresStoreOptions } from "./src/store/postgres_store.ts";
export { copyStore } from "./src/store/copy_store.ts";
export type { CopyReport } from "./src/store/copy_store.ts";
export { MAX_ATTEMPTS, WorkQueue } from "./src/store/work_queue.ts";
export type { NewWorkItem, QueueStats, WorkItem, WorkOptions } from "./src/store/work_queue.ts";
export { defaultWorkerId, runWorker } from "./src/store/compression_worker.ts";
export type { WorkerEvent, WorkerOptions } from "./src/store/compression_worker.ts";
export { adapterForChunks, answerFromChunks, compressChunks, compressIntoStore } from "./src/lloco.ts";
export {
  CHUNK_BREAKS,
  chunkOptionsProblem,
  chunkSpans,
  chunkTexts,
  documentChunkSpans,
  sentenceEnds,
} from "./src/chunk_spans.ts";
export type { ChunkBreak, ChunkSpanOptions } from "./src/chunk_spans.ts";
export type {
  AdapterChoice,
  AnswerContext,
  AnswerOptions,
  AnswerPrompt,
  AnswerStats,
  CompressIntoStoreOptions,
  SourceDocument,
} from "./src/lloco.ts";
export { ChatSession } from "./src/chat.ts";
export type { ChatOptions, ChatSendOptions } from "./src/chat.ts";
export { PrefixCache } from "./src/prefix_cache.ts";
export type { PrefixCacheOptions } from "./src/prefix_cache.ts";
export { convertTorchCheckpoint } from "./src/formats/torch_bin.ts";
export {
  readSafetensors,
  readSafetensorsFile,
  writeSafetensors,
  writeSafetensorsFile,
} from "./src/formats/safetensors.ts";
export type {
  SafetensorsDtype,
  SafetensorsFile,
  TensorInput,
  TensorView,
} from "./src/formats/safetensors.ts";
export { modelGgufContents, writeGguf, writeModelGguf } from "./src/formats/gguf_write.ts";
export type {
  GgmlType,
  GgufContents,
  GgufMetadataValue,
  GgufModelDtype,
  GgufScalarType,
  GgufTensorInput,
  WriteModelGgufOptions,
} from "./src/formats/gguf_write.ts";
export { KvfoldServer, startServer } from "./src/serve/server.ts";
export type { ServerOptions } from "./src/serve/server.ts";
export { measureDecode, measurePrefill } from "./src/throughput.ts";
export type { ThroughputResult } from "./src/throughput.ts";
export { ensureNativeLibrary } from "./src/_native_build.ts";
export type { EnsureLibraryOptions } from "./src/_native_build.ts";
export { readBoundedText } from "./src/_bounded_read.ts";
export type { BoundedReadOptions } from "./src/_bounded_read.ts";

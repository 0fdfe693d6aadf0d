// The LangChain.js packages this adapter is built against, pinned in one place.
export { Document } from "npm:@langchain/core@1.4.0/documents";
export type { DocumentInterface } from "npm:@langchain/core@1.4.0/documents";
export { BaseRetriever } from "npm:@langchain/core@1.4.0/retrievers";
export type { BaseRetrieverInput } from "npm:@langchain/core@1.4.0/retrievers";
export { BaseDocumentCompressor } from "npm:@langchain/core@1.4.0/retrievers/document_compressors";
export { BaseChatModel } from "npm:@langchain/core@1.4.0/language_models/chat_models";
export type {
  BaseChatModelCallOptions,
  BaseChatModelParams,
  LangSmithParams,
} from "npm:@langchain/core@1.4.0/language_models/chat_models";
export { LLM } from "npm:@langchain/core@1.4.0/language_models/llms";
export type { BaseLLMCallOptions, BaseLLMParams } from "npm:@langchain/core@1.4.0/language_models/llms";
export { AIMessage, AIMessageChunk } from "npm:@langchain/core@1.4.0/messages";
export type { BaseMessage, MessageContent } from "npm:@langchain/core@1.4.0/messages";
export { Embeddings } from "npm:@langchain/core@1.4.0/embeddings";
export type { EmbeddingsParams } from "npm:@langchain/core@1.4.0/embeddings";
export { ChatGenerationChunk, GenerationChunk } from "npm:@langchain/core@1.4.0/outputs";
export type { ChatResult } from "npm:@langchain/core@1.4.0/outputs";
export type {
  CallbackManagerForLLMRun,
  CallbackManagerForRetrieverRun,
  Callbacks,
} from "npm:@langchain/core@1.4.0/callbacks/manager";
export { RunnableLambda, RunnablePassthrough, RunnableSequence } from "npm:@langchain/core@1.4.0/runnables";
export type { Runnable, RunnableConfig } from "npm:@langchain/core@1.4.0/runnables";
export { BasePromptTemplate, ChatPromptTemplate } from "npm:@langchain/core@1.4.0/prompts";
export { dispatchCustomEvent } from "npm:@langchain/core@1.4.0/callbacks/dispatch/web";
export type { BindToolsInput, ToolChoice } from "npm:@langchain/core@1.4.0/language_models/chat_models";
export type {
  BaseLanguageModelInput,
  StructuredOutputMethodOptions,
} from "npm:@langchain/core@1.4.0/language_models/base";
export type { ToolCall, ToolCallChunk } from "npm:@langchain/core@1.4.0/messages/tool";
export { convertToOpenAITool } from "npm:@langchain/core@1.4.0/utils/function_calling";
export { toJsonSchema } from "npm:@langchain/core@1.4.0/utils/json_schema";
export { isInteropZodSchema } from "npm:@langchain/core@1.4.0/utils/types";
export { isSerializableSchema } from "npm:@langchain/core@1.4.0/utils/standard_schema";
export {
  assembleStructuredOutputPipeline,
  createContentParser,
  createFunctionCallingParser,
} from "npm:@langchain/core@1.4.0/language_models/structured_output";
export type { ModelProfile } from "npm:@langchain/core@1.4.0/language_models/profile";

// The LlamaIndex.TS pieces the adapters build on, pinned in one place. `llamaindex@0.12.1` depends on
// exactly `@llamaindex/core@0.6.22`, so classes imported here are the very ones `llamaindex`
// re-exports (one `TextNode`, one `RetrieverQueryEngine`), while loading only the subpaths used.

export { BaseLLM, ToolCallLLM } from "npm:@llamaindex/core@0.6.22/llms";
export type {
  BaseTool,
  ChatMessage,
  ChatResponse,
  ChatResponseChunk,
  CompletionResponse,
  LLMChatParamsNonStreaming,
  LLMChatParamsStreaming,
  LLMCompletionParamsNonStreaming,
  LLMCompletionParamsStreaming,
  LLMMetadata,
  MessageContent,
} from "npm:@llamaindex/core@0.6.22/llms";
export { wrapLLMEvent } from "npm:@llamaindex/core@0.6.22/decorator";
export { BaseEmbedding } from "npm:@llamaindex/core@0.6.22/embeddings";
export { Settings } from "npm:@llamaindex/core@0.6.22/global";
export { defaultTextQAPrompt } from "npm:@llamaindex/core@0.6.22/prompts";
export type { ModuleRecord, PromptsRecord, TextQAPrompt } from "npm:@llamaindex/core@0.6.22/prompts";
export type { BaseNodePostprocessor } from "npm:@llamaindex/core@0.6.22/postprocessor";
export { RetrieverQueryEngine } from "npm:@llamaindex/core@0.6.22/query-engine";
export type { QueryBundle, QueryType } from "npm:@llamaindex/core@0.6.22/query-engine";
export { BaseSynthesizer } from "npm:@llamaindex/core@0.6.22/response-synthesizers";
export type { SynthesizeQuery } from "npm:@llamaindex/core@0.6.22/response-synthesizers";
export { BaseRetriever } from "npm:@llamaindex/core@0.6.22/retriever";
export { EngineResponse, MetadataMode, TextNode } from "npm:@llamaindex/core@0.6.22/schema";
export type { BaseNode, Metadata, NodeWithScore } from "npm:@llamaindex/core@0.6.22/schema";
export { extractText } from "npm:@llamaindex/core@0.6.22/utils";
export { isZodSchema, zodToJsonSchema } from "npm:@llamaindex/core@0.6.22/zod";

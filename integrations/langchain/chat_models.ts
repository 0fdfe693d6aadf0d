/**
 * {@linkcode ChatKvfold}: a kvfold model as a LangChain chat model, streaming, abortable, calling
 * tools, and reading compressed context from documents ({@linkcode KvfoldLLM} is its text twin).
 *
 * @module
 */

import {
  type ChatMessage,
  JsonGrammar,
  type Model,
  parseToolReply,
  type PrefixCache,
  type StoreLike,
  toolReplySchema,
} from "../../mod.ts";
import {
  AIMessage,
  AIMessageChunk,
  BaseChatModel,
  type BaseChatModelCallOptions,
  type BaseChatModelParams,
  type BaseLanguageModelInput,
  type BaseMessage,
  type BindToolsInput,
  type CallbackManagerForLLMRun,
  ChatGenerationChunk,
  type ChatResult,
  type LangSmithParams,
  type MessageContent,
  type ModelProfile,
  type Runnable,
  type StructuredOutputMethodOptions,
} from "./_deps.ts";
import { type KvfoldToolCallOptions, normalizeToolChoice, toolPrompt, toolSpecs } from "./tools.ts";
import { structuredOutput } from "./structured_output.ts";
import { countModelTokens } from "./embeddings.ts";
import { type KvfoldDocumentsCallOptions, type KvfoldRunStats, runKvfold } from "./_generate.ts";
import {
  checkFields,
  type KvfoldModelFields,
  type KvfoldResponseMetadata,
  lsParams,
  nameOf,
  prefixCacheOf,
  responseMetadata,
  runSettings,
  SETTING_KEYS,
  settingsOf,
} from "./_model_fields.ts";

/** Fields of {@linkcode ChatKvfold}. */
export interface ChatKvfoldInput extends KvfoldModelFields, BaseChatModelParams {}

/** Call options of {@linkcode ChatKvfold}: LangChain's (`stop`, `signal`, ...) plus `documents` and sampling. */
export interface ChatKvfoldCallOptions
  extends BaseChatModelCallOptions, KvfoldDocumentsCallOptions, Omit<KvfoldToolCallOptions, "tool_choice"> {}

/** Call options of tool calling and constrained replies. */
const TOOL_KEYS = ["tools", "tool_choice", "parallel_tool_calls", "jsonSchema"];

/** Every input position: the vectors and the prompt, kept from a cache or prefilled. */
function inputTokens(m: KvfoldResponseMetadata): number {
  return Math.max(m.prefixPositions, m.reusedPositions) + m.promptTokens;
}

/** A LangChain message as a chat-template message. */
function chatMessage(message: BaseMessage): ChatMessage {
  const type = message.getType();
  const role = type === "human"
    ? "user"
    : type === "ai"
    ? "assistant"
    : type === "generic"
    ? String((message as BaseMessage & { role?: string }).role)
    : type; // system, tool, developer, function: as the template names them
  return { role, content: message.text };
}

/**
 * A kvfold model as a LangChain chat model. Messages go through the model's chat template; tokens
 * stream through `stream`, `streamEvents` and callbacks' `handleLLMNewToken`; `stop` strings end
 * generation; the `signal` option stops it within one decode step and the call rejects with the
 * signal's reason (an `AbortError` DOMException by default).
 *
 * Compressed context: pass documents as the call option `documents`. Those with a kvfold payload
 * (`metadata.kvfold`, from {@linkcode KvfoldRetriever} or {@linkcode KvfoldDocumentCompressor}) have
 * their summary vectors prepended as input embeddings, in the order given, through kvfold's
 * `answerFromChunks`, whose rule (`adapterForChunks`) picks the LoRA from the payload chunks'
 * group; the others are written into the last user message as text (see `formatContext`).
 * `response_metadata.kvfold` reports prefix positions, token counts, the documents' adapter groups
 * and the adapter used; `usage_metadata` counts prefix positions as input tokens.
 *
 * @example
 * ```ts ignore
 * import { Compressor, DocumentStore, Kvfold } from "../../mod.ts";
 * import { ChatKvfold, KvfoldRetriever } from "./mod.ts";
 *
 * using kv = await Kvfold.open();
 * using compressor = await Compressor.load(kv, "./models/lloco");
 * using store = DocumentStore.open("kb.sqlite");
 * const chat = new ChatKvfold({ model: compressor.model, store, maxTokens: 128, temperature: 0 });
 * const documents = await new KvfoldRetriever({ store, k: 2 }).invoke("harbour ships");
 * for await (const chunk of await chat.stream("Which ship left the harbour?", { documents })) {
 *   console.log(chunk.text);
 * }
 * ```
 */
export class ChatKvfold extends BaseChatModel<ChatKvfoldCallOptions, AIMessageChunk> {
  /** The LangChain class name. */
  static override lc_name(): string {
    return "ChatKvfold";
  }
  override lc_namespace: string[] = ["kvfold", "chat_models"];
  /** The model that generates. */
  readonly model: Model;
  /** Where payload references are resolved. */
  readonly store?: StoreLike;
  readonly #fields: KvfoldModelFields;
  #reused?: PrefixCache;

  /** The model's name, as `response_metadata.model` and LangSmith's `ls_model_name` report it. */
  readonly modelName: string;

  /**
   * Generates with `fields.model`; throws `TypeError` when `fields` is not an options object with
   * a loaded model (a path string, a bare model) or `store` is not an open `DocumentStore`.
   */
  constructor(fields: ChatKvfoldInput) {
    checkFields("ChatKvfold", fields);
    super(fields);
    this.model = fields.model;
    this.store = fields.store;
    this.#fields = fields;
    this.modelName = nameOf(fields);
  }

  /**
   * What this model does, as LangChain's model profiles say it: tool calling (with `tool_choice`)
   * and structured output through constrained decoding, text in and out, the context window.
   */
  override get profile(): ModelProfile {
    return {
      maxInputTokens: this.model.info.maxPositions,
      toolCalling: true,
      toolChoice: true,
      structuredOutput: true,
      imageInputs: false,
      audioInputs: false,
      pdfInputs: false,
      videoInputs: false,
      reasoningOutput: false,
    };
  }

  /** LangSmith's standard parameters: provider, model name and type, temperature, max tokens, stop. */
  override getLsParams(options: this["ParsedCallOptions"]): LangSmithParams {
    return lsParams(this.#fields, options ?? {}, "chat") as LangSmithParams;
  }

  override get callKeys(): string[] {
    return [...super.callKeys, "documents", "adapterMode", ...SETTING_KEYS, ...TOOL_KEYS];
  }

  /** The LangChain provider name. */
  _llmType(): string {
    return "kvfold";
  }

  /** Tokens of `content` by the model's own tokenizer (LangChain's default downloads tiktoken's). */
  override getNumTokens(content: MessageContent): Promise<number> {
    return Promise.resolve(countModelTokens(this.model, content));
  }

  /** Settings as traced (never the documents' vectors). */
  override invocationParams(options?: this["ParsedCallOptions"]): Record<string, unknown> {
    const tools = options?.tools?.length ? { tools: options.tools, tool_choice: options.tool_choice } : {};
    return { model: this.model.dir, ...settingsOf(this.#fields, options ?? {}), ...tools };
  }

  /**
   * Binds tools (LangChain tools, zod-schema tools, runnables' `asTool`, OpenAI tool objects):
   * replies are then held by constrained decoding to a JSON envelope of tool calls whose arguments
   * validate against each tool's schema, read back into `AIMessage.tool_calls` (`tool_call_chunks`
   * when streaming). `kwargs.tool_choice`: `"auto"` (default: call tools or answer), `"any"`, a
   * tool's name, or `"none"`. A tool schema the grammar cannot express is refused here, naming the
   * keyword. See `tools.ts` for the prompt format.
   */
  override bindTools(
    tools: BindToolsInput[],
    kwargs?: Partial<ChatKvfoldCallOptions>,
  ): Runnable<BaseLanguageModelInput, AIMessageChunk, ChatKvfoldCallOptions> {
    const specs = toolSpecs(tools);
    const choice = normalizeToolChoice(kwargs?.tool_choice, specs);
    if (choice.kind !== "none") {
      JsonGrammar.fromSchema(toolReplySchema(specs, choice, 1) as Record<string, unknown>);
    }
    return this.withConfig({ ...kwargs, tools: specs } as Partial<ChatKvfoldCallOptions>);
  }

  /**
   * Replies parsed into `schema`'s shape (a zod schema, a standard schema or a JSON Schema).
   * `method: "functionCalling"` (default) binds one tool and forces its call; `"jsonSchema"`
   * constrains the reply itself to the schema; `"jsonMode"` to any JSON value. `includeRaw` gives
   * `{ raw, parsed }`.
   */
  // deno-lint-ignore no-explicit-any
  override withStructuredOutput<RunOutput extends Record<string, any> = Record<string, any>>(
    // deno-lint-ignore no-explicit-any
    outputSchema: any,
    config?: StructuredOutputMethodOptions<false>,
  ): Runnable<BaseLanguageModelInput, RunOutput>;
  // deno-lint-ignore no-explicit-any
  override withStructuredOutput<RunOutput extends Record<string, any> = Record<string, any>>(
    // deno-lint-ignore no-explicit-any
    outputSchema: any,
    config?: StructuredOutputMethodOptions<true>,
  ): Runnable<BaseLanguageModelInput, { raw: BaseMessage; parsed: RunOutput }>;
  override withStructuredOutput(
    // deno-lint-ignore no-explicit-any
    outputSchema: any,
    config?: StructuredOutputMethodOptions<boolean>,
  ): Runnable {
    return structuredOutput(this, outputSchema, config);
  }

  /** Streams the reply; LangChain calls this from `stream`, `streamEvents` and streaming callbacks. */
  override async *_streamResponseChunks(
    messages: BaseMessage[],
    options: this["ParsedCallOptions"],
    runManager?: CallbackManagerForLLMRun,
  ): AsyncGenerator<ChatGenerationChunk> {
    let stats: KvfoldRunStats | undefined;
    const call = toolPrompt(this.model, messages, options, chatMessage);
    const pieces = runKvfold({
      ...runSettings(this.#fields, options, this.#reused ??= prefixCacheOf(this.#fields)),
      prompt: call.messages,
      templateTools: call.templateTools,
      jsonSchema: call.jsonSchema,
      onStats: (s) => (stats = s),
    });
    let envelope = "";
    for await (const piece of pieces) {
      // A tool envelope is read whole: its JSON is not the reply's text.
      if (call.envelope) {
        envelope += piece;
        continue;
      }
      const chunk = new ChatGenerationChunk({ text: piece, message: new AIMessageChunk({ content: piece }) });
      // Report before yielding: a consumer that stops here still saw every token counted.
      await runManager?.handleLLMNewToken(piece, undefined, undefined, undefined, undefined, { chunk });
      yield chunk;
    }
    if (call.envelope) {
      const { content, toolCalls } = parseToolReply(envelope);
      const message = new AIMessageChunk({
        content,
        tool_call_chunks: toolCalls.map((c, index) => ({
          type: "tool_call_chunk" as const,
          id: c.id,
          name: c.name,
          args: JSON.stringify(c.args),
          index,
        })),
      });
      const chunk = new ChatGenerationChunk({ text: content, message });
      await runManager?.handleLLMNewToken(content, undefined, undefined, undefined, undefined, { chunk });
      yield chunk;
    }
    const kvfold = responseMetadata(stats!);
    // A closing empty chunk carries the counters, as LangChain providers do with usage.
    yield new ChatGenerationChunk({
      text: "",
      message: new AIMessageChunk({
        content: "",
        response_metadata: { model: this.modelName, kvfold },
        usage_metadata: {
          input_tokens: inputTokens(kvfold),
          output_tokens: kvfold.generatedTokens,
          total_tokens: inputTokens(kvfold) + kvfold.generatedTokens,
          input_token_details: { cache_read: kvfold.reusedPositions },
        },
      }),
      generationInfo: { finish_reason: kvfold.stopReason },
    });
  }

  /** Generates the whole reply; LangChain calls this from `invoke` when nothing listens to tokens. */
  override async _generate(
    messages: BaseMessage[],
    options: this["ParsedCallOptions"],
    runManager?: CallbackManagerForLLMRun,
  ): Promise<ChatResult> {
    let all: ChatGenerationChunk | undefined;
    for await (const chunk of this._streamResponseChunks(messages, options, runManager)) {
      all = all === undefined ? chunk : all.concat(chunk);
    }
    const chunk = all!.message as AIMessageChunk;
    const message = new AIMessage({
      content: all!.text,
      tool_calls: chunk.tool_calls,
      response_metadata: chunk.response_metadata,
      usage_metadata: chunk.usage_metadata,
    });
    const usage = chunk.usage_metadata!;
    return {
      generations: [{ text: all!.text, message, generationInfo: all!.generationInfo }],
      llmOutput: {
        tokenUsage: {
          promptTokens: usage.input_tokens,
          completionTokens: usage.output_tokens,
          totalTokens: usage.total_tokens,
        },
      },
    };
  }
}

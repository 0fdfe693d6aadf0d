/**
 * {@linkcode ChatKvfold} and {@linkcode KvfoldLLM}: a kvfold model as a LangChain chat model and
 * text LLM, streaming, abortable, and reading compressed context from documents.
 *
 * @module
 */

import {
  type AdapterMode,
  type CacheOptions,
  type ChatMessage,
  JsonGrammar,
  type Model,
  parseToolReply,
  PrefixCache,
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
  type BaseLLMCallOptions,
  type BaseLLMParams,
  type BaseMessage,
  type BindToolsInput,
  type CallbackManagerForLLMRun,
  ChatGenerationChunk,
  type ChatResult,
  GenerationChunk,
  type LangSmithParams,
  LLM,
  type MessageContent,
  type ModelProfile,
  type Runnable,
  type StructuredOutputMethodOptions,
} from "./_deps.ts";
import { type KvfoldToolCallOptions, normalizeToolChoice, toolPrompt, toolSpecs } from "./tools.ts";
import { structuredOutput } from "./structured_output.ts";
import { checkModelOption, checkStoreOption } from "../_model_option.ts";
import { countModelTokens } from "./embeddings.ts";
import {
  formatTextContext,
  type KvfoldDocumentsCallOptions,
  type KvfoldGenerationSettings,
  type KvfoldRunRequest,
  type KvfoldRunStats,
  runKvfold,
  type TextContextFormatter,
} from "./_generate.ts";

/** Fields both model classes take. */
export interface KvfoldModelFields extends KvfoldGenerationSettings {
  /** The loaded model (for LLoCO, the compressor checkpoint, which is also the decoder). */
  model: Model;
  /** Reads payload vectors that documents reference but do not carry in memory. */
  store?: StoreLike;
  /** Stop strings used when a call gives none. */
  stop?: string[];
  /**
   * The model's name in `response_metadata.model` and LangSmith's `ls_model_name`; default: the
   * model folder's name.
   */
  modelName?: string;
  /** How plain-text documents and the question are written into the prompt; default {@linkcode formatTextContext}. */
  formatContext?: TextContextFormatter;
  /**
   * Read the text of documents kvfold handed out with a compressed payload, when it appears
   * verbatim in the prompt (as a stock `prompt | model` chain writes it), from their summary
   * vectors instead; the rule of `integrations/_payload_text.ts`. Default true.
   */
  payloadText?: boolean;
  /**
   * How each generation's session keeps its KV cache (default full; `cache` is LangChain's response
   * cache). A bounded cache
   * (`{ kind: "lococo", heads }`, `h2o`, `streaming`) keeps long text contexts within a fixed memory.
   */
  kvCache?: CacheOptions;
  /**
   * Keep the KV cache between calls (full `kvCache` only): a call whose messages (and payload
   * documents' vectors, and adapter) start as an earlier call's prompt and reply did prefills only
   * the rest, so a growing chat history costs one new turn per call, and many questions over the
   * same compressed documents skip the vectors' prefill. The answer is the same as without it.
   * `true` keeps up to 4 sessions of this instance (freed with the model); or share a kvfold
   * `PrefixCache` (and `clear()` it when done). Default false.
   */
  reuseCache?: boolean | PrefixCache;
  /** Default of the `adapterMode` call option (payload documents of several adapter groups); default "compose". */
  adapterMode?: AdapterMode;
}

/** Fields of {@linkcode ChatKvfold}. */
export interface ChatKvfoldInput extends KvfoldModelFields, BaseChatModelParams {}

/** Call options of {@linkcode ChatKvfold}: LangChain's (`stop`, `signal`, ...) plus `documents` and sampling. */
export interface ChatKvfoldCallOptions
  extends BaseChatModelCallOptions, KvfoldDocumentsCallOptions, Omit<KvfoldToolCallOptions, "tool_choice"> {}

/** Fields of {@linkcode KvfoldLLM}. */
export interface KvfoldLLMInput extends KvfoldModelFields, BaseLLMParams {
  /** Wrap the prompt as one user message in the chat template; default: when the model has one. */
  chat?: boolean;
}

/** Call options of {@linkcode KvfoldLLM}: LangChain's plus `documents` and sampling. */
export interface KvfoldLLMCallOptions
  extends BaseLLMCallOptions, KvfoldDocumentsCallOptions, Pick<KvfoldToolCallOptions, "jsonSchema"> {}

/** What `response_metadata.kvfold` (and `generationInfo.kvfold`) reports about a generation. */
export interface KvfoldResponseMetadata {
  /** Why generation ended. */
  stopReason: KvfoldRunStats["stopReason"];
  /** Prompt tokens (after the prefix) prefilled by this call: without those `reusedPositions` kept. */
  promptTokens: number;
  /** Positions (vectors and prompt tokens) kept from an earlier call's cache (`reuseCache`); else 0. */
  reusedPositions: number;
  /** Tokens generated. */
  generatedTokens: number;
  /** Summary-vector positions before the prompt. */
  prefixPositions: number;
  /** Adapter groups of the context documents. */
  groups: string[];
  /**
   * The LoRA that decoded: its registry name, a composition as one line ("a×0.75 + b×0.25"), or
   * null: the base model.
   */
  adapter: string | null;
  /** The adapters that decoded with their weights (empty: the base model). */
  adapters: { name: string; weight: number }[];
  prefillMs: number;
  decodeMs: number;
}

/** kvfold's sampling defaults (`SamplingOptions`), as LangSmith reports them. */
const DEFAULT_TEMPERATURE = 0.8;
/** Tokens generated when neither the model nor the call sets `maxTokens` (see `runKvfold`). */
const DEFAULT_MAX_TOKENS = 256;

const SETTING_KEYS = [
  "maxTokens",
  "temperature",
  "topP",
  "topK",
  "minP",
  "repetitionPenalty",
  "repeatLastN",
  "seed",
  "ignoreEos",
] as const satisfies readonly (keyof KvfoldGenerationSettings)[];

/** Call options of tool calling and constrained replies. */
const TOOL_KEYS = ["tools", "tool_choice", "parallel_tool_calls", "jsonSchema"];

/** The model's settings overridden by the call's. */
function settingsOf(
  fields: KvfoldGenerationSettings,
  call: KvfoldGenerationSettings,
): KvfoldGenerationSettings {
  const out: Record<string, unknown> = {};
  for (const key of SETTING_KEYS) out[key] = call[key] ?? fields[key];
  return out as KvfoldGenerationSettings;
}

function responseMetadata(stats: KvfoldRunStats): KvfoldResponseMetadata {
  return {
    stopReason: stats.stopReason,
    promptTokens: stats.promptTokens,
    reusedPositions: stats.reusedPositions,
    generatedTokens: stats.generatedTokens,
    prefixPositions: stats.prefixPositions,
    groups: stats.groups,
    adapter: stats.adapter,
    adapters: stats.adapters,
    prefillMs: stats.prefillMs,
    decodeMs: stats.decodeMs,
  };
}

/** Checks the one options object both model classes take, naming the class at fault. */
function checkFields(cls: string, fields: unknown): void {
  checkModelOption(cls, fields);
  checkStoreOption(cls, fields, false);
}

/** The model's name: the `modelName` option, else its folder's name. */
function nameOf(fields: KvfoldModelFields): string {
  return fields.modelName ??
    (fields.model.dir.split(/[\\/]/).filter((p) => p !== "").pop() || fields.model.dir);
}

/** LangSmith's standard parameters of a call (the call's settings over the model's). */
function lsParams(
  fields: KvfoldModelFields,
  options: KvfoldGenerationSettings & { stop?: string[] },
  modelType: "chat" | "llm",
): Omit<LangSmithParams, "ls_model_type"> & { ls_model_type: "chat" | "llm" } {
  const settings = settingsOf(fields, options);
  return {
    ls_provider: "kvfold",
    ls_model_name: nameOf(fields),
    ls_model_type: modelType,
    ls_temperature: settings.temperature ?? DEFAULT_TEMPERATURE,
    ls_max_tokens: settings.maxTokens ?? DEFAULT_MAX_TOKENS,
    ls_stop: options.stop ?? fields.stop ?? [],
  };
}

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

/**
 * A kvfold model as a LangChain text LLM: the prompt string is wrapped as one user message in the
 * chat template (when the model has one, unless `chat: false`), and completed. Streaming, `stop`,
 * `signal` and the `documents` call option work as in {@linkcode ChatKvfold}; `generationInfo.kvfold`
 * of the last chunk reports the counters.
 *
 * @example
 * ```ts ignore
 * import { Kvfold } from "../../mod.ts";
 * import { KvfoldLLM } from "./mod.ts";
 *
 * using kv = await Kvfold.open();
 * using model = await kv.loadModel("./models/tiny");
 * const llm = new KvfoldLLM({ model, maxTokens: 32, temperature: 0 });
 * console.log(await llm.invoke("Name three rivers.", { stop: ["\n\n"] }));
 * ```
 */
export class KvfoldLLM extends LLM<KvfoldLLMCallOptions> {
  /** The LangChain class name. */
  static override lc_name(): string {
    return "KvfoldLLM";
  }
  override lc_namespace: string[] = ["kvfold", "llms"];
  /** The model that generates. */
  readonly model: Model;
  /** Where payload references are resolved. */
  readonly store?: StoreLike;
  /** Whether prompts go through the chat template. */
  readonly chat: boolean;
  readonly #fields: KvfoldModelFields;
  #reused?: PrefixCache;

  /** The model's name, as `generationInfo.model` and LangSmith's `ls_model_name` report it. */
  readonly modelName: string;

  /**
   * Completes with `fields.model`; throws `TypeError` when `fields` is not an options object with
   * a loaded model (a path string, a bare model) or `store` is not an open `DocumentStore`.
   */
  constructor(fields: KvfoldLLMInput) {
    checkFields("KvfoldLLM", fields);
    super(fields);
    this.model = fields.model;
    this.store = fields.store;
    this.chat = fields.chat ?? fields.model.tokenizer.hasChatTemplate;
    this.#fields = fields;
    this.modelName = nameOf(fields);
  }

  /**
   * LangSmith's standard parameters with `ls_model_type: "llm"`, in the shape `BaseChatModel`'s
   * `getLsParams` has (`@langchain/core`'s `LLM` has no such hook yet).
   */
  getLsParams(options: this["ParsedCallOptions"]): Omit<LangSmithParams, "ls_model_type"> & {
    ls_model_type: "llm";
  } {
    return lsParams(this.#fields, options ?? {}, "llm") as ReturnType<KvfoldLLM["getLsParams"]>;
  }

  override get callKeys(): string[] {
    return [...super.callKeys, "documents", "adapterMode", ...SETTING_KEYS, "jsonSchema"];
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
    return { model: this.model.dir, chat: this.chat, ...settingsOf(this.#fields, options ?? {}) };
  }

  /** Streams the completion; LangChain calls this from `stream` and `streamEvents`. */
  override async *_streamResponseChunks(
    prompt: string,
    options: this["ParsedCallOptions"],
    runManager?: CallbackManagerForLLMRun,
  ): AsyncGenerator<GenerationChunk> {
    let stats: KvfoldRunStats | undefined;
    const pieces = runKvfold({
      ...runSettings(this.#fields, options, this.#reused ??= prefixCacheOf(this.#fields)),
      prompt: this.chat ? [{ role: "user", content: prompt }] : prompt,
      jsonSchema: options.jsonSchema,
      onStats: (s) => (stats = s),
    });
    for await (const piece of pieces) {
      const chunk = new GenerationChunk({ text: piece });
      await runManager?.handleLLMNewToken(piece, undefined, undefined, undefined, undefined, { chunk });
      yield chunk;
    }
    const kvfold = responseMetadata(stats!);
    yield new GenerationChunk({
      text: "",
      generationInfo: { finish_reason: kvfold.stopReason, model: this.modelName, kvfold },
    });
  }

  /** Generates the whole completion; LangChain calls this from `invoke`. */
  override async _call(
    prompt: string,
    options: this["ParsedCallOptions"],
    runManager?: CallbackManagerForLLMRun,
  ): Promise<string> {
    let text = "";
    for await (const chunk of this._streamResponseChunks(prompt, options, runManager)) text += chunk.text;
    return text;
  }
}

/** What both classes give `runKvfold` besides the prompt: `fields` under the call's options. */
function runSettings(
  fields: KvfoldModelFields,
  call: KvfoldDocumentsCallOptions & { stop?: string[]; signal?: AbortSignal },
  prefixCache: PrefixCache | undefined,
): Omit<KvfoldRunRequest, "prompt"> {
  return {
    model: fields.model,
    documents: call.documents ?? [],
    store: fields.store,
    settings: settingsOf(fields, call),
    stop: call.stop ?? fields.stop,
    signal: call.signal,
    formatContext: fields.formatContext ?? formatTextContext,
    payloadText: fields.payloadText,
    cache: fields.kvCache,
    prefixCache,
    adapterMode: call.adapterMode ?? fields.adapterMode,
  };
}

/** The sessions `reuseCache` keeps: the caller's cache, a new one for `true`, none otherwise. */
function prefixCacheOf(fields: KvfoldModelFields): PrefixCache | undefined {
  const { reuseCache } = fields;
  if (reuseCache === undefined || reuseCache === false) return undefined;
  if (reuseCache === true) return new PrefixCache(fields.model);
  if (reuseCache instanceof PrefixCache) return reuseCache;
  throw new TypeError("Cannot generate: reuseCache is not a boolean or a PrefixCache");
}

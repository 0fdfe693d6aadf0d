/**
 * A LlamaIndex LLM that runs a kvfold model, optionally with compressed contexts (LLoCO summary
 * vectors) placed before the prompt as input embeddings.
 *
 * @module
 */

import {
  type AdapterMode,
  answerFromChunks,
  type AnswerStats,
  type CacheOptions,
  type ChatMessage as KvfoldChatMessage,
  type GenerateOptions,
  type JsonSchema,
  type Model,
  PrefixCache,
} from "../../mod.ts";
import {
  type ChatMessage,
  type ChatResponse,
  type ChatResponseChunk,
  type CompletionResponse,
  type LLMChatParamsNonStreaming,
  type LLMChatParamsStreaming,
  type LLMCompletionParamsNonStreaming,
  type LLMCompletionParamsStreaming,
  type LLMMetadata,
  type MessageContent,
  ToolCallLLM,
  wrapLLMEvent,
} from "./_deps.ts";
import { type KvfoldToolChoice, llamaToolCall, replyOptions, toolTurn } from "./tools.ts";
import type { CompressedContext } from "./payload.ts";
import { kvfoldTokenizer, type LlamaIndexTokenizer } from "./embedding.ts";
import { checkModelOption, fromPositional } from "../_model_option.ts";
import { takePayloadTexts } from "../_payload_text.ts";

/** Generation settings of a {@linkcode KvfoldLLM}, as kvfold's `generate` takes them. */
export type KvfoldGenerationOptions = Omit<GenerateOptions, "prompt" | "signal" | "onPrefillProgress">;

/**
 * Options of a {@linkcode KvfoldLLM}: the model, default generation settings and how it describes
 * itself.
 */
export interface KvfoldLLMOptions extends KvfoldGenerationOptions {
  /** Default `toolChoice` of calls with `tools` (see {@linkcode KvfoldCallOptions}). */
  toolChoice?: KvfoldToolChoice;
  /** Default `parallelToolCalls`. */
  parallelToolCalls?: boolean | number;
  /** The loaded model (for LLoCO, the compressor's `model`, which is also the decoder). */
  model: Model;
  /** Name in `metadata.model`; default: the model folder's name. */
  modelName?: string;
  /** `metadata.contextWindow`; default: the model's max_position_embeddings. */
  contextWindow?: number;
  /**
   * Wrap `complete()` prompts in the chat template as one user message, as kvfold's
   * `answerFromChunks` does; default: when the model has a template.
   */
  templateCompletions?: boolean;
  /**
   * Read the text of nodes kvfold handed out with a compressed payload, when it appears verbatim in
   * a prompt (as a stock response synthesizer writes it), from their summary vectors instead; the
   * rule of `integrations/_payload_text.ts`. Default true.
   */
  payloadText?: boolean;
  /**
   * How each generation's session keeps its KV cache (default full). A bounded cache
   * (`{ kind: "lococo", heads }`, `h2o`, `streaming`) keeps long text contexts within a fixed memory.
   */
  kvCache?: CacheOptions;
  /**
   * Keep the KV cache between calls (full `kvCache` only): a `chat()` whose messages (and
   * contexts' vectors, and adapter) start as an earlier call's prompt and reply did prefills only
   * the rest, and many questions over the same contexts skip the vectors' prefill. The answer is
   * the same as without it. `true` keeps up to 4 sessions of this instance (freed with the model);
   * or share a kvfold `PrefixCache` (and `clear()` it when done). Default false.
   */
  reuseCache?: boolean | PrefixCache;
}

/**
 * Counters of one call: kvfold's `AnswerStats` (generation counters, `prefixPositions`, the
 * `adapter` that decoded and the adapter `group` decoded for).
 */
export interface KvfoldGenerationStats extends AnswerStats {}

/**
 * Per-call options: in `additionalChatOptions` of `chat`, beside `prompt` in `complete`. They
 * override the LLM's defaults for this call. `signal` may also be given at the top level of
 * `chat`'s params.
 */
export interface KvfoldCallOptions extends KvfoldGenerationOptions {
  /** Summary vectors to place before the prompt, in order (positions 0..K-1). */
  contexts?: readonly CompressedContext[];
  /**
   * The adapter group to decode with; default: the contexts' groups. The adapters follow kvfold's
   * rule (`adaptersForChunks`): the one registered under a group's name, else none; contexts of
   * several groups compose their adapters (see `adapterMode`) unless this picks one group.
   */
  group?: string;
  /**
   * How contexts of several adapter groups choose: `"compose"` (default: every group's adapter,
   * weighted by its share of the contexts' `score`), `"best"` (the best context's group alone) or
   * `"none"` (the base model).
   */
  adapterMode?: AdapterMode;
  /** Aborts the call; the response (or its stream) then rejects with an ABORTED `KvfoldError`. */
  signal?: AbortSignal;
  /** Receives the call's counters when generation ends. */
  onStats?: (stats: KvfoldGenerationStats) => void;
  /** With `tools`: `"auto"` (default: call tools or answer), `"any"`, `"none"`, or a tool's name. */
  toolChoice?: KvfoldToolChoice;
  /** Tool calls one reply may make: false (default) one, true up to 8, or a number. */
  parallelToolCalls?: boolean | number;
}

const DEFAULT_TEMPERATURE = 0.8;
const DEFAULT_TOP_P = 0.95;
const DEFAULT_MAX_TOKENS = 256;

/** The text of a message; kvfold models read text only. */
function messageText(content: MessageContent, where: string): string {
  if (typeof content === "string") return content;
  return content.map((part) => {
    if (part.type !== "text") {
      throw new TypeError(
        `Cannot prompt a kvfold model: ${where} has a ${part.type} part, only text is read`,
      );
    }
    return part.text;
  }).join("\n\n");
}

/** LlamaIndex roles in chat-template terms (templates know system, user and assistant). */
function templateRole(role: ChatMessage["role"]): string {
  return role === "memory" || role === "developer" ? "system" : role;
}

function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/**
 * LlamaIndex's `LLM` over a loaded kvfold model: `chat` through the model's chat template and
 * `complete`, each streaming with `stream: true`. With `contexts` (compressed documents: kvfold
 * `RetrievedChunk`s, or {@linkcode compressedContextOf} of retrieved nodes) their summary vectors
 * are prefilled as input embeddings before the prompt, exactly as kvfold's `answerFromChunks`.
 *
 * Every call runs in a fresh session. Breaking out of a stream stops generation; `signal` aborts
 * it. Non-streaming responses carry {@linkcode KvfoldGenerationStats} as `raw`.
 *
 * @example
 * ```ts ignore
 * import { Compressor, DocumentStore, Kvfold } from "../../mod.ts";
 * import { KvfoldLLM } from "./llm.ts";
 * using kv = await Kvfold.open();
 * using compressor = await Compressor.load(kv, "./models/lloco");
 * using store = DocumentStore.open("kb.sqlite");
 * const llm = new KvfoldLLM({ model: compressor.model, temperature: 0, maxTokens: 64 });
 * const contexts = store.retrieve("Which ship left?", { k: 2 });
 * const stream = await llm.chat({
 *   messages: [{ role: "user", content: "Which ship left?" }],
 *   stream: true,
 *   signal: AbortSignal.timeout(30_000),
 *   additionalChatOptions: { contexts },
 * });
 * for await (const chunk of stream) console.log(chunk.delta);
 * ```
 */
export class KvfoldLLM extends ToolCallLLM<KvfoldCallOptions> {
  /**
   * Tool calling: `chat({ tools })` replies are held by constrained decoding to kvfold's tool-call
   * envelope and come back as `message.options.toolCall` (each call's `input` valid against its
   * tool's `parameters`), which LlamaIndex's agents (`agent()`, `FunctionAgent`, `llm.exec`) run.
   */
  readonly supportToolCall = true;
  /** The model generating. */
  readonly model: Model;
  readonly #options: KvfoldLLMOptions;
  #reused?: PrefixCache;

  /**
   * Runs `options.model` (a kvfold model, or a compressor's `model` for LLoCO) with the default
   * settings of `options`; throws `TypeError` when `options` is not an options object with a loaded
   * model (a path string, say).
   */
  constructor(options: KvfoldLLMOptions);
  /** @deprecated Pass one options object: `new KvfoldLLM({ model, ...options })`. */
  constructor(model: Model, options?: Omit<KvfoldLLMOptions, "model">);
  constructor(...args: [KvfoldLLMOptions] | [Model, Omit<KvfoldLLMOptions, "model">?]) {
    const options = fromPositional(args, ["model"]) as KvfoldLLMOptions;
    checkModelOption("KvfoldLLM", options);
    super();
    this.model = options.model;
    this.#options = { ...options };
  }

  /** The model's own tokenizer for `Settings.tokenizer` (LlamaIndex counts with cl100k otherwise). */
  get tokenizer(): LlamaIndexTokenizer {
    return kvfoldTokenizer(this.model);
  }

  /** Name, sampling defaults and context window, as LlamaIndex reads them. */
  get metadata(): LLMMetadata {
    const o = this.#options;
    return {
      model: o.modelName ?? (this.model.dir.split("/").pop() || this.model.dir),
      temperature: o.temperature ?? DEFAULT_TEMPERATURE,
      topP: o.topP ?? DEFAULT_TOP_P,
      maxTokens: o.maxTokens ?? DEFAULT_MAX_TOKENS,
      contextWindow: o.contextWindow ?? this.model.info.maxPositions,
      tokenizer: undefined,
      structuredOutput: true,
    };
  }

  /**
   * Chat through the model's chat template; streams `ChatResponseChunk`s with `stream: true`.
   * `signal` (top level, or in `additionalChatOptions`) aborts it.
   */
  chat(
    params: LLMChatParamsStreaming<KvfoldCallOptions> & KvfoldChatSignal,
  ): Promise<AsyncIterable<ChatResponseChunk>>;
  /** Chat through the model's chat template; resolves to the whole reply, `raw` holding its stats. */
  chat(params: LLMChatParamsNonStreaming<KvfoldCallOptions> & KvfoldChatSignal): Promise<ChatResponse>;
  @wrapLLMEvent
  async chat(
    params:
      & (LLMChatParamsStreaming<KvfoldCallOptions> | LLMChatParamsNonStreaming<KvfoldCallOptions>)
      & KvfoldChatSignal,
  ): Promise<AsyncIterable<ChatResponseChunk> | ChatResponse> {
    const call0 = params.additionalChatOptions ?? {};
    const p = call0.parallelToolCalls ?? this.#options.parallelToolCalls;
    const tooling = llamaToolCall(
      params.tools,
      call0.toolChoice ?? this.#options.toolChoice,
      params.responseFormat,
      p === true ? 8 : typeof p === "number" ? p : 1,
    );
    const texts = params.messages.map((m, i) => messageText(m.content, `message ${i}`));
    const taken = this.#takePayloadTexts(texts);
    const prompt = this.#encodeChat(params.messages, tooling.instructions, taken.texts);
    const call = withContexts(call0, taken.contexts);
    const signal = eitherSignal(params.signal, call0.signal);
    const pieces = this.#generate(prompt, { ...call, signal }, tooling.jsonSchema);
    if (params.stream) {
      return (async function* () {
        if (!tooling.envelope) {
          for await (const delta of pieces) yield { delta, raw: null };
          return;
        }
        // A tool envelope is read whole: its JSON is not the reply's text.
        const { text } = await collect(pieces);
        const { content, options } = replyOptions(text);
        yield options ? { delta: content, raw: null, options } : { delta: content, raw: null };
      })();
    }
    const { text, stats } = await collect(pieces);
    if (!tooling.envelope) return { message: { role: "assistant", content: text }, raw: stats };
    const { content, options } = replyOptions(text);
    return { message: { role: "assistant", content, ...(options ? { options } : {}) }, raw: stats };
  }

  /**
   * Completes `prompt` (through the chat template when `templateCompletions`, the default for
   * models with one); streams `CompletionResponse`s with `stream: true`. Takes
   * {@linkcode KvfoldCallOptions} beside `prompt`.
   */
  override complete(
    params: LLMCompletionParamsStreaming & KvfoldCallOptions,
  ): Promise<AsyncIterable<CompletionResponse>>;
  /** Completes `prompt`; resolves to the whole text, `raw` holding its stats. */
  override complete(params: LLMCompletionParamsNonStreaming & KvfoldCallOptions): Promise<CompletionResponse>;
  override async complete(
    params: (LLMCompletionParamsStreaming | LLMCompletionParamsNonStreaming) & KvfoldCallOptions,
  ): Promise<AsyncIterable<CompletionResponse> | CompletionResponse> {
    const { prompt, stream, responseFormat, ...call } = params;
    const jsonSchema = llamaToolCall(undefined, undefined, responseFormat, 1).jsonSchema;
    const chat = this.#options.templateCompletions ?? this.model.tokenizer.hasChatTemplate;
    const taken = this.#takePayloadTexts([messageText(prompt, "the prompt")]);
    const ids = this.model.encodePrompt(taken.texts[0], { chat });
    const pieces = this.#generate(ids, withContexts(call, taken.contexts), jsonSchema);
    if (stream) {
      return (async function* () {
        for await (const text of pieces) yield { text, raw: null };
      })();
    }
    const { text, stats } = await collect(pieces);
    return { text, raw: stats };
  }

  /**
   * Cuts remembered payload texts (nodes kvfold handed out with vectors) out of the prompt texts,
   * unless `payloadText` is false: the rule of `integrations/_payload_text.ts`.
   */
  #takePayloadTexts(texts: string[]): { texts: string[]; contexts: CompressedContext[] } {
    if (this.#options.payloadText === false) return { texts, contexts: [] };
    const { texts: cut, chunks } = takePayloadTexts(texts);
    return { texts: cut, contexts: chunks };
  }

  /** Prompt ids of a conversation: the chat template, or a plain transcript for models without one. */
  #encodeChat(
    messages: readonly ChatMessage[],
    instructions: string | null = null,
    texts?: readonly string[],
  ): number[] {
    let turns: KvfoldChatMessage[] = messages.map((m, i) => {
      const content = texts?.[i] ?? messageText(m.content, `message ${i}`);
      return toolTurn(m, content) ?? { role: templateRole(m.role), content };
    });
    if (instructions !== null) {
      turns = turns[0]?.role === "system"
        ? [{ role: "system", content: `${instructions}\n\n${turns[0].content}` }, ...turns.slice(1)]
        : [{ role: "system", content: instructions }, ...turns];
    }
    if (this.model.tokenizer.hasChatTemplate) return this.model.encodePrompt(turns);
    const transcript = turns.map((t) => `${t.role}: ${t.content}\n`).join("") + "assistant:";
    return this.model.encodePrompt(transcript);
  }

  /**
   * Validates now (so a bad call rejects before any stream is handed out) and returns the pieces
   * of a generation that starts when first pulled: contexts' vectors at positions 0..K-1, the
   * prompt from K, through kvfold's `answerFromChunks`.
   */
  #generate(
    prompt: number[],
    call: KvfoldCallOptions,
    jsonSchema?: JsonSchema,
  ): AsyncGenerator<string, KvfoldGenerationStats> {
    const {
      contexts = [],
      group,
      adapterMode,
      signal,
      onStats,
      toolChoice: _choice,
      parallelToolCalls: _parallel,
      ...overrides
    } = call;
    const {
      model: _model,
      modelName: _name,
      contextWindow: _window,
      templateCompletions: _template,
      payloadText: _payloadText,
      kvCache: cache,
      reuseCache,
      toolChoice: _defaultChoice,
      parallelToolCalls: _defaultParallel,
      ...defaults
    } = this.#options;
    const settings: GenerateOptions = {
      temperature: DEFAULT_TEMPERATURE,
      topP: DEFAULT_TOP_P,
      maxTokens: DEFAULT_MAX_TOKENS,
      ...definedOnly(defaults),
      ...definedOnly(overrides),
    };
    // answerFromChunks checks the contexts and picks the adapter now; it runs when first pulled.
    let prefixCache = this.#reused;
    if (prefixCache === undefined && reuseCache) {
      if (reuseCache !== true && !(reuseCache instanceof PrefixCache)) {
        throw new TypeError("Cannot generate: reuseCache is not a boolean or a PrefixCache");
      }
      prefixCache = this.#reused = reuseCache === true ? new PrefixCache(this.model) : reuseCache;
    }
    return answerFromChunks(this.model, contexts, prompt, {
      ...settings,
      ...(jsonSchema !== undefined ? { jsonSchema } : {}),
      group,
      adapterMode,
      signal,
      cache,
      prefixCache,
      onStats,
    });
  }
}

/** `chat`'s params may carry `signal` at the top level, as LlamaIndex users pass it to other LLMs. */
export interface KvfoldChatSignal {
  /** Aborts the call, as `additionalChatOptions.signal` does. */
  signal?: AbortSignal;
}

/** Call options with `found` contexts after the call's own (each context once). */
function withContexts(call: KvfoldCallOptions, found: readonly CompressedContext[]): KvfoldCallOptions {
  if (found.length === 0) return call;
  const own = call.contexts ?? [];
  return { ...call, contexts: [...own, ...found.filter((c) => !own.includes(c))] };
}

/** One signal that fires when either does. */
function eitherSignal(a: AbortSignal | undefined, b: AbortSignal | undefined): AbortSignal | undefined {
  if (a === undefined || a === b) return b;
  if (b === undefined) return a;
  return AbortSignal.any([a, b]);
}

async function collect(
  pieces: AsyncGenerator<string, KvfoldGenerationStats>,
): Promise<{ text: string; stats: KvfoldGenerationStats }> {
  let text = "";
  for (;;) {
    const r = await pieces.next();
    if (r.done) return { text, stats: r.value };
    text += r.value;
  }
}

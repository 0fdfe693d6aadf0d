/**
 * {@linkcode KvfoldLLM}: a kvfold model as a LangChain text LLM, streaming, abortable, and reading
 * compressed context from documents.
 *
 * @module
 */

import type { Model, PrefixCache, StoreLike } from "../../mod.ts";
import {
  type BaseLLMCallOptions,
  type BaseLLMParams,
  type CallbackManagerForLLMRun,
  GenerationChunk,
  type LangSmithParams,
  LLM,
  type MessageContent,
} from "./_deps.ts";
import type { KvfoldToolCallOptions } from "./tools.ts";
import { countModelTokens } from "./embeddings.ts";
import { type KvfoldDocumentsCallOptions, type KvfoldRunStats, runKvfold } from "./_generate.ts";
import {
  checkFields,
  type KvfoldModelFields,
  lsParams,
  nameOf,
  prefixCacheOf,
  responseMetadata,
  runSettings,
  SETTING_KEYS,
  settingsOf,
} from "./_model_fields.ts";

/** Fields of {@linkcode KvfoldLLM}. */
export interface KvfoldLLMInput extends KvfoldModelFields, BaseLLMParams {
  /** Wrap the prompt as one user message in the chat template; default: when the model has one. */
  chat?: boolean;
}

/** Call options of {@linkcode KvfoldLLM}: LangChain's plus `documents` and sampling. */
export interface KvfoldLLMCallOptions
  extends BaseLLMCallOptions, KvfoldDocumentsCallOptions, Pick<KvfoldToolCallOptions, "jsonSchema"> {}

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

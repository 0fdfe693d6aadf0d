/**
 * What {@linkcode ChatKvfold} and {@linkcode KvfoldLLM} share: the fields both take, the
 * `response_metadata.kvfold` they report, and how a call's options go over the fields into `runKvfold`.
 *
 * @module
 */

import { type AdapterMode, type CacheOptions, type Model, PrefixCache, type StoreLike } from "../../mod.ts";
import type { LangSmithParams } from "./_deps.ts";
import { checkModelOption, checkStoreOption } from "../_model_option.ts";
import {
  formatTextContext,
  type KvfoldDocumentsCallOptions,
  type KvfoldGenerationSettings,
  type KvfoldRunRequest,
  type KvfoldRunStats,
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
export const DEFAULT_TEMPERATURE = 0.8;
/** Tokens generated when neither the model nor the call sets `maxTokens` (see `runKvfold`). */
export const DEFAULT_MAX_TOKENS = 256;

export const SETTING_KEYS = [
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

/** The model's settings overridden by the call's. */
export function settingsOf(
  fields: KvfoldGenerationSettings,
  call: KvfoldGenerationSettings,
): KvfoldGenerationSettings {
  const out: Record<string, unknown> = {};
  for (const key of SETTING_KEYS) out[key] = call[key] ?? fields[key];
  return out as KvfoldGenerationSettings;
}

export function responseMetadata(stats: KvfoldRunStats): KvfoldResponseMetadata {
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
export function checkFields(cls: string, fields: unknown): void {
  checkModelOption(cls, fields);
  checkStoreOption(cls, fields, false);
}

/** The model's name: the `modelName` option, else its folder's name. */
export function nameOf(fields: KvfoldModelFields): string {
  return fields.modelName ??
    (fields.model.dir.split(/[\\/]/).filter((p) => p !== "").pop() || fields.model.dir);
}

/** LangSmith's standard parameters of a call (the call's settings over the model's). */
export function lsParams(
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

/** What both classes give `runKvfold` besides the prompt: `fields` under the call's options. */
export function runSettings(
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
export function prefixCacheOf(fields: KvfoldModelFields): PrefixCache | undefined {
  const { reuseCache } = fields;
  if (reuseCache === undefined || reuseCache === false) return undefined;
  if (reuseCache === true) return new PrefixCache(fields.model);
  if (reuseCache instanceof PrefixCache) return reuseCache;
  throw new TypeError("Cannot generate: reuseCache is not a boolean or a PrefixCache");
}

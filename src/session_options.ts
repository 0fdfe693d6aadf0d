/**
 * The options and result types of a {@link Session}: how one is made, what prefill and generate
 * take, and the counters they leave.
 *
 * @module
 */

import type { Adapter, AdapterTerm } from "./adapter.ts";
import type { CacheKind, CacheOptions } from "./lococo.ts";
import type { DecodeBatcher } from "./batch.ts";
import type { SamplingOptions } from "./sampler.ts";
import type { GrammarOption, JsonSchema } from "./grammar/json_grammar.ts";

/** Options of {@link Model.session}. */
export interface SessionOptions {
  /**
   * With the full cache: KV positions to reserve; default the model's max_position_embeddings.
   * With a compressing cache: the most positions the session may see; default no limit.
   */
  contextSize?: number;
  /** Most tokens per prefill chunk; default 256. */
  batchSize?: number;
  /** How the KV cache is kept (see {@link CacheOptions}); default `{ kind: "full" }`. */
  cache?: CacheOptions;
}

/** KV cache and scratch memory of a session ({@link Session.memory}). */
export interface SessionMemory {
  /** The cache kind. */
  cacheKind: CacheKind;
  /** Positions seen (the next token's absolute position). */
  position: number;
  /** Most positions the session may see. */
  contextSize: number;
  /** Bytes of KV cache allocated (keys, values and slot scores, every layer). */
  kvBytes: number;
  /** KV slots per layer allocated. */
  kvSlots: number;
  /** KV slots per layer in use now. */
  kvSlotsUsed: number;
  /** Most KV slots per layer in use at once since creation or reset. */
  kvSlotsPeak: number;
  /** Times the cache was compressed since creation or reset. */
  compressions: number;
  /** Milliseconds spent compressing since creation or reset. */
  compressMs: number;
  /** M (lococo, h2o) or sinks + window (streaming); 0 for the full cache. */
  slots: number;
  /** Prefill segment (chunk) length in tokens. */
  segment: number;
  /** Bytes of activation scratch allocated. */
  scratchBytes: number;
}

/** Options of {@link Session.generate}. */
export interface GenerateOptions extends SamplingOptions {
  /** Text (tokenized without BOS) or ids to prefill before generating. */
  prompt?: string | readonly number[];
  /**
   * Ids already in the cache before `prompt` that the repetition penalty counts as prompt (a
   * conversation continued in the same session sees what a fresh session given it all would).
   */
  history?: readonly number[];
  /** Most tokens to generate; default 256. */
  maxTokens?: number;
  /** Stop when the text contains one of these (the stop string is not emitted). */
  stop?: readonly string[];
  /** Stop on these token ids, in addition to the model's EOS ids (unless `ignoreEos`). */
  stopTokens?: readonly number[];
  /** Keep going past EOS (benchmarks). */
  ignoreEos?: boolean;
  /**
   * Longest time in milliseconds the native loop samples and decodes before it hands the tokens over
   * (one yield per hand-over; the first token always comes alone). A hand-over costs a few hundred
   * microseconds of FFI thread wake-ups, so a longer interval decodes faster and streams in coarser
   * pieces; 0 hands over every token. Default 40. With a grammar or a batcher every token is handed over.
   */
  streamIntervalMs?: number;
  /** Aborts generation within one decode step; the iterator then throws an ABORTED KvfoldError. */
  signal?: AbortSignal;
  /** Called with (tokensDone, tokensTotal) during prompt prefill. */
  onPrefillProgress?: (done: number, total: number) => void;
  /**
   * LoRA adapter for this request (an {@link Adapter} or a name registered in `model.adapters`);
   * `null` runs the base model; absent keeps the session's current one.
   */
  adapter?: Adapter | string | null;
  /**
   * Several adapters composed with weights for this request (see {@link Session.setAdapters});
   * `[]` runs the base model; absent keeps the session's current ones. Not together with `adapter`.
   */
  adapters?: readonly AdapterTerm[];
  /** Runs each decode step through this batcher, together with other sessions' concurrent steps. */
  batcher?: DecodeBatcher;
  /**
   * Constrains the output to compact JSON valid against this JSON Schema ({@link JsonGrammar}):
   * with `maxTokens` at least the bytes of its shortest value, the text always parses and validates.
   */
  jsonSchema?: JsonSchema;
  /** `"json"`: any one JSON value; or a compiled {@link JsonGrammar}. Exclusive with `jsonSchema`. */
  grammar?: GrammarOption;
}

/** Why generation ended. */
export type StopReason = "eos" | "stop-token" | "stop-string" | "max-tokens" | "context-full";

/** Counters of the last generate() call. */
export interface GenerationStats {
  promptTokens: number;
  generatedTokens: number;
  prefillMs: number;
  decodeMs: number;
  stopReason: StopReason;
  /** Ids generated (the stop token included when one ended it). */
  tokens: number[];
}

/** Options of {@link Session.prefill}. */
export interface PrefillOptions {
  /** `"last"` (default) keeps only the last position's logits; `"all"` returns every position's. */
  logits?: "last" | "all";
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
  /** Selects this adapter (or `null`: none) first, as {@link Session.setAdapter} does. */
  adapter?: Adapter | string | null;
  /** Selects this composition first, as {@link Session.setAdapters} does. Not together with `adapter`. */
  adapters?: readonly AdapterTerm[];
  /**
   * Receives each position's final-normed hidden state ([n, hidden] row major): what token
   * embeddings are pooled from (see {@link Model.embed}).
   */
  hiddenOut?: Float32Array;
}

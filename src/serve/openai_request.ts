/**
 * Reading the bodies of `POST /v1/chat/completions` and `POST /v1/completions`: every field OpenAI
 * defines that this server honours, checked with a 400 that names the field, and kvfold's own
 * `kvfold` extension field. Fields that would change the answer but are not supported (tools,
 * logprobs, n > 1, penalties) are refused rather than ignored; unknown fields are ignored, as new
 * SDK versions send new ones.
 *
 * @module
 */

import { ADAPTER_MODES, type AdapterMode } from "../adapter_composition.ts";
import type { ChatMessage } from "../tokenizer.ts";
import { HttpError } from "./http_error.ts";

/** The `kvfold` extension field: compressed context and adapter choice. */
export interface KvfoldField {
  /** Name of the store to read chunks from (default: the server's only or first store). */
  store?: string;
  /** Text to retrieve chunks with (default: the last user message, or the prompt). */
  query?: string;
  /** Chunks retrieved (default 2). */
  k?: number;
  /** These chunks, by store id, instead of retrieval. */
  chunkIds?: number[];
  /** Retrieve within this adapter group and decode with its adapter (`null`: as chunks without one). */
  group?: string | null;
  /** Decode with this adapter (a name the server loaded); `null`: the base model. */
  adapter?: string | null;
  /** Chunks of several groups: compose (default), best or none. */
  adapterMode?: AdapterMode;
  /** A cache the server offers by kind name (`full`, or the kind of `--cache`). */
  cache?: string;
  /** Keep generating past EOS (benchmarks). */
  ignoreEos?: boolean;
}

/** A completion request, checked. */
export interface CompletionRequest {
  /** Which endpoint it came to. */
  endpoint: "chat" | "completions";
  /** The model id asked for. */
  model: string;
  /** Chat: the conversation. */
  messages?: ChatMessage[];
  /** Completions: the prompt text, or token ids. */
  prompt?: string | number[];
  stream: boolean;
  /** `stream_options.include_usage`: a last chunk with the usage. */
  includeUsage: boolean;
  /** Most tokens to generate; absent: up to the context. */
  maxTokens?: number;
  temperature: number;
  topP: number;
  seed?: number;
  stop: string[];
  /** The extension field (empty when absent). */
  kvfold: KvfoldField;
  /** Whether the request asks for compressed context (store, query, k or chunk_ids given). */
  retrieves: boolean;
}

type Json = Record<string, unknown>;

const isObject = (v: unknown): v is Json => typeof v === "object" && v !== null && !Array.isArray(v);
const show = (v: unknown): string => {
  let s: string;
  try {
    s = JSON.stringify(v) ?? String(v);
  } catch {
    s = String(v);
  }
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
};
const bad = (param: string, message: string) => HttpError.badRequest(param, `${param}: ${message}`);

function optNumber(body: Json, key: string, min: number, max: number, path = key): number | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isFinite(v) || v < min || v > max) {
    throw bad(path, `must be a number in [${min}, ${max}], got ${show(v)}`);
  }
  return v;
}

function optInt(body: Json, key: string, min: number, max: number, path = key): number | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min || v > max) {
    throw bad(path, `must be an integer in [${min}, ${max}], got ${show(v)}`);
  }
  return v;
}

function optBool(body: Json, key: string, path = key): boolean | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "boolean") throw bad(path, `must be true or false, got ${show(v)}`);
  return v;
}

function optString(body: Json, key: string, path = key): string | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "string") throw bad(path, `must be a string, got ${show(v)}`);
  return v;
}

// The largest max_tokens taken: an int32 (the native counter), whatever the context allows.
const INT32_MAX = 0x7fffffff;
const MAX_STOP_STRINGS = 4;

/** Reads a chat or completions body (already parsed JSON). Throws an {@link HttpError} (400). */
export function parseCompletionRequest(body: unknown, endpoint: "chat" | "completions"): CompletionRequest {
  if (!isObject(body)) throw HttpError.badRequest(null, `The body must be a JSON object, got ${show(body)}`);
  const model = body.model;
  if (typeof model !== "string" || model === "") {
    throw bad("model", `must be a model id (see GET /v1/models), got ${show(model)}`);
  }
  const n = optInt(body, "n", 1, 1);
  void n;
  const bestOf = optInt(body, "best_of", 1, 1);
  void bestOf;
  for (const key of ["presence_penalty", "frequency_penalty"]) {
    const v = optNumber(body, key, -2, 2);
    if (v !== undefined && v !== 0) throw bad(key, "only 0 is supported by this server");
  }
  if (body.logit_bias !== undefined && body.logit_bias !== null) {
    if (!isObject(body.logit_bias) || Object.keys(body.logit_bias).length > 0) {
      throw bad("logit_bias", "is not supported by this server (send none or {})");
    }
  }
  if (body.logprobs !== undefined && body.logprobs !== null && body.logprobs !== false) {
    throw bad("logprobs", "is not supported by this server");
  }
  if (body.top_logprobs !== undefined && body.top_logprobs !== null && body.top_logprobs !== 0) {
    throw bad("top_logprobs", "is not supported by this server");
  }
  if (Array.isArray(body.tools) ? body.tools.length > 0 : body.tools !== undefined && body.tools !== null) {
    throw bad("tools", "tool calls are not supported by this server");
  }
  if (body.functions !== undefined && body.functions !== null) {
    throw bad("functions", "function calls are not supported by this server");
  }
  const format = body.response_format;
  if (format !== undefined && format !== null && !(isObject(format) && format.type === "text")) {
    throw bad("response_format", 'only { "type": "text" } is supported by this server');
  }
  const stream = optBool(body, "stream") ?? false;
  let includeUsage = false;
  if (body.stream_options !== undefined && body.stream_options !== null) {
    if (!isObject(body.stream_options)) {
      throw bad("stream_options", `must be an object, got ${show(body.stream_options)}`);
    }
    includeUsage = optBool(body.stream_options, "include_usage", "stream_options.include_usage") ?? false;
  }
  const maxTokens = optInt(body, "max_completion_tokens", 1, INT32_MAX) ??
    optInt(body, "max_tokens", 1, INT32_MAX) ?? (endpoint === "completions" ? 16 : undefined);
  const temperature = optNumber(body, "temperature", 0, 2) ?? 1;
  const topP = optNumber(body, "top_p", 0, 1) ?? 1;
  if (topP === 0) throw bad("top_p", "must be above 0 (use temperature 0 for greedy decoding)");
  const seed = optInt(body, "seed", 0, Number.MAX_SAFE_INTEGER);
  const stop = parseStop(body.stop);
  const kvfold = parseKvfoldField(body.kvfold);
  const retrieves = kvfold.store !== undefined || kvfold.query !== undefined || kvfold.k !== undefined ||
    kvfold.chunkIds !== undefined;
  const common = { model, stream, includeUsage, maxTokens, temperature, topP, seed, stop, kvfold, retrieves };
  if (endpoint === "chat") return { endpoint, ...common, messages: parseMessages(body.messages) };
  if (body.echo !== undefined && body.echo !== null && body.echo !== false) {
    throw bad("echo", "is not supported by this server");
  }
  if (body.suffix !== undefined && body.suffix !== null && body.suffix !== "") {
    throw bad("suffix", "is not supported by this server");
  }
  return { endpoint, ...common, prompt: parsePrompt(body.prompt) };
}

function parseStop(v: unknown): string[] {
  if (v === undefined || v === null) return [];
  const list = typeof v === "string" ? [v] : v;
  if (!Array.isArray(list) || list.length > MAX_STOP_STRINGS) {
    throw bad("stop", `must be a string or up to ${MAX_STOP_STRINGS} strings, got ${show(v)}`);
  }
  list.forEach((s, i) => {
    if (typeof s !== "string" || s === "") {
      throw bad(`stop[${i}]`, `must be a non-empty string, got ${show(s)}`);
    }
  });
  return list as string[];
}

const ROLES = new Set(["system", "developer", "user", "assistant"]);

function parseMessages(v: unknown): ChatMessage[] {
  if (!Array.isArray(v) || v.length === 0) {
    throw bad("messages", `must be a non-empty array of messages, got ${show(v)}`);
  }
  return v.map((m, i) => {
    const at = `messages[${i}]`;
    if (!isObject(m)) throw bad(at, `must be an object with role and content, got ${show(m)}`);
    if (typeof m.role !== "string" || !ROLES.has(m.role)) {
      throw bad(`${at}.role`, `must be one of ${[...ROLES].join(", ")}, got ${show(m.role)}`);
    }
    if (m.tool_calls !== undefined && m.tool_calls !== null) {
      throw bad(`${at}.tool_calls`, "tool calls are not supported by this server");
    }
    // OpenAI's newer "developer" role is the system message of older templates.
    const role = m.role === "developer" ? "system" : m.role;
    return { role, content: messageText(m.content, `${at}.content`) };
  });
}

// content: a string, or an array of { type: "text", text } parts (joined).
function messageText(v: unknown, at: string): string {
  if (typeof v === "string") return v;
  if (!Array.isArray(v)) throw bad(at, `must be a string or an array of text parts, got ${show(v)}`);
  return v.map((p, j) => {
    if (!isObject(p) || p.type !== "text" || typeof p.text !== "string") {
      throw bad(`${at}[${j}]`, `must be { "type": "text", "text": "..." }, got ${show(p)}`);
    }
    return p.text;
  }).join("");
}

function parsePrompt(v: unknown): string | number[] {
  // One prompt: a string, token ids, or a list holding exactly one of those.
  if (Array.isArray(v) && v.length === 1 && (typeof v[0] === "string" || Array.isArray(v[0]))) v = v[0];
  if (typeof v === "string") return v;
  if (Array.isArray(v) && v.length > 0 && v.every((x) => typeof x === "number")) {
    v.forEach((x, i) => {
      if (!Number.isSafeInteger(x) || x < 0) {
        throw bad(`prompt[${i}]`, `must be a token id, got ${show(x)}`);
      }
    });
    return v as number[];
  }
  throw bad("prompt", `must be a string, an array of token ids, or a list of one of those, got ${show(v)}`);
}

/** Reads the `kvfold` extension field; absent is `{}`. */
export function parseKvfoldField(v: unknown): KvfoldField {
  if (v === undefined || v === null) return {};
  if (!isObject(v)) throw bad("kvfold", `must be an object, got ${show(v)}`);
  const out: KvfoldField = {};
  const store = optString(v, "store", "kvfold.store");
  if (store !== undefined) out.store = store;
  const query = optString(v, "query", "kvfold.query");
  if (query !== undefined) out.query = query;
  const k = optInt(v, "k", 1, 256, "kvfold.k");
  if (k !== undefined) out.k = k;
  if (v.chunk_ids !== undefined && v.chunk_ids !== null) {
    const ids = v.chunk_ids;
    if (!Array.isArray(ids) || ids.length === 0 || ids.length > 256) {
      throw bad("kvfold.chunk_ids", `must be an array of 1 to 256 chunk ids, got ${show(ids)}`);
    }
    ids.forEach((id, i) => {
      if (typeof id !== "number" || !Number.isSafeInteger(id) || id < 1) {
        throw bad(`kvfold.chunk_ids[${i}]`, `must be a chunk id (an integer from 1), got ${show(id)}`);
      }
    });
    out.chunkIds = ids as number[];
  }
  for (const key of ["group", "adapter"] as const) {
    if (!(key in v)) continue;
    const g = v[key];
    if (g !== null && (typeof g !== "string" || g === "")) {
      throw bad(`kvfold.${key}`, `must be a non-empty string or null, got ${show(g)}`);
    }
    out[key] = g as string | null;
  }
  const mode = optString(v, "adapter_mode", "kvfold.adapter_mode");
  if (mode !== undefined) {
    if (!(ADAPTER_MODES as readonly string[]).includes(mode)) {
      throw bad("kvfold.adapter_mode", `must be one of ${ADAPTER_MODES.join(", ")}, got ${show(mode)}`);
    }
    out.adapterMode = mode as AdapterMode;
  }
  const cache = optString(v, "cache", "kvfold.cache");
  if (cache !== undefined) out.cache = cache;
  const ignoreEos = optBool(v, "ignore_eos", "kvfold.ignore_eos");
  if (ignoreEos !== undefined) out.ignoreEos = ignoreEos;
  return out;
}

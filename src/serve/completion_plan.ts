/**
 * From a checked request to what the scheduler runs: the model id's adapter, the prompt's token
 * ids (chat template or plain text), the retrieved chunks' summary vectors, the adapter composition
 * (the rule `answerFromChunks` applies), the cache and the context budget. Every refusal is an
 * {@link HttpError}: 400 naming the field, 404 for an unknown model, 413 past the context.
 *
 * @module
 */

import type { AdapterTerm } from "../adapter.ts";
import { adaptersForChunks, describeAdapters } from "../adapter_composition.ts";
import { KvfoldError } from "../errors.ts";
import type { CacheOptions } from "../lococo.ts";
import type { Model } from "../model.ts";
import { concatVectors, type RetrievedChunk } from "../store.ts";
import type { Store } from "../store/store_api.ts";
import { HttpError } from "./http_error.ts";
import type { CompletionRequest } from "./openai_request.ts";
import type { JobSpec } from "./job.ts";

/** What the server serves a request from. */
export interface ServedModel {
  model: Model;
  /** The base model's id (`base`); adapters are `base:<name>`. */
  name: string;
  /** Stores by name (the first is the default). */
  stores: ReadonlyMap<string, Store>;
  /** Caches by kind name, besides the full cache. */
  caches: ReadonlyMap<string, CacheOptions>;
  /** The cache a request without `kvfold.cache` gets ("full" or a key of `caches`). */
  defaultCache: string;
}

/** A request made ready to run, with what its response reports. */
export interface CompletionPlan {
  spec: Omit<JobSpec, "signal">;
  /** What the response's `kvfold` field says. */
  info: {
    adapter: string | null;
    adapters: { name: string; weight: number }[];
    group: string | null;
    chunk_ids: number[];
    sources: string[];
    prefix_positions: number;
    cache: string;
  };
}

/** The model ids served: the base and one per registered adapter. */
export function modelIds(served: ServedModel): string[] {
  return [served.name, ...served.model.adapters.list().map((e) => `${served.name}:${e.name}`)];
}

/** Plans a checked request (throws {@link HttpError}). */
export async function planCompletion(served: ServedModel, req: CompletionRequest): Promise<CompletionPlan> {
  const { model } = served;
  const registered = new Set(model.adapters.list().map((e) => e.name));
  // The model id: the base, or the base and an adapter.
  let idAdapter: string | undefined;
  if (req.model !== served.name) {
    const prefix = `${served.name}:`;
    const name = req.model.startsWith(prefix) ? req.model.slice(prefix.length) : undefined;
    if (name === undefined || !registered.has(name)) {
      throw new HttpError(404, `The model ${JSON.stringify(req.model)} does not exist; see GET /v1/models`, {
        param: "model",
        code: "model_not_found",
      });
    }
    idAdapter = name;
  }
  const kv = req.kvfold;
  if (typeof kv.adapter === "string" && !registered.has(kv.adapter)) {
    throw new HttpError(
      400,
      `kvfold.adapter: no adapter named ${JSON.stringify(kv.adapter)} is loaded (loaded: ${
        [...registered].join(", ") || "none"
      })`,
      { param: "kvfold.adapter", code: "model_not_found" },
    );
  }
  const promptIds = promptTokens(model, req);
  const chunks = req.retrieves ? await retrieveChunks(served, req) : [];
  const H = model.info.hiddenSize;
  for (const c of chunks) {
    if (c.vectors.hidden !== H) {
      throw HttpError.badRequest(
        "kvfold.store",
        `chunk ${c.chunkId} of ${c.source} was compressed to ${c.vectors.hidden} dimensions, the model has ${H}`,
      );
    }
  }
  const adapters: AdapterTerm[] = adaptersForChunks(model, chunks, {
    adapter: kv.adapter !== undefined ? kv.adapter : idAdapter,
    group: kv.group,
    adapterMode: kv.adapterMode,
  });
  const cacheName = kv.cache ?? served.defaultCache;
  let cache: CacheOptions | undefined;
  if (cacheName !== "full") {
    cache = served.caches.get(cacheName);
    if (cache === undefined) {
      throw HttpError.badRequest(
        "kvfold.cache",
        `kvfold.cache: this server offers ${["full", ...served.caches.keys()].join(", ")}, not ${
          JSON.stringify(cacheName)
        }`,
      );
    }
  }
  const vectors = chunks.length > 0 ? concatVectors(chunks.map((c) => c.vectors)) : undefined;
  const rows = vectors?.rows ?? 0;
  if (rows + promptIds.length === 0) throw HttpError.badRequest("prompt", "prompt: the prompt is empty");
  const maxPositions = model.info.maxPositions;
  const full = cache === undefined || cache.kind === "full";
  if (full && rows + promptIds.length > maxPositions) {
    throw new HttpError(
      413,
      `The prompt takes ${rows + promptIds.length} positions (${rows} summary vectors and ` +
        `${promptIds.length} tokens), past the model's context of ${maxPositions}`,
      { param: req.endpoint === "chat" ? "messages" : "prompt", code: "context_length_exceeded" },
    );
  }
  // Without max_tokens, up to the context (OpenAI's default); with it, no further than the context.
  const room = Math.max(1, maxPositions - rows - promptIds.length);
  const maxTokens = Math.min(req.maxTokens ?? room, full ? room : Infinity);
  const groups = [...new Set(chunks.map((c) => c.group).filter((g): g is string => !!g))];
  return {
    spec: {
      promptIds,
      vectors: vectors === undefined
        ? undefined
        : vectors.bf16 !== undefined
        ? { data: vectors.bf16, dtype: "bf16", rows }
        : { data: vectors.data, dtype: "f32", rows },
      adapters,
      cache,
      contextSize: full ? Math.min(maxPositions, rows + promptIds.length + maxTokens + 1) : undefined,
      maxTokens,
      temperature: req.temperature,
      topP: req.topP,
      seed: req.seed,
      stop: req.stop,
      ignoreEos: kv.ignoreEos,
    },
    info: {
      adapter: adapters.length === 0 ? null : describeAdapters(adapters),
      adapters: adapters.map((t) => ({
        name: typeof t.adapter === "string" ? t.adapter : t.adapter.name,
        weight: t.weight,
      })),
      group: kv.group !== undefined ? kv.group : groups.length === 1 ? groups[0] : null,
      chunk_ids: chunks.map((c) => c.chunkId),
      sources: chunks.map((c) => c.source),
      prefix_positions: rows,
      cache: cacheName,
    },
  };
}

function promptTokens(model: Model, req: CompletionRequest): number[] {
  if (req.messages !== undefined) {
    try {
      return model.encodePrompt(req.messages);
    } catch (e) {
      if (e instanceof KvfoldError) throw HttpError.badRequest("messages", `messages: ${e.message}`);
      throw e;
    }
  }
  const prompt = req.prompt!;
  if (typeof prompt === "string") return model.encodePrompt(prompt);
  const vocab = model.info.vocabSize;
  prompt.forEach((id, i) => {
    if (id >= vocab) {
      throw HttpError.badRequest(`prompt[${i}]`, `prompt[${i}]: ${id} is past the vocabulary of ${vocab}`);
    }
  });
  return [...prompt];
}

async function retrieveChunks(served: ServedModel, req: CompletionRequest): Promise<RetrievedChunk[]> {
  const kv = req.kvfold;
  const name = kv.store ?? served.stores.keys().next().value;
  if (name === undefined) {
    throw HttpError.badRequest(
      "kvfold.store",
      "kvfold.store: this server has no store (start it with --store)",
    );
  }
  const store = served.stores.get(name);
  if (store === undefined) {
    throw HttpError.badRequest(
      "kvfold.store",
      `kvfold.store: no store named ${JSON.stringify(name)} (this server has ${
        [...served.stores.keys()].join(", ")
      })`,
    );
  }
  try {
    if (kv.chunkIds !== undefined) return await store.getChunks(kv.chunkIds);
    const query = kv.query ?? defaultQuery(req);
    return await store.retrieve(query, { k: kv.k ?? 2, group: kv.group ?? undefined });
  } catch (e) {
    if (e instanceof KvfoldError && e.code === "INVALID_ARGUMENT") {
      const param = kv.chunkIds !== undefined ? "kvfold.chunk_ids" : "kvfold.query";
      throw HttpError.badRequest(param, `${param}: ${e.message}`);
    }
    throw e;
  }
}

// Retrieval by the last user message (chat) or the prompt text (completions).
function defaultQuery(req: CompletionRequest): string {
  if (req.messages !== undefined) {
    const user = req.messages.findLast((m) => m.role === "user");
    if (user !== undefined) return user.content;
  } else if (typeof req.prompt === "string") {
    return req.prompt;
  }
  throw HttpError.badRequest(
    "kvfold.query",
    "kvfold.query: needed when there is no user message or prompt text",
  );
}

/**
 * The LLoCO pipeline on top of the pieces: compress documents chunk by chunk into the store, and
 * answer a question from the retrieved chunks' summary vectors placed before the prompt.
 *
 * @module
 */

import { Adapter, type AdapterTerm } from "./adapter.ts";
import { type AdapterMode, adaptersForChunks, describeAdapters } from "./adapter_composition.ts";
import type { CacheOptions } from "./lococo.ts";
import type { Compressor } from "./compressor.ts";
import { KvfoldError } from "./errors.ts";
import { type ChunkBreak, chunkOptionsProblem, documentChunkSpans } from "./chunk_spans.ts";
import type { Model } from "./model.ts";
import type { GenerateOptions, GenerationStats, Session } from "./session.ts";
import { concatVectors, type NewChunk, type StoredVectors } from "./store.ts";
import { asStore } from "./store/open_store.ts";
import type { StoreLike } from "./store/store_api.ts";
import type { ChatMessage } from "./tokenizer.ts";
import type { PrefixCache } from "./prefix_cache.ts";

/** A document to compress. */
export interface SourceDocument {
  /** Unique name (a path or URL). */
  source: string;
  text: string;
  /** Adapter group (the LoRA that will decode it). */
  group?: string;
  metadata?: Record<string, unknown>;
}

/** Options of {@link compressIntoStore}. */
export interface CompressIntoStoreOptions {
  /** Tokens per chunk (at most); each chunk is compressed and retrieved on its own. Default 1536. */
  chunkTokens?: number;
  /**
   * Where chunks end: `"tokens"` (default) every chunkTokens; `"sentence"` at the last sentence end
   * in the chunk's second half, so a sentence's words stay in one chunk ({@linkcode documentChunkSpans}).
   */
  breakAt?: ChunkBreak;
  /**
   * Tokens per compressor segment; default the compressor's own (`Compressor.segmentLength`), else
   * chunkTokens.
   */
  segmentLength?: number;
  /** Replace a document already stored under the same source. */
  replace?: boolean;
  signal?: AbortSignal;
  /** Called with (tokensDone, tokensTotal) of this document. */
  onProgress?: (done: number, total: number) => void;
}

/**
 * Splits a document into chunks of at most `chunkTokens` tokens (at sentence ends with `breakAt:
 * "sentence"`), compresses each, and commits the document
 * with all its chunks in one transaction (an interrupted run leaves no half-written document) to
 * `store`: a {@linkcode Store} of any backend (`openStore(location)`) or a `DocumentStore`.
 * Returns the document's id, its stored chunk ids in order (for `store.getChunks`), the tokens that
 * went in and the summary vectors that came out.
 *
 * @example
 * ```ts ignore
 * const r = await compressIntoStore(compressor, store, { source: "report.txt", text, group: "finance" });
 * const chunks = store.getChunks(r.chunkIds); // chunk 0 first
 * ```
 */
export async function compressIntoStore(
  compressor: Compressor,
  store: StoreLike,
  doc: SourceDocument,
  options: CompressIntoStoreOptions = {},
): Promise<{ documentId: number; chunkIds: number[]; tokens: number; vectors: number }> {
  const { chunks, tokens } = await compressChunks(compressor, doc, options);
  const target = asStore(store);
  const documentId = await target.addDocument(
    { source: doc.source, group: doc.group, metadata: doc.metadata, chunks },
    { replace: options.replace },
  );
  // Read back at once on the same connection: only another process replacing the source in between
  // could make this differ.
  const stored = await target.getDocument(doc.source);
  if (stored === undefined || stored.documentId !== documentId) {
    throw new KvfoldError(
      "INVALID_STATE",
      `Cannot compress ${doc.source}: another connection replaced or removed it as it was stored`,
    );
  }
  return {
    documentId,
    chunkIds: stored.chunkIds,
    tokens,
    vectors: chunks.reduce((n, c) => n + c.vectors.rows, 0),
  };
}

/**
 * The chunks {@link compressIntoStore} stores for `doc`: its tokens cut by {@linkcode documentChunkSpans},
 * each part compressed, with its decoded text and token count. Nothing is written: a caller that commits
 * the document in a transaction of its own (a work queue's worker) uses this.
 *
 * @example
 * ```ts ignore
 * const { chunks, tokens } = await compressChunks(compressor, { source: "a.txt", text });
 * await store.addDocument({ source: "a.txt", chunks });
 * ```
 */
export async function compressChunks(
  compressor: Compressor,
  doc: SourceDocument,
  options: Omit<CompressIntoStoreOptions, "replace"> = {},
): Promise<{ chunks: NewChunk[]; tokens: number }> {
  const tok = compressor.model.tokenizer;
  const ids = tok.encode(doc.text);
  if (ids.length === 0) {
    throw new KvfoldError("INVALID_ARGUMENT", `Cannot compress ${doc.source}: the document is empty`);
  }
  const chunkTokens = options.chunkTokens ?? 1536;
  const problem = chunkOptionsProblem(options);
  if (problem) throw new RangeError(`Cannot compress: ${problem}`);
  const chunks: NewChunk[] = [];
  for (const [off, end] of documentChunkSpans(ids, tok, { chunkTokens, breakAt: options.breakAt })) {
    const part = ids.slice(off, end);
    const summary = await compressor.compress(part, {
      segmentLength: options.segmentLength ?? compressor.segmentLength ?? chunkTokens,
      signal: options.signal,
      onProgress: (d) => options.onProgress?.(off + d, ids.length),
    });
    chunks.push({ text: tok.decode(part), tokens: part.length, vectors: summary });
  }
  return { chunks, tokens: ids.length };
}

/**
 * Summary vectors to place before the prompt, with the adapter group they were compressed for. A
 * {@linkcode RetrievedChunk} from the store is one.
 */
export interface AnswerContext {
  /** The summary vectors, `rows × hidden`, row-major. */
  vectors: StoredVectors;
  /** The adapter group of the document (the LoRA trained to decode it), or null / absent: none. */
  group?: string | null;
  /** Where the vectors came from, for messages. */
  source?: string;
  /** The store's chunk id, for messages. */
  chunkId?: number;
  /** Retrieval score (higher is better): weighs the group's adapter in a composition. */
  score?: number;
}

/**
 * What {@link answerFromChunks} answers: a question (through the chat template when `chat`), chat
 * messages (through the chat template), or prompt token ids as they are. An empty array is no
 * prompt at all: generation continues right after the vectors.
 */
export type AnswerPrompt = string | readonly ChatMessage[] | readonly number[];

/** Which adapters decode an answer; see {@link adaptersForChunks}. */
export interface AdapterChoice {
  /** This adapter (an {@link Adapter} or a name registered in `model.adapters`); `null`: the base model. */
  adapter?: Adapter | string | null;
  /** Decode as this adapter group, whatever the chunks' groups; `null`: as chunks without a group. */
  group?: string | null;
  /** This composition of adapters, as given (wins over `adapter`, `group` and `adapterMode`). */
  adapters?: readonly AdapterTerm[];
  /**
   * How chunks of several adapter groups choose: `"compose"` (default; every group's adapter,
   * weighted by its share of the retrieval scores), `"best"` (the best chunk's group alone) or
   * `"none"` (the base model). See {@link adaptersForChunks}.
   */
  adapterMode?: AdapterMode;
}

/** Options of {@link answerFromChunks}. */
export interface AnswerOptions extends Omit<GenerateOptions, "prompt" | "adapter">, AdapterChoice {
  /** Wrap a string question in the model's chat template (default: when it has one). */
  chat?: boolean;
  /** How the answering session keeps its KV cache (default full). */
  cache?: CacheOptions;
  /** Receives the counters when generation ends (the generator also returns them). */
  onStats?: (stats: AnswerStats) => void;
  /**
   * Keeps the answering session afterwards and reuses one whose cache already holds these vectors
   * (and adapter) and the start of this prompt: only the rest is prefilled. Full cache only (with
   * another `cache` kind it is not used); see {@link PrefixCache}.
   */
  prefixCache?: PrefixCache;
}

/** Counters of one answer: the generation's, the prefix length and the adapter used. */
export interface AnswerStats extends GenerationStats {
  /** Positions the summary vectors took before the prompt. */
  prefixPositions: number;
  /**
   * The adapter that decoded: its registry name when one adapter decoded at weight 1, the
   * composition as one line ("harbour×0.6 + farm×0.4") when several did, null: the base model.
   */
  adapter: string | null;
  /** The adapters that decoded with their weights (empty: the base model). */
  adapters: { name: string; weight: number }[];
  /** The adapter group decoded for: `group` when given, else the chunks' one group, else null. */
  group: string | null;
  /**
   * Positions (vectors and prompt tokens) found in a {@link PrefixCache} session and not prefilled
   * again; 0 without one. `promptTokens` counts the prompt tokens that were prefilled.
   */
  reusedPositions: number;
}

/**
 * The one adapter for chunks whose groups agree on it: the single-adapter rule, for callers that need
 * one adapter. Answers ({@link answerFromChunks}, the CLI's `ask`, the LangChain and LlamaIndex
 * integrations) use {@link adaptersForChunks}, which composes the groups' adapters instead of
 * refusing chunks of groups that disagree:
 *
 * 1. `choice.adapter`, when given, wins (`null`: the base model).
 * 2. Else each group names its adapter: the one registered under the group's name in
 *    `model.adapters` (`await model.adapters.load(dir, { name: group })`), or none (the base
 *    model) when no adapter has that name. The groups are `choice.group` when given, else the
 *    chunks' distinct groups; chunks without a group have no say.
 * 3. The groups must agree on that adapter: one answer decodes with one adapter, and picking one of
 *    two would decode the other group's vectors with a LoRA not trained for them. Groups whose
 *    adapters differ throw an "INVALID_ARGUMENT" `KvfoldError` (pass `adapter` or `group` to choose);
 *    groups that all name no adapter decode with the base model.
 *
 * `choice` may also be the explicit adapter itself (`adapterForChunks(model, chunks, "finance")`).
 *
 * @example
 * ```ts ignore
 * await model.adapters.load("./loras/finance", { name: "finance" });
 * const chunks = store.retrieve("revenue", { k: 2, group: "finance" });
 * console.log(adapterForChunks(model, chunks)); // "finance"
 * ```
 */
export function adapterForChunks(
  model: Model,
  chunks: readonly Pick<AnswerContext, "group">[],
  choice: AdapterChoice | Adapter | string | null = {},
): Adapter | string | null {
  if (choice === null || typeof choice === "string" || choice instanceof Adapter) return choice;
  if (choice.adapter !== undefined) return choice.adapter;
  const groups = groupsOf(chunks, choice);
  const registered = new Set(model.adapters.list().map((e) => e.name));
  const named = [...new Set(groups.map((g) => registered.has(g) ? g : null))];
  if (named.length > 1) {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      `Cannot answer: the chunks come from adapter groups ${groups.join(", ")}, which decode with ` +
        `different adapters (${named.map((a) => a ?? "none").join(", ")}), and one answer decodes ` +
        "with one adapter (retrieve within one group, or pass adapter or group to choose)",
    );
  }
  return named[0] ?? null;
}

/** The groups the adapter rule looks at: `choice.group`, else the chunks' distinct groups. */
function groupsOf(chunks: readonly Pick<AnswerContext, "group">[], choice: AdapterChoice): string[] {
  if (choice.group !== undefined) return choice.group === null ? [] : [choice.group];
  return [
    ...new Set(chunks.map((c) => c.group).filter((g): g is string => typeof g === "string" && g !== "")),
  ];
}

/** Whether a prompt array holds token ids (an empty one counts as ids: no prompt). */
function isIds(prompt: readonly ChatMessage[] | readonly number[]): prompt is readonly number[] {
  return prompt.length === 0 || typeof prompt[0] === "number";
}

/**
 * The one answer path over compressed chunks: streams the answer to `question` with the chunks'
 * summary vectors as the prefix. Positions 0..K-1 hold the vectors (in the given order), the
 * prompt follows from K, in a fresh session with `options.cache`.
 *
 * The adapters ({@link adaptersForChunks}): `options.adapters` or `options.adapter` when given;
 * else the adapter registered in `model.adapters` under the chunks' group (or `options.group`),
 * none when no adapter has that name. Chunks of several groups decode with every group's adapter
 * composed, each weighted by its group's share of the chunks' retrieval scores (`adapterMode:
 * "compose"`, the default), with the best chunk's group alone (`"best"`), or with the base model
 * (`"none"`).
 *
 * Vectors read from a store reach the model as their stored bf16 bits (joined once, never widened
 * in JavaScript); vectors built in memory go as f32. The model widens bf16 exactly, so both give
 * the same logits.
 *
 * Checks the chunks, the adapter rule and the prompt at once (a bad call throws before any stream
 * is handed out); the session starts when the stream is first pulled. The generator returns the
 * counters ({@link AnswerStats}), which also land in `onStats`.
 *
 * @example
 * ```ts ignore
 * const chunks = store.retrieve("What was the revenue?", { k: 2 });
 * for await (const piece of answerFromChunks(model, chunks, "What was the revenue?")) console.log(piece);
 * ```
 */
export function answerFromChunks(
  model: Model,
  chunks: readonly AnswerContext[],
  question: AnswerPrompt,
  options: AnswerOptions = {},
): AsyncGenerator<string, AnswerStats, undefined> {
  const H = model.info.hiddenSize;
  chunks.forEach((c, i) => {
    if (c.vectors.hidden !== H) {
      const what = c.chunkId !== undefined
        ? `chunk ${c.chunkId}${c.source ? ` of ${c.source}` : ""}`
        : `context ${i}${c.source ? ` (${c.source})` : ""}`;
      throw new KvfoldError(
        "INVALID_ARGUMENT",
        `Cannot answer: ${what} was compressed to ${c.vectors.hidden} dimensions, the model has ${H}`,
      );
    }
  });
  const adapters = adaptersForChunks(model, chunks, options);
  const groups = groupsOf(chunks, options);
  const group = groups.length === 1 ? groups[0] : null;
  const prompt = typeof question === "string"
    ? model.encodePrompt(question, { chat: options.chat ?? model.tokenizer.hasChatTemplate })
    : isIds(question)
    ? [...question]
    : model.encodePrompt(question);
  return answerStream(model, chunks, prompt, adapters, group, options);
}

// The counters' adapter fields for the composition a session applied.
function adapterStats(session: Session): Pick<AnswerStats, "adapter" | "adapters"> {
  const terms = session.adapters;
  return {
    adapter: session.adapter?.name ?? (terms.length > 0 ? describeAdapters(terms) : null),
    adapters: terms.map((t) => ({ name: t.adapter.name, weight: t.weight })),
  };
}

async function* answerStream(
  model: Model,
  chunks: readonly AnswerContext[],
  prompt: number[],
  adapters: AdapterTerm[],
  group: string | null,
  options: AnswerOptions,
): AsyncGenerator<string, AnswerStats, undefined> {
  const {
    chat: _chat,
    cache,
    onStats,
    adapter: _adapter,
    adapters: _adapters,
    adapterMode: _mode,
    group: _group,
    prefixCache,
    ...generate
  } = options;
  const rows = chunks.reduce((n, c) => n + c.vectors.rows, 0);
  // A full cache reserves what this answer needs; a bounded one keeps its own default size.
  const full = (cache?.kind ?? "full") === "full";
  const needed = rows + prompt.length + (options.maxTokens ?? 256) + 1;
  // An empty prompt samples from the vectors' last logits, which a truncated cache no longer has.
  if (prefixCache !== undefined && full && prompt.length > 0) {
    if (prefixCache.model !== model) {
      throw new KvfoldError("INVALID_ARGUMENT", "Cannot answer: the prefix cache serves another model");
    }
    return yield* cachedAnswer(model, chunks, rows, prompt, adapters, group, options, needed);
  }
  using session = model.session({ contextSize: full ? needed : undefined, cache });
  await session.setAdapters(adapters);
  if (rows > 0) await prefillVectors(session, chunks, options.signal);
  yield* session.generate({ ...generate, prompt });
  const stats = {
    ...session.lastStats!,
    prefixPositions: rows,
    ...adapterStats(session),
    group,
    reusedPositions: 0,
  };
  onStats?.(stats);
  return stats;
}

async function prefillVectors(session: Session, chunks: readonly AnswerContext[], signal?: AbortSignal) {
  const prefix = concatVectors(chunks.map((c) => c.vectors));
  if (prefix.bf16 !== undefined) {
    await session.prefillEmbeddings(prefix.bf16, { dtype: "bf16", signal });
  } else {
    await session.prefillEmbeddings(prefix.data, { signal });
  }
}

/**
 * The answer in a {@link PrefixCache} session: keep the vectors and the prompt's common start,
 * prefill the rest. What the cache holds afterwards is exact (the session's position says how many
 * of prompt + answer went in); a failed answer goes back to the common start, or drops the session.
 */
async function* cachedAnswer(
  model: Model,
  chunks: readonly AnswerContext[],
  rows: number,
  prompt: number[],
  adapters: AdapterTerm[],
  group: string | null,
  options: AnswerOptions,
  needed: number,
): AsyncGenerator<string, AnswerStats, undefined> {
  const {
    chat: _c,
    cache: _k,
    onStats,
    adapter: _a,
    adapters: _as,
    adapterMode: _m,
    group: _g,
    prefixCache,
    ...generate
  } = options;
  const resolved = [];
  for (const t of adapters) {
    resolved.push({ adapter: await model.adapters.acquire(t.adapter), weight: t.weight });
  }
  // The cache key: one adapter at weight 1 by its name (as before compositions), else every term.
  const key = resolved.length === 0
    ? null
    : resolved.length === 1 && resolved[0].weight === 1
    ? resolved[0].adapter.name
    : JSON.stringify(resolved.map((t) => [t.adapter.name, t.weight]));
  const vectors = rows > 0 ? concatVectors(chunks.map((c) => c.vectors)) : null;
  const { entry, common: found } = prefixCache!._acquire(vectors, key, prompt, needed);
  const { session } = entry;
  // At least one prompt token is prefilled: its logits are the first sample's.
  const common = found < 0 ? -1 : Math.min(found, prompt.length - 1);
  let ok = false;
  try {
    await session.setAdapters(resolved);
    if (common < 0) {
      session.reset();
      if (rows > 0) await prefillVectors(session, chunks, options.signal);
    } else {
      session.truncate(rows + common);
    }
    const kept = Math.max(common, 0);
    entry.ids = prompt.slice(0, kept);
    yield* session.generate({ ...generate, prompt: prompt.slice(kept), history: prompt.slice(0, kept) });
    const last = session.lastStats!;
    entry.ids = [...prompt, ...last.tokens].slice(0, session.position - rows);
    ok = true;
    const stats = {
      ...last,
      prefixPositions: rows,
      ...adapterStats(session),
      group,
      reusedPositions: common < 0 ? 0 : rows + common,
    };
    onStats?.(stats);
    return stats;
  } finally {
    if (!ok) {
      // Cancelled and failed calls leave the session where the generation started, or unknown.
      try {
        if (session.position >= rows + entry.ids.length) session.truncate(rows + entry.ids.length);
        else ok = false;
        ok = session.position === rows + entry.ids.length;
      } catch {
        ok = false;
      }
    }
    prefixCache!._release(entry, ok);
  }
}

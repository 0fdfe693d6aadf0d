// The generation both LangChain model classes share: compressed payloads become the embedding prefix,
// plain documents become text context, and the prompt goes through the model's chat template.

import type {
  AdapterMode,
  AnswerContext,
  AnswerStats,
  CacheOptions,
  ChatMessage,
  JsonSchema,
  Model,
  PrefixCache,
  SamplingOptions,
  StoreLike,
} from "../../mod.ts";
import { answerFromChunks } from "../../mod.ts";
import type { DocumentInterface } from "./_deps.ts";
import { kvfoldPayloadOf, loadKvfoldChunks } from "./payload.ts";
import { takePayloadTexts } from "../_payload_text.ts";

/** Sampling and length settings a model is built with and a call may override. */
export interface KvfoldGenerationSettings extends SamplingOptions {
  /** Most tokens to generate; default 256. */
  maxTokens?: number;
  /** Keep generating past EOS (benchmarks, tests). */
  ignoreEos?: boolean;
}

/** Call options both model classes accept on top of LangChain's own. */
export interface KvfoldDocumentsCallOptions extends KvfoldGenerationSettings {
  /**
   * Context documents. Those carrying a kvfold payload (`metadata.kvfold`, as from
   * {@linkcode KvfoldRetriever} or {@linkcode KvfoldDocumentCompressor}) are placed before the prompt
   * as summary-vector embeddings, in the order given; the others are written into the prompt as text.
   */
  documents?: readonly DocumentInterface[];
  /**
   * How payload documents of several adapter groups choose the LoRA: `"compose"` (default: every
   * group's adapter, weighted by its share of the documents' `metadata.score`), `"best"` (the best
   * document's group alone) or `"none"` (the base model). See kvfold's `adaptersForChunks`.
   */
  adapterMode?: AdapterMode;
}

/** Builds the text the model sees when plain-text documents come with a question. */
export type TextContextFormatter = (documents: readonly DocumentInterface[], question: string) => string;

/**
 * The default {@linkcode TextContextFormatter}: `Context:`, the documents' text separated by blank
 * lines, then `Question:` and the question.
 *
 * @example
 * ```ts
 * import { formatTextContext } from "./mod.ts";
 * console.log(formatTextContext([{ pageContent: "Bees make honey.", metadata: {} }], "Who makes honey?"));
 * ```
 */
export function formatTextContext(documents: readonly DocumentInterface[], question: string): string {
  return `Context:\n${documents.map((d) => d.pageContent).join("\n\n")}\n\nQuestion: ${question}`;
}

/** Counters of one generation (`adapter`: the LoRA that decoded, by registry name, or null). */
export interface KvfoldRunStats extends Omit<AnswerStats, "group"> {
  /** Adapter groups of the context documents, in first-seen order. */
  groups: string[];
}

/** One generation request. */
export interface KvfoldRunRequest {
  model: Model;
  /** Chat messages (through the chat template when the model has one), or a raw completion prompt. */
  prompt: readonly ChatMessage[] | string;
  documents: readonly DocumentInterface[];
  /** Reads payload vectors that are not attached in memory. */
  store?: StoreLike;
  settings: KvfoldGenerationSettings;
  stop?: readonly string[];
  signal?: AbortSignal;
  formatContext: TextContextFormatter;
  /**
   * Read payload documents' text found in the prompt from their summary vectors (the rule of
   * `integrations/_payload_text.ts`); default true.
   */
  payloadText?: boolean;
  /** The session's KV cache (default full). */
  cache?: CacheOptions;
  /** Sessions kept between calls (full cache only): see kvfold's `PrefixCache`. */
  prefixCache?: PrefixCache;
  /** How chunks of several adapter groups choose the LoRA (kvfold's `adaptersForChunks`). */
  adapterMode?: AdapterMode;
  /** Tools for a chat template that lists them (Hugging Face form). */
  templateTools?: readonly Record<string, unknown>[];
  /** Constrains the reply to this JSON Schema (`"json"`: any JSON value). */
  jsonSchema?: JsonSchema | "json";
  onStats?: (stats: KvfoldRunStats) => void;
}

/**
 * The error a generation ends with when its signal fired: the signal's reason when it is an Error
 * (a DOMException "AbortError" by default), as LangChain's own `signal.throwIfAborted()` does; the
 * native error stays reachable as `cause` otherwise.
 */
function abortError(signal: AbortSignal, cause: unknown): Error {
  if (signal.reason instanceof Error) return signal.reason;
  const message = signal.reason === undefined ? "The operation was aborted" : String(signal.reason);
  return Object.assign(new DOMException(message, "AbortError"), { cause });
}

/**
 * Streams the answer's text pieces: payload documents' summary vectors at positions 0..K-1, then
 * the prompt (with the text documents folded into the last user turn), through `answerFromChunks`.
 *
 * An abort also closes the generator: LangChain rejects a stream the moment its signal fires and
 * never resumes the model's generator, so without this the session would stay open at its `yield`.
 */
export function runKvfold(request: KvfoldRunRequest): AsyncGenerator<string, void, undefined> {
  const { signal } = request;
  if (signal === undefined) return generatePieces(request);
  let finished = false;
  const pieces = generatePieces({
    ...request,
    onStats: (stats) => {
      finished = true;
      request.onStats?.(stats);
    },
  });
  // Suspended at a yield, return() runs the finally blocks now; mid-call, the native code sees the
  // abort within one step and the queued return() completes after it.
  const close = () => void pieces.return(undefined).catch(() => {});
  signal.addEventListener("abort", close, { once: true });
  return (async function* () {
    try {
      yield* pieces;
      // Closed by the abort between two pieces: end as an aborted generation does.
      if (!finished) throw abortError(signal, undefined);
    } finally {
      signal.removeEventListener("abort", close);
    }
  })();
}

/**
 * The pieces of `answerFromChunks` over the payload documents' chunks, with the text documents
 * folded into the prompt. The adapters follow kvfold's rule (`adaptersForChunks`): the payload
 * chunks' groups decide, weighted by the documents' retrieval score (`metadata.score`, as
 * `KvfoldRetriever` sets it) under `adapterMode` "compose"; text documents have no say.
 */
async function* generatePieces(request: KvfoldRunRequest): AsyncGenerator<string, void, undefined> {
  const { model, signal } = request;
  const chunks: AnswerContext[] = [];
  const textDocuments: DocumentInterface[] = [];
  const groups: string[] = [];
  const addGroup = (group: unknown) => {
    if (typeof group === "string" && !groups.includes(group)) groups.push(group);
  };
  for (const doc of request.documents) {
    const resolved = await loadKvfoldChunks(doc, request.store);
    const score = doc.metadata?.score;
    if (resolved === undefined) textDocuments.push(doc);
    else if (typeof score === "number" && Number.isFinite(score)) {
      chunks.push(...resolved.map((c) => ({ ...c, score })));
    } else chunks.push(...resolved);
    addGroup(kvfoldPayloadOf(doc)?.group ?? doc.metadata?.group);
  }
  let prompt = request.prompt;
  if (request.payloadText !== false) {
    const taken = takePrompt(prompt);
    prompt = taken.prompt;
    for (const chunk of taken.chunks) {
      if (chunks.some((c) => sameChunk(c, chunk))) continue;
      chunks.push(chunk);
      addGroup(chunk.group);
    }
  }
  try {
    const promptIds = encodePrompt(
      model,
      prompt,
      textDocuments,
      request.formatContext,
      request.templateTools,
    );
    const { jsonSchema } = request;
    yield* answerFromChunks(model, chunks, promptIds, {
      ...request.settings,
      ...(jsonSchema === "json"
        ? { grammar: "json" as const }
        : jsonSchema !== undefined
        ? { jsonSchema }
        : {}),
      maxTokens: request.settings.maxTokens ?? 256,
      stop: request.stop,
      signal,
      cache: request.cache,
      prefixCache: request.prefixCache,
      adapterMode: request.adapterMode,
      onStats: ({ group: _group, ...stats }) => request.onStats?.({ ...stats, groups }),
    });
  } catch (e) {
    if (signal?.aborted) throw abortError(signal, e);
    throw e;
  }
}

/** The prompt with remembered payload texts cut out, and their chunks (see `_payload_text.ts`). */
function takePrompt(
  prompt: readonly ChatMessage[] | string,
): { prompt: readonly ChatMessage[] | string; chunks: AnswerContext[] } {
  if (typeof prompt === "string") {
    const { texts, chunks } = takePayloadTexts([prompt]);
    return { prompt: texts[0], chunks };
  }
  const { texts, chunks } = takePayloadTexts(prompt.map((m) => m.content));
  return { prompt: prompt.map((m, i) => ({ ...m, content: texts[i] })), chunks };
}

/** The same store chunk reached twice (as a call's document and through its text). */
function sameChunk(a: AnswerContext, b: AnswerContext): boolean {
  return a === b || (a.chunkId !== undefined && a.chunkId === b.chunkId && a.source === b.source);
}

/**
 * Prompt ids. Text documents are written into the last user turn (or the raw prompt). Chat
 * messages go through the chat template; a model without one reads their contents joined by
 * blank lines.
 */
function encodePrompt(
  model: Model,
  prompt: readonly ChatMessage[] | string,
  textDocuments: readonly DocumentInterface[],
  formatContext: TextContextFormatter,
  tools?: readonly Record<string, unknown>[],
): number[] {
  if (typeof prompt === "string") {
    const text = textDocuments.length > 0 ? formatContext(textDocuments, prompt) : prompt;
    return model.encodePrompt(text, { chat: false });
  }
  let messages = prompt;
  if (textDocuments.length > 0) {
    const last = messages.findLastIndex((m) => m.role === "user");
    if (last < 0) {
      messages = [...messages, { role: "user", content: formatContext(textDocuments, "") }];
    } else {
      messages = messages.map((m, i) =>
        i === last ? { role: m.role, content: formatContext(textDocuments, m.content) } : m
      );
    }
  }
  if (model.tokenizer.hasChatTemplate) return model.tokenizer.encodeChat(messages, { tools });
  return model.encodePrompt(messages.map((m) => m.content).join("\n\n"), { chat: false });
}

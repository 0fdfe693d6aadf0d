/**
 * A multi-turn chat that keeps its KV cache between turns: each turn prefills only what the
 * conversation added since the last one.
 *
 * @module
 */

import type { Adapter } from "./adapter.ts";
import { type AnswerContext, answerFromChunks, type AnswerOptions, type AnswerStats } from "./lloco.ts";
import type { Model } from "./model.ts";
import { PrefixCache } from "./prefix_cache.ts";
import type { ChatMessage } from "./tokenizer.ts";

/** Options of {@link Model.chat}. */
export interface ChatOptions {
  /** A system message that opens the conversation. */
  system?: string;
  /** LoRA adapter of every turn (an {@link Adapter} or a registered name); default the base model. */
  adapter?: Adapter | string | null;
  /** Summary vectors placed before the conversation (a compressed document to chat about). */
  context?: readonly AnswerContext[];
  /** Positions the session reserves at least; default 4096 (grown, with one full prefill, when passed). */
  contextSize?: number;
}

/** Options of {@link ChatSession.send}: sampling and length, as `answerFromChunks` takes them. */
export type ChatSendOptions = Omit<AnswerOptions, "adapter" | "group" | "cache" | "prefixCache" | "chat">;

/**
 * A conversation over one full-cache session. Every turn renders the whole conversation through
 * the chat template, keeps the longest common token prefix with what the cache holds, and prefills
 * only the rest (so a template that re-renders earlier turns stays correct: it just reuses less).
 * The answer equals what a fresh session given the whole conversation would produce.
 *
 * @example
 * ```ts ignore
 * using chat = model.chat({ system: "Be brief." });
 * for await (const piece of chat.send("Hi!", { temperature: 0 })) console.log(piece);
 * for await (const piece of chat.send("And then?", { temperature: 0 })) console.log(piece);
 * console.log(chat.lastStats?.promptTokens, chat.lastStats?.reusedPositions);
 * ```
 */
export class ChatSession {
  /** The model that answers. */
  readonly model: Model;
  /** The conversation so far (system message first when given). */
  readonly messages: ChatMessage[] = [];
  /** Counters of the last finished turn: `promptTokens` are the tokens that turn prefilled. */
  lastStats?: AnswerStats;
  readonly #cache: PrefixCache;
  readonly #adapter: Adapter | string | null;
  readonly #context: readonly AnswerContext[];

  /** @internal use {@link Model.chat}. */
  constructor(model: Model, options: ChatOptions = {}) {
    this.model = model;
    this.#cache = new PrefixCache(model, { capacity: 1, contextSize: options.contextSize });
    this.#adapter = options.adapter ?? null;
    this.#context = options.context ?? [];
    if (options.system !== undefined) this.messages.push({ role: "system", content: options.system });
  }

  /**
   * Adds user message(s) (a string is one user message) and streams the assistant's reply, which
   * is added to {@link ChatSession.messages} when the turn ends. A turn that fails or is stopped
   * early leaves the conversation as it was.
   */
  async *send(
    message: string | ChatMessage | readonly ChatMessage[],
    options: ChatSendOptions = {},
  ): AsyncGenerator<string, AnswerStats, undefined> {
    const added: ChatMessage[] = typeof message === "string"
      ? [{ role: "user", content: message }]
      : Array.isArray(message)
      ? [...message as readonly ChatMessage[]]
      : [message as ChatMessage];
    const conversation = [...this.messages, ...added];
    const stream = answerFromChunks(this.model, this.#context, conversation, {
      ...options,
      adapter: this.#adapter,
      prefixCache: this.#cache,
    });
    let reply = "";
    let r: IteratorResult<string, AnswerStats> | undefined;
    try {
      while (!(r = await stream.next()).done) {
        reply += r.value;
        yield r.value;
      }
    } finally {
      if (!r?.done) await stream.return(undefined as never);
    }
    const stats = r.value;
    this.messages.push(...added, { role: "assistant", content: reply });
    this.lastStats = stats;
    return stats;
  }

  /** Frees the session. */
  dispose(): void {
    this.#cache.clear();
  }

  /** Same as {@link ChatSession.dispose}. */
  [Symbol.dispose](): void {
    this.dispose();
  }
}

/**
 * Sessions kept between answers so a prefix already in a KV cache is not prefilled again: the
 * summary vectors of a document asked many questions, and the earlier turns of a chat.
 *
 * @module
 */

import { crc32 } from "./_crc32.ts";
import type { Model } from "./model.ts";
import type { Session } from "./session.ts";
import type { StoredVectors } from "./store.ts";

/** Options of {@link PrefixCache}. */
export interface PrefixCacheOptions {
  /** Most sessions kept (least recently used ones are disposed); default 4. */
  capacity?: number;
  /**
   * Positions a new cached session reserves at least (KV memory grows with it); default 4096,
   * never less than the answer needs nor more than the model's max positions. A later answer
   * that needs more starts a session twice as large (its prefix prefilled again once).
   */
  contextSize?: number;
}

/** @internal what a cached session holds past its vectors, and under which key. */
export interface PrefixEntry {
  session: Session;
  /** The vectors' bytes and adapter: the part that must match exactly. */
  key: string;
  prefix: Uint8Array;
  rows: number;
  /** Token ids in the cache after the vectors, in order (the session's position is rows + ids.length). */
  ids: number[];
  busy: boolean;
}

/**
 * A small LRU of full-cache sessions, each holding [summary vectors][prompt and answer tokens] of
 * an earlier answer. Give one to `answerFromChunks` (option `prefixCache`), to a
 * {@link ChatSession}, or to the integrations (`reuseCache: true`): an answer whose vectors and
 * adapter match a cached session's keeps the cache up to the longest common token prefix of the
 * prompts (`session.truncate`) and prefills only the rest. The logits are those of a fresh session
 * (CPU: the kept positions were computed from the same inputs; decode and chunked prefill agree to
 * within 1e-5 of a one-shot prefill, see tests/forward_test.ts).
 *
 * Keyed by the vectors' content (their exact bits, so the same chunks from any store match, and a
 * store id reused for other content never does) and the adapter's name. Only for the full cache:
 * a compressing cache (lococo, h2o, streaming) has already dropped or merged positions, so
 * truncating it does not give back the state of a shorter input; answers with one bypass the
 * cache. An adapter reloaded under the same name with other weights is not noticed: call
 * {@link PrefixCache.clear}. A cached session in use by another answer is not shared: that answer
 * runs in a session of its own, cached afterwards.
 *
 * @example
 * ```ts ignore
 * using prefixes = new PrefixCache(model);
 * for (const q of questions) {
 *   for await (const piece of answerFromChunks(model, chunks, q, { prefixCache: prefixes })) out(piece);
 * }
 * ```
 */
export class PrefixCache {
  /** The model whose sessions this cache keeps. */
  readonly model: Model;
  readonly #capacity: number;
  readonly #contextSize: number;
  // Insertion order is recency order: the first entry is the least recently used.
  #entries: PrefixEntry[] = [];

  constructor(model: Model, options: PrefixCacheOptions = {}) {
    const { capacity = 4, contextSize = 4096 } = options;
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError(`Cannot create a prefix cache: capacity ${capacity} is not a positive integer`);
    }
    if (!Number.isInteger(contextSize) || contextSize < 1) {
      throw new RangeError(
        `Cannot create a prefix cache: contextSize ${contextSize} is not a positive integer`,
      );
    }
    this.model = model;
    this.#capacity = capacity;
    this.#contextSize = contextSize;
  }

  /** Sessions kept now. */
  get size(): number {
    return this.#entries.length;
  }

  /**
   * @internal Takes the idle session whose vectors and adapter match, with the most tokens in
   * common with `ids`, if one can hold `needed` positions; else a new session for them. Hand it
   * back with {@link PrefixCache._release}.
   */
  _acquire(
    vectors: StoredVectors | null,
    adapter: string | null,
    ids: readonly number[],
    needed: number,
  ): { entry: PrefixEntry; common: number } {
    const prefix = vectorBytes(vectors);
    const key = `${adapter ?? ""}\u0000${vectors?.bf16 !== undefined ? "bf16" : "f32"}:${
      crc32(prefix)
    }:${prefix.length}`;
    let best: PrefixEntry | undefined, bestCommon = -1;
    for (const e of this.#entries) {
      if (e.busy || e.key !== key || !sameBytes(e.prefix, prefix)) continue;
      if (e.session.contextSize < needed) continue;
      const common = commonPrefix(e.ids, ids);
      if (common > bestCommon) [best, bestCommon] = [e, common];
    }
    if (best !== undefined) {
      this.#entries = [...this.#entries.filter((e) => e !== best), best];
      best.busy = true;
      return { entry: best, common: bestCommon };
    }
    const max = this.model.info.maxPositions;
    const largest = Math.max(
      0,
      ...this.#entries.filter((e) => e.key === key).map((e) => e.session.contextSize),
    );
    const contextSize = Math.min(max, Math.max(needed, this.#contextSize, largest * 2));
    const entry: PrefixEntry = {
      session: this.model.session({ contextSize: Math.max(contextSize, needed) }),
      key,
      prefix: prefix.slice(),
      rows: vectors?.rows ?? 0,
      ids: [],
      busy: true,
    };
    this.#entries.push(entry);
    this.#evict();
    return { entry, common: -1 };
  }

  /** @internal Hands a session back; `keep: false` disposes it (its state is unknown). */
  _release(entry: PrefixEntry, keep: boolean): void {
    entry.busy = false;
    if (keep && this.#entries.includes(entry)) {
      this.#evict();
      return;
    }
    // Failed, or cleared while in use.
    this.#entries = this.#entries.filter((e) => e !== entry);
    entry.session.dispose();
  }

  #evict() {
    while (this.#entries.length > this.#capacity) {
      const i = this.#entries.findIndex((e) => !e.busy);
      if (i < 0) return;
      const [old] = this.#entries.splice(i, 1);
      old.session.dispose();
    }
  }

  /** Disposes every idle cached session (busy ones are disposed when handed back). */
  clear(): void {
    const idle = this.#entries.filter((e) => !e.busy);
    this.#entries = [];
    for (const e of idle) e.session.dispose();
  }

  /** Same as {@link PrefixCache.clear}. */
  [Symbol.dispose](): void {
    this.clear();
  }
}

function vectorBytes(v: StoredVectors | null): Uint8Array {
  if (v === null || v.rows === 0) return new Uint8Array(0);
  const a = v.bf16 ?? v.data;
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Length of the longest common prefix of two id lists. */
export function commonPrefix(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

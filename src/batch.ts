/**
 * Batched decoding: one native step advances several sessions of a model at once, reading the
 * weights once for all of them, each session with its own LoRA adapter (or none). A server wraps
 * concurrent requests' generate() loops with one {@link DecodeBatcher}.
 *
 * @module
 */

import { alloc, check, sym, withControl } from "./_binding.ts";
import type { NativeHandle } from "./_handle.ts";
import { int32Arg, tokenIdArg } from "./_int_args.ts";
import { KvfoldError } from "./errors.ts";
import type { Model } from "./model.ts";
import type { Session } from "./session.ts";

/** One row of a batched decode step. */
export interface BatchEntry {
  session: Session;
  /** The token to run at the session's next position. */
  token: number;
}

/**
 * Runs one decode step for each entry's session, all in one native call. Every session ends as
 * if `session.decode(token)` had run on it alone (rows are grouped by adapter, as Punica's SGMV
 * does). Sessions must be distinct, idle and of one model. On failure no session changes.
 *
 * @example
 * ```ts ignore
 * using a = model.session(), b = model.session();
 * await a.setAdapter("finance");
 * await a.prefill(idsA); await b.prefill(idsB);
 * await decodeBatch([{ session: a, token: 42 }, { session: b, token: 7 }]);
 * console.log(a.logits(), b.logits());
 * ```
 */
export async function decodeBatch(entries: readonly BatchEntry[], options: { signal?: AbortSignal } = {}) {
  const releases: (() => void)[] = [];
  const distinct = new Set(entries.map((e) => e.session));
  if (distinct.size !== entries.length) {
    throw new KvfoldError("INVALID_ARGUMENT", "Cannot decode a batch: an entry repeats a session");
  }
  try {
    for (const e of entries) releases.push(e.session._claim("decode in a batch"));
    await runBatch(entries, options.signal);
  } finally {
    for (const release of releases) release();
  }
}

/** @internal one native step over sessions the caller owns (not claimed here); see {@link decodeBatch}. */
export async function runBatch(entries: readonly BatchEntry[], signal?: AbortSignal): Promise<void> {
  const n = entries.length;
  if (n === 0) return;
  const model = entries[0].session.model;
  const ptrs = alloc(n * 8);
  const ids = alloc(n * 4);
  const pv = new DataView(ptrs.buffer), iv = new DataView(ids.buffer);
  const seen = new Set<Session>();
  entries.forEach(({ session, token }, i) => {
    if (session.model !== model) {
      throw new KvfoldError(
        "INVALID_ARGUMENT",
        `Cannot decode a batch: entry ${i} is a session of another model`,
      );
    }
    if (seen.has(session)) {
      throw new KvfoldError("INVALID_ARGUMENT", `Cannot decode a batch: entry ${i} repeats a session`);
    }
    seen.add(session);
    iv.setInt32(i * 4, tokenIdArg("decode a batch", token, model.info.vocabSize, { index: i }), true);
    pv.setBigUint64(i * 8, BigInt(Deno.UnsafePointer.value(session._handle.ptr)), true);
  });
  // Every session stays alive (its free deferred) until the native call returns.
  const handles: NativeHandle[] = entries.map((e) => e.session._handle);
  const call = () =>
    withControl(async (ctl) => check(await sym().kf_batch_decode(ptrs, ids, n, ctl.buf), ctl), { signal });
  const held = handles.reduce<() => Promise<void>>((inner, h) => () => h.hold(inner), call);
  await held();
}

interface QueuedStep {
  session: Session;
  token: number;
  resolve: () => void;
  reject: (e: unknown) => void;
}

/** Counters of a {@link DecodeBatcher}. */
export interface BatcherStats {
  /** Native batched steps run. */
  steps: number;
  /** Rows decoded in all (rows / steps = mean batch size). */
  rows: number;
}

/**
 * Gathers the decode steps that concurrent `generate({ batcher })` loops ask for within one turn
 * of the event loop and runs them as one batched step (up to `maxBatch` rows).
 *
 * @example
 * ```ts ignore
 * const batcher = new DecodeBatcher(model, { maxBatch: 16 });
 * const answer = async (q: string, adapter: string) => {
 *   using s = model.session({ contextSize: 512 });
 *   let text = "";
 *   for await (const p of s.generate({ prompt: q, adapter, batcher, maxTokens: 64 })) text += p;
 *   return text;
 * };
 * console.log(await Promise.all([answer("Q1", "finance"), answer("Q2", "legal")]), batcher.stats);
 * ```
 */
export class DecodeBatcher {
  /** The model whose sessions it serves. */
  readonly model: Model;
  /** Most rows per step. */
  readonly maxBatch: number;
  /** Steps and rows so far. */
  readonly stats: BatcherStats = { steps: 0, rows: 0 };
  #queue: QueuedStep[] = [];
  #scheduled = false;
  #running = false;

  constructor(model: Model, options: { maxBatch?: number } = {}) {
    const maxBatch = int32Arg("create a decode batcher", "maxBatch", options.maxBatch ?? 32, {
      min: 1,
      max: 4096,
    });
    this.model = model;
    this.maxBatch = maxBatch;
  }

  /** @internal a generate() loop's decode step (the session is already busy with that loop). */
  _decode(session: Session, token: number, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) {
      return Promise.reject(new KvfoldError("ABORTED", "Cannot decode: aborted", { cause: signal.reason }));
    }
    return new Promise((resolve, reject) => {
      this.#queue.push({ session, token, resolve, reject });
      this.#schedule();
    });
  }

  #schedule() {
    if (this.#scheduled || this.#running || this.#queue.length === 0) return;
    this.#scheduled = true;
    // A macrotask: every loop whose step resolved in this turn gets to queue its next one first.
    setTimeout(() => {
      this.#scheduled = false;
      this.#flush();
    }, 0);
  }

  async #flush() {
    this.#running = true;
    const batch: QueuedStep[] = [];
    const rest: QueuedStep[] = [];
    const sessions = new Set<Session>();
    for (const e of this.#queue) {
      if (e.session._handle.disposed) {
        e.reject(new KvfoldError("DISPOSED", "Cannot decode: the session was disposed"));
        continue;
      }
      if (batch.length < this.maxBatch && !sessions.has(e.session)) {
        batch.push(e);
        sessions.add(e.session);
      } else {
        rest.push(e);
      }
    }
    this.#queue = rest;
    try {
      await runBatch(batch);
      this.stats.steps++;
      this.stats.rows += batch.length;
      for (const e of batch) e.resolve();
    } catch (error) {
      for (const e of batch) e.reject(error);
    } finally {
      this.#running = false;
      this.#schedule();
    }
  }
}

/** One session's prefill chunk in {@link runPrefillBatch}. */
export interface PrefillEntry {
  session: Session;
  /** Token ids to run at the session's next positions (at least one). */
  ids: readonly number[];
}

/**
 * @internal one forward pass over several sessions' prefill chunks (`kf_batch_prefill`: full
 * caches, cpu backend), sessions owned by the caller. Each session ends as if `prefill(ids)` had
 * run on it alone (its last row's logits), up to float rounding of the wider matrix products.
 */
export async function runPrefillBatch(entries: readonly PrefillEntry[], signal?: AbortSignal): Promise<void> {
  const n = entries.length;
  if (n === 0) return;
  const model = entries[0].session.model;
  const vocab = model.info.vocabSize;
  const total = entries.reduce((s, e) => s + e.ids.length, 0);
  const ptrs = alloc(n * 8);
  const counts = new Int32Array(n);
  const ids = new Int32Array(Math.max(1, total));
  const pv = new DataView(ptrs.buffer);
  let at = 0;
  entries.forEach(({ session, ids: chunk }, i) => {
    if (session.model !== model) {
      throw new KvfoldError(
        "INVALID_ARGUMENT",
        `Cannot prefill a batch: entry ${i} is a session of another model`,
      );
    }
    for (const id of chunk) ids[at++] = tokenIdArg("prefill a batch", id, vocab, { index: i });
    counts[i] = chunk.length;
    pv.setBigUint64(i * 8, BigInt(Deno.UnsafePointer.value(session._handle.ptr)), true);
  });
  const handles: NativeHandle[] = entries.map((e) => e.session._handle);
  const call = () =>
    withControl(async (ctl) => check(await sym().kf_batch_prefill(ptrs, ids, counts, n, ctl.buf), ctl), {
      signal,
    });
  const held = handles.reduce<() => Promise<void>>((inner, h) => () => h.hold(inner), call);
  await held();
}

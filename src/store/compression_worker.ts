/**
 * A compression worker: takes documents from a PostgreSQL store's work queue, compresses them and
 * commits each with its queue item in one transaction, until the queue is drained (or forever with
 * `follow`). Several workers, on one machine or many, drain one queue.
 *
 * @module
 */

import { hostname } from "node:os";
import process from "node:process";
import type { Compressor } from "../compressor.ts";
import { KvfoldError } from "../errors.ts";
import { compressChunks } from "../lloco.ts";
import type { PostgresStore } from "./postgres_store.ts";
import { type WorkItem, WorkQueue } from "./work_queue.ts";

/** What a worker reports as it goes. */
export type WorkerEvent =
  | { kind: "taken"; item: WorkItem }
  | { kind: "done"; item: WorkItem; documentId: number; tokens: number; vectors: number }
  | { kind: "lost"; item: WorkItem }
  | { kind: "failed"; item: WorkItem; error: string }
  | { kind: "waiting"; running: number };

/** Options of {@linkcode runWorker}. */
export interface WorkerOptions {
  /** Take only items of this adapter group. */
  group?: string;
  /** How long an item stays this worker's without a heartbeat, in ms. Default 60 000. */
  leaseMs?: number;
  /** How often to look again when other workers hold the last items, in ms. Default 1000. */
  pollMs?: number;
  /** Keep waiting for new items instead of returning once the queue is drained. */
  follow?: boolean;
  /** This worker's name in the queue (default host:pid:random). */
  workerId?: string;
  /** Stops after the current item (an item being compressed is abandoned to its lease). */
  signal?: AbortSignal;
  /** Progress. */
  onEvent?: (e: WorkerEvent) => void;
}

/** A name for this worker: host, process and a random part (two workers of one process differ). */
export function defaultWorkerId(): string {
  let host = "host";
  try {
    host = hostname();
  } catch { /* no permission: any name will do */ }
  return `${host}:${process.pid}:${crypto.randomUUID().slice(0, 8)}`;
}

/**
 * Drains `store`'s work queue with `compressor`; returns how many items this worker finished and
 * failed. An item whose compression or write is refused (an empty document, a source already stored
 * without `replace`) is marked failed with the message; losing the server throws (the item returns
 * to the queue when its lease runs out).
 *
 * @example
 * ```ts ignore
 * import { runWorker } from "./compression_worker.ts";
 * const { done } = await runWorker(compressor, store, { onEvent: (e) => console.log(e.kind) });
 * ```
 */
export async function runWorker(
  compressor: Compressor,
  store: PostgresStore,
  options: WorkerOptions = {},
): Promise<{ done: number; failed: number }> {
  const queue = new WorkQueue(store);
  const worker = options.workerId ?? defaultWorkerId();
  const leaseMs = options.leaseMs ?? 60_000;
  if (!Number.isSafeInteger(leaseMs) || leaseMs < 100) {
    throw new RangeError(`Cannot run worker: leaseMs ${leaseMs} is not an integer of at least 100`);
  }
  const pollMs = options.pollMs ?? 1000;
  const counts = { done: 0, failed: 0 };
  while (!options.signal?.aborted) {
    const item = await queue.claim(worker, { leaseMs, group: options.group });
    if (item === undefined) {
      const s = await queue.stats();
      if (s.queued + s.running === 0 && !options.follow) break;
      // Others hold the last items: one may die and its item come back when its lease runs out.
      options.onEvent?.({ kind: "waiting", running: s.running });
      await sleep(pollMs, options.signal);
      continue;
    }
    options.onEvent?.({ kind: "taken", item });
    // The heartbeat: the lease outlives a slow document as long as this process lives.
    let lost = false;
    const beat = setInterval(() => {
      queue.extend(item, worker, leaseMs).then((ok) => lost ||= !ok, () => {});
    }, Math.max(50, Math.floor(leaseMs / 3)));
    try {
      const { chunks, tokens } = await compressChunks(compressor, {
        source: item.source,
        text: item.text,
        group: item.group ?? undefined,
      }, { ...item.options, signal: options.signal });
      const documentId = lost ? undefined : await queue.complete(item, worker, {
        source: item.source,
        group: item.group ?? undefined,
        chunks,
      });
      if (documentId === undefined) {
        options.onEvent?.({ kind: "lost", item });
        continue;
      }
      counts.done++;
      options.onEvent?.({
        kind: "done",
        item,
        documentId,
        tokens,
        vectors: chunks.reduce((n, c) => n + c.vectors.rows, 0),
      });
    } catch (e) {
      // The server gone, or an abort: the item goes back to the queue with its lease.
      const itemsFault = e instanceof KvfoldError
        ? e.code !== "IO" && e.code !== "ABORTED"
        : e instanceof RangeError || e instanceof TypeError; // options of the item
      if (!itemsFault) throw e;
      const error = (e as Error).message;
      await queue.fail(item, worker, error);
      counts.failed++;
      options.onEvent?.({ kind: "failed", item, error });
    } finally {
      clearInterval(beat);
    }
  }
  return counts;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

/**
 * The work queue of distributed compression, in a PostgreSQL store (table `work_items`): documents
 * to compress, enqueued with their text (a worker on another machine need not see the file), taken
 * by workers with `SELECT ... FOR UPDATE SKIP LOCKED` under a lease, and marked done in the same
 * transaction that writes the document. A worker that dies (or stalls past its lease) leaves its
 * item to be taken again; its document was never committed, and a stalled worker that comes back
 * finds the item no longer its own and commits nothing. So each document is written exactly once.
 *
 * @module
 */

import type { ChunkBreak } from "../chunk_spans.ts";
import { KvfoldError } from "../errors.ts";
import type { NewDocument } from "../store_records.ts";
import { StoreValues } from "../_store_integrity.ts";
import type { PgRow } from "./_postgres_connection.ts";
import type { PostgresStore } from "./postgres_store.ts";
import { encodeDocument, writeDocument } from "./_postgres_documents.ts";

/** How a queued document is compressed (the `kvfold compress` options it was enqueued with). */
export interface WorkOptions {
  /** Tokens per chunk. */
  chunkTokens?: number;
  /** Where chunks end (`"tokens"` or `"sentence"`). */
  breakAt?: ChunkBreak;
  /** Tokens per compressor segment. */
  segmentLength?: number;
  /** Replace a document already stored under the same source. */
  replace?: boolean;
}

/** A document to enqueue. */
export interface NewWorkItem {
  /** The document's source (unique in the queue and in the store). */
  source: string;
  /** Its text. */
  text: string;
  /** Its adapter group. */
  group?: string;
  /** How to compress it. */
  options?: WorkOptions;
}

/** An item a worker holds. */
export interface WorkItem {
  id: number;
  source: string;
  group: string | null;
  text: string;
  options: WorkOptions;
  /** Times it was taken, this one included. */
  attempts: number;
}

/** The queue's items by state. `stale`: running, but its lease ran out (its worker died or stalls). */
export interface QueueStats {
  queued: number;
  running: number;
  done: number;
  failed: number;
  stale: number;
}

/** Times an item is taken before it counts as failed (each time its worker died or lost its lease). */
export const MAX_ATTEMPTS = 5;

/**
 * The queue of a PostgreSQL store.
 *
 * @example
 * ```ts ignore
 * import { PostgresStore } from "./postgres_store.ts";
 * import { WorkQueue } from "./work_queue.ts";
 * await using store = await PostgresStore.open("postgres://kvfold@db/corpus");
 * const queue = new WorkQueue(store);
 * await queue.enqueue([{ source: "a.txt", text: "..." }]);
 * console.log(await queue.stats());
 * ```
 */
export class WorkQueue {
  readonly store: PostgresStore;

  constructor(store: PostgresStore) {
    this.store = store;
  }

  /**
   * Adds documents to compress; a source already queued (or done) is left as it is and counted in
   * `skipped`, unless `requeue`, which queues it again (its document is then replaced when done).
   */
  async enqueue(
    items: readonly NewWorkItem[],
    options: { requeue?: boolean } = {},
  ): Promise<{ added: number; skipped: number }> {
    if (this.store.readOnly) {
      throw new KvfoldError("INVALID_STATE", `Cannot enqueue: store ${this.store.location} is read-only`);
    }
    for (const it of items) {
      if (typeof it.source !== "string" || it.source === "") {
        throw new KvfoldError("INVALID_ARGUMENT", "Cannot enqueue: a source must be a non-empty string");
      }
      if (typeof it.text !== "string") {
        throw new KvfoldError("INVALID_ARGUMENT", `Cannot enqueue ${it.source}: text must be a string`);
      }
    }
    if (items.length === 0) return { added: 0, skipped: 0 };
    const conflict = options.requeue
      ? `DO UPDATE SET text = EXCLUDED.text, grp = EXCLUDED.grp, options = EXCLUDED.options, state = 'queued',
         attempts = 0, worker = NULL, lease_until = NULL, error = NULL, updated_at = now()`
      : "DO NOTHING";
    const { rowCount } = await this.store.connection.query(
      `INSERT INTO work_items (source, text, grp, options)
       SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
       ON CONFLICT (source) ${conflict}`,
      [
        items.map((i) => i.source),
        items.map((i) => i.text),
        items.map((i) => i.group ?? null),
        items.map((i) => JSON.stringify(i.options ?? {})),
      ],
      "enqueue documents",
    );
    const added = rowCount ?? 0;
    return { added, skipped: items.length - added };
  }

  /**
   * Takes the oldest queued item (or one whose lease ran out) for `worker`, leased for `leaseMs`;
   * undefined when there is none. Items of other groups are left when `group` is given.
   */
  async claim(worker: string, options: { leaseMs: number; group?: string }): Promise<WorkItem | undefined> {
    const db = this.store.connection;
    // Items taken too often (their worker died each time) stop here, failed, instead of looping.
    await db.query(
      `UPDATE work_items SET state = 'failed', worker = NULL, lease_until = NULL, updated_at = now(),
       error = 'taken ' || attempts || ' times; each worker died or lost its lease before finishing'
       WHERE state = 'running' AND lease_until < now() AND attempts >= $1`,
      [MAX_ATTEMPTS],
      "take work item",
    );
    const { rows } = await db.query(
      `UPDATE work_items SET state = 'running', worker = $1, attempts = attempts + 1,
         lease_until = now() + $2 * interval '1 millisecond', updated_at = now()
       WHERE id = (
         SELECT id FROM work_items
         WHERE (state = 'queued' OR (state = 'running' AND lease_until < now()))
           AND ($3::text IS NULL OR grp = $3::text)
         ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1
       )
       RETURNING id, source, grp, text, options, attempts`,
      [worker, options.leaseMs, options.group ?? null],
      "take work item",
    );
    return rows.length === 0 ? undefined : this.#item(rows[0]);
  }

  #item(r: PgRow): WorkItem {
    const v = new StoreValues(this.store.location, "take work item");
    const id = v.int(r.id, "work_items.id", "a work item", 1);
    const where = `work item ${id}`;
    const options = v.jsonObject(r.options, "work_items.options", where) as WorkOptions;
    return {
      id,
      source: v.text(r.source, "work_items.source", where),
      group: v.textOrNull(r.grp, "work_items.grp", where),
      text: v.text(r.text, "work_items.text", where),
      options,
      attempts: v.int(r.attempts, "work_items.attempts", where, 1),
    };
  }

  /** Extends `worker`'s lease on `item`; false when the item is no longer its own. */
  async extend(item: WorkItem, worker: string, leaseMs: number): Promise<boolean> {
    const { rowCount } = await this.store.connection.query(
      `UPDATE work_items SET lease_until = now() + $3 * interval '1 millisecond', updated_at = now()
       WHERE id = $1 AND worker = $2 AND state = 'running'`,
      [item.id, worker, leaseMs],
      "extend work item lease",
    );
    return (rowCount ?? 0) > 0;
  }

  /**
   * Writes `doc` and marks `item` done in one transaction, when `worker` still holds the item;
   * returns the document's id, or undefined (nothing written) when another worker took it over.
   */
  async complete(item: WorkItem, worker: string, doc: NewDocument): Promise<number | undefined> {
    const encoded = encodeDocument(doc);
    return await this.store.connection.transaction(`store work item ${item.source}`, async (db) => {
      const owned = await db.query(
        "SELECT 1 FROM work_items WHERE id = $1 AND worker = $2 AND state = 'running' FOR UPDATE",
        [item.id, worker],
      );
      if (owned.rows.length === 0) return undefined;
      const id = await writeDocument(db, encoded, item.options.replace === true);
      await db.query(
        "UPDATE work_items SET state = 'done', lease_until = NULL, error = NULL, updated_at = now() WHERE id = $1",
        [item.id],
      );
      return id;
    });
  }

  /** Marks `item` failed with `error`, when `worker` still holds it. */
  async fail(item: WorkItem, worker: string, error: string): Promise<void> {
    await this.store.connection.query(
      `UPDATE work_items SET state = 'failed', error = $3, lease_until = NULL, updated_at = now()
       WHERE id = $1 AND worker = $2 AND state = 'running'`,
      [item.id, worker, error],
      "mark work item failed",
    );
  }

  /** Items by state. */
  async stats(): Promise<QueueStats> {
    const { rows } = await this.store.connection.query(
      `SELECT COUNT(*) FILTER (WHERE state = 'queued') AS queued,
              COUNT(*) FILTER (WHERE state = 'running') AS running,
              COUNT(*) FILTER (WHERE state = 'done') AS done,
              COUNT(*) FILTER (WHERE state = 'failed') AS failed,
              COUNT(*) FILTER (WHERE state = 'running' AND lease_until < now()) AS stale
       FROM work_items`,
      [],
      "read queue stats",
    );
    const r = rows[0];
    return {
      queued: Number(r.queued),
      running: Number(r.running),
      done: Number(r.done),
      failed: Number(r.failed),
      stale: Number(r.stale),
    };
  }

  /** The failed items with their errors, oldest first (at most `limit`). */
  async failures(limit = 20): Promise<{ source: string; error: string }[]> {
    const { rows } = await this.store.connection.query(
      "SELECT source, error FROM work_items WHERE state = 'failed' ORDER BY id LIMIT $1",
      [limit],
      "read queue failures",
    );
    return rows.map((r) => ({ source: String(r.source), error: String(r.error ?? "") }));
  }
}

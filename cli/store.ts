/**
 * `kvfold store`: what a document store holds (`stats`), documents queued for the compression
 * workers (`enqueue`, PostgreSQL stores), and a whole store copied between backends (`copy`).
 *
 * @module
 */

import {
  CHUNK_BREAKS,
  type ChunkBreak,
  copyStore,
  KvfoldError,
  type NewWorkItem,
  openStore,
  type PostgresStore,
  type Store,
  WorkQueue,
} from "../mod.ts";
import { bool, choiceOpt, defineCommand, intOpt, parseCommand, str } from "./_options.ts";
import { note, ProgressBar, readUserText, write } from "./_console.ts";

/** `kvfold store`'s usage and options. */
export const STORE = defineCommand({
  name: "store",
  summary: "a document store: stats, enqueue documents for workers, copy between SQLite and PostgreSQL",
  usage: [
    "store stats FILE|URL (or --store FILE|URL)",
    "store enqueue --store URL [--group NAME] [--chunk-tokens N] [--break-at tokens|sentence]\n" +
    "              [--segment-length N] [--replace] [--requeue] FILES...",
    "store copy SRC DST [--replace]",
  ],
  details: "A store is a SQLite file or a PostgreSQL database: postgres://user:password@host:5432/db\n" +
    "(kvfold's tables in the schema kvfold, or ?schema=NAME). `enqueue` records FILES (their text) as\n" +
    "work for `kvfold worker` processes; `stats` then also shows queued / running / done / failed.\n" +
    "`copy` copies every document, then checks counts and a checksum of every vector blob.",
  options: {
    store: str("FILE|URL", "the document store"),
    group: str("NAME", "enqueue: the group the documents belong to"),
    "chunk-tokens": str("N", "enqueue: tokens per chunk of a document"),
    "break-at": str("tokens|sentence", "enqueue: where chunks end (every N tokens, or at a sentence end)"),
    "segment-length": str("N", "enqueue: tokens per compression segment"),
    replace: bool("enqueue: replace stored documents of the same source; copy: replace in DST"),
    requeue: bool("enqueue: queue again files already queued or done"),
  },
  positionals: true,
});

export async function cmdStore(args: string[]): Promise<void> {
  const { values: v, positionals } = parseCommand(args, STORE);
  const [sub, ...rest] = positionals;
  if (sub === "stats") return await stats(v.store ?? rest[0], rest.length > (v.store === undefined ? 1 : 0));
  if (sub === "enqueue") {
    if (v.store === undefined) {
      throw new KvfoldError(
        "INVALID_ARGUMENT",
        "Missing --store URL: kvfold store enqueue --store URL FILES...",
      );
    }
    if (rest.length === 0) throw new KvfoldError("INVALID_ARGUMENT", "Missing FILES to enqueue");
    return await enqueue(v.store, rest, {
      group: v.group,
      chunkTokens: intOpt(v["chunk-tokens"], "chunk-tokens", 1),
      breakAt: choiceOpt(v["break-at"], "break-at", CHUNK_BREAKS),
      segmentLength: intOpt(v["segment-length"], "segment-length", 1),
      replace: v.replace === true,
      requeue: v.requeue === true,
    });
  }
  if (sub === "copy") {
    if (rest.length !== 2) throw new KvfoldError("INVALID_ARGUMENT", "Usage: kvfold store copy SRC DST");
    return await copy(rest[0], rest[1], v.replace === true);
  }
  throw new KvfoldError(
    "INVALID_ARGUMENT",
    "Usage: kvfold store stats FILE|URL, kvfold store enqueue --store URL FILES..., kvfold store copy SRC DST",
  );
}

async function stats(location: string | undefined, extra: boolean): Promise<void> {
  if (!location || extra) {
    throw new KvfoldError("INVALID_ARGUMENT", "Usage: kvfold store stats FILE|URL (or --store FILE|URL)");
  }
  await using store = await openStore(location, { readOnly: true });
  const s = await store.stats();
  const lines = [
    `store:        ${store.location}`,
    `documents:    ${s.documents} (${s.chunks} chunks; groups: ${s.groups.join(", ") || "none"})`,
    `tokens in:    ${s.tokensIn}`,
    `vectors kept: ${s.vectorsKept}`,
    `ratio:        ${s.ratio.toFixed(1)}x fewer positions`,
    `bytes:        ${s.vectorBytes} in vectors, ${s.fileBytes} on disk`,
  ];
  if (store.backend === "postgres") {
    const queue = new WorkQueue(store as PostgresStore);
    const q = await queue.stats();
    lines.push(
      `queue:        ${q.queued} queued, ${q.running} running${
        q.stale > 0 ? ` (${q.stale} past their lease)` : ""
      }, ` +
        `${q.done} done, ${q.failed} failed`,
    );
    for (const f of await queue.failures(5)) lines.push(`  failed: ${f.source}: ${f.error}`);
  }
  write(lines.join("\n") + "\n");
}

async function enqueue(
  location: string,
  files: string[],
  o: {
    group?: string;
    chunkTokens?: number;
    breakAt?: ChunkBreak;
    segmentLength?: number;
    replace: boolean;
    requeue: boolean;
  },
): Promise<void> {
  for (const [i, f] of files.entries()) {
    if (files.indexOf(f) !== i) {
      throw new KvfoldError("INVALID_ARGUMENT", `Cannot enqueue ${f}: it is named twice`);
    }
  }
  await using store = await openStore(location);
  if (store.backend !== "postgres") {
    throw new KvfoldError(
      "UNSUPPORTED",
      `Cannot enqueue into ${store.location}: the work queue needs a PostgreSQL store (postgres://...); ` +
        "compress into a SQLite file with kvfold compress",
    );
  }
  const options = {
    ...(o.chunkTokens !== undefined ? { chunkTokens: o.chunkTokens } : {}),
    ...(o.breakAt !== undefined ? { breakAt: o.breakAt } : {}),
    ...(o.segmentLength !== undefined ? { segmentLength: o.segmentLength } : {}),
    ...(o.replace ? { replace: true } : {}),
  };
  const items: NewWorkItem[] = [];
  for (const f of files) {
    items.push({ source: f, text: await readUserText(f, "enqueue"), group: o.group, options });
  }
  const queue = new WorkQueue(store as PostgresStore);
  const { added, skipped } = await queue.enqueue(items, { requeue: o.requeue });
  note(
    `enqueued ${added} document(s) into ${store.location}` +
      (skipped > 0 ? `; ${skipped} already queued (--requeue to queue again)` : ""),
  );
  const q = await queue.stats();
  note(`queue: ${q.queued} queued, ${q.running} running, ${q.done} done, ${q.failed} failed`);
}

async function copy(srcLocation: string, dstLocation: string, replace: boolean): Promise<void> {
  let src: Store | undefined;
  let dst: Store | undefined;
  try {
    src = await openStore(srcLocation, { readOnly: true });
    dst = await openStore(dstLocation);
    const total = (await src.stats()).documents;
    const bar = new ProgressBar(total);
    const r = await copyStore(src, dst, {
      replace,
      onProgress: (done, _n, source) => bar.update(done, source),
    });
    bar.done(
      `copied ${r.documents} documents (${r.chunks} chunks, ${r.vectorBytes} vector bytes) from ${src.location} to ${dst.location}; ` +
        `verified: counts and vector checksum ${r.checksum.toString(16).padStart(8, "0")} match`,
    );
  } finally {
    await src?.close();
    await dst?.close();
  }
}

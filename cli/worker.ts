/**
 * `kvfold worker`: compresses the documents queued in a PostgreSQL store (`kvfold store enqueue`),
 * alongside any number of other workers on this machine or others.
 *
 * @module
 */

import { Compressor, KvfoldError, openStore, type PostgresStore, runWorker } from "../mod.ts";
import {
  bool,
  COMMON,
  defineCommand,
  dtypeOpt,
  intOpt,
  need,
  openEngine,
  parseCommand,
  str,
} from "./_options.ts";
import { interruptSignal, note } from "./_console.ts";

/** `kvfold worker`'s usage and options. */
export const WORKER = defineCommand({
  name: "worker",
  summary: "compress documents queued in a PostgreSQL store, beside other workers",
  usage: ["worker --store URL --compressor DIR [--group NAME] [--lease SECONDS] [--follow] [options]"],
  details: "Takes queued documents one at a time (SELECT ... FOR UPDATE SKIP LOCKED), compresses each\n" +
    "and commits it with its queue item in one transaction. A worker killed mid-document leaves the\n" +
    "item to another once its lease runs out (a heartbeat renews it meanwhile). Exits when the queue\n" +
    "is drained, unless --follow. Progress: one line per document on stderr; kvfold store stats.",
  options: {
    store: str("URL", "the PostgreSQL store (postgres://...)"),
    compressor: str("DIR", "AutoCompressor model folder"),
    group: str("NAME", "take only documents of this group"),
    lease: str("SECONDS", "how long an item stays this worker's without a heartbeat (default 60)"),
    follow: bool("keep waiting for new documents when the queue is drained"),
    ...COMMON,
  },
});

export async function cmdWorker(args: string[]): Promise<void> {
  const { values: v } = parseCommand(args, WORKER);
  const location = need(v.store, "store");
  const dir = need(v.compressor, "compressor");
  const leaseS = intOpt(v.lease, "lease", 1, 86_400) ?? 60;
  await using store = await openStore(location);
  if (store.backend !== "postgres") {
    throw new KvfoldError(
      "UNSUPPORTED",
      `Cannot run a worker on ${store.location}: the work queue needs a PostgreSQL store (postgres://...)`,
    );
  }
  using kv = await openEngine(v);
  using compressor = await Compressor.load(kv, dir, { dtype: dtypeOpt(v) });
  using interrupt = interruptSignal(); // Ctrl-C: stop; the item in hand returns to the queue
  let waiting = false;
  const { done, failed } = await runWorker(compressor, store as PostgresStore, {
    group: v.group,
    leaseMs: leaseS * 1000,
    pollMs: Math.min(1000, leaseS * 250),
    follow: v.follow === true,
    signal: interrupt.signal,
    onEvent: (e) => {
      if (e.kind === "waiting") {
        if (!waiting) note(`waiting: ${e.running} document(s) held by other workers`);
        waiting = true;
        return;
      }
      waiting = false;
      if (e.kind === "taken") note(`${e.item.source}: compressing (attempt ${e.item.attempts})`);
      else if (e.kind === "done") {
        note(
          `${e.item.source}: ${e.tokens} tokens -> ${e.vectors} vectors, stored as document ${e.documentId}`,
        );
      } else if (e.kind === "lost") {
        note(`${e.item.source}: lease lost to another worker; not stored by this one`);
      } else note(`${e.item.source}: failed: ${e.error}`);
    },
  });
  note(`worker: ${done} document(s) stored, ${failed} failed; queue drained`);
}

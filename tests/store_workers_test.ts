/**
 * Distributed compression into a PostgreSQL store: `kvfold store enqueue`, `kvfold worker`
 * processes draining one queue while one of them is killed with SIGKILL twice, leases that run out
 * and are taken over, `kvfold store stats` and `kvfold store copy` both ways. Needs
 * KVFOLD_TEST_POSTGRES_URL (see `_store_backends.ts`).
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import {
  chunkTexts,
  Compressor,
  openStore,
  type PostgresStore,
  runWorker,
  type Store,
  WorkQueue,
} from "../mod.ts";
import { repoRoot } from "../src/_native_build.ts";
import { runCli, tempDir, TEST_COMPRESSOR, testEngine, testModel } from "./_fixtures.ts";
import { pgRaw, postgresTest } from "./_store_backends.ts";

const WORDS = ("harbour ship lantern keeper storm tide north river stone bridge market bell tower garden " +
  "winter orchard miller road quarry signal ferry cliff meadow archive ledger copper anchor").split(" ");

/** Document `i`: `base` to `base` + 50 words, different for every i. */
function documentText(i: number, base = 40): string {
  const n = base + (i * 7) % 50;
  const words = [];
  for (let w = 0; w < n; w++) words.push(WORDS[(i * 13 + w * (i % 5 + 1)) % WORDS.length]);
  return `Document ${i}. ${words.join(" ")}.`;
}

async function writeDocs(dir: string, n: number, words: number): Promise<string[]> {
  const files = [];
  for (let i = 0; i < n; i++) {
    const f = join(dir, `doc${String(i).padStart(2, "0")}.txt`);
    await Deno.writeTextFile(f, documentText(i, words));
    files.push(f);
  }
  return files;
}

/** Every document's chunks as (text, tokens, bf16 bits), by source. */
async function contents(
  store: Store,
): Promise<Map<string, { text: string; tokens: number; bits: number[] }[]>> {
  const out = new Map();
  for (const source of await store.listSources()) {
    const doc = (await store.getDocument(source))!;
    out.set(
      source,
      (await store.getChunks(doc.chunkIds)).map((c) => ({
        text: c.text,
        tokens: c.tokens,
        bits: [...c.vectors.bf16!],
      })),
    );
  }
  return out;
}

const WORDS_PER_DOCUMENT = 800;
const COMPRESS_ARGS = ["--chunk-tokens", "48", "--segment-length", "24"];

postgresTest(
  "workers: 4 processes drain 40 documents while one is SIGKILLed twice; each stored once, bits as SQLite",
  async (b) => {
    const dir = await tempDir("kvfold-workers-");
    try {
      const compressor = await testModel("compressor", TEST_COMPRESSOR);
      // Long enough (~40 chunks each) that the queue outlasts two kills and restarts of a worker.
      const files = await writeDocs(dir, 40, WORDS_PER_DOCUMENT);
      // The reference: one process compressing into SQLite.
      const ref = join(dir, "ref.sqlite");
      const t0 = performance.now();
      const single = await runCli(
        "compress",
        "--compressor",
        compressor,
        "--store",
        ref,
        "--threads",
        "1",
        ...COMPRESS_ARGS,
        ...files,
      );
      assert.equal(single.code, 0, single.err);
      console.log(`single-process SQLite run: ${((performance.now() - t0) / 1000).toFixed(1)} s`);

      const enq = await runCli("store", "enqueue", "--store", b.location, ...COMPRESS_ARGS, ...files);
      assert.equal(enq.code, 0, enq.err);
      assert.match(enq.err, /enqueued 40 document/);
      const again = await runCli("store", "enqueue", "--store", b.location, files[0]);
      assert.match(again.err, /enqueued 0 document.*1 already queued/);

      const spawnWorker = () =>
        new Deno.Command(Deno.execPath(), {
          args: [
            "run",
            "-A",
            `${repoRoot()}/cli/main.ts`,
            "worker",
            "--store",
            b.location,
            "--compressor",
            compressor,
            "--lease",
            "2",
            "--threads",
            "1",
          ],
          stdout: "null",
          stderr: "piped",
        }).spawn();
      const t1 = performance.now();
      // Worker 0 (the victim) starts alone and is killed while it holds an item (between taking it
      // and committing it); then it restarts beside the 3 others (all starting at once, so it takes
      // an item before they drain the queue) and is killed so again; its third start stays.
      const finished: Promise<Deno.CommandOutput>[] = [];
      let victim = spawnWorker();
      let kills = 0, spawnedOthers = false;
      const deadline = Date.now() + 120_000;
      while (kills < 2 && Date.now() < deadline) {
        const held = await b.raw(
          "SELECT COUNT(*) FROM work_items WHERE state = 'running' AND worker LIKE ?",
          `%:${victim.pid}:%`,
        );
        if (held > 0) {
          victim.kill("SIGKILL");
          await victim.output();
          // A kill counts when it left an item running under the dead worker: on a busy machine the
          // victim may have committed between the look above and the kill (then nothing is retried).
          const orphaned = await b.raw(
            "SELECT COUNT(*) FROM work_items WHERE state = 'running' AND worker LIKE ?",
            `%:${victim.pid}:%`,
          );
          if (orphaned > 0) kills++;
          victim = spawnWorker();
          if (!spawnedOthers) {
            spawnedOthers = true;
            for (let i = 0; i < 3; i++) finished.push(spawnWorker().output());
          }
        } else if (await b.raw("SELECT COUNT(*) FROM work_items WHERE state = 'queued'") === 0) {
          break; // drained before the victim took anything more
        } else {
          await new Promise((r) => setTimeout(r, 10));
        }
      }
      finished.push(victim.output());
      const outs = await Promise.all(finished);
      for (const o of outs) assert.equal(o.code, 0, new TextDecoder().decode(o.stderr));
      assert.equal(kills, 2, "the victim was killed twice while holding an item");
      console.log(`4 workers, 2 kills: ${((performance.now() - t1) / 1000).toFixed(1)} s`);

      const stats = await runCli("store", "stats", b.location);
      assert.equal(stats.code, 0, stats.err);
      assert.match(stats.out, /documents: {4}40 /);
      assert.match(stats.out, /queue: {8}0 queued, 0 running, 40 done, 0 failed/);
      // The killed worker's items were taken again: as many retries as kills.
      assert.equal(await b.raw("SELECT SUM(attempts - 1) FROM work_items"), 2);

      await using pgStore = await openStore(b.location, { readOnly: true });
      await using sqlite = await openStore(ref, { readOnly: true });
      const [got, want] = [await contents(pgStore), await contents(sqlite)];
      assert.deepEqual([...got.keys()].sort(), files);
      assert.equal(await b.raw("SELECT COUNT(*) FROM documents"), 40);
      assert.equal(await b.raw("SELECT COUNT(DISTINCT source) FROM documents"), 40);
      for (const f of files) assert.deepEqual(got.get(f), want.get(f), f);

      // copy: PostgreSQL -> SQLite and back into a fresh schema, verified; the bits survive both ways.
      const back = join(dir, "back.sqlite");
      const c1 = await runCli("store", "copy", b.location, back);
      assert.equal(c1.code, 0, c1.err);
      assert.match(c1.err, /copied 40 documents .*verified/);
      await using backStore = await openStore(back, { readOnly: true });
      for (const [f, chunks] of await contents(backStore)) assert.deepEqual(chunks, want.get(f), f);
      // SQLite -> PostgreSQL into an empty schema: the same documents, bit for bit.
      const fresh = new URL(b.location);
      fresh.searchParams.set("schema", `${fresh.searchParams.get("schema")}_copy`);
      try {
        const c2 = await runCli("store", "copy", back, fresh.toString());
        assert.equal(c2.code, 0, c2.err);
        await using copied = await openStore(fresh.toString(), { readOnly: true });
        const copiedContents = await contents(copied);
        assert.equal(copiedContents.size, 40);
        for (const [f, chunks] of copiedContents) assert.deepEqual(chunks, want.get(f), f);
      } finally {
        await pgRaw(undefined, `DROP SCHEMA IF EXISTS ${fresh.searchParams.get("schema")} CASCADE`);
      }
      const again2 = await runCli("store", "copy", ref, b.location);
      assert.notEqual(again2.code, 0);
      assert.match(again2.err, /is already there/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

postgresTest(
  "workers: an item whose worker died is taken again after its lease; a stalled worker commits nothing",
  async (b) => {
    const engine = await testEngine();
    using compressor = await Compressor.load(engine, await testModel("compressor", TEST_COMPRESSOR));
    await using store = await openStore(b.location) as PostgresStore;
    const queue = new WorkQueue(store);
    await queue.enqueue([
      { source: "a", text: documentText(1), options: { chunkTokens: 48, segmentLength: 24 } },
      { source: "b", text: documentText(2), options: { chunkTokens: 48, segmentLength: 24 } },
      { source: "empty", text: "" },
    ]);
    // A worker takes "a" and dies (never completes): the lease runs out.
    const dead = await queue.claim("dead-worker", { leaseMs: 300 });
    assert.equal(dead?.source, "a");
    // A stalled worker takes "b"; its lease runs out too and another worker takes it over.
    const stalled = await queue.claim("stalled-worker", { leaseMs: 300 });
    assert.equal(stalled?.source, "b");
    assert.deepEqual(await queue.stats(), { queued: 1, running: 2, done: 0, failed: 0, stale: 0 });
    await new Promise((r) => setTimeout(r, 400));
    assert.equal((await queue.stats()).stale, 2);

    const events: string[] = [];
    const r = await runWorker(compressor, store, {
      leaseMs: 5000,
      workerId: "live",
      onEvent: (e) => events.push(`${e.kind}:${"item" in e ? e.item.source : ""}`),
    });
    assert.deepEqual(r, { done: 2, failed: 1 });
    assert.deepEqual(events, ["taken:a", "done:a", "taken:b", "done:b", "taken:empty", "failed:empty"]);
    assert.deepEqual(await queue.stats(), { queued: 0, running: 0, done: 2, failed: 1, stale: 0 });
    assert.match((await queue.failures())[0].error, /the document is empty/);
    assert.equal(await b.raw("SELECT attempts FROM work_items WHERE source = 'a'"), 2);

    // The stalled worker comes back with its compressed document: no longer its item, nothing written.
    const before = await store.getDocument("b");
    const late = await queue.complete(stalled!, "stalled-worker", {
      source: "b",
      chunks: [{ text: "late", tokens: 1, vectors: { rows: 1, hidden: 2, data: new Float32Array([1, 2]) } }],
    });
    assert.equal(late, undefined);
    assert.deepEqual(await store.getDocument("b"), before);
    assert.equal((await store.stats()).documents, 2);
    assert.deepEqual(await store.retrieve("late"), []);
  },
);

postgresTest(
  "workers: a document enqueued with breakAt sentence is cut as compressIntoStore cuts it",
  async (b) => {
    const engine = await testEngine();
    using compressor = await Compressor.load(engine, await testModel("compressor", TEST_COMPRESSOR));
    await using store = await openStore(b.location) as PostgresStore;
    // Sentences of 5-9 words, so most chunks of 48 tokens end at one of them.
    const sentences = Array.from(
      { length: 30 },
      (_, i) => WORDS.slice(i % 20, i % 20 + 5 + (i % 5)).join(" "),
    );
    const text = sentences.map((s) => `${s[0].toUpperCase()}${s.slice(1)}.`).join(" ");
    const options = { chunkTokens: 48, breakAt: "sentence" as const, segmentLength: 24 };
    await new WorkQueue(store).enqueue([{ source: "s", text, options }]);
    assert.deepEqual(await runWorker(compressor, store, { workerId: "w" }), { done: 1, failed: 0 });
    const doc = (await store.getDocument("s"))!;
    const chunks = await store.getChunks(doc.chunkIds);
    const texts = chunks.map((c) => c.text);
    assert.deepEqual(texts, chunkTexts(compressor.model.tokenizer, text, options));
    // Each chunk but the last ends a sentence, or is full where its second half holds no sentence end.
    for (const c of chunks.slice(0, -1)) assert.ok(c.text.endsWith(".") || c.tokens === 48, c.text);
    assert.ok(chunks.filter((c) => c.text.endsWith(".")).length > chunks.length / 2);
    assert.notDeepEqual(texts, chunkTexts(compressor.model.tokenizer, text, { chunkTokens: 48 }));
  },
);

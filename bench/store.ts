// The document store's two backends (issue 17): insert throughput (chunks/s) and retrieval latency
// p50/p99 (BM25 top 4, and 4 chunks by id) on a 10k-chunk store, SQLite vs PostgreSQL on this
// machine; and distributed compression throughput into PostgreSQL with 1 vs 2 `kvfold worker`
// processes (one CPU thread each) draining the same queue.
//
//   deno run -A bench/store.ts --postgres postgres://user:pw@host:port/db [--chunks 10000]
//     [--queries 400] [--docs 120] [--out bench/results/store.json]
//
// The PostgreSQL URL may also come from $KVFOLD_TEST_POSTGRES_URL; the bench works in its own schema
// (kvfold_bench_PID), dropped at the end.
import { parseArgs } from "node:util";
import pg from "npm:pg@8.23.1";
import { openStore, type PostgresStore, type Store, WorkQueue } from "../mod.ts";
import { makeTestModel } from "../testing/mod.ts";
import { repoRoot } from "../src/_native_build.ts";
import { quantile } from "./_stats.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    postgres: { type: "string", default: Deno.env.get("KVFOLD_TEST_POSTGRES_URL") },
    chunks: { type: "string", default: "10000" },
    queries: { type: "string", default: "400" },
    docs: { type: "string", default: "120" },
    out: { type: "string", default: new URL("./results/store.json", import.meta.url).pathname },
  },
});
if (!v.postgres) throw new Error("bench/store.ts needs --postgres URL (or $KVFOLD_TEST_POSTGRES_URL)");
const CHUNKS = Number(v.chunks);
const QUERIES = Number(v.queries);
const CHUNKS_PER_DOC = 10;
const schema = `kvfold_bench_${Deno.pid}`;
const pgUrl = (() => {
  const u = new URL(v.postgres!);
  u.searchParams.set("schema", schema);
  return u.toString();
})();
const cpu = (await Deno.readTextFile("/proc/cpuinfo").catch(() => "")).match(/model name\s*:\s*(.*)/)?.[1] ??
  "unknown";
const cores = navigator.hardwareConcurrency;

// A vocabulary with a Zipf-like use: some terms in many chunks, most in few.
let seed = 12345;
const rand = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
const VOCAB = Array.from({ length: 5000 }, (_, i) => `w${i.toString(36)}`);
const word = () => VOCAB[Math.floor(VOCAB.length * rand() ** 3)];
const chunkText = () => Array.from({ length: 60 }, word).join(" ");
const HIDDEN = 64, ROWS = 4;
const vectors = () => ({
  rows: ROWS,
  hidden: HIDDEN,
  data: Float32Array.from({ length: ROWS * HIDDEN }, () => rand() * 2 - 1),
});
const docs = Array.from({ length: CHUNKS / CHUNKS_PER_DOC }, (_, d) => ({
  source: `doc${d}`,
  chunks: Array.from(
    { length: CHUNKS_PER_DOC },
    () => ({ text: chunkText(), tokens: 64, vectors: vectors() }),
  ),
}));
const queries = Array.from({ length: QUERIES }, () => `${word()} ${word()} ${word()}`);

const round = (x: number, d = 2) => Number(x.toFixed(d));

async function storeRow(name: string, store: Store) {
  let t0 = performance.now();
  for (const d of docs) await store.addDocument(d);
  const insertS = (performance.now() - t0) / 1000;
  const ids = (await store.getDocument("doc0"))!.chunkIds;
  const retrieveMs: number[] = [];
  for (const q of queries) {
    t0 = performance.now();
    await store.retrieve(q, { k: 4 });
    retrieveMs.push(performance.now() - t0);
  }
  const byIdMs: number[] = [];
  for (let i = 0; i < QUERIES; i++) {
    t0 = performance.now();
    await store.getChunks(ids.slice(i % 6, i % 6 + 4));
    byIdMs.push(performance.now() - t0);
  }
  return {
    backend: name,
    chunks: CHUNKS,
    insert_chunks_per_s: round(CHUNKS / insertS, 0),
    retrieve_p50_ms: round(quantile(retrieveMs, 0.5)),
    retrieve_p99_ms: round(quantile(retrieveMs, 0.99)),
    get_chunks_p50_ms: round(quantile(byIdMs, 0.5)),
    get_chunks_p99_ms: round(quantile(byIdMs, 0.99)),
  };
}

async function dropSchema() {
  const c = new pg.Client({ connectionString: v.postgres });
  await c.connect();
  await c.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
  await c.end();
}

const tmp = await Deno.makeTempDir({ prefix: "kvfold-bench-store-" });
const storeRows = [];
const workerRows = [];
try {
  {
    await using sqlite = await openStore(`${tmp}/bench.sqlite`);
    storeRows.push(await storeRow("sqlite", sqlite));
    console.error(`sqlite: ${JSON.stringify(storeRows.at(-1))}`);
  }
  {
    await dropSchema();
    await using postgres = await openStore(pgUrl);
    storeRows.push(await storeRow("postgres", postgres));
    console.error(`postgres: ${JSON.stringify(storeRows.at(-1))}`);
  }

  // Compression: the same queue drained by 1, then 2 worker processes.
  const compressorDir = `${new URL("../.kvfold/", import.meta.url).pathname}models/tiny-compressor`;
  await makeTestModel(compressorDir, { preset: "tiny", seed: 21, summaryLength: 4 });
  const texts = Array.from({ length: Number(v.docs) }, () => Array.from({ length: 1500 }, word).join(" "));
  for (const workers of [1, 2]) {
    await dropSchema();
    await using store = await openStore(pgUrl) as PostgresStore;
    await new WorkQueue(store).enqueue(texts.map((text, i) => ({
      source: `w${i}`,
      text,
      options: { chunkTokens: 64, segmentLength: 32 },
    })));
    const t0 = performance.now();
    const procs = Array.from({ length: workers }, () =>
      new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          `${repoRoot()}/cli/main.ts`,
          "worker",
          "--store",
          pgUrl,
          "--compressor",
          compressorDir,
          "--threads",
          "1",
        ],
        stdout: "null",
        stderr: "null",
      }).output());
    for (const o of await Promise.all(procs)) {
      if (o.code !== 0) throw new Error(`a worker exited with ${o.code}`);
    }
    const s = (performance.now() - t0) / 1000;
    const st = await store.stats();
    workerRows.push({
      workers,
      documents: st.documents,
      tokens: st.tokensIn,
      seconds: round(s),
      documents_per_s: round(st.documents / s),
      tokens_per_s: round(st.tokensIn / s, 0),
    });
    console.error(`workers ${workers}: ${JSON.stringify(workerRows.at(-1))}`);
  }
} finally {
  await dropSchema();
  await Deno.remove(tmp, { recursive: true });
}

console.log(
  `Store backends, ${CHUNKS} chunks (${CHUNKS_PER_DOC} per document, ${ROWS}x${HIDDEN} bf16 vectors), ${QUERIES} queries; ${cpu}, ${cores} cores`,
);
console.log("backend  | insert chunks/s | BM25 top-4 p50 / p99 ms | 4 chunks by id p50 / p99 ms");
for (const r of storeRows) {
  console.log(
    `${r.backend.padEnd(8)} | ${String(r.insert_chunks_per_s).padStart(15)} | ${
      `${r.retrieve_p50_ms} / ${r.retrieve_p99_ms}`.padStart(23)
    } | ${`${r.get_chunks_p50_ms} / ${r.get_chunks_p99_ms}`.padStart(27)}`,
  );
}
console.log("\nCompression into PostgreSQL (tiny test compressor, 1 thread per worker process)");
console.log("workers | documents | tokens | seconds | documents/s | tokens/s | speed-up");
for (const r of workerRows) {
  console.log(
    `${String(r.workers).padStart(7)} | ${String(r.documents).padStart(9)} | ${
      String(r.tokens).padStart(6)
    } | ${String(r.seconds).padStart(7)} | ${String(r.documents_per_s).padStart(11)} | ${
      String(r.tokens_per_s).padStart(8)
    } | ${(r.tokens_per_s / workerRows[0].tokens_per_s).toFixed(2)}x`,
  );
}
const load = (await Deno.readTextFile("/proc/loadavg").catch(() => "")).split(" ").slice(0, 3).join(" ");
await Deno.writeTextFile(
  v.out,
  JSON.stringify(
    {
      bench: "store",
      cpu,
      cores,
      loadavg: load,
      date: new Date().toISOString(),
      postgres: await (async () => {
        const c = new pg.Client({ connectionString: v.postgres });
        await c.connect();
        const setting = async (name: string) => (await c.query(`SHOW ${name}`)).rows[0][name];
        // fsync and synchronous_commit say whether commits wait for the disk, as SQLite's do.
        const r = {
          version: await setting("server_version"),
          fsync: await setting("fsync"),
          synchronous_commit: await setting("synchronous_commit"),
        };
        await c.end();
        return r;
      })(),
      store: storeRows,
      workers: workerRows,
    },
    null,
    2,
  ) + "\n",
);
console.log(`wrote ${v.out} (load average ${load})`);

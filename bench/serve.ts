// `kvfold serve` under concurrent load (issue 16): N = 1, 4, 16 streaming clients on loopback, each
// client with one of 4 LoRA adapters (rank 8), against the same N generations run one after another
// in-process in the same run. Reports aggregate generated tokens/s, p50/p99 time to first token and
// inter-token latency (measured by the clients, from the server-sent events), and the server's mean
// batch rows. Target (issue): at N = 16, aggregate throughput at least 4x N = 1. From the server's
// metrics it also reports, per N, the mean native decode step, the mean host work before each step
// (sampling, detokenizing, stop checks) and the prefill seconds: where a round's time went.
//
// The clients run in a separate Deno process (bench/_serve_clients.ts), so their fetch and parsing
// never take the server's event loop; `--clients-in-process` runs them in this process instead.
// Each round runs every N once on the same server, one after another, so a machine whose load
// changes during the run disturbs N = 1 and N = 16 alike: the "vs N=1" column is the median over
// rounds of the ratio within a round.
//
//   deno run -A bench/serve.ts [--preset small] [--threads 2] [--max-tokens 32] [--clients 1,4,16]
//     [--rounds 3] [--clients-in-process] [--no-sequential] [--solo-interval-ms 20]
//     [--out bench/results/serve.json]
import { parseArgs } from "node:util";
import { Kvfold, type Model, startServer } from "../mod.ts";
import { makeTestAdapter, makeTestModel, TEST_MODEL_PRESETS } from "../testing/mod.ts";
import { type ClientResult, prompt, runClients } from "./_serve_clients.ts";
import { median, quantile } from "./_stats.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    preset: { type: "string", default: "small" },
    threads: { type: "string", default: "2" },
    "max-tokens": { type: "string", default: "32" },
    clients: { type: "string", default: "1,4,16" },
    rounds: { type: "string", default: "3" },
    "clients-in-process": { type: "boolean", default: false },
    "no-sequential": { type: "boolean", default: false },
    "solo-interval-ms": { type: "string" },
    out: { type: "string", default: new URL("./results/serve.json", import.meta.url).pathname },
  },
});
const preset = v.preset as keyof typeof TEST_MODEL_PRESETS;
if (!(preset in TEST_MODEL_PRESETS)) throw new RangeError(`--preset ${v.preset} is not tiny or small`);
const maxTokens = Number(v["max-tokens"]);
const counts = v.clients.split(",").map(Number);
const rounds = Number(v.rounds);
const root = new URL("../.kvfold/", import.meta.url).pathname;
const cpu = (await Deno.readTextFile("/proc/cpuinfo").catch(() => "")).match(/model name\s*:\s*(.*)/)?.[1] ??
  "unknown";
const loadavg = async () =>
  (await Deno.readTextFile("/proc/loadavg").catch(() => "")).split(" ").slice(0, 3).join(" ");
const ADAPTERS = ["a0", "a1", "a2", "a3"];

const modelDir = `${root}models/${preset}`;
try {
  await Deno.stat(`${modelDir}/config.json`);
} catch {
  await makeTestModel(modelDir, { preset, seed: 1 });
}
await using kv = await Kvfold.open({ backend: "cpu", threads: Number(v.threads) });
using model = await kv.loadModel(modelDir);
for (const [i, name] of ADAPTERS.entries()) {
  const dir = `${root}adapters/${preset}-serve-${name}`;
  try {
    await Deno.stat(`${dir}/adapter_config.json`);
  } catch {
    await makeTestAdapter(dir, { base: modelDir, rank: 8, seed: 40 + i });
  }
  await model.adapters.load(dir, { name });
}

const fixed = (x: number, digits: number) => Number(x.toFixed(digits));
const sum = <T>(xs: T[], f: (x: T) => number) => xs.reduce((s, x) => s + f(x), 0);

async function inProcess(m: Model, n: number) {
  const t0 = performance.now();
  let tokens = 0;
  for (let i = 0; i < n; i++) {
    // The context the server gives the same request (prompt + max tokens + 1), not the model's
    // whole 2048 positions, whose cache alone takes longer to allocate than the answer to decode.
    const ids = m.encodePrompt(prompt(i));
    using session = m.session({ contextSize: ids.length + maxTokens + 1 });
    for await (
      const _ of session.generate({
        prompt: ids,
        adapter: ADAPTERS[i % 4],
        temperature: 0,
        maxTokens,
        ignoreEos: true,
      })
    ) { /* drain */ }
    tokens += session.lastStats!.generatedTokens;
  }
  return { tokens, seconds: (performance.now() - t0) / 1000 };
}

const clientScript = new URL("./_serve_clients.ts", import.meta.url).pathname;
async function clients(url: string, n: number, tokens = maxTokens) {
  if (v["clients-in-process"]) return await runClients(url, n, tokens, ADAPTERS);
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", clientScript, "--url", url, "--clients", String(n), "--max-tokens", String(tokens)],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  if (!out.success) throw new Error(`the client process failed (exit ${out.code})`);
  return JSON.parse(new TextDecoder().decode(out.stdout)) as { seconds: number; results: ClientResult[] };
}

const soloIntervalMs = v["solo-interval-ms"] === undefined ? undefined : Number(v["solo-interval-ms"]);
await using server = startServer({ model, port: 0, maxBatch: 16, soloIntervalMs });
await server.ready;
const m = server.metrics;
await clients(server.url, 1, 4); // warm-up: the client script compiled, the first session made

interface Run {
  round: number;
  clients: number;
  tokens: number;
  seconds: number;
  results: ClientResult[];
  steps: number;
  rows: number;
  decodeSeconds: number;
  hostSeconds: number;
  prefillSeconds: number;
}
const runs: Run[] = [];
const loadBefore = await loadavg();
for (let round = 0; round < rounds; round++) {
  for (const n of counts) {
    const steps = m.batchRows.count, rows = m.batchRows.sum;
    const decode = m.decodeStepSeconds.sum, host = m.stepHostSeconds.sum, prefill = m.prefillChunkSeconds.sum;
    const { seconds, results } = await clients(server.url, n);
    runs.push({
      round,
      clients: n,
      tokens: results.reduce((s, r) => s + r.tokens, 0),
      seconds,
      results,
      steps: m.batchRows.count - steps,
      rows: m.batchRows.sum - rows,
      decodeSeconds: m.decodeStepSeconds.sum - decode,
      hostSeconds: m.stepHostSeconds.sum - host,
      prefillSeconds: m.prefillChunkSeconds.sum - prefill,
    });
  }
}
const loadAfter = await loadavg();
const sequential = new Map<number, number>();
if (!v["no-sequential"]) {
  for (const n of counts) {
    const base = await inProcess(model, n);
    sequential.set(n, base.tokens / base.seconds);
  }
}

const rows = counts.map((n) => {
  const mine = runs.filter((r) => r.clients === n);
  const ratios = mine.map((r) => {
    const one = runs.find((o) => o.round === r.round && o.clients === 1);
    return one ? (r.tokens / r.seconds) / (one.tokens / one.seconds) : NaN;
  });
  const ttft = mine.flatMap((r) => r.results.map((c) => c.ttft));
  const gaps = mine.flatMap((r) => r.results.flatMap((c) => c.gaps));
  return {
    clients: n,
    tokens: mine[0].tokens,
    seconds_per_round: mine.map((r) => fixed(r.seconds, 3)),
    tokens_per_s: fixed(median(mine.map((r) => r.tokens / r.seconds)), 2),
    vs_one_per_round: ratios.map((x) => fixed(x, 2)),
    vs_one: fixed(median(ratios), 2),
    ttft_p50_ms: fixed(quantile(ttft, 0.5) * 1000, 1),
    ttft_p99_ms: fixed(quantile(ttft, 0.99) * 1000, 1),
    itl_p50_ms: fixed(quantile(gaps, 0.5) * 1000, 1),
    itl_p99_ms: fixed(quantile(gaps, 0.99) * 1000, 1),
    decode_step_ms: fixed(sum(mine, (r) => r.decodeSeconds) / sum(mine, (r) => r.steps) * 1000, 2),
    step_host_ms: fixed(sum(mine, (r) => r.hostSeconds) / sum(mine, (r) => r.steps) * 1000, 3),
    prefill_ms_per_round: fixed(sum(mine, (r) => r.prefillSeconds) / mine.length * 1000, 1),
    mean_batch_rows: fixed(
      mine.reduce((s, r) => s + r.rows, 0) / Math.max(1, mine.reduce((s, r) => s + r.steps, 0)),
      2,
    ),
    in_process_sequential_tokens_per_s: sequential.has(n) ? fixed(sequential.get(n)!, 2) : null,
  };
});

const where = v["clients-in-process"] ? "clients in the server's process" : "clients in a separate process";
console.log(
  `kvfold serve, preset ${preset}, ${v.threads} threads, ${maxTokens} tokens per client, 4 adapters (rank 8), ` +
    `${rounds} rounds, ${where}, ${cpu}`,
);
console.log(
  "clients | tok/s  | vs N=1 (per round)      | in-process seq tok/s | TTFT p50 / p99 ms | ITL p50 / p99 ms | " +
    "mean batch rows | native step / host ms | prefill ms",
);
for (const r of rows) {
  console.log(
    `${String(r.clients).padStart(7)} | ${r.tokens_per_s.toFixed(1).padStart(6)} | ${
      `${r.vs_one.toFixed(2)}x (${r.vs_one_per_round.join(", ")})`.padEnd(23)
    } | ${(r.in_process_sequential_tokens_per_s?.toFixed(1) ?? "-").padStart(20)} | ${
      `${r.ttft_p50_ms} / ${r.ttft_p99_ms}`.padStart(17)
    } | ${`${r.itl_p50_ms} / ${r.itl_p99_ms}`.padStart(16)} | ${String(r.mean_batch_rows).padStart(15)} | ${
      `${r.decode_step_ms} / ${r.step_host_ms}`.padStart(21)
    } | ${r.prefill_ms_per_round}`,
  );
}
await Deno.writeTextFile(
  v.out,
  JSON.stringify(
    {
      bench: "serve",
      preset,
      threads: Number(v.threads),
      maxTokens,
      adapters: ADAPTERS.length,
      rounds,
      soloIntervalMs: soloIntervalMs ?? 20,
      clients: v["clients-in-process"] ? "in-process" : "separate-process",
      cpu,
      loadavg_before: loadBefore,
      loadavg_after: loadAfter,
      date: new Date().toISOString(),
      rows,
    },
    null,
    2,
  ) + "\n",
);
console.log(`wrote ${v.out} (load average ${loadBefore} before the rounds, ${loadAfter} after)`);

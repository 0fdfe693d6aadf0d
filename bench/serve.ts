// `kvfold serve` under concurrent load (issue 16): N = 1, 4, 16 streaming clients on loopback, each
// client with one of 4 LoRA adapters (rank 8), against the same N generations run one after another
// in-process in the same run. Reports aggregate generated tokens/s, p50/p99 time to first token and
// inter-token latency (measured by the clients, from the server-sent events), and the server's mean
// batch rows. Target (issue): at N = 16, aggregate throughput at least 4x N = 1.
//
//   deno run -A bench/serve.ts [--preset small] [--threads 2] [--max-tokens 32] [--clients 1,4,16]
//     [--out bench/results/serve.json]
import { parseArgs } from "node:util";
import { Kvfold, type Model, startServer } from "../mod.ts";
import { makeTestAdapter, makeTestModel, TEST_MODEL_PRESETS } from "../testing/mod.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    preset: { type: "string", default: "small" },
    threads: { type: "string", default: "2" },
    "max-tokens": { type: "string", default: "32" },
    clients: { type: "string", default: "1,4,16" },
    out: { type: "string", default: new URL("./results/serve.json", import.meta.url).pathname },
  },
});
const preset = v.preset as keyof typeof TEST_MODEL_PRESETS;
if (!(preset in TEST_MODEL_PRESETS)) throw new RangeError(`--preset ${v.preset} is not tiny or small`);
const maxTokens = Number(v["max-tokens"]);
const counts = v.clients.split(",").map(Number);
const root = new URL("../.kvfold/", import.meta.url).pathname;
const cpu = (await Deno.readTextFile("/proc/cpuinfo").catch(() => "")).match(/model name\s*:\s*(.*)/)?.[1] ??
  "unknown";
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

const prompt = (i: number) => [{ role: "user", content: `Client ${i} asks: what happened on day ${i}?` }];
const quantile = (xs: number[], q: number) => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
};

async function inProcess(m: Model, n: number) {
  const t0 = performance.now();
  let tokens = 0;
  for (let i = 0; i < n; i++) {
    using session = m.session();
    for await (
      const _ of session.generate({
        prompt: m.encodePrompt(prompt(i)),
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

async function client(url: string, i: number) {
  const t0 = performance.now();
  const r = await fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    body: JSON.stringify({
      model: `base:${ADAPTERS[i % 4]}`,
      messages: prompt(i),
      max_tokens: maxTokens,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
      kvfold: { ignore_eos: true },
    }),
  });
  const reader = r.body!.pipeThrough(new TextDecoderStream()).getReader();
  const times: number[] = [];
  let buffer = "", tokens = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const data = buffer.slice(6, end);
      buffer = buffer.slice(end + 2);
      if (data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
      if (chunk.choices?.[0]?.delta?.content) times.push(performance.now());
    }
  }
  return {
    tokens,
    ttft: (times[0] - t0) / 1000,
    gaps: times.slice(1).map((t, j) => (t - times[j]) / 1000),
  };
}

const rows = [];
for (const n of counts) {
  const base = await inProcess(model, n);
  await using server = startServer({ model, port: 0, maxBatch: 16 });
  await server.ready;
  const t0 = performance.now();
  const results = await Promise.all(Array.from({ length: n }, (_, i) => client(server.url, i)));
  const seconds = (performance.now() - t0) / 1000;
  const tokens = results.reduce((s, r) => s + r.tokens, 0);
  const m = server.metrics;
  rows.push({
    clients: n,
    tokens,
    seconds: Number(seconds.toFixed(3)),
    tokens_per_s: Number((tokens / seconds).toFixed(2)),
    ttft_p50_ms: Number((quantile(results.map((r) => r.ttft), 0.5) * 1000).toFixed(1)),
    ttft_p99_ms: Number((quantile(results.map((r) => r.ttft), 0.99) * 1000).toFixed(1)),
    itl_p50_ms: Number((quantile(results.flatMap((r) => r.gaps), 0.5) * 1000).toFixed(1)),
    itl_p99_ms: Number((quantile(results.flatMap((r) => r.gaps), 0.99) * 1000).toFixed(1)),
    mean_batch_rows: Number((m.batchRows.sum / Math.max(1, m.batchRows.count)).toFixed(2)),
    in_process_sequential_tokens_per_s: Number((base.tokens / base.seconds).toFixed(2)),
  });
}

const one = rows.find((r) => r.clients === 1)?.tokens_per_s;
console.log(
  `kvfold serve, preset ${preset}, ${v.threads} threads, ${maxTokens} tokens per client, 4 adapters (rank 8), ${cpu}`,
);
console.log(
  "clients | tok/s  | vs N=1 | in-process seq tok/s | TTFT p50 / p99 ms | ITL p50 / p99 ms | mean batch rows",
);
for (const r of rows) {
  console.log(
    `${String(r.clients).padStart(7)} | ${r.tokens_per_s.toFixed(1).padStart(6)} | ${
      one ? (r.tokens_per_s / one).toFixed(2).padStart(5) + "x" : "   - "
    } | ${r.in_process_sequential_tokens_per_s.toFixed(1).padStart(20)} | ${
      `${r.ttft_p50_ms} / ${r.ttft_p99_ms}`.padStart(17)
    } | ${`${r.itl_p50_ms} / ${r.itl_p99_ms}`.padStart(16)} | ${r.mean_batch_rows}`,
  );
}
const load = (await Deno.readTextFile("/proc/loadavg").catch(() => "")).split(" ").slice(0, 3).join(" ");
await Deno.writeTextFile(
  v.out,
  JSON.stringify(
    {
      bench: "serve",
      preset,
      threads: Number(v.threads),
      maxTokens,
      adapters: ADAPTERS.length,
      cpu,
      loadavg: load,
      date: new Date().toISOString(),
      rows,
    },
    null,
    2,
  ) + "\n",
);
console.log(`wrote ${v.out} (load average ${load})`);

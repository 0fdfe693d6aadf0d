// A/B of one native change on decode (or prefill) speed: two processes, each with the same model
// loaded, decode 64 tokens (or prefill `--tokens` ids) in turn (never at once), round after round, so
// drift of the machine (a VM's memory bandwidth moves by tens of percent over minutes) falls on both
// sides alike. The sides differ by environment: a library build (`--lib-b PATH` loads another
// libkvfold.so) or a switch the library reads (`--env-b KVFOLD_CPU=avx2`). Prints each round's pair
// and the median ratio B / A, with how busy the machine was; writes JSON beside it. Not a test: a
// measurement.
//
//   deno run -A bench/decode_ab.ts [--model DIR] [--dtype q4_0|auto] [--rounds 10] [--tokens 64] [--context 16]
//     [--env-a K=V] [--env-b K=V] [--lib-a PATH] [--lib-b PATH] [--threads 2] [--phase decode|prefill]
//     [--out bench/results/decode_ab.json]
//
// --context N prefills N prompt tokens before each decode (its attention then reads N + 64 cache slots).
//
// The second process tends to measure faster (an A/A run gave B / A 1.09 on a 2-core VM): run both
// orders (A and B swapped) and take the geometric mean of the two ratios.
//
// --model defaults to the 1.1B bench model that `bench/vs_llamacpp.ts` caches (.kvfold/bench-models/1.1b).
import { parseArgs } from "node:util";
import { cpus } from "node:os";
import { cpuLoadBetween, sampleCpuLoad } from "./_cpu_load.ts";
import { median } from "./_stats.ts";

const CHILD = "--child";

if (Deno.args[0] === CHILD) {
  // One side: load the model, then for every line "go" decode once and answer tok/s.
  const [, dir, dtype, tokens, threads, phase, context] = Deno.args;
  const { Kvfold } = await import("../mod.ts");
  const { measureDecode, measurePrefill } = await import("../src/throughput.ts");
  await using kv = await Kvfold.open({ backend: "cpu", threads: Number(threads) });
  // "auto": the file's own dtype (a Q4_K_M GGUF stays 4-bit only so).
  using model = await kv.loadModel(dir, dtype === "auto" ? {} : { dtype: dtype as "f32" });
  await measureDecode(model, { tokens: 8, repeats: 1 }); // page the weights in
  const out = (s: string) => Deno.stdout.write(new TextEncoder().encode(s + "\n"));
  await out(JSON.stringify({ ready: true, engine: kv.name }));
  const lines = Deno.stdin.readable.pipeThrough(new TextDecoderStream());
  let buf = "";
  for await (const piece of lines) {
    buf += piece;
    for (let i = buf.indexOf("\n"); i >= 0; i = buf.indexOf("\n")) {
      buf = buf.slice(i + 1);
      const r = phase === "prefill"
        ? await measurePrefill(model, { tokens: Number(tokens), repeats: 1 })
        : await measureDecode(model, { tokens: Number(tokens), repeats: 1, promptTokens: Number(context) });
      await out(JSON.stringify({ tokensPerSecond: r.medianTokensPerSecond }));
    }
  }
  Deno.exit(0);
}

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string", default: new URL("../.kvfold/bench-models/1.1b", import.meta.url).pathname },
    dtype: { type: "string", default: "q4_0" },
    rounds: { type: "string", default: "10" },
    tokens: { type: "string", default: "64" },
    threads: { type: "string", default: "2" },
    phase: { type: "string", default: "decode" },
    context: { type: "string", default: "16" },
    "env-a": { type: "string", multiple: true, default: [] },
    "env-b": { type: "string", multiple: true, default: [] },
    "lib-a": { type: "string" },
    "lib-b": { type: "string" },
    out: { type: "string", default: new URL("results/decode_ab.json", import.meta.url).pathname },
  },
});

if (v.phase !== "decode" && v.phase !== "prefill") {
  throw new Error(`--phase takes decode or prefill, not "${v.phase}"`);
}

function envOf(pairs: string[], lib?: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const p of pairs) {
    const i = p.indexOf("=");
    if (i < 1) throw new Error(`--env-a/--env-b take KEY=VALUE, got "${p}"`);
    env[p.slice(0, i)] = p.slice(i + 1);
  }
  if (lib) env.KVFOLD_LIB = lib;
  return env;
}

/** A side's child process with a line reader on its stdout. */
function side(env: Record<string, string>) {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL(import.meta.url).pathname,
      CHILD,
      v.model!,
      v.dtype!,
      v.tokens!,
      v.threads!,
      v.phase!,
      v.context!,
    ],
    env,
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const writer = child.stdin.getWriter();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  const line = async (): Promise<Record<string, unknown>> => {
    while (!buf.includes("\n")) {
      const { value, done } = await reader.read();
      if (done) throw new Error("a side exited early");
      buf += value;
    }
    const i = buf.indexOf("\n");
    const l = buf.slice(0, i);
    buf = buf.slice(i + 1);
    return JSON.parse(l);
  };
  return {
    child,
    line,
    async decode(): Promise<number> {
      await writer.write(new TextEncoder().encode("go\n"));
      return (await line()).tokensPerSecond as number;
    },
    async close() {
      await writer.close();
      await child.status;
    },
  };
}

const a = side(envOf(v["env-a"]!, v["lib-a"])), b = side(envOf(v["env-b"]!, v["lib-b"]));
const engines = [await a.line(), await b.line()].map((r) => r.engine);
const rounds: { a: number; b: number; ratio: number; othersCores: number | null }[] = [];
console.log(
  `A: ${JSON.stringify(v["env-a"])} ${v["lib-a"] ?? ""} | B: ${JSON.stringify(v["env-b"])} ${
    v["lib-b"] ?? ""
  }`,
);
console.log(
  `model ${v.model} as ${v.dtype}, ${v.threads} threads, ${v.phase} ${v.tokens} after ${v.context}; engines: ${
    engines.join(" | ")
  }`,
);
console.log("| round | A tok/s | B tok/s | B / A | others' cores |");
console.log("| ----- | ------- | ------- | ----- | ------------- |");
for (let r = 0; r < Number(v.rounds); r++) {
  const pids = [a.child.pid, b.child.pid];
  const t0 = sampleCpuLoad(pids);
  // Alternate which side goes first, so neither always follows the other's cache state.
  let ra: number, rb: number;
  if (r % 2 === 0) {
    ra = await a.decode();
    rb = await b.decode();
  } else {
    rb = await b.decode();
    ra = await a.decode();
  }
  const load = cpuLoadBetween(t0, sampleCpuLoad(pids));
  rounds.push({ a: ra, b: rb, ratio: rb / ra, othersCores: load?.othersCores ?? null });
  console.log(
    `| ${r + 1} | ${ra.toFixed(2)} | ${rb.toFixed(2)} | ${(rb / ra).toFixed(3)} | ${
      load ? load.othersCores.toFixed(2) : "n/a"
    } |`,
  );
}
await a.close();
await b.close();
const summary = {
  date: new Date().toISOString(),
  machine: { cpu: cpus()[0]?.model ?? "unknown", cores: cpus().length },
  model: v.model,
  dtype: v.dtype,
  threads: Number(v.threads),
  phase: v.phase,
  tokens: Number(v.tokens),
  context: Number(v.context),
  a: { env: v["env-a"], lib: v["lib-a"] ?? null, engine: engines[0] },
  b: { env: v["env-b"], lib: v["lib-b"] ?? null, engine: engines[1] },
  medianA: median(rounds.map((r) => r.a)),
  medianB: median(rounds.map((r) => r.b)),
  medianRatio: median(rounds.map((r) => r.ratio)),
  rounds,
};
console.log(
  `median A ${summary.medianA.toFixed(2)} tok/s, B ${summary.medianB.toFixed(2)} tok/s, median of B / A ${
    summary.medianRatio.toFixed(3)
  } (${rounds.length} rounds)`,
);
await Deno.writeTextFile(v.out!, JSON.stringify(summary, null, 2) + "\n");

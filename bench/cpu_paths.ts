// Tokens/s of every CPU kernel path (KVFOLD_CPU) and weight dtype on the `small` preset (134M):
// decode 64 tokens, prefill 128 and 512, at 2 threads, with the machine's load beside each row.
//
//   deno run -A bench/cpu_paths.ts [--paths amx,avx512bf16,avx512,avx2] [--dtypes f32,bf16,q8_0,q4_0]
//                                  [--threads 2] [--out bench/results/cpu_paths.json]
//
// KVFOLD_CPU is read once per process, so each path runs in a child process of this script. The
// shared VM's numbers are noisy: each row carries the 1-minute load average and the share of CPU
// time other processes used while it ran (from /proc/stat), and rows above 10% are marked.
import { parseArgs } from "node:util";
import { Kvfold } from "../mod.ts";
import { makeTestModel } from "../testing/mod.ts";
import { measureDecode, measurePrefill } from "../src/throughput.ts";
import { ensureNativeLibrary } from "../src/_native_build.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    paths: { type: "string", default: "amx,avx512bf16,avx512,avx2" },
    dtypes: { type: "string", default: "f32,bf16,q8_0,q4_0" },
    threads: { type: "string", default: "2" },
    out: { type: "string", default: new URL("./results/cpu_paths.json", import.meta.url).pathname },
    child: { type: "boolean", default: false },
    model: { type: "string" },
  },
});

// CPU jiffies: [busy, total] of the whole machine, and this process tree's own.
function cpuBusy(): [number, number] {
  const f = Deno.readTextFileSync("/proc/stat").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
  const idle = f[3] + f[4];
  const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
  return [total - idle, total];
}
function selfJiffies(): number {
  const s = Deno.readTextFileSync("/proc/self/stat").split(") ")[1].split(" ");
  return Number(s[11]) + Number(s[12]); // utime + stime (threads included)
}
const loadavg = () => Number(Deno.readTextFileSync("/proc/loadavg").split(" ")[0]);

type Row = {
  path: string;
  kernels: string;
  dtype: string;
  phase: string;
  tokPerS: number;
  medianTokPerS: number;
  load1: number;
  othersBusy: number;
};

async function child(dir: string, dtypes: string[], threads: number): Promise<Row[]> {
  await using kv = await Kvfold.open({ backend: "cpu", threads });
  const rows: Row[] = [];
  for (const dtype of dtypes) {
    await using model = await kv.loadModel(dir, { dtype: dtype as "f32" });
    const phases: [string, () => Promise<{ tokensPerSecond: number; medianTokensPerSecond: number }>][] = [
      ["decode 64", () => measureDecode(model, { tokens: 64, repeats: 3 })],
      ["prefill 128", () => measurePrefill(model, { tokens: 128, repeats: 5 })],
      ["prefill 512", () => measurePrefill(model, { tokens: 512, repeats: 3 })],
    ];
    for (const [phase, run] of phases) {
      const [b0, t0] = cpuBusy(), s0 = selfJiffies();
      const r = await run();
      const [b1, t1] = cpuBusy(), s1 = selfJiffies();
      // Busy time of everything else, as a share of all CPUs over the measurement.
      const others = Math.max(0, (b1 - b0) - (s1 - s0)) / Math.max(1, t1 - t0);
      rows.push({
        path: Deno.env.get("KVFOLD_CPU") ?? "auto",
        kernels: kv.name,
        dtype,
        phase,
        tokPerS: r.tokensPerSecond,
        medianTokPerS: r.medianTokensPerSecond,
        load1: loadavg(),
        othersBusy: others,
      });
    }
  }
  return rows;
}

const threads = Number(v.threads);
const dir = v.model ?? new URL("../.kvfold/models/small-f32", import.meta.url).pathname;
if (v.child) {
  console.log(JSON.stringify(await child(dir, v.dtypes!.split(","), threads)));
  Deno.exit(0);
}
try {
  Deno.statSync(`${dir}/model.safetensors`);
} catch {
  console.error(`writing the small preset to ${dir} ...`);
  await makeTestModel(dir, { preset: "small", seed: 1, dtype: "float32" });
}
const lib = await ensureNativeLibrary();
const rows: Row[] = [];
for (const path of v.paths!.split(",")) {
  console.error(`running KVFOLD_CPU=${path} ...`);
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL(import.meta.url).pathname,
      "--child",
      "--model",
      dir,
      "--dtypes",
      v.dtypes!,
      "--threads",
      String(threads),
    ],
    env: { KVFOLD_CPU: path, KVFOLD_LIB: lib },
    stdout: "piped",
    stderr: "inherit",
  }).output();
  if (!out.success) throw new Error(`the KVFOLD_CPU=${path} child failed`);
  rows.push(...JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").at(-1)!));
}
const cpu = (await Deno.readTextFile("/proc/cpuinfo")).match(/model name\s*:\s*(.*)/)?.[1] ?? "unknown";
console.log(
  `\nkvfold CPU kernel paths — small preset (134M), ${threads} threads, ${cpu}, ${navigator.hardwareConcurrency} CPUs`,
);
console.log(
  "tok/s: best of the repeats (median in brackets); load: 1-min load average; others: CPU share other",
);
console.log("processes used during the row (* above 10%: a disturbed row, compare with care)\n");
console.log("| path | kernels | dtype | phase | tok/s (median) | load | others |");
console.log("|---|---|---|---|---|---|---|");
for (const r of rows) {
  const k = r.kernels.match(/kernels ([^)]*)/)?.[1] ?? r.kernels;
  console.log(
    `| ${r.path} | ${k} | ${r.dtype} | ${r.phase} | ${r.tokPerS.toFixed(1)} (${
      r.medianTokPerS.toFixed(1)
    }) | ` +
      `${r.load1.toFixed(1)} | ${(100 * r.othersBusy).toFixed(0)}%${r.othersBusy > 0.1 ? " *" : ""} |`,
  );
}
await Deno.mkdir(new URL("./results/", import.meta.url), { recursive: true });
await Deno.writeTextFile(
  v.out!,
  JSON.stringify({ date: new Date().toISOString(), machine: { cpu, threads }, rows }, null, 2) + "\n",
);
console.log(`\nwrote ${v.out}`);

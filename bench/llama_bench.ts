// llama.cpp's own `llama-bench` beside kvfold (issue 19), on the GGUF files `bench/vs_llamacpp.ts` writes.
//
//   deno task bench:llama-bench [--rounds 2] [--shapes small,1.1b] [--dtypes f32,bf16,f16,q8_0,q4_0,q4_k_m]
//       [--threads 2] [--rebuild] [--build-only] [--out bench/results/llama_bench.json]
//
// The llama.cpp source is the one node-llama-cpp@3.22.1 ships as a git bundle
// (bench/llamacpp/node_modules/node-llama-cpp/llama/gitRelease.bundle; install the peer as bench/README.md
// says), cloned and built once under .kvfold/llama.cpp/ with `-DGGML_NATIVE=ON`: this CPU's own kernels,
// where node-llama-cpp's prebuilt binary picks one of a few fixed builds. So it answers whether the peer of
// `vs_llamacpp.ts` undersells llama.cpp on this machine. Each round, per shape and dtype, in alternating
// order: `llama-bench -p 128,512 -n 64 -t T -r 3 -o json` on the GGUF (its tg64 decodes from an empty
// cache, its pp figures are prefills of that many tokens), and kvfold on the same weights (the safetensors
// folder at that dtype; q4_k_m: the GGUF) through `measureDecode` (64 tokens after 16) and `measurePrefill`
// (median of 3). Prints a table of medians over the rounds and writes JSON. Not a test: a measurement.
import { parseArgs } from "node:util";
import { cpus } from "node:os";
import { Kvfold } from "../mod.ts";
import { measureDecode, measurePrefill } from "../src/throughput.ts";
import { median } from "./_stats.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    rounds: { type: "string", default: "2" },
    shapes: { type: "string", default: "small,1.1b" },
    dtypes: { type: "string", default: "f32,bf16,f16,q8_0,q4_0,q4_k_m" },
    threads: { type: "string", default: "2" },
    rebuild: { type: "boolean", default: false },
    "build-only": { type: "boolean", default: false },
    out: { type: "string", default: new URL("./results/llama_bench.json", import.meta.url).pathname },
  },
});
const root = new URL("..", import.meta.url).pathname;
const models = `${root}.kvfold/bench-models`;
const src = `${root}.kvfold/llama.cpp/src`, build = `${root}.kvfold/llama.cpp/build`;
const bundle = `${root}bench/llamacpp/node_modules/node-llama-cpp/llama/gitRelease.bundle`;
const bin = `${build}/bin/llama-bench`;
const threads = Number(v.threads);
const shapes = v.shapes!.split(","), dtypes = v.dtypes!.split(",");
// GCC keeps ISA flags given explicitly over those -march=native implies, whatever their order.
const NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16";

async function run(cmd: string, args: string[], cwd = root): Promise<string> {
  const out = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    const how = out.signal ? `killed by ${out.signal}` : `exit ${out.code}`;
    const err = new TextDecoder().decode(out.stderr).slice(-2000);
    throw new Error(`${cmd} ${args.join(" ")} failed (${how}):\n${err}`);
  }
  return text;
}

const exists = (p: string) => Deno.stat(p).then(() => true, () => false);

/** Clones the bundled llama.cpp source and builds llama-bench once (a few minutes on 2 cores). */
async function ensureLlamaBench(): Promise<string> {
  if (!v.rebuild && await exists(bin)) return bin;
  if (!await exists(bundle)) {
    throw new Error(`no llama.cpp source at ${bundle}: install the peer first (bench/README.md, "The peer")`);
  }
  await Deno.remove(`${root}.kvfold/llama.cpp`, { recursive: true }).catch(() => {});
  console.error(`building llama-bench from ${bundle} ...`);
  const t0 = performance.now();
  await run("git", ["clone", "-q", bundle, src]);
  await run("cmake", [
    "-S",
    src,
    "-B",
    build,
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",
    // Without ggml's AMX matmul: built in, it crashed on q8_0 and q4_0 here (SIGSEGV in
    // ggml_backend_amx_mul_mat under gdb, SIGILL under Deno; node-llama-cpp's prebuilt AMX build runs).
    `-DCMAKE_C_FLAGS=${NO_AMX}`,
    `-DCMAKE_CXX_FLAGS=${NO_AMX}`,
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
  ]);
  await run("cmake", ["--build", build, "--target", "llama-bench", "-j", String(cpus().length)]);
  console.error(`  built in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  return bin;
}

interface LlamaBenchRow {
  n_prompt: number;
  n_gen: number;
  avg_ts: number;
  build_commit?: string;
  cpu_info?: string;
}
type Phase = "decode 64" | "prefill 128" | "prefill 512";
const PHASES: Phase[] = ["decode 64", "prefill 128", "prefill 512"];

async function llamaBench(exe: string, gguf: string): Promise<Record<Phase, number> & { info: string }> {
  const json = await run(exe, [
    "-m",
    gguf,
    "-p",
    "128,512",
    "-n",
    "64",
    "-t",
    String(threads),
    "-r",
    "3",
    "-o",
    "json",
  ]);
  const rows = JSON.parse(json) as LlamaBenchRow[];
  const at = (p: number, g: number) => {
    const r = rows.find((x) => x.n_prompt === p && x.n_gen === g);
    if (!r) throw new Error(`llama-bench printed no row for pp ${p} tg ${g}: ${json.slice(0, 500)}`);
    return r.avg_ts;
  };
  return {
    "decode 64": at(0, 64),
    "prefill 128": at(128, 0),
    "prefill 512": at(512, 0),
    info: `${rows[0]?.cpu_info ?? "?"}, llama.cpp ${rows[0]?.build_commit ?? "?"}, GGML_NATIVE without AMX`,
  };
}

const exe = await ensureLlamaBench();
if (v["build-only"]) Deno.exit(0);
await using kv = await Kvfold.open({ backend: "cpu", threads });
type Sample = {
  shape: string;
  dtype: string;
  phase: Phase;
  engine: "kvfold" | "llama-bench";
  tokPerS: number;
};
const samples: Sample[] = [];
const failures: { shape: string; dtype: string; round: number; why: string }[] = [];
let info = "";
for (let round = 0; round < Number(v.rounds); round++) {
  for (const shape of shapes) {
    for (const dtype of dtypes) {
      const gguf = `${models}/${shape}/gguf/model-${dtype}.gguf`;
      if (!await exists(gguf)) {
        throw new Error(`${gguf} is missing: run deno task bench:vs-llamacpp once first`);
      }
      using model = await (dtype === "q4_k_m"
        ? kv.loadModel(gguf)
        : kv.loadModel(`${models}/${shape}`, { dtype: dtype as "f32" }));
      const ours = async () => {
        await measureDecode(model, { tokens: 8, repeats: 1 }); // page the weights in
        const d = await measureDecode(model, { tokens: 64, repeats: 1 });
        const p128 = await measurePrefill(model, { tokens: 128, repeats: 3 });
        const p512 = await measurePrefill(model, { tokens: 512, repeats: 3 });
        const got = [d, p128, p512].map((r) =>
          r.medianTokensPerSecond
        );
        PHASES.forEach((phase, i) =>
          samples.push({ shape, dtype, phase, engine: "kvfold", tokPerS: got[i] })
        );
      };
      // A llama-bench that fails (the native build crashed on q8_0 in ggml's AMX matmul) is recorded, not fatal.
      const theirs = async () => {
        try {
          const r = await llamaBench(exe, gguf);
          info = r.info;
          for (const phase of PHASES) {
            samples.push({ shape, dtype, phase, engine: "llama-bench", tokPerS: r[phase] });
          }
        } catch (e) {
          const why = (e as Error).message.split("\n")[0].replace(/^.* failed /, "failed ");
          failures.push({ shape, dtype, round, why });
          console.error(`round ${round + 1}: llama-bench on ${shape}/${dtype} ${why}`);
        }
      };
      const order = round % 2 === 0 ? [ours, theirs] : [theirs, ours];
      for (const side of order) await side();
      console.error(`round ${round + 1}: ${shape}/${dtype} done`);
    }
  }
}

const summary = [];
console.log(
  `kvfold (${kv.name}) / llama-bench (${info}), ${threads} threads, medians of ${v.rounds} rounds\n`,
);
console.log("| shape | dtype | phase | kvfold tok/s | llama-bench tok/s | ratio |");
console.log("| --- | --- | --- | --- | --- | --- |");
const f = (x: number) => Number.isNaN(x) ? "failed" : x.toFixed(x < 100 ? 1 : 0);
for (const shape of shapes) {
  for (const dtype of dtypes) {
    for (const phase of PHASES) {
      const of = (e: Sample["engine"]) =>
        median(
          samples.filter((s) => s.shape === shape && s.dtype === dtype && s.phase === phase && s.engine === e)
            .map((s) => s.tokPerS),
        );
      const row = { shape, dtype, phase, kvfold: of("kvfold"), llamaBench: of("llama-bench") };
      const ratio = row.kvfold / row.llamaBench; // NaN where llama-bench failed every round
      summary.push({ ...row, ratio });
      console.log(
        `| ${shape} | ${dtype} | ${phase} | ${f(row.kvfold)} | ${f(row.llamaBench)} | ${
          Number.isNaN(ratio) ? "-" : ratio.toFixed(2)
        } |`,
      );
    }
  }
}
for (const x of failures) console.log(`llama-bench ${x.shape}/${x.dtype}, round ${x.round + 1}: ${x.why}`);
const record = {
  date: new Date().toISOString(),
  engine: kv.name,
  llamaBench: info,
  threads,
  summary,
  failures,
  samples,
};
await Deno.writeTextFile(v.out!, JSON.stringify(record, null, 2) + "\n");
console.error(`wrote ${v.out}`);

// Loading weights read into owned memory (the default) versus memory-mapped (`mmap: true`), `small`
// preset: load time (median of --repeats, each in a fresh process, page cache warm) and the memory
// each way leaves resident, anonymous (owned by the process) versus file-backed (page cache, shared
// and reclaimable). Two files: bf16 held as bf16 (no conversion) and f32 held as bf16 (converted).
//
//   deno run -A bench/model_load.ts [--threads 2] [--repeats 5] [--out bench/results/model_load.json]
import { parseArgs } from "node:util";
import { Kvfold } from "../mod.ts";
import { makeTestModel } from "../testing/mod.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    threads: { type: "string", default: "2" },
    repeats: { type: "string", default: "5" },
    out: { type: "string", default: new URL("./results/model_load.json", import.meta.url).pathname },
    one: { type: "string" },
  },
});
const repeats = Number(v.repeats);
const root = new URL("../.kvfold/models/", import.meta.url).pathname;
const files = { bf16: `${root}small`, f32: `${root}small-f32` }; // small: the demo's model
for (const [dtype, dir] of Object.entries(files)) {
  try {
    Deno.statSync(`${dir}/model.safetensors`);
  } catch {
    console.error(`writing the small preset (${dtype}) to ${dir} ...`);
    await makeTestModel(dir, { preset: "small", seed: 1, dtype: dtype === "f32" ? "float32" : "bfloat16" });
  }
}

// kB of resident anonymous and file-backed memory (Linux /proc/self/status).
function resident(): { anon: number; file: number } {
  const status = Deno.readTextFileSync("/proc/self/status");
  const kb = (key: string) => Number(status.match(new RegExp(`^${key}:\\s+(\\d+)`, "m"))?.[1] ?? NaN);
  return { anon: kb("RssAnon"), file: kb("RssFile") };
}

// One load in a fresh process (so resident memory is this load's alone): prints its numbers.
if (v.one) {
  const [dir, mode] = v.one.split(",");
  await using kv = await Kvfold.open({ backend: "cpu", threads: Number(v.threads) });
  const before = resident();
  const t0 = performance.now();
  await using _model = await kv.loadModel(dir, { dtype: "bf16", mmap: mode === "mmap" });
  const ms = performance.now() - t0;
  const after = resident();
  console.log(
    JSON.stringify({
      ms,
      anonMiB: (after.anon - before.anon) / 1024,
      fileMiB: (after.file - before.file) / 1024,
    }),
  );
  Deno.exit(0);
}

async function loadOnce(dir: string, mode: string) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", import.meta.filename!, "--threads", v.threads, "--one", `${dir},${mode}`],
    stderr: "inherit",
  }).output();
  if (!out.success) throw new Error(`the ${mode} load of ${dir} failed`);
  return JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").at(-1)!);
}

const rows = [];
for (const [file, dir] of Object.entries(files)) {
  const fileMiB = Deno.statSync(`${dir}/model.safetensors`).size / 2 ** 20;
  await loadOnce(dir, "read"); // warm the page cache
  for (const mode of ["read", "mmap"]) {
    const runs = [];
    for (let r = 0; r < repeats; r++) runs.push(await loadOnce(dir, mode));
    runs.sort((a, b) => a.ms - b.ms);
    const median = runs[runs.length >> 1];
    rows.push({
      file,
      fileMiB: Math.round(fileMiB),
      mode,
      loadMs: Math.round(median.ms),
      minMs: Math.round(runs[0].ms),
      residentAnonMiB: Math.round(median.anonMiB),
      residentFileMiB: Math.round(median.fileMiB),
    });
  }
}
console.table(rows);
Deno.writeTextFileSync(v.out, JSON.stringify({ threads: Number(v.threads), repeats, rows }, null, 2) + "\n");

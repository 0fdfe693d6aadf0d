// LoRA serving costs on the CPU, `small` preset (bf16 weights), rank-8 adapters on all seven
// projections, everything measured in one run:
//   - adapter switch latency (session.setAdapter between two resident adapters);
//   - decode tokens/s with an adapter versus the base model;
//   - one batched decode step over 8 sessions with 8 different adapters, versus 8 sessions sharing
//     one adapter, versus the 8 sessions decoded one after another.
//
//   deno run -A bench/lora.ts [--threads 2] [--rank 8] [--steps 32] [--out bench/results/lora.json]
import { parseArgs } from "node:util";
import { type Adapter, Kvfold, type Model, type Session } from "../mod.ts";
import { makeTestAdapter, makeTestModel, TEST_MODEL_PRESETS } from "../testing/mod.ts";
import { measureDecode } from "../src/throughput.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    threads: { type: "string", default: "2" },
    rank: { type: "string", default: "8" },
    steps: { type: "string", default: "32" },
    repeats: { type: "string", default: "5" },
    out: { type: "string", default: new URL("./results/lora.json", import.meta.url).pathname },
  },
});
const rank = Number(v.rank), steps = Number(v.steps), repeats = Number(v.repeats);
const root = new URL("../.kvfold/", import.meta.url).pathname;
const base = `${root}models/small`; // the demo's model: same preset, seed and dtype
try {
  Deno.statSync(`${base}/model.safetensors`);
} catch {
  console.error(`writing the small preset (bf16) to ${base} ...`);
  await makeTestModel(base, { preset: "small", seed: 1, dtype: "bfloat16" });
}
const adapterDirs: string[] = [];
for (let i = 0; i < 8; i++) {
  const dir = `${root}adapters/small-r${rank}-${i}`;
  await makeTestAdapter(dir, { base, seed: 100 + i, rank, std: 0.02 });
  adapterDirs.push(dir);
}

await using kv = await Kvfold.open({ backend: "cpu", threads: Number(v.threads) });
await using model = await kv.loadModel(base);
const adapters: Adapter[] = [];
for (const [i, dir] of adapterDirs.entries()) {
  adapters.push(await model.adapters.load(dir, { name: `a${i}` }));
}
const cpu = (await Deno.readTextFile("/proc/cpuinfo").catch(() => "")).match(/model name\s*:\s*(.*)/)?.[1] ??
  "unknown";

// ---- switch latency ----
let switchUs: number;
{
  using s = model.session({ contextSize: 16 });
  const n = 2000;
  for (let i = 0; i < 100; i++) await s.setAdapter(adapters[i & 1]); // warm-up
  const t0 = performance.now();
  for (let i = 0; i < n; i++) await s.setAdapter(adapters[i & 1]);
  switchUs = ((performance.now() - t0) / n) * 1000;
}

// ---- decode with and without an adapter (interleaved, best of each) ----
const decode = { base: 0, adapter: 0 };
for (let r = 0; r < 3; r++) {
  decode.base = Math.max(
    decode.base,
    (await measureDecode(model, { tokens: 48, repeats: 2, adapter: null })).tokensPerSecond,
  );
  decode.adapter = Math.max(
    decode.adapter,
    (await measureDecode(model, { tokens: 48, repeats: 2, adapter: adapters[0] })).tokensPerSecond,
  );
}

// ---- batched steps ----
const prompt = Array.from({ length: 16 }, (_, i) => 3 + ((i * 7919) % 31000));
const sessions: Session[] = [];
for (let i = 0; i < 8; i++) {
  const s = model.session({ contextSize: prompt.length + steps + 4 });
  await s.prefill(prompt);
  sessions.push(s);
}
async function timeRows(m: Model, mode: "mixed" | "shared" | "sequential"): Promise<number> {
  for (const [i, s] of sessions.entries()) await s.setAdapter(mode === "shared" ? adapters[0] : adapters[i]);
  for (const s of sessions) s.truncate(prompt.length);
  const t0 = performance.now();
  for (let step = 0; step < steps; step++) {
    const token = 3 + step;
    if (mode === "sequential") {
      for (const s of sessions) await s.decode(token);
    } else {
      await m.decodeBatch(sessions.map((session) => ({ session, token })));
    }
  }
  return (sessions.length * steps) / ((performance.now() - t0) / 1000);
}
const rows = { mixed: 0, shared: 0, sequential: 0 };
await timeRows(model, "mixed"); // warm-up
for (let r = 0; r < repeats; r++) {
  for (const mode of ["mixed", "shared", "sequential"] as const) {
    rows[mode] = Math.max(rows[mode], await timeRows(model, mode));
  }
}
sessions.forEach((s) => s.dispose());

const result = {
  machine: cpu,
  engine: kv.name,
  threads: kv.threads,
  preset: TEST_MODEL_PRESETS.small,
  weightDType: model.info.weightDType,
  rank,
  adapterBytes: adapters[0].info.bytes,
  switchMicroseconds: switchUs,
  decodeBaseTokPerS: decode.base,
  decodeAdapterTokPerS: decode.adapter,
  decodeRatio: decode.adapter / decode.base,
  batch8MixedRowsPerS: rows.mixed,
  batch8SharedRowsPerS: rows.shared,
  sequential8RowsPerS: rows.sequential,
  mixedVsShared: rows.mixed / rows.shared,
  mixedVsSequential: rows.mixed / rows.sequential,
};
console.log(
  `\nkvfold LoRA bench — small preset, ${model.info.weightDType} weights, rank ${rank} on all 7 projections`,
);
console.log(`machine: ${cpu}, ${kv.name}, ${kv.threads} threads\n`);
console.log("| measure | value | target |");
console.log("| --- | --- | --- |");
console.log(`| adapter switch (setAdapter) | ${switchUs.toFixed(1)} µs | < 1000 µs |`);
console.log(`| decode, base model | ${decode.base.toFixed(1)} tok/s | |`);
console.log(
  `| decode, with adapter | ${decode.adapter.toFixed(1)} tok/s (${
    result.decodeRatio.toFixed(2)
  }x) | >= 0.9x |`,
);
console.log(`| batch of 8, 8 different adapters | ${rows.mixed.toFixed(1)} rows/s | |`);
console.log(
  `| batch of 8, one shared adapter | ${rows.shared.toFixed(1)} rows/s (mixed ${
    result.mixedVsShared.toFixed(2)
  }x) | mixed >= 0.8x |`,
);
console.log(
  `| 8 sessions one after another | ${rows.sequential.toFixed(1)} rows/s (mixed batch ${
    result.mixedVsSequential.toFixed(2)
  }x) | |`,
);
await Deno.mkdir(new URL(".", `file://${v.out}`).pathname, { recursive: true });
await Deno.writeTextFile(v.out!, JSON.stringify(result, null, 2) + "\n");
console.log(`\nwrote ${v.out}`);

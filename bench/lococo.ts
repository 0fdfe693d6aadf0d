// Bounded KV caches on the CPU, `small` preset (bf16 weights), everything measured in one run:
// prefill tokens/s, peak KV memory and decode tokens/s after the prompt, for prompts of 4k, 16k and
// 64k tokens, with the lococo (M = 512, B = 512, k = 21, r = 0.5, random heads), h2o (M = 512) and
// streaming (4 sinks + 508 window) caches against the full cache (up to 16k: it grows quadratically).
// The lococo rows also give the share of prefill time spent in the fusion itself.
//
//   deno run -A bench/lococo.ts [--threads 2] [--lengths 4096,16384,65536] [--full-max 16384]
//       [--kinds full,lococo,h2o,streaming] [--decode 32] [--out bench/results/lococo.json]
import { parseArgs } from "node:util";
import { type CacheOptions, Kvfold } from "../mod.ts";
import { makeTestLococoHeads } from "../testing/mod.ts";
import { makeTestModel, TEST_MODEL_PRESETS } from "../testing/mod.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    threads: { type: "string", default: "2" },
    lengths: { type: "string", default: "4096,16384,65536" },
    "full-max": { type: "string", default: "16384" },
    kinds: { type: "string", default: "full,lococo,h2o,streaming" },
    decode: { type: "string", default: "32" },
    out: { type: "string", default: new URL("./results/lococo.json", import.meta.url).pathname },
  },
});
const lengths = v.lengths!.split(",").map(Number);
const kinds = v.kinds!.split(",");
const fullMax = Number(v["full-max"]), decodeTokens = Number(v.decode);
const M = 512, B = 512;

const root = new URL("../.kvfold/", import.meta.url).pathname;
const base = `${root}models/small`; // the demo's model: same preset, seed and dtype
try {
  Deno.statSync(`${base}/model.safetensors`);
} catch {
  console.error(`writing the small preset (bf16) to ${base} ...`);
  await makeTestModel(base, { preset: "small", seed: 1, dtype: "bfloat16" });
}
const headsPath = `${root}heads/small-m${M}-b${B}.safetensors`;
await makeTestLococoHeads(headsPath, { base, slots: M, segment: B, kernel: 21, keepRate: 0.5, seed: 7 });

await using kv = await Kvfold.open({ backend: "cpu", threads: Number(v.threads) });
await using model = await kv.loadModel(base);
using heads = model.loadLococoHeads(headsPath);
const cpu = (await Deno.readTextFile("/proc/cpuinfo").catch(() => "")).match(/model name\s*:\s*(.*)/)?.[1] ??
  "unknown";
const { layers, kvHeads, headDim, vocabSize } = model.info;
const slotBytes = layers * kvHeads * headDim * 2 * 4; // one slot of keys and values, every layer, f32

function cacheFor(kind: string): CacheOptions {
  switch (kind) {
    case "lococo":
      return { kind, heads };
    case "h2o":
      return { kind, slots: M, segment: B };
    case "streaming":
      return { kind, sinks: 4, window: M - 4, segment: B };
    default:
      return { kind: "full" };
  }
}

interface Row {
  kind: string;
  tokens: number;
  prefillSeconds: number;
  prefillTokPerS: number;
  peakSlots: number;
  peakKvBytes: number;
  allocatedKvBytes: number;
  compressions: number;
  compressSeconds: number;
  compressShare: number;
  decodeTokPerS: number;
}
const rows: Row[] = [];
const result = () => ({
  machine: cpu,
  engine: kv.name,
  threads: kv.threads,
  preset: TEST_MODEL_PRESETS.small,
  weightDType: model.info.weightDType,
  lococo: { slots: M, segment: B, kernel: heads.info.kernel, keepRate: heads.info.keepRate },
  rows,
});

for (const n of lengths) {
  // Random ids (no structure to exploit), the same for every kind at this length.
  const ids = Array.from({ length: n }, (_, i) => 3 + ((i * 7919 + n) % (vocabSize - 3)));
  for (const kind of kinds) {
    if (kind === "full" && n > fullMax) continue;
    const cache = cacheFor(kind);
    using s = model.session({
      cache,
      contextSize: kind === "full" ? n + decodeTokens + 1 : 0,
      batchSize: B,
    });
    let last = 0;
    const t0 = performance.now();
    await s.prefill(ids, {
      onProgress: (done, total) => {
        if (done - last >= 4096 || done === total) {
          last = done;
          Deno.stderr.writeSync(
            new TextEncoder().encode(
              `\r${kind} ${n}: ${done}/${total} (${((performance.now() - t0) / 1000).toFixed(0)} s)   `,
            ),
          );
        }
      },
    });
    const prefillSeconds = (performance.now() - t0) / 1000;
    const afterPrefill = s.memory();
    const t1 = performance.now();
    for (let i = 0; i < decodeTokens; i++) await s.decode(3 + i);
    const decodeTokPerS = decodeTokens / ((performance.now() - t1) / 1000);
    const m = s.memory();
    rows.push({
      kind,
      tokens: n,
      prefillSeconds,
      prefillTokPerS: n / prefillSeconds,
      peakSlots: afterPrefill.kvSlotsPeak,
      peakKvBytes: afterPrefill.kvSlotsPeak * slotBytes,
      allocatedKvBytes: m.kvBytes,
      compressions: afterPrefill.compressions,
      compressSeconds: afterPrefill.compressMs / 1000,
      compressShare: afterPrefill.compressMs / 1000 / prefillSeconds,
      decodeTokPerS,
    });
    Deno.stderr.writeSync(new TextEncoder().encode(`\r${kind} ${n}: ${prefillSeconds.toFixed(1)} s\n`));
    await Deno.mkdir(new URL(".", `file://${v.out}`).pathname, { recursive: true });
    await Deno.writeTextFile(v.out!, JSON.stringify(result(), null, 2) + "\n"); // after every row: long runs keep what they did
  }
}

const mib = (b: number) => (b / 1048576).toFixed(1);
console.log(
  `\nkvfold bounded-cache bench — small preset, ${model.info.weightDType} weights, M = ${M}, B = ${B}`,
);
console.log(`machine: ${cpu}, ${kv.name}, ${kv.threads} threads\n`);
console.log(
  "| cache | prompt | prefill tok/s | vs full | peak KV slots | peak KV MiB | fusion share | decode tok/s after |",
);
console.log("| --- | --- | --- | --- | --- | --- | --- | --- |");
for (const r of rows) {
  const full = rows.find((f) => f.kind === "full" && f.tokens === r.tokens);
  const vsFull = full && r.kind !== "full" ? `${(r.prefillTokPerS / full.prefillTokPerS).toFixed(2)}x` : "";
  const share = r.kind === "full" ? "" : `${(r.compressShare * 100).toFixed(0)}% (${r.compressions}x)`;
  console.log(
    `| ${r.kind} | ${r.tokens} | ${r.prefillTokPerS.toFixed(1)} | ${vsFull} | ${r.peakSlots} | ${
      mib(r.peakKvBytes)
    } | ` +
      `${share} | ${r.decodeTokPerS.toFixed(1)} |`,
  );
}
console.log(`\nwrote ${v.out}`);

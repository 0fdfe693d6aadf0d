// CPU decode and prefill throughput of the `small` preset (134M params) in f32 and bf16, beside the
// machine's memory read bandwidth measured in the same run.
//
//   deno task bench [--threads 2] [--decode-tokens 64] [--prefill-tokens 128] [--out bench/results/cpu.json]
//
// Decode is memory-bound: its ceiling is bandwidth / bytes of weights read per token. Prefill is
// compute-bound: reported as tok/s and GFLOP/s (2 flops per layer weight per token; the LM head runs
// once per prefill, for the last position).
import { parseArgs } from "node:util";
import { Kvfold } from "../mod.ts";
import { makeTestModel, TEST_MODEL_PRESETS } from "../testing/mod.ts";
import { measureDecode, measurePrefill } from "../src/throughput.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    threads: { type: "string", default: "2" },
    "decode-tokens": { type: "string", default: "64" },
    "prefill-tokens": { type: "string", default: "128" },
    out: { type: "string", default: new URL("./results/cpu.json", import.meta.url).pathname },
    model: { type: "string" },
  },
});
const threads = Number(v.threads);
const dir = v.model ?? new URL("../.kvfold/models/small-f32", import.meta.url).pathname;
if (!v.model) {
  try {
    Deno.statSync(`${dir}/model.safetensors`);
  } catch {
    console.error(`writing the small preset to ${dir} ...`);
    const t0 = performance.now();
    await makeTestModel(dir, { preset: "small", seed: 1, dtype: "float32" });
    console.error(`wrote it in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  }
}

await using kv = await Kvfold.open({ backend: "cpu", threads });
const bandwidth = await kv.measureReadBandwidth({ bytes: 1 << 30, repeats: 5 });
const cpu = (await Deno.readTextFile("/proc/cpuinfo").catch(() => "")).match(/model name\s*:\s*(.*)/)?.[1] ??
  "unknown";

const rows = [];
for (const dtype of ["f32", "bf16"] as const) {
  await using model = await kv.loadModel(dir, { dtype });
  // The VM's bandwidth drifts by ~20% over seconds: probe it right beside each decode measurement.
  const bw = Math.max(await kv.measureReadBandwidth({ bytes: 1 << 30, repeats: 3 }), bandwidth);
  const decode = await measureDecode(model, { tokens: Number(v["decode-tokens"]), repeats: 5 });
  const prefill = await measurePrefill(model, { tokens: Number(v["prefill-tokens"]), repeats: 5 });
  const gb = model.info.weightBytes / 1e9;
  const limit = bw / gb;
  const bytesPerParam = dtype === "f32" ? 4 : 2;
  rows.push({
    dtype,
    weightBytes: model.info.weightBytes,
    bandwidthGBs: bw,
    decodeTokPerS: decode.tokensPerSecond,
    decodeMedianTokPerS: decode.medianTokensPerSecond,
    decodeLimitTokPerS: limit,
    decodeFractionOfLimit: decode.tokensPerSecond / limit,
    prefillTokens: prefill.tokens,
    prefillTokPerS: prefill.tokensPerSecond,
    prefillMedianTokPerS: prefill.medianTokensPerSecond,
    // Every layer matrix runs for every token; the LM head only for the last position.
    prefillGflops:
      (2 * (model.info.weightBytes / bytesPerParam - model.info.vocabSize * model.info.hiddenSize) *
        prefill.tokensPerSecond) / 1e9,
  });
}

const pad = (s: string | number, n: number) => String(s).padStart(n);
console.log(`\nkvfold CPU bench — small preset (${JSON.stringify(TEST_MODEL_PRESETS.small)})`);
console.log(
  `machine: ${cpu}, ${kv.name}, ${kv.threads} threads; read bandwidth ${
    Math.max(...rows.map((r) => r.bandwidthGBs)).toFixed(2)
  } GB/s (best probe of this run; each row's limit uses the best probe up to it)\n`,
);
console.log(
  `| dtype | weight MB/token | decode tok/s | limit tok/s | % of limit | prefill ${
    rows[0].prefillTokens
  } tok/s | prefill GFLOP/s |`,
);
console.log(
  `|-------|-----------------|--------------|-------------|------------|------------------|-----------------|`,
);
for (const r of rows) {
  console.log(
    `| ${r.dtype.padEnd(5)} | ${pad((r.weightBytes / 1e6).toFixed(0), 15)} | ${
      pad(r.decodeTokPerS.toFixed(1), 12)
    } | ` +
      `${pad(r.decodeLimitTokPerS.toFixed(1), 11)} | ${
        pad((100 * r.decodeFractionOfLimit).toFixed(1) + "%", 10)
      } | ` +
      `${pad(r.prefillTokPerS.toFixed(0), 16)} | ${pad(r.prefillGflops.toFixed(1), 15)} |`,
  );
}
const result = {
  date: new Date().toISOString(),
  machine: { cpu, engine: kv.name, threads: kv.threads },
  bandwidthGBs: bandwidth,
  rows,
};
await Deno.mkdir(new URL("./results/", import.meta.url), { recursive: true });
await Deno.writeTextFile(v.out!, JSON.stringify(result, null, 2) + "\n");
console.log(`\nwrote ${v.out}`);

// LLoCO on the CPU: a 16k-token document compressed at 1536 -> 50, then one question answered from
// the compressed prefix versus from the full document prefilled in the same run.
//
//   deno run -A bench/lloco.ts [--tokens 16384] [--threads 2] [--decode 32] [--out bench/results/lloco.json]
//
// The model is the random `small` preset made into an AutoCompressor (embed_summary.weight, 50 rows),
// bf16. Its answers are noise; the positions and timings are what this measures.
import { parseArgs } from "node:util";
import { Compressor, Kvfold, type Model } from "../mod.ts";
import { makeTestModel } from "../testing/mod.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    tokens: { type: "string", default: "16384" },
    threads: { type: "string", default: "2" },
    decode: { type: "string", default: "32" },
    out: { type: "string", default: new URL("./results/lloco.json", import.meta.url).pathname },
  },
});
const N = Number(v.tokens), decodeTokens = Number(v.decode);
const dir = new URL("../.kvfold/models/small-compressor", import.meta.url).pathname;
try {
  Deno.statSync(`${dir}/model.safetensors`);
} catch {
  console.error(`writing the small compressor preset to ${dir} ...`);
  await makeTestModel(dir, { preset: "small", seed: 1, dtype: "bfloat16", summaryLength: 50 });
}

await using kv = await Kvfold.open({ backend: "cpu", threads: Number(v.threads) });
using compressor = await Compressor.load(kv, dir);
const model = compressor.model;
let x = 12345;
const doc = Array.from({ length: N }, () => {
  x = (Math.imul(x, 1103515245) + 12345) >>> 0;
  return 300 + ((x >>> 8) % 20000);
});
const question = model.encodePrompt("What does the report conclude about the harbour?");

// 1. Compress once (the offline step).
const t = performance.now();
const summary = await compressor.compress(doc, {
  segmentLength: 1536,
  onProgress: (d, total) => Deno.stderr.writeSync(new TextEncoder().encode(`\rcompressing ${d}/${total}`)),
});
const compressMs = performance.now() - t;
console.error();

async function answer(m: Model, prefix: Float32Array | null, context: number[] | null) {
  using s = m.session({
    contextSize: (prefix ? prefix.length / m.info.hiddenSize : 0) + (context?.length ?? 0) + question.length +
      decodeTokens + 2,
    batchSize: 512,
  });
  const t0 = performance.now();
  if (prefix) await s.prefillEmbeddings(prefix);
  if (context) {
    await s.prefill(context, {
      onProgress: (d, total) => Deno.stderr.writeSync(new TextEncoder().encode(`\rprefilling ${d}/${total}`)),
    });
  }
  let first = 0;
  for await (
    const _ of s.generate({ prompt: question, maxTokens: decodeTokens, temperature: 0, ignoreEos: true })
  ) {
    if (first === 0) first = performance.now() - t0;
  }
  const st = s.lastStats!;
  return {
    positions: s.position,
    ttftMs: first || st.prefillMs,
    decodeTokPerS: (st.generatedTokens - 1) / (st.decodeMs / 1000),
    kvBytes: s.memory().kvBytes,
  };
}

const compressed = await answer(model, summary.data, null);
const full = await answer(model, null, doc);
console.error();

const rows = [
  { path: "compressed prefix", ...compressed },
  { path: "full document", ...full },
];
console.log(
  `\nkvfold LLoCO bench — small preset as AutoCompressor (bf16), ${kv.name}, ${kv.threads} threads`,
);
console.log(
  `document: ${N} tokens -> ${summary.rows} summary vectors in ${(compressMs / 1000).toFixed(1)} s (${
    (N / (compressMs / 1000)).toFixed(0)
  } tok/s)\n`,
);
console.log("| path | positions | time to first token | decode tok/s |");
console.log("|------|-----------|---------------------|--------------|");
for (const r of rows) {
  console.log(
    `| ${r.path} | ${r.positions} | ${(r.ttftMs / 1000).toFixed(2)} s | ${r.decodeTokPerS.toFixed(1)} |`,
  );
}
const ratios = {
  positions: full.positions / compressed.positions,
  ttft: full.ttftMs / compressed.ttftMs,
  decode: compressed.decodeTokPerS / full.decodeTokPerS,
};
console.log(
  `\nratios (full / compressed): ${ratios.positions.toFixed(1)}x fewer positions, ${
    ratios.ttft.toFixed(1)
  }x faster first token, ` +
    `${
      ratios.decode.toFixed(2)
    }x decode speed. Paper (LLoCO): about 30x fewer tokens, up to 7.6x faster generation.`,
);
const cpu = (await Deno.readTextFile("/proc/cpuinfo").catch(() => "")).match(/model name\s*:\s*(.*)/)?.[1] ??
  "unknown";
await Deno.mkdir(new URL("./results/", import.meta.url), { recursive: true });
await Deno.writeTextFile(
  v.out!,
  JSON.stringify(
    {
      date: new Date().toISOString(),
      machine: { cpu, engine: kv.name, threads: kv.threads },
      documentTokens: N,
      summaryRows: summary.rows,
      compressMs,
      rows,
      ratios,
    },
    null,
    2,
  ) + "\n",
);
console.log(`wrote ${v.out}`);

// Full-parameter and compressor training speed (CPU), on the shapes a from-scratch demo model uses:
//   small: hidden 128, 4 layers, vocab 1024;  medium: hidden 256, 6 layers, vocab 1024;
// each with segments of 256 and 512 tokens:
//   - full: one LM example of `segment` tokens per optimizer step (forward, backward of every
//     tensor, AdamW over all of them);
//   - compressor: one document of 4 segments, 16 summary vectors, backprop window 2, plus a QA pass
//     (16 question and 4 answer tokens) per step.
// Tokens/s counts document (or example) tokens per second of wall time, optimizer step included, at
// the median (and the fastest) of `steps` timed steps.
//
//   deno run -A bench/train_full.ts [--threads 2] [--steps 7] [--out bench/results/train_full.json]
import { parseArgs } from "node:util";
import { Kvfold } from "../mod.ts";
import { ModelTrainer } from "../src/model_train.ts";
import { makeTestModel } from "../testing/mod.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    threads: { type: "string", default: "2" },
    steps: { type: "string", default: "7" },
    out: { type: "string", default: new URL("./results/train_full.json", import.meta.url).pathname },
  },
});
const root = new URL("../.kvfold/", import.meta.url).pathname;
const cpu = (await Deno.readTextFile("/proc/cpuinfo").catch(() => "")).match(/model name\s*:\s*(.*)/)?.[1] ??
  "unknown";
await using kv = await Kvfold.open({ backend: "cpu", threads: Number(v.threads) });
const steps = Number(v.steps);

const SHAPES = {
  small: { hiddenSize: 128, numLayers: 4, numHeads: 4, numKeyValueHeads: 2, intermediateSize: 352 },
  medium: { hiddenSize: 256, numLayers: 6, numHeads: 8, numKeyValueHeads: 4, intermediateSize: 704 },
};
const ids = (n: number, seed: number) =>
  Array.from({ length: n }, (_, i) => 10 + ((i * 7919 + seed * 104729) % 1000));

interface Row {
  shape: string;
  mode: "full" | "compressor";
  segment: number;
  tokensPerStep: number;
  secondsPerStep: number;
  /** At the median step. */
  tokensPerSecond: number;
  /** At the fastest step (the least disturbed by other processes on a shared machine). */
  bestTokensPerSecond: number;
}
const rows: Row[] = [];
for (const [shape, sizes] of Object.entries(SHAPES)) {
  const dir = `${root}models/train-full-${shape}`;
  await makeTestModel(dir, {
    ...sizes,
    vocabSize: 1024,
    maxPositionEmbeddings: 4096,
    tieWordEmbeddings: true,
    initStd: 0.02,
    seed: 5,
  });
  await using model = await kv.loadModel(dir);
  for (const segment of [256, 512]) {
    for (const mode of ["full", "compressor"] as const) {
      using tr = ModelTrainer.create(model, {
        learningRate: 1e-3,
        ...(mode === "compressor" ? { summaryLength: 16, segmentLength: segment, backpropSegments: 2 } : {}),
      });
      const run = async (k: number) => {
        if (mode === "full") {
          const x = ids(segment + 1, k);
          await tr.accumulate({ ids: x.slice(0, -1), labels: x.slice(1) });
        } else {
          await tr.accumulateDocument({
            ids: ids(4 * segment, k),
            question: ids(16, k + 1),
            answer: ids(4, k + 2),
          });
        }
        tr.step();
      };
      await run(0); // warm: scratch buffers grow once
      // The median step: the machine is shared, and a mean would carry other processes' bursts.
      const times: number[] = [];
      for (let k = 1; k <= steps; k++) {
        const t0 = performance.now();
        await run(k);
        times.push((performance.now() - t0) / 1000);
      }
      times.sort((a, b) => a - b);
      const secondsPerStep = times[Math.floor(times.length / 2)];
      const tokensPerStep = mode === "full" ? segment : 4 * segment;
      const r: Row = {
        shape,
        mode,
        segment,
        tokensPerStep,
        secondsPerStep,
        tokensPerSecond: tokensPerStep / secondsPerStep,
        bestTokensPerSecond: tokensPerStep / times[0],
      };
      rows.push(r);
      console.log(
        `${shape.padEnd(7)} ${mode.padEnd(10)} seg ${String(segment).padStart(3)}  ` +
          `${r.secondsPerStep.toFixed(3)} s/step  ${r.tokensPerSecond.toFixed(0)} tok/s ` +
          `(fastest step ${r.bestTokensPerSecond.toFixed(0)})`,
      );
    }
  }
}

console.log(
  "\n| shape | mode | segment | s / step (median) | tokens / s (median) | tokens / s (fastest step) |\n" +
    "| --- | --- | --- | --- | --- | --- |",
);
for (const r of rows) {
  console.log(
    `| ${r.shape} | ${r.mode} | ${r.segment} | ${r.secondsPerStep.toFixed(3)} | ${
      r.tokensPerSecond.toFixed(0)
    } | ` +
      `${r.bestTokensPerSecond.toFixed(0)} |`,
  );
}
await Deno.mkdir(new URL("./results/", import.meta.url).pathname, { recursive: true });
await Deno.writeTextFile(
  v.out!,
  JSON.stringify(
    { date: new Date().toISOString(), cpu, threads: Number(v.threads), steps, shapes: SHAPES, rows },
    null,
    2,
  ) + "\n",
);
console.log(`wrote ${v.out}`);

// Compressor training with several question/answer pairs per document (CPU): what a second to
// fourth pair costs over one compression of the document. Shape "small" of bench/train_full.ts
// (hidden 128, 4 layers, vocab 1024); a document of 4 segments of 256 tokens, 16 summary vectors,
// backprop window 2; each pair 16 question and 4 answer tokens. Per optimizer step (step included):
//   - 1 pair: one document, one pair (the old accumulateDocument);
//   - 2 and 4 pairs: one document, two or four pairs.
// Tokens/s counts document tokens, pairs/s QA supervisions, at the median (and fastest) step; the
// machine's 1-minute load average is recorded before and after. On a shared machine wall time
// carries other processes' bursts, so the median CPU seconds of the process per step (all threads)
// are recorded too: the work itself, nearly independent of the load.
//
//   deno run -A bench/train_pairs.ts [--threads 2] [--steps 7] [--out bench/results/train_pairs.json]
import { parseArgs } from "node:util";
import process from "node:process";
import { Kvfold } from "../mod.ts";
import { ModelTrainer } from "../src/model_train.ts";
import { makeTestModel } from "../testing/mod.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    threads: { type: "string", default: "2" },
    steps: { type: "string", default: "7" },
    out: { type: "string", default: new URL("./results/train_pairs.json", import.meta.url).pathname },
  },
});
const root = new URL("../.kvfold/", import.meta.url).pathname;
const cpu = (await Deno.readTextFile("/proc/cpuinfo").catch(() => "")).match(/model name\s*:\s*(.*)/)?.[1] ??
  "unknown";
const load = async () => Number((await Deno.readTextFile("/proc/loadavg").catch(() => "NaN")).split(" ")[0]);
const loadBefore = await load();
await using kv = await Kvfold.open({ backend: "cpu", threads: Number(v.threads) });
const steps = Number(v.steps), segment = 256, docTokens = 4 * segment;
const ids = (n: number, seed: number) =>
  Array.from({ length: n }, (_, i) => 10 + ((i * 7919 + seed * 104729) % 1000));

const dir = `${root}models/train-full-small`;
await makeTestModel(dir, {
  hiddenSize: 128,
  numLayers: 4,
  numHeads: 4,
  numKeyValueHeads: 2,
  intermediateSize: 352,
  vocabSize: 1024,
  maxPositionEmbeddings: 4096,
  tieWordEmbeddings: true,
  initStd: 0.02,
  seed: 5,
});
await using model = await kv.loadModel(dir);

interface Row {
  pairs: number;
  secondsPerStep: number;
  /** Document tokens per second at the median step. */
  tokensPerSecond: number;
  /** QA supervisions per second at the median step. */
  pairsPerSecond: number;
  /** Document tokens per second at the fastest step. */
  bestTokensPerSecond: number;
  /** CPU seconds of the process (user + system, all threads) per step, median. */
  cpuSecondsPerStep: number;
}
const rows: Row[] = [];
for (const pairs of [1, 2, 4]) {
  using tr = ModelTrainer.create(model, {
    learningRate: 1e-3,
    summaryLength: 16,
    segmentLength: segment,
    backpropSegments: 2,
  });
  const run = async (k: number) => {
    await tr.accumulateDocument({
      ids: ids(docTokens, k),
      pairs: Array.from(
        { length: pairs },
        (_, j) => ({ question: ids(16, k + 3 * j + 1), answer: ids(4, k + 3 * j + 2) }),
      ),
    });
    tr.step();
  };
  await run(0); // warm: scratch buffers grow once
  const times: number[] = [], cpuTimes: number[] = [];
  for (let k = 1; k <= steps; k++) {
    const t0 = performance.now(), c0 = process.cpuUsage();
    await run(k);
    const c = process.cpuUsage(c0);
    times.push((performance.now() - t0) / 1000);
    cpuTimes.push((c.user + c.system) / 1e6);
  }
  times.sort((a, b) => a - b);
  cpuTimes.sort((a, b) => a - b);
  const s = times[Math.floor(times.length / 2)];
  const r: Row = {
    pairs,
    secondsPerStep: s,
    tokensPerSecond: docTokens / s,
    pairsPerSecond: pairs / s,
    bestTokensPerSecond: docTokens / times[0],
    cpuSecondsPerStep: cpuTimes[Math.floor(cpuTimes.length / 2)],
  };
  rows.push(r);
  console.log(
    `${pairs} pair(s)  ${s.toFixed(3)} s/step  ${r.tokensPerSecond.toFixed(0)} tok/s  ` +
      `${r.pairsPerSecond.toFixed(2)} pairs/s (fastest step ${r.bestTokensPerSecond.toFixed(0)} tok/s), ` +
      `${r.cpuSecondsPerStep.toFixed(3)} CPU s/step`,
  );
}
const loadAfter = await load();
console.log(
  "\n| pairs / document | s / step (median) | document tokens / s | pairs / s | tokens / s (fastest step) | CPU s / step (median) |\n" +
    "| --- | --- | --- | --- | --- | --- |",
);
for (const r of rows) {
  console.log(
    `| ${r.pairs} | ${r.secondsPerStep.toFixed(3)} | ${r.tokensPerSecond.toFixed(0)} | ` +
      `${r.pairsPerSecond.toFixed(2)} | ${r.bestTokensPerSecond.toFixed(0)} | ${
        r.cpuSecondsPerStep.toFixed(3)
      } |`,
  );
}
console.log(`load average ${loadBefore} before, ${loadAfter} after; ${cpu}, ${v.threads} threads`);
await Deno.mkdir(new URL("./results/", import.meta.url).pathname, { recursive: true });
await Deno.writeTextFile(
  v.out!,
  JSON.stringify(
    { date: new Date().toISOString(), cpu, threads: Number(v.threads), steps, loadBefore, loadAfter, rows },
    null,
    2,
  ) +
    "\n",
);
console.log(`wrote ${v.out}`);

// Data-parallel training (CPU): one optimizer step's examples over 1, 2, ... gradient replicas
// (ModelTrainer.accumulateBatch). The demo model's shape from zero (demo/recipe.ts demoConfig: hidden
// 128, 4 layers), and the recipe's late-phase examples: `--batch` whole 512-token store chunks of demo
// documents, each with its questions, reconstruction pair and summary targets (compressorExample).
// Replica counts alternate round by round (order flipped each round); the table gives seconds per
// batch (min / median / max) and the speed-up of each count over 1 replica at the median. The 1-minute
// load average before and after says whether other work shared the machine.
//
//   deno run -A bench/train_replicas.ts [--replicas 1,2] [--batch 16] [--rounds 5] [--threads 2]
//       [--out bench/results/train_replicas.json]
import { parseArgs } from "node:util";
import { cpus } from "node:os";
import { Kvfold } from "../mod.ts";
import { ModelTrainer, type TrainBatchItem } from "../src/model_train.ts";
import { initModelFolder } from "../src/model_train_loop.ts";
import { compressorExample, demoConfig, SEGMENT_TOKENS, SUMMARY_VECTORS } from "../demo/recipe.ts";
import { writeDemoTokenizer } from "../demo/tokenizer.ts";
import { demoDocuments } from "../demo/corpus.ts";
import { chunkRange, documentIds, questionsIn } from "../demo/examples.ts";
import { median } from "./_stats.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    replicas: { type: "string", default: "1,2" },
    batch: { type: "string", default: "16" },
    rounds: { type: "string", default: "5" },
    threads: { type: "string", default: "2" },
    out: { type: "string", default: new URL("./results/train_replicas.json", import.meta.url).pathname },
  },
});
const counts = v.replicas!.split(",").map(Number), batch = Number(v.batch), rounds = Number(v.rounds);
const load = async () => Number((await Deno.readTextFile("/proc/loadavg").catch(() => "NaN")).split(" ")[0]);
const loadBefore = await load();

const dir = await Deno.makeTempDir({ prefix: "kvfold-bench-replicas-" });
try {
  await initModelFolder(dir, demoConfig(), { seed: 1 });
  await writeDemoTokenizer(dir);
  await using kv = await Kvfold.open({ backend: "cpu", threads: Number(v.threads) });
  using model = await kv.loadModel(dir, { dtype: "f32" });
  using trainer = ModelTrainer.create(model, {
    summaryLength: SUMMARY_VECTORS,
    segmentLength: SEGMENT_TOKENS,
    backpropSegments: 2,
    lmWeight: 0.5,
    qaWeight: 1,
  });
  const items: TrainBatchItem[] = [];
  for (const doc of demoDocuments({ seed: 77 })) {
    const ids = documentIds(doc);
    for (let c = 0; c * 512 < ids.length && items.length < batch; c++) {
      const [start, end] = chunkRange(doc, 512, c);
      const questions = questionsIn(doc, start, end);
      if (questions.length > 0) {
        items.push({ document: compressorExample({ ids: ids.slice(start, end), start, questions }) });
      }
    }
    if (items.length >= batch) break;
  }
  await trainer.accumulateBatch(items, { replicas: Math.max(...counts) }); // warm: every replica made
  trainer.setStep(0);
  const seconds = new Map(counts.map((r) => [r, [] as number[]]));
  for (let round = 0; round < rounds; round++) {
    for (const r of round % 2 === 0 ? counts : [...counts].reverse()) {
      const t0 = performance.now();
      await trainer.accumulateBatch(items, { replicas: r });
      seconds.get(r)!.push((performance.now() - t0) / 1000);
      trainer.setStep(0); // drops the gradients: every round starts alike
    }
  }
  const base = median(seconds.get(counts[0])!);
  const rows = counts.map((r) => {
    const s = seconds.get(r)!;
    return {
      replicas: r,
      min: Math.min(...s),
      median: median(s),
      max: Math.max(...s),
      speedup: base / median(s),
    };
  });
  const loadAfter = await load();
  console.log(
    `${items.length} whole demo chunks per batch, ${rounds} rounds, load ${loadBefore} -> ${loadAfter}`,
  );
  console.log("| replicas | s per batch (min / median / max) | speed-up (median) |");
  console.log("| --- | --- | --- |");
  for (const r of rows) {
    console.log(
      `| ${r.replicas} | ${r.min.toFixed(3)} / ${r.median.toFixed(3)} / ${r.max.toFixed(3)} | ${
        r.speedup.toFixed(2)
      }x |`,
    );
  }
  const result = {
    command: ["deno", "run", "-A", "bench/train_replicas.ts", ...Deno.args].join(" "),
    date: new Date().toISOString(),
    machine: { cpu: cpus()[0]?.model ?? "unknown", cores: cpus().length, threads: kv.threads },
    batch: items.length,
    rounds,
    load: { before: loadBefore, after: loadAfter },
    rows,
  };
  await Deno.writeTextFile(v.out!, JSON.stringify(result, null, 2) + "\n");
  console.log(`wrote ${v.out}`);
} finally {
  await Deno.remove(dir, { recursive: true });
}

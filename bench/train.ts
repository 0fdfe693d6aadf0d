// Training in the engine, one run on tiny models (CPU):
//   1. a LoRA finetuned for a synthetic recall task (key-value pairs, then queries): training tokens/s
//      and query accuracy before/after;
//   2. LoCoCo heads calibrated for that finetuned model: held-out perplexity of the queried values
//      through `lococo` (calibrated, and the same heads uncalibrated) versus `h2o` and `streaming` at
//      the same M, and versus `full`;
//   3. LLoCO: QA exact match from compressed contexts (a tiny random AutoCompressor) with and without
//      a LoRA finetuned on [summary vectors | question | answer].
//
//   deno run -A bench/train.ts [--threads 2] [--lora-steps 600] [--heads-steps 150] [--qa-steps 300]
//       [--out bench/results/train.json]
import { parseArgs } from "node:util";
import { type CacheOptions, Compressor, Kvfold, type Model } from "../mod.ts";
import { LococoTrainer } from "../src/lococo_train.ts";
import { makeTestModel } from "../src/test_model.ts";
import { finetuneLora, LoraTrainer, type QaExample } from "../src/train.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    threads: { type: "string", default: "2" },
    "lora-steps": { type: "string", default: "600" },
    "heads-steps": { type: "string", default: "150" },
    "qa-steps": { type: "string", default: "300" },
    out: { type: "string", default: new URL("./results/train.json", import.meta.url).pathname },
  },
});
const root = new URL("../.kvfold/", import.meta.url).pathname;
const cpu = (await Deno.readTextFile("/proc/cpuinfo").catch(() => "")).match(/model name\s*:\s*(.*)/)?.[1] ??
  "unknown";
await using kv = await Kvfold.open({ backend: "cpu", threads: Number(v.threads) });

// ---- the recall task: P (key, value) pairs, then Q queries "key value" whose values are scored ----
const P = 48, Q = 16, KEYS = [10, 200] as const, VALUES = [300, 500] as const;
function recallSequence(seed: number): { ids: number[]; labels: number[] } {
  let a = seed >>> 0;
  const rnd = (lo: number, hi: number) => {
    a = (Math.imul(a, 1664525) + 1013904223) >>> 0;
    return lo + (a % (hi - lo));
  };
  const keys = new Set<number>();
  while (keys.size < P) keys.add(rnd(...KEYS));
  const pairs = [...keys].map((k) => [k, rnd(...VALUES)] as const);
  const ids = [1];
  for (const [k, val] of pairs) ids.push(k, val);
  ids.push(2); // separator
  const labels = ids.map(() => -1);
  for (let q = 0; q < Q; q++) {
    const [k, val] = pairs[rnd(0, P)];
    ids.push(k, val);
    labels.push(val, -1); // the key's row predicts its value
  }
  return { ids, labels };
}
const train = Array.from({ length: 64 }, (_, i) => recallSequence(1000 + i));
const heldOut = Array.from({ length: 24 }, (_, i) => recallSequence(9000 + i));

const recallDir = `${root}models/recall-tiny`;
await makeTestModel(recallDir, {
  preset: "tiny",
  hiddenSize: 128,
  numLayers: 2,
  numHeads: 4,
  numKeyValueHeads: 4,
  intermediateSize: 256,
  maxPositionEmbeddings: 512,
  seed: 41,
});
await using model = await kv.loadModel(recallDir);

/** Per scored row: log-probability of its label and whether it is the argmax, with one cache. */
async function score(
  m: Model,
  seqs: typeof heldOut,
  cache: CacheOptions | undefined,
  adapter: string | null,
) {
  let nll = 0, n = 0, hits = 0;
  for (const s of seqs) {
    using session = m.session({ cache, batchSize: 16, contextSize: cache ? 0 : s.ids.length + 1 });
    await session.setAdapter(adapter);
    const logits = (await session.prefill(s.ids, { logits: "all" }))!;
    const V = m.info.vocabSize;
    s.labels.forEach((y, t) => {
      if (y < 0) return;
      const row = logits.subarray(t * V, (t + 1) * V);
      let mx = -Infinity, arg = 0;
      row.forEach((x, i) => {
        if (x > mx) [mx, arg] = [x, i];
      });
      const lse = Math.log(row.reduce((acc, x) => acc + Math.exp(x - mx), 0)) + mx;
      nll += lse - row[y];
      hits += arg === y ? 1 : 0;
      n++;
    });
  }
  return { perplexity: Math.exp(nll / n), accuracy: hits / n };
}

// ---- 1. LoRA on the recall task ----
const loraSteps = Number(v["lora-steps"]);
const before = await score(model, heldOut, undefined, null);
const lora = LoraTrainer.create(model, {
  rank: 16,
  targets: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
  learningRate: 3e-3,
  warmupSteps: 20,
  totalSteps: loraSteps,
  seed: 7,
});
let t0 = performance.now(), rows = 0;
const loraLoss: number[] = [];
for (let step = 0; step < loraSteps; step++) {
  let loss = 0;
  for (let k = 0; k < 4; k++) {
    const ex = train[(step * 4 + k) % train.length];
    loss += await lora.accumulate(ex);
    rows += ex.ids.length;
  }
  lora.step();
  loraLoss.push(loss / 4);
  if (step % 50 === 0) console.error(`lora step ${step}: loss ${(loss / 4).toFixed(3)}`);
}
const loraTokPerS = rows / ((performance.now() - t0) / 1000);
const adapterDir = `${root}adapters/recall-tiny`;
await lora.saveAdapter(adapterDir);
lora.dispose();
await model.adapters.load(adapterDir, { name: "recall" });
const after = await score(model, heldOut, undefined, "recall");

// ---- 2. LoCoCo heads for the finetuned model, against eviction baselines at the same M ----
const M = 32, B = 16;
const headsSteps = Number(v["heads-steps"]);
const adapter = model.adapters.get("recall")!;
const heads = LococoTrainer.create(model, {
  slots: M,
  segment: B,
  kernel: 5,
  keepRate: 0.5,
  seed: 5,
  adapter,
  learningRate: 5e-3,
  totalSteps: headsSteps,
});
const randomPath = `${root}heads/recall-random.safetensors`,
  calibratedPath = `${root}heads/recall-calibrated.safetensors`;
await Deno.mkdir(`${root}heads`, { recursive: true });
await heads.saveHeads(randomPath);
t0 = performance.now();
rows = 0;
const headsLoss: number[] = [];
for (let step = 0; step < headsSteps; step++) {
  const ex = train[step % train.length];
  headsLoss.push(await heads.accumulate(ex.ids));
  rows += ex.ids.length;
  heads.step();
  if (step % 25 === 0) console.error(`heads step ${step}: loss ${headsLoss.at(-1)!.toFixed(3)}`);
}
const headsTokPerS = rows / ((performance.now() - t0) / 1000);
await heads.saveHeads(calibratedPath);
heads.dispose();
using random = model.loadLococoHeads(randomPath);
using calibrated = model.loadLococoHeads(calibratedPath);
const caches: Record<string, CacheOptions | undefined> = {
  full: undefined,
  "lococo (calibrated)": { kind: "lococo", heads: calibrated },
  "lococo (random heads)": { kind: "lococo", heads: random },
  h2o: { kind: "h2o", slots: M, segment: B },
  streaming: { kind: "streaming", sinks: 4, window: M - 4, segment: B },
};
const perCache: Record<string, { perplexity: number; accuracy: number }> = {};
for (const [name, cache] of Object.entries(caches)) {
  perCache[name] = await score(model, heldOut, cache, "recall");
}

// ---- 3. LLoCO QA from compressed contexts, with and without a finetuned LoRA ----
const compDir = `${root}models/qa-compressor`;
await makeTestModel(compDir, { preset: "tiny", summaryLength: 8, seed: 21, maxPositionEmbeddings: 512 });
const compressor = await Compressor.load(kv, compDir);
const things = [
  "lamp",
  "door",
  "ship",
  "tree",
  "bird",
  "rock",
  "coin",
  "rope",
  "bell",
  "fish",
  "boat",
  "road",
];
const colours = ["red", "blue", "green", "gold", "black", "white"];
const qa = (i: number): QaExample => ({
  document: `the ${things[i % things.length]} is ${colours[(i * 7) % colours.length]} and old. `.repeat(3),
  question: `what colour is the ${things[i % things.length]}?`,
  answer: colours[(i * 7) % colours.length],
});
const qaTrain = Array.from({ length: 12 }, (_, i) => qa(i));
async function exactMatch(examples: QaExample[], adapterName: string | null): Promise<number> {
  let hits = 0;
  for (const e of examples) {
    const vectors = (await compressor.compress(e.document!)).data;
    using session = compressor.model.session({ contextSize: 512 });
    await session.setAdapter(adapterName);
    await session.prefillEmbeddings(vectors);
    let text = "";
    for await (
      const p of session.generate({
        prompt: compressor.model.encodePrompt(e.question),
        maxTokens: 4,
        temperature: 0,
      })
    ) {
      text += p;
    }
    hits += text.trim().startsWith(e.answer) ? 1 : 0;
  }
  return hits / examples.length;
}
const emBefore = await exactMatch(qaTrain, null);
t0 = performance.now();
const qaLoss: number[] = [];
using qaTrainer = await finetuneLora(compressor.model, qaTrain, {
  compressor,
  rank: 16,
  targets: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
  steps: Number(v["qa-steps"]),
  accumulate: 2,
  learningRate: 3e-3,
  warmupSteps: 10,
  seed: 3,
  onProgress: (p) => qaLoss.push(p.loss),
});
const qaSeconds = (performance.now() - t0) / 1000;
await qaTrainer.saveAdapter(`${root}adapters/qa-tiny`);
await compressor.model.adapters.load(`${root}adapters/qa-tiny`, { name: "qa" });
const emAfter = await exactMatch(qaTrain, "qa");

const result = {
  machine: cpu,
  engine: kv.name,
  threads: kv.threads,
  recall: {
    model: "hidden 128, 2 layers, 4 heads, vocab 512 (random base)",
    pairs: P,
    queries: Q,
    loraSteps,
    loraTrainTokPerS: loraTokPerS,
    loraLossFirst: loraLoss[0],
    loraLossLast: loraLoss.at(-1),
    heldOutBefore: before,
    heldOutAfter: after,
  },
  caches: {
    slots: M,
    segment: B,
    headsSteps,
    headsTrainTokPerS: headsTokPerS,
    headsLossFirst: headsLoss[0],
    headsLossLast: headsLoss.at(-1),
    heldOut: perCache,
  },
  llocoQa: {
    examples: qaTrain.length,
    steps: Number(v["qa-steps"]),
    seconds: qaSeconds,
    lossFirst: qaLoss[0],
    lossLast: qaLoss.at(-1),
    exactMatchWithoutLora: emBefore,
    exactMatchWithLora: emAfter,
  },
};
console.log(`\nkvfold training bench — machine: ${cpu}, ${kv.name}, ${kv.threads} threads\n`);
console.log(
  `recall LoRA (rank 16, all projections, ${loraSteps} steps × 4 sequences): ${
    loraTokPerS.toFixed(0)
  } training tok/s, loss ${loraLoss[0].toFixed(3)} → ${loraLoss.at(-1)!.toFixed(3)}`,
);
console.log(
  `held-out queried values: accuracy ${(before.accuracy * 100).toFixed(1)}% → ${
    (after.accuracy * 100).toFixed(1)
  }%, perplexity ${before.perplexity.toFixed(1)} → ${after.perplexity.toFixed(1)}\n`,
);
console.log(
  `heads (M ${M}, B ${B}, k 5, ${headsSteps} steps): ${headsTokPerS.toFixed(0)} calibration tok/s, loss ${
    headsLoss[0].toFixed(3)
  } → ${headsLoss.at(-1)!.toFixed(3)}`,
);
console.log("| cache (finetuned model) | held-out perplexity of queried values | accuracy |");
console.log("| --- | --- | --- |");
for (const [name, r] of Object.entries(perCache)) {
  console.log(`| ${name} | ${r.perplexity.toFixed(2)} | ${(r.accuracy * 100).toFixed(1)}% |`);
}
console.log(
  `\nLLoCO QA (${qaTrain.length} compressed documents, ${v["qa-steps"]} steps, ${
    qaSeconds.toFixed(1)
  } s): exact match ${(emBefore * 100).toFixed(0)}% without the LoRA, ${
    (emAfter * 100).toFixed(0)
  }% with it (training set; loss ${qaLoss[0].toFixed(3)} → ${qaLoss.at(-1)!.toFixed(3)})`,
);
await Deno.mkdir(new URL(".", `file://${v.out}`).pathname, { recursive: true });
await Deno.writeTextFile(v.out!, JSON.stringify(result, null, 2) + "\n");
console.log(`\nwrote ${v.out}`);

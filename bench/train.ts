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
import { makeTestModel } from "../testing/mod.ts";
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

// ---- the recall task: one needle token (16 kinds, from [300, 316)) hidden among fillers (from
// [10, 200)); after a separator, the model must name the needle. Only attention back to it can
// answer; with 16 kinds a rank-16 LoRA can learn to tell needles from fillers (206 random embeddings
// in 128 dimensions are linearly separable; 390 were not, and an earlier run with 200 kinds learnt nothing).
const N = 128;
function recallSequence(seed: number): { ids: number[]; labels: number[] } {
  let a = seed >>> 0;
  const rnd = (lo: number, hi: number) => {
    a = (Math.imul(a, 1664525) + 1013904223) >>> 0;
    return lo + ((a >>> 8) % (hi - lo));
  };
  const needle = rnd(300, 316), at = rnd(1, N - 32);
  const ids = [1];
  for (let i = 1; i < N - 1; i++) ids.push(i === at ? needle : rnd(10, 200));
  ids.push(2); // separator: its row predicts the needle
  const labels = ids.map(() => -1);
  labels[ids.length - 1] = needle;
  return { ids, labels };
}
// Training draws a fresh random sequence every time (nothing to memorise: only reading the needle in
// context helps); held-out sequences come from other seeds.
const trainSequence = (i: number) => recallSequence(1000 + i);
const heldOut = Array.from({ length: 200 }, (_, i) => recallSequence(900000 + i));

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
    using session = m.session({ cache, batchSize: 16, contextSize: cache ? undefined : s.ids.length + 1 });
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
  learningRate: 5e-3,
  warmupSteps: 20,
  totalSteps: loraSteps,
  seed: 7,
});
let t0 = performance.now(), rows = 0;
const loraLoss: number[] = [];
for (let step = 0; step < loraSteps; step++) {
  let loss = 0;
  for (let k = 0; k < 4; k++) {
    const ex = trainSequence(step * 4 + k);
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
  const ex = trainSequence(500000 + step);
  headsLoss.push(await heads.accumulate(ex.ids));
  rows += ex.ids.length;
  heads.step();
  if (step % 25 === 0) console.error(`heads step ${step}: loss ${headsLoss.at(-1)!.toFixed(3)}`);
}
const headsTokPerS = rows / ((performance.now() - t0) / 1000);
// Every sequence is fresh and its fillers are noise, so single losses scatter: compare means of 50.
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const headsFirst = mean(headsLoss.slice(0, 50)), headsLast = mean(headsLoss.slice(-50));
const loraFirst = mean(loraLoss.slice(0, 50)), loraLast = mean(loraLoss.slice(-50));
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
// The question does not name the answer: only the compressed document holds it.
const qa = (i: number): QaExample => {
  const colour = colours[(i * 7 + Math.floor(i / 5)) % colours.length];
  return {
    document: `the ${things[i % things.length]} is ${colour} and old. `.repeat(3),
    question: "what colour is it?",
    answer: colour,
  };
};
const qaTrain = Array.from({ length: 24 }, (_, i) => qa(i));
const qaHeldOut = Array.from({ length: 12 }, (_, i) => qa(100 + i));
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
const emBefore = await exactMatch(qaTrain, null), emHeldBefore = await exactMatch(qaHeldOut, null);
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
const emAfter = await exactMatch(qaTrain, "qa"), emHeldAfter = await exactMatch(qaHeldOut, "qa");

const result = {
  machine: cpu,
  engine: kv.name,
  threads: kv.threads,
  recall: {
    model: "hidden 128, 2 layers, 4 heads, vocab 512 (random base)",
    task: `one needle in ${N} tokens, named after a separator`,
    loraSteps,
    loraTrainTokPerS: loraTokPerS,
    loraLossFirst50: loraFirst,
    loraLossLast50: loraLast,
    heldOutBefore: before,
    heldOutAfter: after,
  },
  caches: {
    slots: M,
    segment: B,
    headsSteps,
    headsTrainTokPerS: headsTokPerS,
    headsLossFirst50: headsFirst,
    headsLossLast50: headsLast,
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
    heldOutExactMatchWithoutLora: emHeldBefore,
    heldOutExactMatchWithLora: emHeldAfter,
  },
};
console.log(`\nkvfold training bench — machine: ${cpu}, ${kv.name}, ${kv.threads} threads\n`);
console.log(
  `recall LoRA (rank 16, all projections, ${loraSteps} steps × 4 sequences): ${
    loraTokPerS.toFixed(0)
  } training tok/s, mean loss of the first / last 50 steps ${loraFirst.toFixed(3)} → ${loraLast.toFixed(3)}`,
);
console.log(
  `held-out needles: accuracy ${(before.accuracy * 100).toFixed(1)}% → ${
    (after.accuracy * 100).toFixed(1)
  }%, perplexity ${before.perplexity.toFixed(1)} → ${after.perplexity.toFixed(1)}\n`,
);
console.log(
  `heads (M ${M}, B ${B}, k 5, ${headsSteps} steps): ${
    headsTokPerS.toFixed(0)
  } calibration tok/s, mean loss ` +
    `of the first / last 50 steps ${headsFirst.toFixed(3)} → ${headsLast.toFixed(3)}`,
);
console.log("| cache (finetuned model) | held-out perplexity of the needle | accuracy |");
console.log("| --- | --- | --- |");
for (const [name, r] of Object.entries(perCache)) {
  console.log(`| ${name} | ${r.perplexity.toFixed(2)} | ${(r.accuracy * 100).toFixed(1)}% |`);
}
console.log(
  `\nLLoCO QA (${qaTrain.length} compressed documents, ${v["qa-steps"]} steps, ${
    qaSeconds.toFixed(1)
  } s, loss ` +
    `${qaLoss[0].toFixed(3)} → ${
      qaLoss.at(-1)!.toFixed(3)
    }): exact match without / with the LoRA: training ` +
    `documents ${(emBefore * 100).toFixed(0)}% / ${(emAfter * 100).toFixed(0)}%, held-out documents ` +
    `${(emHeldBefore * 100).toFixed(0)}% / ${(emHeldAfter * 100).toFixed(0)}%`,
);
await Deno.mkdir(new URL(".", `file://${v.out}`).pathname, { recursive: true });
await Deno.writeTextFile(v.out!, JSON.stringify(result, null, 2) + "\n");
console.log(`\nwrote ${v.out}`);

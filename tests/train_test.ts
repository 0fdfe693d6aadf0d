// LoRA training: every LoRA gradient against central finite differences of the float64 reference
// (through RMSNorm, RoPE, GQA attention, SwiGLU, the head and cross-entropy, with a prefix), AdamW
// against a hand-computed step, loss going down on a fixed task, the saved PEFT folder serving the
// trained weights, and resume after a kill giving the same weights as an uninterrupted run.
import assert from "node:assert/strict";
import { join } from "node:path";
import type { Model } from "../mod.ts";
import { KvfoldError } from "../src/errors.ts";
import { finetuneLora, LoraTrainer, type QaExample, qaExampleRows } from "../src/train.ts";
import { LORA_PROJECTIONS, type LoraProjection } from "../src/adapter.ts";
import { loadReferenceModel, referenceLogits, type ReferenceModel } from "./reference_forward.ts";
import { runCli, someIds, tempDir, testEngine, testModel, uniformValues } from "./_fixtures.ts";

const GQA = { seed: 5, numHeads: 4, numKeyValueHeads: 2 };

/** Mean cross-entropy of the reference forward over the labelled rows. */
function referenceLoss(ref: ReferenceModel, prefix: Float64Array, ids: number[], labels: number[]): number {
  const V = ref.config.vocabSize;
  const logits = referenceLogits(ref, ids, { prefixEmbeddings: prefix });
  let loss = 0, n = 0;
  labels.forEach((y, t) => {
    if (y < 0) return;
    const row = logits.subarray(t * V, (t + 1) * V);
    let mx = -Infinity;
    for (const x of row) mx = Math.max(mx, x);
    let sum = 0;
    for (const x of row) sum += Math.exp(x - mx);
    loss += Math.log(sum) + mx - row[y];
    n++;
  });
  return loss / n;
}

const PARENT = (p: LoraProjection) => ["gate_proj", "up_proj", "down_proj"].includes(p) ? "mlp" : "self_attn";

Deno.test("train: every LoRA gradient equals central finite differences of the float64 reference", async () => {
  const dir = await testModel("train-gqa", GQA);
  const kv = await testEngine();
  using model = await kv.loadModel(dir);
  const ref = await loadReferenceModel(dir);
  const base = new Map([...ref.tensors].map(([k, v]) => [k, Float64Array.from(v)]));
  using tr = LoraTrainer.create(model, { rank: 3, alpha: 6, targets: [...LORA_PROJECTIONS], seed: 9 });
  const s = tr.info.scale;
  // B starts at zero (no gradient reaches A then): give every B random values first.
  let seed = 1;
  for (const [l, p] of tr.pairs()) {
    tr.write(l, p, "B", Float32Array.from(uniformValues(tr.read(l, p, "B").length, seed++, 0.3)));
  }
  const H = model.info.hiddenSize;
  const prefix = Float32Array.from(uniformValues(2 * H, 77, 1)); // two summary-vector rows
  const ids = someIds(9, model.info.vocabSize, 4);
  const labels = ids.map((_, t) => (t >= 4 ? ids[(t + 3) % ids.length] : -1));
  const loss = await tr.accumulate({ prefix, ids, labels });

  // The reference runs merged weights W + s·B·A, with A and B as the trainer holds them.
  const A = new Map<string, Float64Array>(), B = new Map<string, Float64Array>();
  for (const [l, p] of tr.pairs()) {
    A.set(`${l}.${p}`, Float64Array.from(tr.read(l, p, "A")));
    B.set(`${l}.${p}`, Float64Array.from(tr.read(l, p, "B")));
  }
  const merge = (only?: string) => {
    for (const [l, p] of tr.pairs()) {
      if (only !== undefined && only !== `${l}.${p}`) continue;
      const name = `model.layers.${l}.${PARENT(p)}.${p}.weight`;
      const W0 = base.get(name)!, W = ref.tensors.get(name)!;
      const a = A.get(`${l}.${p}`)!, b = B.get(`${l}.${p}`)!;
      const [r, inDim] = tr.shapeOf(p, "A"), out = W0.length / inDim;
      for (let o = 0; o < out; o++) {
        for (let i = 0; i < inDim; i++) {
          let acc = 0;
          for (let j = 0; j < r; j++) acc += b[o * r + j] * a[j * inDim + i];
          W[o * inDim + i] = W0[o * inDim + i] + s * acc;
        }
      }
    }
  };
  const lossAt = (changed?: string) => {
    merge(changed);
    return referenceLoss(ref, Float64Array.from(prefix), ids, labels);
  };
  merge();
  assert.ok(Math.abs(lossAt() - loss) < 1e-4 * Math.abs(loss), `loss ${loss} vs reference ${lossAt()}`);

  const eps = 1e-4;
  let checked = 0, worst = 0;
  for (const [l, p] of tr.pairs()) {
    for (const which of ["A", "B"] as const) {
      const grad = tr.read(l, p, which === "A" ? "gradA" : "gradB");
      const theta = (which === "A" ? A : B).get(`${l}.${p}`)!;
      let gmax = 0;
      for (const g of grad) gmax = Math.max(gmax, Math.abs(g));
      // Three entries per tensor: the largest-gradient one and two spread over the tensor.
      const idx = [
        grad.indexOf(grad.reduce((m, g) => (Math.abs(g) > Math.abs(m) ? g : m), 0)),
        1,
        theta.length - 2,
      ];
      for (const i of idx) {
        const keep = theta[i];
        theta[i] = keep + eps;
        const up = lossAt(`${l}.${p}`);
        theta[i] = keep - eps;
        const down = lossAt(`${l}.${p}`);
        theta[i] = keep;
        merge(`${l}.${p}`);
        const fd = (up - down) / (2 * eps);
        const err = Math.abs(grad[i] - fd) / Math.max(gmax, 1e-6);
        worst = Math.max(worst, err);
        assert.ok(err < 2e-3, `layer ${l} ${p} ${which}[${i}]: native ${grad[i]}, finite difference ${fd}`);
        checked++;
      }
      assert.ok(gmax > 1e-5, `layer ${l} ${p} ${which}: the gradient is all zero`);
    }
  }
  assert.equal(checked, 2 * 7 * 2 * 3);
  console.log(`  ${checked} gradient entries, worst relative error ${worst.toExponential(2)}`);
});

Deno.test("train: one AdamW step equals the update computed by hand", async () => {
  const dir = await testModel("train-gqa", GQA);
  const kv = await testEngine();
  using model = await kv.loadModel(dir);
  using tr = LoraTrainer.create(model, {
    rank: 2,
    targets: ["v_proj"],
    learningRate: 0.01,
    weightDecay: 0.1,
    maxGradNorm: 0.05,
    warmupSteps: 2,
    seed: 3,
  });
  tr.write(0, "v_proj", "B", Float32Array.from(uniformValues(tr.read(0, "v_proj", "B").length, 4, 0.2)));
  const ids = someIds(6, model.info.vocabSize, 8);
  const labels = [-1, -1, 7, 9, 11, 13];
  await tr.accumulate({ ids, labels });
  await tr.accumulate({ ids: ids.slice(0, 5), labels: [5, 6, -1, 8, -1] });
  const before = [...tr.pairs()].map((
    [l, p],
  ) => [tr.read(l, p, "A"), tr.read(l, p, "B"), tr.read(l, p, "gradA"), tr.read(l, p, "gradB")]);
  let sq = 0;
  for (const [, , ga, gb] of before) for (const g of [...ga, ...gb]) sq += (g / 2) ** 2;
  const norm = Math.sqrt(sq);
  const step = tr.step();
  assert.equal(step.step, 1);
  assert.equal(step.examples, 2);
  assert.ok(Math.abs(step.gradNorm - norm) < 1e-5 * norm);
  assert.ok(Math.abs(step.learningRate - 0.005) < 1e-9); // warmup: 1/2 of the peak at step 1
  const clip = norm > 0.05 ? 0.05 / (norm + 1e-6) : 1;
  [...tr.pairs()].forEach(([l, p], k) => {
    const [a0, b0, ga, gb] = before[k];
    for (const [w0, g, now] of [[a0, ga, tr.read(l, p, "A")], [b0, gb, tr.read(l, p, "B")]] as const) {
      for (let i = 0; i < w0.length; i++) {
        const gi = (g[i] / 2) * clip;
        const m = 0.1 * gi, v = 0.001 * gi * gi;
        const want = w0[i] - 0.005 * ((m / 0.1) / (Math.sqrt(v / 0.001) + 1e-8) + 0.1 * w0[i]);
        assert.ok(Math.abs(now[i] - want) < 1e-6, `${p}[${i}]: ${now[i]} vs ${want}`);
      }
    }
    assert.ok(tr.read(l, p, "gradA").every((g) => g === 0), "gradients are zeroed after the step");
  });
  assert.throws(() => tr.step(), /no example was accumulated/);
});

/** A fixed recall task: "key i" → "value i", over compressed-vector-free prompts. */
function recallExamples(n: number): QaExample[] {
  const words = ["red", "blue", "green", "gold", "black", "white", "pink", "grey"];
  return Array.from({ length: n }, (_, i) => ({ question: `code ${i}`, answer: words[i % words.length] }));
}

async function mean(model: Model, tr: LoraTrainer, examples: QaExample[]): Promise<number> {
  let sum = 0;
  for (const e of examples) {
    const ex = qaExampleRows(model, undefined, e.question, e.answer);
    // Loss only: accumulate then drop the gradients by resetting the step count.
    sum += await tr.accumulate(ex);
  }
  tr.setStep(tr.stepCount);
  return sum / examples.length;
}

Deno.test("train: loss goes down on a fixed task, and the saved PEFT folder serves the trained weights", async () => {
  const dir = await testModel("train-gqa", GQA);
  const kv = await testEngine();
  using model = await kv.loadModel(dir);
  const examples = recallExamples(6);
  const progress: number[] = [];
  using tr = await finetuneLora(model, examples, {
    rank: 4,
    targets: ["q_proj", "v_proj", "o_proj", "down_proj"],
    learningRate: 2e-2,
    steps: 40,
    accumulate: 2,
    warmupSteps: 3,
    seed: 1,
    onProgress: (p) => progress.push(p.loss),
  });
  assert.equal(progress.length, 40);
  // From about ln(vocab) to well under half of it: the answers' distribution is learned.
  const first = (progress[0] + progress[1]) / 2, last = (progress[38] + progress[39]) / 2;
  assert.ok(last < 0.5 * first, `loss ${first.toFixed(3)} → ${last.toFixed(3)}`);
  const trained = await mean(model, tr, examples);
  assert.ok(trained < 0.5 * first, `held loss ${trained}`);

  const out = join(await tempDir(), "adapter");
  try {
    await tr.saveAdapter(out);
    const cfg = JSON.parse(await Deno.readTextFile(join(out, "adapter_config.json")));
    assert.deepEqual([cfg.peft_type, cfg.r, cfg.lora_alpha], ["LORA", 4, 16]);
    const adapter = await model.adapters.load(out, { name: "recall" });
    // Serving with the adapter gives the loss the trainer measured on the same rows.
    const ex = qaExampleRows(model, undefined, examples[0].question, examples[0].answer);
    using s = model.session({ contextSize: 64 });
    await s.setAdapter(adapter);
    const logits = (await s.prefill(ex.ids, { logits: "all" }))!;
    const V = model.info.vocabSize;
    let loss = 0, n = 0;
    ex.labels.forEach((y, t) => {
      if (y < 0) return;
      const row = logits.subarray(t * V, (t + 1) * V);
      const mx = Math.max(...row);
      loss += Math.log(row.reduce((a, x) => a + Math.exp(x - mx), 0)) + mx - row[y];
      n++;
    });
    const servedLoss = loss / n;
    const trainerLoss = await tr.accumulate(ex);
    tr.setStep(tr.stepCount);
    assert.ok(
      Math.abs(servedLoss - trainerLoss) < 1e-3 * Math.max(1, trainerLoss),
      `${servedLoss} vs ${trainerLoss}`,
    );
  } finally {
    await Deno.remove(join(out, ".."), { recursive: true });
  }
});

Deno.test("train: a run killed mid-way resumes from its checkpoint to the same weights", async () => {
  const dir = await testModel("train-gqa", GQA);
  const kv = await testEngine();
  using model = await kv.loadModel(dir);
  const tmp = await tempDir();
  try {
    const examples = recallExamples(5);
    const opts = {
      rank: 2,
      targets: ["q_proj", "v_proj"] as LoraProjection[],
      learningRate: 1e-2,
      steps: 7,
      accumulate: 2,
      seed: 4,
    };
    using whole = await finetuneLora(model, examples, opts);
    const ckpt = join(tmp, "run.safetensors");
    const ac = new AbortController();
    await assert.rejects(
      finetuneLora(model, examples, {
        ...opts,
        checkpoint: ckpt,
        checkpointEvery: 2,
        signal: ac.signal,
        onProgress: (p) => p.step === 5 && ac.abort(),
      }),
      (e: unknown) => e instanceof KvfoldError && e.code === "ABORTED",
    );
    using resumed = await finetuneLora(model, examples, { ...opts, checkpoint: ckpt, checkpointEvery: 2 });
    assert.equal(resumed.stepCount, 7);
    for (const [l, p] of whole.pairs()) {
      assert.deepEqual(resumed.read(l, p, "A"), whole.read(l, p, "A"));
      assert.deepEqual(resumed.read(l, p, "B"), whole.read(l, p, "B"));
    }
    // A checkpoint of another shape is refused by name.
    await assert.rejects(
      finetuneLora(model, examples, { ...opts, rank: 3, checkpoint: ckpt }),
      /Cannot resume from .*rank 2/,
    );
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("train: bad examples and settings are refused with the reason", async () => {
  const dir = await testModel("train-gqa", GQA);
  const kv = await testEngine();
  using model = await kv.loadModel(dir);
  assert.throws(
    () => LoraTrainer.create(model, { targets: ["w_proj" as LoraProjection] }),
    /w_proj is not one of/,
  );
  assert.throws(() => LoraTrainer.create(model, { rank: 0 }), /rank 0 is outside/);
  using tr = LoraTrainer.create(model, { rank: 2 });
  await assert.rejects(tr.accumulate({ ids: [1, 2], labels: [-1, -1] }), /no labelled position/);
  await assert.rejects(tr.accumulate({ ids: [1, 99999], labels: [5, -1] }), /token id 99999 at index 1/);
  await assert.rejects(tr.accumulate({ ids: [1, 2], labels: [5] }), /2 ids but 1 labels/);
  await assert.rejects(
    tr.accumulate({ prefix: new Float32Array(3), ids: [1], labels: [2] }),
    /not rows of the hidden size/,
  );
  assert.equal(tr.accumulated, 0);
  assert.throws(() => tr.read(0, "gate_proj", "A"), /gate_proj of layer 0 is not trained/);
});

Deno.test("CLI: train lora writes a PEFT folder that ask and generate load", async () => {
  const dir = await testModel("train-gqa", GQA);
  const tmp = await tempDir();
  try {
    const data = join(tmp, "data.jsonl");
    await Deno.writeTextFile(
      data,
      recallExamples(4).map((e) => JSON.stringify(e)).join("\n") + "\n",
    );
    const out = join(tmp, "adapter");
    const r = await runCli(
      "train",
      "lora",
      "--model",
      dir,
      "--data",
      data,
      "--out",
      out,
      "--steps",
      "6",
      "--rank",
      "2",
      "--lr",
      "0.01",
      "--threads",
      "2",
      "--checkpoint",
      join(tmp, "ckpt.safetensors"),
      "--checkpoint-every",
      "3",
    );
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /step 6\/6 .*loss \d/);
    const gen = await runCli(
      "generate",
      "--model",
      dir,
      "--prompt",
      "code 1",
      "--adapter",
      out,
      "--max-tokens",
      "3",
      "--temperature",
      "0",
    );
    assert.equal(gen.code, 0, gen.err);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("CLI: train lora killed with SIGKILL resumes from its checkpoint to the same adapter", async () => {
  const dir = await testModel("train-gqa", GQA);
  const tmp = await tempDir();
  try {
    const data = join(tmp, "data.jsonl");
    await Deno.writeTextFile(data, recallExamples(5).map((e) => JSON.stringify(e)).join("\n") + "\n");
    const args = (out: string, ckpt: string) => [
      "run",
      "-A",
      new URL("../cli/main.ts", import.meta.url).pathname,
      "train",
      "lora",
      "--model",
      dir,
      "--data",
      data,
      "--out",
      out,
      "--steps",
      "300",
      "--rank",
      "2",
      "--lr",
      "0.01",
      "--threads",
      "2",
      "--checkpoint",
      ckpt,
      "--checkpoint-every",
      "5",
    ];
    const whole = await runCli(...args(join(tmp, "whole"), join(tmp, "whole.ckpt")).slice(3));
    assert.equal(whole.code, 0, whole.err);
    // The same run, killed once its first checkpoints exist, then started again.
    const ckpt = join(tmp, "killed.ckpt");
    const child = new Deno.Command(Deno.execPath(), {
      args: args(join(tmp, "killed"), ckpt),
      stderr: "piped",
    }).spawn();
    let seen = "";
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
      seen += chunk;
      if (/step 1[0-9]\//.test(seen)) break;
    }
    child.kill("SIGKILL");
    const status = await child.status;
    assert.notEqual(status.code, 0, "the run finished before it could be killed");
    const resumed = await runCli(...args(join(tmp, "killed"), ckpt).slice(3));
    assert.equal(resumed.code, 0, resumed.err);
    assert.doesNotMatch(resumed.err, /step 1\/300/, "the resumed run started over");
    const a = await Deno.readFile(join(tmp, "whole", "adapter_model.safetensors"));
    const b = await Deno.readFile(join(tmp, "killed", "adapter_model.safetensors"));
    assert.deepEqual(b, a);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("train: documents are compressed by the checkpoint and trained as [vectors | question | answer]", async () => {
  const { Compressor } = await import("../src/compressor.ts");
  const { TEST_COMPRESSOR } = await import("./_fixtures.ts");
  const dir = await testModel("train-compressor", TEST_COMPRESSOR);
  const kv = await testEngine();
  const compressor = await Compressor.load(kv, dir);
  using model = compressor.model;
  const examples = ["the lamp is red", "the door is blue", "the ship is gold"].map((d, i) => ({
    document: `${d} and old. `.repeat(6),
    question: `what is item ${i}?`,
    answer: d.split(" ").at(-1)!,
  }));
  await assert.rejects(finetuneLora(model, examples, { steps: 1 }), /has a document but no compressor/);
  const losses: number[] = [];
  using tr = await finetuneLora(model, examples, {
    compressor,
    rank: 4,
    steps: 30,
    learningRate: 1e-2,
    seed: 2,
    onProgress: (p) => losses.push(p.loss),
  });
  assert.equal(losses.length, 30);
  assert.ok(losses.at(-1)! < 0.5 * losses[0], `loss ${losses[0]} → ${losses.at(-1)}`);
  // The rows of an example: the summary vectors first, then the prompt and answer.
  const vectors = (await compressor.compress(examples[0].document)).data;
  const ex = qaExampleRows(model, vectors, examples[0].question, examples[0].answer);
  assert.equal(ex.prefix!.length, vectors.length);
  assert.equal(ex.ids.length, ex.labels.length);
  assert.ok(ex.labels.filter((y) => y >= 0).length >= 2); // the answer's tokens and EOS
  const trained = await tr.accumulate(ex);
  assert.ok(trained < losses[0]);
});

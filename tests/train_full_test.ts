// Full-parameter and compressor training: gradients of sampled entries of every tensor kind against
// central finite differences of the float64 reference objectives (tests/_reference_train.ts), tied
// and untied heads, biases; the compressor's gradients through one summary hand-off, and its
// stop-gradient rule; AdamW against a hand computation; a tiny model memorising a sequence.
import assert from "node:assert/strict";
import { ModelTrainer } from "../src/model_train.ts";
import { loadReferenceModel, type ReferenceModel } from "./reference_forward.ts";
import {
  checkEntries,
  referenceCompressor,
  type ReferenceDocument,
  referenceLmLoss,
} from "./_reference_train.ts";
import { someIds, testEngine, testModel, uniformValues } from "./_fixtures.ts";

async function checkFullGradients(name: string, options: Parameters<typeof testModel>[1], kinds: RegExp[]) {
  const dir = await testModel(name, options);
  const kv = await testEngine();
  using model = await kv.loadModel(dir);
  const ref = await loadReferenceModel(dir);
  using tr = ModelTrainer.create(model);
  const H = model.info.hiddenSize;
  const prefix = Float32Array.from(uniformValues(2 * H, 77, 1));
  const ids = someIds(9, model.info.vocabSize, 4);
  const labels = ids.map((_, t) => (t >= 3 ? ids[(t + 5) % ids.length] : -1));
  const loss = await tr.accumulate({ prefix, ids, labels });
  const objective = () => referenceLmLoss(ref, Float64Array.from(prefix), ids, labels);
  assert.ok(Math.abs(objective() - loss) < 1e-4 * loss, `loss ${loss} vs reference ${objective()}`);
  // Every tensor kind the model has must be among those checked.
  for (const k of kinds) assert.ok(tr.tensors.some((t) => k.test(t.name)), `no tensor matches ${k}`);
  let worst = 0;
  for (const t of tr.tensors) {
    const theta = ref.tensors.get(t.name)!;
    const grad = tr.read(t.name, "grad");
    // The embedding: also a row of an id in the middle of the example.
    const extra = t.name === "model.embed_tokens.weight" ? [ids[5] * H + 3] : [];
    worst = Math.max(worst, checkEntries(t.name, grad, theta, objective, extra));
  }
  console.log(`  ${tr.tensors.length} tensors, worst relative error ${worst.toExponential(2)}`);
}

Deno.test("train model: every tensor's gradient (untied head, q/k/v/o biases, GQA) equals finite differences", async () => {
  await checkFullGradients(
    "full-untied",
    { seed: 5, numHeads: 4, numKeyValueHeads: 2, attentionBias: true },
    [
      /embed_tokens/,
      /input_layernorm/,
      /post_attention_layernorm/,
      /q_proj\.weight/,
      /k_proj\.weight/,
      /v_proj\.weight/,
      /o_proj\.weight/,
      /q_proj\.bias/,
      /k_proj\.bias/,
      /v_proj\.bias/,
      /o_proj\.bias/,
      /gate_proj/,
      /up_proj/,
      /down_proj/,
      /model\.norm/,
      /lm_head/,
    ],
  );
});

Deno.test("train model: a tied head's gradient (qwen2 biases) reaches the embedding from both ends", async () => {
  await checkFullGradients("full-tied", { seed: 6, modelType: "qwen2", tieWordEmbeddings: true }, [
    /embed_tokens/,
    /q_proj\.bias/,
    /model\.norm/,
  ]);
});

Deno.test("train model: with Mistral's sliding window, gradients still equal finite differences", async () => {
  await checkFullGradients("full-window", { seed: 7, modelType: "mistral", slidingWindow: 4 }, [
    /k_proj\.weight/,
  ]);
});

// The compressor objective's gradient for a trainer and a reference, with embed_summary as a parameter.
async function compressorCase(name: string, backpropSegments: number) {
  const dir = await testModel(name, { seed: 8, numHeads: 4, numKeyValueHeads: 2 });
  const kv = await testEngine();
  const model = await kv.loadModel(dir);
  const ref = await loadReferenceModel(dir);
  const tr = ModelTrainer.create(model, {
    summaryLength: 2,
    segmentLength: 5,
    backpropSegments,
    lmWeight: 0.7,
    qaWeight: 1.3,
    summaryInitStd: 0.5,
    seed: 4,
  });
  const V = model.info.vocabSize;
  const ids = someIds(12, V, 11); // segments of 5, 5 and 2 tokens
  const doc: ReferenceDocument = {
    ids,
    question: someIds(3, V, 12),
    answer: someIds(2, V, 13),
    segmentLength: 5,
    summaryRows: Float64Array.from(tr.read("embed_summary.weight")),
    lmWeight: 0.7,
    qaWeight: 1.3,
  };
  const loss = await tr.accumulateDocument(doc);
  return { model, tr, ref, doc, loss };
}

function checkCompressor(
  tr: ModelTrainer,
  ref: ReferenceModel,
  doc: ReferenceDocument,
  objective: () => number,
): number {
  let worst = checkEntries(
    "embed_summary.weight",
    tr.read("embed_summary.weight", "grad"),
    doc.summaryRows,
    objective,
    [
      1,
      doc.summaryRows.length - 1,
    ],
  );
  for (
    const name of [
      "model.embed_tokens.weight",
      "model.layers.0.input_layernorm.weight",
      "model.layers.0.self_attn.k_proj.weight",
      "model.layers.1.self_attn.v_proj.weight",
      "model.layers.1.mlp.down_proj.weight",
      "model.norm.weight",
      "lm_head.weight",
    ]
  ) {
    worst = Math.max(worst, checkEntries(name, tr.read(name, "grad"), ref.tensors.get(name)!, objective));
  }
  return worst;
}

Deno.test("train compressor: gradients through the summary hand-offs equal finite differences (LM and QA)", async () => {
  // backpropSegments 3 covers the whole document: the native gradient is the exact one.
  const { model, tr, ref, doc, loss } = await compressorCase("compressor-fd", 3);
  using _m = model;
  using _t = tr;
  const r = referenceCompressor(ref, doc);
  assert.ok(Math.abs(r.lm - loss.lm) < 1e-4 * r.lm, `lm loss ${loss.lm} vs reference ${r.lm}`);
  assert.ok(Math.abs(r.qa - loss.qa) < 1e-4 * r.qa, `qa loss ${loss.qa} vs reference ${r.qa}`);
  const worst = checkCompressor(tr, ref, doc, () => referenceCompressor(ref, doc).objective);
  console.log(`  worst relative error ${worst.toExponential(2)}`);
});

Deno.test("train compressor: with a window of 2, the first segment's summaries are constants to the last window", async () => {
  // Windows: [segment 0], [segments 1, 2]. Segment 1's summaries pass gradient to pass 1 (read by
  // pass 2 and the QA pass); segment 0's summaries are constants everywhere, its pass trains on its
  // own LM loss only.
  const { model, tr, ref, doc } = await compressorCase("compressor-window", 2);
  using _m = model;
  using _t = tr;
  const H = model.info.hiddenSize;
  // Summaries of segment 0 at the base parameters: a perturbation must not move them.
  const base = referenceCompressor(ref, doc).summaries;
  const objective = () => referenceCompressor(ref, { ...doc, frozen: base.subarray(0, 2 * H) }).objective;
  const exact = () => referenceCompressor(ref, doc).objective;
  const worst = checkCompressor(tr, ref, doc, objective);
  console.log(`  worst relative error ${worst.toExponential(2)}`);
  // And the cut matters: the exact gradient of embed_summary differs from the windowed one.
  const g = tr.read("embed_summary.weight", "grad");
  const i = 1, eps = 1e-4, keep = doc.summaryRows[i];
  doc.summaryRows[i] = keep + eps;
  const up = exact();
  doc.summaryRows[i] = keep - eps;
  const down = exact();
  doc.summaryRows[i] = keep;
  assert.ok(Math.abs((up - down) / (2 * eps) - g[i]) > 1e-4, "the window cut nothing");
});

Deno.test("train model: one AdamW step equals the update computed by hand; norms and biases do not decay", async () => {
  const dir = await testModel("full-adamw", { seed: 5, attentionBias: true });
  const kv = await testEngine();
  using model = await kv.loadModel(dir);
  const o = {
    learningRate: 0.01,
    weightDecay: 0.1,
    maxGradNorm: 0.05,
    warmupSteps: 2,
    betas: [0.8, 0.9] as const,
  };
  using tr = ModelTrainer.create(model, o);
  const ids = someIds(8, model.info.vocabSize, 2);
  const labels = ids.map((_, t) => ids[(t + 1) % ids.length]);
  await tr.accumulate({ ids, labels });
  await tr.accumulate({ ids: ids.slice(2), labels: labels.slice(2) });
  const before = new Map(tr.tensors.map((t) => [t.name, [tr.read(t.name), tr.read(t.name, "grad")]]));
  let sq = 0;
  for (const [, [, g]] of before) for (const x of g) sq += (x / 2) ** 2;
  const norm = Math.sqrt(sq);
  const s = tr.step();
  assert.equal(s.examples, 2);
  assert.ok(Math.abs(s.gradNorm - norm) < 1e-4 * norm);
  const lr = o.learningRate * (1 / 2); // warmup: step 0 of 2
  assert.ok(Math.abs(s.learningRate - lr) < 1e-9);
  const coef = (norm > o.maxGradNorm ? o.maxGradNorm / (norm + 1e-6) : 1) / 2;
  for (
    const name of [
      "model.layers.0.self_attn.q_proj.weight",
      "model.layers.0.self_attn.q_proj.bias",
      "model.norm.weight",
    ]
  ) {
    const [w0, g] = before.get(name)!;
    const w1 = tr.read(name);
    const decay = name.endsWith("proj.weight") ? o.weightDecay : 0;
    for (const i of [0, 7, w0.length - 1]) {
      const gi = g[i] * coef;
      const m = (1 - o.betas[0]) * gi, v = (1 - o.betas[1]) * gi * gi;
      const adam = (m / (1 - o.betas[0])) / (Math.sqrt(v / (1 - o.betas[1])) + 1e-8);
      const want = w0[i] - lr * (adam + decay * w0[i]);
      assert.ok(Math.abs(w1[i] - want) < 1e-6, `${name}[${i}]: ${w1[i]} vs ${want}`);
    }
  }
  assert.equal(tr.accumulated, 0);
  assert.ok(tr.read("model.norm.weight", "grad").every((x) => x === 0), "gradients are zeroed after a step");
});

Deno.test("train model: a tiny model memorises a short sequence", async () => {
  const dir = await testModel("full-overfit", { seed: 9 });
  const kv = await testEngine();
  using model = await kv.loadModel(dir);
  using tr = ModelTrainer.create(model, { learningRate: 1e-2 });
  const ids = someIds(16, model.info.vocabSize, 21);
  const labels = ids.map((_, t) => (t + 1 < ids.length ? ids[t + 1] : -1));
  const first = await tr.accumulate({ ids, labels });
  tr.step();
  let loss = first;
  for (let i = 0; i < 40; i++) {
    loss = await tr.accumulate({ ids, labels });
    tr.step();
  }
  console.log(`  loss ${first.toFixed(3)} -> ${loss.toFixed(3)}`);
  assert.ok(first > 5, `a random model starts near ln(vocab): ${first}`);
  assert.ok(loss < 0.5, `loss after 40 steps: ${loss}`);
});

Deno.test("train model: bad settings, examples and tensor names are refused with the reason", async () => {
  const { rejectsWith, throwsKvfold } = await import("./_kvfold_asserts.ts");
  const dir = await testModel("full-adamw", { seed: 5, attentionBias: true });
  const kv = await testEngine();
  using model = await kv.loadModel(dir);
  throwsKvfold(
    () => ModelTrainer.create(model, { learningRate: -1 }),
    "INVALID_ARGUMENT",
    /optimizer setting/,
  );
  throwsKvfold(
    () => ModelTrainer.create(model, { summaryLength: 2, lmWeight: -1 }),
    "INVALID_ARGUMENT",
    /compressor setting/,
  );
  using tr = ModelTrainer.create(model);
  await rejectsWith(tr.accumulateDocument({ ids: [5, 6] }), "INVALID_ARGUMENT", /summary_length 0/);
  await rejectsWith(
    tr.accumulate({ ids: [5, 6], labels: [-1, -1] }),
    "INVALID_ARGUMENT",
    /no labelled position/,
  );
  await rejectsWith(tr.accumulate({ ids: [5, 9999], labels: [6, 7] }), "INVALID_ARGUMENT", /9999 at index 1/);
  throwsKvfold(() => tr.read("model.layers.9.mlp.up_proj.weight"), "INVALID_ARGUMENT", /has no/);
  const w = tr.read("model.norm.weight");
  w[3] = NaN;
  throwsKvfold(
    () => tr.write("model.norm.weight", w),
    "INVALID_ARGUMENT",
    /value 3 of model.norm.weight is not finite/,
  );
  throwsKvfold(() => tr.step(), "INVALID_STATE", /no example was accumulated/);
});

Deno.test("train model: a 300-row example (attention in many GEMM tiles) still matches the reference", async () => {
  const dir = await testModel("full-long", {
    seed: 12,
    numHeads: 4,
    numKeyValueHeads: 2,
    maxPositionEmbeddings: 512,
  });
  const kv = await testEngine();
  using model = await kv.loadModel(dir);
  const ref = await loadReferenceModel(dir);
  using tr = ModelTrainer.create(model);
  const ids = someIds(300, model.info.vocabSize, 31);
  const labels = ids.map((_, t) => (t % 3 === 0 ? ids[(t * 7 + 1) % ids.length] : -1));
  const loss = await tr.accumulate({ ids, labels });
  const objective = () => referenceLmLoss(ref, new Float64Array(0), ids, labels);
  assert.ok(Math.abs(objective() - loss) < 1e-4 * loss, `loss ${loss} vs reference ${objective()}`);
  for (const name of ["model.layers.0.self_attn.k_proj.weight", "model.layers.1.self_attn.q_proj.weight"]) {
    checkEntries(name, tr.read(name, "grad"), ref.tensors.get(name)!, objective);
  }
});

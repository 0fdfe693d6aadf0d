// `kvfold train model|compressor` and the loops under them: a run from a config (from scratch),
// killed and resumed, ends with the same folder as an uninterrupted run; the saved folder loads, and
// the Compressor's output on it equals the float64 reference compressor's; an aborted run keeps its
// last checkpoint; bad data lines are named by line number.
import assert from "node:assert/strict";
import { join } from "node:path";
import { Compressor } from "../src/compressor.ts";
import { KvfoldError } from "../src/errors.ts";
import { readSafetensorsFile, toFloat32 } from "../src/formats/safetensors.ts";
import { trainCompressor, trainModel } from "../src/model_train_loop.ts";
import { loadReferenceModel } from "./reference_forward.ts";
import { referenceCompressor } from "./_reference_train.ts";
import { relativeError, runCli, tempDir, testEngine, testModel } from "./_fixtures.ts";

const WORDS = ["amber", "basil", "cedar", "delta", "ember", "fjord", "grove", "haven", "iris", "jade"];

/** Documents of a few segments with one fact each, and a question on the fact. */
function documents(n: number) {
  return Array.from({ length: n }, (_, i) => {
    const fact = WORDS[(i * 3) % WORDS.length];
    const filler = Array.from({ length: 12 }, (_, j) => WORDS[(i + j * 7) % WORDS.length]).join(" ");
    return { document: `${filler}. the key is ${fact}. ${filler}.`, question: `key ${i}?`, answer: fact };
  });
}

Deno.test("CLI: train compressor from --init, killed and resumed, equals an uninterrupted run; the folder compresses as the reference", async () => {
  const base = await testModel("full-cli-base", {
    seed: 3,
    hiddenSize: 32,
    numHeads: 2,
    intermediateSize: 64,
  });
  const tmp = await tempDir();
  try {
    const config = JSON.parse(await Deno.readTextFile(join(base, "config.json")));
    await Deno.writeTextFile(join(tmp, "config.json"), JSON.stringify(config));
    const data = join(tmp, "docs.jsonl");
    await Deno.writeTextFile(data, documents(4).map((d) => JSON.stringify(d)).join("\n") + "\n");
    const args = (out: string, ckpt: string) => [
      "train",
      "compressor",
      "--init",
      join(tmp, "config.json"),
      "--tokenizer",
      base,
      "--data",
      data,
      "--out",
      out,
      "--summary-length",
      "3",
      "--segment-length",
      "16",
      "--steps",
      "300",
      "--lr",
      "0.003",
      "--seed",
      "7",
      "--threads",
      "2",
      "--checkpoint",
      ckpt,
      "--checkpoint-every",
      "5",
    ];
    const whole = await runCli(...args(join(tmp, "whole"), join(tmp, "whole.ckpt")));
    assert.equal(whole.code, 0, whole.err);
    const ckpt = join(tmp, "killed.ckpt");
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        new URL("../cli/main.ts", import.meta.url).pathname,
        ...args(join(tmp, "killed"), ckpt),
      ],
      stderr: "piped",
    }).spawn();
    let seen = "";
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
      seen += chunk;
      if (/step 1[0-9]\//.test(seen)) break;
    }
    child.kill("SIGKILL");
    assert.notEqual((await child.status).code, 0, "the run finished before it could be killed");
    const resumed = await runCli(...args(join(tmp, "killed"), ckpt));
    assert.equal(resumed.code, 0, resumed.err);
    assert.doesNotMatch(resumed.err, /step 1\/300/, "the resumed run started over");
    const a = await Deno.readFile(join(tmp, "whole", "model.safetensors"));
    const b = await Deno.readFile(join(tmp, "killed", "model.safetensors"));
    assert.deepEqual(b, a);
    // Training moved the loss.
    const losses = [...whole.err.matchAll(/loss (\d+\.\d+)/g)].map((m) => Number(m[1]));
    const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;
    assert.ok(
      mean(losses.slice(-10)) < mean(losses.slice(0, 10)) - 0.5,
      `losses ${losses.slice(0, 3)} .. ${losses.slice(-3)}`,
    );

    // The folder is a compressor: kvfold's Compressor equals the float64 reference on it.
    const kv = await testEngine();
    using compressor = await Compressor.load(kv, join(tmp, "whole"));
    assert.equal(compressor.summaryLength, 3);
    const text = documents(5)[4].document;
    const ids = compressor.model.tokenizer.encode(text);
    const got = await compressor.compress(text, { segmentLength: 16 });
    const ref = await loadReferenceModel(join(tmp, "whole"));
    const file = await readSafetensorsFile(join(tmp, "whole", "model.safetensors"));
    const want = referenceCompressor(ref, {
      ids,
      question: [],
      answer: [],
      segmentLength: 16,
      summaryRows: Float64Array.from(toFloat32(file.tensors.get("embed_summary.weight")!)),
      lmWeight: 1,
      qaWeight: 0,
    }).summaries;
    assert.equal(got.data.length, want.length);
    const err = relativeError(got.data, want);
    assert.ok(err < 1e-4, `compressor vs reference: relative error ${err}`);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("train compressor: an aborted run rejects with ABORTED and keeps its last checkpoint", async () => {
  const dir = await testModel("full-cli-base", {
    seed: 3,
    hiddenSize: 32,
    numHeads: 2,
    intermediateSize: 64,
  });
  const tmp = await tempDir();
  try {
    const kv = await testEngine();
    using model = await kv.loadModel(dir);
    const ac = new AbortController();
    const ckpt = join(tmp, "run.ckpt");
    const steps: number[] = [];
    await assert.rejects(
      trainCompressor(model, documents(3), {
        summaryLength: 2,
        segmentLength: 16,
        steps: 50,
        checkpoint: ckpt,
        checkpointEvery: 5,
        signal: ac.signal,
        onProgress: (p) => {
          steps.push(p.step);
          if (p.step === 7) ac.abort();
        },
      }),
      (e) => e instanceof KvfoldError && e.code === "ABORTED",
    );
    assert.equal(steps.at(-1), 7);
    const saved = await readSafetensorsFile(ckpt);
    assert.equal(saved.metadata["kvfold.train.step"], "5");
    assert.ok(saved.tensors.has("embed_summary.weight#weight"));
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("CLI: train model from --init on text lines writes a folder that loads; bad lines are named", async () => {
  const base = await testModel("full-cli-base", {
    seed: 3,
    hiddenSize: 32,
    numHeads: 2,
    intermediateSize: 64,
  });
  const tmp = await tempDir();
  try {
    await Deno.copyFile(join(base, "config.json"), join(tmp, "config.json"));
    await Deno.copyFile(join(base, "tokenizer.json"), join(tmp, "tokenizer.json"));
    const data = join(tmp, "text.jsonl");
    await Deno.writeTextFile(data, documents(3).map((d) => JSON.stringify({ text: d.document })).join("\n"));
    const out = join(tmp, "model");
    const r = await runCli(
      "train",
      "model",
      "--init",
      join(tmp, "config.json"),
      "--data",
      data,
      "--out",
      out,
      "--steps",
      "6",
      "--sequence-length",
      "24",
      "--threads",
      "2",
    );
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /step 6\/6/);
    const kv = await testEngine();
    using model = await kv.loadModel(out);
    assert.equal(model.info.hiddenSize, 32);

    const bad = join(tmp, "bad.jsonl");
    await Deno.writeTextFile(bad, '{"text": "fine"}\n\n{"text": 3}\n');
    const b = await runCli("train", "model", "--base", out, "--data", bad, "--out", join(tmp, "x"));
    assert.notEqual(b.code, 0);
    assert.match(b.err, /line 3 needs a non-empty string "text"/);
    await Deno.writeTextFile(bad, '{"document": "d", "question": "q"}\n');
    const c = await runCli(
      "train",
      "compressor",
      "--base",
      out,
      "--data",
      bad,
      "--summary-length",
      "2",
      "--out",
      join(tmp, "x"),
    );
    assert.notEqual(c.code, 0);
    assert.match(c.err, /line 1 needs string "question" and "answer" together/);
    await Deno.writeTextFile(bad, '{"document": "d"}\nnot json\n');
    const d = await runCli(
      "train",
      "compressor",
      "--base",
      out,
      "--data",
      bad,
      "--summary-length",
      "2",
      "--out",
      join(tmp, "x"),
    );
    assert.match(d.err, /line 2 is not JSON/);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("train model: the loop on texts lowers the loss", async () => {
  const dir = await testModel("full-cli-base", {
    seed: 3,
    hiddenSize: 32,
    numHeads: 2,
    intermediateSize: 64,
  });
  const kv = await testEngine();
  using model = await kv.loadModel(dir);
  const losses: number[] = [];
  using trainer = await trainModel(model, documents(2).map((d) => d.document), {
    steps: 30,
    sequenceLength: 32,
    learningRate: 5e-3,
    onProgress: (p) => losses.push(p.loss),
  });
  assert.equal(trainer.stepCount, 30);
  assert.ok(losses.at(-1)! < losses[0] - 1, `losses ${losses[0]} -> ${losses.at(-1)}`);
});

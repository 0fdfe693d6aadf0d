// Several questions per compressor document in the training loop and its JSONL: a `"pairs"` line
// reads as the pairs, bad ones are named by line and pair; trainCompressor on one pair equals the
// question/answer document bit for bit, and more pairs change what it learns.
import assert from "node:assert/strict";
import { join } from "node:path";
import { KvfoldError } from "../src/errors.ts";
import { type CompressorDocument, readTrainingData, trainCompressor } from "../src/model_train_loop.ts";
import { tempDir, testEngine, testModel } from "./_fixtures.ts";

Deno.test("train compressor data: a pairs line reads as its pairs; bad pairs are named", async () => {
  const tmp = await tempDir();
  try {
    const path = join(tmp, "d.jsonl");
    await Deno.writeTextFile(
      path,
      '{"document": "d1", "pairs": [{"question": "q1", "answer": "a1"}, {"question": "", "answer": "a2"}]}\n' +
        '{"document": "d2", "question": "q", "answer": "a"}\n',
    );
    assert.deepEqual(await readTrainingData(path, "compressor"), [
      { document: "d1", pairs: [{ question: "q1", answer: "a1" }, { question: "", answer: "a2" }] },
      { document: "d2", question: "q", answer: "a" },
    ]);
    const refused = async (line: string, message: RegExp) => {
      await Deno.writeTextFile(path, `{"document": "ok"}\n${line}\n`);
      await assert.rejects(
        readTrainingData(path, "compressor"),
        (e) => e instanceof KvfoldError && e.code === "FORMAT" && message.test(e.message),
      );
    };
    await refused('{"document": "d", "pairs": {"question": "q"}}', /line 2 has "pairs" that is not an array/);
    await refused(
      '{"document": "d", "question": "q", "answer": "a", "pairs": []}',
      /line 2 has "pairs" and "question"\/"answer"/,
    );
    await refused(
      '{"document": "d", "pairs": [{"question": "q", "answer": "a"}, {"question": "q"}]}',
      /line 2 pairs\[1\] needs a string "question" and a non-empty string "answer"/,
    );
    await refused('{"document": "d", "pairs": [null]}', /line 2 pairs\[0\] needs/);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("train compressor: one pair trains as the question/answer document; more pairs train differently", async () => {
  const dir = await testModel("full-cli-base", {
    seed: 3,
    hiddenSize: 32,
    numHeads: 2,
    intermediateSize: 64,
  });
  const kv = await testEngine();
  using model = await kv.loadModel(dir);
  const document = "amber basil cedar delta ember fjord grove haven iris jade. the key is cedar.";
  const train = async (docs: CompressorDocument[]) => {
    using tr = await trainCompressor(model, docs, { summaryLength: 2, segmentLength: 16, steps: 3, seed: 1 });
    return tr.read("embed_summary.weight");
  };
  const bits = (x: Float32Array) => Array.from(new Uint32Array(x.buffer));
  const old = await train([{ document, question: "key?", answer: "cedar" }]);
  const one = await train([{ document, pairs: [{ question: "key?", answer: "cedar" }] }]);
  assert.deepEqual(bits(one), bits(old));
  const three = await train([{
    document,
    pairs: [
      { question: "key?", answer: "cedar" },
      { question: "first?", answer: "amber" },
      { question: "last?", answer: "jade" },
    ],
  }]);
  assert.ok(three.every(Number.isFinite));
  assert.notDeepEqual(bits(three), bits(old));
});

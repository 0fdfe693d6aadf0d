// Model loading through the public API: info, progress, cancellation, tokenizer.
import assert from "node:assert/strict";
import { KvfoldError } from "../mod.ts";
import { testEngine, testModel } from "./_fixtures.ts";

Deno.test("model: info reflects config.json and the tensors", async () => {
  const dir = await testModel("mha-tied", { numKeyValueHeads: 4, tieWordEmbeddings: true, seed: 2 });
  const kv = await testEngine();
  using model = await kv.loadModel(dir);
  const cfg = JSON.parse(Deno.readTextFileSync(`${dir}/config.json`));
  assert.equal(model.info.vocabSize, cfg.vocab_size);
  assert.equal(model.info.hiddenSize, cfg.hidden_size);
  assert.equal(model.info.layers, cfg.num_hidden_layers);
  assert.equal(model.info.kvHeads, 4);
  assert.equal(model.info.headDim, cfg.hidden_size / cfg.num_attention_heads);
  assert.equal(model.info.tiedEmbeddings, true);
  assert.equal(model.info.weightDType, "f32");
  const H = cfg.hidden_size, I = cfg.intermediate_size, L = cfg.num_hidden_layers, V = cfg.vocab_size;
  // Parameters: embedding + per layer (4 attention matrices, 3 MLP, 2 norms) + final norm (tied head).
  assert.equal(model.info.params, V * H + L * (4 * H * H + 3 * H * I + 2 * H) + H);
  // Bytes per decoded token: every matrix but the embedding table, plus the (tied) head once.
  assert.equal(model.info.weightBytes, 4 * (L * (4 * H * H + 3 * H * I) + V * H));
});

Deno.test("model: load progress reaches the total; a throwing callback cancels with its own error", async () => {
  const dir = await testModel("gqa", { seed: 11 });
  const kv = await testEngine();
  const seen: [number, number][] = [];
  using model = await kv.loadModel(dir, { onProgress: (d, t) => seen.push([d, t]) });
  assert.ok(seen.length > 0);
  const [done, total] = seen[seen.length - 1];
  assert.equal(done, total);
  const fileBytes = Deno.statSync(`${dir}/model.safetensors`).size;
  assert.ok(total > 0.95 * fileBytes && total < fileBytes, `${total} of ${fileBytes}`);
  for (let i = 1; i < seen.length; i++) assert.ok(seen[i][0] >= seen[i - 1][0]);
  model.dispose();

  const boom = new Error("progress UI crashed");
  await assert.rejects(() =>
    kv.loadModel(dir, {
      onProgress: () => {
        throw boom;
      },
    }), (e: unknown) => e === boom);
});

Deno.test("model: an aborted signal cancels loading", async () => {
  const dir = await testModel("gqa", { seed: 11 });
  const kv = await testEngine();
  const ac = new AbortController();
  ac.abort(new Error("not needed any more"));
  await assert.rejects(
    () => kv.loadModel(dir, { signal: ac.signal }),
    (e: unknown) =>
      e instanceof KvfoldError && e.code === "ABORTED" &&
      (e.cause as Error).message === "not needed any more",
  );
});

Deno.test("model: the tokenizer round-trips text and knows BOS/EOS", async () => {
  const kv = await testEngine();
  using model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  const text = "Long documents, compressed: 30× fewer positions — 長い文書 🙂";
  assert.equal(model.tokenizer.decode(model.tokenizer.encode(text)), text);
  assert.equal(model.tokenizer.bosTokenId, 1);
  assert.ok(model.eosTokenIds.includes(2));
  const ids = model.encodePrompt("hi");
  assert.equal(ids[0], 1);
});

// Generation through the public API: sampling, stop conditions, abort, streaming text.
import assert from "node:assert/strict";
import { KvfoldError, sampleFromLogits } from "../mod.ts";
import { someIds, tempDir, testEngine, testModel, WIDE_MODEL } from "./_fixtures.ts";

async function collect(it: AsyncIterable<string>): Promise<string> {
  let s = "";
  for await (const p of it) s += p;
  return s;
}

Deno.test("sampling: greedy generation follows the argmax of the logits at every step", async () => {
  const kv = await testEngine();
  using model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  using s = model.session({ contextSize: 64 });
  const prompt = someIds(6, model.info.vocabSize, 1);
  await collect(s.generate({ prompt, maxTokens: 12, temperature: 0, ignoreEos: true }));
  const generated = s.lastStats!.tokens;
  assert.equal(generated.length, 12);
  // Replay: each generated token must be the argmax after the tokens before it.
  using r = model.session({ contextSize: 64 });
  await r.prefill(prompt);
  for (const tok of generated) {
    const l = r.logits();
    let best = 0;
    for (let i = 1; i < l.length; i++) if (l[i] > l[best]) best = i;
    assert.equal(tok, best);
    await r.decode(tok);
  }
});

Deno.test("sampling: a seed reproduces the same tokens; another seed gives others", async () => {
  const kv = await testEngine();
  using model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  const run = async (seed: number) => {
    using s = model.session({ contextSize: 64 });
    await collect(
      s.generate({
        prompt: [1, 40, 41],
        maxTokens: 24,
        temperature: 1.5,
        topK: 0,
        topP: 1,
        seed,
        ignoreEos: true,
      }),
    );
    return s.lastStats!.tokens;
  };
  const a = await run(7), b = await run(7), c = await run(8);
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
});

Deno.test("sampling: frequencies follow softmax(logits / T)", async () => {
  const logits = new Float32Array([2, 1, 0, -1]);
  const T = 0.7;
  const p = Array.from(logits, (x) => Math.exp(x / T));
  const z = p.reduce((a, b) => a + b);
  const counts = [0, 0, 0, 0];
  const N = 4000;
  for (let i = 0; i < N; i++) {
    counts[await sampleFromLogits(logits, { temperature: T, topK: 0, topP: 1, seed: i })]++;
  }
  for (let k = 0; k < 4; k++) {
    const expected = (p[k] / z) * N;
    const sd = Math.sqrt(expected * (1 - p[k] / z));
    assert.ok(
      Math.abs(counts[k] - expected) < 5 * sd + 1,
      `token ${k}: ${counts[k]} vs ${expected.toFixed(0)}`,
    );
  }
});

Deno.test("sampling: top-k, top-p and min-p cut the tail; repetition penalty demotes recent tokens", async () => {
  const logits = new Float32Array([3, 2.9, 0, -1, -2]);
  const seen = new Set<number>();
  for (let i = 0; i < 300; i++) {
    seen.add(await sampleFromLogits(logits, { temperature: 1, topK: 2, topP: 1, seed: i }));
  }
  assert.deepEqual([...seen].sort(), [0, 1]);
  // p(0) ≈ 0.5, p(1) ≈ 0.45: top-p 0.4 keeps only token 0.
  for (let i = 0; i < 100; i++) {
    assert.equal(await sampleFromLogits(logits, { temperature: 1, topK: 0, topP: 0.4, seed: i }), 0);
  }
  // min-p 0.5 drops every token below half of the best probability (tokens 2..4).
  const seenMinP = new Set<number>();
  for (let i = 0; i < 300; i++) {
    seenMinP.add(await sampleFromLogits(logits, { temperature: 1, topK: 0, topP: 1, minP: 0.5, seed: i }));
  }
  assert.deepEqual([...seenMinP].sort(), [0, 1]);
  // Greedy picks 0; with 0 in the history and penalty 2, 3/2 < 2.9 so greedy picks 1.
  assert.equal(await sampleFromLogits(logits, { temperature: 0 }), 0);
  assert.equal(await sampleFromLogits(logits, { temperature: 0, repetitionPenalty: 2, history: [0] }), 1);
  // A token outside the window is not penalised.
  assert.equal(
    await sampleFromLogits(logits, { temperature: 0, repetitionPenalty: 2, repeatLastN: 1, history: [0, 4] }),
    0,
  );
});

Deno.test("sampling: invalid settings are refused with INVALID_ARGUMENT", async () => {
  for (
    const bad of [{ temperature: -1 }, { topP: 0 }, { topP: 1.5 }, { topK: -2 }, { repetitionPenalty: 0 }, {
      minP: 1,
    }]
  ) {
    await assert.rejects(
      () => sampleFromLogits(new Float32Array([1, 2]), bad),
      (e: unknown) =>
        e instanceof KvfoldError && e.code === "INVALID_ARGUMENT" && /cannot create sampler/i.test(e.message),
    );
  }
});

Deno.test("generate: maxTokens, stop tokens and EOS end generation with the right reason", async () => {
  const kv = await testEngine();
  using model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  using s = model.session({ contextSize: 128 });
  await collect(s.generate({ prompt: [1, 50, 51], maxTokens: 5, temperature: 0, ignoreEos: true }));
  assert.equal(s.lastStats!.stopReason, "max-tokens");
  assert.equal(s.lastStats!.generatedTokens, 5);
  const greedy = s.lastStats!.tokens;
  // Stop on the third greedy token: generation ends there.
  s.reset();
  await collect(
    s.generate({
      prompt: [1, 50, 51],
      maxTokens: 20,
      temperature: 0,
      stopTokens: [greedy[2]],
      ignoreEos: true,
    }),
  );
  assert.equal(s.lastStats!.stopReason, "stop-token");
  assert.deepEqual(s.lastStats!.tokens, greedy.slice(0, greedy.indexOf(greedy[2]) + 1));
  // The same token declared as EOS in config.json ends generation as "eos".
  const dir = await tempDir();
  try {
    const src = model.dir;
    for (const f of Deno.readDirSync(src)) Deno.copyFileSync(`${src}/${f.name}`, `${dir}/${f.name}`);
    const cfg = JSON.parse(Deno.readTextFileSync(`${dir}/config.json`));
    cfg.eos_token_id = greedy[2];
    Deno.writeTextFileSync(`${dir}/config.json`, JSON.stringify(cfg));
    using eosModel = await kv.loadModel(dir);
    assert.ok(eosModel.eosTokenIds.includes(greedy[2]));
    using e = eosModel.session({ contextSize: 128 });
    await collect(e.generate({ prompt: [1, 50, 51], maxTokens: 20, temperature: 0 }));
    assert.equal(e.lastStats!.stopReason, "eos");
    assert.deepEqual(e.lastStats!.tokens, greedy.slice(0, greedy.indexOf(greedy[2]) + 1));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  s.reset();
  await collect(s.generate({ prompt: [1, 50, 51], maxTokens: 0 }));
  assert.equal(s.lastStats!.generatedTokens, 0);
});

Deno.test("generate: stop strings cut the text and are not emitted", async () => {
  const kv = await testEngine();
  using model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  using s = model.session({ contextSize: 128 });
  const full = await collect(s.generate({ prompt: "The", maxTokens: 30, temperature: 0, ignoreEos: true }));
  assert.ok(full.length > 6, `greedy text too short to cut: ${JSON.stringify(full)}`);
  const stop = full.slice(4, 6);
  s.reset();
  const cut = await collect(
    s.generate({ prompt: "The", maxTokens: 30, temperature: 0, ignoreEos: true, stop: [stop] }),
  );
  assert.equal(cut, full.slice(0, full.indexOf(stop)));
  assert.equal(s.lastStats!.stopReason, "stop-string");
});

Deno.test("generate: streamed pieces concatenate to the decoded tokens", async () => {
  const kv = await testEngine();
  using model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  using s = model.session({ contextSize: 128 });
  const text = await collect(
    s.generate({ prompt: "Hello", maxTokens: 25, temperature: 1, seed: 3, ignoreEos: true }),
  );
  assert.equal(text, model.tokenizer.decode(s.lastStats!.tokens));
});

Deno.test("generate: abort stops within one decode step and leaves the session usable", async () => {
  const kv = await testEngine();
  using model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  using s = model.session({ contextSize: 128 });
  const ac = new AbortController();
  let pieces = 0;
  await assert.rejects(async () => {
    for await (
      const _ of s.generate({
        prompt: [1, 9, 10],
        maxTokens: 100,
        temperature: 0,
        ignoreEos: true,
        signal: ac.signal,
        streamIntervalMs: 0, // a piece per token, so the abort lands after the third
      })
    ) {
      if (++pieces === 3) ac.abort(new Error("user pressed stop"));
    }
  }, (e: unknown) => e instanceof KvfoldError && e.code === "ABORTED");
  // Abort is seen before the next decode: prompt 3 + at most 3 decoded positions.
  assert.ok(s.position <= 3 + 3, `position ${s.position}`);
  const pos = s.position;
  await s.decode(5);
  assert.equal(s.position, pos + 1);
});

Deno.test("generate: an already-aborted signal cancels a long prefill and keeps the session as it was", async () => {
  const kv = await testEngine();
  using model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  using s = model.session({ contextSize: 256, batchSize: 8 });
  await s.prefill([1, 2, 3]);
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(
    () => s.prefill(someIds(200, model.info.vocabSize), { signal: ac.signal }),
    (e: unknown) => e instanceof KvfoldError && e.code === "ABORTED",
  );
  assert.equal(s.position, 3);
});

Deno.test("generate: abort during a running prefill stops it between chunks", async () => {
  const kv = await testEngine();
  // Big enough that a 2000-token prefill in 1-token chunks takes well over the 100 ms progress tick.
  const dir = await testModel("wide", WIDE_MODEL);
  using model = await kv.loadModel(dir);
  using s = model.session({ contextSize: 2048, batchSize: 1 });
  const ac = new AbortController();
  let sawProgress = 0;
  await assert.rejects(
    () =>
      s.prefill(someIds(2000, model.info.vocabSize), {
        signal: ac.signal,
        onProgress: (done) => {
          sawProgress = done;
          if (done > 0) ac.abort();
        },
      }),
    (e: unknown) => e instanceof KvfoldError && e.code === "ABORTED",
  );
  assert.ok(sawProgress > 0 && sawProgress < 2000, `progress ${sawProgress}`);
  assert.equal(s.position, 0);
});

Deno.test("generate: chat prompts go through the model's chat template", async () => {
  const kv = await testEngine();
  using model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  const text = model.tokenizer.applyChatTemplate([{ role: "user", content: "Hi there" }]);
  assert.ok(text.includes("Hi there"));
  const ids = model.encodePrompt("Hi there", { chat: true });
  assert.equal(
    model.tokenizer.decode(ids, { skipSpecialTokens: false }).replace(/^<s>/, ""),
    text.replace(/^<s>/, ""),
  );
  let out = "";
  for await (const p of model.generate("Hi there", { chat: true, maxTokens: 4, temperature: 0 })) out += p;
  assert.equal(typeof out, "string");
});

Deno.test("generate: two sessions of one model do not disturb each other", async () => {
  const kv = await testEngine();
  using model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  const solo = async (prompt: number[]) => {
    using s = model.session({ contextSize: 64 });
    await collect(s.generate({ prompt, maxTokens: 10, temperature: 0, ignoreEos: true }));
    return s.lastStats!.tokens;
  };
  const a = await solo([1, 100, 101]), b = await solo([1, 200, 201]);
  using sa = model.session({ contextSize: 64 });
  using sb = model.session({ contextSize: 64 });
  const [ra, rb] = await Promise.all([
    collect(sa.generate({ prompt: [1, 100, 101], maxTokens: 10, temperature: 0, ignoreEos: true })).then(() =>
      sa.lastStats!.tokens
    ),
    collect(sb.generate({ prompt: [1, 200, 201], maxTokens: 10, temperature: 0, ignoreEos: true })).then(() =>
      sb.lastStats!.tokens
    ),
  ]);
  assert.deepEqual(ra, a);
  assert.deepEqual(rb, b);
});

Deno.test("generate: a cancelled decode keeps the position and the previous logits", async () => {
  const kv = await testEngine();
  using model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  using s = model.session({ contextSize: 32 });
  await s.prefill([1, 7, 8]);
  const before = s.logits();
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(
    () => s.decode(9, { signal: ac.signal }),
    (e: unknown) => e instanceof KvfoldError && e.code === "ABORTED",
  );
  assert.equal(s.position, 3);
  assert.deepEqual(s.logits(), before);
  await s.decode(9); // and the next decode works from there
  assert.equal(s.position, 4);
  assert.notDeepEqual(s.logits(), before);
});

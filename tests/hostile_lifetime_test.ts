// Handle lifetime under hostile use: sessions, models and engines disposed while calls that use
// them are in flight. Nothing may read freed native memory: every such call ends normally or with a
// DISPOSED KvfoldError (the sanitizer stage, tests/sanitize.sh, runs this file under ASan too).
import assert from "node:assert/strict";
import { DecodeBatcher, Kvfold, KvfoldError, type Model, type Session } from "../mod.ts";
import { testEngine, testModel } from "./_fixtures.ts";

const isDisposed = (e: unknown) => e instanceof KvfoldError && e.code === "DISPOSED";

/** Streams a generation to its end; resolves with how it ended (the error, if any). */
async function drain(it: AsyncIterable<string>): Promise<{ pieces: number; error: unknown }> {
  let pieces = 0;
  try {
    for await (const _ of it) pieces++;
    return { pieces, error: null };
  } catch (error) {
    return { pieces, error };
  }
}

async function greedyTokens(model: Model, n: number): Promise<number[]> {
  using s = model.session({ contextSize: 128 });
  for await (const _ of s.generate({ prompt: [1, 9, 10], maxTokens: n, temperature: 0, ignoreEos: true })) {
    // stream
  }
  return s.lastStats!.tokens;
}

Deno.test("lifetime: a session disposed while its decode runs ends generate() with DISPOSED", async () => {
  const kv = await testEngine();
  using model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  for (const after of [1, 2, 5]) {
    const s = model.session({ contextSize: 128 });
    // One token a step, so that the `after`th step is still a decode of the stream.
    const it = s.generate({
      prompt: [1, 9, 10],
      maxTokens: 50,
      temperature: 0,
      ignoreEos: true,
      streamIntervalMs: 0,
    })
      [Symbol.asyncIterator]();
    for (let i = 0; i < after; i++) assert.equal((await it.next()).done, false);
    // next() runs the generator up to its decode's native call, so the dispose lands mid-decode.
    const step = it.next();
    s.dispose();
    await assert.rejects(step, isDisposed);
    await s[Symbol.asyncDispose]();
  }
  // The model is intact.
  assert.equal((await greedyTokens(model, 4)).length, 4);
});

Deno.test("lifetime: a session disposed during a batched decode step ends generate() with DISPOSED", async () => {
  const kv = await testEngine();
  using model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  const batcher = new DecodeBatcher(model);
  const s = model.session({ contextSize: 128 });
  const it = s.generate({ prompt: [1, 9, 10], maxTokens: 50, temperature: 0, ignoreEos: true, batcher })
    [Symbol.asyncIterator]();
  assert.equal((await it.next()).done, false); // prefilled, first token sampled
  // The batcher starts the step later, from a timer: dispose right after it has started the native
  // call (batched steps are not cancelled, so the step finishes and then the session is freed).
  const handle = s._handle;
  const hold = handle.hold.bind(handle);
  handle.hold = ((call: () => Promise<unknown>, cancel?: () => void) => {
    const running = hold(call, cancel);
    handle.hold = hold;
    s.dispose();
    return running;
  }) as typeof handle.hold;
  await assert.rejects(it.next(), isDisposed);
  await s[Symbol.asyncDispose]();
});

Deno.test("lifetime: sessions disposed by timers mid-generate never sample from freed memory (300 runs)", async () => {
  // The shared reproduction (../shared/fixtures/hostile/dispose_midflight.ts), fewer iterations.
  const kv = await testEngine();
  using model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  const unexpected: string[] = [];
  for (let i = 0; i < 300; i++) {
    const s = model.session({ contextSize: 512 });
    const t = setTimeout(() => s.dispose(), (i % 30) / 2);
    const { error } = await drain(s.generate({ prompt: "hi", maxTokens: 64, seed: i }));
    clearTimeout(t);
    s.dispose();
    if (error !== null && !isDisposed(error)) unexpected.push(`run ${i}: ${error}`);
  }
  assert.deepEqual(unexpected, [], unexpected.slice(0, 5).join("\n"));
});

for (const batched of [false, true]) {
  Deno.test(`lifetime: 8 concurrent generations${batched ? " through a DecodeBatcher" : ""} survive model.dispose()`, async () => {
    const kv = await testEngine();
    const dir = await testModel("gqa", { seed: 11 });
    const reference = await (async () => {
      using m = await kv.loadModel(dir);
      return await greedyTokens(m, 6);
    })();
    const model = await kv.loadModel(dir);
    const batcher = batched ? new DecodeBatcher(model) : undefined;
    const sessions: Session[] = [];
    let started = 0;
    const runs = Array.from({ length: 8 }, async (_, i) => {
      const s = model.session({ contextSize: 256 });
      sessions.push(s);
      let pieces = 0;
      try {
        for await (
          const _ of s.generate({
            prompt: [1, 9, 10 + i],
            maxTokens: 200,
            ignoreEos: true,
            seed: i,
            batcher,
            streamIntervalMs: 0, // every session still streaming when the last one gets going
          })
        ) {
          // The last one to get going disposes the model while the others' steps are in flight.
          if (++pieces === 2 && ++started === 8) model.dispose();
        }
        return null;
      } catch (e) {
        return e;
      }
    });
    const errors = await Promise.all(runs);
    for (const e of errors) assert.ok(isDisposed(e), `unexpected end: ${e}`);
    await model[Symbol.asyncDispose]();
    for (const s of sessions) assert.throws(() => s.position, isDisposed);
    // The engine is intact: a fresh load generates the same tokens as before.
    using again = await kv.loadModel(dir);
    assert.deepEqual(await greedyTokens(again, 6), reference);
  });
}

Deno.test("lifetime: an engine disposed while a model loads refuses the model and frees both", async () => {
  const kv = await Kvfold.open({ backend: "cpu", threads: 1 });
  const dir = await testModel("gqa", { seed: 11 });
  // The last progress report comes after the native load returned, still inside the held call.
  await assert.rejects(
    () => kv.loadModel(dir, { onProgress: (done, total) => done === total && kv.dispose() }),
    isDisposed,
  );
  await kv[Symbol.asyncDispose]();
  await assert.rejects(() => kv.loadModel(dir), isDisposed);
});

// Generation handed over many tokens at a time (kf_session_generate samples and decodes in one
// native loop): the same tokens, text, stop reason, cache and logits as one token a step; abort and
// dispose inside a hand-over; bad arguments to the native call refused by name.
import assert from "node:assert/strict";
import {
  type GenerateOptions,
  type GenerationStats,
  KvfoldError,
  type Model,
  type SessionOptions,
} from "../mod.ts";
import { check, ControlBlock, sym } from "../src/_binding.ts";
import { NativeStruct } from "../src/_abi.ts";
import { createSampler } from "../src/sampler.ts";
import { testEngine, testModel } from "./_fixtures.ts";

const ONE = 0; // streamIntervalMs: every token handed over alone
const ALL = 600_000; // the whole run after the first token in one hand-over

interface Run {
  pieces: string[];
  stats: GenerationStats;
  position: number;
  logits: Float32Array;
}

async function run(model: Model, session: SessionOptions, options: GenerateOptions): Promise<Run> {
  using s = model.session(session);
  const pieces: string[] = [];
  for await (const p of s.generate(options)) pieces.push(p);
  return { pieces, stats: s.lastStats!, position: s.position, logits: s.logits() };
}

// Bit for bit: both decode the same tokens at the same positions, and a rewind decodes its token at
// its position again.
function assertSameRun(got: Run, want: Run, what: string): void {
  assert.deepEqual(got.stats.tokens, want.stats.tokens, `${what}: tokens`);
  assert.equal(got.stats.stopReason, want.stats.stopReason, `${what}: stop reason`);
  assert.equal(got.pieces.join(""), want.pieces.join(""), `${what}: text`);
  assert.equal(got.position, want.position, `${what}: position`);
  assert.deepEqual(got.logits, want.logits, `${what}: logits`);
}

const isAborted = (e: unknown) => e instanceof KvfoldError && e.code === "ABORTED";
const isDisposed = (e: unknown) => e instanceof KvfoldError && e.code === "DISPOSED";

Deno.test("handover: many tokens a hand-over give exactly what one token a step gives", async () => {
  const kv = await testEngine();
  using model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  const base = { prompt: "The", maxTokens: 40, temperature: 0, ignoreEos: true } as const;
  const full = { contextSize: 128 };
  const ref = await run(model, full, { ...base, streamIntervalMs: ONE });
  assert.equal(ref.stats.tokens.length, 40);
  const text = ref.pieces.join("");
  // A stop string whose first match ends well inside the hand-over (the run ends at its token).
  const stopIn = (text: string) =>
    text.slice(Math.floor(text.length * 0.6), Math.floor(text.length * 0.6) + 2);
  const stop = stopIn(text);
  const streaming: SessionOptions = { cache: { kind: "streaming", sinks: 2, window: 6 } };
  const streamed = await run(model, streaming, { ...base, streamIntervalMs: ONE });
  const streamedStop = stopIn(streamed.pieces.join(""));
  const promptLength = model.tokenizer.encode("The").length;
  const cases: [string, SessionOptions, GenerateOptions][] = [
    ["greedy", full, base],
    ["sampled", full, { ...base, temperature: 0.9, seed: 5, topK: 0 }],
    ["stop string", full, { ...base, stop: [stop] }],
    ["stop token", full, { ...base, stopTokens: [ref.stats.tokens[12]] }],
    ["context full", { contextSize: promptLength + 20 }, base],
    ["one token", full, { ...base, maxTokens: 1 }],
    ["no token", full, { ...base, maxTokens: 0 }],
    // A compressing cache: many a hand-over without stop strings, one a step with them (it cannot
    // rewind once it compressed).
    ["streaming cache", streaming, base],
    ["streaming cache, stop string", streaming, { ...base, stop: [streamedStop] }],
  ];
  for (const [what, session, options] of cases) {
    const one = await run(model, session, { ...options, streamIntervalMs: ONE });
    const all = await run(model, session, { ...options, streamIntervalMs: ALL });
    assertSameRun(all, one, what);
    if (options.stop) assert.equal(one.stats.stopReason, "stop-string", what);
  }
  const stopped = await run(model, full, { ...base, stop: [stop], streamIntervalMs: ALL });
  assert.equal(stopped.stats.stopReason, "stop-string");
  assert.ok(
    stopped.stats.tokens.length < 39,
    `the stop string ended the run at token ${stopped.stats.tokens.length}`,
  );
  assert.equal(stopped.pieces.join(""), text.slice(0, text.indexOf(stop)));
  assert.ok(
    stopped.pieces.length <= 2,
    `${stopped.pieces.length} pieces: the stop string was found in a hand-over`,
  );
  const filled = await run(model, { contextSize: promptLength + 20 }, { ...base, streamIntervalMs: ALL });
  assert.equal(filled.stats.stopReason, "context-full");
  assert.equal(filled.position, promptLength + 20);
});

Deno.test("handover: the interval sets how many pieces a stream comes in", async () => {
  const kv = await testEngine();
  using model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  const options = { prompt: "The", maxTokens: 40, temperature: 0, ignoreEos: true } as const;
  const one = await run(model, { contextSize: 128 }, { ...options, streamIntervalMs: ONE });
  const all = await run(model, { contextSize: 128 }, { ...options, streamIntervalMs: ALL });
  // The first token alone, then the other 39 (and what the stop filter or decoder held back).
  assert.ok(all.pieces.length <= 3, `${all.pieces.length} pieces`);
  assert.ok(one.pieces.length > 20, `${one.pieces.length} pieces`);
  using s = model.session({ contextSize: 128 });
  for (const bad of [-1, Number.NaN, Infinity]) {
    await assert.rejects(() => s.generate({ ...options, streamIntervalMs: bad }).next(), RangeError);
  }
  // A refused option left the session idle and empty.
  assert.equal(s.position, 0);
  assert.equal((await run(model, { contextSize: 128 }, { ...options, maxTokens: 2 })).stats.tokens.length, 2);
});

Deno.test("handover: an abort inside a hand-over stops it between decodes; the cache holds what was sampled", async () => {
  const kv = await testEngine();
  using model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  const prompt = [1, 9, 10];
  const options = { prompt, maxTokens: 3000, temperature: 0, ignoreEos: true, streamIntervalMs: ALL };
  using s = model.session({ contextSize: 3100 });
  const ac = new AbortController();
  let pieces = 0;
  await assert.rejects(async () => {
    for await (const _ of s.generate({ ...options, signal: ac.signal })) {
      // The first piece is the first token; the abort lands in the hand-over of the rest.
      if (++pieces === 1) setTimeout(() => ac.abort(new Error("user pressed stop")), 10);
    }
  }, isAborted);
  assert.equal(pieces, 1);
  const position = s.position;
  assert.ok(position > prompt.length && position < prompt.length + 2999, `position ${position}`);
  // One token a step up to the same position: the same tokens decoded, so the same logits.
  const ref = await run(model, { contextSize: 3100 }, {
    ...options,
    maxTokens: position - prompt.length + 1,
    streamIntervalMs: ONE,
  });
  assert.equal(ref.position, position);
  assert.deepEqual(s.logits(), ref.logits);
  await s.decode(5);
  assert.equal(s.position, position + 1);
});

Deno.test("handover: a session disposed inside a hand-over ends generate() with DISPOSED", async () => {
  const kv = await testEngine();
  using model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  const s = model.session({ contextSize: 3100 });
  const it = s.generate({
    prompt: [1, 9, 10],
    maxTokens: 3000,
    temperature: 0,
    ignoreEos: true,
    streamIntervalMs: ALL,
  })
    [Symbol.asyncIterator]();
  assert.equal((await it.next()).done, false); // the first token
  const step = it.next(); // runs up to the native hand-over of the rest
  s.dispose();
  await assert.rejects(step, isDisposed);
  await s[Symbol.asyncDispose]();
  assert.equal((await run(model, { contextSize: 64 }, { prompt: [1], maxTokens: 3 })).stats.tokens.length, 3);
});

Deno.test("handover: kf_session_generate refuses bad arguments by name and changes nothing", async () => {
  const kv = await testEngine();
  using model = await kv.loadModel(await testModel("gqa", { seed: 11 }));
  const vocab = model.info.vocabSize;
  using s = model.session({ contextSize: 4 });
  const sampler = createSampler({ temperature: 0 });
  const f = sym();
  const out = new Int32Array(8), count = new Int32Array(1), stops = new Int32Array(2);
  // The call runs on a worker thread: its message comes back in the control block.
  const call = async (
    set: (p: NativeStruct<"kf_generate_params">) => void,
    stopIds: Int32Array | null = stops,
    n = 0,
  ) => {
    const p = new NativeStruct("kf_generate_params", f.kf_generate_default_params());
    set(p);
    const ctl = new ControlBlock();
    check(
      await f.kf_session_generate(s._handle.ptr, sampler.ptr, p.buf, stopIds, n, out, count, ctl.buf),
      ctl,
    );
  };
  const refused = (code: string, pattern: RegExp) => (e: unknown) =>
    e instanceof KvfoldError && e.code === code && pattern.test(e.message);
  try {
    // Nothing has run yet: no logits to sample from.
    await assert.rejects(() => call(() => {}), refused("INVALID_STATE", /no logits yet/));
    await s.prefill([1, 2, 3]);
    const logits = s.logits();
    await assert.rejects(
      () => call((p) => p.set("max_tokens", 0)),
      refused("INVALID_ARGUMENT", /max_tokens 0/),
    );
    await assert.rejects(
      () => call((p) => p.set("pending", vocab)),
      refused("INVALID_ARGUMENT", /pending token id/),
    );
    await assert.rejects(
      () => call((p) => p.set("pending", -2)),
      refused("INVALID_ARGUMENT", /pending token id -2/),
    );
    await assert.rejects(
      () => call((p) => p.set("budget_us", -1)),
      refused("INVALID_ARGUMENT", /budget_us -1/),
    );
    await assert.rejects(() => call(() => {}, null, 2), refused("INVALID_ARGUMENT", /stop_ids is NULL/));
    assert.equal(s.position, 3);
    assert.deepEqual(s.logits(), logits);
    // One position left: the pending token fills it, and the loop stops at a full cache.
    await call((p) => {
      p.set("pending", 4);
      p.set("max_tokens", 8);
      p.set("budget_us", 60_000_000);
    });
    assert.equal(count[0], 1);
    assert.equal(s.position, 4);
    const held = s.logits();
    await assert.rejects(() => call((p) => p.set("pending", 5)), refused("INVALID_STATE", /cache is full/));
    assert.equal(s.position, 4);
    assert.deepEqual(s.logits(), held);
    // A stop id ends the loop at once, undecoded.
    s.reset();
    await s.prefill([1, 2, 3]);
    const everyId = Int32Array.from({ length: vocab }, (_, i) => i);
    await call(
      (p) => {
        p.set("max_tokens", 8);
        p.set("budget_us", 60_000_000);
      },
      everyId,
      vocab,
    );
    assert.equal(count[0], 1);
    assert.equal(s.position, 3);
  } finally {
    check(f.kf_sampler_free(sampler.ptr));
  }
});

// The scheduler's own generation loop (src/serve/scheduler.ts): prompts prefilled together in one
// native pass, rows sampled together in one native call, then text, stop strings and limits row
// by row. Each request, run among others in
// shared steps, must end exactly as Session.generate ends it alone with the same settings: the
// same text and stop reason for seeded top-p sampling, stop strings, max_tokens 0 and a full
// context.
import assert from "node:assert/strict";
import type { Model } from "../mod.ts";
import { ServerMetrics } from "../src/serve/metrics.ts";
import { type JobResult, type JobSpec, Scheduler, type SchedulerEvent } from "../src/serve/scheduler.ts";
import { someIds, testEngine, testModel } from "./_fixtures.ts";

interface Case {
  spec: JobSpec;
  text?: string;
  result?: JobResult;
}

async function solo(model: Model, spec: JobSpec) {
  using session = model.session({ contextSize: spec.contextSize });
  let text = "";
  for await (
    const p of session.generate({
      prompt: spec.promptIds,
      temperature: spec.temperature,
      topP: spec.topP,
      topK: 0,
      seed: spec.seed,
      stop: spec.stop,
      maxTokens: spec.maxTokens,
      ignoreEos: spec.ignoreEos,
    })
  ) text += p;
  return { text, reason: session.lastStats!.stopReason, tokens: session.lastStats!.generatedTokens };
}

async function runTogether(model: Model, cases: Case[], trace: SchedulerEvent[]): Promise<ServerMetrics> {
  const metrics = new ServerMetrics();
  const scheduler = new Scheduler(model, metrics, { maxBatch: 8, trace: true });
  await Promise.all(cases.map(async (c) => {
    const job = scheduler.submit(c.spec);
    const pieces = job.stream();
    c.text = "";
    for (;;) {
      const r = await pieces.next();
      if (r.done) {
        c.result = r.value;
        break;
      }
      c.text += r.value;
    }
  }));
  await scheduler.close();
  trace.push(...scheduler.trace!);
  return metrics;
}

const spec = (over: Partial<JobSpec> & { promptIds: number[] }): JobSpec => ({
  adapters: [],
  maxTokens: 12,
  temperature: 0,
  topP: 1,
  stop: [],
  ignoreEos: true,
  ...over,
});

Deno.test("scheduler: greedy, stop strings, max_tokens 0, a full context in shared passes end as generate() alone", async () => {
  using model = await (await testEngine()).loadModel(await testModel("tiny"));
  const vocab = model.info.vocabSize;
  const ids = (i: number) => someIds(5 + i, vocab, 40 + i);
  // A stop string taken from the middle of a greedy answer, so it is sure to occur.
  const greedy = await solo(model, spec({ promptIds: ids(3), maxTokens: 16 }));
  const stop = greedy.text.slice(5, 8);
  assert.ok(stop.length === 3, `the greedy answer ${JSON.stringify(greedy.text)} is too short`);
  const sampled = [
    spec({ promptIds: ids(0), temperature: 0.9, topP: 0.8, seed: 11 }),
    spec({ promptIds: ids(1), temperature: 1.2, topP: 1, seed: 12, maxTokens: 20 }),
  ];
  const make = (): Case[] => [
    ...sampled.map((spec) => ({ spec })),
    { spec: spec({ promptIds: ids(2) }) },
    { spec: spec({ promptIds: ids(3), maxTokens: 16, stop: [stop] }) },
    { spec: spec({ promptIds: ids(4), maxTokens: 0 }) },
    { spec: spec({ promptIds: ids(5), contextSize: ids(5).length + 4, maxTokens: 50 }) },
  ];
  const cases = make();
  const trace: SchedulerEvent[] = [];
  const metrics = await runTogether(model, cases, trace);
  // Greedy rows: exactly the text alone. Sampled rows shared prefill passes, whose wider matrix
  // products round differently, so they are held to the same run repeated (and to generate()
  // alone in the next test).
  for (const [i, c] of cases.entries()) {
    if (i < sampled.length) continue;
    const want = await solo(model, c.spec);
    assert.equal(c.text, want.text, `case ${i}`);
    assert.equal(c.result!.stopReason, want.reason, `case ${i}`);
    assert.equal(c.result!.generatedTokens, want.tokens, `case ${i}`);
  }
  const again = make();
  await runTogether(model, again, []);
  assert.deepEqual(again.map((c) => c.text), cases.map((c) => c.text));
  assert.notEqual(cases[0].text, (await solo(model, { ...sampled[0], temperature: 0 })).text);
  assert.deepEqual(cases.map((c) => c.result!.stopReason), [
    "max-tokens",
    "max-tokens",
    "max-tokens",
    "stop-string",
    "max-tokens",
    "context-full",
  ]);
  assert.equal(cases[4].result!.generatedTokens, 0);
  const widest = Math.max(...trace.filter((e) => e.type === "step").map((e) => e.ids.length));
  assert.ok(widest >= 4, `the requests never shared a step (widest ${widest} rows)`);
  // One timing per native step and per prefill call; the six prompts arrived together, so their
  // chunks shared prefill passes (kf_batch_prefill): fewer calls than chunks.
  const steps = trace.filter((e) => e.type === "step").length;
  assert.equal(metrics.decodeStepSeconds.count, steps);
  assert.equal(metrics.stepHostSeconds.count, steps);
  const chunks = trace.filter((e) => e.type === "prefill").length;
  assert.equal(metrics.prefillChunks, chunks);
  assert.ok(
    metrics.prefillChunkSeconds.count >= 1 && metrics.prefillChunkSeconds.count < chunks,
    `${metrics.prefillChunkSeconds.count} prefill calls for ${chunks} chunks`,
  );
  assert.ok(metrics.decodeStepSeconds.sum > 0);
  assert.match(metrics.text(), new RegExp(`^kvfold_decode_step_seconds_count ${steps}$`, "m"));
});

Deno.test("scheduler: seeded top-p and temperature sampling equal generate() with the same seed", async () => {
  using model = await (await testEngine()).loadModel(await testModel("tiny"));
  const vocab = model.info.vocabSize;
  for (
    const s of [
      spec({ promptIds: someIds(7, vocab, 61), temperature: 0.9, topP: 0.8, seed: 11, maxTokens: 20 }),
      spec({ promptIds: someIds(4, vocab, 62), temperature: 1.2, topP: 1, seed: 12, maxTokens: 20 }),
      spec({
        promptIds: someIds(9, vocab, 63),
        temperature: 0.7,
        topP: 0.95,
        seed: 2 ** 40 + 3,
        stop: ["e"],
      }),
    ]
  ) {
    const c: Case = { spec: s };
    await runTogether(model, [c], []);
    const want = await solo(model, s);
    assert.equal(c.text, want.text);
    assert.equal(c.result!.stopReason, want.reason);
  }
});

Deno.test("scheduler: a request aborted while waiting or generating leaves, the others finish", async () => {
  using model = await (await testEngine()).loadModel(await testModel("tiny"));
  const vocab = model.info.vocabSize;
  const scheduler = new Scheduler(model, new ServerMetrics(), { maxBatch: 2, trace: true });
  const abort = new AbortController();
  const a = scheduler.submit(spec({ promptIds: someIds(6, vocab, 1), maxTokens: 200, signal: abort.signal }));
  const b = scheduler.submit(spec({ promptIds: someIds(6, vocab, 2), maxTokens: 5 }));
  const c = scheduler.submit(spec({ promptIds: someIds(6, vocab, 3), maxTokens: 5 }));
  const streamA = a.stream();
  await streamA.next(); // a is generating
  abort.abort();
  await assert.rejects(async () => {
    for (;;) if ((await streamA.next()).done) break;
  }, { name: "KvfoldError", message: /client went away/ });
  for (const job of [b, c]) {
    let text = "";
    for await (const p of job.stream()) text += p;
    assert.equal(text, (await solo(model, job.spec)).text);
  }
  await scheduler.close();
  const retired = scheduler.trace!.filter((e) => e.type === "retire").map((e) =>
    e.type === "retire" && e.reason
  );
  assert.deepEqual(retired.sort(), ["aborted", "max-tokens", "max-tokens"]);
});

Deno.test("scheduler: a request alone is handed over natively and ends as generate() alone; abort stops it", async () => {
  using model = await (await testEngine()).loadModel(await testModel("tiny"));
  const vocab = model.info.vocabSize;
  const ids = someIds(7, vocab, 5);
  const greedy = await solo(model, spec({ promptIds: ids, maxTokens: 40 }));
  const stop = greedy.text.slice(Math.floor(greedy.text.length / 2), Math.floor(greedy.text.length / 2) + 3);
  const cases = [
    spec({ promptIds: ids, maxTokens: 40 }),
    spec({ promptIds: ids, maxTokens: 40, stop: [stop] }),
    spec({ promptIds: ids, maxTokens: 40, contextSize: ids.length + 9 }),
    spec({ promptIds: ids, maxTokens: 40, temperature: 0.9, topP: 0.8, seed: 4 }),
  ];
  for (const [i, c] of cases.entries()) {
    const want = await solo(model, c);
    for (const soloIntervalMs of [0, 60_000]) {
      const scheduler = new Scheduler(model, new ServerMetrics(), { trace: true, soloIntervalMs });
      const job = scheduler.submit(c);
      let text = "";
      const pieces = job.stream();
      let result: JobResult;
      for (;;) {
        const r = await pieces.next();
        if (r.done) {
          result = r.value;
          break;
        }
        text += r.value;
      }
      await scheduler.close();
      const what = `case ${i}, soloIntervalMs ${soloIntervalMs}`;
      assert.equal(text, want.text, what);
      assert.equal(result.stopReason, want.reason, what);
      assert.equal(result.generatedTokens, want.tokens, what);
      const trace = scheduler.trace!;
      const handOvers = trace.filter((e) => e.type === "solo");
      // Alone from its first token on: the first token in a hand-over of its own (the time to it is
      // the prefill's), the rest in one more (no hand-over without the interval); a stop string is
      // found after the native loop sampled past it.
      const sizes = handOvers.map((e) => e.type === "solo" ? e.tokens : 0);
      if (soloIntervalMs === 0) assert.deepEqual(sizes, [], what);
      else {
        assert.deepEqual(sizes.slice(0, 1), [1], what);
        assert.equal(sizes.length, 2, what);
        if (want.reason === "stop-string") assert.ok(sizes[1] > want.tokens - 1, what);
        else assert.equal(sizes[1], want.tokens - 1, what);
      }
      // A decode step per token that went on, whichever way it was run.
      const steps = trace.filter((e) => e.type === "step").length;
      assert.equal(steps, want.tokens - 1, what);
    }
  }
  assert.deepEqual(
    await Promise.all(cases.map(async (c) => (await solo(model, c)).reason)),
    ["max-tokens", "stop-string", "context-full", "max-tokens"],
  );
  // A client that goes away mid-hand-over: the native loop stops between two decodes.
  const scheduler = new Scheduler(model, new ServerMetrics(), { trace: true, soloIntervalMs: 60_000 });
  const abort = new AbortController();
  const long = spec({ promptIds: ids, maxTokens: 100_000, contextSize: 100_000, signal: abort.signal });
  const job = scheduler.submit(long);
  const started = performance.now();
  setTimeout(() => abort.abort(), 20);
  await assert.rejects(async () => {
    for await (const _ of job.stream()) { /* drain */ }
  }, { name: "KvfoldError", message: /client went away/ });
  await scheduler.close();
  assert.ok(performance.now() - started < 30_000);
  const retired = scheduler.trace!.filter((e) => e.type === "retire");
  assert.deepEqual(retired, [{ type: "retire", id: 1, reason: "aborted" }]);
  assert.throws(() => new Scheduler(model, new ServerMetrics(), { soloIntervalMs: -1 }), RangeError);
});

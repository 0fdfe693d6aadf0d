// Continuous batching in `kvfold serve`: concurrent streaming clients with different adapters each
// get exactly their solo answer while the server decodes them in shared steps; a client that goes
// away leaves within one step and its slot goes to the next request at once; a long prompt is
// prefilled chunk by chunk between the running requests' steps.
import assert from "node:assert/strict";
import OpenAI from "openai";
import { answerFromChunks, type ChatMessage, type KvfoldServer, type Model, startServer } from "../mod.ts";
import type { SchedulerEvent } from "../src/serve/scheduler.ts";
import { makeTestAdapter } from "../testing/mod.ts";
import { someIds, tempDir, testEngine, testModel, WIDE_MODEL } from "./_fixtures.ts";

const ADAPTERS = ["a0", "a1", "a2", "a3"];

// `wide`: a model slow enough per step that a long generation outlasts the test's requests.
async function withModel(fn: (model: Model, dir: string) => Promise<void>, wide = false) {
  const dir = await tempDir();
  try {
    const folder = wide
      ? await testModel("serve-wide", WIDE_MODEL)
      : await testModel("serve-batching", { seed: 5 });
    using model = await (await testEngine()).loadModel(folder);
    for (const [i, name] of ADAPTERS.entries()) {
      await makeTestAdapter(`${dir}/${name}`, { base: model.dir, rank: 4, seed: 11 + i, std: 0.1 });
      await model.adapters.load(`${dir}/${name}`, { name });
    }
    await fn(model, dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function solo(model: Model, messages: ChatMessage[], adapter: string | null, maxTokens: number) {
  let text = "";
  const options = { adapter, temperature: 0, maxTokens, ignoreEos: true };
  for await (const p of answerFromChunks(model, [], messages, options)) text += p;
  return text;
}

/** Reads `/metrics` and returns one sample's value. */
async function metric(server: KvfoldServer, sample: string): Promise<number> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${sample} `));
  assert.ok(line, `no ${sample} in /metrics`);
  return Number(line.slice(sample.length + 1));
}

/** Opens an SSE completion and returns a reader of its `data:` payloads. */
async function openStream(server: KvfoldServer, body: unknown, signal?: AbortSignal) {
  const r = await fetch(`${server.url}/v1/chat/completions`, {
    method: "POST",
    body: JSON.stringify({ ...body as object, stream: true }),
    signal,
  });
  assert.equal(r.status, 200);
  const reader = r.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  return {
    async next(): Promise<string | null> {
      for (;;) {
        const end = buffer.indexOf("\n\n");
        if (end >= 0) {
          const event = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          return event.replace(/^data: /, "");
        }
        const { value, done } = await reader.read();
        if (done) return null;
        buffer += value;
      }
    },
  };
}

async function health(server: KvfoldServer): Promise<{ running: number; queued: number }> {
  return await (await fetch(`${server.url}/health`)).json();
}

async function until(what: string, ok: () => Promise<boolean>) {
  for (let i = 0; i < 2000; i++) {
    if (await ok()) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error(`timed out waiting for ${what}`);
}

Deno.test("serve: 16 concurrent streaming clients over 4 adapters each get their solo answer", async () => {
  await withModel(async (model) => {
    await using server = startServer({ model, port: 0, maxBatch: 16, trace: true });
    await server.ready;
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "none", maxRetries: 0 });
    const maxTokens = 10;
    const cases = Array.from({ length: 16 }, (_, i) => ({
      adapter: ADAPTERS[i % 4],
      messages: [{ role: "user", content: `Question number ${i}: what is ${i * 7}?` }],
    }));
    const expected = [];
    for (const c of cases) expected.push(await solo(model, c.messages, c.adapter, maxTokens));
    assert.ok(new Set(expected).size > 4, "the cases must differ for this test to mean anything");
    const got = await Promise.all(cases.map(async (c) => {
      const stream = await client.chat.completions.create({
        model: `base:${c.adapter}`,
        messages: c.messages as OpenAI.ChatCompletionMessageParam[],
        max_tokens: maxTokens,
        temperature: 0,
        stream: true,
        kvfold: { ignore_eos: true },
      } as OpenAI.ChatCompletionCreateParamsStreaming);
      let text = "";
      for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
      return text;
    }));
    assert.deepEqual(got, expected);
    // Batches of more than one row happened, and some step mixed requests of different adapters.
    const steps = await metric(server, "kvfold_batch_rows_count");
    const single = await metric(server, 'kvfold_batch_rows_bucket{le="1"}');
    assert.ok(steps > single, `every one of ${steps} steps had one row`);
    const rows = await metric(server, "kvfold_batch_rows_sum");
    assert.equal(
      rows + 16,
      await metric(server, "kvfold_generated_tokens_total"),
      "one row per token but the last",
    );
    const widest = Math.max(...server.trace.filter((e) => e.type === "step").map((e) => e.ids.length));
    assert.ok(widest >= 4, `the widest step had ${widest} rows`);
  });
});

Deno.test("serve: a client that disconnects mid-stream leaves within one step and frees its slot", async () => {
  await withModel(async (model) => {
    await using server = startServer({ model, port: 0, maxBatch: 1, trace: true });
    await server.ready;
    const messages = [{ role: "user", content: "Tell me a long story." }];
    const abort = new AbortController();
    const a = await openStream(server, {
      model: "base",
      messages,
      max_tokens: 1500,
      temperature: 0,
      kvfold: { ignore_eos: true },
    }, abort.signal);
    assert.match((await a.next())!, /"role":"assistant"/);
    assert.match((await a.next())!, /"content"/); // generating
    const b = fetch(`${server.url}/v1/chat/completions`, {
      method: "POST",
      body: JSON.stringify({
        model: "base:a1",
        messages,
        max_tokens: 6,
        temperature: 0,
        kvfold: { ignore_eos: true },
      }),
    });
    await until("the second request to queue", async () => (await health(server)).queued === 1);
    abort.abort();
    const reply = await (await b).json();
    assert.equal(reply.choices[0].message.content, await solo(model, messages, "a1", 6));

    const trace = server.trace as SchedulerEvent[];
    const at = (pred: (e: SchedulerEvent) => boolean) => trace.findIndex(pred);
    const aborted = at((e) => e.type === "abort" && e.id === 1);
    const retired = at((e) => e.type === "retire" && e.id === 1);
    assert.ok(aborted >= 0 && retired > aborted, JSON.stringify(trace.slice(-5)));
    assert.deepEqual(trace[retired], { type: "retire", id: 1, reason: "aborted" });
    const stepsAfter = trace.slice(aborted, retired).filter((e) => e.type === "step" && e.ids.includes(1));
    assert.ok(stepsAfter.length <= 1, `${stepsAfter.length} steps of the aborted request after its abort`);
    assert.deepEqual(trace[retired + 1], { type: "admit", id: 2 }, "the waiting request is admitted next");
    assert.equal(await metric(server, "kvfold_aborted_requests_total"), 1);
    const generated = trace.filter((e) => e.type === "step" && e.ids.includes(1)).length;
    assert.ok(generated < 1499, `the aborted request ran ${generated} steps`);
  }, true);
});

Deno.test("serve: a long prompt is prefilled in chunks between the running request's steps", async () => {
  await withModel(async (model) => {
    const chunk = 8;
    await using server = startServer({ model, port: 0, maxBatch: 4, prefillChunk: chunk, trace: true });
    await server.ready;
    const stopA = new AbortController();
    const a = await openStream(server, {
      model: "base:a0",
      messages: [{ role: "user", content: "Count with me." }],
      max_tokens: 1500,
      temperature: 0,
      kvfold: { ignore_eos: true },
    }, stopA.signal);
    await a.next();
    await a.next(); // A is generating
    const longIds = someIds(100, model.info.vocabSize, 9);
    const r = await fetch(`${server.url}/v1/completions`, {
      method: "POST",
      body: JSON.stringify({
        model: "base:a2",
        prompt: longIds,
        max_tokens: 5,
        temperature: 0,
        kvfold: { ignore_eos: true },
      }),
    });
    const text = (await r.json()).choices[0].text;
    stopA.abort();

    // The same answer in-process, with the same prefill chunk (the session's batch size).
    using session = model.session({ batchSize: chunk });
    let expected = "";
    for await (
      const p of session.generate({
        prompt: longIds,
        adapter: "a2",
        temperature: 0,
        maxTokens: 5,
        ignoreEos: true,
      })
    ) expected += p;
    assert.equal(text, expected);

    const trace = server.trace as SchedulerEvent[];
    const prefillsOfB = trace.flatMap((e, i) => e.type === "prefill" && e.id === 2 ? [i] : []);
    assert.equal(prefillsOfB.length, Math.ceil(100 / chunk));
    const endA = trace.findIndex((e) => (e.type === "retire" || e.type === "abort") && e.id === 1);
    const retiredA = endA < 0 ? trace.length : endA;
    for (let j = 1; j < prefillsOfB.length; j++) {
      if (prefillsOfB[j] > retiredA) break;
      const between = trace.slice(prefillsOfB[j - 1], prefillsOfB[j]);
      assert.ok(
        between.some((e) => e.type === "step" && e.ids.includes(1)),
        `chunks ${j - 1} and ${j} of the long prompt ran with no step of the running request between`,
      );
    }
    assert.ok(prefillsOfB.at(-1)! < retiredA, "the test must overlap the prefill with A's generation");
  }, true);
});

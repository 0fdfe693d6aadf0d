// Refusals of `kvfold serve`, in OpenAI's error shape with the right status: 400 naming the field,
// 401 without the key, 404 for an unknown model or route, 413 past the context or the body limit,
// 429 with the queue full, 503 while loading; and 200 malformed bodies that all get a 4xx while
// the server keeps serving.
import assert from "node:assert/strict";
import { type KvfoldServer, type Model, startServer } from "../mod.ts";
import { testEngine, testModel, WIDE_MODEL } from "./_fixtures.ts";

const CHAT = { model: "base", messages: [{ role: "user", content: "Hi" }], max_tokens: 2, temperature: 0 };

async function post(server: KvfoldServer, path: string, body: unknown, headers: Record<string, string> = {}) {
  const r = await fetch(`${server.url}${path}`, {
    method: "POST",
    body: typeof body === "string"
      ? body
      : body instanceof Uint8Array
      ? new Uint8Array(body) as Uint8Array<ArrayBuffer>
      : JSON.stringify(body),
    headers,
  });
  const text = await r.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = { raw: text };
  }
  return { status: r.status, json };
}

/** Asserts OpenAI's error shape and returns the error. */
function openAIError(json: { error?: Record<string, unknown> }) {
  const e = json.error;
  assert.ok(e && typeof e.message === "string" && typeof e.type === "string", JSON.stringify(json));
  assert.ok("param" in e && "code" in e, JSON.stringify(json));
  return e as { message: string; type: string; param: string | null; code: string | null };
}

async function loadModel(): Promise<Model> {
  return await (await testEngine()).loadModel(await testModel("serve-errors", { seed: 4 }));
}

Deno.test("serve: 400 names the field at fault", async () => {
  using model = await loadModel();
  await using server = startServer({ model, port: 0 });
  await server.ready;
  const cases: [unknown, string | null, string?][] = [
    [{ ...CHAT, messages: "hi" }, "messages"],
    [{ ...CHAT, messages: [] }, "messages"],
    [{ ...CHAT, messages: [{ role: "robot", content: "x" }] }, "messages[0].role"],
    [{ ...CHAT, messages: [{ role: "user", content: [{ type: "image_url" }] }] }, "messages[0].content[0]"],
    [{ ...CHAT, temperature: "hot" }, "temperature"],
    [{ ...CHAT, temperature: 3 }, "temperature"],
    [{ ...CHAT, top_p: 0 }, "top_p"],
    [{ ...CHAT, max_tokens: 0 }, "max_tokens"],
    [{ ...CHAT, max_tokens: 1e308 }, "max_tokens"],
    [{ ...CHAT, seed: -1 }, "seed"],
    [{ ...CHAT, n: 2 }, "n"],
    [{ ...CHAT, stop: ["a", "b", "c", "d", "e"] }, "stop"],
    [{ ...CHAT, stop: ["a", 3] }, "stop[1]"],
    [{ ...CHAT, stream: "yes" }, "stream"],
    [{ ...CHAT, tools: [{ type: "function" }] }, "tools"],
    [{ ...CHAT, frequency_penalty: 1 }, "frequency_penalty"],
    [{ ...CHAT, kvfold: 3 }, "kvfold"],
    [{ ...CHAT, kvfold: { k: 0 } }, "kvfold.k"],
    [{ ...CHAT, kvfold: { chunk_ids: [1, "x"] } }, "kvfold.chunk_ids[1]"],
    [{ ...CHAT, kvfold: { adapter: "nope" } }, "kvfold.adapter"],
    [{ ...CHAT, kvfold: { cache: "h2o" } }, "kvfold.cache"],
    [{ ...CHAT, kvfold: { query: "ships" } }, "kvfold.store"],
    [{ ...CHAT, model: 7 }, "model"],
    [[1, 2], null],
    ["{not json", null],
  ];
  for (const [body, param] of cases) {
    const { status, json } = await post(server, "/v1/chat/completions", body);
    assert.equal(status, 400, `${JSON.stringify(body)}: ${JSON.stringify(json)}`);
    const e = openAIError(json);
    assert.equal(e.param, param, `${JSON.stringify(body)}: ${e.message}`);
    assert.equal(e.type, "invalid_request_error");
    if (param) assert.ok(e.message.includes(param.replace(/\[\d+\].*$/, "")), e.message);
  }
  const prompt = await post(server, "/v1/completions", { model: "base", prompt: [1, 99999] });
  assert.equal(prompt.status, 400);
  assert.equal(openAIError(prompt.json).param, "prompt[1]");
});

Deno.test("serve: 401 without the key, 404 for unknown models and routes, 405, 413", async () => {
  using model = await loadModel();
  await using server = startServer({ model, port: 0, apiKey: "sk-secret", maxBodyBytes: 4096 });
  await server.ready;
  const key = { authorization: "Bearer sk-secret" };
  const refused: Record<string, string>[] = [{}, { authorization: "Bearer sk-wrong" }, {
    authorization: "sk-secret",
  }];
  for (const headers of refused) {
    const r = await post(server, "/v1/chat/completions", CHAT, headers);
    assert.equal(r.status, 401);
    assert.equal(openAIError(r.json).type, "authentication_error");
  }
  assert.equal((await fetch(`${server.url}/v1/models`)).status, 401);
  assert.equal(await fetch(`${server.url}/health`).then((r) => r.status), 200, "health needs no key");

  const unknown = await post(server, "/v1/chat/completions", { ...CHAT, model: "gpt-4" }, key);
  assert.equal(unknown.status, 404);
  assert.equal(openAIError(unknown.json).code, "model_not_found");
  const noAdapter = await post(server, "/v1/chat/completions", { ...CHAT, model: "base:nope" }, key);
  assert.equal(noAdapter.status, 404);
  const model404 = await fetch(`${server.url}/v1/models/base:nope`, { headers: key });
  assert.equal(model404.status, 404);
  openAIError(await model404.json());
  const route = await post(server, "/v1/embeddings", {}, key);
  assert.equal(route.status, 404);
  openAIError(route.json);
  const get = await fetch(`${server.url}/v1/chat/completions`, { headers: key });
  assert.equal(get.status, 405);
  openAIError(await get.json());

  // Past the context (the test model has 256 positions).
  const long = await post(server, "/v1/completions", { model: "base", prompt: new Array(300).fill(5) }, key);
  assert.equal(long.status, 413);
  assert.equal(openAIError(long.json).code, "context_length_exceeded");
  const words = "ship ".repeat(200);
  const chatLong = await post(server, "/v1/chat/completions", {
    ...CHAT,
    messages: [{ role: "user", content: words }],
  }, key);
  assert.equal(chatLong.status, 413);
  // Past the body limit.
  const big = await post(server, "/v1/completions", { model: "base", prompt: "x".repeat(5000) }, key);
  assert.equal(big.status, 413);
  openAIError(big.json);
  const ok = await post(server, "/v1/chat/completions", CHAT, key);
  assert.equal(ok.status, 200, JSON.stringify(ok.json));
});

Deno.test("serve: 429 when the queue is full", async () => {
  // A model slow enough per step that the first request outlasts the other two.
  using model = await (await testEngine()).loadModel(await testModel("serve-wide", WIDE_MODEL));
  await using server = startServer({ model, port: 0, maxBatch: 1, maxQueue: 1 });
  await server.ready;
  const long = { ...CHAT, max_tokens: 1500, kvfold: { ignore_eos: true }, stream: true };
  const abort = new AbortController();
  const first = await fetch(`${server.url}/v1/chat/completions`, {
    method: "POST",
    body: JSON.stringify(long),
    signal: abort.signal,
  });
  const reader = first.body!.getReader();
  await reader.read(); // running
  const second = post(server, "/v1/chat/completions", CHAT); // waits in the queue
  for (let i = 0; i < 1000 && (await (await fetch(`${server.url}/health`)).json()).queued < 1; i++) {
    await new Promise((r) => setTimeout(r, 5));
  }
  const third = await post(server, "/v1/chat/completions", CHAT);
  assert.equal(third.status, 429);
  assert.equal(openAIError(third.json).type, "rate_limit_error");
  abort.abort();
  await reader.cancel().catch(() => {});
  assert.equal((await second).status, 200);
});

Deno.test("serve: 503 while the model loads, then 200; a failed load stays 503", async () => {
  const { promise, resolve } = Promise.withResolvers<Model>();
  await using server = startServer({ model: promise, port: 0 });
  const h = await fetch(`${server.url}/health`);
  assert.equal(h.status, 503);
  assert.equal((await h.json()).status, "loading");
  const early = await post(server, "/v1/chat/completions", CHAT);
  assert.equal(early.status, 503);
  assert.equal(openAIError(early.json).code, "model_loading");
  using model = await loadModel();
  resolve(model);
  await server.ready;
  assert.equal((await fetch(`${server.url}/health`)).status, 200);
  assert.equal((await post(server, "/v1/chat/completions", CHAT)).status, 200);

  await using failed = startServer({ model: Promise.reject(new Error("no such folder")), port: 0 });
  await assert.rejects(failed.ready, /no such folder/);
  const r = await post(failed, "/v1/models", {});
  assert.equal(r.status, 503);
  assert.match(openAIError(r.json).message, /no such folder/);
});

// A small deterministic PRNG for the malformed bodies.
function rng(seed: number) {
  let x = seed >>> 0;
  return () => {
    x = (Math.imul(x ^ (x >>> 15), 0x2c1b3c6d) + 0x9e3779b9) >>> 0;
    return x / 2 ** 32;
  };
}

Deno.test("serve: 200 malformed bodies each get a 4xx in OpenAI's shape, and the server keeps serving", async () => {
  using model = await loadModel();
  await using server = startServer({ model, port: 0 });
  await server.ready;
  const r = rng(2024);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)];
  const junk = (depth = 0): unknown => {
    const kinds = depth > 2 ? 5 : 7;
    switch (Math.floor(r() * kinds)) {
      case 0:
        return null;
      case 1:
        return r() < 0.5;
      case 2:
        return pick([0, -1, 1.5, 1e308, -1e308, 2 ** 64, 0.1]);
      case 3:
        return pick(["", "x", "\u0000", "\ud800", "base", "🦀".repeat(20)]);
      case 4:
        return [];
      case 5:
        return Array.from({ length: Math.floor(r() * 4) }, () => junk(depth + 1));
      default:
        return Object.fromEntries(
          Array.from(
            { length: Math.floor(r() * 4) },
            () => [pick(["a", "role", "content", "k"]), junk(depth + 1)],
          ),
        );
    }
  };
  // Values that are wrong for each field (never a valid one).
  const wrong: Record<string, () => unknown> = {
    model: () => pick([null, 5, "", "nope", ["base"], {}]),
    messages: () =>
      pick([null, "hi", [], [1], [{ role: "user" }], [{ role: 5, content: "x" }], { role: "user" }]),
    max_tokens: () => pick([0, -3, 1.5, "8", 1e300, true, 2 ** 31]),
    temperature: () => pick([-0.5, 2.5, "0", [], {}]),
    top_p: () => pick([0, 1.5, -1, "1"]),
    stop: () => pick([5, [""], [1], ["a", "b", "c", "d", "e"], {}]),
    seed: () => pick([-1, 0.5, "7", 2 ** 60]),
    n: () => pick([0, 2, "1", 1.5]),
    stream: () => pick(["true", 1, {}, []]),
    stream_options: () => pick([1, "x", [], { include_usage: "yes" }]),
    kvfold: () => pick([1, "x", [], { k: 0 }, { k: "2" }, { chunk_ids: [] }, { adapter: 5 }, { cache: 1 }]),
  };
  const statuses = new Map<number, number>();
  for (let i = 0; i < 200; i++) {
    const path = i % 2 ? "/v1/chat/completions" : "/v1/completions";
    const valid: Record<string, unknown> = path === "/v1/completions"
      ? { model: "base", prompt: "Hi", max_tokens: 2 }
      : { ...CHAT };
    let body: string | Uint8Array;
    switch (i % 5) {
      case 0: // random JSON, not a request
        body = JSON.stringify(r() < 0.3 ? junk() : { ...junk() as object, model: 3 });
        break;
      case 1: { // one field of a valid body made wrong
        const field = pick(Object.keys(wrong).filter((f) => path !== "/v1/completions" || f !== "messages"));
        body = JSON.stringify({ ...valid, [field]: wrong[field]() });
        break;
      }
      case 2: { // invalid UTF-8 inside a valid body
        const bytes = new TextEncoder().encode(JSON.stringify(valid));
        const at = bytes.indexOf(0x48); // the H of "Hi"
        body = new Uint8Array([...bytes.slice(0, at), pick([0xff, 0xc0, 0xed, 0x80]), ...bytes.slice(at)]);
        break;
      }
      case 3: { // truncated JSON
        const text = JSON.stringify(valid);
        body = text.slice(0, 1 + Math.floor(r() * (text.length - 2)));
        break;
      }
      default: // numbers past every range, written as text
        body = JSON.stringify(valid).replace(
          /"max_tokens":\d+/,
          `"max_tokens":${pick(["1e999999", "-0", "99999999999999999999"])}`,
        );
        if (!body.includes("max_tokens")) body = body.replace("{", '{"seed":1e400,');
    }
    const { status, json } = await post(server, path, body);
    assert.ok(
      status >= 400 && status < 500,
      `body ${i} (${String(body).slice(0, 80)}): ${status} ${JSON.stringify(json)}`,
    );
    openAIError(json);
    statuses.set(status, (statuses.get(status) ?? 0) + 1);
  }
  assert.ok((statuses.get(400) ?? 0) > 150, JSON.stringify([...statuses]));
  const ok = await post(server, "/v1/chat/completions", CHAT);
  assert.equal(ok.status, 200);
});

// Chat that reuses its cache (ChatSession, PrefixCache): the metamorphic identity "turn N with the
// cache kept equals a fresh session given the whole conversation", and only the new tokens prefilled.
import assert from "node:assert/strict";
import {
  answerFromChunks,
  type AnswerOptions,
  type AnswerStats,
  type ChatMessage,
  KvfoldError,
  type Model,
  PrefixCache,
  type StoredVectors,
} from "../mod.ts";
import { relativeError, someIds, testEngine, testModel } from "./_fixtures.ts";

/** Greedy, fixed length: two runs over the same inputs give the same tokens. */
const GREEDY = { temperature: 0, maxTokens: 6, ignoreEos: true } as const;

async function loadModel(): Promise<Model> {
  return (await testEngine()).loadModel(await testModel("chat-cache", { seed: 5 }));
}

/** Runs an answer to the end: its text and counters. */
async function answer(
  model: Model,
  vectors: StoredVectors | null,
  prompt: string | readonly ChatMessage[],
  options: AnswerOptions = {},
): Promise<{ text: string; stats: AnswerStats }> {
  const stream = answerFromChunks(model, vectors ? [{ vectors }] : [], prompt, { ...GREEDY, ...options });
  let text = "";
  for (;;) {
    const r = await stream.next();
    if (r.done) return { text, stats: r.value };
    text += r.value;
  }
}

function randomVectors(rows: number, hidden: number, seed: number): StoredVectors {
  const data = new Float32Array(rows * hidden);
  let x = seed;
  for (let i = 0; i < data.length; i++) {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    data[i] = (x / 2 ** 31 - 0.5) * 0.2;
  }
  return { rows, hidden, data };
}

Deno.test("chat: each turn equals a fresh session given the whole conversation, and prefills only the new turn", async () => {
  using model = await loadModel();
  assert.ok(model.tokenizer.hasChatTemplate);
  using chat = model.chat({ system: "You answer briefly." });
  const questions = ["Where is the harbour?", "Which ship left?", "What did it carry?", "When?"];
  for (const [turn, q] of questions.entries()) {
    const before = [...chat.messages, { role: "user", content: q }];
    let text = "";
    for await (const piece of chat.send(q, GREEDY)) text += piece;
    const got = chat.lastStats!;
    const fresh = await answer(model, null, before);
    assert.deepEqual(got.tokens, fresh.stats.tokens, `turn ${turn}: tokens differ from a fresh session`);
    assert.equal(text, fresh.text);
    const whole = model.encodePrompt(before).length;
    // Prefilled + reused = the whole conversation; from turn 1 on, most of it is reused.
    assert.equal(got.promptTokens + got.reusedPositions, whole, `turn ${turn}`);
    assert.equal(fresh.stats.promptTokens, whole);
    if (turn === 0) assert.equal(got.reusedPositions, 0);
    else {
      // Everything up to the last prompt (its assistant opening included) is reused; the reply as
      // the template renders it and the new user message are prefilled.
      const lastPrompt = model.encodePrompt(chat.messages.slice(0, -3)).length;
      assert.ok(
        got.reusedPositions >= lastPrompt,
        `turn ${turn}: reused ${got.reusedPositions} < ${lastPrompt}`,
      );
      assert.ok(got.promptTokens <= whole - lastPrompt, `turn ${turn}`);
    }
    assert.deepEqual(chat.messages.at(-1), { role: "assistant", content: text });
  }
  assert.equal(chat.messages.length, 1 + 2 * questions.length);
});

Deno.test("chat: logits after truncate + prefill of the rest equal a one-shot prefill within 1e-5", async () => {
  using model = await loadModel();
  const V = model.info.vocabSize;
  const held = someIds(30, V, 7);
  const next = [...held.slice(0, 22), ...someIds(9, V, 8)];
  using reused = model.session({ contextSize: 64 });
  await reused.prefill(held.slice(0, 12));
  for (const id of held.slice(12)) await reused.decode(id); // as generated tokens get into the cache
  reused.truncate(22);
  const tail = (await reused.prefill(next.slice(22), { logits: "all" }))!;
  using fresh = model.session({ contextSize: 64 });
  const all = (await fresh.prefill(next, { logits: "all" }))!;
  const err = relativeError(tail, all.subarray(22 * V));
  assert.ok(err < 1e-5, `relative error ${err.toExponential(2)}`);
});

Deno.test("prefix cache: questions over the same vectors skip their prefill and answer as without it", async () => {
  using model = await loadModel();
  const doc = randomVectors(6, model.info.hiddenSize, 9);
  const other = randomVectors(6, model.info.hiddenSize, 10);
  using prefixes = new PrefixCache(model, { capacity: 2 });
  const questions = ["Which ship left the harbour?", "Who sold honey?", "Which ship left the harbour?"];
  for (const [i, q] of questions.entries()) {
    const cached = await answer(model, doc, q, { prefixCache: prefixes });
    const plain = await answer(model, doc, q);
    assert.deepEqual(cached.stats.tokens, plain.stats.tokens, `question ${i}`);
    assert.equal(cached.text, plain.text);
    if (i === 0) assert.equal(cached.stats.reusedPositions, 0);
    else {
      assert.ok(cached.stats.reusedPositions >= doc.rows, `question ${i}: vectors not reused`);
      assert.equal(
        cached.stats.promptTokens,
        plain.stats.promptTokens - (cached.stats.reusedPositions - doc.rows),
      );
    }
  }
  // The same question again reuses all of the prompt but its last token.
  const again = await answer(model, doc, questions[0], { prefixCache: prefixes });
  assert.equal(again.stats.promptTokens, 1);
  // Other vectors never match: a new session, and an answer as without the cache.
  const o = await answer(model, other, questions[0], { prefixCache: prefixes });
  assert.equal(o.stats.reusedPositions, 0);
  assert.deepEqual(o.stats.tokens, (await answer(model, other, questions[0])).stats.tokens);
  assert.equal(prefixes.size, 2);
});

Deno.test("prefix cache: the repetition penalty sees the reused prompt as a fresh session does", async () => {
  using model = await loadModel();
  const doc = randomVectors(4, model.info.hiddenSize, 11);
  using prefixes = new PrefixCache(model);
  const opts = { repetitionPenalty: 1.5, maxTokens: 12 };
  await answer(model, doc, "the ship the ship the ship", { ...opts, prefixCache: prefixes });
  const cached = await answer(model, doc, "the ship the ship the ship left", {
    ...opts,
    prefixCache: prefixes,
  });
  assert.ok(cached.stats.reusedPositions > doc.rows);
  const plain = await answer(model, doc, "the ship the ship the ship left", opts);
  assert.deepEqual(cached.stats.tokens, plain.stats.tokens);
});

Deno.test("chat: a turn stopped early leaves the conversation and the cache as they were", async () => {
  using model = await loadModel();
  using chat = model.chat();
  for await (const _ of chat.send("Hello there", GREEDY));
  const before = [...chat.messages];
  for await (const _ of chat.send("Tell me more", GREEDY)) break;
  assert.deepEqual(chat.messages, before);
  const q = "Tell me more please";
  for await (const _ of chat.send(q, GREEDY));
  const fresh = await answer(model, null, [...before, { role: "user", content: q }]);
  assert.deepEqual(chat.lastStats!.tokens, fresh.stats.tokens);
  assert.ok(chat.lastStats!.reusedPositions > 0);
});

Deno.test("prefix cache: refused for another model's answers, bypassed by a compressing cache", async () => {
  using model = await loadModel();
  using other = await (await testEngine()).loadModel(await testModel("chat-cache-other", { seed: 6 }));
  using prefixes = new PrefixCache(other);
  await assert.rejects(
    () => answer(model, null, "hi", { prefixCache: prefixes }),
    (e) => e instanceof KvfoldError && e.code === "INVALID_ARGUMENT" && /another model/.test(e.message),
  );
  using mine = new PrefixCache(model);
  const r = await answer(model, null, "hi", {
    prefixCache: mine,
    cache: { kind: "streaming", sinks: 4, window: 32 },
  });
  assert.equal(r.stats.reusedPositions, 0);
  assert.equal(mine.size, 0);
  assert.throws(() => new PrefixCache(model, { capacity: 0 }), RangeError);
});

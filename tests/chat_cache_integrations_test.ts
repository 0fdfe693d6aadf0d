// reuseCache in both integrations: a growing message list prefills only what it added, and answers
// as the same class without reuse does.
import assert from "node:assert/strict";
import { AIMessage, type BaseMessage, HumanMessage, SystemMessage } from "npm:@langchain/core@1.4.0/messages";
import type { ChatMessage as LlamaChatMessage } from "npm:llamaindex@0.12.1";
import { type Model, PrefixCache } from "../mod.ts";
import { ChatKvfold, type KvfoldResponseMetadata } from "../integrations/langchain/mod.ts";
import { type KvfoldGenerationStats, KvfoldLLM } from "../integrations/llamaindex/mod.ts";
import { testEngine, testModel } from "./_fixtures.ts";

const GREEDY = { temperature: 0, maxTokens: 6, ignoreEos: true } as const;
const QUESTIONS = ["Where is the harbour?", "Which ship left?", "What did it carry?"];

async function loadModel(): Promise<Model> {
  return (await testEngine()).loadModel(await testModel("chat-cache", { seed: 5 }));
}

Deno.test("ChatKvfold reuseCache: a growing history prefills only the new turn, same answers", async () => {
  using model = await loadModel();
  const reusing = new ChatKvfold({ model, reuseCache: true, ...GREEDY });
  const plain = new ChatKvfold({ model, ...GREEDY });
  const history: BaseMessage[] = [new SystemMessage("You answer briefly.")];
  for (const [turn, q] of QUESTIONS.entries()) {
    history.push(new HumanMessage(q));
    const got = await reusing.invoke(history);
    const want = await plain.invoke(history);
    assert.equal(got.content, want.content, `turn ${turn}`);
    const k = got.response_metadata.kvfold as KvfoldResponseMetadata;
    const w = want.response_metadata.kvfold as KvfoldResponseMetadata;
    assert.equal(w.reusedPositions, 0);
    assert.equal(k.promptTokens + k.reusedPositions, w.promptTokens, `turn ${turn}`);
    assert.equal(got.usage_metadata?.input_tokens, want.usage_metadata?.input_tokens);
    assert.equal(got.usage_metadata?.input_token_details?.cache_read, k.reusedPositions);
    if (turn > 0) assert.ok(k.reusedPositions > 0 && k.promptTokens < w.promptTokens, `turn ${turn}`);
    history.push(new AIMessage(String(got.content)));
  }
  // Streaming goes through the same cache.
  history.push(new HumanMessage("And then?"));
  let streamed = "";
  let meta: KvfoldResponseMetadata | undefined;
  for await (const c of await reusing.stream(history)) {
    streamed += c.content;
    meta ??= c.response_metadata.kvfold as KvfoldResponseMetadata | undefined;
  }
  assert.equal(streamed, (await plain.invoke(history)).content);
  assert.ok(meta!.reusedPositions > 0);
});

Deno.test("ChatKvfold reuseCache: a shared PrefixCache is used; anything else is a TypeError", async () => {
  using model = await loadModel();
  using prefixes = new PrefixCache(model, { capacity: 1 });
  const chat = new ChatKvfold({ model, reuseCache: prefixes, ...GREEDY });
  await chat.invoke([new HumanMessage("hello")]);
  assert.equal(prefixes.size, 1);
  const bad = new ChatKvfold({ model, reuseCache: "yes" as unknown as boolean, ...GREEDY });
  await assert.rejects(() => bad.invoke("hi"), TypeError);
});

Deno.test("KvfoldLLM (LlamaIndex) reuseCache: chat() with a growing history prefills only the new turn", async () => {
  using model = await loadModel();
  const reusing = new KvfoldLLM(model, { reuseCache: true, ...GREEDY });
  const plain = new KvfoldLLM(model, GREEDY);
  const messages: LlamaChatMessage[] = [{ role: "system", content: "You answer briefly." }];
  for (const [turn, q] of QUESTIONS.entries()) {
    messages.push({ role: "user", content: q });
    const got = await reusing.chat({ messages });
    const want = await plain.chat({ messages });
    assert.equal(got.message.content, want.message.content, `turn ${turn}`);
    const k = got.raw as KvfoldGenerationStats, w = want.raw as KvfoldGenerationStats;
    assert.deepEqual(k.tokens, w.tokens);
    assert.equal(k.promptTokens + k.reusedPositions, w.promptTokens);
    if (turn > 0) assert.ok(k.reusedPositions > 0, `turn ${turn}`);
    messages.push({ role: "assistant", content: String(got.message.content) });
  }
});

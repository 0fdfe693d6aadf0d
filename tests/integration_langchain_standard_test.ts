// The checks of LangChain.js's standard chat-model suites (internal/standard-tests/src: unit_tests and
// integration_tests/chat_models.ts) that need neither tool calling nor structured output, made here
// against ChatKvfold (and KvfoldLLM where they apply): init with the standard params, LangSmith params,
// abort, invoke, stream, batch, streamEvents, conversations, usage and response metadata, stop, and
// text content blocks as input.
import assert from "node:assert/strict";
import { AIMessage, AIMessageChunk, HumanMessage, SystemMessage } from "npm:@langchain/core@1.4.0/messages";
import { BaseCallbackHandler } from "npm:@langchain/core@1.4.0/callbacks/base";
import { concat } from "npm:@langchain/core@1.4.0/utils/stream";
import type { Model } from "../mod.ts";
import { ChatKvfold, KvfoldLLM } from "../integrations/langchain/mod.ts";
import { testEngine, testModel } from "./_fixtures.ts";

/** The constructor params every standard unit test adds (unknown ones must be accepted). */
const STANDARD_PARAMS = { temperature: 0, maxTokens: 100, timeout: 60, stopSequences: [], maxRetries: 2 };
/** Greedy and fixed length, so every reply is non-empty and two runs agree. */
const GREEDY = { temperature: 0, maxTokens: 8, ignoreEos: true } as const;
const LS_KEYS = [
  "ls_max_tokens",
  "ls_model_name",
  "ls_model_type",
  "ls_provider",
  "ls_stop",
  "ls_temperature",
];

async function withModel(fn: (model: Model) => Promise<void>): Promise<void> {
  using model = await (await testEngine()).loadModel(await testModel("standard", { seed: 5 }));
  await fn(model);
}

Deno.test("standard unit: init with the standard params, an apiKey and streaming", async () => {
  await withModel((model) => {
    for (const extra of [{}, { apiKey: "test" }, { streaming: true }]) {
      const chat = new ChatKvfold({ model, ...STANDARD_PARAMS, ...extra } as never);
      assert.ok(chat instanceof ChatKvfold);
    }
    return Promise.resolve();
  });
});

Deno.test("standard unit: getLsParams has exactly LangSmith's six keys, with the model's values", async () => {
  await withModel((model) => {
    const chat = new ChatKvfold({ model, ...STANDARD_PARAMS });
    const ls = chat.getLsParams({} as never);
    assert.deepEqual(Object.keys(ls).sort(), LS_KEYS);
    assert.deepEqual(ls, {
      ls_provider: "kvfold",
      ls_model_name: "standard",
      ls_model_type: "chat",
      ls_temperature: 0,
      ls_max_tokens: 100,
      ls_stop: [],
    });
    // The call's settings win; `modelName` names the model.
    const named = new ChatKvfold({ model, modelName: "tiny-chat", stop: ["\n"] });
    assert.deepEqual(named.getLsParams({ stop: ["END"], temperature: 0.5 } as never), {
      ls_provider: "kvfold",
      ls_model_name: "tiny-chat",
      ls_model_type: "chat",
      ls_temperature: 0.5,
      ls_max_tokens: 256,
      ls_stop: ["END"],
    });
    assert.deepEqual(named.getLsParams({} as never).ls_stop, ["\n"]);
    assert.equal(named.getLsParams({} as never).ls_temperature, 0.8);

    const llm = new KvfoldLLM({ model, temperature: 0.2, maxTokens: 7 });
    const llmLs = llm.getLsParams({} as never);
    assert.deepEqual(Object.keys(llmLs).sort(), LS_KEYS);
    assert.deepEqual(llmLs, {
      ls_provider: "kvfold",
      ls_model_name: "standard",
      ls_model_type: "llm",
      ls_temperature: 0.2,
      ls_max_tokens: 7,
      ls_stop: [],
    });
    return Promise.resolve();
  });
});

Deno.test("standard unit: the LangSmith params reach the callbacks' run metadata", async () => {
  await withModel(async (model) => {
    const seen: Record<string, unknown>[] = [];
    const handler = BaseCallbackHandler.fromMethods({
      handleChatModelStart(_llm, _messages, _runId, _parent, _extra, _tags, metadata) {
        seen.push(metadata ?? {});
      },
    });
    await new ChatKvfold({ model, ...GREEDY }).invoke("Hello", { callbacks: [handler] });
    assert.equal(seen.length, 1);
    assert.equal(seen[0].ls_provider, "kvfold");
    assert.equal(seen[0].ls_model_name, "standard");
    assert.equal(seen[0].ls_max_tokens, 8);
    assert.equal(seen[0].ls_temperature, 0);
  });
});

Deno.test("standard unit: an already aborted signal rejects invoke and stops stream", async () => {
  await withModel(async (model) => {
    const chat = new ChatKvfold({ model, ...STANDARD_PARAMS });
    await assert.rejects(chat.invoke([new HumanMessage("hello")], { signal: AbortSignal.abort() }));
    const chunks: AIMessageChunk[] = [];
    try {
      for await (
        const chunk of await chat.stream([new HumanMessage("hello")], { signal: AbortSignal.abort() })
      ) {
        chunks.push(chunk);
      }
    } catch {
      // Rejecting is one of the two accepted outcomes.
    }
    assert.equal(chunks.length, 0);
  });
});

Deno.test("standard integration: invoke, stream, batch and conversations give non-empty AIMessages", async () => {
  await withModel(async (model) => {
    const chat = new ChatKvfold({ model, ...GREEDY });
    const reply = await chat.invoke("Hello");
    assert.ok(reply instanceof AIMessage);
    assert.equal(typeof reply.text, "string");
    assert.notEqual(reply.text, "");

    let chunks = 0;
    let chars = 0;
    for await (const token of await chat.stream("Hello")) {
      chunks++;
      assert.ok(token instanceof AIMessageChunk);
      assert.equal(typeof token.content, "string");
      chars += (token.content as string).length;
    }
    assert.ok(chunks > 0 && chars > 0);

    const batch = await chat.batch(["Hello", "Hey"]);
    assert.equal(batch.length, 2);
    for (const r of batch) {
      assert.ok(r instanceof AIMessage);
      assert.notEqual(r.text, "");
    }
    assert.equal(batch[0].text, reply.text);

    const conversation = await chat.invoke([
      new HumanMessage("hello"),
      new AIMessage("hello"),
      new HumanMessage("how are you"),
    ]);
    assert.ok(conversation instanceof AIMessage);
    assert.notEqual(conversation.text, "");

    const doubled = await chat.invoke([
      new SystemMessage("hello"),
      new SystemMessage("hello"),
      new HumanMessage("hello"),
      new HumanMessage("hello"),
      new AIMessage("hello"),
      new AIMessage("hello"),
      new HumanMessage("how are you"),
    ]);
    assert.ok(doubled instanceof AIMessage);
    assert.notEqual(doubled.text, "");
  });
});

Deno.test("standard integration: streamEvents starts, streams and ends with the concatenated reply", async () => {
  await withModel(async (model) => {
    const chat = new ChatKvfold({ model, ...GREEDY });
    const events = [];
    for await (const e of chat.streamEvents("Hello", { version: "v2" })) events.push(e);
    assert.ok(events.length >= 3);
    assert.equal(events[0].event, "on_chat_model_start");
    assert.equal(events.at(-1)!.event, "on_chat_model_end");
    assert.equal(events[Math.floor(events.length / 2)].event, "on_chat_model_stream");
    const streamed = events.filter((e) => e.event === "on_chat_model_stream").map((e) => e.data.chunk.content)
      .join("");
    assert.equal(events.at(-1)!.data.output.content, streamed);
    assert.equal(streamed, (await chat.invoke("Hello")).text);
  });
});

Deno.test("standard integration: usage and response metadata (model name) on invoke and on a concatenated stream", async () => {
  await withModel(async (model) => {
    const chat = new ChatKvfold({ model, ...GREEDY });
    const reply = await chat.invoke("Hello");
    const usage = reply.usage_metadata!;
    assert.equal(typeof usage.input_tokens, "number");
    assert.equal(usage.output_tokens, 8);
    assert.equal(usage.total_tokens, usage.input_tokens + usage.output_tokens);
    assert.ok(usage.input_tokens > 0);
    assert.equal(reply.response_metadata.model, "standard");

    let all: AIMessageChunk | undefined;
    for await (const chunk of await chat.stream("Hello")) all = all === undefined ? chunk : all.concat(chunk);
    assert.ok(all !== undefined);
    assert.deepEqual(all.usage_metadata, usage);
    // One chunk carries the name, so concatenation keeps it whole.
    assert.equal(all.response_metadata.model, "standard");
    assert.equal(all.text, reply.text);
    assert.equal(concat(concat(new AIMessageChunk(""), all), new AIMessageChunk("")).text, reply.text);

    const named = await new ChatKvfold({ model, modelName: "my-model", ...GREEDY }).invoke("Hello");
    assert.equal(named.response_metadata.model, "my-model");

    // KvfoldLLM reports the name in its last chunk's generation info.
    const llm = new KvfoldLLM({ model, ...GREEDY });
    let info: Record<string, unknown> | undefined;
    for await (const chunk of llm._streamResponseChunks("Hello", {} as never)) info = chunk.generationInfo;
    assert.equal(info?.model, "standard");
  });
});

Deno.test("standard integration: stop as a call option and as a constructor field", async () => {
  await withModel(async (model) => {
    const free = await new ChatKvfold({ model, temperature: 0, maxTokens: 24, ignoreEos: true }).invoke("hi");
    // A stop string taken from the free reply: both ways end the reply right before it.
    const stop = free.text.slice(4, 6);
    assert.ok(stop.length === 2, `reply too short: ${JSON.stringify(free.text)}`);
    const expected = free.text.slice(0, free.text.indexOf(stop));
    const byCall = await new ChatKvfold({ model, temperature: 0, maxTokens: 24, ignoreEos: true }).invoke(
      "hi",
      {
        stop: [stop],
      },
    );
    assert.ok(byCall instanceof AIMessage);
    assert.equal(byCall.text, expected);
    const byField = await new ChatKvfold({
      model,
      temperature: 0,
      maxTokens: 24,
      ignoreEos: true,
      stop: [stop],
    })
      .invoke("hi");
    assert.equal(byField.text, expected);
  });
});

Deno.test("standard integration: text content blocks read as the same string", async () => {
  await withModel(async (model) => {
    const chat = new ChatKvfold({ model, ...GREEDY });
    const plain = await chat.invoke([new HumanMessage("Describe the harbour.")]);
    const blocks = await chat.invoke([
      new HumanMessage({ content: [{ type: "text", text: "Describe the harbour." }] }),
    ]);
    assert.equal(blocks.text, plain.text);
    const split = await chat.invoke([
      new HumanMessage({
        content: [{ type: "text", text: "Describe " }, { type: "text", text: "the harbour." }],
      }),
    ]);
    assert.equal(split.text, plain.text);
    assert.equal(
      await chat.getNumTokens([{ type: "text", text: "Describe the harbour." }]),
      await chat.getNumTokens("Describe the harbour."),
    );
  });
});

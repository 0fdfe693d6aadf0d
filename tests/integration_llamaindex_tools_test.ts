// Tool calling and structured output of the LlamaIndex KvfoldLLM on a random test model: chat with
// tools returns `options.toolCall` whose inputs validate against the tools' parameters (checked by
// an independent validator and by the tools' own zod schemas when they run), `llm.exec` runs a tool
// round, a LlamaIndex FunctionAgent (`agent()` of @llamaindex/workflow) runs to completion with a
// step bound, and `responseFormat` (zod or JSON Schema) constrains chat, complete and exec.
import assert from "node:assert/strict";
import { Validator } from "npm:@cfworker/json-schema@4.1.6";
import { z } from "npm:zod@4.6.7";
import { tool } from "npm:@llamaindex/core@0.6.22/tools";
import { agent } from "npm:@llamaindex/workflow@1.1.24";
import type { Model } from "../mod.ts";
import { KvfoldLLM } from "../integrations/llamaindex/mod.ts";
import { testEngine, testModel } from "./_fixtures.ts";

const SAMPLED = { temperature: 1, topK: 0, topP: 1, seed: 5, maxTokens: 128 } as const;

const addSchema = z.object({ a: z.number().int(), b: z.number().int() });
const weatherSchema = z.object({ city: z.string().max(20) });

function tools(log: string[]) {
  return [
    tool({
      name: "add",
      description: "Add two integers.",
      parameters: addSchema,
      execute: ({ a, b }) => {
        log.push(`add ${a} ${b}`);
        return String(a + b);
      },
    }),
    tool({
      name: "get_weather",
      description: "The weather in a city.",
      parameters: weatherSchema,
      execute: ({ city }) => {
        log.push(`weather ${city}`);
        return `Sunny in ${city}.`;
      },
    }),
  ];
}

function validates(schema: z.ZodType, value: unknown): void {
  const json = z.toJSONSchema(schema) as Record<string, unknown>;
  const result = new Validator(json as never, "2020-12").validate(value);
  assert.ok(result.valid, `${JSON.stringify(value)}: ${JSON.stringify(result.errors[0])}`);
  schema.parse(value);
}

async function withModel(fn: (model: Model) => Promise<void>): Promise<void> {
  using model = await (await testEngine()).loadModel(await testModel("llama-tools", { seed: 13 }));
  await fn(model);
}

type ToolCallOptions = { toolCall: { id: string; name: string; input: Record<string, unknown> }[] };

Deno.test("llamaindex tools: supportToolCall, and chat({ tools }) returns options.toolCall with valid inputs", async () => {
  await withModel(async (model) => {
    const llm = new KvfoldLLM({ model, ...SAMPLED });
    assert.equal(llm.supportToolCall, true);
    assert.equal(llm.metadata.structuredOutput, true);
    const log: string[] = [];
    for (const seed of [1, 2, 3, 4]) {
      const response = await llm.chat({
        messages: [{ role: "user", content: "Add 2 and 3, or tell me the weather in Oslo." }],
        tools: tools(log),
        additionalChatOptions: { toolChoice: "any", seed },
      });
      const calls = (response.message.options as ToolCallOptions).toolCall;
      assert.equal(calls.length, 1);
      const [call] = calls;
      assert.match(call.id, /^call_/);
      validates(call.name === "add" ? addSchema : weatherSchema, call.input);
      assert.ok(["add", "get_weather"].includes(call.name));
    }
    // Streaming: the calls arrive on a chunk's options.
    const stream = await llm.chat({
      messages: [{ role: "user", content: "Weather in Rome?" }],
      tools: tools(log),
      stream: true,
      additionalChatOptions: { toolChoice: "get_weather" },
    });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    const withCalls = chunks.find((c) => (c.options as ToolCallOptions | undefined)?.toolCall);
    assert.ok(withCalls);
    const [call] = (withCalls.options as ToolCallOptions).toolCall;
    assert.equal(call.name, "get_weather");
    validates(weatherSchema, call.input);
    // toolChoice "none": text.
    const text = await llm.chat({
      messages: [{ role: "user", content: "Hi" }],
      tools: tools(log),
      additionalChatOptions: { toolChoice: "none", maxTokens: 6, ignoreEos: true },
    });
    assert.equal(text.message.options, undefined);
    assert.notEqual(text.message.content, "");
    await assert.rejects(
      llm.chat({
        messages: [{ role: "user", content: "x" }],
        tools: tools(log),
        additionalChatOptions: { toolChoice: "nope" },
      }),
      TypeError,
    );
  });
});

Deno.test("llamaindex tools: llm.exec runs a tool round and the history round-trips into the next prompt", async () => {
  await withModel(async (model) => {
    const llm = new KvfoldLLM({ model, ...SAMPLED, toolChoice: "any" });
    const log: string[] = [];
    const bound = tools(log);
    const first = await llm.exec({ messages: [{ role: "user", content: "What is 2 + 3?" }], tools: bound });
    assert.equal(first.toolCalls.length, 1);
    assert.equal(log.length, 1, "the tool ran on the call's input");
    assert.equal(first.newMessages.length, 2); // the call and its result
    const seen: string[] = [];
    const original = model.tokenizer.encodeChat.bind(model.tokenizer);
    model.tokenizer.encodeChat = (messages, options) => {
      seen.push(model.tokenizer.applyChatTemplate(messages, options));
      return original(messages, options);
    };
    try {
      const final = await llm.chat({
        messages: [{ role: "user", content: "What is 2 + 3?" }, ...first.newMessages],
        tools: bound,
        additionalChatOptions: { toolChoice: "none", maxTokens: 8, ignoreEos: true },
      });
      assert.notEqual(final.message.content, "");
    } finally {
      model.tokenizer.encodeChat = original;
    }
    const call = first.toolCalls[0];
    assert.match(
      seen[0],
      new RegExp(`<\\|assistant\\|>\\n\\{"tool_calls":\\[\\{"name":"${call.name}","arguments":`),
    );
    assert.match(seen[0], new RegExp(`<\\|user\\|>\\nTool ${call.name} \\(call ${call.id}\\) returned: `));
  });
});

Deno.test("llamaindex tools: a FunctionAgent with two tools runs to completion (tool calls forced, then an answer)", async () => {
  await withModel(async (model) => {
    const llm = new KvfoldLLM({ model, ...SAMPLED });
    // A random model answers only when told to: the first two steps must call, later ones answer.
    let steps = 0;
    const chat = llm.chat.bind(llm);
    // deno-lint-ignore no-explicit-any
    (llm as any).chat = (params: any) =>
      chat({
        ...params,
        additionalChatOptions: {
          ...params.additionalChatOptions,
          toolChoice: steps++ < 2 ? "any" : "none",
          maxTokens: 96,
        },
      });
    const log: string[] = [];
    const workflow = agent({ llm, tools: tools(log), timeout: 120 });
    const result = await workflow.run("What is 2 + 3, and the weather in Oslo?");
    assert.equal(steps, 3);
    assert.equal(log.length, 2, log.join("; "));
    assert.equal(typeof result.data.result, "string");
  });
});

Deno.test("llamaindex structured output: responseFormat (zod or JSON Schema) in chat, complete and exec", async () => {
  await withModel(async (model) => {
    const llm = new KvfoldLLM({ model, ...SAMPLED });
    const person = z.object({ name: z.string().max(12), age: z.number().int().min(0).max(120) });
    for (const seed of [1, 2, 3]) {
      const r = await llm.chat({
        messages: [{ role: "user", content: "Who?" }],
        responseFormat: person,
        additionalChatOptions: { seed },
      });
      validates(person, JSON.parse(r.message.content as string));
    }
    const json = {
      type: "object",
      properties: { ok: { type: "boolean" } },
      required: ["ok"],
      additionalProperties: false,
    };
    const c = await llm.complete({ prompt: "Ok?", responseFormat: json });
    assert.equal(typeof JSON.parse(c.text).ok, "boolean");
    const e = await llm.exec({ messages: [{ role: "user", content: "Who?" }], responseFormat: person });
    validates(person, e.object);
  });
});

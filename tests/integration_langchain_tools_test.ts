// Tool calling and structured output of ChatKvfold, making the checks of LangChain.js's standard
// unit and integration suites (internal/standard-tests/src: testChatModelWithBindTools,
// testChatModelWithStructuredOutput, testToolCalling, testBindToolsWithRunnableToolLike,
// testBindToolsWithOpenAIFormattedTools, testToolMessageHistories{String,List}Content,
// testStructuredFewShotExamples, testWithStructuredOutput(IncludeRaw), testStreamTokensWithToolCalls,
// testModelCanUseToolUseAIMessage(WithStreaming), testInvokeMoreComplexTools) on a random test model:
// where a suite checks the values a trained model would choose, this file checks that the arguments
// validate against the tool's schema (the random model's choice is forced with tool_choice). Plus an
// agent loop with two tools that runs to completion.
import assert from "node:assert/strict";
import { Validator } from "npm:@cfworker/json-schema@4.1.6";
import { z } from "npm:zod@4.6.7";
import {
  AIMessage,
  type AIMessageChunk,
  type BaseMessage,
  HumanMessage,
  SystemMessage,
  ToolMessage,
} from "npm:@langchain/core@1.4.0/messages";
import { StructuredTool, tool } from "npm:@langchain/core@1.4.0/tools";
import { ChatPromptTemplate } from "npm:@langchain/core@1.4.0/prompts";
import { RunnableLambda } from "npm:@langchain/core@1.4.0/runnables";
import { BaseCallbackHandler } from "npm:@langchain/core@1.4.0/callbacks/base";
import { toJsonSchema } from "npm:@langchain/core@1.4.0/utils/json_schema";
import { concat } from "npm:@langchain/core@1.4.0/utils/stream";
import type { Model } from "../mod.ts";
import { ChatKvfold, KvfoldLLM } from "../integrations/langchain/mod.ts";
import { throwsKvfold } from "./_kvfold_asserts.ts";
import { testEngine, testModel } from "./_fixtures.ts";

const adderSchema = z.object({
  a: z.number().int().describe("The first integer to add."),
  b: z.number().int().describe("The second integer to add."),
}).describe("Add two integers");

class AdderTool extends StructuredTool {
  name = "AdderTool";
  description = "Add two integers";
  schema = adderSchema;
  _call(input: z.infer<typeof adderSchema>) {
    return Promise.resolve(JSON.stringify({ result: input.a + input.b }));
  }
}

const person = z.object({ name: z.string().describe("Name of the person"), age: z.number().int().positive() })
  .describe("A person");

const MATH_ADDITION_PROMPT = ChatPromptTemplate.fromMessages([
  ["system", "You are bad at math and must ALWAYS call the {toolName} function."],
  ["human", "What is the sum of 1836281973 and 19973286?"],
]);

const weatherSchema = z.object({ location: z.string().describe("The location to get the weather for.") });
const weatherTool = tool((_) => "The weather in San Francisco is 70 degrees and sunny.", {
  name: "get_current_weather",
  schema: weatherSchema,
  description: "Get the current weather for a location.",
});

/** Sampling over every token at temperature 1 (so the random model's picks vary), seeded. */
const SAMPLED = { temperature: 1, topK: 0, topP: 1, seed: 3, maxTokens: 128 } as const;

async function withModel(fn: (model: Model) => Promise<void>): Promise<void> {
  using model = await (await testEngine()).loadModel(await testModel("tools", { seed: 9 }));
  await fn(model);
}

function validates(schema: z.ZodType, args: unknown): void {
  const json = z.toJSONSchema(schema) as Record<string, unknown>;
  const result = new Validator(json as never, "2020-12").validate(args);
  assert.ok(result.valid, `${JSON.stringify(args)}: ${JSON.stringify(result.errors[0])}`);
  schema.parse(args);
}

Deno.test("standard unit: bindTools and withStructuredOutput are defined; the profile declares both", async () => {
  await withModel((model) => {
    const chat = new ChatKvfold({ model, temperature: 0, maxTokens: 100 });
    class PersonTool extends StructuredTool {
      name = "PersonTool";
      description = "A person";
      schema = person;
      _call(input: unknown) {
        return Promise.resolve(JSON.stringify(input));
      }
    }
    assert.ok(chat.bindTools([new PersonTool()]));
    assert.ok(chat.withStructuredOutput(person));
    assert.equal(chat.profile.toolCalling, true);
    assert.equal(chat.profile.structuredOutput, true);
    assert.equal(chat.profile.toolChoice, true);
    return Promise.resolve();
  });
});

Deno.test("standard integration: testToolCalling: one call of AdderTool, args valid, id, type tool_call", async () => {
  await withModel(async (model) => {
    const chat = new ChatKvfold({ model, ...SAMPLED });
    for (const seed of [1, 2, 3]) {
      const result = await chat.bindTools([new AdderTool()], { tool_choice: "any" })
        .invoke("What is the value of adderTool(1, 2)? Use the tool.", { seed } as never);
      assert.ok(result instanceof AIMessage);
      assert.equal(result.tool_calls?.length, 1);
      const call = result.tool_calls![0];
      assert.equal(call.name, "AdderTool");
      validates(adderSchema, call.args);
      assert.match(call.id!, /^call_[0-9a-f]{24}$/);
      assert.equal(call.type, "tool_call");
      // The tool runs on them (LangChain validates its input with the zod schema).
      assert.match(await new AdderTool().invoke(call.args as never), /^\{"result":-?\d+\}$/);
    }
  });
});

Deno.test("standard integration: runnable-like and OpenAI-formatted tools through a prompt template", async () => {
  await withModel(async (model) => {
    const chat = new ChatKvfold({ model, ...SAMPLED });
    const runnableLike = RunnableLambda.from((_) => {}).asTool({
      name: "math_addition",
      description: "Add two integers",
      schema: adderSchema,
    });
    const openai = {
      type: "function",
      function: {
        name: "math_addition",
        description: "Add two integers",
        parameters: toJsonSchema(adderSchema),
      },
    };
    for (const t of [runnableLike, openai]) {
      const result: AIMessage = await MATH_ADDITION_PROMPT.pipe(
        chat.bindTools([t], { tool_choice: "math_addition" }),
      )
        .invoke({ toolName: "math_addition" });
      assert.equal(result.tool_calls?.length, 1);
      const call = result.tool_calls![0];
      assert.equal(call.name, "math_addition");
      assert.equal(typeof call.args.a, "number");
      assert.equal(typeof call.args.b, "number");
      assert.ok(call.id);
      assert.equal(call.type, "tool_call");
    }
  });
});

Deno.test("standard integration: tool message histories (string and list content) and few-shot examples", async () => {
  await withModel(async (model) => {
    const chat = new ChatKvfold({ model, ...SAMPLED, maxTokens: 96 }).bindTools([new AdderTool()]);
    const args = { a: 1, b: 2 };
    const result = await new AdderTool().invoke(args);
    const call = { name: "AdderTool", args, id: "abc123", type: "tool_call" as const };
    const histories: BaseMessage[][] = [
      [
        new HumanMessage("What is 1 + 2"),
        new AIMessage({ content: "", tool_calls: [call] }),
        new ToolMessage(result, "abc123", "AdderTool"),
      ],
      [
        new HumanMessage("What is 1 + 2"),
        new AIMessage({
          content: [{ type: "text", text: "some text" }, {
            type: "tool_use",
            id: "abc123",
            name: "AdderTool",
            input: args,
          }],
          tool_calls: [call],
        }),
        new ToolMessage(result, "abc123", "AdderTool"),
      ],
      [
        new HumanMessage("What is 1 + 2"),
        new AIMessage({ content: "", tool_calls: [call] }),
        new ToolMessage(result, "abc123", "AdderTool"),
        new AIMessage(result),
        new HumanMessage("What is 3 + 4"),
      ],
    ];
    for (const history of histories) {
      const reply = await chat.invoke(history);
      assert.ok(reply instanceof AIMessage);
      assert.notEqual(reply.content, undefined);
      // auto: a call that validates, or an answer.
      for (const c of reply.tool_calls ?? []) validates(adderSchema, c.args);
      assert.ok((reply.tool_calls?.length ?? 0) > 0 || typeof reply.content === "string");
    }
  });
});

Deno.test("standard integration: the prompt shows earlier calls as the envelope and tool results as user turns", async () => {
  await withModel(async (model) => {
    const seen: string[] = [];
    const chat = new ChatKvfold({ model, ...SAMPLED, maxTokens: 96 });
    const original = model.tokenizer.encodeChat.bind(model.tokenizer);
    model.tokenizer.encodeChat = (messages, options) => {
      seen.push(model.tokenizer.applyChatTemplate(messages, options));
      return original(messages, options);
    };
    try {
      await chat.bindTools([new AdderTool()]).invoke([
        new SystemMessage("Be exact."),
        new HumanMessage("What is 1 + 2"),
        new AIMessage({
          content: "",
          tool_calls: [{ name: "AdderTool", args: { a: 1, b: 2 }, id: "c1", type: "tool_call" }],
        }),
        new ToolMessage('{"result":3}', "c1", "AdderTool"),
      ]);
    } finally {
      model.tokenizer.encodeChat = original;
    }
    assert.equal(seen.length, 1);
    const prompt = seen[0];
    assert.match(
      prompt,
      /<\|system\|>\nYou can call these tools\. .*\n- AdderTool: Add two integers Arguments: \{"type":"object"/,
    );
    assert.match(
      prompt,
      /\{"tool_calls":\[\{"name":"<tool name>","arguments":\{\.\.\.\}\}\]\} to call tools, or \{"content":"<your answer>"\}/,
    );
    assert.match(prompt, /\n\nBe exact\.<\/s>/);
    assert.match(
      prompt,
      /<\|assistant\|>\n\{"tool_calls":\[\{"name":"AdderTool","arguments":\{"a":1,"b":2\}\}\]\}<\/s>/,
    );
    assert.match(prompt, /<\|user\|>\nTool AdderTool \(call c1\) returned: \{"result":3\}<\/s>/);
  });
});

Deno.test("standard integration: withStructuredOutput (functionCalling by default, traced; includeRaw; jsonSchema; jsonMode)", async () => {
  await withModel(async (model) => {
    const chat = new ChatKvfold({ model, ...SAMPLED });
    const options: Record<string, unknown>[] = [];
    const handler = BaseCallbackHandler.fromMethods({
      handleChatModelStart(_llm, _messages, _runId, _parent, extra) {
        options.push((extra?.options ?? {}) as Record<string, unknown>);
      },
    });
    const result =
      (await MATH_ADDITION_PROMPT.pipe(chat.withStructuredOutput(adderSchema, { name: "math_addition" }))
        .invoke({ toolName: "math_addition" }, { callbacks: [handler] })) as { a: unknown; b: unknown };
    assert.equal(typeof result.a, "number");
    assert.equal(typeof result.b, "number");
    const format = options[0].ls_structured_output_format as { kwargs: { method: string }; schema: unknown };
    assert.equal(format.kwargs.method, "functionCalling");
    assert.deepEqual(format.schema, toJsonSchema(adderSchema));

    const raw = await MATH_ADDITION_PROMPT.pipe(
      chat.withStructuredOutput(adderSchema, { name: "math_addition", includeRaw: true }),
    ).invoke({ toolName: "math_addition" });
    assert.ok(raw.raw instanceof AIMessage);
    assert.equal(typeof raw.parsed.a, "number");
    assert.equal(typeof raw.parsed.b, "number");

    for (const seed of [1, 2, 3, 4]) {
      const viaSchema = await chat.withStructuredOutput(person, { method: "jsonSchema" }).invoke(
        "Who?",
        { seed } as never,
      );
      validates(person, viaSchema);
    }
    const plainSchema = {
      type: "object",
      properties: { ok: { type: "boolean" } },
      required: ["ok"],
      additionalProperties: false,
    };
    const viaPlain = await chat.withStructuredOutput(plainSchema, { method: "jsonSchema" }).invoke("Ok?");
    assert.equal(typeof viaPlain.ok, "boolean");
    const anyJson = await chat.withStructuredOutput(plainSchema, { method: "jsonMode", includeRaw: true })
      .invoke("Ok?");
    assert.doesNotThrow(() => JSON.parse((anyJson.raw as AIMessage).text));
  });
});

Deno.test("standard integration: testStreamTokensWithToolCalls: streamed chunks concat to a tool call with usage", async () => {
  await withModel(async (model) => {
    const chat = new ChatKvfold({ model, ...SAMPLED });
    const stream = await MATH_ADDITION_PROMPT.pipe(chat.bindTools([new AdderTool()], { tool_choice: "any" }))
      .stream({ toolName: "math_addition" });
    let result: AIMessageChunk | undefined;
    let chunks = 0;
    for await (const chunk of stream) {
      chunks++;
      result = result ? result.concat(chunk) : chunk;
    }
    assert.ok(result && chunks >= 2);
    assert.equal(result.tool_calls?.[0]?.name, "AdderTool");
    validates(adderSchema, result.tool_calls![0].args);
    assert.equal(result.tool_call_chunks?.[0]?.args, JSON.stringify(result.tool_calls![0].args));
    assert.ok(result.usage_metadata!.input_tokens > 0);
    assert.ok(result.usage_metadata!.output_tokens > 0);
  });
});

Deno.test("standard integration: the model uses its own tool-call AIMessage in a follow-up (invoke and stream)", async () => {
  await withModel(async (model) => {
    const chat = new ChatKvfold({ model, ...SAMPLED });
    for (const streaming of [false, true]) {
      const run = async (messages: BaseMessage[], toolChoice: string) => {
        const bound = chat.bindTools([weatherTool], { tool_choice: toolChoice });
        if (!streaming) return await bound.invoke(messages);
        let out: AIMessageChunk | undefined;
        for await (const chunk of await bound.stream(messages)) out = out ? concat(out, chunk) : chunk;
        return out!;
      };
      const messages: BaseMessage[] = [
        new HumanMessage(
          "What's the weather like in San Francisco right now? Use the 'get_current_weather' tool.",
        ),
      ];
      const result = await run(messages, "any");
      assert.equal(result.tool_calls?.[0]?.name, "get_current_weather");
      validates(weatherSchema, result.tool_calls![0].args);
      messages.push(result);
      messages.push(
        new ToolMessage({
          tool_call_id: result.tool_calls![0].id ?? "",
          name: "get_current_weather",
          content: await weatherTool.invoke(result.tool_calls![0].args as never),
        }),
      );
      // A random model answers only when told to: tool_choice "none" (the suite's trained model chooses to).
      const final = await run(messages, "none");
      assert.notEqual(final.content, "");
      assert.deepEqual(final.tool_calls ?? [], []);
    }
  });
});

Deno.test("standard integration: testInvokeMoreComplexTools: an enum, nested object and a record of unknowns", async () => {
  await withModel(async (model) => {
    const complexSchema = z.object({
      decision: z.enum(["UseAPI", "UseFallback"]),
      explanation: z.string(),
      apiDetails: z.object({
        serviceName: z.string(),
        endpointName: z.string(),
        parameters: z.record(z.string(), z.unknown()),
        extractionPath: z.string(),
      }),
    });
    const chat = new ChatKvfold({ model, ...SAMPLED, maxTokens: 256 });
    for (const seed of [1, 2]) {
      const result = await chat.withStructuredOutput(complexSchema, { name: "service_tool" })
        .invoke("Use the service_tool tool.", { seed } as never);
      assert.ok(["UseAPI", "UseFallback"].includes(result.decision));
      assert.equal(typeof result.explanation, "string");
      assert.equal(typeof result.apiDetails, "object");
      validates(complexSchema, result);
    }
  });
});

Deno.test("tools: tool_choice none writes text; content blocks in; a tool schema the grammar cannot express is refused", async () => {
  await withModel(async (model) => {
    const chat = new ChatKvfold({ model, ...SAMPLED, maxTokens: 8, ignoreEos: true });
    const plain = await chat.bindTools([new AdderTool()], { tool_choice: "none" })
      .invoke([
        new HumanMessage({ content: [{ type: "text", text: "Hello" }, { type: "text", text: "there" }] }),
      ]);
    assert.deepEqual(plain.tool_calls, []);
    assert.notEqual(plain.text, "");
    const email = tool(() => "", { name: "mail", description: "send", schema: z.object({ to: z.email() }) });
    throwsKvfold(
      () => chat.bindTools([email]),
      "UNSUPPORTED",
      /"format" at #\/anyOf\/0\/properties\/tool_calls\/items\/properties\/arguments\/properties\/to/,
    );
    assert.throws(() => chat.bindTools([new AdderTool()], { tool_choice: "Nope" }), TypeError);
  });
});

Deno.test("tools: a LangChain agent loop with two tools runs to completion, every call valid and executed", async () => {
  await withModel(async (model) => {
    const addTool = tool(({ a, b }) => String(a + b), {
      name: "add",
      description: "Add two integers.",
      schema: z.object({ a: z.number().int(), b: z.number().int() }),
    });
    const tools = { add: addTool, get_current_weather: weatherTool } as const;
    const schemas = {
      add: z.object({ a: z.number().int(), b: z.number().int() }),
      get_current_weather: weatherSchema,
    };
    for (const seed of [1, 2, 3]) {
      const chat = new ChatKvfold({ model, ...SAMPLED, seed });
      const messages: BaseMessage[] = [
        new SystemMessage("Use the tools, then answer."),
        new HumanMessage("What is 2 + 3, and what is the weather in Oslo?"),
      ];
      const MAX_STEPS = 4;
      let calls = 0;
      let answer: AIMessage | undefined;
      for (let step = 0; step < MAX_STEPS && !answer; step++) {
        // The first step must call a tool, the last must answer; in between the model chooses.
        const choice = step === 0 ? "any" : step === MAX_STEPS - 1 ? "none" : "auto";
        const reply = await chat.bindTools(Object.values(tools), {
          tool_choice: choice,
          parallel_tool_calls: 2,
        })
          .invoke(messages);
        messages.push(reply);
        if (!reply.tool_calls?.length) {
          answer = reply;
          break;
        }
        assert.ok(reply.tool_calls.length <= 2);
        for (const call of reply.tool_calls) {
          const name = call.name as keyof typeof tools;
          assert.ok(name in tools, call.name);
          validates(schemas[name], call.args);
          const output = await (tools[name] as { invoke(a: unknown): Promise<string> }).invoke(call.args);
          messages.push(new ToolMessage({ tool_call_id: call.id!, name, content: output }));
          calls++;
        }
      }
      assert.ok(answer, "the loop ended with an answer");
      assert.ok(calls >= 1);
      assert.ok(messages.some((m) => m.getType() === "tool"));
    }
  });
});

Deno.test("tools: a chat template that takes tools gets them, assistant tool_calls and tool messages in its own terms", async () => {
  const dir = await testModel("tools-template", { seed: 9 });
  const configPath = `${dir}/tokenizer_config.json`;
  const config = JSON.parse(await Deno.readTextFile(configPath));
  config.chat_template =
    "{% if tools %}[TOOLS]{% for t in tools %}{{ t.function.name }};{% endfor %}[/TOOLS]{% endif %}" +
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}" +
    "{% if m.tool_calls %}{% for c in m.tool_calls %}[CALL {{ c.function.name }} {{ c.id }}]{% endfor %}{% endif %}" +
    "{% if m.tool_call_id %}[FOR {{ m.tool_call_id }}]{% endif %}</{{ m.role }}>{% endfor %}" +
    "{% if add_generation_prompt %}<assistant>{% endif %}";
  await Deno.writeTextFile(configPath, JSON.stringify(config));
  using model = await (await testEngine()).loadModel(dir);
  const seen: string[] = [];
  const original = model.tokenizer.encodeChat.bind(model.tokenizer);
  model.tokenizer.encodeChat = (messages, options) => {
    seen.push(model.tokenizer.applyChatTemplate(messages, options));
    return original(messages, options);
  };
  const chat = new ChatKvfold({ model, ...SAMPLED });
  const reply = await chat.bindTools([new AdderTool(), weatherTool], { tool_choice: "any" }).invoke([
    new HumanMessage("What is 1 + 2"),
    new AIMessage({
      content: "",
      tool_calls: [{ name: "AdderTool", args: { a: 1, b: 2 }, id: "c1", type: "tool_call" }],
    }),
    new ToolMessage('{"result":3}', "c1", "AdderTool"),
  ]);
  model.tokenizer.encodeChat = original;
  assert.match(
    seen[0],
    /^\[TOOLS\]AdderTool;get_current_weather;\[\/TOOLS\]<system>Reply with one JSON object that calls a tool: /,
  );
  assert.doesNotMatch(seen[0], /You can call these tools/, "the template lists the tools itself");
  assert.match(
    seen[0],
    /<assistant>\[CALL AdderTool c1\]<\/assistant><tool>\{"result":3\}\[FOR c1\]<\/tool><assistant>$/,
  );
  assert.equal(reply.tool_calls?.length, 1);
});

Deno.test('tools: the LangChain KvfoldLLM takes jsonSchema (and "json") as a call option', async () => {
  await withModel(async (model) => {
    const llm = new KvfoldLLM({ model, ...SAMPLED });
    const schema = {
      type: "object",
      properties: { n: { type: "integer", minimum: 1, maximum: 9 } },
      required: ["n"],
      additionalProperties: false,
    };
    for (const seed of [1, 2, 3]) {
      const text = await llm.invoke("A digit:", { jsonSchema: schema, seed } as never);
      assert.ok(new Validator(schema as never, "2020-12").validate(JSON.parse(text)).valid, text);
    }
    JSON.parse(await llm.invoke("Anything:", { jsonSchema: "json" } as never));
  });
});

/**
 * Tool calling for {@linkcode ChatKvfold}: tools in LangChain's forms (LangChain tools, zod-schema
 * tools, OpenAI tool objects) as JSON Schemas, the reply envelope the model is held to by
 * constrained decoding, the prompt that describes the tools, and the reply parsed back into
 * `AIMessage.tool_calls`.
 *
 * The default format (models whose chat template does not take `tools`): a system message lists
 * each tool with its description and the JSON Schema of its arguments, and asks for one JSON object,
 * `{"tool_calls":[{"name":"<tool>","arguments":{...}}]}` to call tools or `{"content":"<text>"}` to
 * answer. Generation is constrained to exactly that envelope (with each tool's own arguments
 * schema), so the reply always parses and the arguments always validate. Earlier tool calls are
 * shown to the model in the same envelope, and tool results as user turns
 * (`Tool <name> (call <id>) returned: <content>`). When the template does take `tools` (it reads a
 * `tools` variable), the tools, assistant `tool_calls` and `tool` messages go to the template in the
 * Hugging Face format instead, and the reply is still held to the envelope.
 *
 * @module
 */

import type { ChatMessage, JsonSchema, Model } from "../../mod.ts";
import {
  type BaseMessage,
  type BindToolsInput,
  convertToOpenAITool,
  type ToolCall,
  type ToolChoice,
} from "./_deps.ts";

/** A tool as the model sees it. */
export interface KvfoldToolSpec {
  name: string;
  description: string;
  /** JSON Schema of the arguments object. */
  parameters: Record<string, unknown>;
}

/** What the model must do with its tools: answer or call (`auto`), call some tool (`any`), call this one, or no tools. */
export type NormalizedToolChoice = { kind: "auto" } | { kind: "any" } | { kind: "none" } | {
  kind: "tool";
  name: string;
};

/**
 * Tools in any LangChain form (a `StructuredTool`, `tool(...)`, a runnable's `asTool`, an OpenAI
 * `{type: "function", function}` object, `{name, description, schema}`) as specs.
 */
export function toolSpecs(tools: readonly BindToolsInput[]): KvfoldToolSpec[] {
  const specs = tools.map((t, i) => {
    // deno-lint-ignore no-explicit-any
    const f = (convertToOpenAITool(t as any) as unknown as { function?: Record<string, unknown> }).function;
    if (!f || typeof f.name !== "string" || f.name === "") {
      throw new TypeError(
        `Cannot bind tools: tool ${i} has no name (pass a LangChain tool or an OpenAI tool object)`,
      );
    }
    const parameters = f.parameters && typeof f.parameters === "object"
      ? f.parameters as Record<string, unknown>
      : { type: "object", properties: {} };
    return { name: f.name, description: typeof f.description === "string" ? f.description : "", parameters };
  });
  const names = new Set<string>();
  for (const s of specs) {
    if (names.has(s.name)) throw new TypeError(`Cannot bind tools: two tools are named "${s.name}"`);
    names.add(s.name);
  }
  return specs;
}

/** LangChain's `tool_choice` values, checked against the tools. */
export function normalizeToolChoice(
  choice: ToolChoice | undefined,
  specs: readonly KvfoldToolSpec[],
): NormalizedToolChoice {
  if (choice === undefined || choice === "auto") return { kind: "auto" };
  if (choice === "any" || choice === "required") return { kind: "any" };
  if (choice === "none") return { kind: "none" };
  const name = typeof choice === "string"
    ? choice
    : (choice as { function?: { name?: unknown }; name?: unknown }).function?.name ??
      (choice as { name?: unknown }).name;
  if (typeof name !== "string" || !specs.some((s) => s.name === name)) {
    throw new TypeError(
      `Cannot call tools: tool_choice ${
        JSON.stringify(choice)
      } is not "auto", "any", "none" or a bound tool's name`,
    );
  }
  return { kind: "tool", name };
}

/**
 * The JSON Schema of the reply: `{"tool_calls":[...]}` (one call, or up to `parallel` calls) whose
 * items are `{"name": <a tool>, "arguments": <its schema>}`, or with `auto` also `{"content": "..."}`.
 */
export function replySchema(
  specs: readonly KvfoldToolSpec[],
  choice: NormalizedToolChoice,
  parallel: number,
): JsonSchema {
  const allowed = choice.kind === "tool" ? specs.filter((s) => s.name === choice.name) : specs;
  const call = (s: KvfoldToolSpec) => ({
    type: "object",
    properties: { name: { const: s.name }, arguments: withoutDialect(s.parameters) },
    required: ["name", "arguments"],
    additionalProperties: false,
  });
  const calls = {
    type: "object",
    properties: {
      tool_calls: {
        type: "array",
        items: allowed.length === 1 ? call(allowed[0]) : { anyOf: allowed.map(call) },
        minItems: 1,
        maxItems: Math.max(1, parallel),
      },
    },
    required: ["tool_calls"],
    additionalProperties: false,
  };
  if (choice.kind !== "auto") return calls;
  const content = {
    type: "object",
    properties: { content: { type: "string" } },
    required: ["content"],
    additionalProperties: false,
  };
  return { anyOf: [calls, content] };
}

/** A schema embedded in another: `$schema` and `$id` would be misplaced there. */
function withoutDialect(schema: Record<string, unknown>): Record<string, unknown> {
  const { $schema: _s, $id: _i, ...rest } = schema;
  return rest;
}

/** Whether the model's chat template reads a `tools` variable. */
export function templateTakesTools(model: Model): boolean {
  return /\btools\b/.test(model.tokenizer.chatTemplate ?? "");
}

/** The system text of the default format. */
export function toolInstructions(
  specs: readonly KvfoldToolSpec[],
  choice: NormalizedToolChoice,
  listTools: boolean,
): string {
  const allowed = choice.kind === "tool" ? specs.filter((s) => s.name === choice.name) : specs;
  const lines: string[] = [];
  if (listTools) {
    lines.push("You can call these tools. Each takes a JSON object of arguments matching its JSON Schema:");
    for (const s of allowed) {
      lines.push(
        `- ${s.name}: ${s.description || "(no description)"} Arguments: ${
          JSON.stringify(withoutDialect(s.parameters))
        }`,
      );
    }
  }
  const callForm = '{"tool_calls":[{"name":"<tool name>","arguments":{...}}]}';
  lines.push(
    choice.kind === "auto"
      ? `Reply with one JSON object: ${callForm} to call tools, or {"content":"<your answer>"} to answer directly.`
      : choice.kind === "tool"
      ? `Reply with one JSON object that calls the tool ${choice.name}: ${callForm}`
      : `Reply with one JSON object that calls a tool: ${callForm}`,
  );
  return lines.join("\n");
}

/** Template messages may carry tool fields beside role and content. */
export type ToolChatMessage = ChatMessage & {
  tool_calls?: {
    id?: string;
    type: "function";
    function: { name: string; arguments: Record<string, unknown> };
  }[];
  tool_call_id?: string;
  name?: string;
};

/**
 * A LangChain message for the prompt, tool calls and results included: in the template's own
 * terms when it takes tools, else in the default format's.
 */
export function toolChatMessage(
  message: BaseMessage,
  templateTools: boolean,
  plain: (m: BaseMessage) => ChatMessage,
): ToolChatMessage {
  const type = message.getType();
  if (type === "tool") {
    const m = message as BaseMessage & { tool_call_id?: string; name?: string };
    if (templateTools) {
      return { role: "tool", content: message.text, tool_call_id: m.tool_call_id, name: m.name };
    }
    return {
      role: "user",
      content: `Tool ${m.name ?? "result"} (call ${m.tool_call_id ?? "?"}) returned: ${message.text}`,
    };
  }
  const calls = type === "ai" ? (message as BaseMessage & { tool_calls?: ToolCall[] }).tool_calls ?? [] : [];
  if (calls.length === 0) return plain(message);
  if (templateTools) {
    return {
      role: "assistant",
      content: message.text,
      tool_calls: calls.map((c) => ({
        id: c.id,
        type: "function",
        function: { name: c.name, arguments: c.args },
      })),
    };
  }
  return {
    role: "assistant",
    content: JSON.stringify({ tool_calls: calls.map((c) => ({ name: c.name, arguments: c.args })) }),
  };
}

/** The tools in the Hugging Face form chat templates read (`[{type: "function", function}]`). */
export function templateTools(specs: readonly KvfoldToolSpec[]): Record<string, unknown>[] {
  return specs.map((s) => ({
    type: "function",
    function: { name: s.name, description: s.description, parameters: withoutDialect(s.parameters) },
  }));
}

/** The messages with the default format's instructions opening the first system message. */
export function withInstructions(
  messages: readonly ToolChatMessage[],
  instructions: string,
): ToolChatMessage[] {
  if (messages[0]?.role === "system") {
    return [{ ...messages[0], content: `${instructions}\n\n${messages[0].content}` }, ...messages.slice(1)];
  }
  return [{ role: "system", content: instructions }, ...messages];
}

/** A reply parsed: text content and tool calls (each with a fresh id). */
export interface ParsedReply {
  content: string;
  toolCalls: ToolCall[];
}

/**
 * Reads the envelope. Text that is not one (a reply cut by a stop string, or generated without
 * constraint under `tool_choice: "none"`) is content as it stands.
 */
export function parseReply(text: string): ParsedReply {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { content: text, toolCalls: [] };
  }
  if (typeof value !== "object" || value === null) return { content: text, toolCalls: [] };
  const v = value as { tool_calls?: unknown; content?: unknown };
  if (Array.isArray(v.tool_calls)) {
    const toolCalls = v.tool_calls.map((c: { name?: unknown; arguments?: unknown }) => ({
      id: `call_${crypto.randomUUID().replaceAll("-", "").slice(0, 24)}`,
      name: String(c.name),
      args: (c.arguments ?? {}) as Record<string, unknown>,
      type: "tool_call" as const,
    }));
    return { content: "", toolCalls };
  }
  if (typeof v.content === "string") return { content: v.content, toolCalls: [] };
  return { content: text, toolCalls: [] };
}

/** Call options that bind tools or constrain the reply (see {@linkcode ChatKvfold.bindTools}). */
export interface KvfoldToolCallOptions {
  /** Tools the model may call (set by `bindTools`). */
  tools?: readonly (KvfoldToolSpec | BindToolsInput)[];
  /** `"auto"` (default), `"any"` / `"required"`, `"none"`, or a tool's name (or `{type: "function", function: {name}}`). */
  tool_choice?: ToolChoice;
  /** Calls one reply may make: false (default) one, true up to 8, or a number. */
  parallel_tool_calls?: boolean | number;
  /** Constrains the reply to compact JSON valid against this JSON Schema (`"json"`: any JSON value). */
  jsonSchema?: JsonSchema | "json";
}

/** The prompt messages and constraint of one call, tools considered. */
export interface ToolPrompt {
  messages: ToolChatMessage[];
  templateTools?: Record<string, unknown>[];
  jsonSchema?: JsonSchema | "json";
  /** The reply is a tool envelope to parse (tools bound, choice not "none"). */
  envelope: boolean;
}

function isSpec(t: unknown): t is KvfoldToolSpec {
  return typeof t === "object" && t !== null && typeof (t as KvfoldToolSpec).name === "string" &&
    typeof (t as KvfoldToolSpec).parameters === "object" && !("schema" in t) && !("function" in t) &&
    !("invoke" in t);
}

/** Specs of the `tools` call option, whichever form it holds. */
export function boundSpecs(tools: KvfoldToolCallOptions["tools"]): KvfoldToolSpec[] {
  if (!tools?.length) return [];
  return tools.every(isSpec) ? [...tools as KvfoldToolSpec[]] : toolSpecs(tools as BindToolsInput[]);
}

/**
 * The prompt of a call: messages (tool calls and results in the template's terms or the default
 * format's), the template's `tools`, and the reply's JSON Schema.
 */
export function toolPrompt(
  model: Model,
  messages: readonly BaseMessage[],
  options: KvfoldToolCallOptions,
  plain: (m: BaseMessage) => ChatMessage,
): ToolPrompt {
  const specs = boundSpecs(options.tools);
  const hasToolMessages = messages.some((m) =>
    m.getType() === "tool" || ((m as BaseMessage & { tool_calls?: unknown[] }).tool_calls?.length ?? 0) > 0
  );
  if (specs.length === 0 && !hasToolMessages) {
    return { messages: messages.map(plain), jsonSchema: options.jsonSchema, envelope: false };
  }
  const viaTemplate = templateTakesTools(model);
  let out = messages.map((m) => toolChatMessage(m, viaTemplate, plain));
  const choice = normalizeToolChoice(options.tool_choice, specs);
  if (specs.length === 0 || choice.kind === "none") {
    return { messages: out, jsonSchema: options.jsonSchema, envelope: false };
  }
  out = withInstructions(out, toolInstructions(specs, choice, !viaTemplate));
  const p = options.parallel_tool_calls;
  const parallel = p === true ? 8 : typeof p === "number" ? p : 1;
  return {
    messages: out,
    templateTools: viaTemplate ? templateTools(specs) : undefined,
    jsonSchema: replySchema(specs, choice, parallel),
    envelope: true,
  };
}

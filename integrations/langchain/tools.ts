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

import {
  type ChatMessage,
  type JsonSchema,
  type Model,
  type ToolChoiceKind,
  toolInstructions,
  toolReplySchema,
  type ToolSpec,
  withoutDialect,
} from "../../mod.ts";
import {
  type BaseMessage,
  type BindToolsInput,
  convertToOpenAITool,
  type ToolCall,
  type ToolChoice,
} from "./_deps.ts";

/**
 * Tools in any LangChain form (a `StructuredTool`, `tool(...)`, a runnable's `asTool`, an OpenAI
 * `{type: "function", function}` object, `{name, description, schema}`) as specs.
 */
export function toolSpecs(tools: readonly BindToolsInput[]): ToolSpec[] {
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
  specs: readonly ToolSpec[],
): ToolChoiceKind {
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

/** Whether the model's chat template reads a `tools` variable. */
export function templateTakesTools(model: Model): boolean {
  return /\btools\b/.test(model.tokenizer.chatTemplate ?? "");
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
export function templateTools(specs: readonly ToolSpec[]): Record<string, unknown>[] {
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

/** Call options that bind tools or constrain the reply (see {@linkcode ChatKvfold.bindTools}). */
export interface KvfoldToolCallOptions {
  /** Tools the model may call (set by `bindTools`). */
  tools?: readonly (ToolSpec | BindToolsInput)[];
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

function isSpec(t: unknown): t is ToolSpec {
  return typeof t === "object" && t !== null && typeof (t as ToolSpec).name === "string" &&
    typeof (t as ToolSpec).parameters === "object" && !("schema" in t) && !("function" in t) &&
    !("invoke" in t);
}

/** Specs of the `tools` call option, whichever form it holds. */
export function boundSpecs(tools: KvfoldToolCallOptions["tools"]): ToolSpec[] {
  if (!tools?.length) return [];
  return tools.every(isSpec) ? [...tools as ToolSpec[]] : toolSpecs(tools as BindToolsInput[]);
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
    jsonSchema: toolReplySchema(specs, choice, parallel),
    envelope: true,
  };
}

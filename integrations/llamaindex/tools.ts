// Tool calling and structured output for the LlamaIndex KvfoldLLM: LlamaIndex tools (`metadata.name`,
// `description`, `parameters` JSON Schema) and `responseFormat` (zod or JSON Schema) become the
// JSON Schema the reply is held to; tool calls and results in the history are written in kvfold's
// default tool format (see kvfold's `toolInstructions`); the reply becomes `options.toolCall`.

import {
  type ChatMessage as KvfoldChatMessage,
  type JsonSchema,
  parseToolReply,
  type ToolChoiceKind,
  toolInstructions,
  toolReplySchema,
  type ToolSpec,
} from "../../mod.ts";
import { type BaseTool, type ChatMessage, isZodSchema, zodToJsonSchema } from "./_deps.ts";

/** `"auto"` (default: call tools or answer), `"any"` (call one), `"none"`, or a tool's name. */
export type KvfoldToolChoice = "auto" | "any" | "none" | (string & Record<never, never>);

/** The specs of LlamaIndex tools, as the model sees them. */
export function llamaToolSpecs(tools: readonly BaseTool[]): ToolSpec[] {
  return tools.map((t, i) => {
    const m = t?.metadata;
    if (!m || typeof m.name !== "string" || m.name === "") {
      throw new TypeError(`Cannot chat with tools: tool ${i} has no metadata.name`);
    }
    const parameters = m.parameters && typeof m.parameters === "object"
      ? m.parameters as Record<string, unknown>
      : { type: "object", properties: {} };
    return { name: m.name, description: m.description ?? "", parameters };
  });
}

function choiceOf(choice: KvfoldToolChoice | undefined, specs: readonly ToolSpec[]): ToolChoiceKind {
  if (choice === undefined || choice === "auto") return { kind: "auto" };
  if (choice === "any") return { kind: "any" };
  if (choice === "none") return { kind: "none" };
  if (!specs.some((s) => s.name === choice)) {
    throw new TypeError(
      `Cannot chat with tools: toolChoice "${choice}" is not "auto", "any", "none" or a tool's name`,
    );
  }
  return { kind: "tool", name: choice };
}

/** A `responseFormat` (a zod schema or a JSON Schema object) as a JSON Schema. */
export function responseFormatSchema(format: unknown): JsonSchema {
  if (isZodSchema(format)) return zodToJsonSchema(format) as Record<string, unknown>;
  if (typeof format === "object" && format !== null && !Array.isArray(format)) {
    return format as Record<string, unknown>;
  }
  throw new TypeError("Cannot chat: responseFormat is not a zod schema or a JSON Schema object");
}

/** How one call prompts and what its reply is held to. */
export interface LlamaToolCall {
  /** Text for the start of the system message (tools and the reply format); null: none. */
  instructions: string | null;
  jsonSchema?: JsonSchema;
  /** The reply is a tool envelope, read back into `options.toolCall`. */
  envelope: boolean;
}

/** The tools, choice and response format of a call, as instructions and a reply schema. */
export function llamaToolCall(
  tools: readonly BaseTool[] | undefined,
  choice: KvfoldToolChoice | undefined,
  responseFormat: unknown,
  parallel: number,
): LlamaToolCall {
  const specs = llamaToolSpecs(tools ?? []);
  const kind = choiceOf(choice, specs);
  if (specs.length > 0 && kind.kind !== "none") {
    return {
      instructions: toolInstructions(specs, kind, true),
      jsonSchema: toolReplySchema(specs, kind, parallel),
      envelope: true,
    };
  }
  if (responseFormat !== undefined) {
    return { instructions: null, jsonSchema: responseFormatSchema(responseFormat), envelope: false };
  }
  return { instructions: null, envelope: false };
}

type ToolOptions = {
  toolCall?: { id: string; name: string; input: unknown }[];
  toolResult?: { id: string; result: unknown; isError?: boolean; name?: string };
};

/**
 * A LlamaIndex message in the default tool format: an assistant's `options.toolCall` as the
 * envelope, a `options.toolResult` as a user turn naming the tool call it answers.
 */
export function toolTurn(message: ChatMessage, text: string): KvfoldChatMessage | null {
  const options = message.options as ToolOptions | undefined;
  if (options?.toolCall?.length) {
    const calls = options.toolCall.map((c) => ({
      name: c.name,
      arguments: typeof c.input === "string" ? JSON.parse(c.input) : c.input,
    }));
    return { role: "assistant", content: JSON.stringify({ tool_calls: calls }) };
  }
  if (options?.toolResult) {
    const r = options.toolResult;
    const result = typeof r.result === "string" ? r.result : JSON.stringify(r.result);
    return {
      role: "user",
      content: `Tool ${r.name ?? "result"} (call ${r.id}) ${r.isError ? "failed" : "returned"}: ${
        result ?? text
      }`,
    };
  }
  return null;
}

/** The reply of an envelope call as LlamaIndex message options. */
export function replyOptions(
  text: string,
): {
  content: string;
  options?: { toolCall: { id: string; name: string; input: Record<string, unknown> }[] };
} {
  const { content, toolCalls } = parseToolReply(text);
  if (toolCalls.length === 0) return { content };
  return {
    content,
    options: {
      toolCall: toolCalls.map((c) => ({ id: c.id, name: c.name, input: c.args as Record<string, unknown> })),
    },
  };
}

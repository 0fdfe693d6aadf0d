/**
 * The tool-call envelope both framework integrations hold replies to: `{"tool_calls":[{"name":
 * <tool>, "arguments": {...}}]}` (each call's arguments valid against its tool's JSON Schema) or,
 * when the model may answer instead, `{"content": "..."}`; the system text that describes it to a
 * model whose chat template has no tool format; and the reply parsed back.
 *
 * @module
 */

import type { JsonSchema } from "./json_grammar.ts";

/** A tool as the model sees it. */
export interface ToolSpec {
  name: string;
  description: string;
  /** JSON Schema of the arguments object. */
  parameters: Record<string, unknown>;
}

/** What the model must do with its tools: answer or call (`auto`), call some tool (`any`), call this one, or no tools. */
export type ToolChoiceKind = { kind: "auto" } | { kind: "any" } | { kind: "none" } | {
  kind: "tool";
  name: string;
};

/**
 * The JSON Schema of the reply: `{"tool_calls":[...]}` (one call, or up to `parallel` calls) whose
 * items are `{"name": <a tool>, "arguments": <its schema>}`, or with `auto` also `{"content": "..."}`.
 */
export function toolReplySchema(
  specs: readonly ToolSpec[],
  choice: ToolChoiceKind,
  parallel: number,
): JsonSchema {
  const allowed = choice.kind === "tool" ? specs.filter((s) => s.name === choice.name) : specs;
  const call = (s: ToolSpec) => ({
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
export function withoutDialect(schema: Record<string, unknown>): Record<string, unknown> {
  const { $schema: _s, $id: _i, ...rest } = schema;
  return rest;
}

/** The system text of the default format. */
export function toolInstructions(
  specs: readonly ToolSpec[],
  choice: ToolChoiceKind,
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

/** One tool call of a reply, with a fresh id. */
export interface ParsedToolCall {
  id: string;
  name: string;
  args: Record<string, unknown>;
}

/** A reply parsed: text content and tool calls. */
export interface ParsedReply {
  content: string;
  toolCalls: ParsedToolCall[];
}

/**
 * Reads the envelope. Text that is not one (a reply cut by a stop string, or generated without
 * constraint under `tool_choice: "none"`) is content as it stands.
 */
export function parseToolReply(text: string): ParsedReply {
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
    }));
    return { content: "", toolCalls };
  }
  if (typeof v.content === "string") return { content: v.content, toolCalls: [] };
  return { content: text, toolCalls: [] };
}

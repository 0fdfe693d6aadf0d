/**
 * Responses in the OpenAI wire format: whole completions, stream chunks and the server-sent-event
 * framing (`data: {...}\n\n`, ending in `data: [DONE]\n\n`).
 *
 * @module
 */

import type { StopReason } from "../session.ts";
import type { CompletionPlan } from "./completion_plan.ts";
import type { JobResult } from "./job.ts";

/** OpenAI's finish_reason for a stop reason: "length" when cut by a budget, else "stop". */
export function finishReason(reason: StopReason): "stop" | "length" {
  return reason === "max-tokens" || reason === "context-full" ? "length" : "stop";
}

/** OpenAI's usage block. */
export function usage(
  r: JobResult,
): { prompt_tokens: number; completion_tokens: number; total_tokens: number } {
  return {
    prompt_tokens: r.promptTokens,
    completion_tokens: r.generatedTokens,
    total_tokens: r.promptTokens + r.generatedTokens,
  };
}

/** Fields every response and chunk of one request shares. */
export interface ResponseIdentity {
  id: string;
  created: number;
  model: string;
  endpoint: "chat" | "completions";
}

/** A new identity: `chatcmpl-…` or `cmpl-…`, created now (Unix seconds). */
export function responseIdentity(endpoint: "chat" | "completions", model: string): ResponseIdentity {
  const hex = [...crypto.getRandomValues(new Uint8Array(12))].map((b) => b.toString(16).padStart(2, "0"))
    .join("");
  return {
    id: `${endpoint === "chat" ? "chatcmpl" : "cmpl"}-${hex}`,
    created: Math.floor(Date.now() / 1000),
    model,
    endpoint,
  };
}

/** The whole (non-streamed) response body. */
export function completionBody(who: ResponseIdentity, text: string, r: JobResult, plan: CompletionPlan) {
  const head = { id: who.id, created: who.created, model: who.model };
  const finish_reason = finishReason(r.stopReason);
  if (who.endpoint === "chat") {
    return {
      ...head,
      object: "chat.completion",
      choices: [{ index: 0, message: { role: "assistant", content: text }, logprobs: null, finish_reason }],
      usage: usage(r),
      kvfold: plan.info,
    };
  }
  return {
    ...head,
    object: "text_completion",
    choices: [{ index: 0, text, logprobs: null, finish_reason }],
    usage: usage(r),
    kvfold: plan.info,
  };
}

/**
 * One stream chunk: a text delta (`text`), the opening chunk of a chat (`text` undefined, no
 * finish), or the closing chunk (`finish` given, with the kvfold field).
 */
export function streamChunk(
  who: ResponseIdentity,
  text: string | undefined,
  finish?: { reason: StopReason; plan: CompletionPlan },
) {
  const head = { id: who.id, created: who.created, model: who.model };
  const finish_reason = finish ? finishReason(finish.reason) : null;
  const extra = finish ? { kvfold: finish.plan.info } : {};
  if (who.endpoint === "chat") {
    const delta = finish ? {} : text === undefined ? { role: "assistant", content: "" } : { content: text };
    return {
      ...head,
      object: "chat.completion.chunk",
      choices: [{ index: 0, delta, logprobs: null, finish_reason }],
      ...extra,
    };
  }
  return {
    ...head,
    object: "text_completion",
    choices: [{ index: 0, text: text ?? "", logprobs: null, finish_reason }],
    ...extra,
  };
}

/** The usage chunk sent last when `stream_options.include_usage` is set (no choices). */
export function usageChunk(who: ResponseIdentity, r: JobResult) {
  return {
    id: who.id,
    created: who.created,
    model: who.model,
    object: who.endpoint === "chat" ? "chat.completion.chunk" : "text_completion",
    choices: [],
    usage: usage(r),
  };
}

const encoder = new TextEncoder();

/** One server-sent event carrying `data` (JSON, or the literal `[DONE]`). */
export function sseEvent(data: unknown): Uint8Array {
  return encoder.encode(`data: ${data === "[DONE]" ? data : JSON.stringify(data)}\n\n`);
}

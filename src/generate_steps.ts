/**
 * The steps `Session.generate` takes: each decodes the token the last step sampled, then samples
 * one or more tokens. The native step samples and decodes in one `kf_session_generate` call for up
 * to a time budget, so a stream crosses the FFI once per hand-over instead of twice per token.
 *
 * @module
 */

import { alloc, check, sym } from "./_binding.ts";
import { NativeStruct } from "./_abi.ts";
import type { NativeHandle } from "./_handle.ts";

/**
 * Decodes `pending` (when >= 0), then samples up to `maxTokens` tokens, decoding each but the last,
 * for about `budgetMs` (0: one token). Ends early on a stop id or a full cache.
 */
export type GenerateStep = (pending: number, maxTokens: number, budgetMs: number) => Promise<Int32Array>;

/** `streamIntervalMs` checked: default 40, a finite number >= 0. */
export function streamIntervalArg(ms: number | undefined): number {
  if (ms === undefined) return 40;
  if (typeof ms !== "number" || !Number.isFinite(ms) || ms < 0) {
    throw new RangeError(`Cannot generate: streamIntervalMs ${ms} is not a finite number >= 0`);
  }
  return ms;
}

// Tokens one native hand-over holds at most: far more than a time budget lets a CPU sample.
const MAX_TOKENS_PER_STEP = 4096;

/** The native loop: `kf_session_generate` on a session's handle with a sampler. */
export function nativeStep(
  session: NativeHandle,
  sampler: { ptr: Deno.PointerValue },
  stopIds: Iterable<number>,
  signal?: AbortSignal,
): GenerateStep {
  const stops = Int32Array.from(stopIds);
  const stopBuf = stops.length > 0 ? stops : new Int32Array(1); // a buffer, never NULL
  const out = new Int32Array(MAX_TOKENS_PER_STEP);
  const count = new Int32Array(1);
  const params = new NativeStruct("kf_generate_params", sym().kf_generate_default_params());
  return async (pending, maxTokens, budgetMs) => {
    params.set("pending", pending);
    params.set("max_tokens", Math.min(maxTokens, MAX_TOKENS_PER_STEP));
    params.set("budget_us", Math.round(budgetMs * 1000));
    await session.runControlled(
      (ptr, ctl) =>
        sym().kf_session_generate(ptr, sampler.ptr, params.buf, stopBuf, stops.length, out, count, ctl.buf),
      { signal },
    );
    return out.slice(0, count[0]);
  };
}

/**
 * One token per step: `decode` runs the pending token (through a batcher, say), then the sampler
 * picks from the session's logits.
 */
export function tokenStep(
  session: NativeHandle,
  sampler: { ptr: Deno.PointerValue },
  decode: (id: number) => Promise<void>,
): GenerateStep {
  const out = alloc(4);
  return async (pending) => {
    if (pending >= 0) await decode(pending);
    check(sym().kf_sampler_sample(sampler.ptr, session.ptr, out));
    return new Int32Array(out.buffer.slice(0, 4));
  };
}

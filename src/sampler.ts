/**
 * The native sampler: sampling settings, creating a sampler from them, and sampling from given
 * logits (the same sampler `Session.generate` uses).
 *
 * @module
 */

import { alloc, check, native, outPointer, sym } from "./_binding.ts";
import { int32Arg, tokenIdsArg, uint64Arg } from "./_int_args.ts";
import { NativeStruct } from "./_abi.ts";

/** Sampling settings. Temperature 0 is greedy. */
export interface SamplingOptions {
  /** 0 = greedy; default 0.8. */
  temperature?: number;
  /** Nucleus mass in (0, 1]; default 0.95. */
  topP?: number;
  /** Keep the k most likely; 0 disables; default 40. */
  topK?: number;
  /** Drop tokens below minP × the best probability; default 0 (off). */
  minP?: number;
  /** CTRL-style penalty on recent tokens; 1 (default) disables. */
  repetitionPenalty?: number;
  /** How many recent tokens the penalty looks at; default 64. */
  repeatLastN?: number;
  /** RNG seed; the same seed, prompt and settings give the same tokens. */
  seed?: number | bigint;
}

/** A native sampler for `o` (the caller frees it with `kf_sampler_free`). */
export function createSampler(o: SamplingOptions): { ptr: Deno.PointerValue } {
  const s = sym();
  const p = new NativeStruct("kf_sampler_params", s.kf_sampler_default_params());
  if (o.seed !== undefined) p.set("seed", uint64Arg("create sampler", "seed", o.seed));
  if (o.temperature !== undefined) p.set("temperature", o.temperature);
  if (o.topP !== undefined) p.set("top_p", o.topP);
  if (o.topK !== undefined) p.set("top_k", int32Arg("create sampler", "topK", o.topK));
  if (o.repetitionPenalty !== undefined) p.set("repetition_penalty", o.repetitionPenalty);
  if (o.repeatLastN !== undefined) {
    p.set("repeat_last_n", int32Arg("create sampler", "repeatLastN", o.repeatLastN));
  }
  if (o.minP !== undefined) p.set("min_p", o.minP);
  const out = outPointer();
  check(s.kf_sampler_create(p.buf, out.buf));
  return { ptr: out.get() };
}

/**
 * Samples token ids from logits with the same native sampler generate() uses. Handy for custom
 * decoding loops and for tests.
 */
export async function sampleFromLogits(
  logits: Float32Array,
  options: SamplingOptions & { history?: readonly number[] } = {},
): Promise<number> {
  await native();
  const n = int32Arg("sample", "logits.length", logits.length, { min: 1 });
  const history = options.history?.length ? tokenIdsArg("sample", options.history, n) : null;
  const sampler = createSampler(options);
  const s = sym();
  try {
    if (history) check(s.kf_sampler_accept(sampler.ptr, history, options.history!.length));
    const buf = new Float32Array(new ArrayBuffer(logits.length * 4));
    buf.set(logits);
    const out = alloc(4);
    check(s.kf_sampler_sample_logits(sampler.ptr, buf, n, out));
    return new Int32Array(out.buffer)[0];
  } finally {
    check(s.kf_sampler_free(sampler.ptr));
  }
}

/**
 * One sample per row in one native call: row i samples with `samplers[i]` from the last logits of
 * the session whose handle pointer is `sessions[i]`, exactly as `kf_sampler_sample` would; rows that
 * sample at a temperature spread over the engine's threads. Samplers must be distinct. On failure
 * no sampler changes.
 *
 * @example
 * ```ts ignore
 * const ids = sampleRows([samplerA.ptr, samplerB.ptr], [a._handle.ptr, b._handle.ptr]);
 * ```
 */
export function sampleRows(
  samplers: readonly Deno.PointerValue[],
  sessions: readonly Deno.PointerValue[],
): Int32Array {
  const n = samplers.length;
  if (sessions.length !== n) {
    throw new RangeError(`Cannot sample a batch: ${n} samplers for ${sessions.length} sessions`);
  }
  const sp = new BigUint64Array(n), pp = new BigUint64Array(n);
  for (let i = 0; i < n; i++) {
    sp[i] = BigInt(Deno.UnsafePointer.value(samplers[i]));
    pp[i] = BigInt(Deno.UnsafePointer.value(sessions[i]));
  }
  const out = new Int32Array(n);
  check(sym().kf_sampler_sample_batch(sp, pp, n, out));
  return out;
}

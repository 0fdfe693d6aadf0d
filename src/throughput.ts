/**
 * Decode and prefill throughput measurements, shared by `kvfold bench` and `bench/`.
 *
 * @module
 */

import type { Model } from "./model.ts";
import type { GenerateOptions } from "./session.ts";

/** One throughput measurement. */
export interface ThroughputResult {
  /** "decode" or "prefill". */
  kind: "decode" | "prefill";
  /** Tokens per second, best of the repeats. */
  tokensPerSecond: number;
  /** Median tokens per second over the repeats. */
  medianTokensPerSecond: number;
  /** Tokens per timed run. */
  tokens: number;
  repeats: number;
}

function pseudoIds(n: number, vocab: number, seed = 1): number[] {
  const ids: number[] = [];
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    ids.push(3 + (x % (vocab - 3)));
  }
  return ids;
}

function summarize(kind: "decode" | "prefill", tokens: number, rates: number[]): ThroughputResult {
  const sorted = [...rates].sort((a, b) => a - b);
  return {
    kind,
    tokens,
    repeats: rates.length,
    tokensPerSecond: sorted[sorted.length - 1],
    medianTokensPerSecond: sorted[Math.floor(sorted.length / 2)],
  };
}

/**
 * Prefill throughput: `tokens` ids run as one prefill (last-position logits only), in a fresh
 * session each repeat, after one warm-up run.
 *
 * @example
 * ```ts ignore
 * const r = await measurePrefill(model, { tokens: 128 });
 * console.log(r.tokensPerSecond);
 * ```
 */
export async function measurePrefill(
  model: Model,
  options: { tokens?: number; repeats?: number; batchSize?: number } = {},
): Promise<ThroughputResult> {
  const n = options.tokens ?? 128;
  const ids = pseudoIds(n, model.info.vocabSize);
  using session = model.session({ contextSize: n + 1, batchSize: options.batchSize ?? Math.max(n, 1) });
  await session.prefill(ids); // warm-up: page in weights, grow caches
  const rates: number[] = [];
  for (let r = 0; r < (options.repeats ?? 5); r++) {
    session.reset();
    const t0 = performance.now();
    await session.prefill(ids);
    rates.push(n / ((performance.now() - t0) / 1000));
  }
  return summarize("prefill", n, rates);
}

/**
 * Decode throughput: after a short prompt, `tokens` single-token decode steps (greedy sampling
 * through the native sampler between steps, as generation does), best and median of the repeats.
 *
 * @example
 * ```ts ignore
 * const r = await measureDecode(model, { tokens: 64 });
 * console.log(r.tokensPerSecond);
 * ```
 */
export async function measureDecode(
  model: Model,
  options: {
    tokens?: number;
    repeats?: number;
    promptTokens?: number;
    adapter?: GenerateOptions["adapter"];
  } = {},
): Promise<ThroughputResult> {
  const n = options.tokens ?? 64;
  const prompt = pseudoIds(options.promptTokens ?? 16, model.info.vocabSize, 7);
  using session = model.session({ contextSize: prompt.length + n + 8 });
  const rates: number[] = [];
  for (let r = 0; r < (options.repeats ?? 3) + 1; r++) {
    session.reset();
    let count = 0;
    for await (
      const _ of session.generate({
        prompt,
        maxTokens: n + 1,
        temperature: 0,
        ignoreEos: true,
        adapter: options.adapter,
      })
    ) {
      count++; // consume the stream as a user would
    }
    const stats = session.lastStats!;
    // The first sampled token comes from the prefill; decode steps are generated - 1.
    const steps = stats.generatedTokens - 1;
    if (r > 0) rates.push(steps / (stats.decodeMs / 1000)); // repeat 0 is the warm-up
    void count;
  }
  return summarize("decode", n, rates);
}

// Order statistics every bench reports, in one place so their figures mean the same thing.

/** The middle of `xs` (the mean of the middle two for an even count); NaN when empty.
 * @example
 * ```ts
 * median([3, 1, 2]); // 2
 * median([4, 1, 3, 2]); // 2.5
 * ```
 */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** The q-quantile of `xs` by nearest rank (the value at floor(q · n) of the sorted list, clamped);
 * NaN when empty. For latency tails (p50/p95/p99), where an interpolated value would be a time no
 * request took.
 * @example
 * ```ts
 * quantile([10, 20, 30, 40], 0.95); // 40
 * ```
 */
export function quantile(xs: readonly number[], q: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.floor(q * s.length)))];
}

/** min / median / max of `xs`. */
export function spread(xs: readonly number[]): { min: number; median: number; max: number } {
  return { min: Math.min(...xs), median: median(xs), max: Math.max(...xs) };
}

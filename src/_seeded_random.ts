/**
 * Seeded random tensors: xoshiro128** seeded through splitmix32 from (seed, tensor name), with
 * table-driven uniform and normal draws. Random LoCoCo heads (`writeLococoHeads`) and the test
 * models (`testing/`) draw from it, so both stay reproducible bit for bit.
 *
 * @module
 */

function hashString(seed: number, s: string): number {
  let h = (0x811c9dc5 ^ (seed >>> 0)) >>> 0;
  h = Math.imul(h ^ Math.floor(seed / 0x100000000), 0x01000193) >>> 0;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

function splitmix32(state: { s: number }): number {
  state.s = (state.s + 0x9e3779b9) | 0;
  let z = state.s;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

/** xoshiro128** state for one tensor, from (seed, name). */
function rngFor(seed: number, name: string): Uint32Array {
  const st = { s: hashString(seed, name) };
  const s = new Uint32Array(4);
  for (let i = 0; i < 4; i++) s[i] = splitmix32(st);
  if ((s[0] | s[1] | s[2] | s[3]) === 0) s[0] = 1;
  return s;
}

/** Acklam's rational approximation of the standard normal quantile (relative error below 1.2e-9). */
function normalQuantile(p: number): number {
  const a = [
    -39.6968302866538,
    220.946098424521,
    -275.928510446969,
    138.357751867269,
    -30.6647980661472,
    2.50662827745924,
  ];
  const b = [-54.4760987982241, 161.585836858041, -155.698979859887, 66.8013118877197, -13.2806815528857];
  const c = [
    -0.00778489400243029,
    -0.322396458041136,
    -2.40075827716184,
    -2.54973253934373,
    4.37466414146497,
    2.93816398269878,
  ];
  const d = [0.00778469570904146, 0.32246712907004, 2.445134137143, 3.75440866190742];
  const lo = 0.02425;
  if (p < lo || p > 1 - lo) {
    const q = Math.sqrt(-2 * Math.log(p < lo ? p : 1 - p));
    const x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
      ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
    return p < lo ? x : -x;
  }
  const q = p - 0.5;
  const r = q * q;
  return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
    (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
}

let normalTable: Float64Array | undefined;
/** 65536 equiprobable standard normal values (quantiles at bin midpoints), built once. */
function normalBins(): Float64Array {
  if (normalTable === undefined) {
    normalTable = new Float64Array(65536);
    for (let i = 0; i < 65536; i++) normalTable[i] = normalQuantile((i + 0.5) / 65536);
  }
  return normalTable;
}

/**
 * Fills `out` with mean + std · N(0, 1) from the xoshiro128** state `st` (advanced in place),
 * through a 65536-bin inverse-CDF table: a normal discretized to 16 bits (tails to about ±4.3σ),
 * which random weights need, and fast enough for 100M+ values.
 */
function fillNormal(out: Float32Array, mean: number, std: number, st: Uint32Array): void {
  const bins = normalBins();
  const table = new Float32Array(65536);
  for (let i = 0; i < 65536; i++) table[i] = mean + std * bins[i];
  fillFromTable(out, table, st);
}

/** Fills `out` with table[u16] for 16-bit draws of xoshiro128** (two per 32-bit output). */
function fillFromTable(out: Float32Array, table: Float32Array, st: Uint32Array): void {
  let s0 = st[0] | 0, s1 = st[1] | 0, s2 = st[2] | 0, s3 = st[3] | 0;
  const n = out.length;
  const even = n & ~1;
  for (let i = 0; i <= even; i += 2) {
    let r = Math.imul(s1, 5);
    r = Math.imul((r << 7) | (r >>> 25), 9);
    const t = s1 << 9;
    s2 ^= s0;
    s3 ^= s1;
    s1 ^= s2;
    s0 ^= s3;
    s2 ^= t;
    s3 = (s3 << 11) | (s3 >>> 21);
    if (i === even) {
      if (i < n) out[i] = table[r >>> 16];
      break;
    }
    out[i] = table[r >>> 16];
    out[i + 1] = table[r & 0xffff];
  }
  st[0] = s0;
  st[1] = s1;
  st[2] = s2;
  st[3] = s3;
}

/** `n` values mean + std · N(0, 1), seeded by (seed, name). */
export function normalTensor(seed: number, name: string, n: number, mean: number, std: number): Float32Array {
  const out = new Float32Array(n);
  fillNormal(out, mean, std, rngFor(seed, name));
  return out;
}

/**
 * `n` values uniform in (-bound, bound) (65536 equiprobable levels), seeded by (seed, name) with the
 * same generator as the test models' normal weights.
 *
 * @example
 * ```ts
 * import { uniformTensor } from "./_seeded_random.ts";
 * const w = uniformTensor(1, "conv.weight", 4, 0.5);
 * console.log(w.every((x) => Math.abs(x) < 0.5)); // true
 * ```
 */
export function uniformTensor(seed: number, name: string, n: number, bound: number): Float32Array {
  const table = new Float32Array(65536);
  for (let i = 0; i < 65536; i++) table[i] = ((2 * i + 1) / 65536 - 1) * bound;
  const out = new Float32Array(n);
  fillFromTable(out, table, rngFor(seed, name));
  return out;
}

/**
 * A stream of uniform 32-bit unsigned integers from xoshiro128**, seeded by (seed, name) as the
 * tensors are: the demo corpus draws its words from it, so a seed gives the same text on every
 * platform and runtime (integer arithmetic only).
 *
 * @example
 * ```ts
 * import { seededUint32 } from "./_seeded_random.ts";
 * const a = seededUint32(7, "doc:0"), b = seededUint32(7, "doc:0");
 * console.log(a() === b()); // true
 * ```
 */
export function seededUint32(seed: number, name: string): () => number {
  const st = rngFor(seed, name);
  let s0 = st[0] | 0, s1 = st[1] | 0, s2 = st[2] | 0, s3 = st[3] | 0;
  return () => {
    let r = Math.imul(s1, 5);
    r = Math.imul((r << 7) | (r >>> 25), 9);
    const t = s1 << 9;
    s2 ^= s0;
    s3 ^= s1;
    s1 ^= s2;
    s0 ^= s3;
    s2 ^= t;
    s3 = (s3 << 11) | (s3 >>> 21);
    return r >>> 0;
  };
}

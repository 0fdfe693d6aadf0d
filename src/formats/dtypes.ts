/**
 * Tensor element types of safetensors files (also used for PyTorch storages): their names and sizes,
 * and the bit-exact conversions between f32 and f16, bf16 and f8 (E4M3).
 *
 * @module
 */

/** The element types safetensors names, with their sizes in bytes in {@link DTYPE_SIZES}. */
export type SafetensorsDtype =
  | "BOOL"
  | "U8"
  | "I8"
  | "F8_E5M2"
  | "F8_E4M3"
  | "I16"
  | "U16"
  | "F16"
  | "BF16"
  | "I32"
  | "U32"
  | "F32"
  | "F64"
  | "I64"
  | "U64";

/**
 * Bytes per element of each dtype.
 *
 * @example
 * ```ts
 * import { DTYPE_SIZES } from "./dtypes.ts";
 * console.log(DTYPE_SIZES.BF16); // 2
 * ```
 */
export const DTYPE_SIZES: Readonly<Record<SafetensorsDtype, number>> = Object.freeze({
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E5M2: 1,
  F8_E4M3: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  F64: 8,
  I64: 8,
  U64: 8,
});

/** Whether `s` names a safetensors dtype. */
export function isDtype(s: unknown): s is SafetensorsDtype {
  return typeof s === "string" && Object.hasOwn(DTYPE_SIZES, s);
}

const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/** f32 bit pattern → f16 bits, round to nearest even; NaN stays NaN, overflow becomes ±Inf. */
export function f32BitsToF16(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 | (mant >>> 13) : 0);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    // Subnormal half (or zero): m16 = full >> (14 - e), rounded to nearest even.
    const shift = 14 - e;
    if (shift > 24) return sign;
    const full = mant | 0x800000;
    let q = full >>> shift;
    const rem = full & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (q & 1) !== 0)) q++;
    return sign | q;
  }
  let q = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (q & 1) !== 0)) q++; // a carry into exponent 31 gives Inf
  return sign | q;
}

/** f32 bit pattern → bf16 bits, round to nearest even; NaN stays a quiet NaN. */
export function f32BitsToBf16(x: number): number {
  if ((x & 0x7fffffff) > 0x7f800000) return ((x >>> 16) & 0xffff) | 0x40;
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

/**
 * Converts a number to IEEE half-precision bits (the number is first rounded to f32, as
 * `torch.float32 → float16` sees it), rounding to nearest even.
 *
 * @example
 * ```ts
 * import { f32ToF16 } from "./safetensors.ts";
 * console.log(f32ToF16(1).toString(16)); // "3c00"
 * ```
 */
export function f32ToF16(value: number): number {
  scratchF32[0] = value;
  return f32BitsToF16(scratchU32[0]);
}

/**
 * Converts a number to bfloat16 bits (after rounding to f32), rounding to nearest even.
 *
 * @example
 * ```ts
 * import { f32ToBf16 } from "./safetensors.ts";
 * console.log(f32ToBf16(1).toString(16)); // "3f80"
 * ```
 */
export function f32ToBf16(value: number): number {
  scratchF32[0] = value;
  return f32BitsToBf16(scratchU32[0]);
}

/**
 * Converts IEEE half-precision bits to a number (exact; subnormals, ±Inf and NaN included).
 *
 * @example
 * ```ts
 * import { f16ToF32 } from "./safetensors.ts";
 * console.log(f16ToF32(0x3c00)); // 1
 * ```
 */
export function f16ToF32(bits: number): number {
  const sign = (bits & 0x8000) !== 0 ? -1 : 1;
  const exp = (bits >>> 10) & 0x1f;
  const mant = bits & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 31) return mant !== 0 ? NaN : sign * Infinity;
  return sign * (1024 + mant) * 2 ** (exp - 25);
}

/**
 * Converts bfloat16 bits to a number (exact).
 *
 * @example
 * ```ts
 * import { bf16ToF32 } from "./safetensors.ts";
 * console.log(bf16ToF32(0x3f80)); // 1
 * ```
 */
export function bf16ToF32(bits: number): number {
  scratchU32[0] = (bits & 0xffff) << 16;
  return scratchF32[0];
}

/** f8 E4M3 ("fn" flavour: no infinities, 0x7f/0xff are NaN) bits → number. */
export function f8e4m3ToNumber(bits: number): number {
  const sign = (bits & 0x80) !== 0 ? -1 : 1;
  const exp = (bits >>> 3) & 0xf;
  const mant = bits & 7;
  if (exp === 15 && mant === 7) return NaN;
  if (exp === 0) return sign * mant * 2 ** -9;
  return sign * (8 + mant) * 2 ** (exp - 10);
}

/** number → f8 E4M3 bits, round to nearest even, saturating at ±448 is NOT done: overflow → NaN. */
export function numberToF8e4m3(value: number): number {
  if (Number.isNaN(value)) return 0x7f;
  const sign = value < 0 || Object.is(value, -0) ? 0x80 : 0;
  const a = Math.abs(value);
  // Walk the 127 finite magnitudes: small enough to search by bisection on the decoded values.
  let lo = 0;
  let hi = 0x7e; // 448
  if (a >= f8e4m3ToNumber(hi) + 16) return sign | 0x7f; // past the rounding midpoint of 448 → NaN
  if (a >= f8e4m3ToNumber(hi)) return sign | hi;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (f8e4m3ToNumber(mid) <= a) lo = mid;
    else hi = mid;
  }
  const dl = a - f8e4m3ToNumber(lo);
  const dh = f8e4m3ToNumber(hi) - a;
  const q = dl < dh || (dl === dh && (lo & 1) === 0) ? lo : hi;
  return sign | q;
}

let f16Table: Float32Array | undefined;
/** All 65536 half values as f32, built on first use. */
export function halfTable(): Float32Array {
  if (f16Table === undefined) {
    f16Table = new Float32Array(65536);
    for (let i = 0; i < 65536; i++) f16Table[i] = f16ToF32(i);
  }
  return f16Table;
}

/** Whether this machine stores numbers little endian (as safetensors does). */
export const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

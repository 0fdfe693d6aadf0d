/**
 * ggml's tensor types as GGUF stores them (ids, block sizes, bytes per block) and its reference
 * quantizers for q8_0 and q4_0 (`quantize_row_q8_0_ref` / `quantize_row_q4_0_ref`), in f32 arithmetic
 * as C does it, so a file written here holds the bytes llama.cpp's own quantizer would write and the
 * bytes kvfold's quantize-at-load produces (ffi/src/cpu_quant.cpp).
 *
 * @module
 */

import { f32BitsToBf16, f32BitsToF16 } from "./dtypes.ts";
import { quantizeBlockQ4K, quantizeBlockQ6K } from "./ggml_kquant.ts";

/** The ggml tensor types kvfold writes. */
export type GgmlType = "f32" | "f16" | "bf16" | "q8_0" | "q4_0" | "q4_k" | "q6_k";

/**
 * ggml_type ids (ggml.h) of the types kvfold writes.
 *
 * @example
 * ```ts
 * import { GGML_TYPE_IDS } from "./ggml_quant.ts";
 * console.log(GGML_TYPE_IDS.q8_0); // 8
 * ```
 */
export const GGML_TYPE_IDS: Readonly<Record<GgmlType, number>> = Object.freeze({
  f32: 0,
  f16: 1,
  q4_0: 2,
  q8_0: 8,
  q4_k: 12,
  q6_k: 14,
  bf16: 30,
});

/** Values per block and bytes per block of each type (1 value per "block" for the float types). */
export const GGML_BLOCKS: Readonly<Record<GgmlType, { values: number; bytes: number }>> = Object.freeze({
  f32: { values: 1, bytes: 4 },
  f16: { values: 1, bytes: 2 },
  bf16: { values: 1, bytes: 2 },
  q8_0: { values: 32, bytes: 34 },
  q4_0: { values: 32, bytes: 18 },
  q4_k: { values: 256, bytes: 144 },
  q6_k: { values: 256, bytes: 210 },
});

/** Bytes of `n` values of `type`; `n` must be whole blocks (a RangeError otherwise). */
export function ggmlBytes(type: GgmlType, n: number): number {
  const b = GGML_BLOCKS[type];
  if (n % b.values !== 0) throw new RangeError(`${n} values are not whole ${type} blocks of ${b.values}`);
  return (n / b.values) * b.bytes;
}

const f = Math.fround;
// C's roundf: halves away from zero.
const roundf = (x: number) => (x < 0 ? -Math.floor(-x + 0.5) : Math.floor(x + 0.5));
const bitsOf = new Uint32Array(1);
const floatOf = new Float32Array(bitsOf.buffer);
const f16Bits = (x: number) => {
  floatOf[0] = x;
  return f32BitsToF16(bitsOf[0]);
};

/**
 * Encodes f32 values as `type`, little endian: f16/bf16 round to nearest even, q8_0/q4_0 blocks
 * exactly as ggml's reference quantizers write them (`x.length` whole blocks of 32), q4_k/q6_k in
 * llama.cpp's layouts with scales from min/max (ggml_kquant.ts; whole blocks of 256).
 *
 * @example
 * ```ts
 * import { encodeGgml } from "./ggml_quant.ts";
 * const bytes = encodeGgml(new Float32Array(32).fill(1), "q8_0");
 * console.log(bytes.length, bytes[2]); // 34 127
 * ```
 */
export function encodeGgml(x: Float32Array, type: GgmlType): Uint8Array {
  const out = new Uint8Array(ggmlBytes(type, x.length));
  const n = x.length;
  switch (type) {
    case "f32": {
      const dv = new DataView(out.buffer);
      for (let i = 0; i < n; i++) dv.setFloat32(4 * i, x[i], true);
      return out;
    }
    case "f16":
    case "bf16": {
      const bits = new Uint32Array(x.buffer, x.byteOffset, n);
      const conv = type === "f16" ? f32BitsToF16 : f32BitsToBf16;
      for (let i = 0; i < n; i++) {
        const h = conv(bits[i]);
        out[2 * i] = h & 0xff;
        out[2 * i + 1] = h >>> 8;
      }
      return out;
    }
    default: {
      // One block encoder per quantized type, called on each block in turn.
      const encode = BLOCK_ENCODERS[type];
      const { values, bytes } = GGML_BLOCKS[type];
      for (let b = 0, o = 0; b < n; b += values, o += bytes) encode(x, b, out, o);
      return out;
    }
  }
}

type BlockEncoder = (x: Float32Array, b: number, out: Uint8Array, o: number) => void;
const BLOCK_ENCODERS: Record<Exclude<GgmlType, "f32" | "f16" | "bf16">, BlockEncoder> = {
  q8_0: quantizeBlockQ8_0,
  q4_0: quantizeBlockQ4_0,
  q4_k: quantizeBlockQ4K,
  q6_k: quantizeBlockQ6K,
};

function quantizeBlockQ8_0(x: Float32Array, b: number, out: Uint8Array, o: number): void {
  let amax = 0;
  for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[b + j]));
  const d = f(amax / 127);
  const id = d !== 0 ? f(1 / d) : 0;
  const h = f16Bits(d);
  out[o] = h & 0xff;
  out[o + 1] = h >>> 8;
  for (let j = 0; j < 32; j++) out[o + 2 + j] = roundf(f(x[b + j] * id)) & 0xff;
}

function quantizeBlockQ4_0(x: Float32Array, b: number, out: Uint8Array, o: number): void {
  // The value of largest magnitude, with its sign (the first one on ties), maps to -8.
  let amax = 0;
  let max = 0;
  for (let j = 0; j < 32; j++) {
    const v = x[b + j];
    if (amax < Math.abs(v)) {
      amax = Math.abs(v);
      max = v;
    }
  }
  const d = f(max / -8);
  const id = d !== 0 ? f(1 / d) : 0;
  const h = f16Bits(d);
  out[o] = h & 0xff;
  out[o + 1] = h >>> 8;
  for (let j = 0; j < 16; j++) {
    const lo = Math.min(15, Math.trunc(f(f(x[b + j] * id) + 8.5)));
    const hi = Math.min(15, Math.trunc(f(f(x[b + 16 + j] * id) + 8.5)));
    out[o + 2 + j] = lo | (hi << 4);
  }
}

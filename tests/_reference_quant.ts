// ggml's reference quantizers (quantize_row_q8_0_ref / quantize_row_q4_0_ref) in TypeScript, in f32
// arithmetic as C does it, each block straight back to f32: the weights a quantized model multiplies
// by, for tests that compare a quantized base with the same base dequantized.
import { f16ToF32, f32ToF16 } from "../src/formats/safetensors.ts";

const f = Math.fround;
// C's roundf: halves away from zero.
const roundf = (x: number) => (x < 0 ? -Math.floor(-x + 0.5) : Math.floor(x + 0.5));

/** Values of `x` (rows of `cols`, a multiple of 32) after quantizing to `dtype` and back. */
export function quantizeDequantize(x: Float32Array, dtype: "q8_0" | "q4_0"): Float32Array {
  if (x.length % 32 !== 0) throw new RangeError(`${x.length} values are not whole blocks of 32`);
  const out = new Float32Array(x.length);
  for (let b = 0; b < x.length; b += 32) {
    let amax = 0, max = 0;
    for (let j = 0; j < 32; j++) {
      if (amax < Math.abs(x[b + j])) amax = Math.abs(x[b + j]), max = x[b + j];
    }
    if (dtype === "q8_0") {
      const d = f(amax / 127), id = d !== 0 ? f(1 / d) : 0;
      const dh = f16ToF32(f32ToF16(d));
      for (let j = 0; j < 32; j++) out[b + j] = f(dh * roundf(f(x[b + j] * id)));
    } else {
      const d = f(max / -8), id = d !== 0 ? f(1 / d) : 0;
      const dh = f16ToF32(f32ToF16(d));
      for (let j = 0; j < 32; j++) {
        const q = Math.min(15, Math.trunc(f(f(x[b + j] * id) + 8.5)));
        out[b + j] = f(dh * (q - 8));
      }
    }
  }
  return out;
}

/**
 * Values of q4_K / q6_K bytes (llama.cpp's dequantize_row_q4_K / _q6_K layouts), computed in f32 as
 * C does: q4_K `(d * sc) * q - dmin * m`, q6_K `(d * sc) * (q - 32)`.
 */
export function dequantizeKQuant(bytes: Uint8Array, type: "q4_k" | "q6_k"): Float32Array {
  const bs = type === "q4_k" ? 144 : 210;
  if (bytes.length % bs !== 0) throw new RangeError(`${bytes.length} bytes are not whole ${type} blocks`);
  const out = new Float32Array((bytes.length / bs) * 256);
  const half = (o: number) => f16ToF32(bytes[o] | (bytes[o + 1] << 8));
  for (let b = 0; b * bs < bytes.length; b++) {
    const o = b * bs, y = out.subarray(256 * b, 256 * b + 256);
    if (type === "q4_k") {
      const d = half(o), dmin = half(o + 2), s = bytes.subarray(o + 4, o + 16);
      for (let j = 0; j < 8; j++) {
        // 6-bit scale and min of sub-block j, bit by bit from the packing rule.
        const sc = j < 4 ? s[j] & 63 : (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        const m = j < 4 ? s[j + 4] & 63 : (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        for (let l = 0; l < 32; l++) {
          const byte = bytes[o + 16 + 32 * (j >> 1) + l];
          const q = j % 2 === 0 ? byte & 15 : byte >> 4;
          y[32 * j + l] = f(f(f(d * sc) * q) - f(dmin * m));
        }
      }
    } else {
      const d = half(o + 208);
      for (let v = 0; v < 256; v++) {
        const h = v >> 7, k = (v & 127) >> 5, l = v & 31;
        const lo = bytes[o + 64 * h + l + 32 * (k & 1)];
        const hi = (bytes[o + 128 + 32 * h + l] >> (2 * k)) & 3;
        const q = ((k < 2 ? lo & 15 : lo >> 4) | (hi << 4)) - 32;
        const sc = (bytes[o + 192 + (v >> 4)] << 24) >> 24;
        y[v] = f(f(d * sc) * q);
      }
    }
  }
  return out;
}

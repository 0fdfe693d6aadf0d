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

/**
 * Encoders for two of llama.cpp's k-quants, so kvfold can write GGUF files in the formats most
 * published GGUF models use (Q4_K_M mixes q4_K and q6_K). Blocks of 256 values:
 *
 * - q4_K (144 bytes): f16 `d`, f16 `dmin`, 12 bytes of 6-bit scales and mins for 8 sub-blocks of
 *   32, 128 bytes of 4-bit codes; value = d·scale·q − dmin·min.
 * - q6_K (210 bytes): 128 bytes of low 4 bits, 64 of high 2 bits, 16 int8 scales (sub-blocks of
 *   16), f16 `d`; value = d·scale·(q − 32).
 *
 * The layouts are llama.cpp's (it reads these bytes as its own); the choice of scales is a plain
 * min/max rule, not ggml's iterative search, so the error is somewhat above llama.cpp's quantizer.
 *
 * @module
 */

import { f16ToF32, f32ToF16 } from "./dtypes.ts";

const f = Math.fround;
const round = (x: number) => (x < 0 ? -Math.floor(-x + 0.5) : Math.floor(x + 0.5));
const clamp = (x: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, x));

/** Writes 256 values of `x` from `b` as one q4_K block at `out[o]`. */
export function quantizeBlockQ4K(x: Float32Array, b: number, out: Uint8Array, o: number): void {
  // Per sub-block: codes 0..15 span [lo, hi] with lo <= 0 (the min is stored as a positive -lo).
  const scale = new Float64Array(8), min = new Float64Array(8);
  for (let j = 0; j < 8; j++) {
    let lo = 0, hi = -Infinity;
    for (let l = 0; l < 32; l++) {
      lo = Math.min(lo, x[b + 32 * j + l]);
      hi = Math.max(hi, x[b + 32 * j + l]);
    }
    scale[j] = (hi - lo) / 15;
    min[j] = -lo;
  }
  const dh = f32ToF16(Math.max(...scale) / 63), mh = f32ToF16(Math.max(...min) / 63);
  const d = f16ToF32(dh), dmin = f16ToF32(mh);
  const ls = new Uint8Array(8), lm = new Uint8Array(8);
  for (let j = 0; j < 8; j++) {
    ls[j] = d > 0 ? clamp(round(scale[j] / d), 0, 63) : 0;
    lm[j] = dmin > 0 ? clamp(round(min[j] / dmin), 0, 63) : 0;
  }
  out[o] = dh & 0xff, out[o + 1] = dh >>> 8, out[o + 2] = mh & 0xff, out[o + 3] = mh >>> 8;
  // Scales and mins, 6 bits each: sub-blocks 0-3 in the low 6 bits of bytes 0-3 / 4-7; 4-7 as a
  // nibble pair in bytes 8-11 with their top 2 bits in the top of bytes 0-3 / 4-7.
  const s = out.subarray(o + 4, o + 16);
  for (let j = 0; j < 4; j++) {
    s[j] = (ls[j] & 63) | ((ls[j + 4] >> 4) << 6);
    s[j + 4] = (lm[j] & 63) | ((lm[j + 4] >> 4) << 6);
    s[j + 8] = (ls[j + 4] & 15) | ((lm[j + 4] & 15) << 4);
  }
  // Codes: sub-blocks 2p and 2p + 1 share 32 bytes (low nibble, high nibble).
  for (let j = 0; j < 8; j++) {
    const step = f(d * ls[j]), off = f(dmin * lm[j]);
    for (let l = 0; l < 32; l++) {
      const q = step > 0 ? clamp(round((x[b + 32 * j + l] + off) / step), 0, 15) : 0;
      const at = o + 16 + 32 * (j >> 1) + l;
      out[at] = j % 2 === 0 ? (out[at] & 0xf0) | q : (out[at] & 0x0f) | (q << 4);
    }
  }
}

/** Writes 256 values of `x` from `b` as one q6_K block at `out[o]`. */
export function quantizeBlockQ6K(x: Float32Array, b: number, out: Uint8Array, o: number): void {
  const scale = new Float64Array(16);
  for (let j = 0; j < 16; j++) {
    let amax = 0;
    for (let l = 0; l < 16; l++) amax = Math.max(amax, Math.abs(x[b + 16 * j + l]));
    scale[j] = amax / 31;
  }
  const dh = f32ToF16(Math.max(...scale) / 127), d = f16ToF32(dh);
  const sc = new Int8Array(16);
  for (let j = 0; j < 16; j++) sc[j] = d > 0 ? clamp(round(scale[j] / d), 0, 127) : 0;
  const ql = out.subarray(o, o + 128), qh = out.subarray(o + 128, o + 192);
  for (let v = 0; v < 256; v++) {
    const step = f(d * sc[v >> 4]);
    const u = (step > 0 ? clamp(round(x[b + v] / step), -32, 31) : 0) + 32; // 0..63
    // Each half of 128 values: value 32k + l (k < 4) keeps its low 4 bits in ql[l + 32 (k & 1)]
    // (low nibble for k < 2, high for k >= 2) and its top 2 bits in bits 2k..2k+1 of qh[l].
    const h = v >> 7, k = (v & 127) >> 5, l = v & 31;
    const lo = 64 * h + l + 32 * (k & 1);
    ql[lo] = k < 2 ? (ql[lo] & 0xf0) | (u & 15) : (ql[lo] & 0x0f) | ((u & 15) << 4);
    qh[32 * h + l] = (qh[32 * h + l] & ~(3 << (2 * k))) | ((u >> 4) << (2 * k));
  }
  for (let j = 0; j < 16; j++) out[o + 192 + j] = sc[j] & 0xff;
  out[o + 208] = dh & 0xff, out[o + 209] = dh >>> 8;
}

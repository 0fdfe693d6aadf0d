/**
 * A safetensors reader and writer in plain TypeScript, independent of the native library.
 *
 * The format: an 8-byte little-endian header length N, N bytes of JSON (`{"__metadata__": {...},
 * "name": {"dtype", "shape", "data_offsets": [begin, end]}}`, offsets relative to the byte after the
 * header), then the tensor bytes, little endian.
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import { KvfoldError } from "../errors.ts";
import { readBoundedFile } from "../_bounded_read.ts";

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
 * import { DTYPE_SIZES } from "./safetensors.ts";
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

/** One tensor of a safetensors file: its dtype, shape and raw little-endian bytes. */
export interface TensorView {
  /** Element type. */
  dtype: SafetensorsDtype;
  /** Dimensions, outermost first (row-major). */
  shape: number[];
  /** Raw bytes, little endian; a view into the file's bytes when read. */
  data: Uint8Array;
}

/** A parsed safetensors file. */
export interface SafetensorsFile {
  /** The `__metadata__` string map ({} when the file has none). */
  metadata: Record<string, string>;
  /** Tensors by name, in the order of their data offsets. */
  tensors: Map<string, TensorView>;
}

/** Typed arrays and number lists that {@link writeSafetensors} accepts as tensor data. */
export type TensorData =
  | Float32Array
  | Float64Array
  | Uint8Array
  | Int8Array
  | Uint16Array
  | Int16Array
  | Uint32Array
  | Int32Array
  | BigInt64Array
  | BigUint64Array
  | readonly number[];

/** One tensor to write. */
export interface TensorInput {
  /** Tensor name, e.g. `model.norm.weight`. */
  name: string;
  /** Element type to store. */
  dtype: SafetensorsDtype;
  /** Dimensions, outermost first. */
  shape: readonly number[];
  /**
   * Values. Float arrays and number lists are converted to `dtype` (F16/BF16/F8 round to nearest
   * even). A `Uint8Array` is taken as raw bytes for every dtype; a `Uint16Array` as raw bits for
   * F16/BF16; any other typed array whose element type equals `dtype` is copied as is.
   */
  data: TensorData;
}

// ---------------------------------------------------------------------------------------------
// Scalar conversions

const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/** f32 bit pattern → f16 bits, round to nearest even; NaN stays NaN, overflow becomes ±Inf. */
function f32BitsToF16(x: number): number {
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
function f32BitsToBf16(x: number): number {
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
function f8e4m3ToNumber(bits: number): number {
  const sign = (bits & 0x80) !== 0 ? -1 : 1;
  const exp = (bits >>> 3) & 0xf;
  const mant = bits & 7;
  if (exp === 15 && mant === 7) return NaN;
  if (exp === 0) return sign * mant * 2 ** -9;
  return sign * (8 + mant) * 2 ** (exp - 10);
}

/** number → f8 E4M3 bits, round to nearest even, saturating at ±448 is NOT done: overflow → NaN. */
function numberToF8e4m3(value: number): number {
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
function halfTable(): Float32Array {
  if (f16Table === undefined) {
    f16Table = new Float32Array(65536);
    for (let i = 0; i < 65536; i++) f16Table[i] = f16ToF32(i);
  }
  return f16Table;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

// ---------------------------------------------------------------------------------------------
// Reading

function formatError(name: string, problem: string): KvfoldError {
  return new KvfoldError("FORMAT", `Cannot read safetensors ${name}: ${problem}`);
}

function isDtype(s: unknown): s is SafetensorsDtype {
  return typeof s === "string" && Object.hasOwn(DTYPE_SIZES, s);
}

/**
 * Parses safetensors bytes. Tensor `data` are views into `bytes` (no copy). Every structural
 * problem is refused with `KvfoldError("FORMAT", "Cannot read safetensors <name>: ...")`.
 *
 * @param bytes the whole file
 * @param options `name` used in error messages (default `"<buffer>"`)
 * @example
 * ```ts
 * import { readSafetensors, toFloat32, writeSafetensors } from "./safetensors.ts";
 * const bytes = writeSafetensors([{ name: "w", dtype: "F16", shape: [2], data: new Float32Array([1, 2]) }]);
 * const file = readSafetensors(bytes);
 * console.log(toFloat32(file.tensors.get("w")!)); // Float32Array [1, 2]
 * ```
 */
export function readSafetensors(bytes: Uint8Array, options: { name?: string } = {}): SafetensorsFile {
  const name = options.name ?? "<buffer>";
  if (bytes.length < 8) {
    throw formatError(name, `file is ${bytes.length} bytes, shorter than the 8-byte header length`);
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = dv.getBigUint64(0, true);
  if (headerLen > BigInt(bytes.length - 8)) {
    throw formatError(
      name,
      `header length ${headerLen} is beyond the end of the file (${bytes.length} bytes)`,
    );
  }
  if (headerLen > 100_000_000n) {
    throw formatError(name, `header length ${headerLen} is above the 100000000 accepted`);
  }
  const n = Number(headerLen);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + n)));
  } catch (e) {
    throw formatError(name, `header is not valid JSON (${e instanceof Error ? e.message : String(e)})`);
  }
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    throw formatError(name, "header is not a JSON object");
  }
  const dataStart = 8 + n;
  const dataLen = bytes.length - dataStart;
  const metadata: Record<string, string> = {};
  const entries: { name: string; view: TensorView; begin: number; end: number }[] = [];
  for (const [key, value] of Object.entries(header as Record<string, unknown>)) {
    if (key === "__metadata__") {
      if (value === null || typeof value !== "object" || Array.isArray(value)) {
        throw formatError(name, "__metadata__ is not an object");
      }
      for (const [mk, mv] of Object.entries(value as Record<string, unknown>)) {
        if (typeof mv !== "string") throw formatError(name, `__metadata__ value of "${mk}" is not a string`);
        metadata[mk] = mv;
      }
      continue;
    }
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      throw formatError(name, `tensor ${key} is not an object`);
    }
    const info = value as Record<string, unknown>;
    if (!("dtype" in info)) throw formatError(name, `tensor ${key} has no dtype`);
    if (!("shape" in info)) throw formatError(name, `tensor ${key} has no shape`);
    if (!("data_offsets" in info)) throw formatError(name, `tensor ${key} has no data_offsets`);
    if (!isDtype(info.dtype)) {
      throw formatError(name, `tensor ${key} has unknown dtype ${JSON.stringify(info.dtype)}`);
    }
    const shape = info.shape;
    if (!Array.isArray(shape)) throw formatError(name, `tensor ${key} shape is not an array`);
    let count = 1;
    for (const d of shape) {
      if (typeof d !== "number" || !Number.isSafeInteger(d) || d < 0) {
        throw formatError(name, `tensor ${key} has invalid dimension ${JSON.stringify(d)} in shape`);
      }
      count *= d;
    }
    const offsets = info.data_offsets;
    if (
      !Array.isArray(offsets) || offsets.length !== 2 ||
      !offsets.every((o) => typeof o === "number" && Number.isSafeInteger(o) && o >= 0)
    ) {
      throw formatError(
        name,
        `tensor ${key} data_offsets ${JSON.stringify(offsets)} are not two non-negative integers`,
      );
    }
    const [begin, end] = offsets as number[];
    if (begin > end || end > dataLen) {
      throw formatError(
        name,
        `tensor ${key} data_offsets [${begin}, ${end}] are out of range (data section is ${dataLen} bytes)`,
      );
    }
    const expected = count * DTYPE_SIZES[info.dtype];
    if (end - begin !== expected) {
      throw formatError(
        name,
        `tensor ${key} data_offsets [${begin}, ${end}] span ${end - begin} bytes, shape [${
          shape.join(", ")
        }] of ` +
          `${info.dtype} needs ${expected}`,
      );
    }
    entries.push({
      name: key,
      begin,
      end,
      view: {
        dtype: info.dtype,
        shape: shape as number[],
        data: bytes.subarray(dataStart + begin, dataStart + end),
      },
    });
  }
  // The tensors must tile the data section exactly, as the reference reader requires: a header
  // length off by a byte (every tensor shifted), a hole or bytes after the data all mean the file is
  // not what its header says.
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let at = 0;
  let prev: (typeof entries)[number] | undefined;
  for (const e of entries) {
    if (e.begin < at && prev !== undefined) {
      throw formatError(
        name,
        `tensors ${prev.name} [${prev.begin}, ${prev.end}] and ${e.name} [${e.begin}, ${e.end}] are overlapping`,
      );
    }
    if (e.begin > at) {
      throw formatError(
        name,
        `tensor ${e.name} starts at data offset ${e.begin}, but the previous tensor ends at ${at} ` +
          `(a hole in the data section; is the header length wrong?)`,
      );
    }
    at = e.end;
    prev = e;
  }
  if (at !== dataLen) {
    throw formatError(
      name,
      `the tensors end at data offset ${at}, but the data section holds ${dataLen} bytes ` +
        `(trailing bytes, or a wrong header length)`,
    );
  }
  return { metadata, tensors: new Map(entries.map((e) => [e.name, e.view])) };
}

/**
 * Reads and parses a safetensors file. Errors: `KvfoldError("IO")` when the file cannot be read,
 * `KvfoldError("FORMAT")` when it is not valid safetensors.
 *
 * @example
 * ```ts
 * import { readSafetensorsFile, writeSafetensorsFile } from "./safetensors.ts";
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * await writeSafetensorsFile(path, [{ name: "b", dtype: "F32", shape: [1], data: [0.5] }]);
 * console.log((await readSafetensorsFile(path)).tensors.get("b")!.shape); // [1]
 * await Deno.remove(path);
 * ```
 */
export async function readSafetensorsFile(path: string | URL): Promise<SafetensorsFile> {
  const file = path instanceof URL ? fileURLToPath(path) : path;
  const bytes = await readBoundedFile(file, { action: "read safetensors", maxBytes: SAFETENSORS_FILE_LIMIT });
  return readSafetensors(bytes, { name: file });
}

// The whole file is read into memory: past this, memory (not the limit) is what runs out first;
// the limit keeps a file that grows while it is read from growing the buffer without end.
const SAFETENSORS_FILE_LIMIT = 64 * 1024 ** 3;

function elementCount(view: TensorView): number {
  return view.shape.reduce((a, b) => a * b, 1);
}

/** Decodes any dtype into `out` (a Float32Array or Float64Array of the element count). */
function decodeInto(view: TensorView, out: Float32Array | Float64Array): void {
  const n = out.length;
  const { data } = view;
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  switch (view.dtype) {
    case "F32":
      if (LITTLE_ENDIAN && data.byteOffset % 4 === 0) {
        out.set(new Float32Array(data.buffer, data.byteOffset, n));
      } else for (let i = 0; i < n; i++) out[i] = dv.getFloat32(4 * i, true);
      return;
    case "F64":
      if (LITTLE_ENDIAN && data.byteOffset % 8 === 0) {
        out.set(new Float64Array(data.buffer, data.byteOffset, n));
      } else for (let i = 0; i < n; i++) out[i] = dv.getFloat64(8 * i, true);
      return;
    case "F16": {
      const t = halfTable();
      for (let i = 0; i < n; i++) out[i] = t[data[2 * i] | (data[2 * i + 1] << 8)];
      return;
    }
    case "BF16": {
      const u = new Uint32Array(1);
      const f = new Float32Array(u.buffer);
      for (let i = 0; i < n; i++) {
        u[0] = (data[2 * i] << 16) | (data[2 * i + 1] << 24);
        out[i] = f[0];
      }
      return;
    }
    case "F8_E5M2": {
      const t = halfTable();
      for (let i = 0; i < n; i++) out[i] = t[data[i] << 8];
      return;
    }
    case "F8_E4M3":
      for (let i = 0; i < n; i++) out[i] = f8e4m3ToNumber(data[i]);
      return;
    case "BOOL":
    case "U8":
      for (let i = 0; i < n; i++) out[i] = data[i];
      return;
    case "I8":
      for (let i = 0; i < n; i++) out[i] = dv.getInt8(i);
      return;
    case "I16":
      for (let i = 0; i < n; i++) out[i] = dv.getInt16(2 * i, true);
      return;
    case "U16":
      for (let i = 0; i < n; i++) out[i] = dv.getUint16(2 * i, true);
      return;
    case "I32":
      for (let i = 0; i < n; i++) out[i] = dv.getInt32(4 * i, true);
      return;
    case "U32":
      for (let i = 0; i < n; i++) out[i] = dv.getUint32(4 * i, true);
      return;
    case "I64":
      for (let i = 0; i < n; i++) out[i] = Number(dv.getBigInt64(8 * i, true));
      return;
    case "U64":
      for (let i = 0; i < n; i++) out[i] = Number(dv.getBigUint64(8 * i, true));
      return;
  }
}

function checkViewSize(view: TensorView): number {
  const n = elementCount(view);
  if (n * DTYPE_SIZES[view.dtype] !== view.data.byteLength) {
    throw new RangeError(
      `Cannot convert tensor: shape [${view.shape.join(", ")}] of ${view.dtype} needs ${
        n * DTYPE_SIZES[view.dtype]
      } bytes, data has ${view.data.byteLength}`,
    );
  }
  return n;
}

/**
 * Decodes a tensor of any dtype into a new Float32Array (64-bit integers and F64 are rounded to f32).
 *
 * @example
 * ```ts
 * import { toFloat32 } from "./safetensors.ts";
 * const view = { dtype: "BF16" as const, shape: [1], data: new Uint8Array([0x80, 0x3f]) };
 * console.log(toFloat32(view)[0]); // 1
 * ```
 */
export function toFloat32(view: TensorView): Float32Array {
  const out = new Float32Array(checkViewSize(view));
  decodeInto(view, out);
  return out;
}

/**
 * Decodes a tensor of any dtype into a new Float64Array (exact for every float dtype).
 *
 * @example
 * ```ts
 * import { toFloat64 } from "./safetensors.ts";
 * const view = { dtype: "F16" as const, shape: [1], data: new Uint8Array([0x00, 0x3c]) };
 * console.log(toFloat64(view)[0]); // 1
 * ```
 */
export function toFloat64(view: TensorView): Float64Array {
  const out = new Float64Array(checkViewSize(view));
  decodeInto(view, out);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Writing

function nativeDtypeOf(data: TensorData): SafetensorsDtype | undefined {
  if (data instanceof Float32Array) return "F32";
  if (data instanceof Float64Array) return "F64";
  if (data instanceof Int8Array) return "I8";
  if (data instanceof Int16Array) return "I16";
  if (data instanceof Uint16Array) return "U16";
  if (data instanceof Int32Array) return "I32";
  if (data instanceof Uint32Array) return "U32";
  if (data instanceof BigInt64Array) return "I64";
  if (data instanceof BigUint64Array) return "U64";
  return undefined;
}

function checkShape(t: TensorInput): number {
  let n = 1;
  for (const d of t.shape) {
    if (!Number.isSafeInteger(d) || d < 0) {
      throw new RangeError(
        `Cannot write tensor ${t.name}: invalid dimension ${d} in shape [${t.shape.join(", ")}]`,
      );
    }
    n *= d;
  }
  return n;
}

const INTEGER_DTYPES: ReadonlySet<SafetensorsDtype> = new Set<SafetensorsDtype>([
  "BOOL",
  "U8",
  "I8",
  "I16",
  "U16",
  "I32",
  "U32",
  "I64",
  "U64",
]);

/**
 * Checks one tensor to write (dtype, shape, data length and kind, integer values for integer
 * dtypes) and says how its bytes are produced, so a file is never left half written on bad input.
 */
function checkTensor(t: TensorInput): "raw" | "convert" {
  const fail = (why: string) => new RangeError(`Cannot write tensor ${t.name}: ${why}`);
  if (!isDtype(t.dtype)) throw fail(`unknown dtype ${t.dtype}`);
  const n = checkShape(t);
  const size = DTYPE_SIZES[t.dtype];
  const data = t.data;
  if (data instanceof Uint8Array) {
    if (data.byteLength !== n * size) {
      throw fail(
        `${data.byteLength} raw bytes given, shape [${t.shape.join(", ")}] of ${t.dtype} needs ${n * size}`,
      );
    }
    return "raw";
  }
  if (data.length !== n) throw fail(`${data.length} values given, shape [${t.shape.join(", ")}] holds ${n}`);
  const native = nativeDtypeOf(data);
  if (data instanceof Uint16Array && (t.dtype === "F16" || t.dtype === "BF16")) return "raw";
  if (native === t.dtype) return "raw";
  if (data instanceof BigInt64Array || data instanceof BigUint64Array) {
    throw fail(`64-bit integer data can only be written as ${native}, not ${t.dtype}`);
  }
  if (INTEGER_DTYPES.has(t.dtype)) {
    const values = data as ArrayLike<number>;
    for (let i = 0; i < n; i++) {
      if (!Number.isInteger(values[i])) {
        throw fail(`value ${values[i]} at index ${i} is not an integer (${t.dtype})`);
      }
    }
  }
  return "convert";
}

/** Encodes one tensor's values as little-endian bytes of its dtype (checked by checkTensor). */
function encodeTensor(t: TensorInput): Uint8Array {
  const how = checkTensor(t);
  const n = checkShape(t);
  const size = DTYPE_SIZES[t.dtype];
  const data = t.data;
  if (how === "raw") {
    if (data instanceof Uint8Array) return data;
    const view = data as ArrayBufferView;
    const elem = data instanceof Uint16Array ? 2 : size;
    return LITTLE_ENDIAN
      ? new Uint8Array(view.buffer, view.byteOffset, view.byteLength)
      : swapCopy(view, elem);
  }
  const values = data as ArrayLike<number>;
  const out = new Uint8Array(n * size);
  const dv = new DataView(out.buffer);
  switch (t.dtype) {
    case "F32":
      if (LITTLE_ENDIAN) new Float32Array(out.buffer).set(values);
      else for (let i = 0; i < n; i++) dv.setFloat32(4 * i, values[i], true);
      break;
    case "F64":
      for (let i = 0; i < n; i++) dv.setFloat64(8 * i, values[i], true);
      break;
    case "F16":
    case "BF16": {
      const f32 = values instanceof Float32Array ? values : Float32Array.from(values);
      const bits = new Uint32Array(f32.buffer, f32.byteOffset, f32.length);
      const conv = t.dtype === "F16" ? f32BitsToF16 : f32BitsToBf16;
      for (let i = 0; i < n; i++) {
        const h = conv(bits[i]);
        out[2 * i] = h & 0xff;
        out[2 * i + 1] = h >>> 8;
      }
      break;
    }
    case "F8_E5M2":
      // E5M2 is the high byte of f16; round the f16 to nearest even on its low byte.
      for (let i = 0; i < n; i++) {
        const h = f32ToF16(values[i]);
        if ((h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0) {
          out[i] = (h >>> 8) | 0x02;
          continue;
        }
        const lo = h & 0xff;
        let q = h >>> 8;
        if (lo > 0x80 || (lo === 0x80 && (q & 1) !== 0)) q++;
        out[i] = q;
      }
      break;
    case "F8_E4M3":
      for (let i = 0; i < n; i++) out[i] = numberToF8e4m3(values[i]);
      break;
    default: {
      for (let i = 0; i < n; i++) {
        const v = values[i];
        switch (t.dtype) {
          case "BOOL":
            out[i] = v !== 0 ? 1 : 0;
            break;
          case "U8":
            dv.setUint8(i, v);
            break;
          case "I8":
            dv.setInt8(i, v);
            break;
          case "I16":
            dv.setInt16(2 * i, v, true);
            break;
          case "U16":
            dv.setUint16(2 * i, v, true);
            break;
          case "I32":
            dv.setInt32(4 * i, v, true);
            break;
          case "U32":
            dv.setUint32(4 * i, v, true);
            break;
          case "I64":
            dv.setBigInt64(8 * i, BigInt(v), true);
            break;
          case "U64":
            dv.setBigUint64(8 * i, BigInt(v), true);
            break;
        }
      }
    }
  }
  return out;
}

function swapCopy(data: ArrayBufferView, size: number): Uint8Array {
  const src = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const out = new Uint8Array(src.length);
  for (let i = 0; i < src.length; i += size) {
    for (let j = 0; j < size; j++) out[i + j] = src[i + size - 1 - j];
  }
  return out;
}

/** Builds the padded header (length prefix included) for tensors of the given byte sizes. */
function buildHeader(
  tensors: readonly TensorInput[],
  metadata: Record<string, string> | undefined,
): { header: Uint8Array; total: number } {
  const obj: Record<string, unknown> = {};
  if (metadata !== undefined) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== "string") {
        throw new TypeError(`Cannot write safetensors: metadata value of "${k}" is not a string`);
      }
    }
    obj.__metadata__ = metadata;
  }
  let offset = 0;
  const seen = new Set<string>();
  for (const t of tensors) {
    if (t.name === "__metadata__" || seen.has(t.name)) {
      throw new RangeError(`Cannot write safetensors: tensor name ${t.name} is reserved or repeated`);
    }
    seen.add(t.name);
    if (!isDtype(t.dtype)) throw new RangeError(`Cannot write tensor ${t.name}: unknown dtype ${t.dtype}`);
    const bytes = checkShape(t) * DTYPE_SIZES[t.dtype];
    obj[t.name] = { dtype: t.dtype, shape: [...t.shape], data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  const json = new TextEncoder().encode(JSON.stringify(obj));
  const padded = Math.ceil(json.length / 8) * 8;
  const header = new Uint8Array(8 + padded).fill(0x20, 8);
  new DataView(header.buffer).setBigUint64(0, BigInt(padded), true);
  header.set(json, 8);
  return { header, total: header.length + offset };
}

/**
 * Serializes tensors (in the given order) and optional `__metadata__` to safetensors bytes. The
 * header is padded with spaces so tensor data starts on an 8-byte boundary.
 *
 * @example
 * ```ts
 * import { writeSafetensors } from "./safetensors.ts";
 * const bytes = writeSafetensors(
 *   [{ name: "x", dtype: "BF16", shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) }],
 *   { format: "pt" },
 * );
 * console.log(bytes.length % 8); // 0
 * ```
 */
export function writeSafetensors(
  tensors: readonly TensorInput[],
  metadata?: Record<string, string>,
): Uint8Array {
  const { header, total } = buildHeader(tensors, metadata);
  const out = new Uint8Array(total);
  out.set(header, 0);
  let at = header.length;
  for (const t of tensors) {
    const bytes = encodeTensor(t);
    out.set(bytes, at);
    at += bytes.length;
  }
  return out;
}

/**
 * Writes tensors to a safetensors file, converting and writing one tensor at a time (no whole-file
 * buffer). Errors: `KvfoldError("IO")` when the file cannot be written.
 *
 * @example
 * ```ts
 * import { writeSafetensorsFile } from "./safetensors.ts";
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * await writeSafetensorsFile(path, [{ name: "w", dtype: "F16", shape: [3], data: [1, 2, 3] }], { format: "pt" });
 * await Deno.remove(path);
 * ```
 */
export async function writeSafetensorsFile(
  path: string | URL,
  tensors: readonly TensorInput[],
  metadata?: Record<string, string>,
): Promise<void> {
  const { header } = buildHeader(tensors, metadata);
  for (const t of tensors) checkTensor(t); // refuse bad input before touching the file
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { write: true, create: true, truncate: true });
  } catch (e) {
    throw new KvfoldError(
      "IO",
      `Cannot write safetensors ${String(path)}: ${e instanceof Error ? e.message : e}`,
      {
        cause: e,
      },
    );
  }
  try {
    await writeAll(file, header, path);
    for (const t of tensors) await writeAll(file, encodeTensor(t), path);
  } finally {
    file.close();
  }
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array, path: string | URL): Promise<void> {
  let at = 0;
  try {
    while (at < bytes.length) at += await file.write(bytes.subarray(at));
  } catch (e) {
    throw new KvfoldError(
      "IO",
      `Cannot write safetensors ${String(path)}: ${e instanceof Error ? e.message : e}`,
      {
        cause: e,
      },
    );
  }
}

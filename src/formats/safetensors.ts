/**
 * A safetensors reader (and, re-exported, the writer) in plain TypeScript, independent of the native library.
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
import {
  DTYPE_SIZES,
  f8e4m3ToNumber,
  halfTable,
  isDtype,
  LITTLE_ENDIAN,
  type SafetensorsDtype,
} from "./dtypes.ts";

export { bf16ToF32, DTYPE_SIZES, f16ToF32, f32ToBf16, f32ToF16 } from "./dtypes.ts";
export type { SafetensorsDtype } from "./dtypes.ts";
export { writeSafetensors, writeSafetensorsFile } from "./safetensors_write.ts";

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
// Reading

function formatError(name: string, problem: string): KvfoldError {
  return new KvfoldError("FORMAT", `Cannot read safetensors ${name}: ${problem}`);
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

/**
 * The safetensors writer: tensors from typed arrays or numbers, converted to the dtype asked for,
 * written with a sorted, aligned header; files are written atomically.
 *
 * @module
 */

import { KvfoldError } from "../errors.ts";
import {
  DTYPE_SIZES,
  f32BitsToBf16,
  f32BitsToF16,
  f32ToF16,
  isDtype,
  LITTLE_ENDIAN,
  numberToF8e4m3,
} from "./dtypes.ts";
import type { SafetensorsDtype, TensorData, TensorInput } from "./safetensors.ts";

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

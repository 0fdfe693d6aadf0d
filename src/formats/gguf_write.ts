/**
 * A GGUF (version 3) writer: typed metadata and tensors in ggml's types, streamed to disk one tensor
 * at a time (a 1B model never needs two copies in memory), written atomically; and
 * {@link writeModelGguf}, which turns a Hugging Face Llama/Qwen2 folder into a file llama.cpp loads.
 *
 * The format: "GGUF", u32 version, u64 tensor count, u64 metadata count; metadata as (string key,
 * u32 value type, value); tensor infos as (string name, u32 n_dims, u64 dims innermost first, u32
 * ggml type, u64 offset into the data section); padding to `general.alignment` (32); the data, each
 * tensor at an aligned offset. Strings are a u64 byte length and UTF-8 bytes; all little endian.
 *
 * @module
 */

import { KvfoldError } from "../errors.ts";
import { encodeGgml, GGML_TYPE_IDS, ggmlBytes, type GgmlType } from "./ggml_quant.ts";

export { modelGgufContents, writeModelGguf } from "./gguf_model_write.ts";
export type { GgufModelDtype, WriteModelGgufOptions } from "./gguf_model_write.ts";
export type { GgmlType } from "./ggml_quant.ts";

/** GGUF metadata value types (gguf_type in gguf.h), by name. */
export const GGUF_VALUE_TYPES = Object.freeze({
  uint8: 0,
  int8: 1,
  uint16: 2,
  int16: 3,
  uint32: 4,
  int32: 5,
  float32: 6,
  bool: 7,
  string: 8,
  array: 9,
  uint64: 10,
  int64: 11,
  float64: 12,
});

/** The scalar value types of GGUF metadata. */
export type GgufScalarType = Exclude<keyof typeof GGUF_VALUE_TYPES, "array">;

/**
 * One metadata value. A plain string or boolean is stored as such; numbers need their type, since
 * GGUF readers check it (llama.cpp wants `uint32` for counts, `float32` for epsilons).
 */
export type GgufMetadataValue =
  | string
  | boolean
  | { type: GgufScalarType; value: number | bigint | string | boolean }
  | { type: "array"; itemType: GgufScalarType; value: readonly (number | bigint | string | boolean)[] };

/** One tensor to write. */
export interface GgufTensorInput {
  /** Tensor name, e.g. `blk.0.attn_q.weight`. */
  name: string;
  /** The ggml type to store. */
  type: GgmlType;
  /** Dimensions, outermost first as in safetensors (written reversed, innermost first, as GGUF wants). */
  shape: readonly number[];
  /**
   * Float values (encoded to `type`), or raw bytes already in `type`; a function is called when the
   * tensor is written, so large models are produced one tensor at a time.
   */
  data: Float32Array | Uint8Array | (() => Float32Array | Uint8Array);
}

/** What {@link writeGguf} writes. */
export interface GgufContents {
  /** Metadata in file order; `general.alignment` is honoured when given (default 32). */
  metadata: Record<string, GgufMetadataValue>;
  /** Tensors in file order. */
  tensors: readonly GgufTensorInput[];
}

const enc = new TextEncoder();

/** A growable little-endian byte buffer for the header. */
class ByteSink {
  #buf = new Uint8Array(1024);
  #dv = new DataView(this.#buf.buffer);
  length = 0;
  #room(n: number): number {
    if (this.length + n > this.#buf.length) {
      const next = new Uint8Array(Math.max(this.#buf.length * 2, this.length + n));
      next.set(this.#buf.subarray(0, this.length));
      this.#buf = next;
      this.#dv = new DataView(next.buffer);
    }
    const at = this.length;
    this.length += n;
    return at;
  }
  // Each write reserves its bytes first: reserving may replace the buffer and its view.
  u8(v: number) {
    const at = this.#room(1);
    this.#dv.setUint8(at, v);
  }
  u32(v: number) {
    const at = this.#room(4);
    this.#dv.setUint32(at, v, true);
  }
  u64(v: number | bigint) {
    const at = this.#room(8);
    this.#dv.setBigUint64(at, BigInt(v), true);
  }
  scalar(type: GgufScalarType, v: number | bigint | string | boolean, what: string) {
    const num = () => {
      if (typeof v !== "number" && typeof v !== "bigint") {
        throw new TypeError(`${what}: ${v} is not a number`);
      }
      return v;
    };
    const int = (lo: number, hi: number) => {
      const n = Number(num());
      if (!Number.isInteger(n) || n < lo || n > hi) throw new RangeError(`${what}: ${v} is not a ${type}`);
      return n;
    };
    switch (type) {
      case "uint8": {
        const x = int(0, 0xff);
        const at = this.#room(1);
        return this.#dv.setUint8(at, x);
      }
      case "int8": {
        const x = int(-0x80, 0x7f);
        const at = this.#room(1);
        return this.#dv.setInt8(at, x);
      }
      case "uint16": {
        const x = int(0, 0xffff);
        const at = this.#room(2);
        return this.#dv.setUint16(at, x, true);
      }
      case "int16": {
        const x = int(-0x8000, 0x7fff);
        const at = this.#room(2);
        return this.#dv.setInt16(at, x, true);
      }
      case "uint32": {
        const x = int(0, 0xffffffff);
        const at = this.#room(4);
        return this.#dv.setUint32(at, x, true);
      }
      case "int32": {
        const x = int(-0x80000000, 0x7fffffff);
        const at = this.#room(4);
        return this.#dv.setInt32(at, x, true);
      }
      case "float32": {
        const x = Number(num());
        const at = this.#room(4);
        return this.#dv.setFloat32(at, x, true);
      }
      case "float64": {
        const x = Number(num());
        const at = this.#room(8);
        return this.#dv.setFloat64(at, x, true);
      }
      case "uint64": {
        const x = BigInt(num());
        const at = this.#room(8);
        return this.#dv.setBigUint64(at, x, true);
      }
      case "int64": {
        const x = BigInt(num());
        const at = this.#room(8);
        return this.#dv.setBigInt64(at, x, true);
      }
      case "bool":
        if (typeof v !== "boolean") throw new TypeError(`${what}: ${v} is not a boolean`);
        return this.u8(v ? 1 : 0);
      case "string":
        if (typeof v !== "string") throw new TypeError(`${what}: ${v} is not a string`);
        return this.string(v);
    }
    throw new TypeError(`${what}: unknown GGUF value type ${type}`);
  }
  string(s: string) {
    const b = enc.encode(s);
    this.u64(b.length);
    const at = this.#room(b.length);
    this.#buf.set(b, at);
  }
  pad(alignment: number) {
    const n = (alignment - (this.length % alignment)) % alignment;
    this.#room(n); // new bytes are zero: the buffer only grows by fresh zeroed arrays
  }
  bytes(): Uint8Array {
    return this.#buf.subarray(0, this.length);
  }
}

function valueOf(key: string, v: GgufMetadataValue, sink: ByteSink): void {
  const what = `Cannot write GGUF metadata ${key}`;
  if (typeof v === "string") {
    sink.u32(GGUF_VALUE_TYPES.string);
    sink.string(v);
  } else if (typeof v === "boolean") {
    sink.u32(GGUF_VALUE_TYPES.bool);
    sink.u8(v ? 1 : 0);
  } else if (v.type === "array") {
    if (!Object.hasOwn(GGUF_VALUE_TYPES, v.itemType) || v.itemType === ("array" as string)) {
      throw new TypeError(`${what}: unknown array item type ${v.itemType}`);
    }
    sink.u32(GGUF_VALUE_TYPES.array);
    sink.u32(GGUF_VALUE_TYPES[v.itemType]);
    sink.u64(v.value.length);
    for (let i = 0; i < v.value.length; i++) sink.scalar(v.itemType, v.value[i], `${what}[${i}]`);
  } else {
    if (!Object.hasOwn(GGUF_VALUE_TYPES, v.type)) {
      throw new TypeError(`${what}: unknown value type ${v.type}`);
    }
    sink.u32(GGUF_VALUE_TYPES[v.type]);
    sink.scalar(v.type, v.value, what);
  }
}

function alignmentOf(metadata: Record<string, GgufMetadataValue>): number {
  const a = metadata["general.alignment"];
  if (a === undefined) return 32;
  const n = typeof a === "object" && a.type !== "array" ? Number(a.value) : NaN;
  if (!Number.isInteger(n) || n <= 0 || (n & (n - 1)) !== 0) {
    throw new RangeError(
      `Cannot write GGUF: general.alignment must be a power of two, got ${JSON.stringify(a)}`,
    );
  }
  return n;
}

function elementsOf(t: GgufTensorInput): number {
  if (t.shape.length === 0 || t.shape.length > 4) {
    throw new RangeError(
      `Cannot write tensor ${t.name}: GGUF tensors have 1 to 4 dimensions, not ${t.shape.length}`,
    );
  }
  let n = 1;
  for (const d of t.shape) {
    if (!Number.isSafeInteger(d) || d <= 0) {
      throw new RangeError(
        `Cannot write tensor ${t.name}: invalid dimension ${d} in [${t.shape.join(", ")}]`,
      );
    }
    n *= d;
  }
  if (!Object.hasOwn(GGML_TYPE_IDS, t.type)) {
    throw new RangeError(`Cannot write tensor ${t.name}: unknown type ${t.type}`);
  }
  if (t.type === "q8_0" || t.type === "q4_0") {
    const row = t.shape[t.shape.length - 1];
    if (row % 32 !== 0) {
      throw new RangeError(
        `Cannot write tensor ${t.name}: ${t.type} rows are blocks of 32, this row has ${row} values`,
      );
    }
  }
  return n;
}

/** The tensor's bytes in its type, checked against its shape. */
function tensorBytes(t: GgufTensorInput, n: number): Uint8Array {
  const data = typeof t.data === "function" ? t.data() : t.data;
  const want = ggmlBytes(t.type, n);
  if (data instanceof Uint8Array) {
    if (data.byteLength !== want) {
      throw new RangeError(
        `Cannot write tensor ${t.name}: ${data.byteLength} raw bytes given, ${t.type} needs ${want}`,
      );
    }
    return data;
  }
  if (!(data instanceof Float32Array)) {
    throw new TypeError(`Cannot write tensor ${t.name}: data is not a Float32Array`);
  }
  if (data.length !== n) {
    throw new RangeError(`Cannot write tensor ${t.name}: ${data.length} values given, shape holds ${n}`);
  }
  return encodeGgml(data, t.type);
}

/**
 * Writes a GGUF v3 file: the header is checked and built first, then the tensors are encoded and
 * written one at a time to a temporary file beside `path`, renamed onto it at the end (no half
 * written file is ever left at `path`). Misuse (bad shape, type, value) is a TypeError/RangeError;
 * failing to write is a `KvfoldError("IO")`.
 *
 * @example
 * ```ts
 * import { writeGguf } from "./gguf_write.ts";
 * const path = await Deno.makeTempFile({ suffix: ".gguf" });
 * await writeGguf(path, {
 *   metadata: { "general.architecture": "llama", "llama.block_count": { type: "uint32", value: 1 } },
 *   tensors: [{ name: "output_norm.weight", type: "f32", shape: [4], data: new Float32Array(4).fill(1) }],
 * });
 * console.log(new TextDecoder().decode((await Deno.readFile(path)).subarray(0, 4))); // GGUF
 * await Deno.remove(path);
 * ```
 */
export async function writeGguf(path: string, contents: GgufContents): Promise<void> {
  const alignment = alignmentOf(contents.metadata);
  const sink = new ByteSink();
  sink.u32(0x46554747); // "GGUF"
  sink.u32(3);
  sink.u64(contents.tensors.length);
  const keys = Object.keys(contents.metadata);
  sink.u64(keys.length);
  for (const key of keys) {
    sink.string(key);
    valueOf(key, contents.metadata[key], sink);
  }
  const names = new Set<string>();
  const sizes: number[] = [];
  let offset = 0;
  for (const t of contents.tensors) {
    if (names.has(t.name)) throw new RangeError(`Cannot write GGUF: tensor ${t.name} appears twice`);
    names.add(t.name);
    const n = elementsOf(t);
    sizes.push(n);
    sink.string(t.name);
    sink.u32(t.shape.length);
    for (let i = t.shape.length - 1; i >= 0; i--) sink.u64(t.shape[i]);
    sink.u32(GGML_TYPE_IDS[t.type]);
    sink.u64(offset);
    offset += ggmlBytes(t.type, n);
    offset += (alignment - (offset % alignment)) % alignment;
  }
  sink.pad(alignment);

  const tmp = `${path}.tmp-${crypto.randomUUID()}`;
  let file: Deno.FsFile;
  try {
    file = await Deno.open(tmp, { write: true, create: true, truncate: true });
  } catch (e) {
    throw new KvfoldError("IO", `Cannot write GGUF ${path}: ${(e as Error).message}`, { cause: e });
  }
  try {
    await writeAll(file, sink.bytes(), path);
    const zeros = new Uint8Array(alignment);
    for (let i = 0; i < contents.tensors.length; i++) {
      const bytes = tensorBytes(contents.tensors[i], sizes[i]);
      await writeAll(file, bytes, path);
      const pad = (alignment - (bytes.length % alignment)) % alignment;
      if (pad > 0) await writeAll(file, zeros.subarray(0, pad), path);
    }
    file.close();
    await Deno.rename(tmp, path);
  } catch (e) {
    try {
      file.close();
    } catch { /* already closed */ }
    await Deno.remove(tmp).catch(() => {});
    if (e instanceof KvfoldError || e instanceof TypeError || e instanceof RangeError) throw e;
    throw new KvfoldError("IO", `Cannot write GGUF ${path}: ${(e as Error).message}`, { cause: e });
  }
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array, path: string): Promise<void> {
  let done = 0;
  while (done < bytes.length) {
    const n = await file.write(bytes.subarray(done));
    if (n <= 0) throw new KvfoldError("IO", `Cannot write GGUF ${path}: the write made no progress`);
    done += n;
  }
}

/**
 * The metadata of a GGUF file, read in TypeScript from the file's head (the tensors are the native
 * library's business): what a model's tokenizer is built from. Every length is checked against the
 * bytes read before anything is sized from it; a malformed header is a `KvfoldError("FORMAT")`.
 *
 * @module
 */

import { KvfoldError } from "../errors.ts";
import { readBoundedHead } from "../_bounded_read.ts";

/** A metadata value: numbers (64-bit integers as bigint past 2^53), strings, booleans, arrays. */
export type GgufValue = number | bigint | string | boolean | GgufValue[];

/** Most header bytes read: a 256k-token vocabulary with its merges takes about 10 MiB. */
export const GGUF_METADATA_LIMIT = 64 * 1024 * 1024;

/** Most items of one metadata array (the native loader's vocabulary limit is 2^22 tokens). */
const MAX_ARRAY_ITEMS = 1 << 24;

const SIZES = [1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8];
const dec = new TextDecoder();

/**
 * Parses the metadata of a GGUF file held in `bytes` (the whole file or its head). `name` is used
 * in messages.
 *
 * @example
 * ```ts
 * import { parseGgufMetadata } from "./gguf_read.ts";
 * import { writeGguf } from "./gguf_write.ts";
 * const path = await Deno.makeTempFile({ suffix: ".gguf" });
 * await writeGguf(path, { metadata: { "general.architecture": "llama" }, tensors: [] });
 * console.log(parseGgufMetadata(await Deno.readFile(path), path).get("general.architecture")); // llama
 * await Deno.remove(path);
 * ```
 */
export function parseGgufMetadata(bytes: Uint8Array, name: string): Map<string, GgufValue> {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 0;
  const fail = (why: string) => new KvfoldError("FORMAT", `Cannot load model: ${name}: ${why}`);
  const need = (n: number, what: string) => {
    if (n > bytes.length - at) {
      throw fail(
        `the header is truncated: ${what} at byte ${at} needs ${n} bytes, ${bytes.length - at} are left`,
      );
    }
  };
  const u32 = (what: string) => {
    need(4, what);
    const v = dv.getUint32(at, true);
    at += 4;
    return v;
  };
  const u64 = (what: string) => {
    need(8, what);
    const v = dv.getBigUint64(at, true);
    at += 8;
    return v;
  };
  const str = (what: string) => {
    const n = u64(what);
    if (n > BigInt(bytes.length - at)) {
      throw fail(`${what} at byte ${at - 8} has length ${n}, past the end of the header read`);
    }
    const s = dec.decode(bytes.subarray(at, at + Number(n)));
    at += Number(n);
    return s;
  };
  const scalar = (type: number, what: string): GgufValue => {
    if (type === 8) return str(what);
    const size = SIZES[type];
    need(size, what);
    let v: GgufValue;
    switch (type) {
      case 0:
        v = dv.getUint8(at);
        break;
      case 1:
        v = dv.getInt8(at);
        break;
      case 2:
        v = dv.getUint16(at, true);
        break;
      case 3:
        v = dv.getInt16(at, true);
        break;
      case 4:
        v = dv.getUint32(at, true);
        break;
      case 5:
        v = dv.getInt32(at, true);
        break;
      case 6:
        v = dv.getFloat32(at, true);
        break;
      case 7:
        v = dv.getUint8(at) !== 0;
        break;
      case 10: {
        const b = dv.getBigUint64(at, true);
        v = b <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(b) : b;
        break;
      }
      case 11: {
        const b = dv.getBigInt64(at, true);
        v = b <= BigInt(Number.MAX_SAFE_INTEGER) && b >= BigInt(Number.MIN_SAFE_INTEGER) ? Number(b) : b;
        break;
      }
      default:
        v = dv.getFloat64(at, true);
    }
    at += size;
    return v;
  };

  need(24, "the file header");
  if (dec.decode(bytes.subarray(0, 4)) !== "GGUF") {
    throw fail(`it is not a GGUF file (it does not start with "GGUF")`);
  }
  at = 4;
  const version = u32("the version");
  if (version === 1) {
    throw new KvfoldError("UNSUPPORTED", `Cannot load model: ${name} is GGUF version 1 (2, 3 load)`);
  }
  if (version !== 2 && version !== 3) {
    throw fail(`GGUF version ${version} is not one this reader knows (2, 3)`);
  }
  u64("the tensor count");
  const count = u64("the metadata count");
  if (count > BigInt(Math.floor((bytes.length - at) / 13))) {
    throw fail(`the metadata count ${count} is more than the file can hold`);
  }
  const out = new Map<string, GgufValue>();
  for (let k = 0; k < Number(count); k++) {
    const key = str("a metadata key");
    const what = `metadata ${JSON.stringify(key.slice(0, 100))}`;
    const type = u32(what);
    if (type > 12) throw fail(`${what} has value type ${type}, not a GGUF type`);
    let value: GgufValue;
    if (type === 9) {
      const item = u32(what);
      const n = u64(what);
      if (item > 12 || item === 9) {
        throw fail(`${what} is an array of value type ${item}, which is not supported`);
      }
      const min = item === 8 ? 8 : SIZES[item];
      if (n > BigInt(Math.min(MAX_ARRAY_ITEMS, Math.floor((bytes.length - at) / min)))) {
        throw fail(`${what} holds ${n} items, more than the header read holds`);
      }
      const list: GgufValue[] = new Array(Number(n));
      for (let i = 0; i < list.length; i++) list[i] = scalar(item, what);
      value = list;
    } else {
      value = scalar(type, what);
    }
    if (out.has(key)) throw fail(`${what} appears twice`);
    out.set(key, value);
  }
  return out;
}

/**
 * Reads the metadata of the GGUF file at `path` (its first {@link GGUF_METADATA_LIMIT} bytes at most).
 *
 * @example
 * ```ts
 * import { readGgufMetadata } from "./gguf_read.ts";
 * import { writeGguf } from "./gguf_write.ts";
 * const path = await Deno.makeTempFile({ suffix: ".gguf" });
 * await writeGguf(path, { metadata: { "general.name": "x" }, tensors: [] });
 * console.log((await readGgufMetadata(path)).get("general.name")); // x
 * await Deno.remove(path);
 * ```
 */
export async function readGgufMetadata(path: string): Promise<Map<string, GgufValue>> {
  const bytes = await readBoundedHead(path, { action: "load model", maxBytes: GGUF_METADATA_LIMIT });
  return parseGgufMetadata(bytes, path);
}

/**
 * CRC-32 (IEEE 802.3, the one of zlib, zip and PNG), continuable over several buffers.
 *
 * Uses `node:zlib`'s native `crc32` where the runtime has it (Deno, Node.js 22.2+: about 20 GB/s),
 * else a slice-by-8 table in TypeScript (Node.js 20: about 1 GB/s).
 *
 * @module
 */

import * as zlib from "node:zlib";

type Crc32 = (data: Uint8Array, value?: number) => number;

/** CRC-32 tables for slicing by 8: table k holds the CRC of a byte followed by k zero bytes. */
function tables(): Uint32Array {
  const t = new Uint32Array(256 * 8);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  for (let n = 0; n < 256; n++) {
    for (let k = 1; k < 8; k++) {
      t[k * 256 + n] = (t[(k - 1) * 256 + n] >>> 8) ^ t[t[(k - 1) * 256 + n] & 0xff];
    }
  }
  return t;
}

let table: Uint32Array | null = null;

/** The TypeScript CRC-32, exported for tests that compare it with the native one. */
export function crc32Portable(data: Uint8Array, value = 0): number {
  const t = table ??= tables();
  let c = ~value;
  let i = 0;
  const n = data.length;
  const end8 = n - (n & 7);
  for (; i < end8; i += 8) {
    const a = c ^ (data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24));
    c = t[1792 + (a & 0xff)] ^ t[1536 + ((a >>> 8) & 0xff)] ^ t[1280 + ((a >>> 16) & 0xff)] ^
      t[1024 + (a >>> 24)] ^ t[768 + data[i + 4]] ^ t[512 + data[i + 5]] ^ t[256 + data[i + 6]] ^
      t[data[i + 7]];
  }
  for (; i < n; i++) c = t[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

const native = (zlib as unknown as { crc32?: Crc32 }).crc32;

/**
 * The CRC-32 of `data`, continuing from `value` (the CRC of the bytes before it; 0 to start).
 *
 * @example
 * ```ts
 * import { crc32 } from "./_crc32.ts";
 * const enc = new TextEncoder();
 * console.log(crc32(enc.encode("123456789")).toString(16)); // "cbf43926"
 * console.log(crc32(enc.encode("6789"), crc32(enc.encode("12345"))).toString(16)); // "cbf43926"
 * ```
 */
export function crc32(data: Uint8Array, value = 0): number {
  return native === undefined ? crc32Portable(data, value) : native(data, value) >>> 0;
}

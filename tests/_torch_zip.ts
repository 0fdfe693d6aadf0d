/**
 * Builders of `torch.save`-like archives for tests: a zip writer (stored or deflated entries,
 * optional ZIP64 records, correct CRC-32s unless told otherwise) and a tiny pickle writer for the
 * opcodes torch.save uses.
 *
 * @module
 */

import { crc32, deflateRawSync } from "node:zlib";

/** One file of a test archive. */
export interface ZipFile {
  name: string;
  data: Uint8Array;
  /** Deflate the data (method 8) instead of storing it. */
  deflate?: boolean;
  /** The uncompressed size the directory declares (default: the real one). */
  declaredSize?: number;
  /** The CRC-32 the headers declare (default: the real one). */
  crc?: number;
}

/** A zip archive of `files` (pairs of name and data, or {@link ZipFile}s). */
export function zip(files: ([string, Uint8Array] | ZipFile)[], zip64 = false): Uint8Array {
  const parts: Uint8Array[] = [];
  const central: Uint8Array[] = [];
  let offset = 0;
  const enc = new TextEncoder();
  for (const f of files) {
    const file: ZipFile = Array.isArray(f) ? { name: f[0], data: f[1] } : f;
    const n = enc.encode(file.name);
    const body = file.deflate ? new Uint8Array(deflateRawSync(file.data)) : file.data;
    const size = file.declaredSize ?? file.data.length;
    const crc = file.crc ?? crc32(file.data);
    const method = file.deflate ? 8 : 0;
    const local = new Uint8Array(30 + n.length);
    const lv = new DataView(local.buffer);
    lv.setUint32(0, 0x04034b50, true);
    lv.setUint16(8, method, true);
    lv.setUint32(14, crc, true);
    lv.setUint32(18, body.length, true);
    lv.setUint32(22, size, true);
    lv.setUint16(26, n.length, true);
    local.set(n, 30);
    const extra = zip64 ? 4 + 24 : 0;
    const c = new Uint8Array(46 + n.length + extra);
    const cv = new DataView(c.buffer);
    cv.setUint32(0, 0x02014b50, true);
    cv.setUint16(10, method, true);
    cv.setUint32(16, crc, true);
    cv.setUint32(20, zip64 ? 0xffffffff : body.length, true);
    cv.setUint32(24, zip64 ? 0xffffffff : size, true);
    cv.setUint16(28, n.length, true);
    cv.setUint16(30, extra, true);
    cv.setUint32(42, zip64 ? 0xffffffff : offset, true);
    c.set(n, 46);
    if (zip64) {
      const x = 46 + n.length;
      cv.setUint16(x, 1, true);
      cv.setUint16(x + 2, 24, true);
      cv.setBigUint64(x + 4, BigInt(size), true);
      cv.setBigUint64(x + 12, BigInt(body.length), true);
      cv.setBigUint64(x + 20, BigInt(offset), true);
    }
    parts.push(local, body);
    central.push(c);
    offset += local.length + body.length;
  }
  const cdOffset = offset;
  const cdSize = central.reduce((a, c) => a + c.length, 0);
  const tail: Uint8Array[] = [...central];
  if (zip64) {
    const z = new Uint8Array(56 + 20);
    const zv = new DataView(z.buffer);
    zv.setUint32(0, 0x06064b50, true);
    zv.setBigUint64(4, 44n, true);
    zv.setBigUint64(24, BigInt(files.length), true);
    zv.setBigUint64(32, BigInt(files.length), true);
    zv.setBigUint64(40, BigInt(cdSize), true);
    zv.setBigUint64(48, BigInt(cdOffset), true);
    zv.setUint32(56, 0x07064b50, true);
    zv.setBigUint64(64, BigInt(cdOffset + cdSize), true);
    zv.setUint32(72, 1, true);
    tail.push(z);
  }
  const e = new Uint8Array(22);
  const ev = new DataView(e.buffer);
  ev.setUint32(0, 0x06054b50, true);
  ev.setUint16(8, zip64 ? 0xffff : files.length, true);
  ev.setUint16(10, zip64 ? 0xffff : files.length, true);
  ev.setUint32(12, zip64 ? 0xffffffff : cdSize, true);
  ev.setUint32(16, zip64 ? 0xffffffff : cdOffset, true);
  tail.push(e);
  const all = [...parts, ...tail];
  const out = new Uint8Array(all.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of all) out.set(p, at), at += p.length;
  return out;
}

/** A tiny pickle writer for the opcodes torch.save uses. */
export class Pickler {
  bytes: number[] = [0x80, 2];
  private enc = new TextEncoder();
  op(...b: number[]): this {
    this.bytes.push(...b);
    return this;
  }
  str(s: string): this {
    const b = this.enc.encode(s);
    return this.op(0x58, b.length & 0xff, (b.length >> 8) & 0xff, 0, 0, ...b);
  }
  int(n: number): this {
    if (n < 256) return this.op(0x4b, n);
    if (n < 65536) return this.op(0x4d, n & 0xff, n >> 8);
    return this.op(0x4a, n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, (n >>> 24) & 0xff);
  }
  global(m: string, n: string): this {
    return this.op(0x63, ...this.enc.encode(`${m}\n${n}\n`));
  }
  ints(xs: number[]): this {
    this.op(0x28);
    for (const x of xs) this.int(x);
    return this.op(0x74);
  }
  tensor(
    storage: string,
    key: string,
    numel: number,
    offset: number,
    size: number[],
    stride: number[],
  ): this {
    this.global("torch._utils", "_rebuild_tensor_v2").op(0x28);
    this.op(0x28).str("storage").global("torch", storage).str(key).str("cpu").int(numel).op(0x74, 0x51);
    this.int(offset).ints(size).ints(stride).op(0x89).global("collections", "OrderedDict").op(0x29, 0x52);
    return this.op(0x74, 0x52);
  }
  /** The bytes, ending with STOP. */
  done(): Uint8Array {
    return new Uint8Array([...this.bytes, 0x2e]);
  }
}

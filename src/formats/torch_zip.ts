/**
 * The zip layer of `torch.save` checkpoints: a central-directory reader (ZIP64 aware) that trusts
 * nothing it reads. Every entry is checked against its local header and its CRC-32 before its bytes
 * are used, and a deflated entry is inflated no further than its declared size, after that size has
 * been charged to the caller's memory budget.
 *
 * @module
 */

import * as zlib from "node:zlib";
import { KvfoldError } from "../errors.ts";
import { crc32 } from "../_crc32.ts";

/** "Cannot convert NAME: WHAT" as a FORMAT error. */
export function formatError(name: string, what: string): KvfoldError {
  return new KvfoldError("FORMAT", `Cannot convert ${name}: ${what}`);
}

/** The little-endian unsigned 16-bit integer at `at`. */
export function u16(b: Uint8Array, at: number): number {
  return b[at] | (b[at + 1] << 8);
}

/** The little-endian unsigned 32-bit integer at `at`. */
export function u32(b: Uint8Array, at: number): number {
  return (b[at] | (b[at + 1] << 8) | (b[at + 2] << 16) | (b[at + 3] << 24)) >>> 0;
}

/** The little-endian unsigned 64-bit integer at `at`, exact below 2^53. */
export function u64(b: Uint8Array, at: number): number {
  return u32(b, at) + u32(b, at + 4) * 0x100000000;
}

// ---------------------------------------------------------------------------------------------
// Zip

/** One entry of a zip archive, as its central directory record describes it. */
export interface ZipEntry {
  name: string;
  flags: number;
  method: number;
  crc: number;
  compressedSize: number;
  size: number;
  localOffset: number;
}

/** Charges `bytes` of memory to a budget before they are allocated; throws when it runs out. */
export type Reserve = (bytes: number, what: string) => void;

const EOCD = 0x06054b50;
const ZIP64_EOCD = 0x06064b50;
const ZIP64_LOCATOR = 0x07064b50;
const CENTRAL = 0x02014b50;
const LOCAL = 0x04034b50;
const DESCRIPTOR = 0x08074b50;

/**
 * A zip archive held in memory. `read` returns an entry's verified bytes (a view for stored
 * entries); `verifyUnread` checks the entries nobody read, so that no corrupt byte goes unnoticed.
 */
export class ZipArchive {
  readonly entries: ReadonlyMap<string, ZipEntry>;
  #bytes: Uint8Array;
  #name: string;
  #reserve: Reserve;
  #cdOffset: number;
  #verified = new Set<string>();

  constructor(bytes: Uint8Array, name: string, reserve: Reserve) {
    this.#bytes = bytes;
    this.#name = name;
    this.#reserve = reserve;
    const [entries, cdOffset] = readDirectory(bytes, name);
    this.entries = entries;
    this.#cdOffset = cdOffset;
  }

  /** The entry's bytes after its local header, size and CRC-32 checked. */
  read(entry: ZipEntry): Uint8Array {
    const bad = (what: string) => formatError(this.#name, `zip entry ${entry.name} ${what}`);
    const raw = this.#raw(entry, bad);
    let out: Uint8Array;
    if (entry.method === 0) {
      if (entry.compressedSize !== entry.size) throw bad("is stored with two different sizes");
      out = raw;
    } else if (entry.method === 8) {
      this.#reserve(entry.size, `zip entry ${entry.name}`);
      try {
        // One byte more than declared tells an entry that inflates further than it says.
        const buf = zlib.inflateRawSync(raw, { maxOutputLength: entry.size + 1 });
        // A plain Uint8Array: a Buffer's slice() would share memory, unlike a Uint8Array's.
        out = new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
      } catch (e) {
        if ((e as { code?: string }).code === "ERR_BUFFER_TOO_LARGE") {
          throw bad(`inflates to more than its declared ${entry.size} bytes`);
        }
        throw bad(`cannot be inflated (${e instanceof Error ? e.message : String(e)})`);
      }
      if (out.length !== entry.size) {
        throw bad(`inflates to ${out.length} bytes, but its declared size is ${entry.size}`);
      }
    } else {
      throw bad(`uses unsupported compression method ${entry.method}`);
    }
    const crc = crc32(out);
    if (crc !== entry.crc) {
      throw bad(
        `fails its CRC-32 check (0x${hex(crc)}, expected 0x${hex(entry.crc)}): the file is corrupt`,
      );
    }
    this.#verified.add(entry.name);
    return out;
  }

  /** Reads and verifies every entry not read yet, then drops its bytes. */
  verifyUnread(): void {
    for (const entry of this.entries.values()) if (!this.#verified.has(entry.name)) this.read(entry);
  }

  /** The raw (possibly compressed) bytes of an entry, with its local header checked. */
  #raw(entry: ZipEntry, bad: (what: string) => KvfoldError): Uint8Array {
    const b = this.#bytes;
    const at = entry.localOffset;
    if (at + 30 > this.#cdOffset || u32(b, at) !== LOCAL) throw bad("has no valid local header");
    const flags = u16(b, at + 6);
    const nameLen = u16(b, at + 26);
    const start = at + 30 + nameLen + u16(b, at + 28);
    const local = b.subarray(at + 30, at + 30 + nameLen);
    const central = new TextEncoder().encode(entry.name);
    if (local.length !== central.length || local.some((x, i) => x !== central[i])) {
      throw bad("has a local header of another name");
    }
    if (flags !== entry.flags || u16(b, at + 8) !== entry.method) {
      throw bad("has a local header that disagrees with the central directory (flags or method)");
    }
    if (flags & 1) throw bad("is encrypted");
    const end = start + entry.compressedSize;
    if (end > this.#cdOffset) throw bad("lies past the end of the file's data (truncated?)");
    if (flags & 8) {
      // Sizes and CRC follow the data in a descriptor (what torch.save writes); its signature is optional.
      const d = end + 4 <= this.#cdOffset && u32(b, end) === DESCRIPTOR ? end + 4 : end;
      if (d + 4 > this.#cdOffset || u32(b, d) !== entry.crc) {
        throw bad("has a data descriptor whose CRC-32 disagrees with the central directory");
      }
    } else {
      const csize = u32(b, at + 18);
      const size = u32(b, at + 22);
      if (
        u32(b, at + 14) !== entry.crc ||
        (csize !== 0xffffffff && csize !== entry.compressedSize) ||
        (size !== 0xffffffff && size !== entry.size)
      ) {
        throw bad("has a local header that disagrees with the central directory (CRC-32 or sizes)");
      }
    }
    return b.subarray(start, end);
  }
}

function hex(n: number): string {
  return n.toString(16).padStart(8, "0");
}

/** Reads the central directory: the entries by name and where the directory starts. */
function readDirectory(bytes: Uint8Array, name: string): [Map<string, ZipEntry>, number] {
  const bad = (what: string) => formatError(name, `not a valid torch.save zip archive (${what})`);
  if (bytes.length < 22) throw bad("too short to be a zip file");
  let eocd = -1;
  const lowest = Math.max(0, bytes.length - 22 - 0xffff);
  for (let i = bytes.length - 22; i >= lowest; i--) {
    if (u32(bytes, i) === EOCD && i + 22 + u16(bytes, i + 20) === bytes.length) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) throw bad("no end-of-central-directory record; the file may be truncated");
  if (u16(bytes, eocd + 4) !== 0 || u16(bytes, eocd + 6) !== 0) throw bad("a multi-disk archive");
  let count = u16(bytes, eocd + 10);
  let cdSize = u32(bytes, eocd + 12);
  let cdOffset = u32(bytes, eocd + 16);
  if (u16(bytes, eocd + 8) !== count) throw bad("a multi-disk archive");
  // The central directory ends where the ZIP64 record starts, if there is one, else at the EOCD.
  let cdEnd = eocd;
  const loc = eocd - 20;
  if (loc >= 0 && u32(bytes, loc) === ZIP64_LOCATOR) {
    const z = u64(bytes, loc + 8);
    if (z + 56 > loc || u32(bytes, z) !== ZIP64_EOCD) throw bad("bad ZIP64 end-of-central-directory record");
    cdEnd = z;
    if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
      count = u64(bytes, z + 32);
      cdSize = u64(bytes, z + 40);
      cdOffset = u64(bytes, z + 48);
    }
  } else if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
    throw bad("missing ZIP64 end-of-central-directory locator");
  }
  if (cdOffset + cdSize !== cdEnd) throw bad("the central directory is not where the end record says");
  if (count > cdSize / 46) throw bad(`${count} entries cannot fit a central directory of ${cdSize} bytes`);
  const entries = new Map<string, ZipEntry>();
  const decoder = new TextDecoder("utf-8", { fatal: true });
  let at = cdOffset;
  for (let i = 0; i < count; i++) {
    if (at + 46 > cdEnd || u32(bytes, at) !== CENTRAL) throw bad("corrupt central directory");
    const flags = u16(bytes, at + 8);
    const method = u16(bytes, at + 10);
    const crc = u32(bytes, at + 16);
    let compressedSize = u32(bytes, at + 20);
    let size = u32(bytes, at + 24);
    const nameLen = u16(bytes, at + 28);
    const extraLen = u16(bytes, at + 30);
    const commentLen = u16(bytes, at + 32);
    let localOffset = u32(bytes, at + 42);
    const end = at + 46 + nameLen + extraLen + commentLen;
    if (end > cdEnd) throw bad("corrupt central directory");
    const nameBytes = bytes.subarray(at + 46, at + 46 + nameLen);
    let entryName: string;
    try {
      entryName = decoder.decode(nameBytes);
    } catch {
      throw bad(`entry ${i} has a name that is not UTF-8`);
    }
    // ZIP64 extended information: only the fields that are 0xFFFFFFFF in the record, in this order.
    let x = at + 46 + nameLen;
    const xEnd = x + extraLen;
    while (x + 4 <= xEnd) {
      const id = u16(bytes, x);
      const len = u16(bytes, x + 2);
      if (x + 4 + len > xEnd) throw bad(`bad extra field of ${entryName}`);
      if (id === 0x0001) {
        let p = x + 4;
        if (size === 0xffffffff) size = u64(bytes, p), p += 8;
        if (compressedSize === 0xffffffff) compressedSize = u64(bytes, p), p += 8;
        if (localOffset === 0xffffffff) localOffset = u64(bytes, p), p += 8;
        if (p > x + 4 + len) throw bad(`bad ZIP64 extra field of ${entryName}`);
      }
      x += 4 + len;
    }
    if (entries.has(entryName)) throw bad(`entry ${entryName} appears twice`);
    entries.set(entryName, { name: entryName, flags, method, crc, compressedSize, size, localOffset });
    at = end;
  }
  if (at !== cdEnd) throw bad("the central directory has bytes past its last entry");
  return [entries, cdOffset];
}

/**
 * What `src/store.ts` trusts in a store file, and nothing more: the path must be a regular file
 * (or absent), every SQLite failure becomes a `KvfoldError` naming the file, every value read is
 * checked for its type and range naming its column, and each chunk row carries a CRC-32 that is
 * verified when the chunk is read.
 *
 * @module
 */

import { statSync } from "node:fs";
import { dirname } from "node:path";
import { crc32 } from "./_crc32.ts";
import { KvfoldError } from "./errors.ts";

/** A row as `node:sqlite` returns it. */
export type Row = Record<string, unknown>;

function fileKind(st: { isFIFO(): boolean; isCharacterDevice(): boolean; isBlockDevice(): boolean }): string {
  if (st.isFIFO()) return "a FIFO";
  if (st.isCharacterDevice() || st.isBlockDevice()) return "a device";
  return "a socket or other special file";
}

/**
 * Refuses a store path SQLite would hang on or misread: a FIFO (opening it blocks), a device, a
 * directory, a missing folder; and the same for its `-wal`, `-shm` and `-journal` side files.
 * An absent file is fine unless `readOnly` (there is nothing to read). Returns the bytes of the
 * file and its WAL.
 */
export function checkStorePath(path: string, readOnly: boolean): number {
  if (path === ":memory:") return 0;
  let bytes = 0;
  const fail = (why: string, cause?: unknown) =>
    new KvfoldError("IO", `Cannot open store: ${why}`, cause === undefined ? undefined : { cause });
  for (const p of [path, `${path}-wal`, `${path}-shm`, `${path}-journal`]) {
    let st;
    try {
      st = statSync(p, { throwIfNoEntry: false });
    } catch (e) {
      if ((e as { code?: string }).code === "ENOTDIR") {
        throw fail(`${p}: a folder of the path is a file`, e);
      }
      throw fail(`${p} cannot be read (${(e as Error).message})`, e);
    }
    if (st === undefined) {
      if (p !== path) continue;
      if (readOnly) throw fail(`${path} does not exist`);
      const dir = dirname(path);
      let parent;
      try {
        parent = statSync(dir, { throwIfNoEntry: false });
      } catch (e) {
        throw fail(`${path}: its folder ${dir} cannot be read (${(e as Error).message})`, e);
      }
      if (parent === undefined) throw fail(`${path}: its folder ${dir} does not exist`);
      if (!parent.isDirectory()) throw fail(`${path}: ${dir} is not a folder`);
      continue;
    }
    if (st.isDirectory()) throw fail(`${p} is a directory, not a file`);
    if (!st.isFile()) throw fail(`${p} is ${fileKind(st)}, not a regular file`);
    if (p === path || p === `${path}-wal`) bytes += st.size;
  }
  return bytes;
}

/** Whether `e` is SQLite saying another connection holds the lock. */
export function isBusy(e: unknown): boolean {
  return /database is locked|database table is locked|SQLITE_BUSY/i.test((e as Error)?.message ?? "");
}

function isSqliteError(e: unknown): e is Error {
  if (!(e instanceof Error)) return false;
  const code = (e as { code?: unknown }).code;
  // node:sqlite (Deno, Node.js): code ERR_SQLITE_ERROR; node-sqlite3-wasm: SQLite3Error; an integer
  // past 2^53 read without bigints: ERR_OUT_OF_RANGE.
  return code === "ERR_SQLITE_ERROR" || code === "ERR_OUT_OF_RANGE" || /sqlite/i.test(e.name) ||
    (typeof code === "string" && code.startsWith("SQLITE_"));
}

/**
 * `e` as the `KvfoldError` a store operation throws: `KvfoldError`s as they are, SQLite failures
 * classified (damaged file or foreign layout: FORMAT; locks and I/O: IO), anything else (a bug of
 * kvfold) as it is.
 */
export function storeFailure(path: string, action: string, e: unknown): unknown {
  if (e instanceof KvfoldError || !isSqliteError(e)) return e;
  const msg = e.message;
  const format = (why: string) => new KvfoldError("FORMAT", `Cannot ${action}: ${path} ${why}`, { cause: e });
  if (/not a database|file is encrypted/i.test(msg)) return format(`is not a SQLite database (${msg})`);
  if (/malformed|corrupt/i.test(msg)) return format(`is damaged (${msg})`);
  if (/no such (column|table|index)|has no column/i.test(msg)) {
    return format(`does not have kvfold's layout (${msg})`);
  }
  if ((e as { code?: string }).code === "ERR_OUT_OF_RANGE" || /too large to be represented/i.test(msg)) {
    return format(`holds an integer past 2^53 (${msg})`);
  }
  if (/integer overflow/i.test(msg)) return format(`holds counts whose sum overflows (${msg})`);
  if (isBusy(e)) {
    return new KvfoldError("IO", `Cannot ${action}: ${path} is locked by another connection (${msg})`, {
      cause: e,
    });
  }
  return new KvfoldError("IO", `Cannot ${action}: ${path}: ${msg}`, { cause: e });
}

/** Blocks the thread for `ms` milliseconds (store calls are synchronous, like SQLite's own waits). */
export function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

function describe(v: unknown): string {
  if (v === null) return "NULL";
  if (v instanceof Uint8Array) return `a ${v.byteLength}-byte blob`;
  if (typeof v === "string") return `the text ${JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v)}`;
  return `${typeof v} ${String(v)}`;
}

/**
 * Reads typed values out of rows of one store, refusing what kvfold never writes with a FORMAT
 * error that names the store, the `table.column` and the row.
 */
export class StoreValues {
  readonly #path: string;
  readonly #action: string;

  constructor(path: string, action: string) {
    this.#path = path;
    this.#action = action;
  }

  /** A FORMAT error about `column` of `where`. */
  error(column: string, where: string, why: string): KvfoldError {
    return new KvfoldError(
      "FORMAT",
      `Cannot ${this.#action}: ${this.#path}: ${column} of ${where} ${why}`,
    );
  }

  /** An integer of at least `min` (a count, an id, a size). */
  int(value: unknown, column: string, where: string, min: number): number {
    let n: number;
    if (typeof value === "bigint") {
      if (value > BigInt(Number.MAX_SAFE_INTEGER) || value < BigInt(Number.MIN_SAFE_INTEGER)) {
        throw this.error(column, where, `is ${value}, past 2^53`);
      }
      n = Number(value);
    } else if (typeof value === "number" && Number.isSafeInteger(value)) {
      n = value;
    } else {
      throw this.error(column, where, `is ${describe(value)}, not an integer`);
    }
    if (n < min) throw this.error(column, where, `is ${n}; it cannot be below ${min}`);
    return n;
  }

  /** An integer of at least `min`, or null. */
  intOrNull(value: unknown, column: string, where: string, min: number): number | null {
    return value === null ? null : this.int(value, column, where, min);
  }

  /** A finite number of at least `min` (an average). */
  real(value: unknown, column: string, where: string, min: number): number {
    const n = typeof value === "bigint" ? this.int(value, column, where, min) : value;
    if (typeof n !== "number" || !Number.isFinite(n)) {
      throw this.error(column, where, `is ${describe(value)}, not a number`);
    }
    if (n < min) throw this.error(column, where, `is ${n}; it cannot be below ${min}`);
    return n;
  }

  /** A text value. */
  text(value: unknown, column: string, where: string): string {
    if (typeof value !== "string") throw this.error(column, where, `is ${describe(value)}, not text`);
    return value;
  }

  /** A text value or null. */
  textOrNull(value: unknown, column: string, where: string): string | null {
    return value === null ? null : this.text(value, column, where);
  }

  /** A blob. */
  blob(value: unknown, column: string, where: string): Uint8Array {
    if (!(value instanceof Uint8Array)) throw this.error(column, where, `is ${describe(value)}, not a blob`);
    return value;
  }

  /** A JSON object stored as text. */
  jsonObject(value: unknown, column: string, where: string): Record<string, unknown> {
    const text = this.text(value, column, where);
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (e) {
      throw this.error(column, where, `is not valid JSON (${(e as Error).message})`);
    }
    if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
      throw this.error(column, where, "is not a JSON object");
    }
    return parsed as Record<string, unknown>;
  }
}

/** The fields of a chunk row its checksum covers. */
export interface ChunkRecord {
  id: number;
  documentId: number;
  ordinal: number;
  tokens: number;
  length: number;
  rows: number;
  hidden: number;
  dtype: string;
  text: string;
  vectors: Uint8Array;
}

const utf8 = new TextEncoder();

/**
 * The checksum of a chunk row: the CRC-32 (zlib's) of the vector blob, then the UTF-8 text, then
 * the UTF-8 of `"\n{id} {documentId} {ordinal} {tokens} {length} {rows} {hidden} {dtype}"`. In
 * Python: `zlib.crc32(vectors + text.encode() + f"\n{id} {document_id} ...".encode())`. It covers
 * the whole row, not only the vectors, so that a flipped byte anywhere in a chunk's page cannot read
 * back as another text, count, shape or id.
 */
export function chunkChecksum(c: ChunkRecord): number {
  let crc = crc32(c.vectors);
  crc = crc32(utf8.encode(c.text), crc);
  const tail =
    `\n${c.id} ${c.documentId} ${c.ordinal} ${c.tokens} ${c.length} ${c.rows} ${c.hidden} ${c.dtype}`;
  return crc32(utf8.encode(tail), crc);
}

/**
 * Reads of files kvfold takes from users (configs, tokenizers, checkpoints) that never hang and
 * never grow without end: only regular files are opened (a FIFO would block, `/dev/zero` would
 * never end), and no more than a size limit is read, even when the file grows while it is read.
 *
 * @module
 */

import { KvfoldError } from "./errors.ts";

/** Default limit of a JSON side file (config, tokenizer, index): 256 MiB. */
export const JSON_FILE_LIMIT = 256 * 1024 * 1024;

/** Options of {@link readBoundedFile}. */
export interface BoundedReadOptions {
  /** What is being done, for the message: "load model" gives "Cannot load model: ...". */
  action: string;
  /** Most bytes accepted; default {@link JSON_FILE_LIMIT}. */
  maxBytes?: number;
}

/**
 * The bytes of a regular file of at most `maxBytes` bytes, or a `KvfoldError` (IO or FORMAT) that
 * names the file.
 *
 * @example
 * ```ts
 * import { readBoundedFile } from "./_bounded_read.ts";
 * try {
 *   await readBoundedFile("/dev/zero", { action: "load model" });
 * } catch (e) {
 *   console.log((e as Error).message); // Cannot load model: /dev/zero is not a regular file
 * }
 * ```
 */
export async function readBoundedFile(path: string, options: BoundedReadOptions): Promise<Uint8Array> {
  const limit = options.maxBytes ?? JSON_FILE_LIMIT;
  const fail = (code: "IO" | "FORMAT", why: string, cause?: unknown) =>
    new KvfoldError(code, `Cannot ${options.action}: ${path} ${why}`, cause ? { cause } : undefined);
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw fail("IO", "does not exist", e);
    throw fail("IO", `cannot be read (${(e as Error).message})`, e);
  }
  if (info.isDirectory) throw fail("IO", "is a directory, not a file");
  if (!info.isFile) throw fail("IO", "is not a regular file");
  if (info.size > limit) throw fail("FORMAT", `is ${info.size} bytes, more than the limit of ${limit}`);
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (e) {
    throw fail("IO", `cannot be opened (${(e as Error).message})`, e);
  }
  try {
    // One byte more than the limit tells a file that grew past it from one that ends there.
    const buf = new Uint8Array(Math.min(limit + 1, Math.max(info.size + 1, 4096)));
    let n = 0;
    let grown = buf;
    for (;;) {
      if (n === grown.length) {
        if (grown.length > limit) throw fail("FORMAT", `grew past the limit of ${limit} bytes while read`);
        const next = new Uint8Array(Math.min(limit + 1, grown.length * 2));
        next.set(grown);
        grown = next;
      }
      const r = await file.read(grown.subarray(n));
      if (r === null) break;
      n += r;
    }
    return grown.subarray(0, n);
  } catch (e) {
    if (e instanceof KvfoldError) throw e;
    throw fail("IO", `cannot be read (${(e as Error).message})`, e);
  } finally {
    file.close();
  }
}

/**
 * The first `maxBytes` bytes of a regular file (all of it when shorter): for formats whose header
 * is read on the TS side while the bulk is left to the native library (GGUF metadata).
 */
export async function readBoundedHead(path: string, options: BoundedReadOptions): Promise<Uint8Array> {
  const limit = options.maxBytes ?? JSON_FILE_LIMIT;
  const fail = (why: string, cause?: unknown) =>
    new KvfoldError("IO", `Cannot ${options.action}: ${path} ${why}`, cause ? { cause } : undefined);
  let file: Deno.FsFile;
  let size: number;
  try {
    const info = await Deno.stat(path);
    if (!info.isFile) throw fail(info.isDirectory ? "is a directory, not a file" : "is not a regular file");
    size = info.size;
    file = await Deno.open(path, { read: true });
  } catch (e) {
    if (e instanceof KvfoldError) throw e;
    throw fail(
      e instanceof Deno.errors.NotFound ? "does not exist" : `cannot be read (${(e as Error).message})`,
      e,
    );
  }
  try {
    // Sized by the file, so a small file costs little; a file that grows meanwhile is cut there.
    const buf = new Uint8Array(Math.min(limit, size));
    let n = 0;
    while (n < buf.length) {
      const r = await file.read(buf.subarray(n));
      if (r === null) break;
      n += r;
    }
    return buf.subarray(0, n);
  } catch (e) {
    throw fail(`cannot be read (${(e as Error).message})`, e);
  } finally {
    file.close();
  }
}

/** The UTF-8 text of a regular file; see {@link readBoundedFile}. */
export async function readBoundedText(path: string, options: BoundedReadOptions): Promise<string> {
  const bytes = await readBoundedFile(path, options);
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch (e) {
    throw new KvfoldError("FORMAT", `Cannot ${options.action}: ${path} is not valid UTF-8 text`, {
      cause: e,
    });
  }
}

/** The parsed JSON of a regular file; a syntax error becomes a FORMAT error naming the file. */
export async function readBoundedJson(path: string, options: BoundedReadOptions): Promise<unknown> {
  const text = await readBoundedText(path, options);
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new KvfoldError(
      "FORMAT",
      `Cannot ${options.action}: ${path} is not valid JSON (${(e as Error).message})`,
      {
        cause: e,
      },
    );
  }
}

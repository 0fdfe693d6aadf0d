/**
 * The part of the `Deno` namespace that kvfold's `src/` and `integrations/` use, for Node.js (20+) and
 * Bun, so that the same code runs there unchanged. Importing this module installs it as
 * `globalThis.Deno` when there is no `Deno`; under Deno it does nothing.
 *
 * Files, directories and temp paths map to `node:fs`, subprocesses to `node:child_process`, signals
 * and the environment to `process`, and the FFI (`dlopen`, `UnsafePointer`, `UnsafePointerView`) to
 * `ffi-rs` through `./ffi.ts`. Node's errors become `Deno.errors.*` classes where the code tests them
 * (`NotFound`, `AlreadyExists`, ...), keeping Node's message.
 *
 * @module
 */

import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as fsp from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { dlopen, UnsafePointer, UnsafePointerView } from "./ffi.ts";

type PathLike = string | URL;

class NotFound extends Error {
  override name = "NotFound";
}
class AlreadyExists extends Error {
  override name = "AlreadyExists";
}
class PermissionDenied extends Error {
  override name = "PermissionDenied";
}
class NotADirectory extends Error {
  override name = "NotADirectory";
}
class IsADirectory extends Error {
  override name = "IsADirectory";
}
class DirectoryNotEmpty extends Error {
  override name = "DirectoryNotEmpty";
}

const ERROR_OF_CODE: Record<string, new (message: string, options?: ErrorOptions) => Error> = {
  ENOENT: NotFound,
  EEXIST: AlreadyExists,
  EACCES: PermissionDenied,
  EPERM: PermissionDenied,
  ENOTDIR: NotADirectory,
  EISDIR: IsADirectory,
  ENOTEMPTY: DirectoryNotEmpty,
};

/** Node's `ENOENT`-style error as the `Deno.errors` class code tests with `instanceof`. */
function denoError(e: unknown): unknown {
  const code = (e as NodeJS.ErrnoException | null)?.code;
  const Class = code ? ERROR_OF_CODE[code] : undefined;
  if (!Class) return e;
  const out = new Class((e as Error).message, { cause: e });
  Object.assign(out, { code });
  return out;
}

async function mapped<T>(run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (e) {
    throw denoError(e);
  }
}

function mappedSync<T>(run: () => T): T {
  try {
    return run();
  } catch (e) {
    throw denoError(e);
  }
}

/** `Deno.FileInfo` from Node's `Stats`. */
function fileInfo(st: fs.Stats) {
  return {
    isFile: st.isFile(),
    isDirectory: st.isDirectory(),
    isSymlink: st.isSymbolicLink(),
    size: st.size,
    mtime: st.mtime,
    atime: st.atime,
    birthtime: st.birthtime,
    ctime: st.ctime,
    dev: st.dev,
    ino: st.ino,
    mode: st.mode,
    nlink: st.nlink,
    uid: st.uid,
    gid: st.gid,
    rdev: st.rdev,
    blksize: st.blksize,
    blocks: st.blocks,
    isBlockDevice: st.isBlockDevice(),
    isCharDevice: st.isCharacterDevice(),
    isFifo: st.isFIFO(),
    isSocket: st.isSocket(),
  };
}

/** Options of `Deno.open`, as far as Node's open flags express them. */
interface OpenOptions {
  read?: boolean;
  write?: boolean;
  append?: boolean;
  truncate?: boolean;
  create?: boolean;
  createNew?: boolean;
  mode?: number;
}

function openFlags(o: OpenOptions): number {
  const c = fs.constants;
  const write = o.write || o.append;
  let flags = write ? (o.read ? c.O_RDWR : c.O_WRONLY) : c.O_RDONLY;
  if (o.append) flags |= c.O_APPEND;
  if (o.truncate) flags |= c.O_TRUNC;
  if (o.create || o.createNew) flags |= c.O_CREAT;
  if (o.createNew) flags |= c.O_EXCL;
  return flags;
}

/**
 * `Deno.FsFile` over a raw file descriptor: the calls kvfold makes on files. Not a `FileHandle`,
 * because Deno's `close()` is synchronous and a `FileHandle` closed behind its back fails when the
 * garbage collector closes it again.
 */
class FsFile {
  readonly #fd: number;
  constructor(fd: number) {
    this.#fd = fd;
  }
  /** Writes some of `p`; resolves to the count written. */
  write(p: Uint8Array): Promise<number> {
    return new Promise((resolve, reject) =>
      fs.write(this.#fd, p, 0, p.byteLength, null, (e, n) => e ? reject(denoError(e)) : resolve(n))
    );
  }
  /** Reads into `p`; resolves to the count read, or null at the end of the file. */
  read(p: Uint8Array): Promise<number | null> {
    return new Promise((resolve, reject) =>
      fs.read(this.#fd, p, 0, p.byteLength, null, (e, n) => {
        if (e) reject(denoError(e));
        else resolve(n === 0 && p.byteLength > 0 ? null : n);
      })
    );
  }
  /** Information about the open file. */
  stat() {
    return Promise.resolve(fileInfo(mappedSync(() => fs.fstatSync(this.#fd))));
  }
  /** Flushes data and metadata to disk. */
  sync(): Promise<void> {
    return new Promise((resolve, reject) => fs.fsync(this.#fd, (e) => e ? reject(denoError(e)) : resolve()));
  }
  /** Closes the file. */
  close(): void {
    mappedSync(() => fs.closeSync(this.#fd));
  }
  [Symbol.dispose](): void {
    this.close();
  }
}

function tempName(o: { dir?: string; prefix?: string; suffix?: string } = {}): string {
  const rand = Math.random().toString(36).slice(2, 10);
  return join(o.dir ?? tmpdir(), `${o.prefix ?? ""}${rand}${o.suffix ?? ""}`);
}

/** Options of `Deno.Command` that kvfold passes. */
interface CommandOptions {
  args?: string[];
  cwd?: string | URL;
  env?: Record<string, string>;
  clearEnv?: boolean;
  stdin?: "piped" | "inherit" | "null";
  stdout?: "piped" | "inherit" | "null";
  stderr?: "piped" | "inherit" | "null";
}

/** `Deno.Command`: runs a program to completion with `output()`. */
class Command {
  #cmd: string;
  #options: CommandOptions;
  constructor(cmd: string | URL, options: CommandOptions = {}) {
    this.#cmd = cmd instanceof URL ? decodeURIComponent(cmd.pathname) : cmd;
    this.#options = options;
  }

  /** Runs the program and resolves with its exit status and collected output. */
  output(): Promise<{
    success: boolean;
    code: number;
    signal: string | null;
    stdout: Uint8Array;
    stderr: Uint8Array;
  }> {
    const o = this.#options;
    const io = (v: string | undefined, dflt: "pipe" | "inherit") =>
      v === "null" ? "ignore" : v === "inherit" ? "inherit" : v === "piped" ? "pipe" : dflt;
    return new Promise((resolve, reject) => {
      const child = spawn(this.#cmd, o.args ?? [], {
        cwd: o.cwd,
        env: o.clearEnv ? o.env : { ...process.env, ...o.env },
        // output() has nothing to write to a piped stdin, so the child gets none unless it inherits ours.
        stdio: [o.stdin === "inherit" ? "inherit" : "ignore", io(o.stdout, "pipe"), io(o.stderr, "pipe")],
      });
      const out: Buffer[] = [], err: Buffer[] = [];
      child.stdout?.on("data", (d: Buffer) => out.push(d));
      child.stderr?.on("data", (d: Buffer) => err.push(d));
      child.on("error", (e) => reject(denoError(e)));
      child.on("close", (code, signal) =>
        resolve({
          success: code === 0,
          code: code ?? 1,
          signal,
          stdout: new Uint8Array(Buffer.concat(out)),
          stderr: new Uint8Array(Buffer.concat(err)),
        }));
    });
  }
}

/** A `Deno.stdout` / `Deno.stderr` writer over a file descriptor. */
function writer(fd: number, stream: NodeJS.WriteStream) {
  return {
    writeSync: (p: Uint8Array): number => fs.writeSync(fd, p),
    write: (p: Uint8Array): Promise<number> => Promise.resolve(fs.writeSync(fd, p)),
    isTerminal: (): boolean => stream.isTTY === true,
  };
}

const signalListeners = new Map<() => void, () => void>();

/** The `Deno` subset, built on Node's APIs. */
export const runtime = {
  args: process.argv.slice(2),
  pid: process.pid,
  build: { os: process.platform === "win32" ? "windows" : process.platform, arch: process.arch },
  env: {
    get: (key: string): string | undefined => process.env[key],
    set: (key: string, value: string): void => void (process.env[key] = value),
    delete: (key: string): void => void delete process.env[key],
    has: (key: string): boolean => key in process.env,
    toObject: (): Record<string, string> => ({ ...process.env } as Record<string, string>),
  },
  errors: { NotFound, AlreadyExists, PermissionDenied, NotADirectory, IsADirectory, DirectoryNotEmpty },
  cwd: (): string => process.cwd(),
  execPath: (): string => process.execPath,
  exit: (code?: number): never => process.exit(code),
  addSignalListener(signal: NodeJS.Signals, handler: () => void): void {
    const wrapped = () => handler();
    signalListeners.set(handler, wrapped);
    process.on(signal, wrapped);
  },
  removeSignalListener(signal: NodeJS.Signals, handler: () => void): void {
    const wrapped = signalListeners.get(handler);
    if (wrapped) process.off(signal, wrapped);
    signalListeners.delete(handler);
  },
  stdout: writer(1, process.stdout),
  stderr: writer(2, process.stderr),

  readFile: async (path: PathLike): Promise<Uint8Array> =>
    new Uint8Array(await mapped(() => fsp.readFile(path))),
  readFileSync: (path: PathLike): Uint8Array => new Uint8Array(mappedSync(() => fs.readFileSync(path))),
  readTextFile: (path: PathLike): Promise<string> => mapped(() => fsp.readFile(path, "utf8")),
  readTextFileSync: (path: PathLike): string => mappedSync(() => fs.readFileSync(path, "utf8")),
  writeFile: (path: PathLike, data: Uint8Array): Promise<void> => mapped(() => fsp.writeFile(path, data)),
  writeTextFile: (path: PathLike, data: string, o: { append?: boolean } = {}): Promise<void> =>
    mapped(() => (o.append ? fsp.appendFile(path, data) : fsp.writeFile(path, data))),
  stat: async (path: PathLike) => fileInfo(await mapped(() => fsp.stat(path))),
  statSync: (path: PathLike) => fileInfo(mappedSync(() => fs.statSync(path))),
  lstat: async (path: PathLike) => fileInfo(await mapped(() => fsp.lstat(path))),
  mkdir: async (path: PathLike, o: { recursive?: boolean; mode?: number } = {}): Promise<void> => {
    await mapped(() => fsp.mkdir(path, o));
  },
  remove: (path: PathLike, o: { recursive?: boolean } = {}): Promise<void> =>
    mapped(async () => {
      // Deno removes a file or an empty directory, or anything with `recursive`; Node splits these.
      if (o.recursive) return await fsp.rm(path, { recursive: true });
      if ((await fsp.lstat(path)).isDirectory()) return await fsp.rmdir(path);
      return await fsp.unlink(path);
    }),
  rename: (from: PathLike, to: PathLike): Promise<void> => mapped(() => fsp.rename(from, to)),
  copyFile: (from: PathLike, to: PathLike): Promise<void> => mapped(() => fsp.copyFile(from, to)),
  async *readDir(path: PathLike) {
    const dir = await mapped(() => fsp.opendir(path));
    for await (const e of dir) {
      yield { name: e.name, isFile: e.isFile(), isDirectory: e.isDirectory(), isSymlink: e.isSymbolicLink() };
    }
  },
  makeTempDir: (o: { dir?: string; prefix?: string; suffix?: string } = {}): Promise<string> =>
    o.suffix
      ? mapped(async () => {
        const p = tempName(o);
        await fsp.mkdir(p, { mode: 0o700 });
        return p;
      })
      : mapped(() => fsp.mkdtemp(join(o.dir ?? tmpdir(), o.prefix ?? ""))),
  makeTempFile: (o: { dir?: string; prefix?: string; suffix?: string } = {}): Promise<string> =>
    mapped(async () => {
      const p = tempName(o);
      await (await fsp.open(p, "wx", 0o600)).close();
      return p;
    }),
  open: (path: PathLike, o: OpenOptions = { read: true }): Promise<FsFile> =>
    new Promise((resolve, reject) =>
      fs.open(
        path,
        openFlags(o),
        o.mode ?? 0o666,
        (e, fd) => e ? reject(denoError(e)) : resolve(new FsFile(fd)),
      )
    ),

  Command,
  dlopen,
  UnsafePointer,
  UnsafePointerView,
};

if (!("Deno" in globalThis)) {
  Object.defineProperty(globalThis, "Deno", { value: runtime, writable: false, configurable: true });
}

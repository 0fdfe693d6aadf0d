/**
 * `Deno.dlopen`, `Deno.UnsafePointer` and `Deno.UnsafePointerView` for Node.js and Bun, over the npm
 * package `ffi-rs`: the subset that `src/_binding.ts` uses, with Deno's semantics.
 *
 * - A pointer is a `bigint` address, and NULL is `null` (Deno uses opaque objects; nothing in `src/`
 *   looks inside them, it only passes them back or converts them with `UnsafePointer.value`).
 * - A `"buffer"` argument is passed as the address of the typed array's own memory: ffi-rs hands a
 *   `Uint8Array` to C without copying it, also for calls that run on another thread. So native writes
 *   into out-pointers, info structs and a running call's control block are seen by JavaScript, and a
 *   cancel flag JavaScript sets is seen by the running call (`tests/node/ffi.test.mjs` proves each).
 * - `nonblocking: true` runs the call on a new thread (ffi-rs `runInNewThread`) and returns a Promise.
 * - A `{ struct: [...] }` result is returned by value and handed back as its bytes, like Deno does.
 *
 * @module
 */

import { createRequire } from "node:module";
import type * as FfiRs from "npm:ffi-rs@1.3.7";

type FfiRsModule = typeof FfiRs;

let ffiRs: FfiRsModule | null = null;

// Loaded on first use, so that a missing ffi-rs binary fails dlopen with a message, not the import.
function ffi(): FfiRsModule {
  if (!ffiRs) {
    try {
      ffiRs = createRequire(import.meta.url)("ffi-rs") as FfiRsModule;
    } catch (e) {
      throw new Error(
        `Cannot load native libraries: the npm package ffi-rs is not installed for this platform ` +
          `(${(e as Error).message})`,
        { cause: e },
      );
    }
  }
  return ffiRs;
}

/** A native address; `null` is NULL. */
export type PointerValue = bigint | null;

/** A native type as `Deno.dlopen` spells it. */
export type NativeType =
  | "u8"
  | "i32"
  | "u32"
  | "i64"
  | "u64"
  | "isize"
  | "usize"
  | "f32"
  | "f64"
  | "bool"
  | "pointer"
  | "buffer"
  | "void"
  | { struct: readonly NativeType[] };

/** One symbol of a `dlopen` interface. */
export interface ForeignFunction {
  parameters: readonly NativeType[];
  result: NativeType;
  nonblocking?: boolean;
}

const SIZES: Record<string, number> = {
  u8: 1,
  bool: 1,
  i32: 4,
  u32: 4,
  f32: 4,
  i64: 8,
  u64: 8,
  isize: 8,
  usize: 8,
  f64: 8,
  pointer: 8,
  buffer: 8,
};

const WIDE = new Set(["i64", "u64", "isize", "usize", "pointer", "buffer"]);

let libraries = 0;
let libc: string | null = null;

// libc gives the two memory primitives ffi-rs lacks for raw addresses: an identity on a buffer's
// address (memmove with length 0 returns its destination) and a copy out of native memory.
function libcName(): string {
  if (!libc) {
    libc = "kvfold-libc";
    ffi().open({ library: libc, path: process.platform === "darwin" ? "libSystem.B.dylib" : "libc.so.6" });
  }
  return libc;
}

function bytesOf(v: unknown, what: string): Uint8Array {
  if (v instanceof Uint8Array) return v;
  if (ArrayBuffer.isView(v)) return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  if (v instanceof ArrayBuffer) return new Uint8Array(v);
  throw new TypeError(`${what}: expected a typed array or ArrayBuffer for a "buffer" parameter`);
}

function addressOf(p: unknown, what: string): bigint {
  if (p === null || p === undefined) return 0n;
  if (typeof p === "bigint") return BigInt.asIntN(64, p);
  if (typeof p === "number") return BigInt(p);
  throw new TypeError(`${what}: expected a pointer (bigint or null) for a "pointer" parameter`);
}

function scalarType(t: string, where: string): number {
  const D = ffi().DataType;
  switch (t) {
    case "u8":
    case "bool":
      return D.U8;
    case "i32":
      return D.I32;
    case "u32":
      return D.U32;
    case "i64":
    case "u64":
    case "isize":
    case "usize":
    case "pointer":
      return D.BigInt;
    case "f32":
      return D.Float;
    case "f64":
      return D.Double;
    case "void":
      return D.Void;
  }
  throw new TypeError(
    `Cannot bind ${where}: native type ${JSON.stringify(t)} is not supported on Node.js/Bun`,
  );
}

/** C layout (natural alignment) of a struct's fields: offsets and total size. */
function layout(fields: readonly NativeType[], where: string): { offsets: number[]; size: number } {
  let at = 0, align = 1;
  const offsets: number[] = [];
  for (const f of fields) {
    if (typeof f !== "string" || f === "void") {
      throw new TypeError(`Cannot bind ${where}: nested structs and void fields are not supported`);
    }
    const n = SIZES[f];
    at = Math.ceil(at / n) * n;
    offsets.push(at);
    at += n;
    align = Math.max(align, n);
  }
  return { offsets, size: Math.ceil(at / align) * align };
}

interface StructResult {
  record: Record<string, unknown>;
  fields: readonly string[];
  offsets: number[];
  size: number;
}

function structResult(fields: readonly NativeType[], where: string): StructResult {
  const D = ffi().DataType;
  const { offsets, size } = layout(fields, where);
  const names = fields as readonly string[];
  // ffi-rs cannot read f32 struct fields (it refuses them as "not double"), so they travel as i32
  // bits and are put back as bytes unchanged. That is only ABI-neutral when the struct is returned
  // in memory (over 16 bytes on x86-64 and arm64); smaller float structs come back in vector
  // registers, so they are refused rather than read wrong.
  if (names.includes("f32") && size <= 16) {
    throw new TypeError(
      `Cannot bind ${where}: structs of 16 bytes or less with f32 fields are not supported`,
    );
  }
  const record: Record<string, unknown> = {};
  names.forEach((f, i) => (record[`f${i}`] = f === "f32" ? D.I32 : scalarType(f, where)));
  record.ffiTypeTag = D.StackStruct;
  return { record, fields: names, offsets, size };
}

function packStruct(s: StructResult, value: Record<string, unknown>): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(new ArrayBuffer(s.size));
  const v = new DataView(out.buffer);
  s.fields.forEach((f, i) => {
    const x = value[`f${i}`], o = s.offsets[i];
    if (SIZES[f] === 8 && f !== "f64") v.setBigInt64(o, BigInt.asIntN(64, BigInt(x as bigint)), true);
    else if (f === "f64") v.setFloat64(o, x as number, true);
    else if (SIZES[f] === 4) v.setInt32(o, x as number, true); // f32 arrives as its i32 bits
    else v.setUint8(o, x as number);
  });
  return out;
}

function bindSymbol(library: string, name: string, def: ForeignFunction): (...args: unknown[]) => unknown {
  const { load, DataType: D } = ffi();
  const where = `symbol ${name}`;
  const params = def.parameters.map((p) => {
    if (typeof p !== "string") {
      throw new TypeError(`Cannot bind ${where}: struct parameters are not supported`);
    }
    return p === "buffer" ? D.U8Array : scalarType(p, where);
  });
  const kinds = def.parameters as readonly string[];
  const struct = typeof def.result === "string" ? null : structResult(def.result.struct, where);
  const retType = struct ? struct.record : scalarType(def.result as string, where);
  const result = def.result;
  const convert = (r: unknown): unknown => {
    if (struct) return packStruct(struct, r as Record<string, unknown>);
    if (result === "pointer") return r === 0n ? null : r;
    if (result === "bool") return r !== 0;
    if (result === "u64" || result === "usize") return BigInt.asUintN(64, r as bigint);
    return r;
  };
  const nonblocking = def.nonblocking === true;
  return (...args: unknown[]) => {
    if (args.length !== params.length) {
      throw new TypeError(`Cannot call ${name}: expected ${params.length} arguments, got ${args.length}`);
    }
    let types = params;
    const values = args.map((a, i) => {
      const k = kinds[i];
      if (k === "pointer") return addressOf(a, `Cannot call ${name}`);
      if (k === "buffer") {
        if (a !== null && a !== undefined) return bytesOf(a, `Cannot call ${name}`);
        if (types === params) types = [...params];
        types[i] = D.BigInt; // Deno passes a null buffer as NULL
        return 0n;
      }
      if (WIDE.has(k)) return BigInt.asIntN(64, BigInt(a as bigint));
      if (k === "bool") return a ? 1 : 0;
      return a;
    });
    const call = { library, funcName: name, retType, paramsType: types, paramsValue: values };
    if (!nonblocking) return convert(load(call as Parameters<typeof load>[0]));
    const running = load({ ...call, runInNewThread: true } as Parameters<typeof load>[0]) as Promise<unknown>;
    // The native call holds raw addresses of these buffers while it runs on its thread: keep them
    // reachable until it settles, whatever the caller still references.
    return running.then((r) => (values.length, convert(r)));
  };
}

/** What {@link dlopen} returns: the bound symbols and `close()`. */
export interface DynamicLibrary<S extends Record<string, ForeignFunction>> {
  symbols: { [K in keyof S]: (...args: unknown[]) => unknown };
  close(): void;
}

/** `Deno.dlopen`: opens a shared library and binds the symbols of `symbols`. */
export function dlopen<S extends Record<string, ForeignFunction>>(
  path: string | URL,
  symbols: S,
): DynamicLibrary<S> {
  const file = path instanceof URL ? decodeURIComponent(path.pathname) : path;
  const library = `kvfold-lib-${++libraries}`;
  try {
    ffi().open({ library, path: file });
  } catch (e) {
    throw new Error(`Could not open library ${file}: ${(e as Error).message}`, { cause: e });
  }
  const bound = {} as DynamicLibrary<S>["symbols"];
  for (const [name, def] of Object.entries(symbols)) {
    (bound as Record<string, unknown>)[name] = bindSymbol(library, name, def);
  }
  return { symbols: bound, close: () => ffi().close(library) };
}

/** `Deno.UnsafePointer`: addresses as bigints. */
export const UnsafePointer = {
  /** The pointer at address `value` (`null` for 0). */
  create(value: bigint | number): PointerValue {
    const v = BigInt(value);
    return v === 0n ? null : v;
  },
  /** The address of `p` (0 for `null`). */
  value(p: PointerValue): bigint {
    return p ?? 0n;
  },
  /** `p` moved by `offset` bytes. */
  offset(p: PointerValue, offset: number): PointerValue {
    return UnsafePointer.create((p ?? 0n) + BigInt(offset));
  },
  /** Whether two pointers have the same address. */
  equals(a: PointerValue, b: PointerValue): boolean {
    return (a ?? 0n) === (b ?? 0n);
  },
  /**
   * The address of a typed array's memory, the one ffi-rs passes for it (`null` when empty). An
   * ArrayBuffer's memory never moves, so the address stays valid while the buffer is reachable.
   */
  of(buf: ArrayBufferView | ArrayBuffer): PointerValue {
    const bytes = bytesOf(buf, "Cannot take the address");
    if (bytes.byteLength === 0) return null;
    const { load, DataType: D } = ffi();
    const p = load({
      library: libcName(),
      funcName: "memmove",
      retType: D.BigInt,
      paramsType: [D.U8Array, D.U8Array, D.BigInt],
      paramsValue: [bytes, bytes, 0n],
    }) as bigint;
    return UnsafePointer.create(p);
  },
};

/** `Deno.UnsafePointerView`: reads native memory at a pointer. */
export class UnsafePointerView {
  readonly pointer: bigint;

  constructor(pointer: PointerValue) {
    if (pointer === null) throw new TypeError("Cannot read through a NULL pointer");
    this.pointer = pointer;
  }

  /** Copies `destination.byteLength` bytes from `pointer + offset` into `destination`. */
  copyInto(destination: ArrayBufferView | ArrayBuffer, offset = 0): void {
    const bytes = bytesOf(destination, "Cannot copy native memory");
    if (bytes.byteLength === 0) return;
    const { load, DataType: D } = ffi();
    load({
      library: libcName(),
      funcName: "memcpy",
      retType: D.BigInt,
      paramsType: [D.U8Array, D.BigInt, D.BigInt],
      paramsValue: [bytes, this.pointer + BigInt(offset), BigInt(bytes.byteLength)],
    });
  }

  /** The NUL-terminated UTF-8 string at `pointer + offset`. */
  getCString(offset = 0): string {
    const { load, DataType: D } = ffi();
    const n = Number(load({
      library: libcName(),
      funcName: "strlen",
      retType: D.BigInt,
      paramsType: [D.BigInt],
      paramsValue: [this.pointer + BigInt(offset)],
    }));
    const bytes = new Uint8Array(new ArrayBuffer(n));
    this.copyInto(bytes, offset);
    return new TextDecoder().decode(bytes);
  }

  /** The NUL-terminated UTF-8 string at `pointer + offset`. */
  static getCString(pointer: PointerValue, offset = 0): string {
    return new UnsafePointerView(pointer).getCString(offset);
  }
}

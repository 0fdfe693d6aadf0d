/**
 * A reader of PyTorch `torch.save` zip checkpoints (`pytorch_model.bin`, `adapter_model.bin`) and a
 * converter to safetensors, written from scratch: a zip central-directory reader (ZIP64 aware) and a
 * restricted pickle VM that only builds data. The VM knows the opcodes a plain tensor state dict uses
 * and resolves globals against a fixed allow-list; any other global (`os.system`, `builtins.eval`,
 * ...) is refused before the pickle is interpreted, and nothing is ever called or executed.
 *
 * @module
 */

import { inflateRawSync } from "node:zlib";
import { basename, join, resolve } from "node:path";
import { KvfoldError } from "./errors.ts";
import { DTYPE_SIZES, type SafetensorsDtype, type TensorView, writeSafetensorsFile } from "./safetensors.ts";

// ---------------------------------------------------------------------------------------------
// Zip

/** One entry of a zip archive: its name and where its bytes lie. */
interface ZipEntry {
  name: string;
  method: number;
  compressedSize: number;
  size: number;
  localOffset: number;
}

function formatError(name: string, what: string): KvfoldError {
  return new KvfoldError("FORMAT", `Cannot convert ${name}: ${what}`);
}

function u16(b: Uint8Array, at: number): number {
  return b[at] | (b[at + 1] << 8);
}

function u32(b: Uint8Array, at: number): number {
  return (b[at] | (b[at + 1] << 8) | (b[at + 2] << 16) | (b[at + 3] << 24)) >>> 0;
}

function u64(b: Uint8Array, at: number): number {
  return u32(b, at) + u32(b, at + 4) * 0x100000000;
}

/** Reads the central directory of a zip archive. */
function readZipDirectory(bytes: Uint8Array, name: string): Map<string, ZipEntry> {
  const bad = (what: string) => formatError(name, `not a valid torch.save zip archive (${what})`);
  if (bytes.length < 22) throw bad("too short to be a zip file");
  let eocd = -1;
  const lowest = Math.max(0, bytes.length - 22 - 0xffff);
  for (let i = bytes.length - 22; i >= lowest; i--) {
    if (u32(bytes, i) === 0x06054b50) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) throw bad("no end-of-central-directory record; the file may be truncated");
  let count = u16(bytes, eocd + 10);
  let cdSize = u32(bytes, eocd + 12);
  let cdOffset = u32(bytes, eocd + 16);
  if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
    const loc = eocd - 20;
    if (loc < 0 || u32(bytes, loc) !== 0x07064b50) {
      throw bad("missing ZIP64 end-of-central-directory locator");
    }
    const z = u64(bytes, loc + 8);
    if (z + 56 > bytes.length || u32(bytes, z) !== 0x06064b50) {
      throw bad("bad ZIP64 end-of-central-directory record");
    }
    count = u64(bytes, z + 32);
    cdSize = u64(bytes, z + 40);
    cdOffset = u64(bytes, z + 48);
  }
  if (cdOffset + cdSize > bytes.length) throw bad("central directory lies past the end of the file");
  const entries = new Map<string, ZipEntry>();
  const decoder = new TextDecoder();
  let at = cdOffset;
  for (let i = 0; i < count; i++) {
    if (at + 46 > bytes.length || u32(bytes, at) !== 0x02014b50) throw bad("corrupt central directory");
    const method = u16(bytes, at + 10);
    let compressedSize = u32(bytes, at + 20);
    let size = u32(bytes, at + 24);
    const nameLen = u16(bytes, at + 28);
    const extraLen = u16(bytes, at + 30);
    const commentLen = u16(bytes, at + 32);
    let localOffset = u32(bytes, at + 42);
    const end = at + 46 + nameLen + extraLen + commentLen;
    if (end > bytes.length) throw bad("corrupt central directory");
    const entryName = decoder.decode(bytes.subarray(at + 46, at + 46 + nameLen));
    // ZIP64 extended information: only the fields that are 0xFFFFFFFF in the record, in this order.
    let x = at + 46 + nameLen;
    const xEnd = x + extraLen;
    while (x + 4 <= xEnd) {
      const id = u16(bytes, x);
      const len = u16(bytes, x + 2);
      if (id === 0x0001) {
        let p = x + 4;
        if (size === 0xffffffff) size = u64(bytes, p), p += 8;
        if (compressedSize === 0xffffffff) compressedSize = u64(bytes, p), p += 8;
        if (localOffset === 0xffffffff) localOffset = u64(bytes, p), p += 8;
        if (p > x + 4 + len) throw bad(`bad ZIP64 extra field of ${entryName}`);
      }
      x += 4 + len;
    }
    entries.set(entryName, { name: entryName, method, compressedSize, size, localOffset });
    at = end;
  }
  return entries;
}

/** The bytes of one zip entry (a view for stored entries). */
function readZipEntry(bytes: Uint8Array, entry: ZipEntry, name: string): Uint8Array {
  const bad = (what: string) => formatError(name, `zip entry ${entry.name} ${what}`);
  const at = entry.localOffset;
  if (at + 30 > bytes.length || u32(bytes, at) !== 0x04034b50) throw bad("has no valid local header");
  const start = at + 30 + u16(bytes, at + 26) + u16(bytes, at + 28);
  const end = start + entry.compressedSize;
  if (end > bytes.length) throw bad("lies past the end of the file (truncated?)");
  const raw = bytes.subarray(start, end);
  if (entry.method === 0) return raw;
  if (entry.method === 8) {
    let out: Uint8Array;
    try {
      out = new Uint8Array(inflateRawSync(raw));
    } catch (e) {
      throw bad(`cannot be inflated: ${e instanceof Error ? e.message : String(e)}`);
    }
    if (out.length !== entry.size) throw bad("inflates to the wrong size");
    return out;
  }
  throw bad(`uses unsupported compression method ${entry.method}`);
}

// ---------------------------------------------------------------------------------------------
// Pickle VM

/** A `module.name` reference the pickle made (only allow-listed ones are ever created). */
class PGlobal {
  constructor(readonly module: string, readonly name: string) {}
  get full(): string {
    return `${this.module}.${this.name}`;
  }
}

/** A persistent-id storage reference. */
class PStorage {
  constructor(
    readonly dtype: SafetensorsDtype,
    readonly key: string,
    readonly numel: number,
  ) {}
}

/** A tensor rebuilt from a storage: already materialised as contiguous bytes. */
class PTensor {
  constructor(readonly view: TensorView) {}
}

/** Tuples are frozen arrays, lists plain arrays; dicts are Maps. */
type PValue = unknown;

const STORAGE_DTYPES: Readonly<Record<string, SafetensorsDtype>> = {
  "torch.FloatStorage": "F32",
  "torch.HalfStorage": "F16",
  "torch.BFloat16Storage": "BF16",
  "torch.DoubleStorage": "F64",
  "torch.LongStorage": "I64",
  "torch.IntStorage": "I32",
  "torch.ShortStorage": "I16",
  "torch.CharStorage": "I8",
  "torch.ByteStorage": "U8",
  "torch.BoolStorage": "BOOL",
  "torch.UntypedStorage": "U8",
  "torch.storage.UntypedStorage": "U8",
};

const ALLOWED_GLOBALS: ReadonlySet<string> = new Set([
  "collections.OrderedDict",
  "torch._utils._rebuild_tensor",
  "torch._utils._rebuild_tensor_v2",
  "torch._utils._rebuild_parameter",
  "torch._utils._rebuild_parameter_with_state",
  "torch._tensor._rebuild_from_type_v2",
  "torch.Tensor",
  "torch.nn.parameter.Parameter",
  ...Object.keys(STORAGE_DTYPES),
]);

function refuseGlobal(name: string, full: string): KvfoldError {
  return formatError(
    name,
    `the pickle references ${full}, which is not part of a plain tensor state dict; refusing to load it`,
  );
}

// Opcodes with the byte length of their inline argument (-1: special handling).
const OP = {
  PROTO: 0x80,
  FRAME: 0x95,
  EMPTY_DICT: 0x7d,
  EMPTY_LIST: 0x5d,
  EMPTY_TUPLE: 0x29,
  MARK: 0x28,
  BINUNICODE: 0x58,
  SHORT_BINUNICODE: 0x8c,
  BINUNICODE8: 0x8d,
  BINSTRING: 0x54,
  SHORT_BINSTRING: 0x55,
  BININT: 0x4a,
  BININT1: 0x4b,
  BININT2: 0x4d,
  LONG1: 0x8a,
  LONG4: 0x8b,
  BINFLOAT: 0x47,
  NEWTRUE: 0x88,
  NEWFALSE: 0x89,
  NONE: 0x4e,
  TUPLE: 0x74,
  TUPLE1: 0x85,
  TUPLE2: 0x86,
  TUPLE3: 0x87,
  SETITEM: 0x73,
  SETITEMS: 0x75,
  APPEND: 0x61,
  APPENDS: 0x65,
  BINPUT: 0x71,
  LONG_BINPUT: 0x72,
  BINGET: 0x68,
  LONG_BINGET: 0x6a,
  MEMOIZE: 0x94,
  GLOBAL: 0x63,
  STACK_GLOBAL: 0x93,
  REDUCE: 0x52,
  BUILD: 0x62,
  BINPERSID: 0x51,
  POP: 0x30,
  POP_MARK: 0x31,
  DUP: 0x32,
  STOP: 0x2e,
} as const;

/** Fixed inline argument sizes; opcodes not listed here (and not handled specially) are unknown. */
const FIXED_ARG: ReadonlyMap<number, number> = new Map<number, number>([
  [OP.PROTO, 1],
  [OP.FRAME, 8],
  [OP.EMPTY_DICT, 0],
  [OP.EMPTY_LIST, 0],
  [OP.EMPTY_TUPLE, 0],
  [OP.MARK, 0],
  [OP.BININT, 4],
  [OP.BININT1, 1],
  [OP.BININT2, 2],
  [OP.BINFLOAT, 8],
  [OP.NEWTRUE, 0],
  [OP.NEWFALSE, 0],
  [OP.NONE, 0],
  [OP.TUPLE, 0],
  [OP.TUPLE1, 0],
  [OP.TUPLE2, 0],
  [OP.TUPLE3, 0],
  [OP.SETITEM, 0],
  [OP.SETITEMS, 0],
  [OP.APPEND, 0],
  [OP.APPENDS, 0],
  [OP.BINPUT, 1],
  [OP.LONG_BINPUT, 4],
  [OP.BINGET, 1],
  [OP.LONG_BINGET, 4],
  [OP.MEMOIZE, 0],
  [OP.STACK_GLOBAL, 0],
  [OP.REDUCE, 0],
  [OP.BUILD, 0],
  [OP.BINPERSID, 0],
  [OP.POP, 0],
  [OP.POP_MARK, 0],
  [OP.DUP, 0],
  [OP.STOP, 0],
]);

/** Reads a newline-terminated ASCII line starting at `at`; returns the text and the next offset. */
function readLine(p: Uint8Array, at: number, name: string): [string, number] {
  const nl = p.indexOf(0x0a, at);
  if (nl < 0) throw formatError(name, `the pickle is truncated (GLOBAL at offset ${at - 1})`);
  return [new TextDecoder().decode(p.subarray(at, nl)), nl + 1];
}

/**
 * Walks the opcode stream without interpreting it: refuses unknown opcodes and any GLOBAL outside
 * the allow-list before a single opcode is acted on.
 */
function prescanPickle(p: Uint8Array, name: string): void {
  let at = 0;
  const truncated = () => formatError(name, "the pickle (data.pkl) is truncated");
  while (at < p.length) {
    const op = p[at];
    const opAt = at;
    at++;
    const fixed = FIXED_ARG.get(op);
    if (fixed !== undefined) {
      at += fixed;
      if (op === OP.STOP) return;
    } else if (op === OP.BINUNICODE || op === OP.BINSTRING) {
      if (at + 4 > p.length) throw truncated();
      at += 4 + u32(p, at);
    } else if (op === OP.SHORT_BINUNICODE || op === OP.SHORT_BINSTRING || op === OP.LONG1) {
      if (at + 1 > p.length) throw truncated();
      at += 1 + p[at];
    } else if (op === OP.LONG4) {
      if (at + 4 > p.length) throw truncated();
      at += 4 + u32(p, at);
    } else if (op === OP.BINUNICODE8) {
      if (at + 8 > p.length) throw truncated();
      at += 8 + u64(p, at);
    } else if (op === OP.GLOBAL) {
      const [module, next] = readLine(p, at, name);
      const [gname, next2] = readLine(p, next, name);
      const full = `${module}.${gname}`;
      if (!ALLOWED_GLOBALS.has(full)) throw refuseGlobal(name, full);
      at = next2;
    } else {
      throw unknownOpcode(name, op, opAt);
    }
  }
  throw truncated();
}

function unknownOpcode(name: string, op: number, at: number): KvfoldError {
  return formatError(
    name,
    `the pickle uses opcode 0x${op.toString(16).padStart(2, "0")} at offset ${at}, ` +
      "which a plain tensor state dict does not need; refusing to load it",
  );
}

/** Context the VM needs to turn storages and rebuild calls into tensors. */
interface VmContext {
  name: string;
  storage(key: string, dtype: SafetensorsDtype, numel: number): Uint8Array;
}

function asInt(v: PValue, what: string, name: string): number {
  if (typeof v === "number" && Number.isInteger(v)) return v;
  if (typeof v === "bigint") return Number(v);
  throw formatError(name, `${what} is not an integer`);
}

function asIntList(v: PValue, what: string, name: string): number[] {
  if (!Array.isArray(v)) throw formatError(name, `${what} is not a tuple`);
  return v.map((x) => asInt(x, what, name));
}

/** Copies a strided view of `src` (elements of `esize` bytes) into a new contiguous buffer. */
function materialise(
  src: Uint8Array,
  esize: number,
  numel: number,
  offset: number,
  shape: number[],
  stride: number[],
  what: string,
  name: string,
): Uint8Array {
  if (shape.length !== stride.length) throw formatError(name, `${what} has mismatched size and stride`);
  if (shape.some((d) => d < 0) || stride.some((s) => s < 0) || offset < 0) {
    throw formatError(name, `${what} has a negative size, stride or offset`);
  }
  const n = shape.reduce((a, b) => a * b, 1);
  const out = new Uint8Array(n * esize);
  if (n === 0) return out;
  let last = offset;
  for (let i = 0; i < shape.length; i++) last += (shape[i] - 1) * stride[i];
  if (last >= numel || (last + 1) * esize > src.length) {
    throw formatError(name, `${what} reaches past the end of its storage`);
  }
  // Contiguous fast path.
  let contiguous = true;
  let expect = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    if (shape[i] !== 1 && stride[i] !== expect) contiguous = false;
    expect *= shape[i];
  }
  if (contiguous) {
    out.set(src.subarray(offset * esize, (offset + n) * esize));
    return out;
  }
  const rank = shape.length;
  const inner = shape[rank - 1];
  const innerStride = stride[rank - 1] * esize;
  const idx = new Array<number>(rank).fill(0);
  let base = offset;
  let o = 0;
  const rows = n / inner;
  for (let r = 0; r < rows; r++) {
    let s = base * esize;
    for (let j = 0; j < inner; j++) {
      for (let b = 0; b < esize; b++) out[o++] = src[s + b];
      s += innerStride;
    }
    // Advance the odometer over the outer dimensions.
    for (let d = rank - 2; d >= 0; d--) {
      idx[d]++;
      base += stride[d];
      if (idx[d] < shape[d]) break;
      base -= stride[d] * shape[d];
      idx[d] = 0;
    }
  }
  return out;
}

function rebuildTensor(args: PValue[], ctx: VmContext): PTensor {
  const [storage, offsetV, sizeV, strideV] = args;
  if (!(storage instanceof PStorage)) throw formatError(ctx.name, "a tensor is not built from a storage");
  const offset = asInt(offsetV, "a tensor storage offset", ctx.name);
  const shape = asIntList(sizeV, "a tensor size", ctx.name);
  const stride = asIntList(strideV, "a tensor stride", ctx.name);
  const bytes = ctx.storage(storage.key, storage.dtype, storage.numel);
  const data = materialise(
    bytes,
    DTYPE_SIZES[storage.dtype],
    storage.numel,
    offset,
    shape,
    stride,
    `tensor on storage ${storage.key}`,
    ctx.name,
  );
  return new PTensor({ dtype: storage.dtype, shape, data });
}

function callGlobal(fn: PValue, args: PValue, ctx: VmContext): PValue {
  if (!(fn instanceof PGlobal)) {
    throw formatError(ctx.name, "the pickle calls something that is not a global");
  }
  if (!Array.isArray(args)) throw formatError(ctx.name, `the arguments of ${fn.full} are not a tuple`);
  switch (fn.full) {
    case "collections.OrderedDict": {
      const m = new Map<PValue, PValue>();
      if (args.length > 0 && Array.isArray(args[0])) {
        for (const pair of args[0]) if (Array.isArray(pair) && pair.length === 2) m.set(pair[0], pair[1]);
      }
      return m;
    }
    case "torch._utils._rebuild_tensor":
    case "torch._utils._rebuild_tensor_v2":
      return rebuildTensor(args, ctx);
    case "torch._utils._rebuild_parameter":
    case "torch._utils._rebuild_parameter_with_state":
      if (!(args[0] instanceof PTensor)) throw formatError(ctx.name, "a parameter does not wrap a tensor");
      return args[0];
    case "torch._tensor._rebuild_from_type_v2":
      return callGlobal(args[0], args[2], ctx);
    default:
      throw formatError(ctx.name, `the pickle calls ${fn.full}, which does not build a tensor or a dict`);
  }
}

/** Interprets a (prescanned) protocol-2 pickle and returns its top value. */
function runPickle(p: Uint8Array, ctx: VmContext): PValue {
  const name = ctx.name;
  let stack: PValue[] = [];
  const marks: PValue[][] = [];
  const memo = new Map<number, PValue>();
  const dv = new DataView(p.buffer, p.byteOffset, p.byteLength);
  const decoder = new TextDecoder();
  const latin1 = new TextDecoder("latin1");
  let at = 0;
  const truncated = () => formatError(name, "the pickle (data.pkl) is truncated");
  const need = (n: number) => {
    if (at + n > p.length) throw truncated();
  };
  const pop = (): PValue => {
    if (stack.length === 0) throw formatError(name, `the pickle pops an empty stack at offset ${at}`);
    return stack.pop();
  };
  const top = (): PValue => {
    if (stack.length === 0) throw formatError(name, `the pickle reads an empty stack at offset ${at}`);
    return stack[stack.length - 1];
  };
  const popMark = (): PValue[] => {
    const items = stack;
    const prev = marks.pop();
    if (prev === undefined) throw formatError(name, `the pickle has no MARK at offset ${at}`);
    stack = prev;
    return items;
  };
  const setItems = (d: PValue, items: PValue[]) => {
    if (!(d instanceof Map)) throw formatError(name, `the pickle sets items on a non-dict at offset ${at}`);
    for (let i = 0; i + 1 < items.length; i += 2) d.set(items[i], items[i + 1]);
  };
  const appendItems = (l: PValue, items: PValue[]) => {
    if (!Array.isArray(l) || Object.isFrozen(l)) {
      throw formatError(name, `the pickle appends to a non-list at offset ${at}`);
    }
    l.push(...items);
  };
  const tuple = (items: PValue[]): PValue[] => Object.freeze(items) as PValue[];
  const memoGet = (i: number): PValue => {
    if (!memo.has(i)) throw formatError(name, `the pickle reads unset memo slot ${i}`);
    return memo.get(i);
  };
  const makeGlobal = (module: string, gname: string): PGlobal => {
    const full = `${module}.${gname}`;
    if (!ALLOWED_GLOBALS.has(full)) throw refuseGlobal(name, full);
    return new PGlobal(module, gname);
  };

  while (at < p.length) {
    const opAt = at;
    const op = p[at++];
    switch (op) {
      case OP.PROTO:
        need(1);
        if (p[at] > 5) throw formatError(name, `unsupported pickle protocol ${p[at]}`);
        at += 1;
        break;
      case OP.FRAME:
        need(8);
        at += 8;
        break;
      case OP.EMPTY_DICT:
        stack.push(new Map());
        break;
      case OP.EMPTY_LIST:
        stack.push([]);
        break;
      case OP.EMPTY_TUPLE:
        stack.push(tuple([]));
        break;
      case OP.MARK:
        marks.push(stack);
        stack = [];
        break;
      case OP.BINUNICODE:
      case OP.BINSTRING: {
        need(4);
        const n = u32(p, at);
        at += 4;
        need(n);
        const b = p.subarray(at, at + n);
        stack.push(op === OP.BINUNICODE ? decoder.decode(b) : latin1.decode(b));
        at += n;
        break;
      }
      case OP.SHORT_BINUNICODE:
      case OP.SHORT_BINSTRING: {
        need(1);
        const n = p[at++];
        need(n);
        const b = p.subarray(at, at + n);
        stack.push(op === OP.SHORT_BINUNICODE ? decoder.decode(b) : latin1.decode(b));
        at += n;
        break;
      }
      case OP.BINUNICODE8: {
        need(8);
        const n = u64(p, at);
        at += 8;
        need(n);
        stack.push(decoder.decode(p.subarray(at, at + n)));
        at += n;
        break;
      }
      case OP.BININT:
        need(4);
        stack.push(dv.getInt32(at, true));
        at += 4;
        break;
      case OP.BININT1:
        need(1);
        stack.push(p[at++]);
        break;
      case OP.BININT2:
        need(2);
        stack.push(u16(p, at));
        at += 2;
        break;
      case OP.LONG1:
      case OP.LONG4: {
        const lenBytes = op === OP.LONG1 ? 1 : 4;
        need(lenBytes);
        const n = op === OP.LONG1 ? p[at] : u32(p, at);
        at += lenBytes;
        need(n);
        let v = 0n;
        for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(p[at + i]);
        if (n > 0 && (p[at + n - 1] & 0x80) !== 0) v -= 1n << BigInt(8 * n);
        at += n;
        stack.push(
          v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v,
        );
        break;
      }
      case OP.BINFLOAT:
        need(8);
        stack.push(dv.getFloat64(at, false));
        at += 8;
        break;
      case OP.NEWTRUE:
        stack.push(true);
        break;
      case OP.NEWFALSE:
        stack.push(false);
        break;
      case OP.NONE:
        stack.push(null);
        break;
      case OP.TUPLE: {
        const items = popMark(); // before reading `stack`, which popMark replaces
        stack.push(tuple(items));
        break;
      }
      case OP.TUPLE1: {
        const a = pop();
        stack.push(tuple([a]));
        break;
      }
      case OP.TUPLE2: {
        const b = pop();
        const a = pop();
        stack.push(tuple([a, b]));
        break;
      }
      case OP.TUPLE3: {
        const c = pop();
        const b = pop();
        const a = pop();
        stack.push(tuple([a, b, c]));
        break;
      }
      case OP.SETITEM: {
        const v = pop();
        const k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case OP.SETITEMS: {
        const items = popMark();
        setItems(top(), items);
        break;
      }
      case OP.APPEND: {
        const v = pop();
        appendItems(top(), [v]);
        break;
      }
      case OP.APPENDS: {
        const items = popMark();
        appendItems(top(), items);
        break;
      }
      case OP.BINPUT:
        need(1);
        memo.set(p[at++], top());
        break;
      case OP.LONG_BINPUT:
        need(4);
        memo.set(u32(p, at), top());
        at += 4;
        break;
      case OP.MEMOIZE:
        memo.set(memo.size, top());
        break;
      case OP.BINGET:
        need(1);
        stack.push(memoGet(p[at++]));
        break;
      case OP.LONG_BINGET:
        need(4);
        stack.push(memoGet(u32(p, at)));
        at += 4;
        break;
      case OP.GLOBAL: {
        const [module, next] = readLine(p, at, name);
        const [gname, next2] = readLine(p, next, name);
        at = next2;
        stack.push(makeGlobal(module, gname));
        break;
      }
      case OP.STACK_GLOBAL: {
        const gname = pop();
        const module = pop();
        if (typeof module !== "string" || typeof gname !== "string") {
          throw formatError(name, `STACK_GLOBAL at offset ${opAt} takes non-string operands`);
        }
        stack.push(makeGlobal(module, gname));
        break;
      }
      case OP.REDUCE: {
        const args = pop();
        const fn = pop();
        stack.push(callGlobal(fn, args, ctx));
        break;
      }
      case OP.BUILD: {
        // State of an OrderedDict (its `_metadata`) or a tensor: data only, nothing to apply.
        pop();
        top();
        break;
      }
      case OP.BINPERSID: {
        const pid = pop();
        if (!Array.isArray(pid) || pid[0] !== "storage" || pid.length < 5) {
          throw formatError(name, `unsupported persistent id at offset ${opAt}`);
        }
        const [, type, key, , numelV] = pid;
        if (!(type instanceof PGlobal) || STORAGE_DTYPES[type.full] === undefined) {
          throw formatError(name, `a persistent id at offset ${opAt} names no known storage type`);
        }
        stack.push(
          new PStorage(STORAGE_DTYPES[type.full], String(key), asInt(numelV, "a storage size", name)),
        );
        break;
      }
      case OP.POP:
        pop();
        break;
      case OP.POP_MARK:
        popMark();
        break;
      case OP.DUP:
        stack.push(top());
        break;
      case OP.STOP:
        return pop();
      default:
        throw unknownOpcode(name, op, opAt);
    }
  }
  throw truncated();
}

// ---------------------------------------------------------------------------------------------
// Public reader

/**
 * Reads a `torch.save` zip checkpoint holding a state dict and returns its tensors by name, each
 * materialised as a contiguous row-major copy (views, storage offsets and transposes resolved; tied
 * tensors come out as separate copies). Nested dicts are flattened with dotted names; non-tensor
 * values are skipped. `name` is used in error messages.
 *
 * Errors: `KvfoldError("FORMAT")` when the bytes are not a torch zip checkpoint, the pickle uses an
 * opcode outside the supported set, or it references any global that a plain state dict does not
 * need (the pickle is refused before it is interpreted; nothing is ever executed).
 *
 * @example
 * ```ts ignore
 * import { readTorchCheckpoint } from "./torch_bin.ts";
 * const tensors = readTorchCheckpoint(await Deno.readFile("pytorch_model.bin"), "pytorch_model.bin");
 * for (const [name, t] of tensors) console.log(name, t.dtype, t.shape);
 * ```
 */
export function readTorchCheckpoint(bytes: Uint8Array, name: string): Map<string, TensorView> {
  const entries = readZipDirectory(bytes, name);
  let pklName: string | undefined;
  for (const n of entries.keys()) {
    if (n === "data.pkl" || n.endsWith("/data.pkl")) {
      if (pklName === undefined || n.length < pklName.length) pklName = n;
    }
  }
  if (pklName === undefined) {
    throw formatError(name, "the zip archive holds no data.pkl (not a torch.save file)");
  }
  const prefix = pklName.slice(0, pklName.length - "data.pkl".length);
  let bigEndian = false;
  const bo = entries.get(`${prefix}byteorder`);
  if (bo !== undefined) {
    const text = new TextDecoder().decode(readZipEntry(bytes, bo, name)).trim();
    if (text !== "little" && text !== "big") throw formatError(name, `unknown byteorder "${text}"`);
    bigEndian = text === "big";
  }
  const pickle = readZipEntry(bytes, entries.get(pklName)!, name);
  prescanPickle(pickle, name);

  const storages = new Map<string, Uint8Array>();
  const ctx: VmContext = {
    name,
    storage(key, dtype, numel) {
      const cached = storages.get(key);
      if (cached !== undefined) return cached;
      const entry = entries.get(`${prefix}data/${key}`);
      if (entry === undefined) throw formatError(name, `storage ${key} is missing from the archive`);
      let data = readZipEntry(bytes, entry, name);
      const esize = DTYPE_SIZES[dtype];
      if (data.length < numel * esize) throw formatError(name, `storage ${key} is shorter than it should be`);
      if (bigEndian && esize > 1) {
        data = data.slice();
        for (let i = 0; i + esize <= data.length; i += esize) data.subarray(i, i + esize).reverse();
      }
      storages.set(key, data);
      return data;
    },
  };
  const root = runPickle(pickle, ctx);
  if (!(root instanceof Map)) throw formatError(name, "the pickle does not hold a state dict");
  const out = new Map<string, TensorView>();
  const walk = (d: Map<PValue, PValue>, path: string) => {
    for (const [k, v] of d) {
      const key = path + String(k);
      if (v instanceof PTensor) {
        if (out.has(key)) throw formatError(name, `tensor name ${key} appears twice`);
        out.set(key, v.view);
      } else if (v instanceof Map) walk(v, key + ".");
    }
  };
  walk(root, "");
  return out;
}

// ---------------------------------------------------------------------------------------------
// Conversion

async function statOrNull(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw new KvfoldError("IO", `Cannot convert ${path}: ${e instanceof Error ? e.message : String(e)}`, {
      cause: e,
    });
  }
}

async function readBin(path: string): Promise<Map<string, TensorView>> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    throw new KvfoldError("IO", `Cannot convert ${path}: ${e instanceof Error ? e.message : String(e)}`, {
      cause: e,
    });
  }
  return readTorchCheckpoint(bytes, path);
}

function sortedInputs(tensors: Map<string, TensorView>, names?: Iterable<string>) {
  const list = [...(names ?? tensors.keys())].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return list.map((n) => {
    const t = tensors.get(n)!;
    return { name: n, dtype: t.dtype, shape: t.shape, data: t.data };
  });
}

async function ensureDir(path: string): Promise<void> {
  try {
    await Deno.mkdir(path, { recursive: true });
  } catch (e) {
    throw new KvfoldError("IO", `Cannot create ${path}: ${e instanceof Error ? e.message : String(e)}`, {
      cause: e,
    });
  }
}

const METADATA = { format: "pt" };
const SMALL_FILE = 64 * 1024 * 1024;

/**
 * Converts a PyTorch checkpoint to safetensors. `src` may be:
 * - a `.bin` file: written to `dst` when `dst` ends in `.safetensors`, else into folder `dst` as
 *   `model.safetensors` (`adapter_model.safetensors` for `adapter_model.bin`);
 * - a folder with `pytorch_model.bin.index.json` (shards become `model-0000k-of-0000n.safetensors`
 *   plus `model.safetensors.index.json`, same grouping), `pytorch_model.bin` (→ `model.safetensors`)
 *   and/or `adapter_model.bin` (→ `adapter_model.safetensors`). Other small files of the folder
 *   (`config.json`, `adapter_config.json`, tokenizer files) are copied into folder `dst`.
 *
 * Tensors are written sorted by name, with `{"format": "pt"}` metadata. Returns the paths written
 * (safetensors files, index and copied files) and the number of tensors converted.
 *
 * Errors: `KvfoldError("IO")` when `src` is missing or files cannot be read or written,
 * `KvfoldError("FORMAT")` when a checkpoint is malformed or its pickle is refused.
 *
 * @example
 * ```ts ignore
 * import { convertTorchCheckpoint } from "./torch_bin.ts";
 * const { files, tensors } = await convertTorchCheckpoint("./llama-bin", "./llama-st");
 * console.log(files, tensors);
 * ```
 */
export async function convertTorchCheckpoint(
  src: string,
  dst: string,
): Promise<{ files: string[]; tensors: number }> {
  const info = await statOrNull(src);
  if (info === null) throw new KvfoldError("IO", `Cannot convert ${src}: it does not exist`);
  const files: string[] = [];
  let count = 0;

  if (info.isFile) {
    const tensors = await readBin(src);
    let out = dst;
    if (!dst.endsWith(".safetensors")) {
      await ensureDir(dst);
      out = join(
        dst,
        basename(src) === "adapter_model.bin" ? "adapter_model.safetensors" : "model.safetensors",
      );
    }
    await writeSafetensorsFile(out, sortedInputs(tensors), METADATA);
    return { files: [out], tensors: tensors.size };
  }

  const indexPath = join(src, "pytorch_model.bin.index.json");
  const single = join(src, "pytorch_model.bin");
  const adapter = join(src, "adapter_model.bin");
  const hasIndex = (await statOrNull(indexPath))?.isFile === true;
  const hasSingle = (await statOrNull(single))?.isFile === true;
  const hasAdapter = (await statOrNull(adapter))?.isFile === true;
  if (!hasIndex && !hasSingle && !hasAdapter) {
    throw new KvfoldError(
      "FORMAT",
      `Cannot convert ${src}: it holds no pytorch_model.bin, pytorch_model.bin.index.json or adapter_model.bin`,
    );
  }
  await ensureDir(dst);

  if (hasIndex) {
    let index: { weight_map?: Record<string, string> };
    try {
      index = JSON.parse(await Deno.readTextFile(indexPath));
    } catch (e) {
      if (e instanceof SyntaxError) {
        throw new KvfoldError("FORMAT", `Cannot convert ${indexPath}: ${e.message}`);
      }
      throw new KvfoldError("IO", `Cannot convert ${indexPath}: ${e instanceof Error ? e.message : e}`, {
        cause: e,
      });
    }
    const weightMap = index.weight_map;
    if (weightMap === null || typeof weightMap !== "object") {
      throw new KvfoldError("FORMAT", `Cannot convert ${indexPath}: it has no weight_map`);
    }
    const shards = [...new Set(Object.values(weightMap))].sort();
    const n = shards.length;
    const pad = (k: number) => String(k).padStart(5, "0");
    const newWeightMap: Record<string, string> = {};
    let totalSize = 0;
    for (let i = 0; i < n; i++) {
      const shard = shards[i];
      if (typeof shard !== "string" || shard.includes("/") || shard.includes("\\") || shard.startsWith(".")) {
        throw new KvfoldError("FORMAT", `Cannot convert ${indexPath}: bad shard name ${String(shard)}`);
      }
      const shardPath = join(src, shard);
      const tensors = await readBin(shardPath);
      const outName = `model-${pad(i + 1)}-of-${pad(n)}.safetensors`;
      const names = Object.keys(weightMap).filter((k) => weightMap[k] === shard);
      for (const k of names) {
        if (!tensors.has(k)) {
          throw new KvfoldError(
            "FORMAT",
            `Cannot convert ${shardPath}: it lacks tensor ${k} named in the index`,
          );
        }
      }
      // Tensors present in the shard but absent from the index still belong to this shard.
      for (const k of tensors.keys()) if (weightMap[k] === undefined) names.push(k);
      const inputs = sortedInputs(tensors, names);
      for (const t of inputs) {
        newWeightMap[t.name] = outName;
        totalSize += t.data.length;
      }
      const out = join(dst, outName);
      await writeSafetensorsFile(out, inputs, METADATA);
      files.push(out);
      count += inputs.length;
    }
    const sortedMap: Record<string, string> = {};
    for (const k of Object.keys(newWeightMap).sort()) sortedMap[k] = newWeightMap[k];
    const indexOut = join(dst, "model.safetensors.index.json");
    try {
      await Deno.writeTextFile(
        indexOut,
        JSON.stringify({ metadata: { total_size: totalSize }, weight_map: sortedMap }, null, 2) + "\n",
      );
    } catch (e) {
      throw new KvfoldError("IO", `Cannot write ${indexOut}: ${e instanceof Error ? e.message : e}`, {
        cause: e,
      });
    }
    files.push(indexOut);
  } else if (hasSingle) {
    const tensors = await readBin(single);
    const out = join(dst, "model.safetensors");
    await writeSafetensorsFile(out, sortedInputs(tensors), METADATA);
    files.push(out);
    count += tensors.size;
  }
  if (hasAdapter) {
    const tensors = await readBin(adapter);
    const out = join(dst, "adapter_model.safetensors");
    await writeSafetensorsFile(out, sortedInputs(tensors), METADATA);
    files.push(out);
    count += tensors.size;
  }

  // Copy the small companion files (configs, tokenizer) unless converting in place.
  if (resolve(src) !== resolve(dst)) {
    try {
      for await (const e of Deno.readDir(src)) {
        if (!e.isFile || e.name.startsWith(".")) continue;
        if (/\.(bin|safetensors|pt|pth|ckpt)$/.test(e.name) || e.name === "pytorch_model.bin.index.json") {
          continue;
        }
        const from = join(src, e.name);
        if ((await Deno.stat(from)).size > SMALL_FILE) continue;
        const to = join(dst, e.name);
        await Deno.copyFile(from, to);
        files.push(to);
      }
    } catch (e) {
      if (e instanceof KvfoldError) throw e;
      throw new KvfoldError("IO", `Cannot copy files of ${src}: ${e instanceof Error ? e.message : e}`, {
        cause: e,
      });
    }
  }
  return { files, tensors: count };
}

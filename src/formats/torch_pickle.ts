/**
 * The pickle layer of `torch.save` checkpoints: a restricted, strict pickle VM that only builds
 * data. It knows the opcodes a plain tensor state dict uses and resolves globals against a fixed
 * allow-list; any other global (`os.system`, `builtins.eval`, ...) or opcode is refused before the
 * pickle is interpreted, and nothing is ever called or executed. Whatever a plain state dict would
 * not do (stack underflow, a memo miss, an operand of the wrong type, a storage the archive lacks,
 * bytes after STOP) is a FORMAT error naming the file and the offset in the pickle.
 *
 * Tensors come out as {@link PTensor} references (storage, offset, size, stride), not yet
 * materialised: the caller checks each view against its storage and its memory budget first.
 *
 * @module
 */

import type { KvfoldError } from "../errors.ts";
import type { SafetensorsDtype } from "./safetensors.ts";
import { formatError, u16, u32, u64 } from "./torch_zip.ts";

/** A `module.name` reference the pickle made (only allow-listed ones are ever created). */
export class PGlobal {
  constructor(readonly module: string, readonly name: string) {}
  get full(): string {
    return `${this.module}.${this.name}`;
  }
}

/** A persistent-id storage reference: `numel` elements of `dtype` in zip entry `data/KEY`. */
export class PStorage {
  constructor(readonly dtype: SafetensorsDtype, readonly key: string, readonly numel: number) {}
}

/** A tensor the pickle rebuilt: a strided view of a storage, checked only for its types. */
export class PTensor {
  constructor(
    readonly storage: PStorage,
    readonly offset: number,
    readonly shape: number[],
    readonly stride: number[],
  ) {}
}

/** Tuples are frozen arrays, lists plain arrays; dicts are Maps. */
export type PValue = unknown;

/** The storage classes a state dict uses, with the dtype of their elements. */
export const STORAGE_DTYPES: Readonly<Record<string, SafetensorsDtype>> = {
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

/** Inline argument bytes of the opcodes with a fixed-size argument; the other fixed ones take none. */
const ARG_BYTES: Partial<Record<keyof typeof OP, number>> = {
  PROTO: 1,
  BININT1: 1,
  BINPUT: 1,
  BINGET: 1,
  BININT2: 2,
  BININT: 4,
  LONG_BINPUT: 4,
  LONG_BINGET: 4,
  FRAME: 8,
  BINFLOAT: 8,
};

/** Opcodes whose argument carries its own length (or is a text line). */
const SIZED: ReadonlySet<string> = new Set([
  "BINUNICODE",
  "SHORT_BINUNICODE",
  "BINUNICODE8",
  "BINSTRING",
  "SHORT_BINSTRING",
  "LONG1",
  "LONG4",
  "GLOBAL",
]);

/** Fixed inline argument sizes; opcodes not listed here (and not handled specially) are unknown. */
const FIXED_ARG: ReadonlyMap<number, number> = new Map(
  Object.entries(OP)
    .filter(([k]) => !SIZED.has(k))
    .map(([k, op]) => [op, ARG_BYTES[k as keyof typeof OP] ?? 0]),
);

/** Reads a newline-terminated ASCII line starting at `at`; returns the text and the next offset. */
function readLine(p: Uint8Array, at: number, name: string): [string, number] {
  const nl = p.indexOf(0x0a, at);
  if (nl < 0) throw formatError(name, `the pickle is truncated (GLOBAL at offset ${at - 1})`);
  return [new TextDecoder().decode(p.subarray(at, nl)), nl + 1];
}

function unknownOpcode(name: string, op: number, at: number): KvfoldError {
  return formatError(
    name,
    `the pickle uses opcode 0x${op.toString(16).padStart(2, "0")} at offset ${at}, ` +
      "which a plain tensor state dict does not need; refusing to load it",
  );
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
    } else if (op === OP.BINUNICODE || op === OP.BINSTRING || op === OP.LONG4) {
      if (at + 4 > p.length) throw truncated();
      at += 4 + u32(p, at);
    } else if (op === OP.SHORT_BINUNICODE || op === OP.SHORT_BINSTRING || op === OP.LONG1) {
      if (at + 1 > p.length) throw truncated();
      at += 1 + p[at];
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

/** What the VM asks of the archive. */
export interface PickleContext {
  /** The file, for messages. */
  name: string;
  /** Why storage `key` cannot hold `numel` elements of `dtype` (missing, too short), or null. */
  checkStorage(key: string, dtype: SafetensorsDtype, numel: number): string | null;
}

type Fail = (what: string) => KvfoldError;

function asInt(v: PValue, what: string, fail: Fail): number {
  if (typeof v === "number" && Number.isInteger(v)) return v;
  if (typeof v === "bigint") throw fail(`has ${what} out of range (${v})`);
  throw fail(`has ${what} that is not an integer`);
}

function asIntList(v: PValue, what: string, fail: Fail): number[] {
  if (!Array.isArray(v) || !Object.isFrozen(v)) throw fail(`has ${what} that is not a tuple`);
  return v.map((x) => asInt(x, what, fail));
}

/** `_rebuild_tensor(storage, offset, size, stride)` or `_v2(..., requires_grad, hooks[, metadata])`. */
function rebuildTensor(args: PValue[], v2: boolean, fail: Fail): PTensor {
  if (v2 ? args.length !== 6 && args.length !== 7 : args.length !== 4) {
    throw fail(`rebuilds a tensor from ${args.length} arguments`);
  }
  const [storage, offsetV, sizeV, strideV, requiresGrad, hooks] = args;
  if (!(storage instanceof PStorage)) throw fail("rebuilds a tensor from something that is not a storage");
  if (v2 && (typeof requiresGrad !== "boolean" || !(hooks instanceof Map))) {
    throw fail("rebuilds a tensor with a requires_grad that is not a bool or hooks that are not a dict");
  }
  return new PTensor(
    storage,
    asInt(offsetV, "a tensor storage offset", fail),
    asIntList(sizeV, "a tensor size", fail),
    asIntList(strideV, "a tensor stride", fail),
  );
}

function callGlobal(fn: PValue, args: PValue, fail: Fail, depth = 0): PValue {
  if (!(fn instanceof PGlobal)) throw fail("calls something that is not a global");
  if (!Array.isArray(args) || !Object.isFrozen(args)) {
    throw fail(`calls ${fn.full} without an argument tuple`);
  }
  switch (fn.full) {
    case "collections.OrderedDict": {
      const m = new Map<PValue, PValue>();
      if (args.length > 1) throw fail("calls collections.OrderedDict with more than one argument");
      if (args.length === 1) {
        if (!Array.isArray(args[0])) {
          throw fail("calls collections.OrderedDict with an argument that is not a list");
        }
        for (const pair of args[0]) {
          if (!Array.isArray(pair) || pair.length !== 2) throw fail("builds an OrderedDict from a non-pair");
          m.set(pair[0], pair[1]);
        }
      }
      return m;
    }
    case "torch._utils._rebuild_tensor":
      return rebuildTensor(args, false, fail);
    case "torch._utils._rebuild_tensor_v2":
      return rebuildTensor(args, true, fail);
    case "torch._utils._rebuild_parameter":
    case "torch._utils._rebuild_parameter_with_state":
      // (data, requires_grad, backward_hooks[, state])
      if (!(args[0] instanceof PTensor) || typeof args[1] !== "boolean" || !(args[2] instanceof Map)) {
        throw fail("builds a parameter that is not (tensor, requires_grad, hooks)");
      }
      return args[0];
    case "torch._tensor._rebuild_from_type_v2":
      if (args.length < 3) throw fail("calls _rebuild_from_type_v2 with fewer than 3 arguments");
      // It wraps one rebuild call; torch never nests it, and a nest must not exhaust the JS stack.
      if (depth > 0) throw fail("nests _rebuild_from_type_v2");
      return callGlobal(args[0], args[2], fail, depth + 1);
    default:
      throw fail(`calls ${fn.full}, which does not build a tensor or a dict`);
  }
}

/**
 * Interprets the `data.pkl` of a torch.save archive and returns its top value. Refuses, before
 * interpreting anything, opcodes and globals a plain tensor state dict does not use.
 */
export function unpickle(p: Uint8Array, ctx: PickleContext): PValue {
  prescanPickle(p, ctx.name);
  return runPickle(p, ctx);
}

function runPickle(p: Uint8Array, ctx: PickleContext): PValue {
  const name = ctx.name;
  let stack: PValue[] = [];
  const marks: PValue[][] = [];
  const memo = new Map<number, PValue>();
  const storages = new Map<string, PStorage>();
  const dv = new DataView(p.buffer, p.byteOffset, p.byteLength);
  const utf8 = new TextDecoder("utf-8", { fatal: true });
  const latin1 = new TextDecoder("latin1");
  let at = 0;
  let opAt = 0;
  const fail: Fail = (what) => formatError(name, `the pickle ${what} at offset ${opAt}`);
  const need = (n: number) => {
    if (at + n > p.length) throw formatError(name, "the pickle (data.pkl) is truncated");
  };
  const pop = (): PValue => {
    if (stack.length === 0) throw fail("pops an empty stack");
    return stack.pop();
  };
  const top = (): PValue => {
    if (stack.length === 0) throw fail("reads an empty stack");
    return stack[stack.length - 1];
  };
  const popMark = (): PValue[] => {
    const items = stack;
    const prev = marks.pop();
    if (prev === undefined) throw fail("has no MARK");
    stack = prev;
    return items;
  };
  const setItems = (d: PValue, items: PValue[]) => {
    if (!(d instanceof Map)) throw fail("sets items on a non-dict");
    if (items.length % 2 !== 0) throw fail("sets a key without a value");
    for (let i = 0; i < items.length; i += 2) d.set(items[i], items[i + 1]);
  };
  const appendItems = (l: PValue, items: PValue[]) => {
    if (!Array.isArray(l) || Object.isFrozen(l)) throw fail("appends to a non-list");
    for (const x of items) l.push(x);
  };
  const tuple = (items: PValue[]): PValue[] => Object.freeze(items) as PValue[];
  const text = (b: Uint8Array): string => {
    try {
      return utf8.decode(b);
    } catch {
      throw fail("has a string that is not UTF-8");
    }
  };
  const memoGet = (i: number): PValue => {
    if (!memo.has(i)) throw fail(`reads unset memo slot ${i}`);
    return memo.get(i);
  };
  const makeGlobal = (module: string, gname: string): PGlobal => {
    const full = `${module}.${gname}`;
    if (!ALLOWED_GLOBALS.has(full)) throw refuseGlobal(name, full);
    return new PGlobal(module, gname);
  };
  const persistent = (pid: PValue): PStorage => {
    if (!Array.isArray(pid) || pid.length !== 5 || pid[0] !== "storage") {
      throw fail("has an unsupported persistent id");
    }
    const [, type, key, , numelV] = pid;
    if (!(type instanceof PGlobal) || STORAGE_DTYPES[type.full] === undefined) {
      throw fail("has a persistent id that names no known storage type");
    }
    if (typeof key !== "string") throw fail("has a persistent id whose storage key is not a string");
    const dtype = STORAGE_DTYPES[type.full];
    const numel = asInt(numelV, "a storage size", fail);
    if (numel < 0) throw fail(`has storage ${key} of negative size ${numel}`);
    const seen = storages.get(key);
    if (seen !== undefined) {
      if (seen.dtype !== dtype || seen.numel !== numel) {
        throw fail(`uses storage ${key} as ${seen.numel} ${seen.dtype} and as ${numel} ${dtype}`);
      }
      return seen;
    }
    const why = ctx.checkStorage(key, dtype, numel);
    if (why !== null) throw fail(`references storage ${key}, which ${why}`);
    const s = new PStorage(dtype, key, numel);
    storages.set(key, s);
    return s;
  };

  while (at < p.length) {
    opAt = at;
    const op = p[at++];
    switch (op) {
      case OP.PROTO:
        need(1);
        if (p[at] < 2 || p[at] > 5) throw fail(`uses unsupported pickle protocol ${p[at]}`);
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
        stack.push(op === OP.BINUNICODE ? text(b) : latin1.decode(b));
        at += n;
        break;
      }
      case OP.SHORT_BINUNICODE:
      case OP.SHORT_BINSTRING: {
        need(1);
        const n = p[at++];
        need(n);
        const b = p.subarray(at, at + n);
        stack.push(op === OP.SHORT_BINUNICODE ? text(b) : latin1.decode(b));
        at += n;
        break;
      }
      case OP.BINUNICODE8: {
        need(8);
        const n = u64(p, at);
        at += 8;
        need(n);
        stack.push(text(p.subarray(at, at + n)));
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
        // Past 8 bytes no size or offset of a real tensor fits; refuse before building a huge BigInt.
        if (n > 8) throw fail(`has an integer of ${n} bytes`);
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
          throw fail("takes non-string operands to STACK_GLOBAL");
        }
        stack.push(makeGlobal(module, gname));
        break;
      }
      case OP.REDUCE: {
        const args = pop();
        const fn = pop();
        stack.push(callGlobal(fn, args, fail));
        break;
      }
      case OP.BUILD: {
        // State of an OrderedDict (its `_metadata`) or a tensor: data only, nothing to apply.
        pop();
        const target = top();
        if (!(target instanceof Map) && !(target instanceof PTensor)) {
          throw fail("sets the state of a non-dict");
        }
        break;
      }
      case OP.BINPERSID:
        stack.push(persistent(pop()));
        break;
      case OP.POP:
        pop();
        break;
      case OP.POP_MARK:
        popMark();
        break;
      case OP.DUP:
        stack.push(top());
        break;
      case OP.STOP: {
        const value = pop();
        if (stack.length !== 0 || marks.length !== 0) throw fail("stops with values left on its stack");
        if (at !== p.length) throw fail(`stops with ${p.length - at} bytes after STOP`);
        return value;
      }
      default:
        throw unknownOpcode(name, op, opAt);
    }
  }
  throw formatError(name, "the pickle (data.pkl) is truncated");
}

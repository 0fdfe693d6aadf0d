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
import { OP, prescanPickle, readLine, refuseGlobal, unknownOpcode } from "./pickle_opcodes.ts";

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
  prescanPickle(p, ctx.name, ALLOWED_GLOBALS);
  const vm = new PickleVm(p, ctx);
  while (vm.at < p.length) {
    vm.opAt = vm.at;
    const op = p[vm.at++];
    if (op === OP.STOP) return vm.stop();
    const handler = HANDLERS.get(op);
    if (handler === undefined) throw unknownOpcode(ctx.name, op, vm.opAt);
    handler(vm, op);
  }
  throw vm.truncated();
}

/** The VM's state: the pickle, the read offset, the stack with its MARKs, the memo and the storages. */
class PickleVm {
  stack: PValue[] = [];
  readonly marks: PValue[][] = [];
  readonly memo = new Map<number, PValue>();
  readonly storages = new Map<string, PStorage>();
  readonly dv: DataView;
  /** The next byte to read. */
  at = 0;
  /** The offset of the opcode being run, for messages. */
  opAt = 0;
  readonly fail: Fail = (what) => formatError(this.ctx.name, `the pickle ${what} at offset ${this.opAt}`);

  constructor(readonly p: Uint8Array, readonly ctx: PickleContext) {
    this.dv = new DataView(p.buffer, p.byteOffset, p.byteLength);
  }

  truncated(): KvfoldError {
    return formatError(this.ctx.name, "the pickle (data.pkl) is truncated");
  }
  /** Refuses reading `n` more bytes past the end. */
  need(n: number): void {
    if (this.at + n > this.p.length) throw this.truncated();
  }
  /** The next `n` bytes, consumed. */
  take(n: number): Uint8Array {
    this.need(n);
    const b = this.p.subarray(this.at, this.at + n);
    this.at += n;
    return b;
  }
  /** An unsigned little-endian length or index of `bytes` (1, 2, 4 or 8) bytes, consumed. */
  uint(bytes: 1 | 2 | 4 | 8): number {
    this.need(bytes);
    const at = this.at;
    this.at += bytes;
    return bytes === 1
      ? this.p[at]
      : bytes === 2
      ? u16(this.p, at)
      : bytes === 4
      ? u32(this.p, at)
      : u64(this.p, at);
  }
  push(v: PValue): void {
    this.stack.push(v);
  }
  pop(): PValue {
    if (this.stack.length === 0) throw this.fail("pops an empty stack");
    return this.stack.pop();
  }
  top(): PValue {
    if (this.stack.length === 0) throw this.fail("reads an empty stack");
    return this.stack[this.stack.length - 1];
  }
  /** The items pushed since the last MARK, which is removed. */
  popMark(): PValue[] {
    const items = this.stack;
    const prev = this.marks.pop();
    if (prev === undefined) throw this.fail("has no MARK");
    this.stack = prev;
    return items;
  }
  /** STOP: the one value left on the stack, with nothing after it. */
  stop(): PValue {
    const value = this.pop();
    if (this.stack.length !== 0 || this.marks.length !== 0) {
      throw this.fail("stops with values left on its stack");
    }
    if (this.at !== this.p.length) throw this.fail(`stops with ${this.p.length - this.at} bytes after STOP`);
    return value;
  }
}

type Handler = (vm: PickleVm, op: number) => void;

const utf8 = new TextDecoder("utf-8", { fatal: true });
const latin1 = new TextDecoder("latin1");

function text(vm: PickleVm, b: Uint8Array): string {
  try {
    return utf8.decode(b);
  } catch {
    throw vm.fail("has a string that is not UTF-8");
  }
}

/** Protocol and framing: PROTO checks the version, FRAME is a size hint only. */
const FRAMING: [number, Handler][] = [
  [OP.PROTO, (vm) => {
    const version = vm.uint(1);
    if (version < 2 || version > 5) throw vm.fail(`uses unsupported pickle protocol ${version}`);
  }],
  [OP.FRAME, (vm) => void vm.take(8)],
];

/** Constants: integers, floats, booleans and None. */
const CONSTANTS: [number, Handler][] = [
  [OP.BININT, (vm) => {
    vm.need(4);
    vm.push(vm.dv.getInt32(vm.at, true));
    vm.at += 4;
  }],
  [OP.BININT1, (vm) => vm.push(vm.uint(1))],
  [OP.BININT2, (vm) => vm.push(vm.uint(2))],
  [OP.LONG1, (vm) => pushLong(vm, vm.uint(1))],
  [OP.LONG4, (vm) => pushLong(vm, vm.uint(4))],
  [OP.BINFLOAT, (vm) => {
    vm.need(8);
    vm.push(vm.dv.getFloat64(vm.at, false));
    vm.at += 8;
  }],
  [OP.NEWTRUE, (vm) => vm.push(true)],
  [OP.NEWFALSE, (vm) => vm.push(false)],
  [OP.NONE, (vm) => vm.push(null)],
];

/** LONG1/LONG4: an `n`-byte two's-complement integer, a number when it is safe, else a bigint. */
function pushLong(vm: PickleVm, n: number): void {
  vm.need(n);
  // Past 8 bytes no size or offset of a real tensor fits; refuse before building a huge BigInt.
  if (n > 8) throw vm.fail(`has an integer of ${n} bytes`);
  const b = vm.take(n);
  let v = 0n;
  for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
  if (n > 0 && (b[n - 1] & 0x80) !== 0) v -= 1n << BigInt(8 * n);
  vm.push(v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v);
}

/** Strings: UTF-8 unicode, and latin-1 byte strings, with a 1-, 4- or 8-byte length. */
const STRINGS: [number, Handler][] = [
  [OP.BINUNICODE, (vm) => vm.push(text(vm, vm.take(vm.uint(4))))],
  [OP.SHORT_BINUNICODE, (vm) => vm.push(text(vm, vm.take(vm.uint(1))))],
  [OP.BINUNICODE8, (vm) => vm.push(text(vm, vm.take(vm.uint(8))))],
  [OP.BINSTRING, (vm) => vm.push(latin1.decode(vm.take(vm.uint(4))))],
  [OP.SHORT_BINSTRING, (vm) => vm.push(latin1.decode(vm.take(vm.uint(1))))],
];

/** Tuples are frozen arrays. */
const tuple = (items: PValue[]): PValue[] => Object.freeze(items) as PValue[];

function setItems(vm: PickleVm, d: PValue, items: PValue[]): void {
  if (!(d instanceof Map)) throw vm.fail("sets items on a non-dict");
  if (items.length % 2 !== 0) throw vm.fail("sets a key without a value");
  for (let i = 0; i < items.length; i += 2) d.set(items[i], items[i + 1]);
}

function appendItems(vm: PickleVm, l: PValue, items: PValue[]): void {
  if (!Array.isArray(l) || Object.isFrozen(l)) throw vm.fail("appends to a non-list");
  for (const x of items) l.push(x);
}

/** Containers and the stack: dicts, lists, tuples, MARK, POP, DUP. */
const CONTAINERS: [number, Handler][] = [
  [OP.EMPTY_DICT, (vm) => vm.push(new Map())],
  [OP.EMPTY_LIST, (vm) => vm.push([])],
  [OP.EMPTY_TUPLE, (vm) => vm.push(tuple([]))],
  [OP.MARK, (vm) => {
    vm.marks.push(vm.stack);
    vm.stack = [];
  }],
  [OP.TUPLE, (vm) => {
    const items = vm.popMark(); // before pushing: popMark replaces the stack
    vm.push(tuple(items));
  }],
  [OP.TUPLE1, (vm) => vm.push(tuple([vm.pop()]))],
  [OP.TUPLE2, (vm) => {
    const b = vm.pop();
    const a = vm.pop();
    vm.push(tuple([a, b]));
  }],
  [OP.TUPLE3, (vm) => {
    const c = vm.pop();
    const b = vm.pop();
    const a = vm.pop();
    vm.push(tuple([a, b, c]));
  }],
  [OP.SETITEM, (vm) => {
    const v = vm.pop();
    const k = vm.pop();
    setItems(vm, vm.top(), [k, v]);
  }],
  [OP.SETITEMS, (vm) => {
    const items = vm.popMark();
    setItems(vm, vm.top(), items);
  }],
  [OP.APPEND, (vm) => {
    const v = vm.pop();
    appendItems(vm, vm.top(), [v]);
  }],
  [OP.APPENDS, (vm) => {
    const items = vm.popMark();
    appendItems(vm, vm.top(), items);
  }],
  [OP.POP, (vm) => void vm.pop()],
  [OP.POP_MARK, (vm) => void vm.popMark()],
  [OP.DUP, (vm) => vm.push(vm.top())],
];

function memoGet(vm: PickleVm, i: number): PValue {
  if (!vm.memo.has(i)) throw vm.fail(`reads unset memo slot ${i}`);
  return vm.memo.get(i);
}

/** The memo: PUT, GET and MEMOIZE. */
const MEMO: [number, Handler][] = [
  [OP.BINPUT, (vm) => vm.memo.set(vm.uint(1), vm.top())],
  [OP.LONG_BINPUT, (vm) => vm.memo.set(vm.uint(4), vm.top())],
  [OP.MEMOIZE, (vm) => vm.memo.set(vm.memo.size, vm.top())],
  [OP.BINGET, (vm) => vm.push(memoGet(vm, vm.uint(1)))],
  [OP.LONG_BINGET, (vm) => vm.push(memoGet(vm, vm.uint(4)))],
];

function makeGlobal(vm: PickleVm, module: string, gname: string): PGlobal {
  const full = `${module}.${gname}`;
  if (!ALLOWED_GLOBALS.has(full)) throw refuseGlobal(vm.ctx.name, full);
  return new PGlobal(module, gname);
}

/** BINPERSID: `("storage", type, key, location, numel)`, checked against the archive once per key. */
function persistent(vm: PickleVm, pid: PValue): PStorage {
  const fail = vm.fail;
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
  const seen = vm.storages.get(key);
  if (seen !== undefined) {
    if (seen.dtype !== dtype || seen.numel !== numel) {
      throw fail(`uses storage ${key} as ${seen.numel} ${seen.dtype} and as ${numel} ${dtype}`);
    }
    return seen;
  }
  const why = vm.ctx.checkStorage(key, dtype, numel);
  if (why !== null) throw fail(`references storage ${key}, which ${why}`);
  const s = new PStorage(dtype, key, numel);
  vm.storages.set(key, s);
  return s;
}

/** Globals, calls and storages: only allow-listed globals, only the calls that build data. */
const CALLS: [number, Handler][] = [
  [OP.GLOBAL, (vm) => {
    const [module, next] = readLine(vm.p, vm.at, vm.ctx.name);
    const [gname, next2] = readLine(vm.p, next, vm.ctx.name);
    vm.at = next2;
    vm.push(makeGlobal(vm, module, gname));
  }],
  [OP.STACK_GLOBAL, (vm) => {
    const gname = vm.pop();
    const module = vm.pop();
    if (typeof module !== "string" || typeof gname !== "string") {
      throw vm.fail("takes non-string operands to STACK_GLOBAL");
    }
    vm.push(makeGlobal(vm, module, gname));
  }],
  [OP.REDUCE, (vm) => {
    const args = vm.pop();
    const fn = vm.pop();
    vm.push(callGlobal(fn, args, vm.fail));
  }],
  [OP.BUILD, (vm) => {
    // State of an OrderedDict (its `_metadata`) or a tensor: data only, nothing to apply.
    vm.pop();
    const target = vm.top();
    if (!(target instanceof Map) && !(target instanceof PTensor)) {
      throw vm.fail("sets the state of a non-dict");
    }
  }],
  [OP.BINPERSID, (vm) => vm.push(persistent(vm, vm.pop()))],
];

/** Every opcode the VM runs (STOP aside), by family. */
const HANDLERS: ReadonlyMap<number, Handler> = new Map([
  ...FRAMING,
  ...CONSTANTS,
  ...STRINGS,
  ...CONTAINERS,
  ...MEMO,
  ...CALLS,
]);

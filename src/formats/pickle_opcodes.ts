/**
 * The pickle opcodes kvfold's torch.save reader knows, and the prescan that refuses any other opcode,
 * and any global outside the allow-list, before a single opcode is interpreted.
 *
 * @module
 */

import type { KvfoldError } from "../errors.ts";
import { formatError, u32, u64 } from "./torch_zip.ts";

/** The opcodes a plain tensor state dict uses (protocols 2 to 5). */
export const OP = {
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
export function readLine(p: Uint8Array, at: number, name: string): [string, number] {
  const nl = p.indexOf(0x0a, at);
  if (nl < 0) throw formatError(name, `the pickle is truncated (GLOBAL at offset ${at - 1})`);
  return [new TextDecoder().decode(p.subarray(at, nl)), nl + 1];
}

export function unknownOpcode(name: string, op: number, at: number): KvfoldError {
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
export function prescanPickle(p: Uint8Array, name: string, allowed: ReadonlySet<string>): void {
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
      if (!allowed.has(full)) throw refuseGlobal(name, full);
      at = next2;
    } else {
      throw unknownOpcode(name, op, opAt);
    }
  }
  throw truncated();
}

/** The FORMAT error for a global outside the allow-list. */
export function refuseGlobal(name: string, full: string): KvfoldError {
  return formatError(
    name,
    `the pickle references ${full}, which is not part of a plain tensor state dict; refusing to load it`,
  );
}

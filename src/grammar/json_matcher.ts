/**
 * A byte-level pushdown automaton over a {@link ValueNode} grammar: compact JSON (no whitespace),
 * UTF-8 checked inside strings. A state is a set of alternative stacks (an `anyOf` forks one per
 * option); each stack is an immutable linked list of frames, so states are cheap to branch while a
 * token trie is walked. {@link minCompletion} is the fewest bytes that finish a stack: constrained
 * decoding keeps it within the tokens left, so a generation always ends with a whole value.
 *
 * @module
 */

import { itemNode, type PropertyNode, type ValueNode } from "./json_schema.ts";
import {
  numberComplete,
  numberCost,
  numberKey,
  numberStart,
  type NumberState,
  numberStep,
} from "./json_number.ts";

type ObjectNode = Extract<ValueNode, { kind: "object" }>;
type ArrayNode = Extract<ValueNode, { kind: "array" }>;
type StringNode = Extract<ValueNode, { kind: "string" }> | {
  kind: "key";
  id: -1;
  minLength: 0;
  maxLength: number;
};
type LiteralNode = Extract<ValueNode, { kind: "literal" }>;
type NumberNode = Extract<ValueNode, { kind: "number" }>;

/** Where an object is: before a key (`open`: after `{`; `comma`: after `,`), inside one, or after a value. */
type ObjectPhase = "open" | "comma" | "key" | "after";

type Frame =
  | { t: "root"; done: boolean }
  | { t: "value"; n: ValueNode }
  | {
    t: "object";
    n: ObjectNode;
    ph: ObjectPhase;
    /** The next property index the object may write. */
    i: number;
    /** While inside a key: the properties whose key still matches, and bytes matched. */
    cand: readonly number[];
    pos: number;
  }
  /** An object with free keys: ph "colon" after a key string, expecting ':'. */
  | { t: "record"; n: ObjectNode | null; ph: "open" | "comma" | "colon" | "after" }
  | { t: "array"; n: ArrayNode | null; ph: "open" | "comma" | "after"; c: number }
  | {
    t: "string";
    n: StringNode;
    len: number;
    /** UTF-8 continuation bytes still due, and the range the next one must fall in. */
    u: number;
    lo: number;
    hi: number;
    /** 0: plain; 1: after '\'; 2..5: after '\u' and (esc - 2) hex digits. */
    esc: number;
  }
  | { t: "number"; n: NumberNode; s: NumberState }
  | { t: "literal"; n: LiteralNode; cand: readonly number[]; pos: number };

/** One alternative: a frame on top of the stack below it. */
export interface Stack {
  readonly f: Frame;
  readonly up: Stack | null;
}

/** A matcher state: the stacks still alive (empty: rejected). */
export type MatchState = readonly Stack[];

const KEY_STRING: StringNode = { kind: "key", id: -1, minLength: 0, maxLength: Infinity };
const ANY_LITERALS: LiteralNode = {
  kind: "literal",
  id: -2,
  minBytes: 4,
  texts: ["true", "false", "null"].map((t) => new TextEncoder().encode(t)),
};
const ANY_NUMBER: NumberNode = { kind: "number", id: -3, integer: false, bounds: null, minBytes: 1 };

const QUOTE = 0x22, BACKSLASH = 0x5c, COMMA = 0x2c, COLON = 0x3a;
const LBRACE = 0x7b, RBRACE = 0x7d, LBRACKET = 0x5b, RBRACKET = 0x5d;

function push(up: Stack | null, f: Frame): Stack {
  return { f, up };
}

/** Stacks expecting a value of `n` on top of `up`, one per union option. */
function expectValue(up: Stack, n: ValueNode): Stack[] {
  if (n.kind === "union") return n.options.flatMap((o) => expectValue(up, o));
  return [push(up, { t: "value", n })];
}

/** The initial state of a grammar: nothing written, one value expected. */
export function initialState(root: ValueNode): MatchState {
  return expectValue(push(null, { t: "root", done: false }), root);
}

/** Whether an object may write property `j` next when it is at index `i` (no required one skipped). */
function reachableProperty(props: readonly PropertyNode[], i: number, j: number): boolean {
  for (let k = i; k < j; k++) if (props[k].required) return false;
  return j < props.length;
}

function requiredLeft(props: readonly PropertyNode[], i: number): boolean {
  for (let k = i; k < props.length; k++) if (props[k].required) return true;
  return false;
}

/** Bytes of the required properties from `i` on, with the commas between them (not before the first). */
function requiredBytes(props: readonly PropertyNode[], i: number): number {
  let bytes = 0, n = 0;
  for (let k = i; k < props.length; k++) {
    const p = props[k];
    if (p.required) bytes += p.keyBytes.length + p.value.minBytes + (n++ > 0 ? 1 : 0);
  }
  return bytes;
}

/** The stacks after the top frame ended its value: the parent learns its child is done. */
function finished(up: Stack): Stack {
  return up.f.t === "root" ? push(up.up, { t: "root", done: true }) : up;
}

/** Starts a value of `n` with its first byte. */
function startValue(up: Stack, n: ValueNode, b: number): Stack[] {
  switch (n.kind) {
    case "union":
      return n.options.flatMap((o) => startValue(up, o, b));
    case "any":
      if (b === LBRACE) return [push(up, { t: "record", n: null, ph: "open" })];
      if (b === LBRACKET) return [push(up, { t: "array", n: null, ph: "open", c: 0 })];
      if (b === QUOTE) return [push(up, newString(KEY_STRING))];
      if (b === 0x2d || (b >= 0x30 && b <= 0x39)) return startValue(up, ANY_NUMBER, b);
      return startValue(up, ANY_LITERALS, b);
    case "object":
      if (b !== LBRACE) return [];
      return [
        n.freeValues
          ? push(up, { t: "record", n, ph: "open" })
          : push(up, { t: "object", n, ph: "open", i: 0, cand: [], pos: 0 }),
      ];
    case "array":
      return b === LBRACKET ? [push(up, { t: "array", n, ph: "open", c: 0 })] : [];
    case "string":
      return b === QUOTE ? [push(up, newString(n))] : [];
    case "number": {
      const s = numberStart(n, b);
      return s ? [push(up, { t: "number", n, s })] : [];
    }
    case "literal": {
      const cand: number[] = [];
      n.texts.forEach((t, i) => t[0] === b && cand.push(i));
      if (cand.length === 0) return [];
      const pos = 1;
      if (cand.length === 1 && n.texts[cand[0]].length === pos) return [finished(up)];
      return [push(up, { t: "literal", n, cand, pos })];
    }
  }
}

function newString(n: StringNode): Frame {
  return { t: "string", n, len: 0, u: 0, lo: 0x80, hi: 0xbf, esc: 0 };
}

const ESCAPES = new Set([...'"\\/bfnrt'].map((c) => c.charCodeAt(0)));

function isHex(b: number): boolean {
  return (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x46) || (b >= 0x61 && b <= 0x66);
}

function stepString(st: Stack, f: Extract<Frame, { t: "string" }>, b: number): Stack[] {
  const up = st.up!;
  if (f.u > 0) {
    if (b < f.lo || b > f.hi) return [];
    return [push(up, { ...f, u: f.u - 1, lo: 0x80, hi: 0xbf })];
  }
  if (f.esc === 1) {
    if (b === 0x75) return [push(up, { ...f, esc: 2 })];
    return ESCAPES.has(b) ? [push(up, { ...f, esc: 0 })] : [];
  }
  if (f.esc >= 2) {
    // No \uD800-\uDFFF: lone surrogates are not text, and a pair would count as two characters.
    if (!isHex(b) || (f.esc === 2 && (b === 0x44 || b === 0x64))) return [];
    return [push(up, { ...f, esc: f.esc === 5 ? 0 : f.esc + 1 })];
  }
  if (b === QUOTE) {
    if (f.len < f.n.minLength) return [];
    return [finished(up)];
  }
  if (f.len >= f.n.maxLength || b < 0x20) return [];
  const len = f.len + 1;
  if (b === BACKSLASH) return [push(up, { ...f, len, esc: 1 })];
  if (b < 0x80) return [push(up, { ...f, len })];
  // UTF-8 lead bytes, with the ranges that rule out overlong forms, surrogates and > U+10FFFF.
  if (b >= 0xc2 && b <= 0xdf) return [push(up, { ...f, len, u: 1 })];
  if (b >= 0xe0 && b <= 0xef) {
    return [push(up, { ...f, len, u: 2, lo: b === 0xe0 ? 0xa0 : 0x80, hi: b === 0xed ? 0x9f : 0xbf })];
  }
  if (b >= 0xf0 && b <= 0xf4) {
    return [push(up, { ...f, len, u: 3, lo: b === 0xf0 ? 0x90 : 0x80, hi: b === 0xf4 ? 0x8f : 0xbf })];
  }
  return [];
}

function stepObject(st: Stack, f: Extract<Frame, { t: "object" }>, b: number): Stack[] {
  const up = st.up!;
  const props = f.n.properties;
  switch (f.ph) {
    case "open":
    case "comma": {
      if (b === RBRACE && f.ph === "open" && !requiredLeft(props, f.i)) return [finished(up)];
      if (b !== QUOTE) return [];
      const cand: number[] = [];
      for (let j = f.i; j < props.length; j++) {
        if (!reachableProperty(props, f.i, j)) break;
        cand.push(j);
      }
      return cand.length ? [push(up, { ...f, ph: "key", cand, pos: 1 })] : [];
    }
    case "key": {
      const cand = f.cand.filter((j) => props[j].keyBytes[f.pos] === b);
      if (cand.length === 0) return [];
      const pos = f.pos + 1;
      if (cand.length === 1 && props[cand[0]].keyBytes.length === pos) {
        const j = cand[0];
        return expectValue(
          push(up, { t: "object", n: f.n, ph: "after", i: j + 1, cand: [], pos: 0 }),
          props[j].value,
        );
      }
      return [push(up, { ...f, cand, pos })];
    }
    case "after":
      if (b === RBRACE) return requiredLeft(props, f.i) ? [] : [finished(up)];
      if (b === COMMA && f.i < props.length) return [push(up, { ...f, ph: "comma" })];
      return [];
  }
}

function stepRecord(st: Stack, f: Extract<Frame, { t: "record" }>, b: number): Stack[] {
  const up = st.up!;
  switch (f.ph) {
    case "open":
    case "comma":
      if (b === RBRACE && f.ph === "open") return [finished(up)];
      return b === QUOTE ? [push(push(up, { ...f, ph: "colon" }), newString(KEY_STRING))] : [];
    case "colon":
      if (b !== COLON) return [];
      return expectValue(push(up, { ...f, ph: "after" }), f.n?.freeValues ?? ANY_NODE);
    case "after":
      if (b === RBRACE) return [finished(up)];
      return b === COMMA ? [push(up, { ...f, ph: "comma" })] : [];
  }
}

const ANY_NODE: ValueNode = { kind: "any", id: -4, minBytes: 1 };

function arrayItem(f: Extract<Frame, { t: "array" }>, index: number): ValueNode | null {
  return f.n === null ? ANY_NODE : itemNode(f.n, index);
}

function stepArray(st: Stack, f: Extract<Frame, { t: "array" }>, b: number): Stack[] {
  const up = st.up!;
  const minItems = f.n?.minItems ?? 0;
  if (f.ph === "after") {
    if (b === RBRACKET) return f.c >= minItems ? [finished(up)] : [];
    return b === COMMA && arrayItem(f, f.c) !== null ? [push(up, { ...f, ph: "comma" })] : [];
  }
  if (b === RBRACKET && f.ph === "open") return minItems === 0 ? [finished(up)] : [];
  const item = arrayItem(f, f.c);
  if (item === null) return [];
  return startValue(push(up, { ...f, ph: "after", c: f.c + 1 }), item, b);
}

/** Whether a frame that could go on may also end here (numbers, literals that prefix longer ones). */
function frameComplete(f: Frame): boolean {
  if (f.t === "number") return numberComplete(f.n, f.s);
  if (f.t === "literal") return f.cand.some((i) => f.n.texts[i].length === f.pos);
  return false;
}

/** The stacks after byte `b` on one stack. */
function stepStack(st: Stack, b: number): Stack[] {
  const f = st.f;
  switch (f.t) {
    case "root":
      return [];
    case "value":
      return startValue(st.up!, f.n, b);
    case "object":
      return stepObject(st, f, b);
    case "record":
      return stepRecord(st, f, b);
    case "array":
      return stepArray(st, f, b);
    case "string":
      return stepString(st, f, b);
    case "number": {
      const s = numberStep(f.n, f.s, b);
      if (s) return [push(st.up, { ...f, s })];
      return numberComplete(f.n, f.s) ? stepStack(finished(st.up!), b) : [];
    }
    case "literal": {
      const cand = f.cand.filter((i) => f.n.texts[i].length > f.pos && f.n.texts[i][f.pos] === b);
      if (cand.length > 0) {
        const pos = f.pos + 1;
        const done = cand.length === 1 && f.n.texts[cand[0]].length === pos;
        return [done ? finished(st.up!) : push(st.up, { ...f, cand, pos })];
      }
      return frameComplete(f) ? stepStack(finished(st.up!), b) : [];
    }
  }
}

/** The state after byte `b` (empty when the grammar refuses it). */
export function stepState(state: MatchState, b: number): MatchState {
  if (state.length === 1) return stepStack(state[0], b);
  const out: Stack[] = [];
  for (const st of state) for (const s of stepStack(st, b)) out.push(s);
  return out;
}

/** The state after all of `bytes`. */
export function stepBytes(state: MatchState, bytes: Uint8Array): MatchState {
  let s = state;
  for (let i = 0; i < bytes.length && s.length > 0; i++) s = stepState(s, bytes[i]);
  return s;
}

/** Whether the text so far is one whole value (end of generation allowed here). */
export function canEnd(state: MatchState): boolean {
  for (let st of state) {
    while (st.f.t !== "root" && frameComplete(st.f)) st = finished(st.up!);
    if (st.f.t === "root" && st.f.done) return true;
  }
  return false;
}

/** Whether nothing more may be written: the value is complete and cannot go on. */
export function isClosed(state: MatchState): boolean {
  return state.length > 0 && state.every((st) => st.f.t === "root" && st.f.done);
}

/** The fewest bytes that finish the value from this stack. */
function stackCost(st: Stack): number {
  let cost = 0;
  for (let s: Stack | null = st; s !== null; s = s.up) cost += frameCost(s.f);
  return cost;
}

/** The fewest bytes that finish the value from any alternative (Infinity: none can). */
export function minCompletion(state: MatchState): number {
  let best = Infinity;
  for (const st of state) best = Math.min(best, stackCost(st));
  return best;
}

function frameCost(f: Frame): number {
  switch (f.t) {
    case "root":
      return 0;
    case "value":
      return f.n.minBytes;
    case "object": {
      const props = f.n.properties;
      if (f.ph === "key") {
        let best = Infinity;
        for (const j of f.cand) {
          const p = props[j];
          const rest = requiredLeft(props, j + 1) ? 1 + requiredBytes(props, j + 1) : 0;
          best = Math.min(best, p.keyBytes.length - f.pos + p.value.minBytes + rest + 1);
        }
        return best;
      }
      const req = requiredLeft(props, f.i);
      if (f.ph === "open") return requiredBytes(props, f.i) + 1;
      if (f.ph === "after") return req ? 1 + requiredBytes(props, f.i) + 1 : 1;
      // After a comma one more property is due: the cheapest that may come next.
      if (req) return requiredBytes(props, f.i) + 1;
      let best = Infinity;
      for (let j = f.i; j < props.length; j++) {
        best = Math.min(best, props[j].keyBytes.length + props[j].value.minBytes + 1);
      }
      return best;
    }
    case "record": {
      const value = f.n?.freeValues?.minBytes ?? 1;
      return f.ph === "open" || f.ph === "after" ? 1 : f.ph === "colon" ? 1 + value + 1 : 3 + value + 1;
    }
    case "array": {
      const minItems = f.n?.minItems ?? 0;
      const itemsFrom = (c: number, n: number) => {
        let bytes = 0;
        for (let k = c; k < c + n; k++) bytes += arrayItem(f, k)?.minBytes ?? Infinity;
        return bytes;
      };
      if (f.ph === "open") return minItems === 0 ? 1 : itemsFrom(0, minItems) + minItems - 1 + 1;
      if (f.ph === "after") {
        const left = Math.max(0, minItems - f.c);
        return itemsFrom(f.c, left) + left + 1;
      }
      const left = Math.max(1, minItems - f.c);
      return itemsFrom(f.c, left) + left - 1 + 1;
    }
    case "string": {
      const esc = f.esc === 1 ? 1 : f.esc >= 2 ? 6 - f.esc : 0;
      return f.u + esc + Math.max(0, f.n.minLength - f.len) + 1;
    }
    case "number":
      return numberCost(f.n, f.s);
    case "literal": {
      let best = Infinity;
      for (const i of f.cand) best = Math.min(best, f.n.texts[i].length - f.pos);
      return best;
    }
  }
}

function frameKey(f: Frame): string {
  switch (f.t) {
    case "root":
      return f.done ? "R" : "r";
    case "value":
      return `v${f.n.id}`;
    case "object":
      return `o${f.n.id}${f.ph[0]}${f.i}${f.ph === "key" ? `:${f.cand.join(",")}@${f.pos}` : ""}`;
    case "record":
      return `d${f.n?.id ?? "a"}${f.ph}`;
    case "array":
      return `a${f.n?.id ?? "a"}${f.ph[0]}${
        f.n === null || (f.n.minItems === 0 && f.n.maxItems === Infinity && f.n.prefix.length === 0)
          ? ""
          : f.c
      }`;
    case "string": {
      const counted = f.n.minLength > 0 || f.n.maxLength < Infinity;
      return `s${f.n.id}${counted ? `#${f.len}` : ""}u${f.u}${f.lo}${f.hi}e${f.esc}`;
    }
    case "number":
      return `n${f.n.id}${numberKey(f.n, f.s)}`;
    case "literal":
      return `l${f.n.id}:${f.cand.join(",")}@${f.pos}`;
  }
}

/**
 * A text naming the state for caches: two states with the same key accept the same byte strings.
 * Alternatives are sorted, so the order unions forked in does not matter.
 */
export function stateKey(state: MatchState): string {
  const keys = state.map((st) => {
    let k = "";
    for (let s: Stack | null = st; s !== null; s = s.up) k += frameKey(s.f) + "/";
    return k;
  });
  return keys.length === 1 ? keys[0] : [...new Set(keys)].sort().join("|");
}

/** The same state with duplicate alternatives (equal keys) dropped. */
export function dedupeState(state: MatchState): MatchState {
  if (state.length < 2) return state;
  const seen = new Map<string, Stack>();
  for (const st of state) seen.set(stateKey([st]), st);
  return [...seen.values()];
}

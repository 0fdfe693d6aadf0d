/**
 * The number part of the decoding grammar: JSON number syntax byte by byte, digit caps that keep
 * every value exact as a double, and bounds (minimum/maximum) enforced on prefixes: a digit is
 * allowed only while some completion of the number still lies within the bounds.
 *
 * @module
 */

import { integerHigh, integerLow, MAX_INTEGER_DIGITS, type ValueNode } from "./json_schema.ts";

type NumberNode = Extract<ValueNode, { kind: "number" }>;

/** Most fraction digits, and most exponent digits, the grammar writes. */
const MAX_FRACTION_DIGITS = 15;
const MAX_EXPONENT_DIGITS = 2;

/** A number being written: sign, integer digits, fraction digits (null: no '.'), exponent (null: no 'e'). */
export interface NumberState {
  readonly neg: boolean;
  readonly int: string;
  readonly frac: string | null;
  /** Exponent text after 'e' (sign included), or null. */
  readonly exp: string | null;
}

const DIGIT_0 = 0x30, DIGIT_9 = 0x39;

function isDigit(b: number): boolean {
  return b >= DIGIT_0 && b <= DIGIT_9;
}

/** The state after the number's first byte, or null when a number cannot start with it. */
export function numberStart(node: NumberNode, byte: number): NumberState | null {
  const s: NumberState | null = byte === 0x2d
    ? { neg: true, int: "", frac: null, exp: null }
    : isDigit(byte)
    ? { neg: false, int: String.fromCharCode(byte), frac: null, exp: null }
    : null;
  return s && numberCost(node, s) < Infinity ? s : null;
}

/** The state after one more byte of the same number, or null when the number cannot go on with it. */
export function numberStep(node: NumberNode, s: NumberState, byte: number): NumberState | null {
  const ch = String.fromCharCode(byte);
  let next: NumberState | null = null;
  if (s.exp !== null) {
    if (isDigit(byte) && s.exp.replace(/^[+-]/, "").length < MAX_EXPONENT_DIGITS) {
      next = { ...s, exp: s.exp + ch };
    } else if ((ch === "+" || ch === "-") && s.exp === "") next = { ...s, exp: ch };
  } else if (s.frac !== null) {
    if (isDigit(byte)) next = { ...s, frac: s.frac + ch };
    else if ((ch === "e" || ch === "E") && s.frac !== "" && !node.integer && node.bounds === null) {
      next = { ...s, exp: "" };
    }
  } else if (isDigit(byte)) {
    if (s.int !== "0") next = { ...s, int: s.int + ch };
  } else if (ch === "." && s.int !== "" && !node.integer) next = { ...s, frac: "" };
  else if ((ch === "e" || ch === "E") && s.int !== "" && !node.integer && node.bounds === null) {
    next = { ...s, exp: "" };
  }
  return next && numberCost(node, next) < Infinity ? next : null;
}

/** Whether the number as written is a complete value of the node. */
export function numberComplete(node: NumberNode, s: NumberState): boolean {
  return numberCost(node, s) === 0;
}

/** A short text of the state for cache keys (digits only where bounds make them matter). */
export function numberKey(node: NumberNode, s: NumberState): string {
  if (node.bounds !== null) return `${s.neg ? "-" : ""}${s.int}${s.frac === null ? "" : "." + s.frac}`;
  const e = s.exp === null ? "" : `e${s.exp.length}${/^[+-]/.test(s.exp) ? "s" : ""}`;
  return `${s.neg ? "-" : ""}${s.int.length}${s.int === "0" ? "z" : ""}.${s.frac?.length ?? "n"}${e}`;
}

/**
 * The fewest bytes that complete the number within its caps and bounds: 0 when it is complete,
 * Infinity when no completion exists (the prefix is already out of bounds, or over a digit cap).
 */
export function numberCost(node: NumberNode, s: NumberState): number {
  if (s.int.length > MAX_INTEGER_DIGITS || (s.frac?.length ?? 0) > MAX_FRACTION_DIGITS) return Infinity;
  if (node.bounds === null) {
    if (s.int === "") return 1;
    if (s.exp !== null) return s.exp.replace(/^[+-]/, "") === "" ? 1 : 0;
    return s.frac === "" ? 1 : 0;
  }
  if (s.int.length + (s.frac?.length ?? 0) > MAX_INTEGER_DIGITS) return Infinity;
  for (let k = 0; k <= MAX_INTEGER_DIGITS + 2; k++) {
    if (reachableIn(node, s, k)) return k;
  }
  return Infinity;
}

/** Whether some completion of exactly `k` more bytes lies within the node's bounds. */
function reachableIn(node: NumberNode, s: NumberState, k: number): boolean {
  const b = node.bounds!;
  const lo = node.integer ? integerLow(b) : b.min ?? -Infinity;
  const hi = node.integer ? integerHigh(b) : b.max ?? Infinity;
  const loX = !node.integer && b.minExclusive === true;
  const hiX = !node.integer && b.maxExclusive === true;
  // Each candidate is magnitudes a, a + step, ..., up to top (inclusive).
  // Grid points within a millionth of a step of a bound count as on it: a decimal of at most 15
  // digits and a schema bound that equal each other may differ in their last float bits.
  const fits = (a: number, top: number, step: number) => {
    const [from, to] = s.neg ? [-top, -a] : [a, top];
    const tol = step * 1e-6;
    const aboveLow = (x: number) => loX ? x > lo + tol : x >= lo - tol;
    let m = Math.max(0, Math.ceil((lo - from) / step - 1e-6));
    let x = from + m * step;
    if (!aboveLow(x)) x = from + ++m * step;
    if (!aboveLow(x) || x > to + tol) return false;
    return hiX ? x < hi - tol : x <= hi + tol;
  };
  const nd = s.int.length;
  if (s.frac !== null) {
    const nf = s.frac.length + k;
    if (nf === 0 || nf + nd > MAX_INTEGER_DIGITS) return false;
    const v = Number(`${s.int}.${s.frac}`);
    const step = 10 ** -nf;
    return fits(v, v + 10 ** -s.frac.length - step, step);
  }
  const p = nd === 0 ? null : Number(s.int);
  // Integers of j more digits: [p·10^j, p·10^j + 10^j - 1], or from nothing [10^(j-1), 10^j - 1].
  const intRange = (j: number): [number, number] | null => {
    if (nd + j > MAX_INTEGER_DIGITS) return null;
    if (p === null) return j === 0 ? null : j === 1 ? [0, 9] : [10 ** (j - 1), 10 ** j - 1];
    if (p === 0 && nd === 1) return j === 0 ? [0, 0] : null;
    return [p * 10 ** j, p * 10 ** j + 10 ** j - 1];
  };
  const whole = intRange(k);
  if (whole && fits(whole[0], whole[1], 1)) return true;
  if (node.integer) return false;
  // j more integer digits, '.', then f ≥ 1 fraction digits.
  for (let j = 0; j + 2 <= k; j++) {
    const f = k - j - 1;
    const r = intRange(j);
    if (!r || nd + j + f > MAX_INTEGER_DIGITS) continue;
    const step = 10 ** -f;
    if (fits(r[0], r[1] + 1 - step, step)) return true;
  }
  return false;
}

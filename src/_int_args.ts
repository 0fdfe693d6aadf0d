/**
 * Integers on their way to native code, checked in one place. Every number a `kf_*` call takes, or
 * a `kf_*_params` struct holds, passes through here first: a `DataView.setInt32` or an FFI `i32`
 * parameter would silently wrap 2**32 + 5 to 5, so a value outside the C type is refused as given.
 *
 * Two kinds of failure, as STYLE.md splits them:
 * - option values (sizes, counts, indices, seeds) are API misuse: `TypeError` for a non-number,
 *   `RangeError` for a non-integer or a value out of range, naming the option and the value;
 * - token ids and labels are data (a tokenizer's or a file's output): a {@link KvfoldError}
 *   `INVALID_ARGUMENT` naming the id, its index and the vocabulary size, as the native library does.
 *
 * @module
 */

import { alloc } from "./_binding.ts";
import { KvfoldError } from "./errors.ts";

/** Largest `int32_t`. */
export const INT32_MAX = 0x7fffffff;
/** Smallest `int32_t`. */
export const INT32_MIN = -0x80000000;
const UINT64_MAX = (1n << 64n) - 1n;
const INT64_MIN = -(1n << 63n), INT64_MAX = (1n << 63n) - 1n;

/** Inclusive bounds of an integer argument (clamped to the C type's range). */
export interface IntRange {
  min?: number;
  max?: number;
}

/** A value as the caller gave it, for messages: numbers in full, strings quoted, others by type. */
export function showValue(value: unknown): string {
  switch (typeof value) {
    case "number":
      if (Object.is(value, -0)) return "-0";
      // Every digit of a large integer (String(2 ** 60) would round it to "1152921504606847000").
      return Number.isInteger(value) && !Number.isSafeInteger(value)
        ? BigInt(value).toString()
        : String(value);
    case "bigint":
      return `${value}n`;
    case "string":
      return JSON.stringify(value.length > 40 ? value.slice(0, 40) + "…" : value);
    case "undefined":
      return "undefined";
    case "object":
      return value === null ? "null" : Array.isArray(value) ? "an array" : "an object";
    default:
      return `a ${typeof value}`;
  }
}

/**
 * `value` as an `int32_t` in `[min, max]` (default: the whole int32 range). `action` and `name`
 * word the message: "Cannot create session: contextSize 4294967312 is outside [0, 2147483647]".
 */
export function int32Arg(action: string, name: string, value: unknown, range: IntRange = {}): number {
  const min = Math.max(range.min ?? INT32_MIN, INT32_MIN);
  const max = Math.min(range.max ?? INT32_MAX, INT32_MAX);
  if (typeof value !== "number") {
    throw new TypeError(`Cannot ${action}: ${name} ${showValue(value)} is not a number`);
  }
  if (!Number.isInteger(value)) {
    throw new RangeError(`Cannot ${action}: ${name} ${showValue(value)} is not an integer`);
  }
  if (value < min || value > max) {
    throw new RangeError(`Cannot ${action}: ${name} ${showValue(value)} is outside [${min}, ${max}]`);
  }
  return value;
}

/**
 * `value` (a number or a bigint) as an `int64_t` in `[min, max]`. A number must be a safe integer:
 * past 2**53 it may already differ from what the caller wrote, so a bigint is asked for instead.
 */
export function int64Arg(
  action: string,
  name: string,
  value: unknown,
  range: { min?: bigint; max?: bigint } = {},
): bigint {
  return bigIntArg(action, name, value, range.min ?? INT64_MIN, range.max ?? INT64_MAX);
}

/** `value` (a number or a bigint) as a `uint64_t` (seeds): an integer in [0, 2**64 - 1]. */
export function uint64Arg(action: string, name: string, value: unknown): bigint {
  return bigIntArg(action, name, value, 0n, UINT64_MAX);
}

function bigIntArg(action: string, name: string, value: unknown, min: bigint, max: bigint): bigint {
  if (typeof value !== "number" && typeof value !== "bigint") {
    throw new TypeError(`Cannot ${action}: ${name} ${showValue(value)} is not a number or a bigint`);
  }
  if (typeof value === "number") {
    if (!Number.isInteger(value)) {
      throw new RangeError(`Cannot ${action}: ${name} ${showValue(value)} is not an integer`);
    }
    if (!Number.isSafeInteger(value)) {
      throw new RangeError(
        `Cannot ${action}: ${name} ${showValue(value)} is not a safe integer (pass a bigint past 2**53)`,
      );
    }
  }
  const v = BigInt(value);
  if (v < min || v > max) {
    throw new RangeError(`Cannot ${action}: ${name} ${showValue(value)} is outside [${min}, ${max}]`);
  }
  return v;
}

/** How {@link tokenIdsArg} names what it checks and which extra value it lets through. */
export interface TokenIdsOptions {
  /** Word for one element in messages; default "token id". */
  what?: string;
  /** One value outside the vocabulary that is allowed (labels: -1, "no target"). */
  ignore?: number;
}

/**
 * Token ids as an off-heap `int32_t` array for a native call, each checked to be an integer in
 * `[0, vocabSize)` (or `options.ignore`). Failure: an `INVALID_ARGUMENT` {@link KvfoldError}
 * "Cannot prefill: token id 4294967301 at index 0 is outside [0, 256), the vocabulary of 256 tokens".
 */
export function tokenIdsArg(
  action: string,
  ids: ArrayLike<unknown>,
  vocabSize: number,
  options: TokenIdsOptions = {},
): Uint8Array<ArrayBuffer> {
  if (ids.length > INT32_MAX) {
    throw new RangeError(`Cannot ${action}: ${ids.length} ids are more than ${INT32_MAX}`);
  }
  const buf = alloc(Math.max(4, ids.length * 4));
  const view = new Int32Array(buf.buffer);
  for (let i = 0; i < ids.length; i++) {
    view[i] = tokenIdArg(action, ids[i], vocabSize, { ...options, index: i });
  }
  return buf;
}

/** One token id checked as {@link tokenIdsArg} checks each (`index` names its place in messages). */
export function tokenIdArg(
  action: string,
  id: unknown,
  vocabSize: number,
  options: TokenIdsOptions & { index?: number } = {},
): number {
  const what = options.what ?? "token id";
  const at = options.index === undefined ? "" : ` at index ${options.index}`;
  if (typeof id !== "number" || !Number.isInteger(id)) {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      `Cannot ${action}: ${what} ${showValue(id)}${at} is not an integer`,
    );
  }
  if ((id < 0 || id >= vocabSize) && id !== options.ignore) {
    const allowed = options.ignore === undefined ? "" : ` (or ${options.ignore})`;
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      `Cannot ${action}: ${what} ${showValue(id)}${at} is outside [0, ${vocabSize})${allowed}, ` +
        `the vocabulary of ${vocabSize} tokens`,
    );
  }
  return id;
}

/** Who reads a config field, for {@link configPositiveInt}'s message and error code. */
export interface ConfigFieldReader {
  /** Error code of a bad value: `"FORMAT"` for a file's field, `"INVALID_ARGUMENT"` for an argument's. */
  code: "FORMAT" | "INVALID_ARGUMENT";
  /** What failed, as "Cannot convert model". */
  action: string;
  /** Where the field comes from, as a file's path. */
  source: string;
}

/**
 * `config[key]` (or `fallback` when the key is absent) as an integer in [1, 2^31 - 1]: the sizes a
 * model's `config.json` holds. A {@link KvfoldError} otherwise: "Cannot load compressor:
 * m/config.json: segment_length is 0, not a positive integer".
 */
export function configPositiveInt(
  config: Readonly<Record<string, unknown>>,
  key: string,
  reader: ConfigFieldReader,
  fallback?: number,
): number {
  const v = config[key] ?? fallback;
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 1 || v > INT32_MAX) {
    throw new KvfoldError(
      reader.code,
      `${reader.action}: ${reader.source}: ${key} is ${showValue(v)}, not a positive integer`,
    );
  }
  return v;
}

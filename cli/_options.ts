/**
 * Option parsing shared by the `kvfold` commands: the strict integer, number and choice flags,
 * the options every engine command takes (`COMMON`) and the `--cache` family (`CACHE`).
 *
 * Every refusal is a `KvfoldError("INVALID_ARGUMENT")` naming the flag; `main` prints it.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { type CacheOptions, Kvfold, KvfoldError, type Model, type WeightDType } from "../mod.ts";

/** How `parseArgs` declares one flag. */
type Flag = { type: "string" | "boolean"; multiple?: boolean; short?: string };

/** A flag that takes a value. */
export const STRING = { type: "string" } as const;
/** A flag without a value. */
export const BOOLEAN = { type: "boolean" } as const;

/**
 * `args` parsed strictly against `options` (unknown flags are refused); positionals only when
 * `positionals` is true.
 */
export function parseCommand<T extends Record<string, Flag>>(
  args: string[],
  options: T,
  positionals = false,
): { values: ReturnType<typeof parseArgs<{ options: T }>>["values"]; positionals: string[] } {
  const r = parseArgs({ args, options, allowPositionals: positionals, strict: true });
  return {
    values: r.values as ReturnType<typeof parseArgs<{ options: T }>>["values"],
    positionals: r.positionals,
  };
}

// Integer flags are decimal digits with an optional sign, nothing else ("1e3", "0x10", "2.0", ""
// are refused), within [min, max] as written: every one of them ends in an int32 field, so the
// default max is 2**31 - 1, and past 2**53 a number would no longer be the one written.
const INT32_MAX = 0x7fffffff;

/** A decimal integer in [min, max]; `what` leads the message: "--max-tokens:" or "--ids: item 3". */
export function parseInteger(text: string, what: string, min: number, max: number): number {
  if (!/^[+-]?\d+$/.test(text)) {
    throw new KvfoldError("INVALID_ARGUMENT", `Cannot parse ${what} "${text}" is not an integer`);
  }
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    throw new KvfoldError("INVALID_ARGUMENT", `Cannot parse ${what} "${text}" is outside [${min}, ${max}]`);
  }
  return n;
}

/** An integer flag in [min, max], or undefined when absent. */
export function intOpt(v: string | undefined, name: string, min = 0, max = INT32_MAX): number | undefined {
  return v === undefined ? undefined : parseInteger(v, `--${name}:`, min, max);
}

/** --seed: any non-negative integer a JS number holds exactly. */
export function seedOpt(v: string | undefined): number | undefined {
  return intOpt(v, "seed", 0, Number.MAX_SAFE_INTEGER);
}

/** A finite decimal number flag, or undefined when absent. */
export function numOpt(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  // Decimal notation only: Number() would also take "", " ", "0x10" and "0b1".
  if (!/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(v) || !Number.isFinite(Number(v))) {
    throw new KvfoldError("INVALID_ARGUMENT", `Cannot parse --${name}: "${v}" is not a number`);
  }
  return Number(v);
}

/** A flag that takes one of a few words. */
export function choiceOpt<T extends string>(
  v: string | undefined,
  name: string,
  choices: readonly T[],
): T | undefined {
  if (v === undefined || (choices as readonly string[]).includes(v)) return v as T | undefined;
  throw new KvfoldError(
    "INVALID_ARGUMENT",
    `Cannot parse --${name}: "${v}" is not one of ${choices.join(", ")}`,
  );
}

/** --dtype of commands that load a model. */
export function dtypeOpt(v: { dtype?: string }): WeightDType {
  return choiceOpt(v.dtype, "dtype", ["auto", "f32", "f16", "bf16"] as const) ?? "auto";
}

/** The value of a required flag; refuses it missing or empty. */
export function need(v: string | undefined, name: string): string {
  if (v === undefined || v === "") {
    throw new KvfoldError("INVALID_ARGUMENT", `Missing --${name}; see \`kvfold --help\``);
  }
  return v;
}

/** --ids: non-negative integers here; the model checks them against its vocabulary. */
export function parseIds(list: string): number[] {
  return list.split(",").map((s, i) =>
    parseInteger(s.trim(), `--ids: item ${i}`, 0, Number.MAX_SAFE_INTEGER)
  );
}

/** Options of every command that opens an engine. */
export const COMMON = {
  threads: { type: "string" },
  backend: { type: "string" },
  dtype: { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

/** --cache and its settings, on generate, logits and ask. */
export const CACHE = {
  cache: { type: "string" },
  heads: { type: "string" },
  slots: { type: "string" },
  segment: { type: "string" },
  sinks: { type: "string" },
  window: { type: "string" },
} as const;

/** The session cache the --cache options ask for (undefined: full), loading --heads for lococo. */
export function cacheFromArgs(
  model: Model,
  v: { cache?: string; heads?: string; slots?: string; segment?: string; sinks?: string; window?: string },
): CacheOptions | undefined {
  const kind = v.cache ?? "full";
  const slots = intOpt(v.slots, "slots", 1), segment = intOpt(v.segment, "segment", 1);
  const unused = (names: string[]) => {
    for (const n of names) {
      if ((v as Record<string, string | undefined>)[n] !== undefined) {
        throw new KvfoldError("INVALID_ARGUMENT", `--${n} does not apply to --cache ${kind}`);
      }
    }
  };
  switch (kind) {
    case "full":
      unused(["heads", "slots", "segment", "sinks", "window"]);
      return undefined;
    case "lococo":
      unused(["sinks", "window"]);
      return { kind, heads: model.loadLococoHeads(need(v.heads, "heads")), slots, segment };
    case "h2o":
      unused(["heads", "sinks", "window"]);
      return { kind, slots: intOpt(need(v.slots, "slots"), "slots", 1)!, segment };
    case "streaming":
      unused(["heads", "slots"]);
      return {
        kind,
        sinks: intOpt(v.sinks, "sinks"),
        window: intOpt(need(v.window, "window"), "window", 1)!,
        segment,
      };
    default:
      throw new KvfoldError("INVALID_ARGUMENT", `--cache ${kind} is not one of full, lococo, h2o, streaming`);
  }
}

/** The engine --backend and --threads ask for. */
export async function openEngine(v: { threads?: string; backend?: string }): Promise<Kvfold> {
  return await Kvfold.open({
    backend: choiceOpt(v.backend, "backend", ["auto", "cpu", "cuda"] as const),
    threads: intOpt(v.threads, "threads") ?? 0,
  });
}

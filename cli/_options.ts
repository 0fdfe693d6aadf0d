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

/**
 * One flag of a command: how `parseArgs` reads it, and what `--help` says of it. The same table
 * parses the command line and prints the help, so the two cannot disagree.
 */
export interface Flag {
  type: "string" | "boolean";
  multiple?: boolean;
  short?: string;
  /** What the value stands for in the help ("N", "DIR"). */
  arg?: string;
  /** One line for the help. */
  help?: string;
  /** The heading it is listed under (default "Options"). */
  group?: string;
}

/** A flag that takes a value, described in the help as `--name ARG  help`. */
export const str = (arg: string, help: string, group?: string) =>
  ({ type: "string", arg, help, group }) as const;
/** A flag that takes a value and may be given more than once. */
export const many = (arg: string, help: string, group?: string) =>
  ({ type: "string", multiple: true, arg, help, group }) as const;
/** A flag without a value. */
export const bool = (help: string, group?: string) => ({ type: "boolean", help, group }) as const;

/** A flag that takes a value (listed in the help without a description). */
export const STRING = { type: "string" } as const;
/** A flag without a value (listed in the help without a description). */
export const BOOLEAN = { type: "boolean" } as const;

/** A command of `kvfold`: its usage lines and option table, and what it does. */
export interface CommandSpec<T extends Record<string, Flag> = Record<string, Flag>> {
  /** The word after `kvfold`. */
  name: string;
  /** One line for `kvfold --help`. */
  summary: string;
  /** Usage lines, each after "kvfold " ("generate --model DIR --prompt TEXT [options]"). */
  usage: readonly string[];
  /** More about the command and its arguments, printed after the usage. */
  details?: string;
  options: T;
  /** Whether it takes positional arguments. */
  positionals?: boolean;
}

/** `spec` with its option table's type kept (for the parsed values). */
export function defineCommand<T extends Record<string, Flag>>(spec: CommandSpec<T>): CommandSpec<T> {
  return spec;
}

const HELP_FLAG = { type: "boolean", short: "h", help: "show this help" } as const;

// Usage errors: wrong words on the command line, not a refusal of data. `main` prints them without
// the error code, points at the command's --help and exits 2.
const usageErrors = new WeakSet<Error>();

/** A `KvfoldError("INVALID_ARGUMENT")` that `main` reports as a usage error (exit 2). */
export function usageError(message: string, options?: ErrorOptions): KvfoldError {
  const e = new KvfoldError("INVALID_ARGUMENT", message, options);
  usageErrors.add(e);
  return e;
}

/** Whether `e` came from {@link usageError}. */
export function isUsageError(e: unknown): boolean {
  return e instanceof Error && usageErrors.has(e);
}

/** Levenshtein distance between `a` and `b`. */
export function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = row;
  }
  return prev[b.length];
}

/** The closest of `names` to `word` when it is close enough to be a typo of it, else undefined. */
export function closest(word: string, names: Iterable<string>): string | undefined {
  let best: string | undefined, bestD = Infinity;
  for (const n of names) {
    const d = editDistance(word, n);
    if (d < bestD) [best, bestD] = [n, d];
  }
  return bestD <= Math.max(1, Math.floor(word.length / 3)) ? best : undefined;
}

// parseArgs' own messages name the option in quotes: "Unknown option '--lrr'. To specify ...".
function parseArgsMessage(e: Error & { code: string }, spec: CommandSpec): string {
  const quoted = /'(-[^']*)'/.exec(e.message)?.[1] ?? "";
  const option = quoted.replace(/ <value>$/, "");
  switch (e.code) {
    case "ERR_PARSE_ARGS_UNKNOWN_OPTION": {
      const near = option.startsWith("--")
        ? closest(option.slice(2), Object.keys(spec.options).concat("help"))
        : undefined;
      return `unknown option ${option}${near ? `; did you mean --${near}?` : ""}`;
    }
    case "ERR_PARSE_ARGS_INVALID_OPTION_VALUE":
      return /argument missing/.test(e.message)
        ? `option ${option} needs a value`
        : /does not take an argument/.test(e.message)
        ? `option ${option} does not take a value`
        : e.message;
    case "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL":
      return `unexpected argument ${
        /'([^']*)'/.exec(e.message)?.[1] ?? ""
      }: ${spec.name} takes no positional arguments`;
    default:
      return e.message;
  }
}

/**
 * `args` parsed strictly against the command's option table (and `-h, --help`): unknown flags are
 * refused with the nearest known one suggested, positionals taken only when the command takes them.
 */
export function parseCommand<T extends Record<string, Flag>>(
  args: string[],
  spec: CommandSpec<T>,
): { values: ReturnType<typeof parseArgs<{ options: T }>>["values"]; positionals: string[] } {
  let r;
  try {
    r = parseArgs({
      args,
      options: { ...spec.options, help: HELP_FLAG },
      allowPositionals: spec.positionals ?? false,
      strict: true,
    });
  } catch (e) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && code.startsWith("ERR_PARSE_ARGS")) {
      throw usageError(parseArgsMessage(e as Error & { code: string }, spec as CommandSpec), { cause: e });
    }
    throw e;
  }
  return {
    values: r.values as ReturnType<typeof parseArgs<{ options: T }>>["values"],
    positionals: r.positionals,
  };
}

/** The `--help` text of a command, from the same table that parses it. */
export function helpText(spec: CommandSpec): string {
  const groups = new Map<string, [string, string][]>();
  const options: [string, Flag][] = [...Object.entries(spec.options), ["help", HELP_FLAG]];
  for (const [name, f] of options) {
    const left = `${f.short ? `-${f.short}, ` : ""}--${name}${
      f.type === "string" ? ` ${f.arg ?? "VALUE"}` : ""
    }`;
    const right = (f.help ?? "") + (f.multiple ? " (repeatable)" : "");
    const g = f.group ?? "Options";
    groups.set(g, [...groups.get(g) ?? [], [left, right]]);
  }
  const width = Math.min(
    32,
    Math.max(...[...groups.values()].flat().map(([l]) => l.length)) + 2,
  );
  const lines = spec.usage.map((u, i) => `${i === 0 ? "Usage: " : "       "}kvfold ${u}`);
  lines.push("", spec.summary.charAt(0).toUpperCase() + spec.summary.slice(1) + ".");
  if (spec.details) lines.push("", spec.details.trimEnd());
  for (const [g, rows] of groups) {
    lines.push("", `${g}:`);
    for (const [l, r] of rows) {
      lines.push(l.length + 2 > width ? `  ${l}\n  ${" ".repeat(width)}${r}` : `  ${l.padEnd(width)}${r}`);
    }
  }
  return lines.join("\n").replace(/ +$/gm, "") + "\n";
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
  return choiceOpt(v.dtype, "dtype", ["auto", "f32", "f16", "bf16", "q8_0", "q4_0"] as const) ??
    "auto";
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

const ENGINE = "Engine options";
/** Options of every command that opens an engine. */
export const COMMON = {
  threads: str("N", "CPU threads (default: all cores)", ENGINE),
  backend: str("auto|cpu|cuda", "where the model runs (default auto)", ENGINE),
  dtype: str("auto|f32|f16|bf16|q8_0|q4_0", "weight type in memory (default auto: as stored)", ENGINE),
} as const;

const CACHE_GROUP = "Cache options";
/** --cache and its settings, on generate, logits and ask. */
export const CACHE = {
  cache: str("full|lococo|h2o|streaming", "KV cache kind (default full)", CACHE_GROUP),
  heads: str("FILE", "lococo: heads .safetensors file", CACHE_GROUP),
  slots: str("M", "lococo (default: the file's), h2o: KV slots kept", CACHE_GROUP),
  segment: str("B", "lococo, h2o, streaming: tokens per compression segment", CACHE_GROUP),
  sinks: str("N", "streaming: attention sinks kept (default 4)", CACHE_GROUP),
  window: str("W", "streaming: recent tokens kept", CACHE_GROUP),
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

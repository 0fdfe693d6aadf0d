/**
 * The constructor checks both integrations share: every class takes one options object
 * (`{ model }`, `{ store }`, `{ compressor, store }`, ...), and a path string, a missing field or
 * another object is a `TypeError` naming what came.
 *
 * Objects are recognised by shape, not `instanceof`: the Node build bundles each entry point with
 * its own copy of the classes.
 *
 * @module
 */

/** How one kind of option is named in the errors. */
interface OptionShape {
  /** The options object, as the error shows it. */
  shape: string;
  /** What a path string should have been, with how to get one. */
  loaded: string;
  /** What the object should have been. */
  kvfold: string;
}

const MODEL: OptionShape = {
  shape: "{ model }",
  loaded: "a loaded model (await kv.loadModel(path))",
  kvfold: "a loaded kvfold Model",
};
const STORE: OptionShape = {
  shape: "{ store }",
  loaded: "an open store (DocumentStore.open(path))",
  kvfold: "an open kvfold DocumentStore",
};
const COMPRESSOR: OptionShape = {
  shape: "{ compressor, store }",
  loaded: "a loaded compressor (await Compressor.load(kv, path))",
  kvfold: "a loaded kvfold Compressor",
};

/** Refuses a constructor argument that is not `{ model: <loaded Model> }`, naming what came. */
export function checkModelOption(cls: string, options: unknown): void {
  checkField(cls, MODEL, options, "model", isModel);
}

/**
 * Refuses options whose `store` is not an open kvfold `DocumentStore` (a path string included);
 * an absent store passes unless `required`.
 */
export function checkStoreOption(cls: string, options: unknown, required: boolean): void {
  const absent = typeof options === "object" && options !== null &&
    (options as { store?: unknown }).store === undefined;
  if (!required && absent) return;
  checkField(cls, STORE, options, "store", isStore);
}

/** Refuses options whose `compressor` is not a loaded kvfold `Compressor` (a path string included). */
export function checkCompressorOption(cls: string, options: unknown): void {
  checkField(cls, COMPRESSOR, options, "compressor", isCompressor);
}

function checkField(
  cls: string,
  shape: OptionShape,
  options: unknown,
  field: string,
  ok: (v: unknown) => boolean,
): void {
  checkOptionsObject(cls, shape, options);
  const value = (options as Record<string, unknown>)[field];
  if (typeof value === "string") {
    throw new TypeError(
      `${cls} takes ${field}, ${shape.loaded}, not the path string ${JSON.stringify(value)}`,
    );
  }
  if (!ok(value)) {
    throw new TypeError(`${cls} takes ${shape.shape}, ${shape.kvfold}; got ${field}: ${kind(value)}`);
  }
}

/** Refuses anything but an options object: a path string, a bare model, store or compressor, null. */
function checkOptionsObject(cls: string, shape: OptionShape, options: unknown): void {
  if (typeof options === "string") {
    throw new TypeError(
      `${cls} takes ${shape.shape}, ${shape.loaded}, not the path string ${JSON.stringify(options)}`,
    );
  }
  if (options === null || typeof options !== "object" || Array.isArray(options)) {
    throw new TypeError(`${cls} takes ${shape.shape}, ${shape.kvfold}; got ${kind(options)}`);
  }
  if (isModel(options) || isStore(options) || isCompressor(options)) {
    throw new TypeError(`${cls} takes ${shape.shape}, an options object; got ${kind(options)} itself`);
  }
}

function isModel(v: unknown): boolean {
  const m = v as { embed?: unknown; tokenizer?: unknown } | null | undefined;
  return typeof m === "object" && m !== null && typeof m.embed === "function" &&
    typeof m.tokenizer === "object" && m.tokenizer !== null;
}

function isStore(v: unknown): boolean {
  const s = v as { retrieve?: unknown; getChunks?: unknown } | null | undefined;
  return typeof s === "object" && s !== null && typeof s.retrieve === "function" &&
    typeof s.getChunks === "function";
}

function isCompressor(v: unknown): boolean {
  const c = v as { summaryLength?: unknown; model?: unknown } | null | undefined;
  return typeof c === "object" && c !== null && typeof c.summaryLength === "number" && isModel(c.model);
}

function kind(v: unknown): string {
  if (v === null || v === undefined) return String(v);
  if (Array.isArray(v)) return "an array";
  if (typeof v !== "object") return `${typeof v} ${String(v)}`;
  return `a ${(v as object).constructor?.name ?? "null-prototype object"}`;
}

/**
 * The options object of a constructor that still takes its deprecated positional form, e.g.
 * `(model, options)` or `(compressor, store, options)`: when the first argument is the loaded
 * object `fields[0]` names, the positional arguments become `{ ...options, [field]: value }`;
 * anything else is returned as it came, for the checks above to judge.
 */
export function fromPositional(
  args: readonly unknown[],
  fields: readonly ("model" | "store" | "compressor")[],
): unknown {
  const is = { model: isModel, store: isStore, compressor: isCompressor };
  if (!is[fields[0]](args[0])) return args[0];
  const rest = args[fields.length];
  const out: Record<string, unknown> = typeof rest === "object" && rest !== null ? { ...rest } : {};
  fields.forEach((field, i) => (out[field] = args[i]));
  return out;
}

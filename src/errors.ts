/**
 * Typed errors of kvfold, and the one rule for which error a failure is:
 *
 * - **`TypeError` / `RangeError`: misuse of the TypeScript API**, visible from the call alone and
 *   raised before any native call or file access: an option of the wrong type (`TypeError`), a
 *   number outside its range or a word outside its set (`RangeError`), naming the option and value.
 * - **{@link KvfoldError}: what the engine or the files refuse.** Files that are missing or
 *   malformed (`IO`, `FORMAT`, `UNSUPPORTED`), native refusals, lifetimes (`INVALID_STATE`,
 *   `DISPOSED`), memory (`OUT_OF_MEMORY`), cancellation (`ABORTED`), and values only the data can
 *   judge (`INVALID_ARGUMENT`): token ids against the vocabulary, heads or adapters of another
 *   model, document and example records, anything read from a file.
 * - Everything the CLI refuses, and everything read from a user's file, is a `KvfoldError`.
 *
 * Messages read "Cannot X: Y" and name the file, tensor or argument at fault.
 *
 * @module
 */

/** Conditions a caller may want to handle, by name. */
export type KvfoldErrorCode =
  | "INVALID_ARGUMENT"
  | "IO"
  | "FORMAT"
  | "UNSUPPORTED"
  | "OUT_OF_MEMORY"
  | "ABORTED"
  | "INVALID_STATE"
  | "BACKEND"
  | "INTERNAL"
  | "DISPOSED"
  | "BUILD";

/**
 * The one error class kvfold throws for conditions callers handle. `code` says which; `message`
 * reads "Cannot X: Y" and carries the native library's own text when it came from there.
 *
 * @example
 * ```ts
 * import { KvfoldError } from "./errors.ts";
 * try {
 *   throw new KvfoldError("IO", "Cannot load model: /nowhere/config.json does not exist");
 * } catch (e) {
 *   if (e instanceof KvfoldError && e.code === "IO") console.log("missing model");
 * }
 * ```
 */
export class KvfoldError extends Error {
  /** Which condition this is. */
  readonly code: KvfoldErrorCode;
  constructor(code: KvfoldErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "KvfoldError";
    this.code = code;
  }
}

/**
 * Typed errors of kvfold.
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

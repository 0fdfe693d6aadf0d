/**
 * Errors of the OpenAI-compatible server in OpenAI's wire shape:
 * `{ "error": { "message", "type", "param", "code" } }` with the HTTP status that goes with them.
 *
 * @module
 */

import { KvfoldError } from "../errors.ts";

/** OpenAI's error body. */
export interface OpenAIErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

/**
 * A refusal the server answers with `status` and an OpenAI error body. `param` names the request
 * field at fault (`"messages[2].content"`), as OpenAI does.
 *
 * @example
 * ```ts
 * import { HttpError } from "./http_error.ts";
 * const e = HttpError.badRequest("temperature", "temperature must be a number in [0, 2], got \"hot\"");
 * console.log(e.status, JSON.stringify(e.body()));
 * ```
 */
export class HttpError extends Error {
  /** The HTTP status. */
  readonly status: number;
  /** OpenAI's error type ("invalid_request_error", ...). */
  readonly type: string;
  /** The request field at fault, or null. */
  readonly param: string | null;
  /** A machine-readable code ("model_not_found", ...), or null. */
  readonly code: string | null;

  constructor(
    status: number,
    message: string,
    options: { type?: string; param?: string | null; code?: string | null; cause?: unknown } = {},
  ) {
    super(message, { cause: options.cause });
    this.name = "HttpError";
    this.status = status;
    this.type = options.type ?? (status >= 500 ? "server_error" : "invalid_request_error");
    this.param = options.param ?? null;
    this.code = options.code ?? null;
  }

  /** 400 naming the field at fault. */
  static badRequest(param: string | null, message: string, code: string | null = null): HttpError {
    return new HttpError(400, message, { param, code });
  }

  /** The body to send. */
  body(): OpenAIErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }

  /** The JSON response. */
  response(headers: Record<string, string> = {}): Response {
    return Response.json(this.body(), { status: this.status, headers });
  }
}

/**
 * The HTTP error for anything a request's handling threw: an {@link HttpError} as it is; a
 * {@link KvfoldError} the caller could have avoided (a bad argument, an unsupported feature) is a
 * 400; running out of memory a 503; anything else a 500 whose message says what failed.
 */
export function toHttpError(e: unknown): HttpError {
  if (e instanceof HttpError) return e;
  if (e instanceof KvfoldError) {
    switch (e.code) {
      case "INVALID_ARGUMENT":
      case "UNSUPPORTED":
      case "FORMAT":
        return new HttpError(400, e.message, { code: e.code.toLowerCase(), cause: e });
      case "OUT_OF_MEMORY":
        return new HttpError(503, e.message, { code: "out_of_memory", cause: e });
      case "ABORTED":
        return new HttpError(499, e.message, { code: "aborted", cause: e });
      default:
        return new HttpError(500, e.message, { code: e.code.toLowerCase(), cause: e });
    }
  }
  // Misuse of the TS API (RangeError, TypeError) from request data is the request's fault.
  if (e instanceof RangeError || e instanceof TypeError) {
    return new HttpError(400, e.message, { cause: e });
  }
  const message = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
  return new HttpError(500, `Cannot complete the request: ${message}`, { cause: e });
}

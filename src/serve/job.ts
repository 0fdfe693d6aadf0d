/**
 * One request of the server's scheduler: what it asks for (`JobSpec`), how it ended (`JobResult`),
 * and the stream its text is read from while the scheduler (`scheduler.ts`) runs it.
 *
 * @module
 */

import type { AdapterTerm } from "../adapter.ts";
import type { CacheOptions } from "../lococo.ts";
import type { Session, StopReason } from "../session.ts";
import type { IncrementalDecoder, StopStringFilter } from "../text_stream.ts";
import type { GenerateStep } from "../generate_steps.ts";

/** Summary vectors that go before the prompt, as one block. */
export interface PrefixVectors {
  /** `rows × hidden` values: f32, or the raw bf16 bits a store keeps. */
  data: Float32Array | Uint16Array;
  dtype: "f32" | "bf16";
  rows: number;
}

/** What one request runs. */
export interface JobSpec {
  /** Prompt token ids (after the vectors). */
  promptIds: number[];
  /** Summary vectors placed before the prompt. */
  vectors?: PrefixVectors;
  /** The adapter composition (empty: the base model). */
  adapters: AdapterTerm[];
  /** The KV cache (default full). */
  cache?: CacheOptions;
  /** Positions to reserve (full cache). */
  contextSize?: number;
  maxTokens: number;
  temperature: number;
  topP: number;
  seed?: number;
  stop: string[];
  ignoreEos?: boolean;
  /** Aborts the request (a client that went away). */
  signal?: AbortSignal;
}

/** How a request ended. */
export interface JobResult {
  stopReason: StopReason;
  promptTokens: number;
  vectorRows: number;
  generatedTokens: number;
}

// What a generating request carries from step to step (Session.generate's loop state).
export interface Generation {
  sampler: Deno.PointerValue;
  decoder: IncrementalDecoder;
  stops: StopStringFilter;
  eos: ReadonlySet<number>;
  /** The native loop over this request's session, made when it first generates alone. */
  solo?: GenerateStep;
}

/** A request inside the scheduler, and the stream of text it produces. */
export class Job {
  /** Sequence number (1, 2, ...). */
  readonly id: number;
  readonly spec: JobSpec;
  /** `performance.now()` at submission. */
  readonly arrival = performance.now();
  readonly #abort = new AbortController();
  session?: Session;
  state: "waiting" | "prefill" | "generating" | "done" = "waiting";
  /** Vector rows and prompt tokens prefilled so far. */
  prefilled = 0;
  /** Tokens sampled so far. */
  sampled = 0;
  lastTokenAt = 0;
  /** @internal sampler and text state while generating. */
  _gen?: Generation;
  #pieces: string[] = [];
  #result?: JobResult;
  #error?: unknown;
  #notify?: () => void;

  constructor(id: number, spec: JobSpec) {
    this.id = id;
    this.spec = spec;
    const outer = spec.signal;
    if (outer?.aborted) this.#abort.abort(outer.reason);
    else outer?.addEventListener("abort", () => this.abort(outer.reason), { once: true });
  }

  /** Aborted by its client (or the server). */
  get signal(): AbortSignal {
    return this.#abort.signal;
  }

  /** Aborts the request: it leaves the batch within one step. */
  abort(reason?: unknown): void {
    this.#abort.abort(reason);
  }

  /** Whether it finished (result or error). */
  get settled(): boolean {
    return this.#result !== undefined || this.#error !== undefined;
  }

  _push(text: string): void {
    this.#pieces.push(text);
    this.#wake();
  }

  _finish(result: JobResult): void {
    if (this.settled) return;
    this.#result = result;
    this.#wake();
  }

  _fail(error: unknown): void {
    if (this.settled) return;
    this.#error = error;
    this.#wake();
  }

  #wake() {
    const n = this.#notify;
    this.#notify = undefined;
    n?.();
  }

  /** The generated text, piece by piece; returns how it ended. Throws what failed it. */
  async *stream(): AsyncGenerator<string, JobResult, undefined> {
    for (;;) {
      if (this.#pieces.length > 0) {
        // Everything that arrived since the reader last looked goes as one piece (one SSE write).
        yield this.#pieces.length === 1 ? this.#pieces.pop()! : this.#pieces.splice(0).join("");
        continue;
      }
      if (this.#error !== undefined) throw this.#error;
      if (this.#result !== undefined) return this.#result;
      await new Promise<void>((r) => (this.#notify = r));
    }
  }
}

/**
 * Continuous batching: one loop owns every request's session. Each turn of the loop admits waiting
 * requests into free slots, prefills at most one chunk's worth of tokens (the oldest new request's
 * next chunk, and other new requests' whole next chunks while they fit; prompt chunks of full caches
 * in one native pass, `kf_batch_prefill`), then runs one batched decode step over every request
 * that is generating, whatever its adapters. Requests join and leave between steps; a long prompt
 * delays the running ones by one chunk per step, never by its whole prefill.
 *
 * Each step samples every generating row in one native call (`kf_sampler_sample_batch`; rows at a
 * temperature spread over the engine's threads), detokenizes and checks stops row by row, then
 * decodes the rows that go on in one native call: no promise per row and no await between rows.
 * Sampling, the repetition history, incremental detokenization and stop strings follow
 * `Session.generate` step for step, so a greedy request gives exactly the text the in-process API
 * gives (a shared prefill pass rounds differently from a lone one, which only a near tie notices).
 *
 * @module
 */

import type { AdapterTerm } from "../adapter.ts";
import { alloc, check, sym } from "../_binding.ts";
import { tokenIdsArg } from "../_int_args.ts";
import { type BatchEntry, runBatch, runPrefillBatch } from "../batch.ts";
import { KvfoldError } from "../errors.ts";
import type { CacheOptions } from "../lococo.ts";
import type { Model } from "../model.ts";
import { createSampler, sampleRows } from "../sampler.ts";
import type { Session, StopReason } from "../session.ts";
import { IncrementalDecoder, StopStringFilter } from "../text_stream.ts";
import { HttpError } from "./http_error.ts";
import type { ServerMetrics } from "./metrics.ts";

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

/** One entry of the scheduler's trace (tests read it to check the interleaving). */
export type SchedulerEvent =
  | { type: "admit"; id: number }
  | { type: "prefill"; id: number; tokens: number }
  | { type: "step"; ids: number[] }
  | { type: "abort"; id: number }
  | { type: "retire"; id: number; reason: StopReason | "aborted" | "failed" };

/** Options of {@link Scheduler}. */
export interface SchedulerOptions {
  /** Most requests prefilling or generating at once (rows of a decode step); default 16. */
  maxBatch?: number;
  /** Most requests waiting for a slot; one more is refused with 429. Default 256. */
  maxQueue?: number;
  /** Tokens (or vector rows) per prefill chunk, also each session's native batch size; default 256. */
  prefillChunk?: number;
  /** Keeps a trace of admissions, chunks, steps and retirements in {@link Scheduler.trace}. */
  trace?: boolean;
}

// What a generating request carries from step to step (Session.generate's loop state).
interface Generation {
  sampler: Deno.PointerValue;
  decoder: IncrementalDecoder;
  stops: StopStringFilter;
  eos: ReadonlySet<number>;
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

/**
 * The continuous-batching loop over one model's sessions. `submit` queues a request; the loop
 * admits it when a slot is free, prefills it chunk by chunk between decode steps, and decodes it
 * together with every other generating request until it ends or is aborted.
 *
 * @example
 * ```ts ignore
 * const scheduler = new Scheduler(model, new ServerMetrics(), { maxBatch: 8 });
 * const job = scheduler.submit({ promptIds: model.encodePrompt("Hi"), adapters: [], maxTokens: 8,
 *   temperature: 0, topP: 1, stop: [] });
 * for await (const piece of job.stream()) console.log(piece);
 * await scheduler.close();
 * ```
 */
export class Scheduler {
  readonly model: Model;
  readonly maxBatch: number;
  readonly maxQueue: number;
  readonly prefillChunk: number;
  readonly metrics: ServerMetrics;
  /** Admissions, chunks, steps, aborts and retirements, in order (with `trace: true`). */
  readonly trace: SchedulerEvent[] | null;
  readonly #waiting: Job[] = [];
  readonly #prefilling: Job[] = [];
  readonly #generating = new Set<Job>();
  readonly #loop: Promise<void>;
  #nextId = 1;
  #kicked = false;
  // Several requests' prompt chunks in one native pass (kf_batch_prefill runs on the cpu backend).
  #batchPrefill: boolean;
  #waiter?: () => void;
  #closing = false;

  constructor(model: Model, metrics: ServerMetrics, options: SchedulerOptions = {}) {
    this.model = model;
    this.metrics = metrics;
    this.maxBatch = positive("maxBatch", options.maxBatch ?? 16, 4096);
    this.maxQueue = positive("maxQueue", options.maxQueue ?? 256, 1 << 20, 0);
    this.prefillChunk = positive("prefillChunk", options.prefillChunk ?? 256, 1 << 16);
    this.trace = options.trace ? [] : null;
    metrics.maxBatch = this.maxBatch;
    this.#batchPrefill = model.engine.backend === "cpu";
    this.#loop = this.#run();
  }

  /** Requests waiting for a slot. */
  get queued(): number {
    return this.#waiting.length;
  }

  /** Requests prefilling or generating. */
  get running(): number {
    return this.#prefilling.length + this.#generating.size;
  }

  /**
   * Queues a request. Throws a 429 {@link HttpError} when the queue is full and a 503 once the
   * scheduler is closing.
   */
  submit(spec: JobSpec): Job {
    if (this.#closing) {
      throw new HttpError(503, "Cannot accept the request: the server is shutting down", {
        code: "shutting_down",
      });
    }
    const free = Math.max(0, this.maxBatch - this.running);
    if (this.#waiting.length >= this.maxQueue + free) {
      throw new HttpError(
        429,
        `Cannot accept the request: ${this.#waiting.length} requests already wait for one of ` +
          `${this.maxBatch} slots; retry later`,
        { type: "rate_limit_error", code: "queue_full" },
      );
    }
    const job = new Job(this.#nextId++, spec);
    job.signal.addEventListener("abort", () => {
      if (job.state === "done") return; // Deno aborts a request's signal after its response, too
      this.#event({ type: "abort", id: job.id });
      this.#wake();
    }, { once: true });
    this.#waiting.push(job);
    this.metrics.queued = this.#waiting.length;
    this.#wake();
    return job;
  }

  /** Refuses new requests, finishes the ones accepted, and resolves when the loop has stopped. */
  close(): Promise<void> {
    this.#closing = true;
    this.#wake();
    return this.#loop;
  }

  #tokenSampled(job: Job) {
    const now = performance.now();
    if (job.sampled === 0) this.metrics.timeToFirstToken.observe((now - job.arrival) / 1000);
    else this.metrics.interTokenLatency.observe((now - job.lastTokenAt) / 1000);
    job.sampled++;
    job.lastTokenAt = now;
  }

  #event(e: SchedulerEvent) {
    this.trace?.push(e);
  }

  #wake() {
    this.#kicked = true;
    const w = this.#waiter;
    this.#waiter = undefined;
    w?.();
  }

  async #sleep() {
    if (!this.#kicked) await new Promise<void>((r) => (this.#waiter = r));
    this.#kicked = false;
  }

  async #run(): Promise<void> {
    for (;;) {
      await this.#admit();
      if (this.#closing && this.running === 0 && this.#waiting.length === 0) return;
      let worked = false;
      // Prefill within one chunk's worth of tokens per step: the oldest request's next chunk, then
      // other requests whose whole next chunk still fits (short prompts join in one turn).
      let budget = this.prefillChunk;
      const chosen: Job[] = [];
      for (const job of this.#prefilling) {
        const next = this.#nextChunk(job);
        if (chosen.length > 0 && next > budget) continue;
        chosen.push(job);
        budget -= next;
        if (budget <= 0) break;
      }
      // Prompt-token chunks of full caches run in one pass (the weights read once for all);
      // summary vectors and compressing caches, one request at a time.
      const together = this.#batchPrefill ? chosen.filter((j) => this.#canJoinPrefill(j)) : [];
      if (together.length >= 2) await this.#prefillTogether(together);
      for (const job of chosen) {
        if (together.length < 2 || !together.includes(job)) await this.#prefillChunk(job);
      }
      if (chosen.length > 0) worked = true;
      if (this.#generating.size > 0) {
        await this.#step();
        worked = true;
      }
      if (!worked) await this.#sleep();
    }
  }

  async #admit() {
    // Aborted requests that wait or prefill leave at once (no native call of theirs runs now).
    for (const list of [this.#waiting, this.#prefilling]) {
      for (const job of list.filter((j) => j.signal.aborted)) {
        list.splice(list.indexOf(job), 1);
        this.#retire(job, "aborted", abortError(job));
      }
    }
    while (this.#waiting.length > 0 && this.running < this.maxBatch) {
      const job = this.#waiting.shift()!;
      this.#prefilling.push(job);
      job.state = "prefill";
      this.#event({ type: "admit", id: job.id });
      this.metrics.running = this.running;
      try {
        const s = job.spec;
        const session = this.model.session({
          contextSize: s.contextSize,
          cache: s.cache,
          batchSize: this.prefillChunk,
        });
        job.session = session;
        await session.setAdapters(s.adapters);
      } catch (e) {
        this.#retire(job, "failed", e);
      }
    }
    this.metrics.queued = this.#waiting.length;
    this.metrics.running = this.running;
  }

  // Rows or tokens the request's next prefill chunk takes.
  #nextChunk(job: Job): number {
    const rows = job.spec.vectors?.rows ?? 0;
    const left = job.prefilled < rows
      ? rows - job.prefilled
      : rows + job.spec.promptIds.length - job.prefilled;
    return Math.min(this.prefillChunk, left);
  }

  // Whether the request's next chunk may share a batched prefill pass: prompt tokens (its summary
  // vectors, if any, are in), a full cache, still wanted.
  #canJoinPrefill(job: Job): boolean {
    const kind = job.spec.cache?.kind ?? "full";
    return kind === "full" && job.prefilled >= (job.spec.vectors?.rows ?? 0) && !job.signal.aborted;
  }

  // The next prompt chunks of several requests in one native pass. If the pass fails (it changes no
  // session), each request runs its chunk alone, so only a request at fault fails.
  async #prefillTogether(jobs: Job[]) {
    const chunks = jobs.map((job) => {
      const at = job.prefilled - (job.spec.vectors?.rows ?? 0);
      return job.spec.promptIds.slice(at, at + this.prefillChunk);
    });
    const t0 = performance.now();
    try {
      await runPrefillBatch(jobs.map((job, i) => ({ session: job.session!, ids: chunks[i] })));
    } catch {
      for (const job of jobs) await this.#prefillChunk(job);
      return;
    }
    this.metrics.prefillChunkSeconds.observe((performance.now() - t0) / 1000);
    jobs.forEach((job, i) => {
      job.prefilled += chunks[i].length;
      this.metrics.promptTokens += chunks[i].length;
      this.metrics.prefillChunks++;
      this.#event({ type: "prefill", id: job.id, tokens: chunks[i].length });
      this.#prefilled(job);
    });
  }

  // One chunk of a prefilling request: vector rows first, then prompt tokens.
  async #prefillChunk(job: Job) {
    const { vectors, promptIds } = job.spec;
    const rows = vectors?.rows ?? 0;
    const session = job.session!;
    const chunk = this.prefillChunk;
    const t0 = performance.now();
    try {
      if (job.signal.aborted) throw abortError(job);
      if (job.prefilled < rows) {
        const v = vectors!;
        const hidden = v.data.length / rows;
        const n = Math.min(chunk, rows - job.prefilled);
        const block = v.data.subarray(job.prefilled * hidden, (job.prefilled + n) * hidden);
        if (v.dtype === "bf16") {
          await session.prefillEmbeddings(block as Uint16Array, { dtype: "bf16", signal: job.signal });
        } else {
          await session.prefillEmbeddings(block as Float32Array, { signal: job.signal });
        }
        job.prefilled += n;
        this.metrics.vectorRows += n;
        this.#event({ type: "prefill", id: job.id, tokens: n });
      } else {
        const at = job.prefilled - rows;
        const ids = promptIds.slice(at, at + chunk);
        await session.prefill(ids, { signal: job.signal });
        job.prefilled += ids.length;
        this.metrics.promptTokens += ids.length;
        this.#event({ type: "prefill", id: job.id, tokens: ids.length });
      }
      this.metrics.prefillChunks++;
      this.metrics.prefillChunkSeconds.observe((performance.now() - t0) / 1000);
    } catch (e) {
      this.#retire(job, job.signal.aborted ? "aborted" : "failed", job.signal.aborted ? abortError(job) : e);
      return;
    }
    this.#prefilled(job);
  }

  // After a chunk: a request whose prompt is all in starts generating.
  #prefilled(job: Job) {
    if (job.prefilled < (job.spec.vectors?.rows ?? 0) + job.spec.promptIds.length) return;
    this.#prefilling.splice(this.#prefilling.indexOf(job), 1);
    try {
      this.#startGenerating(job);
    } catch (e) {
      this.#retire(job, "failed", e);
    }
  }

  // As Session.generate starts: a sampler of the request's settings that has seen the prompt.
  #startGenerating(job: Job) {
    const s = job.spec;
    const sampler = createSampler({
      temperature: s.temperature,
      topP: s.topP,
      topK: 0, // OpenAI's sampling has no top-k
      seed: s.seed ?? randomSeed(),
    }).ptr;
    const tok = this.model.tokenizer;
    job._gen = {
      sampler,
      decoder: new IncrementalDecoder((ids) => tok.decode(ids)),
      stops: new StopStringFilter(s.stop),
      eos: new Set(s.ignoreEos ? [] : this.model.eosTokenIds),
    };
    if (s.promptIds.length > 0) {
      const ids = tokenIdsArg("generate", s.promptIds, this.model.info.vocabSize);
      check(sym().kf_sampler_accept(sampler, ids, s.promptIds.length));
    }
    this.#generating.add(job);
    job.state = "generating";
    if (s.maxTokens === 0) this.#finish(job, "max-tokens");
  }

  // One step: sample every generating row in one call, take each row's token (text, stops,
  // limits), then decode the rows that go on in one batched native call.
  async #step() {
    for (const job of this.#generating) {
      if (job.signal.aborted) this.#retire(job, "aborted", abortError(job));
    }
    const rows = [...this.#generating];
    if (rows.length === 0) return;
    const t0 = performance.now();
    const ids = this.#sample(rows);
    const entries: BatchEntry[] = [];
    const stepping: Job[] = [];
    rows.forEach((job, i) => {
      if (ids[i] < 0 || !this.#take(job, ids[i])) return;
      entries.push({ session: job.session!, token: ids[i] });
      stepping.push(job);
    });
    if (entries.length === 0) return;
    this.#event({ type: "step", ids: stepping.map((j) => j.id) });
    this.metrics.batchRows.observe(entries.length);
    const t1 = performance.now();
    this.metrics.stepHostSeconds.observe((t1 - t0) / 1000);
    try {
      await runBatch(entries);
      this.metrics.decodeStepSeconds.observe((performance.now() - t1) / 1000);
    } catch (e) {
      for (const job of stepping) this.#retire(job, job.signal.aborted ? "aborted" : "failed", e);
    }
  }

  // Every row's next token; a row whose sampling fails (non-finite logits) is retired and gets -1.
  #sample(rows: Job[]): Int32Array {
    try {
      return sampleRows(rows.map((j) => j._gen!.sampler), rows.map((j) => j.session!._handle.ptr));
    } catch {
      // The batch call changed no sampler: find the row at fault one by one.
      const out = alloc(4);
      return Int32Array.from(rows, (job) => {
        try {
          check(sym().kf_sampler_sample(job._gen!.sampler, job.session!._handle.ptr, out));
          return new Int32Array(out.buffer)[0];
        } catch (e) {
          this.#retire(job, "failed", e);
          return -1;
        }
      });
    }
  }

  // Session.generate's checks after a sample, in its order. True when the row decodes `id` next.
  #take(job: Job, id: number): boolean {
    const g = job._gen!;
    this.#tokenSampled(job);
    if (g.eos.has(id)) return this.#finish(job, "eos");
    const text = g.stops.push(g.decoder.push(id));
    if (text) job._push(text);
    if (g.stops.stopped) return this.#finish(job, "stop-string");
    if (job.sampled >= job.spec.maxTokens) return this.#finish(job, "max-tokens");
    const session = job.session!;
    if (session.position >= session.contextSize) return this.#finish(job, "context-full");
    return true;
  }

  #finish(job: Job, reason: StopReason): false {
    const g = job._gen!;
    if (reason !== "stop-string") {
      const tail = g.stops.push(g.decoder.flush()) + g.stops.flush();
      if (tail) job._push(tail);
    }
    const s = job.spec;
    this.#retire(job, reason, undefined, {
      stopReason: reason,
      promptTokens: s.promptIds.length,
      vectorRows: s.vectors?.rows ?? 0,
      generatedTokens: job.sampled,
    });
    return false;
  }

  #retire(job: Job, reason: StopReason | "aborted" | "failed", error?: unknown, result?: JobResult) {
    if (job.state === "done") return;
    job.state = "done";
    const p = this.#prefilling.indexOf(job);
    if (p >= 0) this.#prefilling.splice(p, 1);
    this.#generating.delete(job);
    if (job._gen) check(sym().kf_sampler_free(job._gen.sampler));
    job._gen = undefined;
    job.session?.dispose();
    this.#event({ type: "retire", id: job.id, reason });
    if (reason === "aborted") this.metrics.aborted++;
    this.metrics.generatedTokens += result?.generatedTokens ?? job.sampled;
    this.metrics.running = this.running;
    this.metrics.queued = this.#waiting.length;
    if (result) job._finish(result);
    else job._fail(error);
    this.#wake();
  }
}

function abortError(job: Job): KvfoldError {
  return new KvfoldError("ABORTED", "Cannot generate: the client went away", { cause: job.signal.reason });
}

function randomSeed(): number {
  const [a, b] = crypto.getRandomValues(new Uint32Array(2));
  return a * 2 ** 21 + (b >>> 11); // below 2**53
}

function positive(name: string, v: number, max: number, min = 1): number {
  if (!Number.isSafeInteger(v) || v < min || v > max) {
    throw new RangeError(`Cannot start the scheduler: ${name} ${v} is not an integer in [${min}, ${max}]`);
  }
  return v;
}

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
 * A request that generates alone (none waits or prefills) is run natively for `soloIntervalMs` per
 * turn (`kf_session_generate`), its tokens then taken one by one as a step takes them: one FFI
 * crossing per turn instead of per token. A request arriving meanwhile waits at most that long.
 *
 * @module
 */

import { alloc, check, sym } from "../_binding.ts";
import { tokenIdsArg } from "../_int_args.ts";
import { type BatchEntry, runBatch, runPrefillBatch } from "../batch.ts";
import { KvfoldError } from "../errors.ts";
import type { Model } from "../model.ts";
import { createSampler, sampleRows } from "../sampler.ts";
import type { StopReason } from "../session.ts";
import { IncrementalDecoder, StopStringFilter } from "../text_stream.ts";
import { nativeStep } from "../generate_steps.ts";
import { Job, type JobResult, type JobSpec } from "./job.ts";
import { HttpError } from "./http_error.ts";
import type { ServerMetrics } from "./metrics.ts";

export { Job } from "./job.ts";
export type { JobResult, JobSpec, PrefixVectors } from "./job.ts";

/** One entry of the scheduler's trace (tests read it to check the interleaving). */
export type SchedulerEvent =
  | { type: "admit"; id: number }
  | { type: "prefill"; id: number; tokens: number }
  | { type: "step"; ids: number[] }
  /** One native hand-over of a request generating alone (`soloIntervalMs`): the tokens it sampled. */
  | { type: "solo"; id: number; tokens: number }
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
  /**
   * While one request generates alone (none waits or prefills), each turn samples and decodes it in
   * one native call for up to this many milliseconds (`kf_session_generate`) instead of one token:
   * a turn costs a few hundred microseconds of FFI wake-ups, a fifth of a small model's step. A
   * request that arrives meanwhile waits at most this long. 0: one token a turn. Default 20.
   */
  soloIntervalMs?: number;
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
  readonly soloIntervalMs: number;
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
    this.soloIntervalMs = options.soloIntervalMs ?? 20;
    if (!Number.isFinite(this.soloIntervalMs) || this.soloIntervalMs < 0) {
      throw new RangeError(
        `Cannot start the scheduler: soloIntervalMs ${options.soloIntervalMs} is not a number >= 0`,
      );
    }
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
        const alone = this.#generating.size === 1 && this.#prefilling.length === 0 &&
          this.#waiting.length === 0;
        if (alone && this.soloIntervalMs > 0) await this.#soloStep([...this.#generating][0]);
        else await this.#step();
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
      return this.#failed(job, e);
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
      for (const job of stepping) this.#failed(job, e);
    }
  }

  // The only generating request, for up to soloIntervalMs in one native call. Its tokens then go
  // through #take one by one, each at the position a step would have seen; one that ends the
  // request inside the hand-over leaves decoded tokens behind in a session that is retired anyway.
  // The last token, when the request goes on, is decoded here as a step would.
  async #soloStep(job: Job) {
    if (job.signal.aborted) return this.#retire(job, "aborted", abortError(job));
    const g = job._gen!;
    const session = job.session!;
    g.solo ??= nativeStep(session._handle, { ptr: g.sampler }, g.eos, job.signal);
    const at = session.position;
    const t0 = performance.now();
    let got: Int32Array;
    try {
      // The first token comes alone: the time to it is the prefill's.
      const budget = job.sampled === 0 ? 0 : this.soloIntervalMs;
      got = await g.solo(-1, job.spec.maxTokens - job.sampled, budget);
    } catch (e) {
      return this.#failed(job, e);
    }
    const t1 = performance.now();
    this.#event({ type: "solo", id: job.id, tokens: got.length });
    let went = 0; // tokens after which the request goes on: each was (or is now) decoded
    for (const [j, id] of got.entries()) {
      if (!this.#take(job, id, at + j)) break;
      went++;
    }
    // Each token that went on counts as a decode step of one row, the hand-over's time split over them.
    const t2 = performance.now();
    for (let i = 0; i < went; i++) {
      this.#event({ type: "step", ids: [job.id] });
      this.metrics.batchRows.observe(1);
      this.metrics.stepHostSeconds.observe((t2 - t1) / 1000 / went);
    }
    let decodeMs = t1 - t0;
    if (went === got.length) { // it goes on: its last token still needs decoding
      try {
        await session.decode(got[got.length - 1], { signal: job.signal });
      } catch (e) {
        return this.#failed(job, e);
      }
      decodeMs += performance.now() - t2;
    } // else it ended inside the hand-over, and #take retired it
    for (let i = 0; i < went; i++) this.metrics.decodeStepSeconds.observe(decodeMs / 1000 / went);
  }

  // A native call of the request failed: "the client went away" when its signal stopped it.
  #failed(job: Job, e: unknown) {
    if (job.signal.aborted) this.#retire(job, "aborted", abortError(job));
    else this.#retire(job, "failed", e);
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
  #take(job: Job, id: number, position = job.session!.position): boolean {
    const g = job._gen!;
    this.#tokenSampled(job);
    if (g.eos.has(id)) return this.#finish(job, "eos");
    const text = g.stops.push(g.decoder.push(id));
    if (text) job._push(text);
    if (g.stops.stopped) return this.#finish(job, "stop-string");
    if (job.sampled >= job.spec.maxTokens) return this.#finish(job, "max-tokens");
    if (position >= job.session!.contextSize) return this.#finish(job, "context-full");
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

/**
 * A session: one sequence's KV cache and buffers, prefill, single-token decode, and streaming
 * generation with sampling, stop strings and abort.
 *
 * @module
 */

import { alloc, check, outPointer, sym } from "./_binding.ts";
import { HandleOwner, NativeHandle } from "./_handle.ts";
import { int32Arg, tokenIdArg, tokenIdsArg } from "./_int_args.ts";
import { type Adapter, type AdapterTerm, type AppliedAdapterTerm, MAX_COMPOSED_ADAPTERS } from "./adapter.ts";
import { CACHE_KINDS, type CacheKind } from "./lococo.ts";
import { sessionParams } from "./_session_params.ts";
import { NativeStruct } from "./_abi.ts";
import { KvfoldError } from "./errors.ts";
import type { Model } from "./model.ts";
import { IncrementalDecoder, StopStringFilter } from "./text_stream.ts";
import { createSampler } from "./sampler.ts";
import { constrain, grammarOf } from "./grammar/json_grammar.ts";
import { nativeStep, streamIntervalArg, tokenStep } from "./generate_steps.ts";

export { sampleFromLogits, type SamplingOptions } from "./sampler.ts";

export type * from "./session_options.ts";
import type {
  GenerateOptions,
  GenerationStats,
  PrefillOptions,
  SessionMemory,
  SessionOptions,
  StopReason,
} from "./session_options.ts";

/**
 * One sequence's state. Prefill tokens, decode one at a time, or stream a generation.
 *
 * @example
 * ```ts ignore
 * using session = model.session({ contextSize: 1024 });
 * let text = "";
 * for await (const piece of session.generate({ prompt: "The sky is", maxTokens: 20, temperature: 0 })) text += piece;
 * console.log(text, session.lastStats?.generatedTokens);
 * ```
 */
export class Session extends HandleOwner {
  /** The model this session runs. */
  readonly model: Model;
  /** Most positions the session may see (full cache: positions reserved). */
  contextSize: number;
  /** Counters of the last finished generate(). */
  lastStats?: GenerationStats;
  #busy = false;
  #adapters: AppliedAdapterTerm[] = [];

  private constructor(handle: NativeHandle, model: Model, contextSize: number) {
    super(handle);
    this.model = model;
    this.contextSize = contextSize;
  }

  /** @internal use {@link Model.session}. */
  static _create(model: Model, options: SessionOptions): Session {
    const s = sym();
    const { params, heads } = sessionParams(model, options);
    const out = outPointer();
    const modelHandle = model._handle;
    check(s.kf_session_create(modelHandle.ptr, params.buf, out.buf));
    const ptr = out.get();
    const handle = new NativeHandle(ptr, "the session", (p) => check(sym().kf_session_free(p)), modelHandle);
    if (heads) handle.use(heads._handle); // the heads are freed only after this session
    const session = new Session(handle, model, 0);
    session.contextSize = session.memory().contextSize;
    return session;
  }

  /** Positions seen: the absolute position of the next token (full cache: positions in the cache). */
  get position(): number {
    return sym().kf_session_n_past(this._handle.ptr);
  }

  /** KV cache and scratch memory of this session, and what its cache policy did. */
  memory(): SessionMemory {
    const info = new NativeStruct("kf_session_info");
    check(sym().kf_session_get_info(this._handle.ptr, info.buf));
    const kind = info.get("cache_kind");
    return {
      cacheKind: (Object.keys(CACHE_KINDS) as CacheKind[]).find((k) => CACHE_KINDS[k] === kind) ?? "full",
      position: info.get("n_past"),
      contextSize: info.get("n_ctx"),
      kvBytes: info.get("kv_bytes"),
      kvSlots: info.get("kv_slots"),
      scratchBytes: info.get("scratch_bytes"),
      kvSlotsUsed: info.get("kv_slots_used"),
      kvSlotsPeak: info.get("kv_slots_peak"),
      compressions: info.get("compressions"),
      compressMs: info.get("compress_ns") / 1e6,
      slots: info.get("slots"),
      segment: info.get("segment"),
    };
  }

  /**
   * One layer's cache slots in use, copied out: keys (post-RoPE) and values [slots, n_kv, head_dim],
   * and for lococo and h2o caches the slot scores of the last forward [slots, n_kv] (column sums of
   * the attention probabilities, summed over each KV group's query heads).
   */
  readCache(
    layer: number,
  ): { slots: number; keys: Float32Array; values: Float32Array; scores: Float32Array | null } {
    this.#assertIdle("read the cache");
    const m = this.memory();
    const { kvHeads: nkv, headDim: hd } = this.model.info;
    const n = m.kvSlotsUsed;
    const keys = new Float32Array(n * nkv * hd), values = new Float32Array(n * nkv * hd);
    const scores = m.cacheKind === "lococo" || m.cacheKind === "h2o" ? new Float32Array(n * nkv) : null;
    const bytes = (a: Float32Array | null) => (a ? new Uint8Array(a.buffer) : null);
    check(
      sym().kf_session_read_cache(
        this._handle.ptr,
        int32Arg("read cache", "layer", layer),
        bytes(keys),
        bytes(values),
        bytes(scores),
        n,
      ),
    );
    return { slots: n, keys, values, scores };
  }

  /**
   * The LoRA adapter applied now when it is one adapter at weight 1 (as {@link Session.setAdapter}
   * selects), else null: the base model, or a composition ({@link Session.adapters} lists it).
   */
  get adapter(): Adapter | null {
    const [only, ...rest] = this.#adapters;
    return only && rest.length === 0 && only.weight === 1 ? only.adapter : null;
  }

  /** The adapters applied now with their weights (empty: the base model). */
  get adapters(): AppliedAdapterTerm[] {
    return this.#adapters.map((t) => ({ ...t }));
  }

  /**
   * Applies a LoRA adapter (or a name registered in `model.adapters`, loaded if it was evicted)
   * to every later call; `null` returns to the base model. A pointer change: nothing is copied,
   * and positions already in the cache keep what they were computed with.
   */
  setAdapter(adapter: Adapter | string | null): Promise<Adapter | null> {
    return this.#exclusive("set adapter", () => this.#setAdapter(adapter));
  }

  async #setAdapter(adapter: Adapter | string | null): Promise<Adapter | null> {
    await this.#setAdapters(adapter === null ? [] : [{ adapter, weight: 1 }], "set adapter");
    return this.adapter;
  }

  /**
   * Composes several adapters, each with a weight, for every later call:
   * `y = W x + Σ weight_i · s_i · B_i (A_i x)` on every projection they adapt (`s_i` each adapter's
   * own scale). One adapter at weight 1 is {@link Session.setAdapter}, bit for bit; `[]` is the base
   * model. At most {@link MAX_COMPOSED_ADAPTERS} terms; weights are finite numbers (0 and negative
   * allowed; an adapter listed twice adds both terms). Names are acquired from `model.adapters`
   * (loaded if evicted), and every adapter listed stays resident (never evicted, `dispose` refused)
   * while the session uses it. Nothing is copied; positions already in the cache keep what they were
   * computed with. A refused call (a bad term, an adapter of another model) changes nothing.
   * Resolves to the composition now applied.
   *
   * @example
   * ```ts ignore
   * await model.adapters.load("./loras/finance", { name: "finance" });
   * await model.adapters.load("./loras/legal", { name: "legal" });
   * using session = model.session();
   * await session.setAdapters([{ adapter: "finance", weight: 0.6 }, { adapter: "legal", weight: 0.4 }]);
   * for await (const piece of session.generate({ prompt: "Q: ...", maxTokens: 32 })) console.log(piece);
   * ```
   */
  setAdapters(terms: readonly AdapterTerm[]): Promise<AppliedAdapterTerm[]> {
    return this.#exclusive("set adapters", async () => {
      await this.#setAdapters(terms, "set adapters");
      return this.adapters;
    });
  }

  async #setAdapters(terms: readonly AdapterTerm[], what: string): Promise<void> {
    checkAdapterTerms(terms, what);
    const next: AppliedAdapterTerm[] = [];
    for (const t of terms) {
      next.push({ adapter: await this.model.adapters.acquire(t.adapter), weight: t.weight });
    }
    // Acquiring a later term may have evicted an earlier one (no session used it yet).
    const evicted = next.find((t) => t.adapter.disposed);
    if (evicted) {
      throw new KvfoldError(
        "OUT_OF_MEMORY",
        `Cannot ${what}: the adapter budget cannot hold ${
          next.map((t) => t.adapter.name).join(", ")
        } at once ` +
          `(${evicted.adapter.name} was evicted to load another); raise model.adapters.budgetBytes`,
      );
    }
    const cur = this.#adapters;
    if (
      next.length === cur.length &&
      next.every((t, i) => t.adapter === cur[i].adapter && t.weight === cur[i].weight)
    ) {
      return;
    }
    const handle = this._handle;
    const ptrs = alloc(Math.max(next.length, 1) * 8), weights = alloc(Math.max(next.length, 1) * 4);
    const pv = new DataView(ptrs.buffer), wv = new DataView(weights.buffer);
    next.forEach((t, i) => {
      pv.setBigUint64(i * 8, BigInt(Deno.UnsafePointer.value(t.adapter._handle.ptr)), true);
      wv.setFloat32(i * 4, t.weight, true);
    });
    check(sym().kf_session_set_adapters(handle.ptr, ptrs, weights, next.length));
    const before = new Set(cur.map((t) => t.adapter)), after = new Set(next.map((t) => t.adapter));
    for (const a of after) if (!before.has(a)) handle.use(a._handle);
    for (const a of before) if (!after.has(a)) handle.unuse(a._handle);
    this.#adapters = next;
  }

  // The adapter or adapters a call's options select, if any.
  async #applyAdapterOptions(
    options: { adapter?: Adapter | string | null; adapters?: readonly AdapterTerm[] },
  ) {
    if (options.adapter !== undefined && options.adapters !== undefined) {
      throw new TypeError("Cannot select adapters: pass either adapter or adapters, not both");
    }
    if (options.adapter !== undefined) await this.#setAdapter(options.adapter);
    else if (options.adapters !== undefined) await this.#setAdapters(options.adapters, "set adapters");
  }

  /** @internal marks the session busy for a call made from outside (a batched decode). */
  _claim(what: string): () => void {
    this._handle.ptr; // throws DISPOSED
    this.#assertIdle(what);
    this.#busy = true;
    return () => (this.#busy = false);
  }

  /** Forgets everything (empties the KV cache). */
  reset(): void {
    this.#assertIdle("reset");
    check(sym().kf_session_reset(this._handle.ptr));
  }

  /** Drops positions past `n`. */
  truncate(n: number): void {
    this.#assertIdle("truncate");
    check(sym().kf_session_truncate(this._handle.ptr, int32Arg("truncate", "n", n)));
  }

  #assertIdle(what: string) {
    if (this.#busy) {
      throw new KvfoldError("INVALID_STATE", `Cannot ${what}: the session is busy with another call`);
    }
  }

  async #exclusive<T>(what: string, fn: () => Promise<T>): Promise<T> {
    this._handle.ptr; // throws DISPOSED
    this.#assertIdle(what);
    this.#busy = true;
    try {
      return await fn();
    } finally {
      this.#busy = false;
    }
  }

  /**
   * Runs token ids at the next positions. Returns the logits of every position ([n, vocab] row
   * major) with `logits: "all"`, else null. Cancelled or failed calls leave the session as before.
   */
  prefill(ids: readonly number[] | Int32Array, options: PrefillOptions = {}): Promise<Float32Array | null> {
    return this.#exclusive("prefill", () => this.#prefill(ids, options));
  }

  async #prefill(ids: readonly number[] | Int32Array, options: PrefillOptions): Promise<Float32Array | null> {
    if (ids.length === 0) throw new KvfoldError("INVALID_ARGUMENT", "Cannot prefill: no token ids given");
    await this.#applyAdapterOptions(options);
    const vocab = this.model.info.vocabSize;
    const idBuf = tokenIdsArg("prefill", ids, vocab);
    const logits = options.logits === "all"
      ? new Float32Array(new ArrayBuffer(ids.length * vocab * 4))
      : null;
    const { hiddenOut } = options;
    const hidden = this.model.info.hiddenSize;
    if (hiddenOut && hiddenOut.length !== ids.length * hidden) {
      throw new RangeError(
        `Cannot prefill: hiddenOut holds ${hiddenOut.length} floats, ${ids.length * hidden} needed`,
      );
    }
    // The native side writes into memory of its own (not a caller's view of a shared buffer).
    const hiddenBuf = hiddenOut ? new Float32Array(new ArrayBuffer(hiddenOut.byteLength)) : null;
    await this._handle.runControlled(
      (ptr, ctl) =>
        hiddenBuf
          ? sym().kf_session_prefill_hidden(ptr, idBuf, ids.length, logits, hiddenBuf, ctl.buf)
          : sym().kf_session_prefill(ptr, idBuf, ids.length, logits, ctl.buf),
      { signal: options.signal, onProgress: options.onProgress },
    );
    if (hiddenOut && hiddenBuf) hiddenOut.set(hiddenBuf);
    return logits;
  }

  /**
   * Runs a block of input embeddings ([rows, hidden], row major) at the next positions, as if they
   * were token embeddings: the LLoCO path, where compressed summary vectors precede the prompt.
   * A `Float32Array` is f32; a `Uint16Array` holds raw f16 or bf16 bits (say which in `dtype`).
   * Returns every row's logits with `logits: "all"`, else null.
   *
   * @example
   * ```ts ignore
   * const hidden = model.info.hiddenSize;
   * await session.prefillEmbeddings(summaryVectors); // Float32Array of K * hidden values
   * for await (const piece of session.generate({ prompt: model.tokenizer.encode("Question: ..."), maxTokens: 64 })) {}
   * ```
   */
  prefillEmbeddings(
    embeddings: Float32Array | Uint16Array,
    options: PrefillOptions & {
      dtype?: "f32" | "f16" | "bf16";
      /** Receives each row's final-normed hidden state ([rows, hidden]): AutoCompressor summary vectors. */
      hiddenOut?: Float32Array;
      /**
       * The block's shape as its source records it (a file's tensor shape), checked against the
       * model's hidden size: without it a [4, 32] block on a hidden-64 model would run as [2, 64].
       */
      shape?: readonly number[];
    } = {},
  ): Promise<Float32Array | null> {
    return this.#exclusive("prefill embeddings", async () => {
      const hidden = this.model.info.hiddenSize;
      const { shape } = options;
      if (shape !== undefined) {
        const [rows, cols] = shape;
        if (shape.length !== 2 || cols !== hidden || rows * cols !== embeddings.length) {
          throw new KvfoldError(
            "INVALID_ARGUMENT",
            `Cannot prefill embeddings: a block of shape [${
              shape.join(", ")
            }] (${embeddings.length} values) ` +
              `is not [rows, ${hidden}] for this model's hidden size ${hidden}`,
          );
        }
      }
      const dtype = options.dtype ?? (embeddings instanceof Float32Array ? "f32" : undefined);
      if (dtype === undefined || (dtype === "f32") !== (embeddings instanceof Float32Array)) {
        throw new TypeError(
          'Cannot prefill embeddings: pass a Float32Array (f32) or a Uint16Array with dtype "f16" or "bf16"',
        );
      }
      if (embeddings.length === 0 || embeddings.length % hidden !== 0) {
        throw new KvfoldError(
          "INVALID_ARGUMENT",
          `Cannot prefill embeddings: ${embeddings.length} values are not a whole number of rows of the hidden size ${hidden}` +
            (embeddings.length === 0 ? " (the block is empty)" : ""),
        );
      }
      const rows = int32Arg("prefill embeddings", "rows", embeddings.length / hidden);
      const buf = alloc(embeddings.byteLength);
      buf.set(new Uint8Array(embeddings.buffer, embeddings.byteOffset, embeddings.byteLength));
      const logits = options.logits === "all"
        ? new Float32Array(new ArrayBuffer(rows * this.model.info.vocabSize * 4))
        : null;
      const dtypeId = { f32: 0, f16: 1, bf16: 2 }[dtype];
      const { hiddenOut } = options;
      if (hiddenOut && hiddenOut.length !== rows * hidden) {
        throw new RangeError(
          `Cannot prefill embeddings: hiddenOut holds ${hiddenOut.length} floats, ${rows * hidden} needed`,
        );
      }
      const hiddenBuf = hiddenOut ? new Float32Array(new ArrayBuffer(hiddenOut.byteLength)) : null;
      await this.#applyAdapterOptions(options);
      await this._handle.runControlled(
        (ptr, ctl) =>
          sym().kf_session_prefill_embeddings(ptr, buf, dtypeId, rows, hidden, logits, hiddenBuf, ctl.buf),
        { signal: options.signal, onProgress: options.onProgress },
      );
      if (hiddenOut && hiddenBuf) hiddenOut.set(hiddenBuf);
      return logits;
    });
  }

  /** Runs one token at the next position (the decode path). */
  decode(id: number, options: { signal?: AbortSignal } = {}): Promise<void> {
    return this.#exclusive("decode", () => this.#decode(id, options.signal));
  }

  async #decode(id: number, signal?: AbortSignal): Promise<void> {
    tokenIdArg("decode", id, this.model.info.vocabSize);
    await this._handle.runControlled((ptr, ctl) => sym().kf_session_decode(ptr, id, ctl.buf), { signal });
  }

  // Truncates to `position` and decodes `id` there again: the cache and the logits become what they
  // were right after `id` first ran (decoding is deterministic).
  async #rewind(position: number, id: number, signal?: AbortSignal): Promise<void> {
    check(sym().kf_session_truncate(this._handle.ptr, position));
    await this.#decode(id, signal);
  }

  /** The last position's logits ([vocab] f32). */
  logits(): Float32Array {
    const out = new Float32Array(new ArrayBuffer(this.model.info.vocabSize * 4));
    check(sym().kf_session_get_logits(this._handle.ptr, out, out.length));
    return out;
  }

  // "Cannot sample: logit 0 is NaN" says nothing of where the NaN came from: name the model and
  // the adapter, the two things a user can swap.
  #nameNonFinite(e: unknown): unknown {
    if (!(e instanceof KvfoldError) || !/is (NaN|infinite)/.test(e.message)) return e;
    const names = this.#adapters.map((t) =>
      t.weight === 1 ? t.adapter.name : `${t.adapter.name}×${t.weight}`
    );
    const adapter = names.length === 0 ? "no adapter" : `adapter ${names.join(" + ")}`;
    return new KvfoldError(
      "INVALID_STATE",
      `${
        e.message.replace(/^Cannot sample/, "Cannot generate")
      }: the forward pass of model ${this.model.dir} ` +
        `(${adapter}) produced non-finite logits; its weights or the adapter's overflow`,
      { cause: e },
    );
  }

  /**
   * Streams generated text. Prefills `prompt` (if given), then samples and decodes until EOS, a
   * stop token or string, `maxTokens`, or the context is full. Counters land in `lastStats`.
   */
  generate(options: GenerateOptions = {}): AsyncGenerator<string, void, undefined> {
    this._handle.ptr; // fail fast when disposed
    return this.#generate(options);
  }

  async *#generate(options: GenerateOptions): AsyncGenerator<string, void, undefined> {
    this.#assertIdle("generate");
    const grammar = grammarOf(options); // first: a bad option must not leave the session busy
    const maxTokens = int32Arg("generate", "maxTokens", options.maxTokens ?? 256, { min: 0 });
    const intervalMs = streamIntervalArg(options.streamIntervalMs);
    const sampler = createSampler(options);
    this.#busy = true;
    try {
      const { signal } = options;
      const abortError = () =>
        new KvfoldError("ABORTED", "Cannot generate: aborted", { cause: signal?.reason });
      if (signal?.aborted) throw abortError();
      const tok = this.model.tokenizer;
      const promptIds = typeof options.prompt === "string"
        ? tok.encode(options.prompt)
        : options.prompt
        ? [...options.prompt]
        : [];
      const stopIds = new Set<number>(options.stopTokens ?? []);
      const eosIds = new Set<number>(options.ignoreEos ? [] : this.model.eosTokenIds);
      const s = sym();
      await this.#applyAdapterOptions(options);
      const { batcher } = options;
      if (batcher && batcher.model !== this.model) {
        throw new KvfoldError("INVALID_ARGUMENT", "Cannot generate: the batcher serves another model");
      }
      const vocab = this.model.info.vocabSize;
      const constraint = grammar && constrain(grammar, tok, vocab, [...eosIds, ...stopIds], maxTokens);
      const t0 = performance.now();
      if (options.history?.length) {
        const vocab = this.model.info.vocabSize;
        const history = tokenIdsArg("generate", options.history, vocab);
        check(s.kf_sampler_accept(sampler.ptr, history, options.history.length));
      }
      if (promptIds.length > 0) {
        await this.#prefill(promptIds, { signal, onProgress: options.onPrefillProgress });
        const vocab = this.model.info.vocabSize;
        check(s.kf_sampler_accept(sampler.ptr, tokenIdsArg("generate", promptIds, vocab), promptIds.length));
      }
      const t1 = performance.now();
      const decoder = new IncrementalDecoder((ids) => tok.decode(ids));
      const stops = new StopStringFilter(options.stop ?? []);
      // A stop string found inside a hand-over rewinds the cache (truncate), which a compressing
      // cache refuses once it compressed: there, and with a grammar's per-token mask, one token a step.
      const handOverMany = !constraint &&
        (stops.empty || this.memory().cacheKind === "full");
      const step = batcher
        ? tokenStep(this._handle, sampler, (id) => batcher._decode(this, id, signal))
        : nativeStep(this._handle, sampler, [...eosIds, ...stopIds], signal);
      const tokens: number[] = [];
      let reason: StopReason | undefined;
      let pending = -1; // sampled by the last step, not decoded yet
      while (tokens.length < maxTokens) {
        if (signal?.aborted) throw abortError();
        if (constraint) {
          // The tokens that may follow this one must still close the value (one byte per token).
          const mask = constraint.mask(
            Math.min(
              maxTokens - tokens.length - 1,
              this.contextSize - (this.position + (pending >= 0 ? 1 : 0)),
            ),
          );
          if (mask === null) {
            reason = "eos"; // the value is closed and there is no end token to sample
            break;
          }
          check(s.kf_sampler_set_allowed(sampler.ptr, mask, vocab));
        }
        // The first token comes alone: the time to it is the prefill's.
        const many = handOverMany && pending >= 0;
        const before = this.position;
        let got: Int32Array;
        try {
          got = await step(pending, many ? maxTokens - tokens.length : 1, many ? intervalMs : 0);
        } catch (e) {
          throw this.#nameNonFinite(e);
        }
        let text = "", end = got.length;
        for (let j = 0; j < got.length && reason === undefined; j++) {
          const id = got[j];
          tokens.push(id);
          end = j + 1;
          if (constraint && !eosIds.has(id) && !stopIds.has(id)) constraint.accept(id);
          if (eosIds.has(id)) reason = "eos";
          else if (stopIds.has(id)) reason = "stop-token";
          else {
            text += stops.push(decoder.push(id));
            if (stops.stopped) reason = "stop-string";
          }
        }
        // Tokens past the stop were decoded: back to where sampling got[end - 1] left the cache.
        if (end < got.length) {
          await this.#rewind(before + end - 1, end === 1 ? pending : got[end - 2], signal);
        }
        if (text) yield text;
        if (reason !== undefined) break;
        pending = got[got.length - 1];
        if (tokens.length >= maxTokens) break;
        if (this.position >= this.contextSize) {
          reason = "context-full";
          break;
        }
      }
      reason ??= "max-tokens";
      if (reason !== "stop-string") {
        const tail = stops.push(decoder.flush()) + stops.flush();
        if (tail) yield tail;
      }
      this.lastStats = {
        promptTokens: promptIds.length,
        generatedTokens: tokens.length,
        prefillMs: t1 - t0,
        decodeMs: performance.now() - t1,
        stopReason: reason,
        tokens,
      };
    } finally {
      check(sym().kf_sampler_free(sampler.ptr));
      this.#busy = false;
    }
  }
}

// Misuse of a composition list is a TypeError or RangeError naming the term at fault.
function checkAdapterTerms(terms: readonly AdapterTerm[], what: string): void {
  if (!Array.isArray(terms)) {
    throw new TypeError(`Cannot ${what}: the terms are not an array of { adapter, weight }`);
  }
  if (terms.length > MAX_COMPOSED_ADAPTERS) {
    throw new RangeError(
      `Cannot ${what}: ${terms.length} adapters are more than the ${MAX_COMPOSED_ADAPTERS} one session composes`,
    );
  }
  terms.forEach((t, i) => {
    if (t === null || typeof t !== "object" || t.adapter === null || t.adapter === undefined) {
      throw new TypeError(`Cannot ${what}: term ${i} has no adapter (pass [] for the base model)`);
    }
    if (typeof t.weight !== "number" || !Number.isFinite(t.weight)) {
      throw new RangeError(`Cannot ${what}: term ${i} has weight ${t.weight}, not a finite number`);
    }
    // The native weight is an f32: a finite double past its range would become infinity there.
    if (!Number.isFinite(Math.fround(t.weight))) {
      throw new RangeError(`Cannot ${what}: term ${i} has weight ${t.weight}, past the f32 range`);
    }
  });
}

/**
 * A loaded model: immutable weights in native memory, its tokenizer and chat template, and the
 * sessions that run it.
 *
 * @module
 */

import { check, cString, outPointer, sym } from "./_binding.ts";
import { NativeStruct } from "./_abi.ts";
import { HandleOwner, NativeHandle } from "./_handle.ts";
import type { Kvfold } from "./engine.ts";
import { AdapterRegistry } from "./adapter.ts";
import { type BatchEntry, decodeBatch } from "./batch.ts";
import { KvfoldError } from "./errors.ts";
import { readBoundedJson } from "./_bounded_read.ts";
import { LococoHeads } from "./lococo.ts";
import { type GenerateOptions, Session, type SessionOptions } from "./session.ts";
import { type ChatMessage, TextTokenizer } from "./tokenizer.ts";
import { type EmbedOptions, embedTexts } from "./embeddings.ts";
import { type ChatOptions, ChatSession } from "./chat.ts";

/**
 * Weight precision in memory. `"auto"` keeps the file's dtype (memory-mapped, no copy).
 * `"q8_0"` / `"q4_0"` quantize every matrix at load to llama.cpp's blocks of 32 values with one f16
 * scale (CPU backend only; every matrix row must be a multiple of 32 values).
 */
export type WeightDType = "auto" | "f32" | "f16" | "bf16" | "q8_0" | "q4_0";
const DTYPE_IDS: Record<WeightDType, number> = { auto: -1, f32: 0, f16: 1, bf16: 2, q8_0: 3, q4_0: 4 };
const DTYPE_NAMES = ["f32", "f16", "bf16", "q8_0", "q4_0"] as const;

/** Options of {@link Kvfold.loadModel}. */
export interface LoadModelOptions {
  /** Precision to hold weights in; default `"auto"`. */
  dtype?: WeightDType;
  /**
   * Memory-map the safetensors instead of reading them into memory the model owns (default false).
   * Mapped weights are shared page cache and load without a copy, but if another process truncates
   * a mapped file while the model is loaded, the next read of a lost page stops the process
   * (SIGBUS, after a message naming the file). Read weights are not affected by later changes.
   */
  mmap?: boolean;
  /** Called with (bytesDone, bytesTotal) while weights load. A throw cancels the load. */
  onProgress?: (done: number, total: number) => void;
  /** Cancels the load. */
  signal?: AbortSignal;
  /** Most bytes of LoRA adapters kept resident (least recently used ones evicted); default Infinity. */
  adapterBudgetBytes?: number;
}

/** Shape and size of a loaded model. */
export interface ModelInfo {
  modelType: string;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  maxPositions: number;
  weightDType: "f32" | "f16" | "bf16" | "q8_0" | "q4_0";
  tiedEmbeddings: boolean;
  /** Parameters in all tensors. */
  params: number;
  /** Bytes of weights streamed per decoded token (everything but the embedding table). */
  weightBytes: number;
}

/**
 * A model loaded from a Hugging Face folder. Create sessions from it; dispose it when done (its
 * sessions are disposed with it).
 *
 * @example
 * ```ts ignore
 * import { Kvfold } from "./mod.ts";
 * using kv = await Kvfold.open();
 * using model = await kv.loadModel("./models/tiny", { onProgress: (d, t) => console.log(d, t) });
 * console.log(model.info.layers, model.tokenizer.encode("hello"));
 * ```
 */
export class Model extends HandleOwner {
  /** The engine this model was loaded on. */
  readonly engine: Kvfold;
  /** The folder (or GGUF file) it came from. */
  readonly dir: string;
  /** Architecture and size. */
  readonly info: ModelInfo;
  /** Tokenizer and chat template. */
  readonly tokenizer: TextTokenizer;
  /** Token ids that end generation by default (config / generation_config eos ids). */
  readonly eosTokenIds: readonly number[];
  /** The LoRA adapters of this model, by name, under a memory budget. */
  readonly adapters: AdapterRegistry;

  private constructor(
    handle: NativeHandle,
    engine: Kvfold,
    dir: string,
    info: ModelInfo,
    tok: TextTokenizer,
    eos: number[],
    adapterBudgetBytes: number,
  ) {
    super(handle);
    this.adapters = new AdapterRegistry(this, adapterBudgetBytes);
    this.engine = engine;
    this.dir = dir;
    this.info = info;
    this.tokenizer = tok;
    this.eosTokenIds = eos;
  }

  /** @internal use {@link Kvfold.loadModel}. */
  static async _load(engine: Kvfold, dir: string, options: LoadModelOptions): Promise<Model> {
    engine.assertOpen();
    if (typeof dir !== "string" || dir.length === 0) {
      throw new TypeError("Cannot load model: the folder path is empty");
    }
    const dtype = options.dtype ?? "auto";
    if (!Object.hasOwn(DTYPE_IDS, dtype)) {
      throw new TypeError(`Cannot load model: dtype "${dtype}" is not auto, f32, f16, bf16, q8_0 or q4_0`);
    }
    const budget = options.adapterBudgetBytes;
    if (budget !== undefined && (typeof budget !== "number" || !(budget >= 0))) {
      throw new RangeError(`Cannot load model: adapterBudgetBytes ${budget} is not a non-negative number`);
    }
    dir = dir.replace(/\/+$/, "") || "/";
    // The tokenizer first: it is cheap and a missing one should fail before gigabytes are mapped. A
    // regular file is a GGUF model (its tokenizer from beside it or from its metadata).
    const file = await Deno.stat(dir).then((s) => s.isFile, () => false);
    const { tokenizer, eosTokenIds: eos } = file
      ? await TextTokenizer.fromGgufFile(dir)
      : await TextTokenizer.fromModelDir(dir).then(async (t) => ({
        tokenizer: t,
        eosTokenIds: await readEosIds(dir, t),
      }));

    const s = sym();
    const engineHandle = engine._handle;
    const out = outPointer();
    const path = cString(dir);
    // The model's handle is made while the engine is still held: an engine disposed during the load
    // frees the new model first, then itself.
    const handle = await engineHandle.runControlled((enginePtr, ctl) => {
      const params = new NativeStruct("kf_model_params", s.kf_model_default_params())
        .set("weight_dtype", DTYPE_IDS[dtype])
        .set("use_mmap", options.mmap === true ? 1 : 0);
      return s.kf_model_load(enginePtr, path, params.buf, out.buf, ctl.buf);
    }, {
      signal: options.signal,
      onProgress: options.onProgress,
      // The load may have finished before a throwing onProgress or a dispose was seen.
      discard: () => {
        const made = out.get();
        if (made !== null) s.kf_model_free(made);
      },
      adopt: () =>
        new NativeHandle(out.get(), `model ${dir}`, (p) => check(sym().kf_model_free(p)), engineHandle),
    });
    const ptr = handle.ptr;
    const info = new NativeStruct("kf_model_info");
    check(s.kf_model_get_info(ptr, info.buf));
    const modelInfo: ModelInfo = {
      vocabSize: info.get("vocab_size"),
      hiddenSize: info.get("hidden_size"),
      intermediateSize: info.get("intermediate_size"),
      layers: info.get("n_layers"),
      heads: info.get("n_heads"),
      kvHeads: info.get("n_kv_heads"),
      headDim: info.get("head_dim"),
      maxPositions: info.get("max_position_embeddings"),
      weightDType: DTYPE_NAMES[info.get("weight_dtype")],
      tiedEmbeddings: info.get("tied_embeddings") === 1,
      params: info.get("n_params"),
      weightBytes: info.get("weight_bytes"),
      modelType: info.text("model_type"),
    };
    if (tokenizer.maxTokenId >= modelInfo.vocabSize) {
      handle.dispose();
      throw new KvfoldError(
        "FORMAT",
        `Cannot load model: ${file ? `the tokenizer of ${dir}` : `${dir}/tokenizer.json`} defines token id ` +
          `${tokenizer.maxTokenId}, past the ` +
          `model's vocabulary of ${modelInfo.vocabSize} (the tokenizer belongs to another model)`,
      );
    }
    return new Model(
      handle,
      engine,
      dir,
      modelInfo,
      tokenizer,
      eos.filter((id) => id < modelInfo.vocabSize),
      options.adapterBudgetBytes ?? Infinity,
    );
  }

  /** Opens a session (its own KV cache and buffers). */
  session(options: SessionOptions = {}): Session {
    return Session._create(this, options);
  }

  /**
   * Starts a multi-turn chat that keeps its KV cache between turns (see {@link ChatSession}).
   *
   * @example
   * ```ts ignore
   * using chat = model.chat({ system: "Be brief." });
   * for await (const piece of chat.send("Hi!")) console.log(piece);
   * ```
   */
  chat(options: ChatOptions = {}): ChatSession {
    return new ChatSession(this, options);
  }

  /**
   * Loads LoCoCo heads (a safetensors file of DESIGN.md's format) for this model, checking layer
   * count, head_dim and the file's M, r, k, B metadata. Freed with the model, after the sessions
   * using them.
   */
  loadLococoHeads(path: string): LococoHeads {
    return LococoHeads._load(this, path);
  }

  /**
   * One decode step for several sessions of this model in one native call (weights read once);
   * each session keeps its own adapter. See {@link decodeBatch}.
   */
  decodeBatch(entries: readonly BatchEntry[], options: { signal?: AbortSignal } = {}): Promise<void> {
    for (const [i, e] of entries.entries()) {
      if (e.session.model !== this) {
        throw new KvfoldError(
          "INVALID_ARGUMENT",
          `Cannot decode a batch: entry ${i} is a session of another model`,
        );
      }
    }
    return decodeBatch(entries, options);
  }

  /**
   * Generates a completion of `prompt` in a fresh session, streaming text pieces. With `chat`, the
   * prompt is wrapped as one user message through the chat template.
   */
  async *generate(
    prompt: string | readonly ChatMessage[],
    options: GenerateOptions & SessionOptions & { chat?: boolean } = {},
  ): AsyncGenerator<string, void, undefined> {
    using session = this.session(options);
    const ids = this.encodePrompt(prompt, { chat: options.chat });
    yield* session.generate({ ...options, prompt: ids });
  }

  /**
   * Embeds texts: per text, its final-normed hidden states pooled (`"mean"` by default, or `"last"`)
   * and L2-normalised to one vector of `info.hiddenSize` floats. One session serves the whole call.
   *
   * @example
   * ```ts ignore
   * const [a, b] = await model.embed(["a cat sat", "a dog ran"]);
   * const cosine = a.reduce((s, v, i) => s + v * b[i], 0); // vectors have norm 1
   * ```
   */
  embed(texts: readonly string[], options: EmbedOptions = {}): Promise<Float32Array[]> {
    return embedTexts(this, texts, options);
  }

  /** Prompt ids: chat messages through the template, or text with BOS as the tokenizer adds it. */
  encodePrompt(prompt: string | readonly ChatMessage[], options: { chat?: boolean } = {}): number[] {
    if (typeof prompt !== "string") return this.tokenizer.encodeChat(prompt);
    if (options.chat) return this.tokenizer.encodeChat([{ role: "user", content: prompt }]);
    const ids = this.tokenizer.encode(prompt, { addSpecialTokens: true });
    const bos = this.tokenizer.bosTokenId;
    if (this.tokenizer.addBosToken && bos !== undefined && ids[0] !== bos) ids.unshift(bos);
    return ids;
  }
}

// The native loader's limit for config.json, applied to both JSON side files read here.
const CONFIG_FILE_LIMIT = 16 * 1024 * 1024;

async function readEosIds(dir: string, tok: TextTokenizer): Promise<number[]> {
  const ids = new Set<number>();
  let file = "";
  // eos_token_id: an id, a list of ids, or null. Ids past the vocabulary are dropped after the load
  // (they can never be sampled); anything else is a corrupt file.
  const add = (v: unknown, top = true) => {
    if (v === null || v === undefined) return;
    if (typeof v === "number" && Number.isSafeInteger(v) && v >= 0) ids.add(v);
    else if (Array.isArray(v) && top) v.forEach((x) => add(x, false));
    else {
      throw new KvfoldError(
        "FORMAT",
        `Cannot load model: eos_token_id in ${dir}/${file} is ${
          JSON.stringify(v)
        }, not a token id or a list of them`,
      );
    }
  };
  for (const f of ["config.json", "generation_config.json"]) {
    file = f;
    let json: unknown;
    try {
      json = await readBoundedJson(`${dir}/${f}`, { action: "load model", maxBytes: CONFIG_FILE_LIMIT });
    } catch (e) {
      // generation_config.json is optional: absent is fine, anything else wrong with it is not.
      if (
        f === "generation_config.json" && e instanceof KvfoldError && e.cause instanceof Deno.errors.NotFound
      ) {
        continue;
      }
      throw e;
    }
    // A config.json that is not an object is reported by the native loader, with its other checks.
    if (typeof json === "object" && json !== null) add((json as { eos_token_id?: unknown }).eos_token_id);
  }
  if (tok.eosTokenId !== undefined) ids.add(tok.eosTokenId);
  return [...ids];
}

/**
 * AutoCompressor-style document compression: a long token sequence becomes a short block of summary
 * vectors (LLoCO's offline step). The accumulated summaries' KV is kept across segments, so the cost
 * is linear in the document length.
 *
 * @module
 */

import { configPositiveInt, int32Arg } from "./_int_args.ts";
import type { Kvfold } from "./engine.ts";
import { KvfoldError } from "./errors.ts";
import { readBoundedJson } from "./_bounded_read.ts";
import type { LoadModelOptions, Model } from "./model.ts";
import { readSafetensorsFile, toFloat32 } from "./formats/safetensors.ts";

/** Summary vectors of one document: `rows` × `hidden` f32, row major. */
export interface SummaryVectors {
  rows: number;
  hidden: number;
  data: Float32Array;
  /** Tokens that went in. */
  tokens: number;
}

/** Options of {@link Compressor.compress}. */
export interface CompressOptions {
  /**
   * Tokens per segment; default the checkpoint's own (`Compressor.segmentLength`), else LLoCO's 1536.
   */
  segmentLength?: number;
  /** Cancels between (and within) segments. */
  signal?: AbortSignal;
  /** Called with (tokensDone, tokensTotal) after each segment. */
  onProgress?: (done: number, total: number) => void;
}

async function readEmbedSummary(dir: string): Promise<{ rows: number; hidden: number; data: Float32Array }> {
  let files = ["model.safetensors"];
  let index: unknown;
  try {
    index = await readBoundedJson(`${dir}/model.safetensors.index.json`, { action: "load compressor" });
  } catch (e) {
    // No index: a single-file checkpoint. Any other problem with the index is an error.
    if (!(e instanceof KvfoldError && e.cause instanceof Deno.errors.NotFound)) throw e;
  }
  const shard = (index as { weight_map?: Record<string, unknown> } | undefined)?.weight_map
    ?.["embed_summary.weight"];
  if (typeof shard === "string") files = [shard];
  for (const f of files) {
    let t;
    try {
      t = (await readSafetensorsFile(`${dir}/${f}`)).tensors.get("embed_summary.weight");
    } catch (e) {
      if (e instanceof KvfoldError && e.code === "IO") continue;
      throw e;
    }
    if (t) {
      if (t.shape.length !== 2) {
        throw new KvfoldError(
          "FORMAT",
          `Cannot load compressor: embed_summary.weight has shape [${t.shape}], expected 2-D`,
        );
      }
      return { rows: t.shape[0], hidden: t.shape[1], data: toFloat32(t) };
    }
  }
  throw new KvfoldError(
    "FORMAT",
    `Cannot load compressor: ${dir} has no tensor embed_summary.weight (not an AutoCompressor checkpoint)`,
  );
}

/** `segment_length` of the checkpoint's config.json: a positive integer, or undefined when absent. */
async function readSegmentLength(dir: string): Promise<number | undefined> {
  let config: unknown;
  try {
    config = await readBoundedJson(`${dir}/config.json`, { action: "load compressor" });
  } catch (e) {
    // No config: loading the model names that problem.
    if (e instanceof KvfoldError && e.cause instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
  const fields = (config ?? {}) as Record<string, unknown>;
  if (fields.segment_length === undefined) return undefined;
  return configPositiveInt(fields, "segment_length", {
    code: "FORMAT",
    action: "Cannot load compressor",
    source: `${dir}/config.json`,
  });
}

/**
 * An AutoCompressor: the model plus its `embed_summary.weight` rows.
 *
 * @example
 * ```ts ignore
 * using compressor = await Compressor.load(kv, "./models/compressor");
 * const summary = await compressor.compress(longText, { onProgress: (d, t) => console.log(d, t) });
 * console.log(summary.rows, "vectors for", summary.tokens, "tokens");
 * ```
 */
export class Compressor {
  /** The checkpoint, usable as a decoder too. */
  readonly model: Model;
  /** Summary rows appended to every segment (summary_length). */
  readonly summaryLength: number;
  /**
   * Tokens per segment the checkpoint was trained with (`segment_length` in its config.json, which
   * kvfold's trainer writes), or undefined when the config does not say; `compress` defaults to it.
   */
  readonly segmentLength: number | undefined;
  #summaryRows: Float32Array;

  private constructor(model: Model, rows: Float32Array, summaryLength: number, segmentLength?: number) {
    this.model = model;
    this.#summaryRows = rows;
    this.summaryLength = summaryLength;
    this.segmentLength = segmentLength;
  }

  /** Loads an AutoCompressor checkpoint folder. */
  static async load(engine: Kvfold, dir: string, options: LoadModelOptions = {}): Promise<Compressor> {
    const summary = await readEmbedSummary(dir);
    const segmentLength = await readSegmentLength(dir);
    const model = await engine.loadModel(dir, options);
    if (summary.hidden !== model.info.hiddenSize) {
      model.dispose();
      throw new KvfoldError(
        "FORMAT",
        `Cannot load compressor: embed_summary.weight has ${summary.hidden} columns, hidden_size is ${model.info.hiddenSize}`,
      );
    }
    return new Compressor(model, summary.data, summary.rows, segmentLength);
  }

  /**
   * Compresses a document (text is tokenized without BOS) into 50 × ceil(L / 1536) vectors for
   * the defaults: per segment, [summaries so far | segment | embed_summary rows] runs causally at
   * positions 0..N-1 and the final-normed states of the last rows become the new summaries.
   */
  async compress(
    document: string | readonly number[],
    options: CompressOptions = {},
  ): Promise<SummaryVectors> {
    const ids = typeof document === "string" ? this.model.tokenizer.encode(document) : [...document];
    if (ids.length === 0) throw new KvfoldError("INVALID_ARGUMENT", "Cannot compress: the document is empty");
    const asked = options.segmentLength ?? this.segmentLength ?? 1536;
    const segLen = int32Arg("compress", "segmentLength", asked, { min: 1 });
    const S = this.summaryLength, H = this.model.info.hiddenSize;
    const segments = Math.ceil(ids.length / segLen);
    const out = new Float32Array(segments * S * H);
    // Positions: all summaries so far, then one segment, then the summary rows.
    using session = this.model.session({
      contextSize: segments * S + segLen,
      batchSize: Math.min(256, Math.max(S, segLen)),
    });
    for (let i = 0; i < segments; i++) {
      if (options.signal?.aborted) {
        throw new KvfoldError("ABORTED", "Cannot compress: aborted", { cause: options.signal.reason });
      }
      const kept = i * S; // accumulated summaries whose KV is reused
      session.truncate(kept);
      await session.prefill(ids.slice(i * segLen, (i + 1) * segLen), { signal: options.signal });
      const fresh = out.subarray(kept * H, (kept + S) * H);
      await session.prefillEmbeddings(this.#summaryRows, { hiddenOut: fresh, signal: options.signal });
      if (i + 1 < segments) {
        // The new summaries join the prefix: their KV at positions kept.. sees only earlier summaries.
        session.truncate(kept);
        await session.prefillEmbeddings(fresh, { signal: options.signal });
      }
      options.onProgress?.(Math.min((i + 1) * segLen, ids.length), ids.length);
    }
    return { rows: segments * S, hidden: H, data: out, tokens: ids.length };
  }

  /** Frees the model. */
  dispose(): void {
    this.model.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

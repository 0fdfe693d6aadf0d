/**
 * Text embeddings from any loaded model: each text is run once and its final-normed hidden states
 * (the rows the LM head reads) are pooled into one L2-normalised vector.
 *
 * @module
 */

import { KvfoldError } from "./errors.ts";
import type { Model } from "./model.ts";

/**
 * How a text's rows become one vector: `"mean"` averages the rows of the text's tokens, `"last"`
 * takes the last token's row (what a causal model has read the whole text by).
 */
export type EmbeddingPooling = "mean" | "last";

/** The poolings {@link Model.embed} accepts. */
export const EMBEDDING_POOLINGS: readonly EmbeddingPooling[] = ["mean", "last"];

/** Options of {@link Model.embed}. */
export interface EmbedOptions {
  /** Default `"mean"`. */
  pooling?: EmbeddingPooling;
  /** Cancels the call (between and inside texts). */
  signal?: AbortSignal;
  /** Called with (textsDone, textsTotal) after each text. */
  onProgress?: (done: number, total: number) => void;
}

/**
 * Embeds `texts` with `model` (see {@link Model.embed}): one vector of `hiddenSize` floats per
 * text, in order, each of L2 norm 1.
 *
 * Every text is encoded as a plain prompt (BOS first when the tokenizer adds one) and run through
 * one session that the whole call reuses. A leading BOS is run but not pooled: its row is the same
 * for every text, so pooling it would only pull all vectors toward one direction. A text with no
 * tokens besides BOS is pooled from the BOS row.
 */
export async function embedTexts(
  model: Model,
  texts: readonly string[],
  options: EmbedOptions = {},
): Promise<Float32Array[]> {
  if (!Array.isArray(texts)) {
    throw new TypeError(`Cannot embed: texts must be an array of strings, got ${describe(texts)}`);
  }
  texts.forEach((t, i) => {
    if (typeof t !== "string") {
      throw new TypeError(`Cannot embed: text ${i} is ${describe(t)}, not a string`);
    }
  });
  const pooling = options.pooling ?? "mean";
  if (!EMBEDDING_POOLINGS.includes(pooling)) {
    throw new RangeError(
      `Cannot embed: pooling ${JSON.stringify(pooling)} is not one of ${EMBEDDING_POOLINGS.join(", ")}`,
    );
  }
  checkAborted(options.signal);
  if (texts.length === 0) return [];
  const bos = model.tokenizer.bosTokenId;
  const encoded = texts.map((text, i) => {
    const ids = model.encodePrompt(text);
    if (ids.length === 0) {
      throw new KvfoldError(
        "INVALID_ARGUMENT",
        `Cannot embed: text ${i} is empty and the tokenizer adds no BOS token, so there is nothing to run`,
      );
    }
    if (ids.length > model.info.maxPositions) {
      throw new KvfoldError(
        "INVALID_ARGUMENT",
        `Cannot embed: text ${i} has ${ids.length} tokens, more than the model's ${model.info.maxPositions} ` +
          `positions (split it into smaller chunks)`,
      );
    }
    return ids;
  });
  const H = model.info.hiddenSize;
  const longest = Math.max(...encoded.map((ids) => ids.length));
  using session = model.session({ contextSize: longest });
  const out: Float32Array[] = [];
  for (const [i, ids] of encoded.entries()) {
    checkAborted(options.signal);
    session.reset();
    const hidden = new Float32Array(ids.length * H);
    await session.prefill(ids, { hiddenOut: hidden, signal: options.signal });
    const first = ids.length > 1 && ids[0] === bos ? 1 : 0;
    out.push(pool(hidden, H, pooling === "mean" ? first : ids.length - 1, ids.length));
    options.onProgress?.(i + 1, texts.length);
  }
  return out;
}

// The mean of rows [from, to) of `rows` ([n, H]), then divided by its L2 norm (in float64).
function pool(rows: Float32Array, H: number, from: number, to: number): Float32Array {
  const sum = new Float64Array(H);
  for (let r = from; r < to; r++) {
    for (let j = 0; j < H; j++) sum[j] += rows[r * H + j];
  }
  let norm = 0;
  for (let j = 0; j < H; j++) norm += sum[j] * sum[j];
  norm = Math.sqrt(norm);
  // The mean's 1/n cancels in the normalisation. An all-zero row stays zero rather than NaN.
  return Float32Array.from(sum, (v) => norm > 0 ? v / norm : 0);
}

function checkAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new KvfoldError("ABORTED", "Cannot embed: aborted", { cause: signal.reason });
}

function describe(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  return typeof v === "object" ? `a ${v.constructor?.name ?? "object"}` : `${typeof v} ${String(v)}`;
}

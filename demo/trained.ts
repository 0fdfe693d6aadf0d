/**
 * The trained demo folder as the evaluation, the bench and `deno task demo` load it: the model (an
 * AutoCompressor checkpoint that is also the reader), one LoRA per document group registered under
 * the group's name (so kvfold's adapter rule picks it for that group's chunks), and the LoCoCo heads;
 * and the held-out documents compressed into a store, one compressor segment per chunk.
 *
 * The folder's layout is what `demo/recipe.ts` writes: `model/`, `adapters/<group>/`,
 * `lococo.safetensors`, and with a decoder phase `decoder/` (the model that answers from the vectors
 * `model/` makes). The shipped one is `demo/trained/`.
 *
 * @module
 */

import { join } from "node:path";
import { Compressor } from "../src/compressor.ts";
import type { Kvfold } from "../src/engine.ts";
import { KvfoldError } from "../src/errors.ts";
import { compressIntoStore } from "../src/lloco.ts";
import { type ChunkBreak, documentChunkSpans } from "../src/chunk_spans.ts";
import type { LococoHeads } from "../src/lococo.ts";
import type { Model } from "../src/model.ts";
import type { DocumentStore } from "../src/store.ts";
import type { DemoDocument } from "./corpus.ts";
import { GROUPS, SEGMENT_TOKENS } from "./recipe_shape.ts";
import { pathExists } from "../src/_path_exists.ts";

/** The shipped trained folder: `demo/trained/` of this repository. */
export const DEFAULT_TRAINED_DIR: string = new URL("./trained", import.meta.url).pathname;

/** The command that trains the demo folder (named when it is missing). */
export const DEMO_RECIPE_COMMAND = "deno task train-demo";

/** A loaded trained demo folder. Dispose it to free the model, its adapters and heads. */
export interface TrainedDemo extends Disposable {
  /** The folder. */
  readonly dir: string;
  /** The compressor, which encodes the documents. */
  readonly compressor: Compressor;
  /** The model that answers: `decoder/` when the folder has one, else `compressor.model`. */
  readonly model: Model;
  /** Groups whose adapter is registered in `model.adapters` under the group's name. */
  readonly groups: readonly string[];
  /** The calibrated LoCoCo heads, when asked for. */
  readonly lococoHeads: LococoHeads | null;
}

/**
 * The folder of the model that answers in a trained folder: `decoder/` when the recipe's decoder
 * phase wrote one, else `model/` (the compressor decodes).
 */
export async function decoderOr(dir: string): Promise<string> {
  const decoder = join(dir, "decoder");
  return await pathExists(join(decoder, "model.safetensors")) ? decoder : join(dir, "model");
}

function missing(dir: string, what: string): KvfoldError {
  return new KvfoldError(
    "IO",
    `Cannot load the trained demo model: ${what} is missing in ${dir} (train it with \`${DEMO_RECIPE_COMMAND}\`, ` +
      "or pass the folder a recipe run wrote)",
  );
}

/**
 * Loads a trained demo folder: the model as a compressor, each group's adapter under the group's
 * name, and (with `lococo: true`) the LoCoCo heads. A missing piece throws an "IO" `KvfoldError`
 * naming it and the recipe command.
 *
 * @example
 * ```ts ignore
 * await using kv = await Kvfold.open();
 * using trained = await loadTrainedDemo(kv, DEFAULT_TRAINED_DIR);
 * console.log(trained.groups); // ["ledger", "voyage"]
 * ```
 */
export async function loadTrainedDemo(
  kv: Kvfold,
  dir: string,
  options: { lococo?: boolean } = {},
): Promise<TrainedDemo> {
  const modelDir = join(dir, "model");
  if (!(await pathExists(join(modelDir, "config.json")))) throw missing(dir, "model/config.json");
  for (const group of GROUPS) {
    if (!(await pathExists(join(dir, "adapters", group)))) throw missing(dir, `adapters/${group}/`);
  }
  const headsPath = join(dir, "lococo.safetensors");
  if (options.lococo && !(await pathExists(headsPath))) throw missing(dir, "lococo.safetensors");
  const compressor = await Compressor.load(kv, modelDir);
  let decoder: Model | undefined;
  try {
    // A recipe run with a decoder phase answers with `decoder/`; otherwise the compressor decodes.
    const decoderDir = await decoderOr(dir);
    if (decoderDir !== modelDir) decoder = await kv.loadModel(decoderDir);
    const model = decoder ?? compressor.model;
    for (const group of GROUPS) await model.adapters.load(join(dir, "adapters", group), { name: group });
    const lococoHeads = options.lococo ? model.loadLococoHeads(headsPath) : null;
    return {
      dir,
      compressor,
      model,
      groups: [...GROUPS],
      lococoHeads,
      [Symbol.dispose]() {
        lococoHeads?.dispose();
        decoder?.dispose();
        compressor.dispose();
      },
    };
  } catch (e) {
    decoder?.dispose();
    compressor.dispose();
    throw e;
  }
}

/**
 * Tokens per segment a demo compressor was trained with: its config's `segment_length` (the recipe's
 * `segmentTokens`), else {@link SEGMENT_TOKENS} for a folder written before the config said.
 */
export function trainedSegmentTokens(compressor: Compressor): number {
  return compressor.segmentLength ?? SEGMENT_TOKENS;
}

/**
 * How the demo cuts documents into store chunks: at most one compressor segment
 * ({@link trainedSegmentTokens}) each, ending at a sentence end, so a chunk is at most 8 summary
 * vectors (32x), rarely holds two facts of one attribute, and never cuts a fact's sentence in two.
 * Chunks of two segments (the recipe's longest training windows) hold such "twins" twice as often,
 * and the reader tells twins apart by their entity only about half the time; a cut sentence leaves
 * its owner in one chunk and its value in the next (README, "Training the demo model").
 */
export function storeChunking(compressor: Compressor): { chunkTokens: number; breakAt: ChunkBreak } {
  return { chunkTokens: trainedSegmentTokens(compressor), breakAt: "sentence" };
}

/**
 * The `[start, end)` token spans of `doc`'s store chunks ({@link storeChunking}), as
 * {@link compressDemoDocuments} cuts them.
 */
export function demoChunkSpans(compressor: Compressor, doc: DemoDocument): [number, number][] {
  const tok = compressor.model.tokenizer;
  return documentChunkSpans(tok.encode(doc.text), tok, storeChunking(compressor));
}

/** Progress of {@link compressDemoDocuments}: tokens done of all documents' tokens. */
export type CompressProgress = (done: number, total: number, document: string) => void;

/**
 * Compresses demo documents into `store` in the chunks of {@link storeChunking} (at most one
 * compressor segment each), each under its file name and group. Returns the tokens that went in and
 * the vectors that came out.
 *
 * @example
 * ```ts ignore
 * using store = DocumentStore.open("/tmp/heldout.sqlite");
 * await compressDemoDocuments(trained.compressor, store, corpus.documents);
 * ```
 */
export async function compressDemoDocuments(
  compressor: Compressor,
  store: DocumentStore,
  documents: readonly DemoDocument[],
  options: { onProgress?: CompressProgress; signal?: AbortSignal } = {},
): Promise<{ tokens: number; vectors: number }> {
  const total = documents.reduce((n, d) => n + d.tokens.length, 0);
  let before = 0, tokens = 0, vectors = 0;
  for (const doc of documents) {
    const r = await compressIntoStore(compressor, store, {
      source: doc.file,
      text: doc.text,
      group: doc.group,
    }, {
      ...storeChunking(compressor),
      segmentLength: trainedSegmentTokens(compressor),
      replace: true,
      signal: options.signal,
      onProgress: (done) => options.onProgress?.(before + done, total, doc.file),
    });
    before += doc.tokens.length;
    tokens += r.tokens;
    vectors += r.vectors;
  }
  return { tokens, vectors };
}

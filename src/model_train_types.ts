/**
 * The examples, losses and options of {@link ModelTrainer} (src/model_train.ts re-exports them).
 *
 * @module
 */

import type { TrainExample } from "./train.ts";

/** One question over a compressor document and its answer. */
export interface CompressorQaPair {
  /** Question ids (the prompt after the summary vectors); may be empty. */
  question?: readonly number[];
  /** Answer ids (what the question predicts; end it with EOS to teach stopping); empty adds no loss. */
  answer?: readonly number[];
}

/**
 * One compressor document: its ids, and optionally a question and answer over it, or several
 * (`pairs`: the document is compressed once and every pair trains on the same summaries).
 */
export interface CompressorExample extends CompressorQaPair {
  /** Document token ids (no BOS), split into segments of `segmentLength`. */
  ids: readonly number[];
  /**
   * Questions and answers over the document, instead of `question` / `answer`: each runs its own
   * `[summaries | question] -> answer` pass (they do not see each other) and the QA loss is one mean
   * over every answer token of every pair.
   */
  pairs?: readonly CompressorQaPair[];
  /**
   * Summary targets: summary vector `row` (of all the document's segments' summaries, in order)
   * predicts `token` through the LM head, a third loss (one mean over the targets) weighted by
   * `summaryTargetWeight`. A dense signal that teaches the compressor to carry the tokens a reader
   * needs (an answer's tokens, say) long before the QA loss alone does.
   */
  summaryTargets?: readonly SummaryTarget[];
  /** Weight of the summary-target loss (default 1). */
  summaryTargetWeight?: number;
}

/** One summary target of {@link CompressorExample.summaryTargets}. */
export interface SummaryTarget {
  /** Summary row: segment index × `summaryLength` + the vector's index in its segment. */
  row: number;
  /** The token id it predicts. */
  token: number;
}

/** Losses of one {@link ModelTrainer.accumulateDocument} (NaN for an objective that is off). */
export interface CompressorLoss {
  /** Mean cross-entropy of every segment token predicting the next one. */
  lm: number;
  /** Mean cross-entropy of the answer tokens (of every pair, one mean over all their tokens). */
  qa: number;
  /** Mean cross-entropy of the summary targets (NaN without any). */
  summary: number;
}

/** Options of one accumulating call of a {@link ModelTrainer}. */
export interface AccumulateOptions {
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
  /**
   * Gradient replica (0-63), for data parallelism: the call runs wholly on its own thread, beside
   * calls on other replicas, and its gradients wait in the replica until {@link ModelTrainer.step}
   * adds them up (in replica order). Unset: replica 0 on the engine's threads. See
   * {@link ModelTrainer.accumulateBatch}.
   */
  replica?: number;
}

/** One example of {@link ModelTrainer.accumulateBatch}: a language-modelling one or a compressor document. */
export type TrainBatchItem = { text: TrainExample } | { document: CompressorExample };

/** A trained tensor: HF name and shape. */
export interface TrainedTensor {
  name: string;
  shape: number[];
}

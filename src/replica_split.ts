/**
 * How {@link ModelTrainer.accumulateBatch} shares a batch among gradient replicas: by estimated
 * work, so that one replica does not get every long example while the other idles (with example i on
 * replica i % R, a batch that alternates long and short examples put all the long ones on one thread).
 * The split depends only on the examples and the replica count, so the gradients' bits still never
 * depend on timing.
 *
 * @module
 */

import type { TrainBatchItem } from "./model_train_types.ts";

/** The model shape the cost estimate needs (a subset of `ModelInfo`). */
export interface CostShape {
  /** Multiply-adds per row of every matrix a pass runs (the projections and the LM head). */
  rowWork: number;
  /** Multiply-adds per row per earlier row in attention (QK and PV, all layers and heads). */
  pairWork: number;
  /** Width of a row (a text example's prefix holds `hidden` floats per row). */
  hidden: number;
  /** Compressor: summary rows per segment and tokens per segment (0 for no compressor). */
  summaryLength: number;
  segmentLength: number;
}

/** The estimated work of passes of these row counts: matrices linear in rows, attention quadratic. */
function passesWork(rows: readonly number[], shape: CostShape): number {
  let w = 0;
  for (const T of rows) w += T * shape.rowWork + (T * (T + 1) / 2) * shape.pairWork;
  return w;
}

/**
 * The estimated work (multiply-adds of the forward; the backward is a multiple of it) of one batch
 * item: a text example is one pass over its prefix and ids; a compressor document one pass per
 * segment (earlier summaries, the segment, its summary rows) and one per question pair (all summaries,
 * question, answer).
 */
export function batchItemWork(item: TrainBatchItem, shape: CostShape): number {
  if ("text" in item) {
    const t = item.text;
    return passesWork([(t.ids?.length ?? 0) + (t.prefix?.length ?? 0) / Math.max(1, shape.hidden)], shape);
  }
  const d = item.document, S = shape.summaryLength, L = Math.max(1, shape.segmentLength);
  const n = d.ids?.length ?? 0, segments = Math.max(1, Math.ceil(n / L));
  const rows: number[] = [];
  for (let i = 0; i < segments; i++) rows.push(i * S + Math.min(L, n - i * L) + S);
  const pairs = d.pairs ?? [{ question: d.question, answer: d.answer }];
  for (const p of pairs) {
    if ((p.answer?.length ?? 0) > 0) {
      rows.push(segments * S + (p.question?.length ?? 0) + (p.answer?.length ?? 0));
    }
  }
  return passesWork(rows, shape);
}

/**
 * Splits items of the given work over `replicas`: the largest first, each to the replica with the
 * least work so far (ties: the larger item first by its index, then the lowest replica), each
 * replica's items back in index order. Deterministic; with one replica, every index in order.
 *
 * @example
 * ```ts
 * import { splitOverReplicas } from "./replica_split.ts";
 * console.log(splitOverReplicas([8, 1, 8, 1], 2)); // [[0, 1], [2, 3]]
 * ```
 */
export function splitOverReplicas(work: readonly number[], replicas: number): number[][] {
  const out: number[][] = Array.from({ length: replicas }, () => []);
  const load = new Array<number>(replicas).fill(0);
  const order = work.map((_, i) => i).sort((a, b) => work[b] - work[a] || a - b);
  for (const i of order) {
    let best = 0;
    for (let r = 1; r < replicas; r++) if (load[r] < load[best]) best = r;
    out[best].push(i);
    load[best] += Math.max(0, work[i]);
  }
  for (const list of out) list.sort((a, b) => a - b);
  return out;
}

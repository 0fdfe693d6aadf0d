/**
 * Float64 reference objectives of the full-parameter and compressor trainers, over
 * tests/reference_forward.ts: the losses whose central finite differences the native gradients are
 * checked against. Readable over fast.
 *
 * @module
 */

import assert from "node:assert/strict";
import { embedTokens, referenceHidden, type ReferenceModel, weight } from "./reference_forward.ts";

/** Mean cross-entropy of `hidden` rows [n, H] (final-normed) predicting `targets` (row, token). */
export function headLoss(ref: ReferenceModel, hidden: Float64Array, targets: [number, number][]): number {
  const { hiddenSize: H, vocabSize: V, tieWordEmbeddings } = ref.config;
  const head = weight(ref, tieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight"); // [V, H]
  let loss = 0;
  for (const [row, y] of targets) {
    const h = hidden.subarray(row * H, (row + 1) * H);
    const logits = new Float64Array(V);
    for (let v = 0; v < V; v++) {
      let acc = 0;
      for (let i = 0; i < H; i++) acc += head[v * H + i] * h[i];
      logits[v] = acc;
    }
    let mx = -Infinity;
    for (const x of logits) mx = Math.max(mx, x);
    let sum = 0;
    for (const x of logits) sum += Math.exp(x - mx);
    loss += Math.log(sum) + mx - logits[y];
  }
  return loss / targets.length;
}

/** Mean cross-entropy of one LM example: rows [prefix | ids], labels[t] for row prefix rows + t (or -1). */
export function referenceLmLoss(
  ref: ReferenceModel,
  prefix: Float64Array,
  ids: readonly number[],
  labels: readonly number[],
): number {
  const H = ref.config.hiddenSize, K = prefix.length / H;
  const x = new Float64Array(prefix.length + ids.length * H);
  x.set(prefix);
  x.set(embedTokens(ref, ids), prefix.length);
  const targets: [number, number][] = [];
  labels.forEach((y, t) => y >= 0 && targets.push([K + t, y]));
  return headLoss(ref, referenceHidden(ref, x), targets);
}

/** A compressor objective's inputs. */
export interface ReferenceDocument {
  ids: readonly number[];
  question: readonly number[];
  answer: readonly number[];
  segmentLength: number;
  /** embed_summary.weight [S, H]. */
  summaryRows: Float64Array;
  lmWeight: number;
  qaWeight: number;
  /**
   * Several questions over the document instead of `question` / `answer`: each its own
   * [summaries | question | answer] pass; qa is one mean over every answer token of every pair.
   */
  pairs?: readonly { question: readonly number[]; answer: readonly number[] }[];
  /**
   * Summaries of the first `frozen.length / (S·H)` segments to use instead of recomputing them: the
   * stop-gradient of earlier windows (a finite difference then does not move them).
   */
  frozen?: Float64Array;
  /** Summary row `row` predicts `token` through the LM head: one mean, times summaryTargetWeight. */
  summaryTargets?: readonly { row: number; token: number }[];
  summaryTargetWeight?: number;
}

/**
 * The compressor's summaries ([segments · S, H]) and its objective lmWeight · lm + qaWeight · qa
 * (+ summaryTargetWeight · summary, the summary targets' mean cross-entropy),
 * exactly as kvfold.h states them: segment i runs [summaries < i | segment i | summary rows] and its
 * last S final-normed rows are its summaries; lm is one mean over every segment token predicting the
 * next of its segment; qa is [all summaries | question | answer] with labels on the answer (per pair,
 * one mean over all the pairs' answer tokens).
 */
export function referenceCompressor(ref: ReferenceModel, doc: ReferenceDocument): {
  summaries: Float64Array;
  objective: number;
  lm: number;
  qa: number;
  /** Mean cross-entropy of the summary targets (NaN without any). */
  summary: number;
} {
  const H = ref.config.hiddenSize, S = doc.summaryRows.length / H, L = doc.segmentLength;
  const n = Math.ceil(doc.ids.length / L);
  const summaries = new Float64Array(n * S * H);
  let lmSum = 0, lmRows = 0, targetSum = 0;
  for (let i = 0; i < n; i++) {
    const seg = doc.ids.slice(i * L, (i + 1) * L);
    const x = new Float64Array((i * S + seg.length + S) * H);
    x.set(summaries.subarray(0, i * S * H));
    x.set(embedTokens(ref, seg), i * S * H);
    x.set(doc.summaryRows, (i * S + seg.length) * H);
    const h = referenceHidden(ref, x);
    const targets: [number, number][] = [];
    for (let t = 0; t + 1 < seg.length; t++) targets.push([i * S + t, seg[t + 1]]);
    if (targets.length > 0) {
      lmSum += headLoss(ref, h, targets) * targets.length;
      lmRows += targets.length;
    }
    // Summary targets of this segment: its summary row j sits at pass row T − S + j.
    const mine = (doc.summaryTargets ?? []).filter((t) => Math.floor(t.row / S) === i);
    if (mine.length > 0) {
      const T = x.length / H;
      targetSum += headLoss(ref, h, mine.map((t) => [T - S + (t.row % S), t.token])) * mine.length;
    }
    const frozenRows = (doc.frozen?.length ?? 0) / H;
    if ((i + 1) * S <= frozenRows) summaries.set(doc.frozen!.subarray(i * S * H, (i + 1) * S * H), i * S * H);
    else summaries.set(h.subarray((x.length / H - S) * H), i * S * H);
  }
  const lm = lmRows > 0 ? lmSum / lmRows : NaN;
  let qaSum = 0, qaRows = 0;
  for (const { question: q, answer: a } of doc.pairs ?? [{ question: doc.question, answer: doc.answer }]) {
    if (a.length === 0) continue;
    const K = n * S;
    const x = new Float64Array((K + q.length + a.length) * H);
    x.set(summaries);
    x.set(embedTokens(ref, q), K * H);
    x.set(embedTokens(ref, a), (K + q.length) * H);
    qaSum += headLoss(ref, referenceHidden(ref, x), a.map((y, t) => [K + q.length - 1 + t, y])) * a.length;
    qaRows += a.length;
  }
  const qa = qaRows > 0 ? qaSum / qaRows : NaN;
  const nTargets = doc.summaryTargets?.length ?? 0, targetWeight = doc.summaryTargetWeight ?? 1;
  const summary = nTargets > 0 && targetWeight > 0 ? targetSum / nTargets : NaN;
  const objective = (lmRows > 0 ? doc.lmWeight * lm : 0) + (qaRows > 0 ? doc.qaWeight * qa : 0) +
    (Number.isNaN(summary) ? 0 : targetWeight * summary);
  return { summaries, objective, lm, qa, summary };
}

/**
 * Checks `grad` (the native gradient of one tensor, parameters `theta` in the reference) at its
 * largest entry, the `extra` indices and one more against central differences of `objective`, as the
 * full-parameter and pair tests of the trainer do; returns the worst error relative to the tensor's
 * largest gradient.
 */
export function checkEntries(
  label: string,
  grad: Float32Array,
  theta: Float64Array,
  objective: () => number,
  extra: number[] = [],
): number {
  let gmax = 0, imax = 0;
  grad.forEach((g, i) => {
    if (Math.abs(g) > gmax) [gmax, imax] = [Math.abs(g), i];
  });
  assert.ok(gmax > 1e-6, `${label}: the gradient is all zero`);
  const eps = 1e-4;
  let worst = 0;
  for (const i of [imax, ...extra, Math.floor(theta.length / 3)]) {
    const keep = theta[i];
    theta[i] = keep + eps;
    const up = objective();
    theta[i] = keep - eps;
    const down = objective();
    theta[i] = keep;
    const fd = (up - down) / (2 * eps);
    const err = Math.abs(grad[i] - fd) / gmax;
    worst = Math.max(worst, err);
    assert.ok(err < 3e-3, `${label}[${i}]: native ${grad[i]}, finite difference ${fd}`);
  }
  return worst;
}

// The float64 reference of one LoCoCo compression step, checked by metamorphic identities: H2O eviction
// at λ = 0, one-hot convolutions that copy rows, 'same' padding, the slot count, GQA.
import assert from "node:assert/strict";
import { uniformValues } from "./_fixtures.ts";
import {
  type LococoStepInput,
  referenceLococoStep,
  referenceScores,
  segmentVisible,
  topIndices,
} from "./reference_lococo.ts";

function randomStep(
  o: {
    sTotal: number;
    nKv: number;
    hd: number;
    M: number;
    r: number;
    k: number;
    lambda: number;
    seed: number;
  },
): LococoStepInput {
  const mc = Math.floor(o.M * (1 - o.r));
  return {
    keys: uniformValues(o.sTotal * o.nKv * o.hd, o.seed),
    values: uniformValues(o.sTotal * o.nKv * o.hd, o.seed + 1),
    scores: uniformValues(o.sTotal * o.nKv, o.seed + 2).map((x) => x + 1), // distinct, positive
    numKvHeads: o.nKv,
    headDim: o.hd,
    slots: o.M,
    keepRate: o.r,
    weight: uniformValues(mc * 2 * o.hd * o.k, o.seed + 3, 0.5),
    bias: uniformValues(mc, o.seed + 4, 0.1),
    kernel: o.k,
    lambda: o.lambda,
  };
}

/** Row (K ++ V) of KV head g at slot s. */
function row(
  keys: ArrayLike<number>,
  values: ArrayLike<number>,
  s: number,
  g: number,
  nKv: number,
  hd: number,
) {
  const out: number[] = [];
  for (let d = 0; d < hd; d++) out.push(keys[(s * nKv + g) * hd + d]);
  for (let d = 0; d < hd; d++) out.push(values[(s * nKv + g) * hd + d]);
  return out;
}

/** Attention output of one query against KV head g's slots (order-independent). */
function attend(
  q: ArrayLike<number>,
  keys: ArrayLike<number>,
  values: ArrayLike<number>,
  n: number,
  g: number,
  nKv: number,
  hd: number,
) {
  const logits = Array.from({ length: n }, (_, s) => {
    let dot = 0;
    for (let d = 0; d < hd; d++) dot += q[d] * keys[(s * nKv + g) * hd + d];
    return dot / Math.sqrt(hd);
  });
  const max = Math.max(...logits);
  const p = logits.map((l) => Math.exp(l - max));
  const sum = p.reduce((a, b) => a + b, 0);
  const out = new Float64Array(hd);
  for (let s = 0; s < n; s++) {
    for (let d = 0; d < hd; d++) out[d] += p[s] / sum * values[(s * nKv + g) * hd + d];
  }
  return out;
}

Deno.test("lococo reference: λ = 0 is H2O top-M eviction per head", () => {
  for (const [sTotal, nKv, M, r, seed] of [[40, 1, 16, 0.5, 1], [57, 2, 20, 0.3, 2], [33, 3, 32, 0.75, 3]]) {
    const hd = 4;
    const input = randomStep({ sTotal, nKv, hd, M, r, k: 5, lambda: 0, seed });
    const out = referenceLococoStep(input);
    assert.ok(out.compressed);
    assert.equal(out.keys.length, M * nKv * hd);
    const mh = M - Math.floor(M * (1 - r));
    for (let g = 0; g < nKv; g++) {
      const score = Array.from({ length: sTotal }, (_, s) => input.scores[s * nKv + g]);
      const h2o = topIndices(score, M); // the M highest-score slots, in cache order
      // Our cache order is [heavy (top Mh, cache order) ; next Mc (cache order)]: same set as H2O.
      const heavy = h2o.filter((s) => topIndices(score, mh).includes(s));
      const next = h2o.filter((s) => !heavy.includes(s));
      const expectOrder = [...heavy, ...next];
      for (let m = 0; m < M; m++) {
        assert.deepEqual(
          row(out.keys, out.values, m, g, nKv, hd),
          row(input.keys, input.values, expectOrder[m], g, nKv, hd),
        );
      }
      // As a multiset the cache is exactly H2O's, so attention outputs agree.
      const got = Array.from({ length: M }, (_, m) => row(out.keys, out.values, m, g, nKv, hd).join()).sort();
      const want = h2o.map((s) => row(input.keys, input.values, s, g, nKv, hd).join()).sort();
      assert.deepEqual(got, want);
      const hk = new Float64Array(M * nKv * hd), hv = new Float64Array(M * nKv * hd);
      h2o.forEach((s, m) => {
        for (let d = 0; d < hd; d++) {
          hk[(m * nKv + g) * hd + d] = input.keys[(s * nKv + g) * hd + d];
          hv[(m * nKv + g) * hd + d] = input.values[(s * nKv + g) * hd + d];
        }
      });
      const q = uniformValues(hd, seed + 50 + g, 2);
      const a = attend(q, out.keys, out.values, M, g, nKv, hd), b = attend(q, hk, hv, M, g, nKv, hd);
      for (let d = 0; d < hd; d++) assert.ok(Math.abs(a[d] - b[d]) < 1e-12);
    }
  }
  // Ties: equal scores keep the lower cache index first.
  const tie = randomStep({ sTotal: 10, nKv: 1, hd: 2, M: 4, r: 0.5, k: 3, lambda: 0, seed: 9 });
  tie.scores = new Float64Array(10).fill(1);
  const t = referenceLococoStep(tie);
  assert.deepEqual(t.trace[0].heavy, [0, 1]);
  assert.deepEqual(t.trace[0].selected.map((i) => t.trace[0].rest[i]), [2, 3]);
});

Deno.test("lococo reference: λ = 1 with a one-hot softmax copies the rows the convolution picks", () => {
  const hd = 8, nKv = 2, sTotal = 30, M = 12, r = 0.5, k = 5; // Mc = 6 <= hd, Mh = 6
  const mc = 6, mh = 6, pad = 2;
  const keys = uniformValues(sTotal * nKv * hd, 1, 0.5);
  const values = uniformValues(sTotal * nKv * hd, 2);
  // Scores: slots 0..5 are the heavy hitters for both heads; the rest descend in cache order.
  const scores = new Float64Array(sTotal * nKv);
  for (let s = 0; s < sTotal; s++) {
    for (let g = 0; g < nKv; g++) {
      scores[s * nKv + g] = s < mh ? 100 + s : 50 - s;
    }
  }
  // Key channel c carries a marker 1000 at one slot per head; the conv's center tap reads it.
  const target = [[3, 7, 11, 15, 19, 23], [22, 5, 17, 9, 13, 1]]; // positions in rest, per head
  const restOf = (i: number) => mh + i; // heavy hitters are slots 0..5, rest is 6..29
  for (let g = 0; g < nKv; g++) {
    for (let s = mh; s < sTotal; s++) for (let c = 0; c < mc; c++) keys[(s * nKv + g) * hd + c] = 0;
    target[g].forEach((t, c) => keys[(restOf(t) * nKv + g) * hd + c] = 1000);
  }
  const weight = new Float64Array(mc * 2 * hd * k); // [Mc, 2hd, k]
  for (let c = 0; c < mc; c++) weight[(c * 2 * hd + c) * k + pad] = 1;
  const input: LococoStepInput = {
    keys,
    values,
    scores,
    numKvHeads: nKv,
    headDim: hd,
    slots: M,
    keepRate: r,
    weight,
    bias: new Float64Array(mc),
    kernel: k,
    lambda: 1,
  };
  const out = referenceLococoStep(input);
  assert.equal(out.slots, M);
  for (let g = 0; g < nKv; g++) {
    const tr = out.trace[g];
    assert.deepEqual(tr.heavy, [0, 1, 2, 3, 4, 5]);
    for (let c = 0; c < mc; c++) {
      // Softmax exactly one-hot (exp(-1000) underflows to 0).
      for (let t = 0; t < tr.rest.length; t++) {
        assert.equal(tr.softmax[c * tr.rest.length + t], t === target[g][c] ? 1 : 0);
      }
      assert.deepEqual(
        row(out.keys, out.values, mh + c, g, nKv, hd),
        row(keys, values, restOf(target[g][c]), g, nKv, hd),
      );
    }
    for (let m = 0; m < mh; m++) {
      assert.deepEqual(row(out.keys, out.values, m, g, nKv, hd), row(keys, values, m, g, nKv, hd));
    }
  }
  // When the convolution picks exactly the one-hot selection (next Mc by score, in cache order),
  // every λ gives the selected rows.
  const sel = [0, 1, 2, 3, 4, 5]; // rest positions 0..5 are the next 6 by score (50 - s descends)
  for (let g = 0; g < nKv; g++) {
    for (let s = mh; s < sTotal; s++) for (let c = 0; c < mc; c++) keys[(s * nKv + g) * hd + c] = 0;
    sel.forEach((t, c) => keys[(restOf(t) * nKv + g) * hd + c] = 1000);
  }
  for (const lambda of [0, 0.3, 1, 2.5]) {
    const o = referenceLococoStep({ ...input, keys, lambda });
    for (let g = 0; g < nKv; g++) {
      assert.deepEqual(o.trace[g].selected, sel);
      for (let c = 0; c < mc; c++) {
        const got = row(o.keys, o.values, mh + c, g, nKv, hd),
          want = row(keys, values, restOf(sel[c]), g, nKv, hd);
        for (let d = 0; d < 2 * hd; d++) {
          assert.ok(Math.abs(got[d] - want[d]) <= 1e-12 * Math.max(1, Math.abs(want[d])));
        }
      }
    }
  }
});

Deno.test("lococo reference: the conv is 'same'-padded cross-correlation over the slot axis", () => {
  // hd = 1, Mc = 1, k = 3, S_total = 5, Mh = 1: weight taps read K at t-1 (tap 0) and V at t+1 (tap 2).
  const keys = [9, 1, 2, 3, 4], values = [9, 10, 20, 30, 40];
  const scores = [5, 4, 3, 2, 1]; // slot 0 is the heavy hitter, the rest is slots 1..4
  const weight = [1, 0, 0, /* V channel */ 0, 0, 0.1]; // [1, 2, 3]
  const out = referenceLococoStep({
    keys,
    values,
    scores,
    numKvHeads: 1,
    headDim: 1,
    slots: 2,
    keepRate: 0.5,
    weight,
    bias: [-1],
    kernel: 3,
    lambda: 0.5,
  });
  // y[t] = relu(-1 + K_r[t-1] + 0.1 V_r[t+1]) with zeros beyond the ends; K_r = 1..4, V_r = 10..40.
  const y = [0, 1, 2, 3].map((t) => Math.max(0, -1 + (t > 0 ? t : 0) + 0.1 * (t < 3 ? 10 * (t + 2) : 0)));
  assert.deepEqual(y, [1, 3, 5, 2]);
  const e = y.map(Math.exp), z = e.reduce((a, b) => a + b);
  const w = e.map((x) => x / z);
  const tr = out.trace[0];
  for (let t = 0; t < 4; t++) assert.ok(Math.abs(tr.softmax[t] - w[t]) < 1e-15);
  const mix = w.map((x, t) => 0.5 * x + (t === 0 ? 0.5 : 0)); // R picks slot 1 (score 4)
  const fk = mix.reduce((a, m, t) => a + m * (t + 1), 0),
    fv = mix.reduce((a, m, t) => a + m * 10 * (t + 1), 0);
  assert.deepEqual(Array.from(out.keys.slice(0, 1)), [9]);
  assert.ok(Math.abs(out.keys[1] - fk) < 1e-12 && Math.abs(out.values[1] - fv) < 1e-12);
});

Deno.test("lococo reference: the output always has M slots; S_total <= M leaves the cache as is", () => {
  let seed = 100;
  for (const nKv of [1, 2]) {
    for (const [M, r, k] of [[8, 0.5, 3], [9, 0.7, 5], [16, 0.25, 21], [5, 0.9, 1]]) {
      const mc = Math.floor(M * (1 - r));
      if (mc < 1) continue;
      for (const sTotal of [M + 1, M + 16, M + 17, 3 * M + 5]) {
        const input = randomStep({ sTotal, nKv, hd: 4, M, r, k, lambda: 0.7, seed: seed++ });
        const out = referenceLococoStep(input);
        assert.ok(out.compressed);
        assert.equal(out.slots, M);
        assert.equal(out.keys.length, M * nKv * 4);
        assert.equal(out.values.length, M * nKv * 4);
        assert.ok(out.keys.every(Number.isFinite) && out.values.every(Number.isFinite));
        for (const tr of out.trace) {
          assert.equal(tr.heavy.length, M - mc);
          assert.equal(tr.rest.length, sTotal - (M - mc));
          assert.equal(tr.selected.length, mc);
          for (let c = 0; c < mc; c++) {
            let sw = 0, sm = 0;
            for (let t = 0; t < tr.rest.length; t++) {
              sw += tr.softmax[c * tr.rest.length + t];
              sm += tr.mix[c * tr.rest.length + t];
            }
            assert.ok(Math.abs(sw - 1) < 1e-12 && Math.abs(sm - 1) < 1e-12);
          }
        }
      }
      for (const sTotal of [1, M - 1, M]) {
        const input = randomStep({ sTotal, nKv, hd: 4, M, r, k, lambda: 0.7, seed: seed++ });
        const out = referenceLococoStep(input);
        assert.equal(out.compressed, false);
        assert.equal(out.slots, sTotal);
        assert.deepEqual(out.keys, Float64Array.from(input.keys));
        assert.deepEqual(out.values, Float64Array.from(input.values));
      }
    }
  }
});

Deno.test("lococo reference: GQA (n_kv = 2, 2 query heads per group) scores and per-head steps", () => {
  const nh = 4, nKv = 2, hd = 4, cacheLen = 20, T = 6, S = cacheLen + T;
  const queries = uniformValues(T * nh * hd, 1, 2);
  const keys = uniformValues(S * nKv * hd, 2, 2);
  const scores = referenceScores({
    queries,
    keys,
    numHeads: nh,
    numKvHeads: nKv,
    headDim: hd,
    visible: segmentVisible(cacheLen),
  });
  assert.equal(scores.length, S * nKv);
  // Each query head's probabilities sum to 1: a group's column sums total T · (heads per group).
  for (let g = 0; g < nKv; g++) {
    let total = 0;
    for (let s = 0; s < S; s++) total += scores[s * nKv + g];
    assert.ok(Math.abs(total - T * 2) < 1e-12);
  }
  // A group's score is the sum of its query heads' scores: run each query head alone (MHA, one head)
  // against its KV head (HF repeat_kv order: heads 0,1 -> KV head 0; heads 2,3 -> KV head 1).
  const oneHead = (h: number, g: number) => {
    const q1 = new Float64Array(T * hd), k1 = new Float64Array(S * hd);
    for (let t = 0; t < T; t++) for (let d = 0; d < hd; d++) q1[t * hd + d] = queries[(t * nh + h) * hd + d];
    for (let s = 0; s < S; s++) for (let d = 0; d < hd; d++) k1[s * hd + d] = keys[(s * nKv + g) * hd + d];
    return referenceScores({
      queries: q1,
      keys: k1,
      numHeads: 1,
      numKvHeads: 1,
      headDim: hd,
      visible: segmentVisible(cacheLen),
    });
  };
  for (let g = 0; g < nKv; g++) {
    const a = oneHead(2 * g, g), b = oneHead(2 * g + 1, g);
    for (let s = 0; s < S; s++) assert.ok(Math.abs(a[s] + b[s] - scores[s * nKv + g]) < 1e-12);
  }
  // Causal within the segment: only the last query sees the last key.
  const hidden = referenceScores({
    queries: queries.slice(0, nh * hd),
    keys,
    numHeads: nh,
    numKvHeads: nKv,
    headDim: hd,
    visible: segmentVisible(cacheLen),
  });
  assert.equal(hidden[(S - 1) * nKv], 0);
  assert.ok(hidden[(cacheLen - 1) * nKv] > 0);

  // The step on the GQA cache equals the step on each KV head's slice alone (one shared compressor).
  const M = 10, r = 0.5, k = 3, mc = 5;
  const values = uniformValues(S * nKv * hd, 3);
  const weight = uniformValues(mc * 2 * hd * k, 4, 0.5), bias = uniformValues(mc, 5, 0.1);
  const base = { numKvHeads: nKv, headDim: hd, slots: M, keepRate: r, weight, bias, kernel: k, lambda: 0.6 };
  const out = referenceLococoStep({ ...base, keys, values, scores });
  for (let g = 0; g < nKv; g++) {
    const k1 = new Float64Array(S * hd), v1 = new Float64Array(S * hd), s1 = new Float64Array(S);
    for (let s = 0; s < S; s++) {
      s1[s] = scores[s * nKv + g];
      for (let d = 0; d < hd; d++) {
        k1[s * hd + d] = keys[(s * nKv + g) * hd + d];
        v1[s * hd + d] = values[(s * nKv + g) * hd + d];
      }
    }
    const one = referenceLococoStep({ ...base, numKvHeads: 1, keys: k1, values: v1, scores: s1 });
    for (let m = 0; m < M; m++) {
      assert.deepEqual(row(out.keys, out.values, m, g, nKv, hd), row(one.keys, one.values, m, 0, 1, hd));
    }
  }
  // The two heads choose differently (their scores differ).
  assert.notDeepEqual(out.trace[0].heavy, out.trace[1].heavy);
});

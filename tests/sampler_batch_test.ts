// kf_sampler_sample_batch (src/sampler.ts sampleRows): one native call samples every row of a
// batched decode step. Checked against per-row kf_sampler_sample with samplers of the same seeds
// (the same ids, step after step, so the RNG and history advance alike), and the candidate order
// of the sampler against an independent float64 reference (xoshiro256** and the top-k/top-p/min-p
// walk written out here) on logits full of ties, -0/+0 and -inf.
import assert from "node:assert/strict";
import { decodeBatch, KvfoldError, sampleFromLogits, type Session } from "../mod.ts";
import { alloc, check, sym } from "../src/_binding.ts";
import { createSampler, sampleRows, type SamplingOptions } from "../src/sampler.ts";
import { someIds, testEngine, testModel } from "./_fixtures.ts";

const SETTINGS: Record<string, SamplingOptions> = {
  greedy: { temperature: 0 },
  "seeded top-p, no top-k": { temperature: 0.8, topP: 0.9, topK: 0 },
  "top-k, min-p, repetition penalty": { temperature: 1.3, topK: 7, minP: 0.02, repetitionPenalty: 1.4 },
  "full softmax": { temperature: 1, topP: 1, topK: 0 },
};

function sampleOne(sampler: Deno.PointerValue, session: Session): number {
  const out = alloc(4);
  check(sym().kf_sampler_sample(sampler, session._handle.ptr, out));
  return new Int32Array(out.buffer)[0];
}

for (const [name, settings] of Object.entries(SETTINGS)) {
  Deno.test(`sampler batch: ${name} gives per-row sampling's ids at every step`, async () => {
    const kv = await testEngine();
    using model = await kv.loadModel(await testModel("tiny"));
    const vocab = model.info.vocabSize;
    const sessions = Array.from({ length: 5 }, () => model.session({ contextSize: 64 }));
    const batch = sessions.map((_, i) => createSampler({ ...settings, seed: 100 + i }).ptr);
    const single = sessions.map((_, i) => createSampler({ ...settings, seed: 100 + i }).ptr);
    try {
      for (const [i, s] of sessions.entries()) {
        const prompt = someIds(4 + i, vocab, 7 + i);
        await s.prefill(prompt);
        for (const p of [batch[i], single[i]]) {
          check(sym().kf_sampler_accept(p, new Int32Array(prompt), prompt.length));
        }
      }
      const seen = new Set<number>();
      for (let step = 0; step < 8; step++) {
        const got = [...sampleRows(batch, sessions.map((s) => s._handle.ptr))];
        const want = sessions.map((s, i) => sampleOne(single[i], s));
        assert.deepEqual(got, want, `step ${step}`);
        got.forEach((id) => seen.add(id));
        await decodeBatch(sessions.map((session, i) => ({ session, token: got[i] })));
      }
      if (name !== "greedy") {
        assert.ok(seen.size > 5, `only ${seen.size} distinct ids: the rows did not sample`);
      }
    } finally {
      for (const p of [...batch, ...single]) check(sym().kf_sampler_free(p));
      for (const s of sessions) s.dispose();
    }
  });
}

Deno.test("sampler batch: a failing row names itself and leaves every sampler as it was", async () => {
  const kv = await testEngine();
  using model = await kv.loadModel(await testModel("tiny"));
  const vocab = model.info.vocabSize;
  const sessions = Array.from({ length: 3 }, () => model.session({ contextSize: 32 }));
  const settings = { temperature: 0.9, topP: 0.8, topK: 0 };
  const batch = sessions.map((_, i) => createSampler({ ...settings, seed: 7 + i }).ptr);
  const single = sessions.map((_, i) => createSampler({ ...settings, seed: 7 + i }).ptr);
  try {
    for (const [i, s] of sessions.entries()) await s.prefill(someIds(5, vocab, 30 + i));
    // Row 2's mask is of another vocabulary size: refused when row 2 samples, after rows 0 and 1 may have.
    check(sym().kf_sampler_set_allowed(batch[2], new Uint8Array(1).fill(255), 8));
    assert.throws(
      () => sampleRows(batch, sessions.map((s) => s._handle.ptr)),
      (e: unknown) =>
        e instanceof KvfoldError && /sample a batch: row 2: .*mask covers 8 ids/.test(e.message),
    );
    check(sym().kf_sampler_set_allowed(batch[2], null, 0));
    // Every sampler's RNG and history are as before the failed call: the next batch matches per-row.
    assert.deepEqual(
      [...sampleRows(batch, sessions.map((s) => s._handle.ptr))],
      sessions.map((s, i) => sampleOne(single[i], s)),
    );
    assert.throws(
      () => sampleRows([batch[0], batch[0]], [sessions[0], sessions[1]].map((s) => s._handle.ptr)),
      {
        message: /a sampler appears in two rows/,
      },
    );
    assert.throws(() => sampleRows([], []), { message: /n 0 is outside \[1, 4096\]/ });
    using fresh = model.session({ contextSize: 8 });
    assert.throws(() => sampleRows([batch[0]], [fresh._handle.ptr]), {
      message: /row 0's session has no logits/,
    });
  } finally {
    for (const p of [...batch, ...single]) check(sym().kf_sampler_free(p));
    for (const s of sessions) s.dispose();
  }
});

// ---- an independent reference of the sampler's choice (float64, BigInt RNG) ----

const M64 = (1n << 64n) - 1n;
function splitmix64(state: { x: bigint }): bigint {
  state.x = (state.x + 0x9e3779b97f4a7c15n) & M64;
  let z = state.x;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M64;
  return z ^ (z >> 31n);
}
function firstUniform(seed: bigint): number {
  const st = { x: seed };
  const s = [splitmix64(st), splitmix64(st), splitmix64(st), splitmix64(st)];
  const rotl = (x: bigint, k: bigint) => ((x << k) | (x >> (64n - k))) & M64;
  const result = (rotl((s[1] * 5n) & M64, 7n) * 9n) & M64;
  return Number(result >> 11n) / 9007199254740992;
}
function referenceChoice(
  logits: number[],
  o: { temperature: number; topP: number; topK: number; minP: number },
  seed: bigint,
) {
  // Candidates: logit descending, ties (-0 equal to +0) by id ascending.
  const order = logits.map((_, i) => i).sort((a, b) => logits[b] - logits[a] || a - b);
  const n = o.topK > 0 ? Math.min(o.topK, order.length) : order.length;
  const cand = order.slice(0, n);
  const maxl = logits[cand[0]];
  const e = cand.map((i) => Math.exp((logits[i] - maxl) / o.temperature));
  const sum = e.reduce((a, b) => a + b, 0);
  const probs = e.map((x) => x / sum);
  let keep = n;
  if (o.minP > 0) {
    keep = 1;
    while (keep < n && probs[keep] >= o.minP * probs[0]) keep++;
  }
  if (o.topP < 1) {
    let cum = 0, i = 0;
    for (; i < keep; i++) if ((cum += probs[i]) >= o.topP) break;
    keep = Math.min(keep, i + 1);
  }
  const mass = probs.slice(0, keep).reduce((a, b) => a + b, 0);
  const r = firstUniform(seed) * mass;
  let acc = 0;
  for (let i = 0; i < keep; i++) if (r < (acc += probs[i])) return cand[i];
  return cand[keep - 1];
}

Deno.test("sampler: candidates sort by logit then id (ties, -0 and +0, -inf), as a float64 reference picks", async () => {
  // Few distinct values, so most logits tie; some -0, +0 and -inf among them.
  const logits = Array.from({ length: 300 }, (_, i) => {
    const v = [-0, 0, 1.5, 1.5, -2, -Infinity, 0.25, 3, 3, -0.75][(i * 7 + (i >> 3)) % 10];
    return v;
  });
  const f32 = new Float32Array(logits);
  let differentPicks = 0;
  for (
    const o of [
      { temperature: 0.7, topP: 0.9, topK: 0, minP: 0 },
      { temperature: 2, topP: 1, topK: 0, minP: 0 },
      { temperature: 1, topP: 0.95, topK: 40, minP: 0.01 },
      { temperature: 5, topP: 0.5, topK: 250, minP: 0 },
    ]
  ) {
    const picks = new Set<number>();
    for (let seed = 1n; seed <= 40n; seed++) {
      const want = referenceChoice(logits, o, seed);
      const got = await sampleFromLogits(f32, { ...o, seed });
      assert.equal(got, want, `${JSON.stringify(o)} seed ${seed}`);
      picks.add(got);
    }
    if (picks.size > 3) differentPicks++;
  }
  assert.ok(differentPicks >= 2, "the seeds should reach many different candidates");
});

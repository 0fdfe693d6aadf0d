// kf_batch_prefill (src/batch.ts runPrefillBatch): several sessions' prefill chunks in one forward
// pass, each with its own adapter and position. Each session must end as a prefill of its chunk
// alone leaves it: the same last-row logits (to float rounding) and the same greedy continuation,
// and the pass must refuse what it cannot run without touching any session.
import assert from "node:assert/strict";
import { decodeBatch, type Session } from "../mod.ts";
import { runPrefillBatch } from "../src/batch.ts";
import { makeTestAdapter } from "../testing/mod.ts";
import { rejectsWith } from "./_kvfold_asserts.ts";
import { someIds, tempDir, testEngine, testModel } from "./_fixtures.ts";

async function greedyTail(s: Session, n: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const l = s.logits();
    let best = 0;
    for (let j = 1; j < l.length; j++) if (l[j] > l[best]) best = j;
    out.push(best);
    await s.decode(best);
  }
  return out;
}

Deno.test("batch prefill: sessions with adapters, lengths and positions of their own end as if prefilled alone", async () => {
  const dir = await tempDir();
  try {
    using model = await (await testEngine()).loadModel(await testModel("tiny"));
    const vocab = model.info.vocabSize;
    for (const [i, name] of ["x", "y"].entries()) {
      await makeTestAdapter(`${dir}/${name}`, { base: model.dir, rank: 4, seed: 3 + i, std: 0.1 });
      await model.adapters.load(`${dir}/${name}`, { name });
    }
    // Session 1 already holds a prefix, so its chunk starts at position 5; 0 and 3 share adapter x.
    const setups = [
      { adapter: "x", before: [], chunk: someIds(9, vocab, 1) },
      { adapter: null, before: someIds(5, vocab, 2), chunk: someIds(3, vocab, 3) },
      { adapter: "y", before: [], chunk: someIds(1, vocab, 4) },
      { adapter: "x", before: [], chunk: someIds(14, vocab, 5) },
    ];
    const make = async () => {
      const list: Session[] = [];
      for (const s of setups) {
        const session = model.session({ contextSize: 64 });
        if (s.adapter) await session.setAdapter(s.adapter);
        if (s.before.length) await session.prefill(s.before);
        list.push(session);
      }
      return list;
    };
    const batched = await make(), alone = await make();
    try {
      await runPrefillBatch(batched.map((session, i) => ({ session, ids: setups[i].chunk })));
      for (const [i, s] of alone.entries()) await s.prefill(setups[i].chunk);
      for (let i = 0; i < setups.length; i++) {
        assert.equal(batched[i].position, alone[i].position);
        const a = batched[i].logits(), b = alone[i].logits();
        const scale = Math.max(...b.map(Math.abs));
        const diff = Math.max(...a.map((x, j) => Math.abs(x - b[j])));
        assert.ok(diff <= 1e-4 * scale, `session ${i}: logits differ by ${diff} (scale ${scale})`);
      }
      for (let i = 0; i < setups.length; i++) {
        assert.deepEqual(
          await greedyTail(batched[i], 5),
          await greedyTail(alone[i], 5),
          `session ${i}`,
        );
      }
      // The caches hold the right keys: a batched decode step after it agrees too.
      await decodeBatch(batched.map((session) => ({ session, token: 7 })));
      for (const s of alone) await s.decode(7);
      for (let i = 0; i < setups.length; i++) {
        const a = batched[i].logits(), b = alone[i].logits();
        const diff = Math.max(...a.map((x, j) => Math.abs(x - b[j])));
        assert.ok(diff <= 1e-4 * Math.max(...b.map(Math.abs)), `session ${i} after a step: ${diff}`);
      }
    } finally {
      for (const s of [...batched, ...alone]) s.dispose();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("batch prefill: refusals name the entry and leave every session as it was", async () => {
  using model = await (await testEngine()).loadModel(await testModel("tiny"));
  const vocab = model.info.vocabSize;
  using a = model.session({ contextSize: 16 }), b = model.session({ contextSize: 16 });
  await a.prefill([5, 6]);
  await rejectsWith(
    runPrefillBatch([{ session: a, ids: [1] }, { session: a, ids: [2] }]),
    "INVALID_ARGUMENT",
    /session 1 appears twice/,
  );
  await rejectsWith(
    runPrefillBatch([{ session: a, ids: [1] }, { session: b, ids: [] }]),
    "INVALID_ARGUMENT",
    /count 0 of session 1/,
  );
  await rejectsWith(
    runPrefillBatch([{ session: a, ids: [1] }, { session: b, ids: someIds(17, vocab, 1) }]),
    "INVALID_STATE",
    /exceed n_ctx 16/,
  );
  using streaming = model.session({ cache: { kind: "streaming", window: 8 } });
  await rejectsWith(
    runPrefillBatch([{ session: streaming, ids: [1] }]),
    "UNSUPPORTED",
    /compressing cache/,
  );
  assert.equal(a.position, 2);
  assert.equal(b.position, 0);
});

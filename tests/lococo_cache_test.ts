// Bounded KV caches in the native forward pass (lococo, h2o, streaming): equality with the full cache
// while nothing is compressed, the slot scores and one compression step against the float64
// references, exact H2O and StreamingLLM selections, flat KV memory over 4k and 16k prompts, rollback
// on abort, bad heads, and the CLI.
import assert from "node:assert/strict";
import { join } from "node:path";
import type { Model } from "../mod.ts";
import { KvfoldError } from "../src/errors.ts";
import { makeTestLococoHeads } from "../testing/mod.ts";
import { readLococoHeads } from "../src/formats/lococo_heads.ts";
import type { CacheOptions } from "../src/lococo.ts";
import { readSafetensorsFile } from "../src/formats/safetensors.ts";
import type { Session } from "../src/session.ts";
import { makeTestModel } from "../testing/mod.ts";
import { relativeError, runCli, someIds, tempDir, testEngine, testModel, WIDE_MODEL } from "./_fixtures.ts";
import { embedTokens, loadReferenceModel, referenceHidden } from "./reference_forward.ts";
import { referenceLococoStep, referenceScores, segmentVisible, topIndices } from "./reference_lococo.ts";

// The tiny test model: 2 layers, 4 query heads over 2 KV heads (GQA), head_dim 16, vocab 512.
const VOCAB = 512;
// Small heads so compressions happen within a few segments: M = 24, r = 0.5 (Mc = 12, Mh = 12), k = 5, B = 16.
const HEADS = { slots: 24, keepRate: 0.5, kernel: 5, segment: 16, seed: 5, lambda: 0.4 };

async function withModel(fn: (model: Model, dir: string, tmp: string) => Promise<void>): Promise<void> {
  const dir = await testModel("lococo-tiny");
  const tmp = await tempDir();
  const kv = await testEngine();
  using model = await kv.loadModel(dir);
  try {
    await fn(model, dir, tmp);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
}

async function allLogits(session: Session, ids: number[]): Promise<Float32Array> {
  return (await session.prefill(ids, { logits: "all" }))!;
}

/** Every layer's cache, copied out. */
function snapshot(session: Session, layers: number) {
  return Array.from({ length: layers }, (_, l) => session.readCache(l));
}

Deno.test("lococo, h2o and streaming equal the full cache exactly while nothing is compressed", async () => {
  await withModel(async (model, dir, tmp) => {
    const heads = model.loadLococoHeads(
      (await makeTestLococoHeads(join(tmp, "h.safetensors"), { base: dir, ...HEADS, slots: 128 })).path,
    );
    const ids = someIds(100, VOCAB, 7);
    using full = model.session({ batchSize: 16 });
    const want = await allLogits(full, ids);
    const wantNext = [] as number[];
    for (let i = 0; i < 6; i++) {
      await full.decode(ids[i]);
      wantNext.push(...full.logits().slice(0, 8));
    }
    const caches: CacheOptions[] = [
      { kind: "lococo", heads },
      { kind: "h2o", slots: 100, segment: 16 },
      { kind: "streaming", sinks: 4, window: 102, segment: 16 },
    ];
    for (const cache of caches) {
      using s = model.session({ cache });
      assert.deepEqual(await allLogits(s, ids), want, `${cache.kind}: prefill logits`);
      const next = [] as number[];
      for (let i = 0; i < 6; i++) {
        await s.decode(ids[i]);
        next.push(...s.logits().slice(0, 8));
      }
      assert.deepEqual(next, wantNext, `${cache.kind}: decode logits`);
      const m = s.memory();
      assert.equal(m.cacheKind, cache.kind);
      assert.equal(m.compressions, 0);
      assert.equal(m.kvSlotsUsed, 106);
      assert.equal(m.segment, 16);
    }
  });
});

Deno.test("slot scores are the column sums of the last forward's probabilities, summed per KV group", async () => {
  await withModel(async (model, dir) => {
    const ref = await loadReferenceModel(dir);
    const { layers, heads: nh, kvHeads: nkv, headDim: hd } = model.info;
    // 45 tokens in segments of 16: 16, 16, then a last segment of 13 (shorter than B); no compression yet.
    const ids = someIds(45, VOCAB, 11);
    using s = model.session({ cache: { kind: "h2o", slots: 30, segment: 16 } });
    await s.prefill(ids);
    assert.equal(s.memory().compressions, 0);
    const qs: Float64Array[] = [], ks: Float64Array[] = [];
    referenceHidden(ref, embedTokens(ref, ids), (l, q, k) => {
      qs[l] = q;
      ks[l] = k;
    });
    for (let l = 0; l < layers; l++) {
      const want = referenceScores({
        queries: qs[l].subarray(32 * nh * hd), // the last forward's 13 rows
        keys: ks[l],
        numHeads: nh,
        numKvHeads: nkv,
        headDim: hd,
        visible: segmentVisible(32),
      });
      const got = s.readCache(l).scores!;
      assert.ok(relativeError(got, want) < 1e-5, `layer ${l}: ${relativeError(got, want)}`);
      // Each of the 13 rows spreads probability 1 per query head: 13 * 2 heads per group.
      for (let g = 0; g < nkv; g++) {
        let sum = 0;
        for (let j = 0; j < 45; j++) sum += got[j * nkv + g];
        assert.ok(Math.abs(sum - 26) < 1e-4, `layer ${l} group ${g}: ${sum}`);
      }
    }
  });
});

Deno.test("one lococo compression equals the float64 reference step, with GQA and a short last segment", async () => {
  await withModel(async (model, dir, tmp) => {
    const path = join(tmp, "h.safetensors");
    await makeTestLococoHeads(path, { base: dir, ...HEADS });
    const file = await readLococoHeads(path, { layers: 2, headDim: 16 });
    using heads = model.loadLococoHeads(path);
    assert.deepEqual(
      [heads.info.slots, heads.info.fusedSlots, heads.info.kernel, heads.info.segment, heads.info.layers],
      [24, 12, 5, 16, 2],
    );
    const ids = someIds(60, VOCAB, 13);
    using s = model.session({ cache: { kind: "lococo", heads } });
    await s.prefill(ids.slice(0, 45)); // 16 + 16 + 13: 45 slots > M + 16, not compressed yet
    const before = snapshot(s, 2);
    assert.equal(s.memory().compressions, 0);
    await s.decode(ids[45]); // compresses to M = 24 first, then appends one slot
    const m = s.memory();
    assert.deepEqual([m.compressions, m.kvSlotsUsed, m.position], [1, 25, 46]);
    let fused = 0;
    for (let l = 0; l < 2; l++) {
      const want = referenceLococoStep({
        keys: before[l].keys,
        values: before[l].values,
        scores: before[l].scores!,
        numKvHeads: 2,
        headDim: 16,
        slots: 24,
        keepRate: 0.5,
        weight: file.layers[l].weight,
        bias: file.layers[l].bias,
        kernel: 5,
        lambda: file.layers[l].lambda,
      });
      assert.ok(want.compressed);
      const got = s.readCache(l);
      const n = 24 * 2 * 16;
      const ek = relativeError(got.keys.subarray(0, n), want.keys);
      const ev = relativeError(got.values.subarray(0, n), want.values);
      assert.ok(ek < 1e-5 && ev < 1e-5, `layer ${l}: keys ${ek}, values ${ev}`);
      // The fused slots are mixtures, not copies of any slot (λ = 0.4), so the check is not vacuous.
      for (let i = 12 * 32; i < n; i++) if (want.keys[i] !== before[l].keys[i]) fused++;
    }
    assert.ok(fused > 0);
  });
});

Deno.test("h2o keeps exactly the top-M slots by score in cache order; streaming keeps sinks and the window", async () => {
  await withModel(async (model) => {
    const ids = someIds(50, VOCAB, 17);
    const caches = [{ kind: "h2o", slots: 20, segment: 16 }, {
      kind: "streaming",
      sinks: 3,
      window: 30,
      segment: 16,
    }];
    for (const cache of caches as CacheOptions[]) {
      using s = model.session({ cache });
      await s.prefill(ids.slice(0, 37)); // 16 + 16 + 5 slots; h2o shrinks past 36, streaming past 33
      const before = snapshot(s, 2);
      await s.prefill(ids.slice(37, 41)); // one forward of 4 rows after the shrink
      assert.equal(s.memory().compressions, 1, cache.kind);
      const n = before[0].slots;
      for (let l = 0; l < 2; l++) {
        const got = s.readCache(l);
        for (let g = 0; g < 2; g++) {
          const keep = cache.kind === "h2o"
            ? topIndices(Array.from({ length: n }, (_, j) => before[l].scores![j * 2 + g]), 20)
            : [...Array(3).keys(), ...Array.from({ length: 30 }, (_, i) => n - 30 + i)];
          keep.forEach((from, to) => {
            for (let d = 0; d < 16; d++) {
              assert.equal(got.keys[(to * 2 + g) * 16 + d], before[l].keys[(from * 2 + g) * 16 + d]);
              assert.equal(got.values[(to * 2 + g) * 16 + d], before[l].values[(from * 2 + g) * 16 + d]);
            }
          });
        }
      }
    }
  });
});

Deno.test("KV memory stays within M + B slots per layer for 4k and 16k prompts", async () => {
  await withModel(async (model, dir, tmp) => {
    const heads = model.loadLococoHeads(
      (await makeTestLococoHeads(join(tmp, "h.safetensors"), {
        base: dir,
        slots: 64,
        segment: 32,
        kernel: 5,
      })).path,
    );
    const caches: CacheOptions[] = [
      { kind: "lococo", heads },
      { kind: "h2o", slots: 64, segment: 32 },
      { kind: "streaming", sinks: 4, window: 60, segment: 32 },
    ];
    for (const cache of caches) {
      const bytes: number[] = [];
      for (const n of [4096, 16384]) {
        using s = model.session({ cache });
        await s.prefill(someIds(n, VOCAB, n));
        for (let i = 0; i < 20; i++) await s.decode(5);
        const m = s.memory();
        assert.equal(m.position, n + 20);
        assert.ok(m.kvSlotsPeak <= 64 + 32, `${cache.kind} ${n}: peak ${m.kvSlotsPeak}`);
        assert.ok(m.kvSlots <= 64 + 32 + 16);
        assert.ok(m.compressions > n / 64, `${cache.kind}: ${m.compressions} compressions`);
        assert.ok(s.logits().every(Number.isFinite));
        bytes.push(m.kvBytes);
      }
      assert.equal(bytes[0], bytes[1], `${cache.kind}: KV bytes grow with the prompt`);
    }
  });
});

Deno.test("an aborted compressing prefill leaves the cache exactly as it was", async () => {
  const dir = await testModel("lococo-wide", WIDE_MODEL);
  const tmp = await tempDir();
  try {
    const kv = await testEngine();
    using model = await kv.loadModel(dir);
    using heads = model.loadLococoHeads(
      (await makeTestLococoHeads(join(tmp, "h.safetensors"), {
        base: dir,
        slots: 48,
        segment: 32,
        kernel: 5,
      })).path,
    );
    using s = model.session({ cache: { kind: "lococo", heads } });
    await s.prefill(someIds(200, VOCAB, 1)); // compressed a few times already
    const memBefore = s.memory();
    const before = snapshot(s, 8);
    const ac = new AbortController();
    let progressed = 0;
    await assert.rejects(
      s.prefill(someIds(6000, VOCAB, 2), {
        signal: ac.signal,
        onProgress: (done) => {
          progressed = done;
          if (done > 0) ac.abort();
        },
      }),
      (e: unknown) => e instanceof KvfoldError && e.code === "ABORTED",
    );
    assert.ok(progressed > 0 && progressed < 6000);
    const memAfter = s.memory();
    assert.deepEqual(
      [memAfter.position, memAfter.kvSlotsUsed, memAfter.compressions, memAfter.kvSlotsPeak],
      [memBefore.position, memBefore.kvSlotsUsed, memBefore.compressions, memBefore.kvSlotsPeak],
    );
    const after = snapshot(s, 8);
    for (let l = 0; l < 8; l++) {
      assert.deepEqual(after[l].keys, before[l].keys);
      assert.deepEqual(after[l].values, before[l].values);
      assert.deepEqual(after[l].scores, before[l].scores);
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("heads that do not fit the model are refused with a clear error", async () => {
  await withModel(async (model, dir, tmp) => {
    const deeper = join(tmp, "deeper");
    await makeTestModel(deeper, { preset: "tiny", numLayers: 3, seed: 2 });
    const p3 = (await makeTestLococoHeads(join(tmp, "l3.safetensors"), { base: deeper, ...HEADS })).path;
    assert.throws(() => model.loadLococoHeads(p3), /layer 2, but the model has 2 layers/);
    const wide = join(tmp, "wide");
    await makeTestModel(wide, { preset: "tiny", numHeads: 2, numKeyValueHeads: 2, seed: 2 }); // head_dim 32
    const pw = (await makeTestLococoHeads(join(tmp, "w.safetensors"), { base: wide, ...HEADS })).path;
    assert.throws(() => model.loadLococoHeads(pw), /made for head_dim 32; this model's head_dim is 16/);
    assert.throws(
      () => model.loadLococoHeads(join(tmp, "none.safetensors")),
      (e: unknown) => e instanceof KvfoldError && e.code === "IO" && /none\.safetensors/.test(e.message),
    );
    const ok = model.loadLococoHeads(
      (await makeTestLococoHeads(join(tmp, "ok.safetensors"), { base: dir, ...HEADS })).path,
    );
    assert.throws(
      () => model.session({ cache: { kind: "lococo", heads: ok, slots: 8 } }),
      /fewer than the 12 slots/,
    );
    assert.throws(() => model.session({ cache: { kind: "h2o", slots: 0 } }), /needs slots/);
    assert.throws(() => model.session({ cache: { kind: "streaming", window: 0 } }), /needs window/);
    // Heads in use cannot be freed; truncating a compressed cache is refused.
    using s = model.session({ cache: { kind: "lococo", heads: ok } });
    assert.equal(ok.users, 1);
    assert.throws(() => ok.dispose(), /1 session\(s\) are using them/);
    await s.prefill(someIds(60, VOCAB));
    assert.throws(() => s.truncate(10), /reset it instead/);
  });
});

Deno.test("CLI: logits and generate with --cache", async () => {
  await withModel(async (_model, dir, tmp) => {
    const heads = (await makeTestLococoHeads(join(tmp, "h.safetensors"), { base: dir, ...HEADS })).path;
    const ids = someIds(70, VOCAB, 19);
    const run = async (name: string, ...flags: string[]) => {
      const out = join(tmp, `${name}.safetensors`);
      const r = await runCli(
        "logits",
        "--model",
        dir,
        "--ids",
        ids.join(","),
        "--out",
        out,
        "--threads",
        "2",
        ...flags,
      );
      assert.equal(r.code, 0, r.err);
      return { logits: (await readSafetensorsFile(out)).tensors.get("logits")!, err: r.err };
    };
    const full = await run("full");
    const lococo = await run("lococo", "--cache", "lococo", "--heads", heads);
    const big = await run("big", "--cache", "lococo", "--heads", heads, "--slots", "80", "--segment", "70");
    // Segments of 16: the cache reaches 48 slots, is compressed to 24 before position 48, then holds 24 + 16 + 6.
    assert.match(lococo.err, /cache lococo: 70 positions seen, 46 slots in use, peak 48 of 56 allocated/);
    // The first 48 positions run before any compression: equal to full; later ones differ.
    const row = VOCAB * 4;
    assert.deepEqual(lococo.logits.data.subarray(0, 48 * row), full.logits.data.subarray(0, 48 * row));
    assert.notDeepEqual(lococo.logits.data.subarray(60 * row), full.logits.data.subarray(60 * row));
    assert.deepEqual(big.logits.data, full.logits.data); // M = 80 >= 70 and one segment, as full runs it
    const bad = await runCli(
      "logits",
      "--model",
      dir,
      "--ids",
      "1,2",
      "--out",
      join(tmp, "x"),
      "--cache",
      "h2o",
    );
    assert.notEqual(bad.code, 0);
    assert.match(bad.err, /--slots/);
    const gen = await runCli(
      "generate",
      "--model",
      dir,
      "--prompt",
      "a b c d e f g h i j k l m n o p q r s t u v w x y z ".repeat(4),
      "--max-tokens",
      "8",
      "--temperature",
      "0",
      "--cache",
      "streaming",
      "--window",
      "24",
      "--segment",
      "8",
    );
    assert.equal(gen.code, 0, gen.err);
    assert.match(gen.err, /cache streaming: \d+ positions seen, \d+ slots in use/);
  });
});

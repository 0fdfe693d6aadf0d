// Adapter composition (issue 18, "Questions that span document groups"): a session applying several
// LoRA adapters with weights, y = Wx + Σ w_i s_i B_i (A_i x), against the float64 reference run with
// MERGED weights W + Σ w_i s_i B_i A_i; metamorphic identities (one adapter at weight 1 is
// setAdapter, weight 0 is none, linearity in the weights); batched decode of mixed compositions;
// LoCoCo sessions against a merged model on disk; refusals and lifetime; the answer path's rule.
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  adaptersForChunks,
  answerFromChunks,
  type AnswerStats,
  concatVectors,
  describeAdapters,
  type KvfoldError,
  MAX_COMPOSED_ADAPTERS,
  type Model,
  type RetrievedChunk,
  type Session,
} from "../mod.ts";
import { sym } from "../src/_binding.ts";
import { makeTestAdapter, makeTestLococoHeads } from "../testing/mod.ts";
import { embedTokens, loadReferenceModel, referenceLogits } from "./reference_forward.ts";
import { mergeLoraInto, writeReferenceModel } from "./_reference_lora.ts";
import {
  relativeError,
  someIds,
  tempDir,
  testEngine,
  testModel,
  withCompressorAndStore,
} from "./_fixtures.ts";

const root = tempDir();
async function adapterDir(name: string, options: Parameters<typeof makeTestAdapter>[1]): Promise<string> {
  const dir = join(await root, name);
  await makeTestAdapter(dir, options);
  return dir;
}

// The LoRA test base (2 layers, GQA 4 over 2 heads) and three adapters of different shapes.
async function withAdapters(
  fn: (kit: { model: Model; base: string; dirs: Record<"a" | "b" | "c", string> }) => Promise<void>,
): Promise<void> {
  const base = await testModel("lora-base", { seed: 5, numHeads: 4, numKeyValueHeads: 2 });
  const dirs = {
    a: await adapterDir("a", { base, seed: 41, rank: 4, alpha: 8 }),
    b: await adapterDir("b", {
      base,
      seed: 42,
      rank: 8,
      alpha: 16,
      rslora: true,
      targetModules: ["q_proj", "v_proj"],
    }),
    c: await adapterDir("c", {
      base,
      seed: 43,
      rank: 4,
      targetModules: ["k_proj", "o_proj", "down_proj", "up_proj"],
      rankPattern: { down_proj: 2 },
      layers: [1],
      dtype: "BF16",
    }),
  };
  using model = await (await testEngine()).loadModel(base);
  for (const [name, dir] of Object.entries(dirs)) await model.adapters.load(dir, { name });
  await fn({ model, base, dirs });
}

// Prefill logits of every position, then the logits after each `extra` decode step.
async function runLogits(session: Session, ids: number[], extra: number[]): Promise<Float32Array> {
  const out = [...(await session.prefill(ids, { logits: "all" }))!];
  for (const id of extra) {
    await session.decode(id);
    out.push(...session.logits());
  }
  return Float32Array.from(out);
}

const sameValues = (a: Float32Array, b: Float32Array) =>
  a.length === b.length && a.every((v, i) => v === b[i]);

Deno.test("compose: prefill, decode and an LLoCO prefix equal the float64 reference with merged weights", async () => {
  await withAdapters(async ({ model, base, dirs }) => {
    const mix = [{ adapter: "a", weight: 0.7 }, { adapter: "b", weight: -0.4 }, {
      adapter: "c",
      weight: 1.3,
    }];
    const ids = someIds(10, model.info.vocabSize, 9), extra = someIds(3, model.info.vocabSize, 10);
    const ref = await loadReferenceModel(base);
    const plain = referenceLogits(ref, [...ids, ...extra]);
    for (const t of mix) await mergeLoraInto(ref, dirs[t.adapter as "a"], t.weight);
    const want = referenceLogits(ref, [...ids, ...extra]);
    using s = model.session({ contextSize: 64, batchSize: 4 }); // prefill in chunks of 4 rows
    const applied = await s.setAdapters(mix);
    assert.deepEqual(applied.map((t) => [t.adapter.name, t.weight]), mix.map((t) => [t.adapter, t.weight]));
    assert.equal(s.adapter, null, "a composition is not one adapter");
    const got = await runLogits(s, ids, extra);
    assert.ok(relativeError(got, want) < 2e-5, `relative error ${relativeError(got, want)}`);
    assert.ok(relativeError(plain, want) > 1e-3, "the composition changed nothing");

    // LLoCO: embedding rows before the prompt, then decode: the reference's prefixEmbeddings path.
    const prefixIds = someIds(5, model.info.vocabSize, 11);
    const prefix = embedTokens(await loadReferenceModel(base), prefixIds); // the base's embedding rows
    const wantPrefix = referenceLogits(ref, [...ids, ...extra], { prefixEmbeddings: prefix });
    using p = model.session({ contextSize: 64 });
    await p.prefillEmbeddings(Float32Array.from(prefix), { adapters: mix });
    const gotPrefix = await runLogits(p, ids, extra);
    assert.ok(
      relativeError(gotPrefix, wantPrefix) < 2e-5,
      `prefix: relative error ${relativeError(gotPrefix, wantPrefix)}`,
    );
  });
});

Deno.test("compose: one adapter at weight 1 is setAdapter bit for bit; weight 0 and [] are the base model", async () => {
  await withAdapters(async ({ model }) => {
    const ids = someIds(7, model.info.vocabSize, 21), extra = someIds(2, model.info.vocabSize, 22);
    const run = async (select: (s: Session) => Promise<unknown>) => {
      using s = model.session({ contextSize: 32 });
      await select(s);
      return await runLogits(s, ids, extra);
    };
    const base = await run(async () => {});
    const single = await run((s) => s.setAdapter("a"));
    assert.ok(!sameValues(single, base), "adapter a changed nothing");
    assert.ok(sameValues(await run((s) => s.setAdapters([{ adapter: "a", weight: 1 }])), single));
    assert.ok(sameValues(await run((s) => s.setAdapters([{ adapter: "a", weight: 0 }])), base));
    assert.ok(
      sameValues(
        await run((s) => s.setAdapters([{ adapter: "b", weight: 0 }, { adapter: "c", weight: 0 }])),
        base,
      ),
    );
    assert.ok(sameValues(await run((s) => s.setAdapters([])), base));
    // Through generate's and prefill's options too.
    using s = model.session({ contextSize: 32 });
    for await (const _ of s.generate({ prompt: ids, adapters: [{ adapter: "a", weight: 1 }], maxTokens: 1 }));
    assert.equal(s.adapter?.name, "a", "one adapter at weight 1 reads back as the adapter");
    assert.deepEqual(s.adapters.map((t) => [t.adapter.name, t.weight]), [["a", 1]]);
    await assert.rejects(() => s.prefill(ids, { adapter: "a", adapters: [] }), TypeError);
  });
});

Deno.test("compose: linear in the weights (A at w twice is A at 2w; the order of terms does not matter)", async () => {
  await withAdapters(async ({ model }) => {
    const ids = someIds(9, model.info.vocabSize, 31), extra = someIds(2, model.info.vocabSize, 32);
    const run = async (mix: { adapter: string; weight: number }[]) => {
      using s = model.session({ contextSize: 32 });
      await s.setAdapters(mix);
      return await runLogits(s, ids, extra);
    };
    const twice = await run([{ adapter: "a", weight: 0.35 }, { adapter: "a", weight: 0.35 }]);
    const double = await run([{ adapter: "a", weight: 0.7 }]);
    assert.ok(relativeError(twice, double) < 1e-5, `relative error ${relativeError(twice, double)}`);
    assert.ok(
      relativeError(double, await run([{ adapter: "a", weight: 1 }])) > 1e-3,
      "the weight changed nothing",
    );
    const ab = await run([{ adapter: "a", weight: 0.6 }, { adapter: "b", weight: 0.4 }]);
    const ba = await run([{ adapter: "b", weight: 0.4 }, { adapter: "a", weight: 0.6 }]);
    assert.ok(relativeError(ab, ba) < 1e-5, `order: relative error ${relativeError(ab, ba)}`);
  });
});

Deno.test("compose: a batched decode of mixed compositions equals each session decoded alone", async () => {
  await withAdapters(async ({ model }) => {
    const plan = [
      [{ adapter: "a", weight: 0.6 }, { adapter: "b", weight: 0.4 }],
      [],
      [{ adapter: "b", weight: 1 }],
      [{ adapter: "a", weight: 0.6 }, { adapter: "b", weight: 0.4 }], // equal to row 0: one group
      [{ adapter: "b", weight: 0.4 }, { adapter: "a", weight: 0.6 }], // other order: its own group
      [{ adapter: "c", weight: 2 }, { adapter: "a", weight: -1 }, { adapter: "b", weight: 0.5 }],
    ];
    const prompts = plan.map((_, i) => someIds(3 + i, model.info.vocabSize, 50 + i));
    const steps = [[7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 17, 18]];
    const solo: Float32Array[][] = [];
    for (let i = 0; i < plan.length; i++) {
      using s = model.session({ contextSize: 32 });
      await s.prefill(prompts[i], { adapters: plan[i] });
      solo.push([]);
      for (const step of steps) {
        await s.decode(step[i]);
        solo[i].push(s.logits());
      }
    }
    const sessions = plan.map(() => model.session({ contextSize: 32 }));
    try {
      for (let i = 0; i < plan.length; i++) await sessions[i].prefill(prompts[i], { adapters: plan[i] });
      for (const [k, step] of steps.entries()) {
        await model.decodeBatch(sessions.map((session, i) => ({ session, token: step[i] })));
        for (let i = 0; i < plan.length; i++) {
          const err = relativeError(sessions[i].logits(), solo[i][k]);
          assert.ok(err < 1e-5, `step ${k}, row ${i}: relative error ${err}`);
        }
      }
      assert.ok(
        relativeError(solo[0][1], solo[2][1]) > 1e-3,
        "rows must differ for the test to mean anything",
      );
    } finally {
      sessions.forEach((s) => s.dispose());
    }
  });
});

Deno.test("compose: a LoCoCo session composing adapters equals the merged model's, through compressions", async () => {
  const base = await testModel("lococo-tiny");
  const tmp = await tempDir();
  const kv = await testEngine();
  try {
    const a = await adapterDir("lococo-a", { base, seed: 61, rank: 4 });
    const b = await adapterDir("lococo-b", {
      base,
      seed: 62,
      rank: 2,
      targetModules: ["q_proj", "v_proj", "up_proj"],
    });
    const ref = await loadReferenceModel(base);
    await mergeLoraInto(ref, a, 0.75);
    await mergeLoraInto(ref, b, 0.5);
    await writeReferenceModel(ref, base, join(tmp, "merged"));
    const headsFile = (await makeTestLococoHeads(join(tmp, "h.safetensors"), {
      base,
      slots: 24,
      keepRate: 0.5,
      kernel: 5,
      segment: 16,
      seed: 5,
      lambda: 0.4,
    })).path;
    const ids = someIds(100, 512, 7), extra = someIds(4, 512, 8);
    const run = async (dir: string, mix: { adapter: string; weight: number }[]) => {
      using model = await kv.loadModel(dir, { dtype: "f32" });
      await model.adapters.load(a, { name: "a" });
      await model.adapters.load(b, { name: "b" });
      using heads = model.loadLococoHeads(headsFile);
      using s = model.session({ cache: { kind: "lococo", heads } });
      await s.setAdapters(mix);
      const logits = await runLogits(s, ids, extra);
      return { logits, compressions: s.memory().compressions };
    };
    const composed = await run(base, [{ adapter: "a", weight: 0.75 }, { adapter: "b", weight: 0.5 }]);
    const merged = await run(join(tmp, "merged"), []);
    assert.ok(composed.compressions >= 3, `only ${composed.compressions} compressions`);
    assert.equal(composed.compressions, merged.compressions);
    const err = relativeError(composed.logits, merged.logits);
    assert.ok(err < 1e-4, `relative error ${err}`);
    const plain = await run(base, []);
    assert.ok(relativeError(plain.logits, merged.logits) > 1e-3, "the composition changed nothing");
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("compose: bad compositions are refused by name and change nothing; adapters in use stay loaded", async () => {
  await withAdapters(async ({ model, base }) => {
    using s = model.session({ contextSize: 32 });
    await s.setAdapters([{ adapter: "a", weight: 0.5 }, { adapter: "a", weight: 0.5 }, {
      adapter: "b",
      weight: 2,
    }]);
    const ids = someIds(4, model.info.vocabSize, 71);
    await s.prefill(ids);
    const before = s.logits();
    const a = model.adapters.get("a")!, b = model.adapters.get("b")!, c = model.adapters.get("c")!;
    assert.deepEqual([a.users, b.users, c.users], [1, 1, 0], "users count sessions, once each");
    const nine = Array.from({ length: MAX_COMPOSED_ADAPTERS + 1 }, () => ({ adapter: "a", weight: 0.1 }));
    await assert.rejects(
      () => s.setAdapters(nine),
      (e: Error) => e instanceof RangeError && /9 adapters/.test(e.message),
    );
    await assert.rejects(
      () => s.setAdapters([{ adapter: "a", weight: 1 }, { adapter: "b", weight: NaN }]),
      (e: Error) => e instanceof RangeError && /term 1 has weight NaN/.test(e.message),
    );
    await assert.rejects(
      () => s.setAdapters([{ adapter: null as unknown as string, weight: 1 }]),
      (e: Error) => e instanceof TypeError && /term 0 has no adapter/.test(e.message),
    );
    await assert.rejects(
      () => s.setAdapters([{ adapter: "nope", weight: 1 }]),
      (e: KvfoldError) => e.code === "INVALID_ARGUMENT" && /"nope"/.test(e.message),
    );
    // The native checks, below the TypeScript ones.
    const native = (ptrs: (Deno.PointerValue | null)[], weights: number[], n = ptrs.length) => {
      const p = new BigUint64Array(Math.max(n, 1)), w = new Float32Array(Math.max(n, 1));
      ptrs.forEach((x, i) => (p[i] = BigInt(x === null ? 0 : Deno.UnsafePointer.value(x))));
      weights.forEach((x, i) => (w[i] = x));
      const code = sym().kf_session_set_adapters(
        s._handle.ptr,
        new Uint8Array(p.buffer),
        new Uint8Array(w.buffer),
        n,
      );
      return { code, message: new Deno.UnsafePointerView(sym().kf_last_error()!).getCString() };
    };
    const ap = a._handle.ptr, bp = b._handle.ptr;
    assert.deepEqual(native([ap, null], [1, 1]), {
      code: 1,
      message: "cannot set adapters: adapter 1 of the list is NULL",
    });
    assert.deepEqual(native([ap, bp], [1, Infinity]), {
      code: 1,
      message: "cannot set adapters: weight 1 is inf, not a finite number",
    });
    assert.match(native(Array(9).fill(ap), Array(9).fill(1)).message, /n 9 is outside \[0, 8\]/);
    assert.match(native([ap], [1], -1).message, /n -1 is outside/);
    using other = await (await testEngine()).loadModel(base);
    const foreign = await other.adapters.load(join(await root, "a"));
    assert.deepEqual(native([ap, foreign._handle.ptr], [1, 1]), {
      code: 1,
      message: "cannot set adapters: adapter 1 was loaded for another model than the session's",
    });
    // Nothing changed: the same composition, users and logits.
    assert.deepEqual([a.users, b.users, c.users, foreign.users], [1, 1, 0, 0]);
    assert.deepEqual(s.adapters.map((t) => [t.adapter.name, t.weight]), [["a", 0.5], ["a", 0.5], ["b", 2]]);
    await s.decode(ids[0]);
    using again = model.session({ contextSize: 32 });
    await again.prefill(ids, { adapters: s.adapters });
    assert.ok(sameValues(again.logits(), before));
    // An adapter in a composition is neither unloaded nor evicted; out of it, it is.
    assert.throws(() => b.dispose(), (e: KvfoldError) => e.code === "INVALID_STATE");
    model.adapters.budgetBytes = 0; // evicts whatever no session uses: c only
    assert.deepEqual([a.disposed, b.disposed, c.disposed], [false, false, true]);
    model.adapters.budgetBytes = Infinity;
    again.dispose();
    await s.setAdapters([{ adapter: "a", weight: 1 }]);
    assert.deepEqual([a.users, b.users], [1, 0]);
    b.dispose();
    assert.equal(b.disposed, true);
  });
});

// A model stand-in for the rule: only its registry's names are read.
const withNames = (...names: string[]) =>
  ({ adapters: { list: () => names.map((name) => ({ name })) } }) as unknown as Model;

Deno.test("compose: the answer rule weighs each group's adapter by its share of the retrieval scores", () => {
  const m = withNames("harbour", "farm");
  const chunks = [
    { group: "harbour", score: 3 },
    { group: "farm", score: 1 },
    { group: "harbour", score: 2 },
    { group: "docs", score: 4 }, // no adapter: its share stays with the base model
    { group: null, score: 9 }, // no group: no say
  ];
  assert.deepEqual(adaptersForChunks(m, chunks), [{ adapter: "harbour", weight: 0.5 }, {
    adapter: "farm",
    weight: 0.1,
  }]);
  assert.deepEqual(adaptersForChunks(m, chunks, { adapterMode: "best" }), []); // docs, the best chunk, has none
  assert.deepEqual(adaptersForChunks(m, chunks.slice(0, 3), { adapterMode: "best" }), [{
    adapter: "harbour",
    weight: 1,
  }]);
  assert.deepEqual(adaptersForChunks(m, chunks, { adapterMode: "none" }), []);
  // Unknown scores (getChunks gives 0): each chunk counts one.
  const unscored = [{ group: "harbour", score: 0 }, { group: "farm", score: 0 }, { group: "farm" }];
  assert.deepEqual(adaptersForChunks(m, unscored), [{ adapter: "harbour", weight: 1 / 3 }, {
    adapter: "farm",
    weight: 2 / 3,
  }]);
  assert.deepEqual(adaptersForChunks(m, unscored, { adapterMode: "best" }), [{
    adapter: "harbour",
    weight: 1,
  }]);
  // One group: exactly weight 1, today's single-adapter answer.
  assert.deepEqual(adaptersForChunks(m, [{ group: "farm", score: 0.3 }, { group: "farm", score: 0.4 }]), [
    { adapter: "farm", weight: 1 },
  ]);
  // Explicit choices win, in order: adapters, adapter, group.
  assert.deepEqual(
    adaptersForChunks(m, chunks, { adapters: [{ adapter: "farm", weight: 2 }], adapter: null }),
    [
      { adapter: "farm", weight: 2 },
    ],
  );
  assert.deepEqual(adaptersForChunks(m, chunks, { adapter: null }), []);
  assert.deepEqual(adaptersForChunks(m, chunks, { group: "farm", adapterMode: "none" }), [{
    adapter: "farm",
    weight: 1,
  }]);
  // More groups with adapters than a session composes: the heaviest are kept.
  const many = withNames(...Array.from({ length: 10 }, (_, i) => `g${i}`));
  const spread = Array.from({ length: 10 }, (_, i) => ({ group: `g${i}`, score: i + 1 }));
  const kept = adaptersForChunks(many, spread);
  assert.deepEqual(kept.map((t) => t.adapter), ["g2", "g3", "g4", "g5", "g6", "g7", "g8", "g9"]);
  assert.equal(kept[0].weight, 3 / 55);
  assert.throws(() => adaptersForChunks(m, chunks, { adapterMode: "all" as "none" }), RangeError);
  assert.equal(
    describeAdapters([{ adapter: "harbour", weight: 0.5 }, { adapter: "farm", weight: 1 }]),
    "harbour×0.5 + farm",
  );
});

Deno.test("compose: answerFromChunks over two groups decodes with the scored composition", async () => {
  const docs = [
    {
      source: "ships.txt",
      group: "harbour",
      text: "The ship Aurora left the harbour at dawn with timber. ".repeat(4),
    },
    {
      source: "bees.txt",
      group: "farm",
      text: "Bees keep the orchard alive and the hives full of honey. ".repeat(4),
    },
  ];
  await withCompressorAndStore(async (compressor, store, dir) => {
    const model = compressor.model;
    for (const [name, seed] of [["harbour", 3], ["farm", 4]] as const) {
      await makeTestAdapter(join(dir, name), { base: model.dir, rank: 4, seed });
      await model.adapters.load(join(dir, name), { name });
    }
    const first = (source: string) => store.getChunks(store.getDocument(source)!.chunkIds.slice(0, 1))[0];
    const hits: RetrievedChunk[] = [{ ...first("ships.txt"), score: 3 }, { ...first("bees.txt"), score: 1 }];
    const question = someIds(5, model.info.vocabSize, 81);
    const greedy = { temperature: 0, maxTokens: 6, ignoreEos: true } as const;
    const answer = async (mode?: "compose" | "best" | "none") => {
      let stats: AnswerStats | undefined;
      let text = "";
      for await (
        const p of answerFromChunks(model, hits, question, {
          ...greedy,
          adapterMode: mode,
          onStats: (s) => (stats = s),
        })
      ) text += p;
      return { text, stats: stats! };
    };
    const composed = await answer();
    assert.deepEqual(composed.stats.adapters, [{ name: "harbour", weight: 0.75 }, {
      name: "farm",
      weight: 0.25,
    }]);
    assert.equal(composed.stats.adapter, "harbour×0.75 + farm×0.25");
    // The same as a session given that composition by hand.
    using s = model.session({ contextSize: 64 });
    await s.setAdapters([{ adapter: "harbour", weight: 0.75 }, { adapter: "farm", weight: 0.25 }]);
    const prefix = concatVectors(hits.map((h) => h.vectors));
    if (prefix.bf16) await s.prefillEmbeddings(prefix.bf16, { dtype: "bf16" });
    else await s.prefillEmbeddings(prefix.data);
    let manual = "";
    for await (const p of s.generate({ ...greedy, prompt: question })) manual += p;
    assert.equal(composed.text, manual);
    const best = await answer("best");
    assert.deepEqual(best.stats.adapters, [{ name: "harbour", weight: 1 }]);
    assert.equal(best.stats.adapter, "harbour");
    const none = await answer("none");
    assert.deepEqual([none.stats.adapter, none.stats.adapters], [null, []]);
    assert.ok(
      new Set([composed.stats.tokens.join(), best.stats.tokens.join(), none.stats.tokens.join()]).size >= 2,
    );
  }, docs);
});

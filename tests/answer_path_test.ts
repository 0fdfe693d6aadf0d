// The one answer path (src/lloco.ts answerFromChunks): its adapter rule, the same answer through
// the core, LangChain and LlamaIndex, and summary vectors kept 16-bit from the store to the model.
import assert from "node:assert/strict";
import { HumanMessage } from "npm:@langchain/core@1.4.0/messages";
import {
  adapterForChunks,
  answerFromChunks,
  type AnswerOptions,
  type AnswerStats,
  concatVectors,
  type DocumentStore,
  KvfoldError,
  type Model,
  type RetrievedChunk,
  Session,
} from "../mod.ts";
import { ChatKvfold, type KvfoldResponseMetadata, payloadRef } from "../integrations/langchain/mod.ts";
import { Document } from "npm:@langchain/core@1.4.0/documents";
import { type KvfoldGenerationStats, KvfoldLLM } from "../integrations/llamaindex/mod.ts";
import { f32ToBf16 } from "../src/formats/safetensors.ts";
import { makeTestAdapter } from "../testing/mod.ts";
import { withCompressorAndStore } from "./_fixtures.ts";

const DOCS = [
  {
    source: "ships.txt",
    group: "harbour",
    text: "The harbour log lists every ship. The ship Aurora left the harbour at dawn with timber. ".repeat(
      3,
    ),
  },
  {
    source: "bees.txt",
    group: "farm",
    text: "Bees keep the orchard alive. Honey from the ship hives was sold at the harbour market. ".repeat(3),
  },
];
const QUESTION = "Which ship left the harbour?";
/** Greedy, fixed length: two runs over the same inputs give the same text. */
const GREEDY = { temperature: 0, maxTokens: 8, ignoreEos: true } as const;

interface Kit {
  model: Model;
  store: DocumentStore;
  dir: string;
}

/** DOCS compressed into a store (one group each, or all in `group`), with the compressor's model. */
function withStore(fn: (kit: Kit) => Promise<void>, group?: string): Promise<void> {
  const docs = DOCS.map((d) => ({ ...d, group: group ?? d.group }));
  return withCompressorAndStore(
    (compressor, store, dir) => fn({ model: compressor.model, store, dir }),
    docs,
  );
}

/** Registers a small random LoRA under `name`. */
async function registerLora(model: Model, dir: string, name: string, seed: number): Promise<void> {
  await makeTestAdapter(`${dir}/${name}-lora`, { base: model.dir, rank: 4, seed });
  await model.adapters.load(`${dir}/${name}-lora`, { name });
}

async function core(
  model: Model,
  chunks: readonly RetrievedChunk[],
  options: AnswerOptions = {},
): Promise<{ text: string; stats: AnswerStats }> {
  const pieces = answerFromChunks(model, chunks, QUESTION, { ...GREEDY, ...options });
  let text = "";
  for (;;) {
    const r = await pieces.next();
    if (r.done) return { text, stats: r.value };
    text += r.value;
  }
}

async function langchain(
  model: Model,
  chunks: readonly RetrievedChunk[],
): Promise<{ text: string; meta: KvfoldResponseMetadata }> {
  const documents = chunks.map((c) =>
    new Document({ pageContent: c.text, metadata: { kvfold: payloadRef([c]) } })
  );
  const reply = await new ChatKvfold({ model, ...GREEDY }).invoke([new HumanMessage(QUESTION)], {
    documents,
  });
  return { text: reply.text, meta: reply.response_metadata.kvfold as KvfoldResponseMetadata };
}

async function llamaindex(
  model: Model,
  chunks: readonly RetrievedChunk[],
  group?: string,
): Promise<{ text: string; stats: KvfoldGenerationStats }> {
  const reply = await new KvfoldLLM({ model, ...GREEDY }).chat({
    messages: [{ role: "user", content: QUESTION }],
    additionalChatOptions: { contexts: chunks, group },
  });
  return { text: String(reply.message.content), stats: reply.raw as KvfoldGenerationStats };
}

const isMixedGroups = (e: unknown) =>
  e instanceof KvfoldError && e.code === "INVALID_ARGUMENT" &&
  /adapter groups harbour, farm/.test(e.message) &&
  /different adapters \(harbour, none\)/.test(e.message) && /pass adapter or group/.test(e.message);

Deno.test("answer path: the adapter rule (explicit wins, else the chunks' group must agree on one)", async () => {
  await withStore(async ({ model, dir }) => {
    const chunk = (group: string | null) => ({ group });
    // No adapters registered: every group names none, so even mixed groups answer with the base model.
    assert.equal(adapterForChunks(model, []), null);
    assert.equal(adapterForChunks(model, [chunk("harbour"), chunk("farm")]), null);
    await registerLora(model, dir, "harbour", 3);
    assert.equal(adapterForChunks(model, [chunk("harbour")]), "harbour");
    assert.equal(adapterForChunks(model, [chunk(null), chunk("harbour"), chunk("")]), "harbour");
    assert.equal(adapterForChunks(model, [chunk("farm")]), null);
    assert.throws(() => adapterForChunks(model, [chunk("harbour"), chunk("farm")]), isMixedGroups);
    // An explicit adapter (or null) wins; an explicit group replaces the chunks' groups.
    assert.equal(adapterForChunks(model, [chunk("harbour"), chunk("farm")], { adapter: null }), null);
    assert.equal(adapterForChunks(model, [chunk("farm")], { adapter: "harbour" }), "harbour");
    assert.equal(adapterForChunks(model, [chunk("farm")], "harbour"), "harbour");
    assert.equal(adapterForChunks(model, [chunk("harbour"), chunk("farm")], { group: "farm" }), null);
    assert.equal(adapterForChunks(model, [chunk("farm")], { group: "harbour" }), "harbour");
    assert.equal(adapterForChunks(model, [chunk("harbour")], { group: null }), null);
    // Two registered groups disagree too.
    await registerLora(model, dir, "farm", 4);
    assert.throws(
      () => adapterForChunks(model, [chunk("harbour"), chunk("farm")]),
      (e: unknown) => e instanceof KvfoldError && /different adapters \(harbour, farm\)/.test(e.message),
    );
  });
});

Deno.test("answer path: core, LangChain and LlamaIndex give the same text with the group's adapter", async () => {
  await withStore(async ({ model, store, dir }) => {
    const hits = store.retrieve(QUESTION, { k: 2 });
    assert.equal(hits.length, 2);
    const base = await core(model, hits);
    assert.equal(base.stats.adapter, null);
    assert.equal(base.stats.group, "demo");
    assert.equal((await langchain(model, hits)).text, base.text);
    assert.equal((await llamaindex(model, hits)).text, base.text);

    await registerLora(model, dir, "demo", 3);
    const want = await core(model, hits);
    assert.notEqual(want.text, base.text, "the adapter changed nothing");
    assert.equal(want.stats.adapter, "demo");
    assert.equal(want.stats.prefixPositions, hits.reduce((n, h) => n + h.vectors.rows, 0));
    const lc = await langchain(model, hits);
    assert.equal(lc.text, want.text);
    assert.equal(lc.meta.adapter, "demo");
    const li = await llamaindex(model, hits);
    assert.equal(li.text, want.text);
    assert.equal(li.stats.adapter, "demo");
    assert.equal(li.stats.group, "demo");
    // An explicit null decodes with the base model again.
    assert.equal((await core(model, hits, { adapter: null })).text, base.text);
  }, "demo");
});

Deno.test("answer path: groups whose adapters differ compose alike in core, LangChain and LlamaIndex", async () => {
  await withStore(async ({ model, store, dir }) => {
    // The first chunk of each document, harbour's first: the order the groups are named in.
    const hits = DOCS.map((d) => store.getChunks(store.getDocument(d.source)!.chunkIds.slice(0, 1))[0]);
    assert.deepEqual(hits.map((h) => h.group), ["harbour", "farm"]);
    // Both groups without an adapter: all three answer with the base model, identically.
    const base = await core(model, hits);
    assert.equal(base.stats.adapter, null);
    assert.equal(base.stats.group, null);
    assert.equal((await langchain(model, hits)).text, base.text);
    assert.equal((await llamaindex(model, hits)).text, base.text);

    await registerLora(model, dir, "harbour", 3);
    // Unscored chunks (getChunks) weigh one each: harbour's adapter at 1/2, farm's half stays base.
    const mixed = await core(model, hits);
    assert.deepEqual(mixed.stats.adapters, [{ name: "harbour", weight: 0.5 }]);
    assert.equal(mixed.stats.adapter, "harbour×0.5");
    assert.notEqual(mixed.text, base.text, "the composition changed nothing");
    const lcMixed = await langchain(model, hits);
    assert.equal(lcMixed.text, mixed.text);
    assert.deepEqual(lcMixed.meta.adapters, mixed.stats.adapters);
    assert.equal((await llamaindex(model, hits)).text, mixed.text);
    // Choosing a group answers, the same through the core and LlamaIndex.
    const farm = await core(model, hits, { group: "farm" });
    assert.equal(farm.stats.adapter, null);
    assert.equal(farm.text, base.text);
    const li = await llamaindex(model, hits, "farm");
    assert.equal(li.text, farm.text);
    assert.equal(li.stats.group, "farm");
    const harbour = await core(model, hits, { group: "harbour" });
    assert.equal(harbour.stats.adapter, "harbour");
    assert.notEqual(harbour.text, base.text, "the adapter changed nothing");
    assert.equal((await llamaindex(model, hits, "harbour")).text, harbour.text);
  });
});

/** Seeded values spread like summary vectors, rounded to bf16: the bits and their f32 values. */
function bf16Block(n: number, seed: number): { bits: Uint16Array; f32: Float32Array } {
  let s = seed;
  const bits = new Uint16Array(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    bits[i] = f32ToBf16(((s >>> 8) / 2 ** 24 - 0.5) * 4);
  }
  const wide = new Uint32Array(n);
  for (let i = 0; i < n; i++) wide[i] = bits[i] << 16;
  return { bits, f32: new Float32Array(wide.buffer) };
}

Deno.test("answer path: bf16 vectors give bit-identical logits to their f32 widening", async () => {
  await withStore(async ({ model }) => {
    const H = model.info.hiddenSize;
    const { bits, f32 } = bf16Block(5 * H, 7);
    const logits = async (run: (s: Session) => Promise<Float32Array | null>) => {
      using s = model.session({ contextSize: 16 });
      const all = (await run(s))!;
      await s.prefill(model.tokenizer.encode("Which ship?"));
      return [new Uint32Array(all.buffer), new Uint32Array(s.logits().buffer)];
    };
    const wide = await logits((s) => s.prefillEmbeddings(f32, { logits: "all" }));
    const narrow = await logits((s) => s.prefillEmbeddings(bits, { dtype: "bf16", logits: "all" }));
    assert.equal(wide[0].length, 5 * model.info.vocabSize);
    assert.deepEqual(narrow[0], wide[0]); // every prefix position, bit for bit
    assert.deepEqual(narrow[1], wide[1]); // and the prompt read after it
  });
});

Deno.test("answer path: the store's bf16 bits reach prefillEmbeddings as one 16-bit block", async () => {
  await withStore(async ({ model, store }) => {
    const hits = store.retrieve(QUESTION, { k: 2 });
    assert.equal(hits.length, 2);
    // The store hands out the stored bits; `data` is their exact f32 value, read on demand.
    for (const h of hits) {
      const bits = h.vectors.bf16!;
      assert.ok(bits instanceof Uint16Array);
      assert.equal(bits.length, h.vectors.rows * h.vectors.hidden);
      assert.deepEqual(h.vectors.data.map((x) => f32ToBf16(x)), new Float32Array(bits));
      assert.deepEqual(Object.keys(h.vectors), ["rows", "hidden", "data"]); // compares as before
    }
    const joined = concatVectors(hits.map((h) => h.vectors));
    assert.deepEqual(joined.bf16, new Uint16Array([...hits[0].vectors.bf16!, ...hits[1].vectors.bf16!]));
    assert.deepEqual(joined.data, new Float32Array([...hits[0].vectors.data, ...hits[1].vectors.data]));
    // A block built in memory joins as f32.
    const mixed = concatVectors([hits[0].vectors, {
      rows: 1,
      hidden: hits[0].vectors.hidden,
      data: hits[1].vectors.data.slice(0, hits[0].vectors.hidden),
    }]);
    assert.equal(mixed.bf16, undefined);
    // Replacing `data` drops the bits, which no longer describe the values.
    const replaced = store.getChunks([hits[0].chunkId])[0].vectors;
    replaced.data = new Float32Array(replaced.data.length).fill(0.5);
    assert.equal(replaced.bf16, undefined);
    assert.equal(concatVectors([replaced, hits[1].vectors]).data[0], 0.5);
    assert.deepEqual(mixed.data.subarray(0, hits[0].vectors.data.length), hits[0].vectors.data);

    const calls: { embeddings: Float32Array | Uint16Array; dtype?: string }[] = [];
    const original = Session.prototype.prefillEmbeddings;
    Session.prototype.prefillEmbeddings = function (embeddings, options = {}) {
      calls.push({ embeddings, dtype: options.dtype });
      return original.call(this, embeddings, options);
    };
    let narrow: string, wide: string;
    try {
      narrow = (await core(model, hits)).text;
      // The same values as in-memory f32 vectors: the f32 path, the same answer.
      const asF32 = hits.map((h) => ({
        ...h,
        vectors: { rows: h.vectors.rows, hidden: h.vectors.hidden, data: h.vectors.data },
      }));
      wide = (await core(model, asF32)).text;
    } finally {
      Session.prototype.prefillEmbeddings = original;
    }
    assert.equal(calls.length, 2);
    assert.ok(calls[0].embeddings instanceof Uint16Array);
    assert.equal(calls[0].dtype, "bf16");
    assert.deepEqual(calls[0].embeddings, joined.bf16);
    assert.ok(calls[1].embeddings instanceof Float32Array);
    assert.deepEqual(calls[1].embeddings, joined.data);
    assert.equal(narrow, wide);
  });
});

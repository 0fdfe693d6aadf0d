// One constructor shape across both integrations: an options object, and a TypeError that names what
// came when a path string, a bare model or store, or a wrong object is passed. Also the LlamaIndex
// LLM's top-level `signal` and the deprecated positional forms that still work.
import assert from "node:assert/strict";
import { Document, type DocumentInterface } from "npm:@langchain/core@1.4.0/documents";
import { HumanMessage } from "npm:@langchain/core@1.4.0/messages";
import { ChatPromptTemplate } from "npm:@langchain/core@1.4.0/prompts";
import { RunnableLambda } from "npm:@langchain/core@1.4.0/runnables";
import { compressIntoStore, type Compressor, type DocumentStore, type Model } from "../mod.ts";
import * as lc from "../integrations/langchain/mod.ts";
import * as li from "../integrations/llamaindex/mod.ts";
import { withCompressorAndStore } from "./_fixtures.ts";

interface Loaded {
  model: Model;
  compressor: Compressor;
  store: DocumentStore;
}

function withLoaded(fn: (l: Loaded) => Promise<void> | void): Promise<void> {
  return withCompressorAndStore((compressor, store) => fn({ model: compressor.model, compressor, store }));
}

type Ctor = new (options: never) => unknown;

const MODEL_CLASSES: [string, Ctor][] = [
  ["ChatKvfold", lc.ChatKvfold as unknown as Ctor],
  ["KvfoldLLM", lc.KvfoldLLM as unknown as Ctor],
  ["KvfoldLLM", li.KvfoldLLM as unknown as Ctor],
];
const STORE_CLASSES: [string, Ctor][] = [
  ["KvfoldRetriever", lc.KvfoldRetriever as unknown as Ctor],
  ["KvfoldRetriever", li.KvfoldRetriever as unknown as Ctor],
];
const COMPRESSOR_CLASSES: [string, Ctor][] = [
  ["KvfoldDocumentCompressor", lc.KvfoldDocumentCompressor as unknown as Ctor],
  ["KvfoldNodeCompressor", li.KvfoldNodeCompressor as unknown as Ctor],
];

Deno.test("constructors: model classes refuse a path string, a bare model and wrong objects", async () => {
  await withLoaded(({ model }) => {
    for (const [name, Cls] of MODEL_CLASSES) {
      assert.throws(() => new Cls("./models/tiny" as never), {
        name: "TypeError",
        message: `${name} takes { model }, a loaded model (await kv.loadModel(path)), not the path string ` +
          '"./models/tiny"',
      });
      assert.throws(() => new Cls({ model: "./models/tiny" } as never), {
        name: "TypeError",
        message: `${name} takes model, a loaded model (await kv.loadModel(path)), not the path string ` +
          '"./models/tiny"',
      });
      assert.throws(() => new Cls({ model: model.tokenizer } as never), {
        name: "TypeError",
        message: `${name} takes { model }, a loaded kvfold Model; got model: a TextTokenizer`,
      });
      assert.throws(() => new Cls(undefined as never), {
        name: "TypeError",
        message: `${name} takes { model }, a loaded kvfold Model; got undefined`,
      });
    }
    // LangChain's models take an optional store for payload references.
    for (const Cls of [lc.ChatKvfold, lc.KvfoldLLM]) {
      assert.throws(() => new Cls({ model, store: "kb.sqlite" } as never), {
        name: "TypeError",
        message:
          /takes store, an open store \(DocumentStore\.open\(path\)\), not the path string "kb\.sqlite"$/,
      });
      assert.throws(() => new Cls({ model, store: {} } as never), {
        name: "TypeError",
        message: /takes \{ store \}, an open kvfold DocumentStore; got store: a Object$/,
      });
    }
    // A bare model is the deprecated positional form of the LlamaIndex LLM, and refused by LangChain's.
    for (const Cls of [lc.ChatKvfold, lc.KvfoldLLM]) {
      assert.throws(() => new Cls(model as never), {
        name: "TypeError",
        message: /takes \{ model \}, an options object; got a Model itself$/,
      });
    }
  });
});

Deno.test("constructors: retrievers and compressors refuse path strings and wrong objects", async () => {
  await withLoaded(({ model, compressor, store }) => {
    for (const [name, Cls] of STORE_CLASSES) {
      assert.throws(() => new Cls("kb.sqlite" as never), {
        name: "TypeError",
        message: `${name} takes { store }, an open store (DocumentStore.open(path)), not the path string ` +
          '"kb.sqlite"',
      });
      assert.throws(() => new Cls({ store: "kb.sqlite", k: 2 } as never), {
        name: "TypeError",
        message:
          /takes store, an open store \(DocumentStore\.open\(path\)\), not the path string "kb\.sqlite"/,
      });
      assert.throws(() => new Cls({ store: model } as never), {
        name: "TypeError",
        message: `${name} takes { store }, an open kvfold DocumentStore; got store: a Model`,
      });
      assert.throws(() => new Cls({ k: 2 } as never), {
        name: "TypeError",
        message: `${name} takes { store }, an open kvfold DocumentStore; got store: undefined`,
      });
      assert.throws(() => new Cls({ store, k: 0 } as never), RangeError);
    }
    for (const [name, Cls] of COMPRESSOR_CLASSES) {
      assert.throws(() => new Cls("./models/lloco" as never), {
        name: "TypeError",
        message:
          `${name} takes { compressor, store }, a loaded compressor (await Compressor.load(kv, path)), ` +
          'not the path string "./models/lloco"',
      });
      assert.throws(() => new Cls({ compressor: "./models/lloco", store } as never), {
        name: "TypeError",
        message: /takes compressor, a loaded compressor .*not the path string "\.\/models\/lloco"/,
      });
      assert.throws(() => new Cls({ compressor: model, store } as never), {
        name: "TypeError",
        message: `${name} takes { compressor, store }, a loaded kvfold Compressor; got compressor: a Model`,
      });
      assert.throws(() => new Cls({ compressor, store: "kb.sqlite" } as never), {
        name: "TypeError",
        message:
          /takes store, an open store \(DocumentStore\.open\(path\)\), not the path string "kb\.sqlite"/,
      });
      assert.throws(() => new Cls({ compressor } as never), {
        name: "TypeError",
        message: `${name} takes { store }, an open kvfold DocumentStore; got store: undefined`,
      });
    }
    // LangChain's compressor has no positional form: a bare compressor is refused.
    assert.throws(() => new lc.KvfoldDocumentCompressor(compressor as never), {
      name: "TypeError",
      message: /takes \{ compressor, store \}, an options object; got a Compressor itself$/,
    });
  });
});

Deno.test("constructors: the options objects build working instances; the positional forms still do", async () => {
  await withLoaded(({ model, compressor, store }) => {
    const llm = new li.KvfoldLLM({ model, modelName: "tiny", maxTokens: 3 });
    assert.equal(llm.model, model);
    assert.equal(llm.metadata.model, "tiny");
    assert.equal(llm.metadata.maxTokens, 3);
    const legacyLlm = new li.KvfoldLLM(model, { modelName: "old", maxTokens: 5 });
    assert.equal(legacyLlm.model, model);
    assert.equal(legacyLlm.metadata.model, "old");
    assert.equal(legacyLlm.metadata.maxTokens, 5);

    const retriever = new li.KvfoldRetriever({ store, k: 3, group: "g" });
    assert.deepEqual([retriever.store, retriever.k, retriever.group], [store, 3, "g"]);
    const legacyRetriever = new li.KvfoldRetriever(store, { k: 2 });
    assert.deepEqual([legacyRetriever.store, legacyRetriever.k], [store, 2]);

    const nodes = new li.KvfoldNodeCompressor({ compressor, store, chunkTokens: 64 });
    assert.deepEqual([nodes.compressor, nodes.store], [compressor, store]);
    const legacyNodes = new li.KvfoldNodeCompressor(compressor, store, { chunkTokens: 64 });
    assert.deepEqual([legacyNodes.compressor, legacyNodes.store], [compressor, store]);
    assert.throws(() => new li.KvfoldNodeCompressor({ compressor, store, chunkTokens: 0 }), RangeError);

    const lcRetriever = new lc.KvfoldRetriever({ store, k: 2 });
    assert.equal(lcRetriever.store, store);
    const docs = new lc.KvfoldDocumentCompressor({ compressor, store, group: "g" });
    assert.deepEqual([docs.compressor, docs.store, docs.group], [compressor, store, "g"]);
    const chat = new lc.ChatKvfold({ model, store });
    assert.deepEqual([chat.model, chat.store], [model, store]);
  });
});

Deno.test("constructors: the LlamaIndex LLM honours a top-level signal in chat, as in complete", async () => {
  await withLoaded(async ({ model }) => {
    const llm = new li.KvfoldLLM({ model, temperature: 0, maxTokens: 64, ignoreEos: true });
    const messages = [{ role: "user" as const, content: "Which ship left the harbour?" }];

    const aborted = AbortSignal.abort(new Error("stop now"));
    await assert.rejects(llm.chat({ messages, signal: aborted }), { message: /abort|stop now/i });

    // Mid-stream: abort after the first piece; the stream ends with an error, well before 64 pieces.
    const ac = new AbortController();
    const stream = await llm.chat({ messages, stream: true, signal: ac.signal });
    let pieces = 0;
    await assert.rejects(async () => {
      for await (const _ of stream) {
        pieces++;
        ac.abort();
      }
    });
    assert.equal(pieces, 1);

    // Either signal aborts when both are given.
    const outer = new AbortController();
    const inner = new AbortController();
    const both = await llm.chat({
      messages,
      stream: true,
      signal: outer.signal,
      additionalChatOptions: { signal: inner.signal },
    });
    let n = 0;
    await assert.rejects(async () => {
      for await (const _ of both) {
        n++;
        inner.abort();
      }
    });
    assert.equal(n, 1);

    // Without an abort the same call runs to its length.
    const whole = await llm.chat({ messages, signal: new AbortController().signal });
    assert.equal((whole.raw as li.KvfoldGenerationStats).generatedTokens, 64);
  });
});

Deno.test("createKvfoldQaChain: a prompt template (string or ChatPromptTemplate) shapes the question", async () => {
  await withLoaded(async ({ model, compressor, store }) => {
    const GREEDY = { temperature: 0, maxTokens: 6, ignoreEos: true };
    await compressIntoStore(compressor, store, {
      source: "ships.txt",
      text: "The ship Aurora left the harbour at dawn with timber. ".repeat(3),
    }, { chunkTokens: 64, segmentLength: 32 });
    const question = "Which ship left the harbour?";
    const chat = new lc.ChatKvfold({ model, store, ...GREEDY });
    const payloadDocs = await new lc.KvfoldRetriever({ store, k: 1 }).invoke(question);
    assert.equal(payloadDocs.length, 1);
    const textDoc = new Document({ pageContent: "Bees make honey.", metadata: {} });
    const retriever = RunnableLambda.from((_q: string): DocumentInterface[] => [...payloadDocs, textDoc]);

    // `{context}` gets the text documents; the payload document is read from its vectors.
    const template = "Context: {context}\nQ: {question}";
    const expected = (await chat.invoke([new HumanMessage(`Context: Bees make honey.\nQ: ${question}`)], {
      documents: payloadDocs,
    })).text;
    const byString = lc.createKvfoldQaChain({ retriever, model: chat, prompt: template });
    assert.equal(await byString.invoke(question), expected);
    const byTemplate = lc.createKvfoldQaChain({
      retriever,
      model: chat,
      prompt: ChatPromptTemplate.fromMessages([["human", template]]),
    });
    assert.equal(await byTemplate.invoke(question), expected);

    // Without `{context}` the text documents go through the model's formatContext, as with no prompt.
    const noContext = lc.createKvfoldQaChain({ retriever, model: chat, prompt: "Q: {question}" });
    const expectedNoContext = (await chat.invoke([new HumanMessage(`Q: ${question}`)], {
      documents: [...payloadDocs, textDoc],
    })).text;
    assert.equal(await noContext.invoke(question), expectedNoContext);

    assert.throws(() => lc.createKvfoldQaChain({ retriever, model: chat, prompt: 42 as never }), {
      name: "TypeError",
      message: "createKvfoldQaChain takes prompt, a prompt template or a template string",
    });
  });
});

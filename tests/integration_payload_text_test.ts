// Stock chains answer from summary vectors (integrations/_payload_text.ts): a plain LCEL
// `prompt | ChatKvfold | parser` and a stock LlamaIndex response synthesizer write the retrieved text
// into the prompt; the kvfold model cuts the text of documents kvfold handed out with a payload and
// reads their vectors instead. Checked against answerFromChunks on the same chunks and cut prompt.
import assert from "node:assert/strict";
import { ChatPromptTemplate } from "npm:@langchain/core@1.4.0/prompts";
import { StringOutputParser } from "npm:@langchain/core@1.4.0/output_parsers";
import { RunnableLambda } from "npm:@langchain/core@1.4.0/runnables";
import type { AIMessageChunk } from "npm:@langchain/core@1.4.0/messages";
import type { DocumentInterface } from "npm:@langchain/core@1.4.0/documents";
import { getResponseSynthesizer, MetadataMode } from "npm:llamaindex@0.12.1";
import { type AnswerContext, answerFromChunks, type ChatMessage, type Model } from "../mod.ts";
import { ChatKvfold, KvfoldRetriever } from "../integrations/langchain/mod.ts";
import type { CompletionResponse } from "npm:@llamaindex/core@0.6.22/llms";
import { KvfoldLLM, KvfoldRetriever as LlamaRetriever } from "../integrations/llamaindex/mod.ts";
import {
  forgetPayloadTexts,
  MIN_PAYLOAD_TEXT,
  rememberPayloadText,
  takePayloadTexts,
} from "../integrations/_payload_text.ts";
import { withCompressorAndStore } from "./_fixtures.ts";

const DOCS = [
  {
    source: "ships.txt",
    text: "The harbour log lists every ship. The ship Aurora left the harbour at dawn with timber. ".repeat(
      6,
    ),
    group: "logs",
  },
  {
    source: "bees.txt",
    text: "Bees keep the orchard alive. Honey from the hives was sold at the market in June. ".repeat(6),
    group: "logs",
  },
];
const QUESTION = "Which ship left the harbour?";
const GREEDY = { temperature: 0, maxTokens: 8, ignoreEos: true } as const;
const TEMPLATE = "Context:\n{context}\n\nQuestion: {question}";

/** kvfold's counters on a LangChain message. */
function kvfoldMeta(message: unknown): { prefixPositions: number; promptTokens: number } {
  return (message as AIMessageChunk).response_metadata.kvfold as {
    prefixPositions: number;
    promptTokens: number;
  };
}

function fakeChunk(id: number, text: string): AnswerContext & { text: string } {
  return {
    chunkId: id,
    source: "a.txt",
    text,
    group: null,
    vectors: { rows: 1, hidden: 2, data: new Float32Array(2) },
  };
}

async function answer(model: Model, chunks: readonly AnswerContext[], prompt: string | ChatMessage[]) {
  let text = "";
  for await (const piece of answerFromChunks(model, chunks, prompt, GREEDY)) text += piece;
  return text;
}

Deno.test("payload text: cut in order of appearance, longest first, short texts never matched", () => {
  forgetPayloadTexts();
  const doc = "The ship Aurora left the harbour at dawn. The ship Gull stayed in port all winter.";
  const [first, second] = [doc.slice(0, 41), doc.slice(42)];
  const a = fakeChunk(1, first),
    b = fakeChunk(2, second),
    whole = [fakeChunk(3, first), fakeChunk(4, second)];
  rememberPayloadText(first, [a]);
  rememberPayloadText(second, [b]);
  rememberPayloadText("short text", [fakeChunk(5, "short text")]);
  // Appearance order decides the prefix order, not the order remembered.
  let taken = takePayloadTexts([`x ${second} y`, `z ${first}`, "short text stays"]);
  assert.deepEqual(taken.texts, ["x  y", "z ", "short text stays"]);
  assert.deepEqual(taken.chunks, [b, a]);
  taken = takePayloadTexts([`${second} then ${first}`]);
  assert.deepEqual(taken.chunks, [b, a]);
  assert.equal(taken.texts[0], " then ");
  // The whole document's text wins over its chunks' texts inside it.
  rememberPayloadText(doc, whole);
  taken = takePayloadTexts([`Context: ${doc}`]);
  assert.deepEqual(taken.chunks, whole);
  assert.equal(taken.texts[0], "Context: ");
  // The same text twice is cut twice; its chunks join once.
  taken = takePayloadTexts([`${first}|${first}`]);
  assert.deepEqual(taken.chunks, [a]);
  assert.equal(taken.texts[0], "|");
  assert.ok("short text".length < MIN_PAYLOAD_TEXT);
  forgetPayloadTexts();
  assert.deepEqual(takePayloadTexts([doc]), { texts: [doc], chunks: [] });
});

Deno.test("payload text: a stock LCEL prompt | ChatKvfold | parser answers from the retrieved vectors", async () => {
  forgetPayloadTexts();
  await withCompressorAndStore(async (compressor, store) => {
    const model = compressor.model;
    const retriever = new KvfoldRetriever({ store, k: 2 });
    const chat = new ChatKvfold({ model, store, ...GREEDY });
    const prompt = ChatPromptTemplate.fromTemplate(TEMPLATE);
    const formatDocs = (docs: DocumentInterface[]) => docs.map((d) => d.pageContent).join("\n\n");
    const retrieved = await retriever.invoke(QUESTION);
    assert.equal(retrieved.length, 2);
    const chunks = store.retrieve(QUESTION, { k: 2 });

    const context = RunnableLambda.from(async (q: string) => ({
      context: formatDocs(await retriever.invoke(q)),
      question: q,
    }));
    const message = await context.pipe(prompt).pipe(chat).invoke(QUESTION);
    const meta = kvfoldMeta(message);
    assert.equal(meta.prefixPositions, chunks.reduce((n, c) => n + c.vectors.rows, 0));
    // What the model read: the vectors, then the template with the chunk texts cut out.
    let cutText = `Context:\n${formatDocs(retrieved)}\n\nQuestion: ${QUESTION}`;
    for (const d of retrieved) cutText = cutText.replace(d.pageContent, "");
    const cut = [{ role: "user" as const, content: cutText }];
    assert.equal(meta.promptTokens, model.encodePrompt(cut).length);
    const expected = await answer(model, chunks, cut);
    assert.equal(message.content, expected);
    const text = await context.pipe(prompt).pipe(chat).pipe(new StringOutputParser()).invoke(QUESTION);
    assert.equal(text, expected);

    // Opting out reads the text as text: no prefix, the full prompt's tokens.
    const plain = new ChatKvfold({ model, store, ...GREEDY, payloadText: false });
    const asText = kvfoldMeta(await context.pipe(prompt).pipe(plain).invoke(QUESTION));
    assert.equal(asText.prefixPositions, 0);
    const full = [{
      role: "user" as const,
      content: `Context:\n${formatDocs(retrieved)}\n\nQuestion: ${QUESTION}`,
    }];
    assert.equal(asText.promptTokens, model.encodePrompt(full).length);

    // Text kvfold never handed out with a payload stays text, even with the same words; a payload
    // text quoted inside longer text is still found.
    const edited = retrieved[0].pageContent.replace("ship", "boat");
    assert.notEqual(edited, retrieved[0].pageContent);
    const stranger = await prompt.pipe(chat).invoke({ context: edited, question: QUESTION });
    assert.equal(kvfoldMeta(stranger).prefixPositions, 0);
    const quoted = await prompt.pipe(chat).invoke({
      context: `${retrieved[0].pageContent} (quoted)`,
      question: QUESTION,
    });
    assert.equal(kvfoldMeta(quoted).prefixPositions, chunks[0].vectors.rows);
  }, DOCS);
  forgetPayloadTexts();
});

Deno.test("payload text: a stock LlamaIndex response synthesizer answers from the nodes' vectors", async () => {
  forgetPayloadTexts();
  await withCompressorAndStore(async (compressor, store) => {
    const model = compressor.model;
    const prompts: string[] = [];
    const raws: unknown[] = [];
    // Records what the synthesizer sent and what the model reported, through the public API.
    const llm = new KvfoldLLM({ model, ...GREEDY, contextWindow: 4096 });
    const complete = llm.complete.bind(llm) as (p: object) => Promise<CompletionResponse>;
    Object.assign(llm, {
      complete: async (params: { prompt: unknown }) => {
        prompts.push(String(params.prompt));
        const out = await complete({ ...params, stream: false });
        raws.push(out.raw);
        return out;
      },
    });
    const nodes = await new LlamaRetriever({ store, k: 2 }).retrieve(QUESTION);
    assert.equal(nodes.length, 2);
    const synthesizer = getResponseSynthesizer("compact", { llm });
    const response = await synthesizer.synthesize({ query: QUESTION, nodes });
    assert.equal(prompts.length, 1);
    const texts = nodes.map((n) => n.node.getContent(MetadataMode.NONE));
    for (const t of texts) {
      assert.ok(prompts[0].includes(t), "the synthesizer wrote the node text into the prompt");
    }
    const chunks = store.retrieve(QUESTION, { k: 2 });
    const stats = raws[0] as { prefixPositions: number };
    assert.equal(stats.prefixPositions, chunks.reduce((n, c) => n + c.vectors.rows, 0));
    // The same answer as kvfold's own path on the cut prompt.
    let cut = prompts[0];
    const order = texts.map((t) => ({ t, at: cut.indexOf(t) })).sort((a, b) => a.at - b.at);
    for (const { t } of order) cut = cut.replace(t, "");
    const byText = new Map(nodes.map((n) => [n.node.getContent(MetadataMode.NONE), n.node.metadata.chunkId]));
    const ordered = order.map(({ t }) => chunks.find((c) => c.chunkId === byText.get(t))!);
    assert.ok(ordered.every((c) => c !== undefined));
    const expected = await answer(model, ordered, cut);
    assert.equal(response.message.content, expected);
  }, DOCS);
  forgetPayloadTexts();
});

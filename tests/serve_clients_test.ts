// `kvfold serve` through stock clients on a real loopback socket: the official `openai` npm client
// and LangChain's `ChatOpenAI` get, greedy, exactly the text the in-process API gives (streamed and
// not, with and without an adapter, and from compressed context through the `kvfold` field).
import assert from "node:assert/strict";
import OpenAI from "openai";
import { ChatOpenAI } from "@langchain/openai";
import { answerFromChunks, type AnswerOptions, type ChatMessage, type Model, startServer } from "../mod.ts";
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
const QUESTION: ChatMessage[] = [{ role: "user", content: "Which ship left the harbour?" }];
const MAX_TOKENS = 8;

/** The in-process answer: greedy, fixed length. */
async function inProcess(model: Model, messages: ChatMessage[], options: AnswerOptions = {}, chunks = []) {
  let text = "";
  const opts = { temperature: 0, maxTokens: MAX_TOKENS, ignoreEos: true, ...options };
  for await (const piece of answerFromChunks(model, chunks, messages, opts)) text += piece;
  return text;
}

Deno.test("serve: openai client and ChatOpenAI get the in-process greedy text", async () => {
  await withCompressorAndStore(async (compressor, store, dir) => {
    const model = compressor.model;
    await makeTestAdapter(`${dir}/harbour-lora`, { base: model.dir, rank: 4, seed: 7 });
    await using server = startServer({
      model,
      port: 0,
      adapters: { harbour: `${dir}/harbour-lora` },
      stores: { kb: store },
      apiKey: "sk-test",
    });
    await server.ready;
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "sk-test", maxRetries: 0 });

    const models = await client.models.list();
    assert.deepEqual(models.data.map((m) => m.id), ["base", "base:harbour"]);

    const ignoreEos = { kvfold: { ignore_eos: true } };
    const base = await inProcess(model, QUESTION);
    const withAdapter = await inProcess(model, QUESTION, { adapter: "harbour" });
    assert.notEqual(base, withAdapter, "the adapter must change the answer for this test to mean anything");

    for (const [id, expected] of [["base", base], ["base:harbour", withAdapter]] as const) {
      const whole = await client.chat.completions.create({
        model: id,
        messages: QUESTION,
        max_tokens: MAX_TOKENS,
        temperature: 0,
        ...ignoreEos,
      } as OpenAI.ChatCompletionCreateParamsNonStreaming);
      assert.equal(whole.choices[0].message.content, expected, `${id}, not streamed`);
      assert.equal(whole.choices[0].finish_reason, "length");
      assert.equal(whole.usage?.completion_tokens, MAX_TOKENS);
      assert.equal(whole.usage?.prompt_tokens, model.encodePrompt(QUESTION).length);

      const stream = await client.chat.completions.create({
        model: id,
        messages: QUESTION,
        max_tokens: MAX_TOKENS,
        temperature: 0,
        stream: true,
        stream_options: { include_usage: true },
        ...ignoreEos,
      } as OpenAI.ChatCompletionCreateParamsStreaming);
      let text = "";
      let usage;
      for await (const chunk of stream) {
        text += chunk.choices[0]?.delta?.content ?? "";
        usage = chunk.usage ?? usage;
      }
      assert.equal(text, expected, `${id}, streamed`);
      assert.equal(usage?.completion_tokens, MAX_TOKENS);
    }

    // /v1/completions: the prompt as text, BOS added as the in-process API adds it.
    const prompt = "The harbour";
    let plain = "";
    for await (
      const p of answerFromChunks(model, [], model.encodePrompt(prompt), {
        temperature: 0,
        maxTokens: MAX_TOKENS,
        ignoreEos: true,
      })
    ) plain += p;
    const completion = await client.completions.create({
      model: "base",
      prompt,
      max_tokens: MAX_TOKENS,
      temperature: 0,
      ...ignoreEos,
    } as OpenAI.CompletionCreateParamsNonStreaming);
    assert.equal(completion.choices[0].text, plain);

    // Compressed context: retrieved by the question, decoded with the chunks' group's adapter.
    const chunks = store.retrieve(QUESTION[0].content, { k: 2, group: "harbour" });
    assert.ok(chunks.length > 0);
    const compressed = await inProcess(model, QUESTION, {}, chunks as never);
    const viaField = await client.chat.completions.create({
      model: "base",
      messages: QUESTION,
      max_tokens: MAX_TOKENS,
      temperature: 0,
      kvfold: { store: "kb", k: 2, group: "harbour", ignore_eos: true },
    } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    assert.equal(viaField.choices[0].message.content, compressed);
    const info = (viaField as unknown as { kvfold: { chunk_ids: number[]; adapter: string } }).kvfold;
    assert.deepEqual(info.chunk_ids, chunks.map((c) => c.chunkId));
    assert.equal(info.adapter, "harbour");
    // The same chunks by id, streamed.
    const byIds = await client.chat.completions.create({
      model: "base:harbour",
      messages: QUESTION,
      max_tokens: MAX_TOKENS,
      temperature: 0,
      stream: true,
      kvfold: { chunk_ids: chunks.map((c) => c.chunkId), ignore_eos: true },
    } as OpenAI.ChatCompletionCreateParamsStreaming);
    let streamed = "";
    for await (const chunk of byIds) streamed += chunk.choices[0]?.delta?.content ?? "";
    const byIdsRef = await inProcess(
      model,
      QUESTION,
      { adapter: "harbour" },
      store.getChunks(info.chunk_ids) as never,
    );
    assert.equal(streamed, byIdsRef);

    // LangChain's ChatOpenAI pointed at the server (configuration.baseURL).
    for (const [id, expected] of [["base", base], ["base:harbour", withAdapter]] as const) {
      const chat = new ChatOpenAI({
        model: id,
        apiKey: "sk-test",
        temperature: 0,
        maxTokens: MAX_TOKENS,
        maxRetries: 0,
        configuration: { baseURL: `${server.url}/v1` },
        modelKwargs: { kvfold: { ignore_eos: true } },
      });
      const reply = await chat.invoke(QUESTION.map((m) => ["human", m.content] as [string, string]));
      assert.equal(reply.content, expected, `ChatOpenAI ${id}`);
      let text = "";
      for await (const chunk of await chat.stream([["human", QUESTION[0].content]])) text += chunk.content;
      assert.equal(text, expected, `ChatOpenAI ${id}, streamed`);
    }
    const lcCompressed = new ChatOpenAI({
      model: "base",
      apiKey: "sk-test",
      temperature: 0,
      maxTokens: MAX_TOKENS,
      maxRetries: 0,
      configuration: { baseURL: `${server.url}/v1` },
      modelKwargs: { kvfold: { store: "kb", k: 2, group: "harbour", ignore_eos: true } },
    });
    assert.equal((await lcCompressed.invoke([["human", QUESTION[0].content]])).content, compressed);
  }, DOCS);
});

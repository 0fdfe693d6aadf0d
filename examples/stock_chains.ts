// Stock chains over compressed contexts: a plain LCEL `prompt | ChatKvfold | parser` and a stock
// LlamaIndex response synthesizer. Both write the retrieved text into their prompt as they would for
// any LLM; kvfold models recognise the text of documents kvfold handed out with a payload and read
// their summary vectors instead (the rule: integrations/README.md, "Stock chains").
//
//   deno task kvfold make-test-model .kvfold/models/tiny-compressor --preset compressor
//   deno run -A examples/stock_chains.ts .kvfold/models/tiny-compressor
//
// A test model's weights are random: the answers are noise, every step is real.
import { ChatPromptTemplate } from "npm:@langchain/core@1.4.0/prompts";
import { StringOutputParser } from "npm:@langchain/core@1.4.0/output_parsers";
import { RunnableLambda } from "npm:@langchain/core@1.4.0/runnables";
import { getResponseSynthesizer } from "npm:llamaindex@0.12.1";
import { compressIntoStore, Compressor, DocumentStore, Kvfold } from "../mod.ts";
import { ChatKvfold, KvfoldRetriever } from "../integrations/langchain/mod.ts";
import { KvfoldLLM, KvfoldRetriever as LlamaIndexRetriever } from "../integrations/llamaindex/mod.ts";

const modelDir = Deno.args[0] ?? ".kvfold/models/tiny-compressor";
const storeFile = await Deno.makeTempFile({ suffix: ".sqlite" });

await using kv = await Kvfold.open();
using compressor = await Compressor.load(kv, modelDir);
using store = DocumentStore.open(storeFile);
await compressIntoStore(compressor, store, {
  source: "harbour.txt",
  text: "The ship Aurora left the harbour at dawn with timber. ".repeat(20),
}, { chunkTokens: 256 });
const question = "Which ship left the harbour?";

// LangChain: an ordinary LCEL chain; nothing kvfold-specific but the retriever and the model.
const retriever = new KvfoldRetriever({ store, k: 1 });
const chain = RunnableLambda.from(async (q: string) => ({
  context: (await retriever.invoke(q)).map((d) => d.pageContent).join("\n\n"),
  question: q,
}))
  .pipe(ChatPromptTemplate.fromTemplate("Context:\n{context}\n\nQuestion: {question}"))
  .pipe(new ChatKvfold({ model: compressor.model, store, maxTokens: 16, temperature: 0 }))
  .pipe(new StringOutputParser());
console.log("LCEL:", await chain.invoke(question));

// LlamaIndex: a stock response synthesizer over kvfold's nodes.
const nodes = await new LlamaIndexRetriever({ store, k: 1 }).retrieve(question);
const synthesizer = getResponseSynthesizer("compact", {
  llm: new KvfoldLLM({ model: compressor.model, maxTokens: 16, temperature: 0, contextWindow: 4096 }),
});
const response = await synthesizer.synthesize({ query: question, nodes });
console.log("LlamaIndex:", response.message.content);
await Deno.remove(storeFile);

// Embeddings from a kvfold model, with no other provider: the core API, LangChain's MemoryVectorStore
// and LlamaIndex's VectorStoreIndex.
//
//   deno task kvfold make-test-model .kvfold/models/tiny
//   deno run -A examples/embeddings.ts .kvfold/models/tiny
//
// A test model's weights are random: which document is nearest is noise, every step is real.
import { MemoryVectorStore } from "npm:@langchain/classic@1.0.50/vectorstores/memory";
import { Document, MetadataMode, Settings, VectorStoreIndex } from "npm:llamaindex@0.12.1";
import { Kvfold } from "../mod.ts";
import { KvfoldEmbeddings } from "../integrations/langchain/mod.ts";
import { KvfoldEmbedding, KvfoldLLM } from "../integrations/llamaindex/mod.ts";

const texts = ["The ship Aurora left the harbour at dawn.", "Honey from the hives sold at the June market."];
const query = "Which ship left the harbour?";

await using kv = await Kvfold.open();
await using model = await kv.loadModel(Deno.args[0] ?? ".kvfold/models/tiny");

// Core: one L2-normalised vector per text (mean pooling of final-normed hidden states).
const [q, ...docs] = await model.embed([query, ...texts], { pooling: "mean" });
const cosines = docs.map((d) => d.reduce((s, v, i) => s + v * q[i], 0));
console.log("cosines:", cosines.map((c) => c.toFixed(4)).join(", "));

// LangChain: a vector store over kvfold embeddings.
const store = await MemoryVectorStore.fromTexts(
  texts,
  [{ id: 0 }, { id: 1 }],
  new KvfoldEmbeddings({ model }),
);
const [[best, score]] = await store.similaritySearchWithScore(query, 1);
console.log(`LangChain nearest: ${best.pageContent} (${score.toFixed(4)})`);

// LlamaIndex: kvfold as the embedding model and the LLM.
Settings.embedModel = new KvfoldEmbedding({ model });
Settings.llm = new KvfoldLLM({ model, maxTokens: 16, temperature: 0 });
const index = await VectorStoreIndex.fromDocuments(texts.map((text) => new Document({ text })));
const [hit] = await index.asRetriever({ similarityTopK: 1 }).retrieve({ query });
console.log(`LlamaIndex nearest: ${hit.node.getContent(MetadataMode.NONE)} (${hit.score?.toFixed(4)})`);

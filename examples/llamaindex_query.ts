// A LlamaIndex query engine over compressed contexts: a RetrieverQueryEngine whose retriever reads the
// kvfold store and whose LLM prefills the nodes' summary vectors before the question.
//
//   deno task kvfold make-test-model .kvfold/models/tiny-compressor --preset compressor
//   deno run -A examples/llamaindex_query.ts .kvfold/models/tiny-compressor
//
// A test model's weights are random: the answer is noise, every step is real.
import { compressIntoStore, Compressor, DocumentStore, Kvfold } from "../mod.ts";
import { KvfoldLLM, KvfoldQueryEngine, KvfoldRetriever } from "../integrations/llamaindex/mod.ts";

const modelDir = Deno.args[0] ?? ".kvfold/models/tiny-compressor";
const storeFile = await Deno.makeTempFile({ suffix: ".sqlite" });

await using kv = await Kvfold.open();
using compressor = await Compressor.load(kv, modelDir); // an AutoCompressor checkpoint
using store = DocumentStore.open(storeFile);
for (
  const doc of [
    { source: "harbour.txt", text: "The ship Aurora left the harbour at dawn with timber. ".repeat(20) },
    {
      source: "audit.txt",
      text: "The audit found forty crates of salt missing from the east warehouse. ".repeat(20),
    },
  ]
) {
  const r = await compressIntoStore(compressor, store, doc, { chunkTokens: 256 });
  console.error(`${doc.source}: ${r.tokens} tokens -> ${r.vectors} vectors`);
}

const engine = new KvfoldQueryEngine({
  retriever: new KvfoldRetriever({ store, k: 1 }),
  llm: new KvfoldLLM({ model: compressor.model, maxTokens: 32, temperature: 0 }),
});
const query = "What did the audit find?";
console.log(`Q: ${query}`);
const stream = await engine.query({ query, stream: true });
for await (const chunk of stream) Deno.stdout.writeSync(new TextEncoder().encode(chunk.delta));
const sources = (await engine.query({ query })).sourceNodes?.map((n) => n.node.metadata.source);
console.log(`\n(sources: ${sources?.join(", ")})`);
await Deno.remove(storeFile);

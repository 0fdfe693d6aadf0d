// A LangChain pipeline over compressed contexts: retrieve from the kvfold store, answer with the
// retrieved documents' summary vectors as the prompt prefix, streamed.
//
//   deno task kvfold make-test-model .kvfold/models/tiny-compressor --preset compressor
//   deno run -A examples/langchain_qa.ts .kvfold/models/tiny-compressor
//
// A test model's weights are random: the answer is noise, every step is real.
import { compressIntoStore, Compressor, DocumentStore, Kvfold } from "../mod.ts";
import { ChatKvfold, createKvfoldQaChain, KvfoldRetriever } from "../integrations/langchain/mod.ts";

const modelDir = Deno.args[0] ?? ".kvfold/models/tiny-compressor";
const storeFile = await Deno.makeTempFile({ suffix: ".sqlite" });

await using kv = await Kvfold.open();
using compressor = await Compressor.load(kv, modelDir); // an AutoCompressor checkpoint
using store = DocumentStore.open(storeFile);
for (
  const doc of [
    { source: "harbour.txt", text: "The ship Aurora left the harbour at dawn with timber. ".repeat(20) },
    { source: "orchard.txt", text: "Honey from the orchard hives sold at the June market. ".repeat(20) },
  ]
) {
  const r = await compressIntoStore(compressor, store, { ...doc, group: "demo" }, { chunkTokens: 256 });
  console.error(`${doc.source}: ${r.tokens} tokens -> ${r.vectors} vectors`);
}

const chain = createKvfoldQaChain({
  retriever: new KvfoldRetriever({ store, k: 1 }),
  model: new ChatKvfold({ model: compressor.model, store, maxTokens: 32, temperature: 0 }),
});
const question = "Which ship left the harbour?";
console.log(`Q: ${question}`);
for await (const piece of await chain.stream(question)) {
  Deno.stdout.writeSync(new TextEncoder().encode(piece));
}
console.log();
await Deno.remove(storeFile);

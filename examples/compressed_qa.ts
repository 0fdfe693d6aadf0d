// Compressed-context QA in plain Deno, no framework: compress a document into summary vectors, store
// them, retrieve by text and answer with the vectors as the prompt prefix, optionally through the
// document group's LoRA adapter.
//
//   deno task kvfold make-test-model .kvfold/models/tiny-compressor --preset compressor
//   deno task kvfold make-test-model .kvfold/adapters/tiny-demo --preset lora --base .kvfold/models/tiny-compressor
//   deno run -A examples/compressed_qa.ts .kvfold/models/tiny-compressor .kvfold/adapters/tiny-demo
//
// A test model's weights are random: the answer is noise, every step is real.
import { answerFromChunks, compressIntoStore, Compressor, DocumentStore, Kvfold } from "../mod.ts";

const [modelDir = ".kvfold/models/tiny-compressor", adapterDir] = Deno.args;
const storeFile = await Deno.makeTempFile({ suffix: ".sqlite" });

await using kv = await Kvfold.open();
using compressor = await Compressor.load(kv, modelDir);
using store = DocumentStore.open(storeFile);
const text = "The storm in October flooded the lower mill and stopped the wheel for a week. ".repeat(40);
const r = await compressIntoStore(compressor, store, { source: "mill.txt", text, group: "demo" }, {
  chunkTokens: 512,
  onProgress: (done, total) => console.error(`compressing ${done}/${total} tokens`),
});
console.error(`${r.tokens} tokens -> ${r.vectors} summary vectors (${(r.tokens / r.vectors).toFixed(1)}x)`);

const model = compressor.model; // the decoder: the same checkpoint, plus the group's LoRA if given
if (adapterDir) await model.adapters.load(adapterDir, { name: "demo" }); // chosen by the chunks' group

const question = "What stopped the mill wheel?";
const chunks = store.retrieve(question, { k: 1 });
for await (
  const piece of answerFromChunks(model, chunks, question, {
    maxTokens: 32,
    temperature: 0,
    onStats: (s) =>
      console.error(`\n[${s.prefixPositions} prefix positions, adapter ${s.adapter ?? "none"}]`),
  })
) Deno.stdout.writeSync(new TextEncoder().encode(piece));
await Deno.remove(storeFile);

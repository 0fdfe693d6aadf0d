// Stream a completion from a Hugging Face model folder.
//
//   deno run -A examples/generate.ts [MODEL_DIR] [PROMPT]
//
// Without MODEL_DIR it first writes the random `small` test model (134M parameters) to
// .kvfold/models/small: its weights are noise, so its text is noise too, but every step is real.
import { Kvfold } from "../mod.ts";
import { makeTestModel } from "../testing/mod.ts";

const dir = Deno.args[0] ?? new URL("../.kvfold/models/small", import.meta.url).pathname;
const prompt = Deno.args[1] ?? "The quickest way to read a long report is";

if (!Deno.args[0]) {
  try {
    Deno.statSync(`${dir}/config.json`);
  } catch {
    console.error(`making a random test model in ${dir} ...`);
    await makeTestModel(dir, { preset: "small", seed: 1, dtype: "bfloat16" });
  }
}

await using kv = await Kvfold.open(); // CUDA when built and present, else CPU
await using model = await kv.loadModel(dir, {
  onProgress: (done, total) => console.error(`loading ${(100 * done / Math.max(total, 1)).toFixed(0)}%`),
});
console.error(
  `${model.info.modelType}, ${
    (model.info.params / 1e6).toFixed(0)
  }M params, ${model.info.weightDType}, ${kv.name}`,
);

await using session = model.session({ contextSize: 512 });
const ac = new AbortController();
Deno.addSignalListener("SIGINT", () => ac.abort()); // Ctrl-C stops within one token

const out = new TextEncoder();
Deno.stdout.writeSync(out.encode(prompt));
for await (
  const piece of session.generate({
    prompt: model.encodePrompt(prompt),
    maxTokens: 48,
    temperature: 0.8,
    topP: 0.95,
    seed: 42,
    signal: ac.signal,
  })
) {
  Deno.stdout.writeSync(out.encode(piece));
}
const s = session.lastStats!;
console.log(
  `\n\n${s.promptTokens} prompt tokens in ${s.prefillMs.toFixed(0)} ms, ` +
    `${s.generatedTokens} tokens at ${
      ((s.generatedTokens - 1) / (s.decodeMs / 1000)).toFixed(1)
    } tok/s (${s.stopReason}); ` +
    `KV cache ${(session.memory().kvBytes / 2 ** 20).toFixed(1)} MiB`,
);
Deno.exit(0); // the SIGINT listener would keep the process alive

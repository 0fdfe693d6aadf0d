// Subprocess of hostile_truncated_weights_test.ts: loads MODEL_DIR (mmap: MMAP === "1"), generates,
// truncates model.safetensors underneath the loaded model, generates again, then tries a fresh load.
// Prints one JSON line; a signal kills it before that (which is what the test looks for).
import { Kvfold, KvfoldError, type Model } from "../mod.ts";

const [dir, mmap] = Deno.args;
const greedy = async (model: Model) => {
  using s = model.session({ contextSize: 64 });
  for await (const _ of s.generate({ prompt: [1, 9, 10], maxTokens: 8, temperature: 0, ignoreEos: true })) {
    // stream
  }
  return s.lastStats!.tokens;
};
const outcome = async (f: () => Promise<unknown>) => {
  try {
    return { value: await f() };
  } catch (e) {
    if (!(e instanceof KvfoldError)) throw e;
    return { code: e.code, message: e.message };
  }
};

await using kv = await Kvfold.open({ backend: "cpu", threads: 1 });
await using model = await kv.loadModel(dir, { mmap: mmap === "1" });
const before = await greedy(model);
await Deno.truncate(`${dir}/model.safetensors`, 64);
const after = await outcome(() => greedy(model));
const reload = await outcome(() => kv.loadModel(dir).then((m) => m.dispose()));
console.log(JSON.stringify({ before, after, reload }));

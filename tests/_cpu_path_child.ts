// Child of tests/cpu_kernels_test.ts: runs under one KVFOLD_CPU setting and prints, as JSON, the
// engine name and the logits of a 20-row prefill (the GEMM path) and 3 decode steps per weight dtype.
import { Kvfold } from "../mod.ts";

const [f32Dir, bf16Dir] = Deno.args;
await using kv = await Kvfold.open({ backend: "cpu", threads: 2 });
const ids = Array.from({ length: 20 }, (_, i) => 3 + ((i * 97) % 500));
const out: Record<string, number[]> = {};
for (
  const [key, dir, dtype] of [
    ["f32", f32Dir, "f32"],
    ["bf16", bf16Dir, "auto"],
    ["q8_0", f32Dir, "q8_0"],
    ["q4_0", f32Dir, "q4_0"],
  ] as const
) {
  await using model = await kv.loadModel(dir, { dtype });
  using s = model.session({ contextSize: 64, batchSize: 32 });
  const logits = [...(await s.prefill(ids, { logits: "all" }))!];
  for (const id of [5, 9, 11]) {
    await s.decode(id);
    logits.push(...s.logits());
  }
  out[key] = logits;
}
console.log(JSON.stringify({ name: kv.name, logits: out }));

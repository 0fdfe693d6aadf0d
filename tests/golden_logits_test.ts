// Pins the CPU engine's exact output: SHA-256 of the logits (every prefill position, then greedy
// decode steps) of fixed random models, so that a refactor that claims "behaviour unchanged" is
// held to bit-identical numerics. The float64 reference tests say the numbers are right; this says
// they did not move. A change of kernels that moves them on purpose updates the digests here.
import assert from "node:assert/strict";
import { Kvfold } from "../mod.ts";
import type { TestModelOptions } from "../testing/mod.ts";
import { makeTestAdapter } from "../testing/mod.ts";
import { someIds, tempDir, testModel } from "./_fixtures.ts";

// The third entry: the digest where the engine's kernels include avx512-bf16, whose decode rounds
// bf16 weights' activations to bf16 for vdpbf16ps (as its prefill GEMM does); "" = the same digest.
const GOLDEN: [string, TestModelOptions, string, string][] = [
  ["golden-gqa", { seed: 31 }, "609bd3550a78ca6bd75b9e9ddb9fb4e6a791e494cce5687858c9224028412ce9", ""],
  [
    "golden-qwen2-tied",
    { seed: 32, modelType: "qwen2", tieWordEmbeddings: true },
    "dceeaa0f980d376c034024452c73dfafc480c652786cd5b10b7e9ac89c86cfa0",
    "",
  ],
  [
    "golden-bf16",
    { seed: 33, dtype: "bfloat16" },
    "601ed6ae76b933bb0e02db5e61c44edbc11bf912d195a31ef3c75545ccd7c3cc",
    "d29cfdb53e8a524e0f60343e9e91685d2aa3d9f5c09e880d40ada78aea911195",
  ],
];

async function digest(parts: Float32Array[], ids: number[]): Promise<string> {
  const total = parts.reduce((s, p) => s + p.byteLength, 0) + ids.length * 4;
  const all = new Uint8Array(total);
  let o = 0;
  for (const p of parts) {
    all.set(new Uint8Array(p.buffer, p.byteOffset, p.byteLength), o);
    o += p.byteLength;
  }
  all.set(new Uint8Array(Int32Array.from(ids).buffer), o);
  const h = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
  return [...h].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Logits of 24 prefilled ids (3 chunks) and 6 greedy decode steps, with and without a LoRA adapter. */
async function run(dir: string, adapterDir: string): Promise<{ digest: string; engine: string }> {
  // Two threads, as CI has: blocked kernels split work by thread count.
  await using kv = await Kvfold.open({ backend: "cpu", threads: 2 });
  await using model = await kv.loadModel(dir);
  const adapter = await model.adapters.load(adapterDir);
  const parts: Float32Array[] = [];
  const ids: number[] = [];
  for (const a of [null, adapter]) {
    using s = model.session({ contextSize: 64, batchSize: 8 });
    parts.push((await s.prefill(someIds(24, model.info.vocabSize, 9), { logits: "all", adapter: a }))!);
    for (let i = 0; i < 6; i++) {
      const l = s.logits();
      parts.push(l);
      let best = 0;
      for (let j = 1; j < l.length; j++) if (l[j] > l[best]) best = j;
      ids.push(best);
      await s.decode(best);
    }
  }
  return { digest: await digest(parts, ids), engine: kv.name };
}

for (const [name, options, plain, bf16Kernels] of GOLDEN) {
  Deno.test(`golden: CPU logits are bit-identical to the pinned digest (${name})`, async () => {
    const dir = await testModel(name, options);
    const adapterDir = await tempDir();
    try {
      await makeTestAdapter(adapterDir, { base: dir, rank: 4, seed: 5 });
      const { digest: got, engine } = await run(dir, adapterDir);
      const want = engine.includes("avx512-bf16") && bf16Kernels !== "" ? bf16Kernels : plain;
      if (want === "") console.log(`${name}: ${got}`);
      assert.equal(got, want, `${name}: the CPU numerics moved (digest ${got})`);
    } finally {
      await Deno.remove(adapterDir, { recursive: true });
    }
  });
}

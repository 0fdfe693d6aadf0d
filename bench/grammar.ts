// Per-step cost of constrained decoding on the test models' vocabularies (512 and 32000 tokens,
// byte-level BPE), without a model: each "step" takes the grammar's allowed-token mask (a trie walk
// on a state never seen, a cache lookup otherwise) plus the budget filter, then picks an allowed id
// uniformly at random (a worst case for the cache: a random walk visits many states) and advances.
//
//   deno run -A bench/grammar.ts [--values 20] [--max-tokens 96] [--out bench/results/grammar.json]
//
// Reports trie size and build time, per-step milliseconds (mean, p50, p95, max) split into cold
// steps (a trie walk) and warm steps (a lookup), per schema and vocabulary.
import { parseArgs } from "node:util";
import { JsonGrammar, type JsonSchema, TextTokenizer } from "../mod.ts";
import { makeTestTokenizer } from "../testing/test_tokenizer.ts";
import { GrammarConstraint, tokenTrie } from "../src/grammar/json_grammar.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    values: { type: "string", default: "20" },
    "max-tokens": { type: "string", default: "96" },
    out: { type: "string", default: new URL("./results/grammar.json", import.meta.url).pathname },
  },
});
const VALUES = Number(v.values), MAX_TOKENS = Number(v["max-tokens"]);

const SCHEMAS: Record<string, JsonSchema> = {
  "json (any value)": true,
  "object: string, bounded int, enum, array of strings": {
    type: "object",
    properties: {
      name: { type: "string" },
      age: { type: "integer", minimum: 0, maximum: 130 },
      kind: { enum: ["cat", "dog", "bird"] },
      tags: { type: "array", items: { type: "string" }, maxItems: 4 },
    },
    required: ["name", "age", "kind", "tags"],
    additionalProperties: false,
  },
  "string with maxLength 40": { type: "string", maxLength: 40 },
  "tool-call envelope (2 tools)": {
    type: "object",
    properties: {
      tool_calls: {
        type: "array",
        minItems: 1,
        items: {
          anyOf: [
            {
              type: "object",
              properties: {
                name: { const: "get_weather" },
                arguments: {
                  type: "object",
                  properties: { city: { type: "string" } },
                  required: ["city"],
                  additionalProperties: false,
                },
              },
              required: ["name", "arguments"],
              additionalProperties: false,
            },
            {
              type: "object",
              properties: {
                name: { const: "add" },
                arguments: {
                  type: "object",
                  properties: { a: { type: "number" }, b: { type: "number" } },
                  required: ["a", "b"],
                  additionalProperties: false,
                },
              },
              required: ["name", "arguments"],
              additionalProperties: false,
            },
          ],
        },
      },
    },
    required: ["tool_calls"],
    additionalProperties: false,
  },
};

function stats(xs: number[]) {
  const s = [...xs].sort((a, b) => a - b);
  const q = (p: number) => s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))] : 0;
  return {
    n: s.length,
    mean: s.length ? s.reduce((a, b) => a + b, 0) / s.length : 0,
    p50: q(0.5),
    p95: q(0.95),
    max: s.at(-1) ?? 0,
  };
}

type Stats = ReturnType<typeof stats>;
interface Row {
  vocab: number;
  trieNodes: number;
  trieBuildMs: number;
  schema: string;
  tokens: number;
  bytesPerToken: number;
  step: Stats;
  cold: Stats;
  warm: Stats;
}
const rows: Row[] = [];
for (const vocab of [512, 32000]) {
  const dir = await Deno.makeTempDir({ prefix: "kvfold-bench-grammar-" });
  const { tokenizerJson, tokenizerConfig } = makeTestTokenizer(vocab);
  await Deno.writeTextFile(`${dir}/tokenizer.json`, JSON.stringify(tokenizerJson));
  await Deno.writeTextFile(`${dir}/tokenizer_config.json`, JSON.stringify(tokenizerConfig));
  const tok = await TextTokenizer.fromModelDir(dir);
  await Deno.remove(dir, { recursive: true });
  const t0 = performance.now();
  const trie = tokenTrie(tok, vocab);
  const buildMs = performance.now() - t0;
  const eos = tok.eosTokenId!;
  let seed = 12345;
  const rand = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
  for (const [name, schema] of Object.entries(SCHEMAS)) {
    const grammar = schema === true ? JsonGrammar.anyValue() : JsonGrammar.fromSchema(schema);
    const cold: number[] = [], warm: number[] = [];
    let tokens = 0, bytes = 0;
    for (let k = 0; k < VALUES; k++) {
      const c = new GrammarConstraint(grammar, trie, [eos]);
      for (let n = 0; n < MAX_TOKENS; n++) {
        const walks = c.walks;
        const t = performance.now();
        const mask = c.mask(MAX_TOKENS - n - 1)!;
        const ms = performance.now() - t;
        (c.walks > walks ? cold : warm).push(ms);
        const allowed: number[] = [];
        for (let id = 0; id < vocab; id++) if (mask[id >> 3] & (1 << (id & 7))) allowed.push(id);
        const id = allowed[Math.floor(rand() * allowed.length)];
        if (id === eos) break;
        c.accept(id);
        tokens++;
        bytes += trie.bytes[id]!.length;
      }
    }
    const all = stats([...cold, ...warm]);
    rows.push({
      vocab,
      trieNodes: trie.nodes,
      trieBuildMs: buildMs,
      schema: name,
      tokens,
      bytesPerToken: bytes / tokens,
      step: all,
      cold: stats(cold),
      warm: stats(warm),
    });
  }
}

const f = (x: number) => x.toFixed(3);
console.log(
  "vocab | trie nodes | build ms | schema | steps | cold steps (mean / p95 / max ms) | warm steps (mean / p95 ms) | all steps mean ms",
);
console.log("---|---|---|---|---|---|---|---");
for (const r of rows) {
  console.log(
    `${r.vocab} | ${r.trieNodes} | ${r.trieBuildMs.toFixed(1)} | ${r.schema} | ${r.step.n} | ${r.cold.n}: ${
      f(r.cold.mean)
    } / ${f(r.cold.p95)} / ${f(r.cold.max)} | ${r.warm.n}: ${f(r.warm.mean)} / ${f(r.warm.p95)} | ${
      f(r.step.mean)
    }`,
  );
}
const result = {
  machine: { cpus: navigator.hardwareConcurrency, deno: Deno.version.deno },
  values: VALUES,
  maxTokens: MAX_TOKENS,
  rows,
};
await Deno.writeTextFile(v.out, JSON.stringify(result, null, 2) + "\n");
console.log(`wrote ${v.out}`);

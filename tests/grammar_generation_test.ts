// Constrained generation on a random test model: 100 generations against 10 schemas (seeded,
// temperature 1 over the whole vocabulary, so the random model picks among all allowed tokens) all
// parse and validate by an independent validator (@cfworker/json-schema); greedy picks the best
// allowed logit; EOS comes only once the value is whole; the native mask call's refusals.
import assert from "node:assert/strict";
import { Validator } from "npm:@cfworker/json-schema@4.1.6";
import { z } from "npm:zod@4.6.7";
import { JsonGrammar, type JsonSchema, type Model } from "../mod.ts";
import { alloc, outPointer, readCString, Status, sym } from "../src/_binding.ts";
import { initialState, stepBytes } from "../src/grammar/json_matcher.ts";
import { rejectsWith } from "./_kvfold_asserts.ts";
import { testEngine, testModel } from "./_fixtures.ts";

const SCHEMAS: [string, JsonSchema][] = [
  [
    "zod object: int bounds, optional, enum, nullable, nested, tuple, record, discriminated union",
    z.toJSONSchema(
      z.object({
        name: z.string().max(10),
        age: z.number().int().min(0).max(130),
        email: z.string().max(6).optional(),
        kind: z.enum(["cat", "dog"]),
        score: z.number().nullable(),
        pair: z.tuple([z.string().max(3), z.boolean()]),
        counts: z.record(z.string(), z.number()),
        shape: z.discriminatedUnion("t", [
          z.object({ t: z.literal("a"), x: z.int() }),
          z.object({ t: z.literal("b") }),
        ]),
      }),
    ) as JsonSchema,
  ],
  ["string enum", { enum: ["red", "green", "blue"] }],
  ["array of bounded integers", {
    type: "array",
    items: { type: "integer", minimum: -5, maximum: 5 },
    minItems: 1,
    maxItems: 4,
  }],
  ["nested objects with optional properties", {
    type: "object",
    properties: {
      id: { type: "integer" },
      meta: {
        type: "object",
        properties: {
          a: { type: "boolean" },
          b: { type: "string", minLength: 2, maxLength: 4 },
          c: { const: "k" },
        },
        required: ["c"],
        additionalProperties: false,
      },
    },
    required: ["id", "meta"],
    additionalProperties: false,
  }],
  ["anyOf object, string, null", {
    anyOf: [
      { type: "object", properties: { v: { type: "number" } }, required: ["v"], additionalProperties: false },
      { type: "string", maxLength: 5 },
      { type: "null" },
    ],
  }],
  ["top-level bounded number", { type: "number", minimum: -1.5, maximum: 3 }],
  ["record of booleans", { type: "object", additionalProperties: { type: "boolean" } }],
  ["$defs and $ref", {
    $defs: {
      p: {
        type: "object",
        properties: { x: { type: "integer" }, y: { type: "integer" } },
        required: ["x", "y"],
        additionalProperties: false,
      },
    },
    type: "object",
    properties: { from: { $ref: "#/$defs/p" }, to: { $ref: "#/$defs/p" } },
    required: ["from", "to"],
    additionalProperties: false,
  }],
  ["nullable type list and exclusive bounds", {
    type: "object",
    properties: {
      t: { type: ["string", "null"], maxLength: 4 },
      p: { type: "number", exclusiveMinimum: 0, exclusiveMaximum: 1 },
    },
    required: ["t", "p"],
    additionalProperties: false,
  }],
  ["any JSON (the json mode)", true],
];

async function withModel(fn: (model: Model) => Promise<void>): Promise<void> {
  using model = await (await testEngine()).loadModel(await testModel("grammar", { seed: 7 }));
  await fn(model);
}

async function generateText(
  model: Model,
  options: Parameters<Model["session"]>[0] & Record<string, unknown>,
) {
  using session = model.session({ contextSize: 256 });
  let text = "";
  for await (const piece of session.generate({ prompt: "Answer in JSON:", ...options })) text += piece;
  return { text, stats: session.lastStats! };
}

Deno.test("grammar generation: 100 seeded generations against 10 schemas all parse and validate", async () => {
  await withModel(async (model) => {
    const reasons = new Map<string, number>();
    for (const [name, schema] of SCHEMAS) {
      const validator = new Validator(schema as never, "2020-12");
      const grammar = schema === true ? "json" as const : JsonGrammar.fromSchema(schema);
      const maxTokens = Math.max(48, (grammar === "json" ? 1 : grammar.root.minBytes) + 32);
      const texts = new Set<string>();
      for (let seed = 0; seed < 10; seed++) {
        const { text, stats } = await generateText(model, {
          grammar,
          maxTokens,
          temperature: 1,
          topK: 0,
          topP: 1,
          seed,
        });
        let value: unknown;
        assert.doesNotThrow(() => (value = JSON.parse(text)), `${name}, seed ${seed}: ${text}`);
        const result = validator.validate(value);
        assert.ok(result.valid, `${name}, seed ${seed}: ${text}: ${JSON.stringify(result.errors[0])}`);
        assert.ok(stats.generatedTokens <= maxTokens);
        reasons.set(stats.stopReason, (reasons.get(stats.stopReason) ?? 0) + 1);
        texts.add(text);
      }
      // Sampling really samples: a schema with room for variety gives different values.
      if (name !== "string enum") assert.ok(texts.size >= 5, `${name}: only ${texts.size} distinct values`);
      else assert.ok(texts.size >= 2);
    }
    // Most end on EOS; the ones the budget closed end at maxTokens, still whole.
    assert.ok((reasons.get("eos") ?? 0) >= 50, JSON.stringify([...reasons]));
  });
});

Deno.test("grammar generation: a value closed by the budget at exactly maxTokens still validates", async () => {
  await withModel(async (model) => {
    const schema = {
      type: "object",
      properties: { a: { type: "array", items: { type: "string" } } },
      required: ["a"],
      additionalProperties: false,
    };
    const validator = new Validator(schema as never, "2020-12");
    const minimal = '{"a":[]}'.length;
    for (const maxTokens of [minimal, minimal + 1, 12, 20]) {
      for (let seed = 0; seed < 4; seed++) {
        const { text, stats } = await generateText(model, {
          jsonSchema: schema,
          maxTokens,
          temperature: 1,
          topK: 0,
          topP: 1,
          seed,
        });
        assert.ok(validator.validate(JSON.parse(text)).valid, text);
        assert.ok(stats.generatedTokens <= maxTokens);
      }
    }
    await rejectsWith(
      generateText(model, { jsonSchema: schema, maxTokens: minimal - 1 }),
      "INVALID_ARGUMENT",
      /shortest value of the JSON schema takes 8 bytes, more than maxTokens 7/,
    );
  });
});

Deno.test("grammar generation: greedy picks the best logit among the tokens the grammar allows", async () => {
  await withModel(async (model) => {
    const schema = {
      type: "object",
      properties: { ok: { type: "boolean" } },
      required: ["ok"],
      additionalProperties: false,
    };
    const prompt = model.tokenizer.encode("Answer in JSON:");
    using session = model.session({ contextSize: 64 });
    await session.prefill(prompt);
    const logits = session.logits();
    const vocab = model.info.vocabSize;
    const bytes = model.tokenizer.tokenBytes(vocab);
    const start = initialState(JsonGrammar.fromSchema(schema).root);
    // Reference: every id whose bytes the matcher takes from the start, best logit first.
    let best = -1;
    for (let id = 0; id < vocab; id++) {
      const b = bytes[id];
      if (!b || stepBytes(start, b).length === 0) continue;
      if (best < 0 || logits[id] > logits[best]) best = id;
    }
    assert.ok(best >= 0);
    const argmax = logits.indexOf(Math.max(...logits));
    const { stats } = await generateText(model, { jsonSchema: schema, maxTokens: 16, temperature: 0 });
    assert.equal(stats.tokens[0], best);
    assert.notEqual(argmax, best, "the unconstrained choice would not have been JSON");
    assert.equal(stats.stopReason, "eos");
    assert.ok(model.eosTokenIds.includes(stats.tokens.at(-1)!));
  });
});

Deno.test("grammar generation: EOS is masked until the value is whole, then it is the only choice", async () => {
  await withModel(async (model) => {
    const eos = model.eosTokenIds;
    for (let seed = 0; seed < 6; seed++) {
      const { text, stats } = await generateText(model, {
        grammar: "json",
        maxTokens: 32,
        temperature: 1,
        topK: 0,
        topP: 1,
        seed,
      });
      JSON.parse(text);
      const i = stats.tokens.findIndex((id) => eos.includes(id));
      assert.ok(i === -1 || i === stats.tokens.length - 1);
    }
    // ignoreEos: nothing to end with, so generation stops once the value is closed.
    const { text, stats } = await generateText(model, {
      jsonSchema: { enum: ["yes", "no"] },
      maxTokens: 32,
      ignoreEos: true,
      temperature: 1,
      seed: 3,
    });
    assert.ok(text === '"yes"' || text === '"no"', text);
    assert.equal(stats.stopReason, "eos");
  });
});

Deno.test("grammar generation: bad grammar options are refused before the session is busy", async () => {
  await withModel(async (model) => {
    using session = model.session({ contextSize: 64 });
    const drain = async (options: Record<string, unknown>) => {
      for await (const _ of session.generate({ prompt: "x", maxTokens: 4, ...options })) { /* nothing */ }
    };
    await assert.rejects(drain({ grammar: "yaml" }), TypeError);
    await assert.rejects(drain({ grammar: "json", jsonSchema: {} }), TypeError);
    await rejectsWith(
      drain({ jsonSchema: { type: "string", format: "date-time" } }),
      "UNSUPPORTED",
      /"format"/,
    );
    const { text } = await generateText(model, { grammar: "json", maxTokens: 8, temperature: 0 });
    JSON.parse(text);
  });
});

Deno.test("grammar generation: kf_sampler_set_allowed restricts, clears, and refuses a wrong-size or empty mask", async () => {
  await withModel(() => {
    const s = sym();
    const out = outPointer();
    assert.equal(s.kf_sampler_create(null, out.buf), Status.OK);
    const sampler = out.get();
    try {
      const n = 20;
      const logits = new Float32Array(n).map((_, i) => i); // id 19 is best
      const pick = () => {
        const o = alloc(4);
        const status = s.kf_sampler_sample_logits(sampler, logits, n, o);
        return { status, id: new Int32Array(o.buffer)[0] };
      };
      const mask = new Uint8Array(3);
      mask[0] = 0b00100100; // ids 2 and 5
      assert.equal(s.kf_sampler_set_allowed(sampler, mask, n), Status.OK);
      for (let k = 0; k < 50; k++) assert.ok([2, 5].includes(pick().id));
      assert.equal(s.kf_sampler_set_allowed(sampler, null, 0), Status.OK);
      const seen = new Set<number>();
      for (let k = 0; k < 50; k++) seen.add(pick().id);
      assert.ok([...seen].some((id) => id !== 2 && id !== 5), "cleared");
      assert.equal(s.kf_sampler_set_allowed(sampler, mask, 24), Status.OK);
      assert.equal(pick().status, Status.INVALID_ARGUMENT);
      assert.match(readCString(s.kf_last_error()), /mask covers 24 ids, the logits 20/);
      assert.equal(s.kf_sampler_set_allowed(sampler, new Uint8Array(3), n), Status.OK);
      assert.equal(pick().status, Status.INVALID_ARGUMENT);
      assert.equal(s.kf_sampler_set_allowed(sampler, mask, 0), Status.INVALID_ARGUMENT);
    } finally {
      s.kf_sampler_free(sampler);
    }
    return Promise.resolve();
  });
});

// The JSON Schema grammar without a model: what compiles and what is refused (naming the keyword),
// the matcher judged against an independent validator (@cfworker/json-schema) on valid texts and on
// their one-byte mutations, and the token trie's masks against a token-by-token walk.
import assert from "node:assert/strict";
import { Validator } from "npm:@cfworker/json-schema@4.1.6";
import { z } from "npm:zod@4.6.7";
import { JsonGrammar } from "../mod.ts";
import { initialState, minCompletion, stepBytes } from "../src/grammar/json_matcher.ts";
import { budgetBits, computeMask, TokenTrie } from "../src/grammar/token_mask.ts";
import { throwsKvfold } from "./_kvfold_asserts.ts";

const enc = new TextEncoder();

const PERSON = {
  type: "object",
  properties: {
    name: { type: "string", minLength: 1, maxLength: 8 },
    age: { type: "integer", minimum: 0, maximum: 120 },
    email: { type: "string" },
    tags: { type: "array", items: { enum: ["a", "b", 1, 10] }, maxItems: 3 },
    score: { anyOf: [{ type: "number", minimum: 0.5, maximum: 2.25 }, { type: "null" }] },
  },
  required: ["name", "age"],
  additionalProperties: false,
};

Deno.test("grammar: accepts exactly the compact texts the schema validates", () => {
  const g = JsonGrammar.fromSchema(PERSON);
  const yes = [
    '{"name":"Ann","age":3}',
    '{"name":"é😀\\n\\u00e9","age":120,"tags":["a",10,1]}',
    '{"name":"x","age":0,"score":null}',
    '{"name":"x","age":0,"score":2.25}',
    '{"name":"x","age":0,"email":"","score":0.5}',
  ];
  const no = [
    '{"name":"","age":3}', // minLength
    '{"name":"123456789","age":3}', // maxLength
    '{"name":"x","age":121}',
    '{"name":"x","age":-1}',
    '{"name":"x"}', // required
    '{"age":1,"name":"x"}', // the grammar writes keys in schema order
    '{"name":"x","age":1,"other":1}',
    '{"name":"x","age":1,"score":2.26}',
    '{"name":"x","age":1,"score":0.4}',
    '{"name":"x","age":1,"tags":["a","a","a","a"]}',
    '{"name":"x","age":1.5}',
    '{"name":"x", "age":1}', // no whitespace
    '{"name":"\\ud800","age":1}', // no surrogate escapes
  ];
  for (const t of yes) assert.ok(g.accepts(t), t);
  for (const t of no) assert.ok(!g.accepts(t), t);
});

Deno.test("grammar: the json mode accepts any compact JSON value and nothing else", () => {
  const g = JsonGrammar.anyValue();
  for (const t of ['{"a":[1,2.5e3,-0.1,true,null,{"b":"c"}]}', "12", "[]", '"x"', "-0", "1E+2", "{}"]) {
    assert.ok(g.accepts(t), t);
  }
  for (const t of ['{"a":1,}', "-", "1e", "nul", "01", "[1 ]", "'x'", "", "1.", '"\u0001"']) {
    assert.ok(!g.accepts(t), t);
  }
});

// Soundness against an independent validator: whatever the matcher accepts parses and validates,
// over valid texts and every one-byte mutation of them.
Deno.test("grammar: every text the matcher accepts parses and validates (one-byte mutations)", () => {
  const g = JsonGrammar.fromSchema(PERSON);
  const v = new Validator(PERSON as never, "2020-12");
  let seed = 11;
  const rng = { next: () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648) };
  const alphabet = enc.encode('{}[]",:0123456789.-eE+ntruefalsxyz\\u');
  let accepted = 0;
  for (
    const base of ['{"name":"Ann","age":37,"tags":["a",1],"score":1.5}', '{"name":"x","age":0,"score":null}']
  ) {
    const bytes = enc.encode(base);
    for (let k = 0; k < 400; k++) {
      const m = bytes.slice();
      const i = Math.floor(rng.next() * m.length);
      m[i] = alphabet[Math.floor(rng.next() * alphabet.length)];
      const text = new TextDecoder().decode(m);
      if (!g.accepts(text)) continue;
      accepted++;
      assert.ok(v.validate(JSON.parse(text)).valid, text);
    }
  }
  assert.ok(accepted > 20, `only ${accepted} mutations were accepted`);
});

Deno.test("grammar: zod's JSON Schema output compiles (objects, optional, nullable, enums, tuples, records, discriminated unions)", () => {
  const Address = z.object({ street: z.string(), zip: z.string().min(5).max(5) });
  const schema = z.object({
    name: z.string().describe("who"),
    age: z.number().int().min(0).max(130),
    email: z.string().optional(),
    kind: z.enum(["a", "b"]),
    score: z.number().nullable(),
    home: Address,
    list: z.array(z.union([z.string(), z.number()])).max(3),
    pair: z.tuple([z.string(), z.boolean()]),
    lit: z.literal("x"),
    counts: z.record(z.string(), z.number()),
    positive: z.number().positive(),
    big: z.int(),
    shape: z.discriminatedUnion("t", [
      z.object({ t: z.literal("a"), x: z.number() }),
      z.object({ t: z.literal("b") }),
    ]),
  });
  const json = z.toJSONSchema(schema) as Record<string, unknown>;
  const g = JsonGrammar.fromSchema(json);
  const value = {
    name: "n",
    age: 30,
    kind: "b",
    score: null,
    home: { street: "s", zip: "12345" },
    list: ["x", 2],
    pair: ["p", true],
    lit: "x",
    counts: { a: 1 },
    positive: 0.5,
    big: -7,
    shape: { t: "a", x: 1 },
  };
  assert.ok(g.accepts(JSON.stringify(value)));
  assert.ok(!g.accepts(JSON.stringify({ ...value, positive: 0 })), "exclusiveMinimum 0");
  assert.ok(!g.accepts(JSON.stringify({ ...value, home: { street: "s", zip: "1234" } })), "minLength 5");
  assert.ok(
    !g.accepts(JSON.stringify({ ...value, shape: { t: "b", x: 1 } })),
    "discriminated option b has no x",
  );
});

Deno.test("grammar: a schema the grammar cannot express is refused, naming the keyword and where", () => {
  const refused: [unknown, RegExp][] = [
    [{ type: "string", pattern: "^a+$" }, /"pattern" at #/],
    [
      { type: "object", properties: { e: { type: "string", format: "email" } } },
      /"format" at #\/properties\/e/,
    ],
    [{ not: { type: "null" } }, /"not"/],
    [{ if: { type: "string" }, then: { minLength: 1 } }, /"if"/],
    [{ allOf: [{ type: "string" }] }, /"allOf"/],
    [{ type: "array", items: { type: "integer" }, uniqueItems: true }, /"uniqueItems"/],
    [{ type: "number", multipleOf: 3 }, /"multipleOf"/],
    [{ type: "object", patternProperties: { "^x": {} } }, /"patternProperties"/],
    [
      { oneOf: [{ type: "string" }, { type: "string", minLength: 2 }] },
      /oneOf whose options 0 and 1 may both match/,
    ],
    [
      { $defs: { n: { type: "object", properties: { next: { $ref: "#/$defs/n" } } } }, $ref: "#/$defs/n" },
      /recursive \$ref "#\/\$defs\/n"/,
    ],
    [{ $ref: "https://example.com/schema.json" }, /non-local \$ref/],
  ];
  for (const [schema, message] of refused) {
    throwsKvfold(
      () => JsonGrammar.fromSchema(schema as Record<string, unknown>),
      "UNSUPPORTED",
      message,
      /Cannot compile JSON schema/,
    );
  }
  // zod's recursive schemas (z.lazy / getters) come out as a recursive $ref.
  const Node: z.ZodType = z.object({
    value: z.number(),
    get children() {
      return z.array(Node);
    },
  });
  throwsKvfold(
    () => JsonGrammar.fromSchema(z.toJSONSchema(Node) as Record<string, unknown>),
    "UNSUPPORTED",
    /recursive \$ref/,
  );
  throwsKvfold(
    () => JsonGrammar.fromSchema({ type: "integer", minimum: 3, maximum: 2 }),
    "INVALID_ARGUMENT",
    /bounds/,
  );
  assert.throws(() => JsonGrammar.fromSchema("object" as never), TypeError);
});

Deno.test("grammar: local $refs and $defs resolve, and shared definitions compile once per use", () => {
  const g = JsonGrammar.fromSchema({
    $defs: {
      point: {
        type: "object",
        properties: { x: { type: "integer" } },
        required: ["x"],
        additionalProperties: false,
      },
    },
    type: "object",
    properties: { a: { $ref: "#/$defs/point" }, b: { $ref: "#/properties/a" } },
    required: ["a", "b"],
    additionalProperties: false,
  });
  assert.ok(g.accepts('{"a":{"x":1},"b":{"x":-2}}'));
  assert.ok(!g.accepts('{"a":{"x":1},"b":{}}'));
});

// A vocabulary whose tokens straddle grammar boundaries: `",`, `":`, `"}`, `1,`, `{"`.
const PIECES = [
  '{"',
  '"',
  "name",
  '":',
  '",',
  '"}',
  "}",
  "{",
  "1",
  "1,",
  "12",
  ",",
  ":",
  "a",
  "ab",
  "age",
  "x",
  " ",
  '"a',
  "tr",
  "ue",
  "true",
  "nul",
  "l",
  "]",
  "[",
  "]}",
  "\\",
  "n",
  "\u00e9",
  "\u00e9",
];
const VOCAB = PIECES.map((p) => enc.encode(p));
VOCAB[PIECES.length - 1] = Uint8Array.of(0xc3); // half of é: legal only when the next byte completes it
VOCAB.push(Uint8Array.of(0xa9));

Deno.test("grammar: the trie walk allows exactly the tokens a byte-by-byte match allows, at every prefix", () => {
  const g = JsonGrammar.fromSchema(PERSON);
  const trie = new TokenTrie(VOCAB, VOCAB.length + 2);
  for (
    const text of [
      "",
      "{",
      '{"',
      '{"name":"a',
      '{"name":"\u00e9',
      '{"name":"ab","age":1',
      '{"name":"a","age":12',
      '{"name":"a"',
    ]
  ) {
    const state = stepBytes(initialState(g.root), enc.encode(text));
    assert.ok(state.length > 0, text);
    const mask = computeMask(trie, state);
    const brute = VOCAB.flatMap((b, id) => stepBytes(state, b).length > 0 ? [id] : []);
    assert.deepEqual([...mask.ids].sort((a, b) => a - b), brute, text);
    for (let k = 0; k < mask.ids.length; k++) {
      assert.equal(mask.costs[k], minCompletion(stepBytes(state, VOCAB[mask.ids[k]])), text);
    }
  }
  // Straddling tokens: after `{"name":"a` the token `",` closes the string and opens the next key.
  const state = stepBytes(initialState(g.root), enc.encode('{"name":"a'));
  const ids = new Set(computeMask(trie, state).ids);
  assert.ok(ids.has(PIECES.indexOf('",')));
  assert.ok(!ids.has(PIECES.indexOf('"}')), "age is required");
  assert.ok(ids.has(PIECES.indexOf(" ")), "a space inside a string");
  const between = new Set(computeMask(trie, stepBytes(initialState(g.root), enc.encode('{"name":"a"'))).ids);
  assert.ok(!between.has(PIECES.indexOf(" ")), "no whitespace between tokens of the structure");
  assert.ok(between.has(PIECES.indexOf(",")) && !between.has(PIECES.indexOf("}")));
  const half = PIECES.length - 1;
  assert.ok(ids.has(half), "a lead byte inside a string");
  assert.ok(!ids.has(VOCAB.length - 1), "a lone continuation byte");
});

Deno.test("grammar: the budget keeps only tokens that can still close the value, and end ids only when whole", () => {
  const g = JsonGrammar.fromSchema({
    type: "object",
    properties: { a: { type: "array", items: { type: "integer" } } },
    required: ["a"],
    additionalProperties: false,
  });
  const trie = new TokenTrie(VOCAB, VOCAB.length + 2);
  const eos = VOCAB.length + 1;
  const state = stepBytes(initialState(g.root), enc.encode('{"a":[1'));
  const mask = computeMask(trie, state);
  const allowed = (bits: Uint8Array) => VOCAB.flatMap((_, id) => bits[id >> 3] & (1 << (id & 7)) ? [id] : []);
  // `]}` closes in one token; with a budget of 0 tokens after it, only tokens that close at once remain.
  assert.deepEqual(allowed(budgetBits(mask, 0, [eos], trie.size)).map((id) => PIECES[id]), ["]}"]);
  const roomy = allowed(budgetBits(mask, 10, [eos], trie.size)).map((id) => PIECES[id]);
  for (const p of ["1", "1,", "12", ",", "]", "]}"]) assert.ok(roomy.includes(p), p);
  const bits = budgetBits(mask, 10, [eos], trie.size);
  assert.equal(bits[eos >> 3] & (1 << (eos & 7)), 0, "no end token before the value is whole");
  const done = computeMask(trie, stepBytes(initialState(g.root), enc.encode('{"a":[]}')));
  const end = budgetBits(done, 10, [eos], trie.size);
  assert.deepEqual(allowed(end), []);
  assert.notEqual(end[eos >> 3] & (1 << (eos & 7)), 0);
});

// `kvfold generate --json-schema FILE` and `--json`: the output is what the API generates under the
// same schema, it parses and validates; a schema the grammar cannot express is refused by name.
import assert from "node:assert/strict";
import { join } from "node:path";
import { Validator } from "npm:@cfworker/json-schema@4.1.6";
import { runCli, tempDir, testEngine, testModel } from "./_fixtures.ts";

const SCHEMA = {
  type: "object",
  properties: {
    title: { type: "string", maxLength: 8 },
    year: { type: "integer", minimum: 1900, maximum: 2100 },
  },
  required: ["title", "year"],
  additionalProperties: false,
};

Deno.test("cli: generate --json-schema writes the API's constrained output, valid against the schema", async () => {
  const model = await testModel("grammar-cli", { seed: 4 });
  const dir = await tempDir();
  try {
    const file = join(dir, "schema.json");
    await Deno.writeTextFile(file, JSON.stringify(SCHEMA));
    const args = [
      "--model",
      model,
      "--prompt",
      "A film:",
      "--max-tokens",
      "40",
      "--temperature",
      "1",
      "--seed",
      "9",
    ];
    const r = await runCli("generate", ...args, "--json-schema", file);
    assert.equal(r.code, 0, r.err);
    const value = JSON.parse(r.out);
    assert.ok(new Validator(SCHEMA as never, "2020-12").validate(value).valid, r.out);
    using m = await (await testEngine()).loadModel(model);
    let want = "";
    for await (
      const p of m.generate("A film:", { maxTokens: 40, temperature: 1, seed: 9, jsonSchema: SCHEMA })
    ) want += p;
    assert.equal(r.out, want + "\n");

    const any = await runCli("generate", ...args, "--json");
    assert.equal(any.code, 0, any.err);
    JSON.parse(any.out);

    await Deno.writeTextFile(file, JSON.stringify({ type: "string", pattern: "^[a-z]+$" }));
    const refused = await runCli("generate", ...args, "--json-schema", file);
    assert.notEqual(refused.code, 0);
    assert.match(refused.err, /Cannot compile JSON schema: the keyword "pattern" at # cannot be expressed/);
    const both = await runCli("generate", ...args, "--json-schema", file, "--json");
    assert.notEqual(both.code, 0);
    assert.match(both.err, /--json-schema or --json, not both/);
    await Deno.writeTextFile(file, "{ nope");
    const broken = await runCli("generate", ...args, "--json-schema", file);
    assert.match(broken.err, /schema\.json is not JSON/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// Hostile command lines: integer flags parsed strictly, unknown words refused, shapes checked, and
// every failure one "kvfold <command>: ..." line with a non-zero exit, never a stack trace.
import assert from "node:assert/strict";
import { writeSafetensorsFile } from "../src/formats/safetensors.ts";
import { runCli, tempDir, testModel } from "./_fixtures.ts";

// One clear line, exit 1, and nothing that looks like a JS stack frame.
function assertRefused(r: { code: number; out: string; err: string }, re: RegExp): void {
  assert.equal(r.code, 1, r.err);
  assert.match(r.err, re);
  assert.match(r.err, /^kvfold [\w-]+: Cannot /m);
  assert.doesNotMatch(r.err, /\n\s+at |\.ts:\d+:\d+/, "stack trace printed");
}

Deno.test("cli args: token ids past a safe integer, int32 or the vocabulary are refused as written", async () => {
  const model = await testModel("gqa", { seed: 11 });
  const dir = await tempDir();
  try {
    const logits = (ids: string) =>
      runCli("logits", "--model", model, "--ids", ids, "--out", `${dir}/l.safetensors`);
    // Once read as id 0 (the nearest double is 2**53, which wrapped to 0).
    assertRefused(
      await logits("1,9007199254740993"),
      /--ids: item 1 "9007199254740993" is outside \[0, 9007199254740991\]/,
    );
    // Once reported as "token id -2147483648".
    const wrapped = await logits("2147483648");
    assertRefused(
      wrapped,
      /token id 2147483648 at index 0 is outside \[0, 512\), the vocabulary of 512 tokens/,
    );
    assert.doesNotMatch(wrapped.err, /-2147483648/);
    assertRefused(await logits("1,-3"), /--ids: item 1 "-3" is outside/);
    assertRefused(await logits("1e3"), /--ids: item 0 "1e3" is not an integer/);
    assertRefused(await logits("0x10"), /--ids: item 0 "0x10" is not an integer/);
    assertRefused(await logits("1,,2"), /--ids: item 1 "" is not an integer/);
    await assert.rejects(Deno.stat(`${dir}/l.safetensors`), Deno.errors.NotFound);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli args: integer flags are decimal, in range, exactly as written", async () => {
  const model = await testModel("gqa", { seed: 11 });
  const gen = (...flags: string[]) => runCli("generate", "--model", model, "--prompt", "hi", ...flags);
  assertRefused(
    await gen("--context-size", "4294967312"),
    /--context-size: "4294967312" is outside \[0, 2147483647\]/,
  );
  assertRefused(await gen("--max-tokens", "1e3"), /--max-tokens: "1e3" is not an integer/);
  assertRefused(await gen("--max-tokens=-1"), /--max-tokens: "-1" is outside/);
  assertRefused(await gen("--max-tokens", " 5"), /--max-tokens: " 5" is not an integer/);
  assertRefused(await gen("--threads", "many"), /--threads: "many" is not an integer/);
  assertRefused(
    await gen("--seed", "9007199254740993"),
    /--seed: "9007199254740993" is outside \[0, 9007199254740991\]/,
  );
  assertRefused(await gen("--top-k", "2147483648"), /--top-k: "2147483648" is outside/);
  assertRefused(await gen("--cache", "h2o", "--slots", "4294967304"), /--slots: "4294967304" is outside/);
  assertRefused(await gen("--temperature", "0x10"), /--temperature: "0x10" is not a number/);
  assertRefused(await gen("--temperature", ""), /--temperature: "" is not a number/);
});

Deno.test("cli args: an unknown --backend or --dtype is a clear error, not a TypeError", async () => {
  const model = await testModel("gqa", { seed: 11 });
  const gen = (...flags: string[]) => runCli("generate", "--model", model, "--prompt", "hi", ...flags);
  assertRefused(
    await gen("--backend", "xyz"),
    /--backend: "xyz" is not one of auto, cpu, cuda \[INVALID_ARGUMENT\]/,
  );
  assertRefused(
    await gen("--dtype", "int4"),
    /--dtype: "int4" is not one of auto, f32, f16, bf16, q8_0, q4_0 \[INVALID_ARGUMENT\]/,
  );
  assertRefused(
    await runCli("bench", "decode", "--model", model, "--backend", "toString"),
    /--backend: "toString" is not one of/,
  );
});

Deno.test("cli args: --max-tokens 0 prints no negative rate", async () => {
  const model = await testModel("gqa", { seed: 11 });
  const r = await runCli("generate", "--model", model, "--prompt", "hi", "--max-tokens", "0");
  assert.equal(r.code, 0, r.err);
  assert.equal(r.out, "\n");
  assert.match(r.err, /0 generated at n\/a tok\/s; stop: max-tokens/);
  assert.doesNotMatch(r.err, /-\d/);
  const one = await runCli(
    "generate",
    "--model",
    model,
    "--prompt",
    "hi",
    "--max-tokens",
    "1",
    "--temperature",
    "0",
  );
  assert.equal(one.code, 0, one.err);
  assert.match(one.err, /1 generated at n\/a tok\/s/);
});

Deno.test("cli args: a --prefix whose last dimension is not the hidden size is refused", async () => {
  const model = await testModel("gqa", { seed: 11 });
  const dir = await tempDir();
  try {
    // [4, 32] holds as many values as [2, 64]: it was once run as two rows of the hidden-64 model.
    await writeSafetensorsFile(`${dir}/p.safetensors`, [{
      name: "embeddings",
      dtype: "F32",
      shape: [4, 32],
      data: new Float32Array(128).fill(0.01),
    }]);
    const r = await runCli(
      "logits",
      "--model",
      model,
      "--ids",
      "1,2",
      "--prefix",
      `${dir}/p.safetensors`,
      "--out",
      `${dir}/l.safetensors`,
    );
    assertRefused(
      r,
      /--prefix .*p\.safetensors: "embeddings" is \[4, 32\], but the model's hidden size is 64 \(want \[K, 64\]\) \[FORMAT\]/,
    );
    await assert.rejects(Deno.stat(`${dir}/l.safetensors`), Deno.errors.NotFound);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

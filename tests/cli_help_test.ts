// The CLI as a new user meets it: --help per command (from the same table that parses it),
// --version, a suggestion on a mistyped flag, compress --replace, and progress fit for a log file.
import assert from "node:assert/strict";
import { COMMANDS } from "../cli/main.ts";
import { VERSION } from "../cli/_version.ts";
import { Kvfold } from "../mod.ts";
import { repoRoot } from "../src/_native_build.ts";
import { runCli, tempDir } from "./_fixtures.ts";

Deno.test("cli help: every command's --help exits 0 and lists every option its parser accepts", async () => {
  for (const { spec } of COMMANDS) {
    const r = await runCli(spec.name, "--help");
    assert.equal(r.code, 0, `${spec.name}: ${r.err}`);
    assert.match(r.out, new RegExp(`^Usage: kvfold ${spec.name}\\b`), spec.name);
    assert.doesNotMatch(r.out, /deno task/);
    for (const [name, flag] of Object.entries(spec.options)) {
      const shown = `--${name}${flag.type === "string" ? ` ${flag.arg}` : ""}`;
      assert.ok(r.out.includes(shown), `${spec.name} --help does not list ${shown}:\n${r.out}`);
      assert.ok(flag.help, `${spec.name} --${name} has no help text`);
    }
    assert.match(r.out, /-h, --help/);
  }
  // -h too, and anywhere among the other flags.
  const short = await runCli("generate", "--model", "x", "-h");
  assert.equal(short.code, 0, short.err);
  assert.match(short.out, /^Usage: kvfold generate/);
});

Deno.test("cli help: kvfold --help names every command and no `deno task`", async () => {
  const r = await runCli("--help");
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /^Usage: kvfold <command> \[options\]/m);
  assert.doesNotMatch(r.out, /deno task/);
  for (const { spec } of COMMANDS) {
    assert.ok(
      r.out.split("\n").some((l) =>
        /^ {2}\S/.test(l) && l.trim().split(/ {2,}/).join(" ") ===
          `${spec.name} ${spec.summary}`
      ),
      `${spec.name} is missing from:\n${r.out}`,
    );
  }
  const none = await runCli();
  assert.equal(none.code, 2);
  assert.equal(none.out, r.out);
});

Deno.test("cli help: a mistyped flag or command is refused with the nearest one suggested", async () => {
  const lr = await runCli("train", "lora", "--lrr", "1e-3");
  assert.equal(lr.code, 2, lr.err);
  assert.match(lr.err, /^kvfold train: unknown option --lrr; did you mean --lr\?$/m);
  assert.match(lr.err, /kvfold train --help/);
  const far = await runCli("generate", "--frobnicate");
  assert.equal(far.code, 2);
  assert.match(far.err, /^kvfold generate: unknown option --frobnicate$/m);
  const missing = await runCli("generate", "--max-tokens");
  assert.equal(missing.code, 2);
  assert.match(missing.err, /option --max-tokens needs a value/);
  const cmd = await runCli("genrate");
  assert.equal(cmd.code, 2);
  assert.match(cmd.err, /unknown command "genrate"; did you mean generate\?/);
});

Deno.test("cli help: --version prints the package version and the native library's version and ABI", async () => {
  const deno = JSON.parse(Deno.readTextFileSync(`${repoRoot()}/deno.json`));
  const npm = JSON.parse(Deno.readTextFileSync(`${repoRoot()}/package.json`));
  assert.equal(VERSION, deno.version, "cli/_version.ts disagrees with deno.json");
  assert.equal(VERSION, npm.version, "cli/_version.ts disagrees with package.json");
  const info = await Kvfold.info();
  const r = await runCli("--version");
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, new RegExp(`^kvfold ${VERSION.replaceAll(".", "\\.")}$`, "m"));
  assert.ok(r.out.includes(`native library ${info.version} (ABI ${info.abiVersion})`), r.out);
});

Deno.test("cli help: compress refuses a stored source up front, --replace replaces it, progress has no \\r off a terminal", async () => {
  const dir = await tempDir();
  try {
    const made = await runCli("make-test-model", `${dir}/c`, "--preset", "compressor", "--seed", "2");
    assert.equal(made.code, 0, made.err);
    const doc = `${dir}/doc.txt`;
    Deno.writeTextFileSync(doc, "The quick brown fox jumps over the lazy dog. ".repeat(30));
    const compress = (...flags: string[]) =>
      runCli("compress", "--compressor", `${dir}/c`, "--store", `${dir}/s.sqlite`, ...flags, doc);
    const stats = async () => (await runCli("store", "stats", `${dir}/s.sqlite`)).out;

    const first = await compress("--chunk-tokens", "64");
    assert.equal(first.code, 0, first.err);
    // stderr is a pipe here: plain progress lines, never a carriage return.
    assert.ok(!first.err.includes("\r"), JSON.stringify(first.err));
    assert.match(first.err, /^100% (\d+)\/\1 tokens/m);
    assert.match(first.err, /doc\.txt: \d+ tokens -> \d+ vectors/);
    assert.match(await stats(), /documents: +1 \(\d+ chunks/);

    const again = await compress();
    assert.equal(again.code, 1);
    assert.match(again.err, /already in the store .*; pass --replace to replace it \[INVALID_STATE\]/);
    assert.doesNotMatch(again.err, /tokens,/, "refused before compressing anything");

    const replaced = await compress("--replace", "--chunk-tokens", "1000");
    assert.equal(replaced.code, 0, replaced.err);
    assert.match(replaced.err, /replacing the stored one/);
    assert.match(await stats(), /documents: +1 \(1 chunks/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

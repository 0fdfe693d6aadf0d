// A weights file truncated by another process while its model is loaded. Loaded the default way
// (read into owned memory) the model keeps working; loaded with `mmap: true` the process stops
// with a message naming the file. Run in a subprocess, so a signal fails the test instead of
// killing the runner.
import assert from "node:assert/strict";
import { repoRoot } from "../src/_native_build.ts";
import { tempDir, testModel } from "./_fixtures.ts";

async function truncatedCopy(mmap: boolean) {
  const dir = await tempDir();
  const src = await testModel("gqa", { seed: 11 });
  for await (const e of Deno.readDir(src)) {
    if (e.isFile) await Deno.copyFile(`${src}/${e.name}`, `${dir}/${e.name}`);
  }
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${repoRoot()}/tests/_truncate_while_loaded.ts`, dir, mmap ? "1" : "0"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  await Deno.remove(dir, { recursive: true });
  const d = new TextDecoder();
  return { ...out, dir, stdout: d.decode(out.stdout), stderr: d.decode(out.stderr) };
}

Deno.test("hostile weights: a model read into memory keeps generating after its file is truncated", async () => {
  const r = await truncatedCopy(false);
  assert.equal(r.signal, null, `killed by ${r.signal}:\n${r.stderr.slice(-2000)}`);
  assert.equal(r.code, 0, r.stderr.slice(-2000));
  const { before, after, reload } = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
  assert.equal(before.length, 8);
  assert.deepEqual(after, { value: before }); // the same greedy tokens
  // A fresh load of the truncated file is refused with a message naming it.
  assert.ok(reload.code === "FORMAT" || reload.code === "IO", reload.code);
  assert.ok(reload.message.includes(`${r.dir}/model.safetensors`), reload.message);
});

Deno.test("hostile weights: with mmap, a truncated file stops the process with a message naming it", async () => {
  const r = await truncatedCopy(true);
  assert.equal(r.signal, "SIGBUS", `exit ${r.code}, signal ${r.signal}:\n${r.stderr.slice(-2000)}`);
  assert.ok(
    r.stderr.includes(
      `kvfold: fatal: ${r.dir}/model.safetensors was truncated or replaced by another process`,
    ),
    r.stderr.slice(-2000),
  );
});

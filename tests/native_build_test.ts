// The native library builds itself when missing and again when a source under ffi/ changes.
import assert from "node:assert/strict";
import { ensureNativeLibrary, repoRoot, sourceHash } from "../src/_native_build.ts";

Deno.test("native build: built when missing, reused when fresh, rebuilt when a source changes", async () => {
  const root = await Deno.makeTempDir({ prefix: "kvfold-build-" });
  try {
    // A private copy of ffi/, so editing it cannot disturb the library other tests use.
    await new Deno.Command("cp", { args: ["-r", `${repoRoot()}/ffi`, `${root}/ffi`] }).output();
    const lines: string[] = [];
    const log = (l: string) => lines.push(l);
    const out = `${root}/build`;
    const lib = await ensureNativeLibrary({ root, buildDir: out, log, cuda: false });
    assert.equal(lib, `${out}/libkvfold.so`);
    assert.ok(lines.some((l) => l.includes("building")), lines.join("\n"));
    const firstBuild = Deno.statSync(lib).mtime!.getTime();
    assert.equal(
      Deno.readTextFileSync(`${out}/libkvfold.stamp`).trim(),
      await sourceHash(root, { KVFOLD_CUDA: "0" }),
    );

    lines.length = 0;
    await ensureNativeLibrary({ root, buildDir: out, log, cuda: false });
    assert.equal(lines.length, 0, "a fresh library must not be rebuilt");

    const hashBefore = await sourceHash(root, { KVFOLD_CUDA: "0" });
    Deno.writeTextFileSync(`${root}/ffi/src/common.cpp`, "\n// edited\n", { append: true });
    assert.notEqual(await sourceHash(root, { KVFOLD_CUDA: "0" }), hashBefore);
    await ensureNativeLibrary({ root, buildDir: out, log, cuda: false });
    assert.ok(lines.some((l) => l.includes("building")), "an edited source must trigger a rebuild");
    assert.ok(Deno.statSync(lib).mtime!.getTime() >= firstBuild);
    assert.equal(
      Deno.readTextFileSync(`${out}/libkvfold.stamp`).trim(),
      await sourceHash(root, { KVFOLD_CUDA: "0" }),
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("native build: a compiler error is reported as a BUILD KvfoldError with the compiler's text", async () => {
  const root = await Deno.makeTempDir({ prefix: "kvfold-build-" });
  try {
    await new Deno.Command("cp", { args: ["-r", `${repoRoot()}/ffi`, `${root}/ffi`] }).output();
    Deno.writeTextFileSync(`${root}/ffi/src/common.cpp`, "this is not C++;\n", { append: true });
    await assert.rejects(
      () => ensureNativeLibrary({ root, buildDir: `${root}/build`, log: () => {}, cuda: false }),
      (e: unknown) => (e as { code?: string }).code === "BUILD" && /common\.cpp/.test((e as Error).message),
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

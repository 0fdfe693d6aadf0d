// The native library builds itself when missing and again when a source or setting changes, says why,
// and keeps its CPU-only and CUDA builds in folders of their own.
import assert from "node:assert/strict";
import {
  buildDir,
  buildManifest,
  buildVariant,
  ensureNativeLibrary,
  rebuildReason,
  repoRoot,
} from "../src/_native_build.ts";

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
    assert.ok(lines.some((l) => /building .*: no library built yet/.test(l)), lines.join("\n"));
    const firstBuild = Deno.statSync(lib).mtime!.getTime();
    const stamp = () => JSON.parse(Deno.readTextFileSync(`${out}/libkvfold.stamp`));
    assert.equal(stamp().hash, (await buildManifest(root, { KVFOLD_CUDA: "0" })).hash);
    assert.equal(stamp().settings.KVFOLD_CUDA, "0");

    lines.length = 0;
    await ensureNativeLibrary({ root, buildDir: out, log, cuda: false });
    assert.equal(lines.length, 0, "a fresh library must not be rebuilt");

    Deno.writeTextFileSync(`${root}/ffi/src/common.cpp`, "\n// edited\n", { append: true });
    await ensureNativeLibrary({ root, buildDir: out, log, cuda: false });
    assert.ok(
      lines.some((l) => /building .*: ffi\/src\/common\.cpp changed \.\.\./.test(l)),
      `an edited source must trigger a rebuild that names it:\n${lines.join("\n")}`,
    );
    assert.ok(Deno.statSync(lib).mtime!.getTime() >= firstBuild);
    assert.equal(stamp().hash, (await buildManifest(root, { KVFOLD_CUDA: "0" })).hash);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("native build: the reason for a rebuild names the files and settings that differ", async () => {
  const root = repoRoot();
  const now = await buildManifest(root, { KVFOLD_CUDA: "0" });
  const stamp = (m: unknown) => JSON.stringify(m);
  assert.equal(rebuildReason(stamp(now), now, true), null);
  assert.equal(rebuildReason(stamp(now), now, false), "no library built yet");
  assert.equal(rebuildReason(null, now, true), "no build manifest beside the library");
  // A stamp of the older layout (the bare hash) still counts when it matches.
  assert.equal(rebuildReason(now.hash, now, true), null);
  assert.match(rebuildReason("0".repeat(64), now, true)!, /older kvfold/);

  const files = { ...now.files };
  const first = Object.keys(files)[0];
  files[first] = "0".repeat(64);
  delete files[Object.keys(files)[1]];
  files["/ffi/src/new.cpp"] = "1".repeat(64);
  const old = { hash: "x", files, settings: { ...now.settings, KVFOLD_CXXFLAGS: "-O0" } };
  const why = rebuildReason(stamp(old), now, true)!;
  assert.ok(why.includes(`${first.slice(1)} changed`), why);
  assert.ok(why.includes(`${Object.keys(now.files)[1].slice(1)} added`), why);
  assert.ok(why.includes("ffi/src/new.cpp removed"), why);
  assert.ok(why.includes(`KVFOLD_CXXFLAGS differs (was "-O0", now "")`), why);
});

Deno.test("native build: CPU-only, CUDA and sanitizer builds live in folders of their own", async () => {
  if (Deno.env.get("KVFOLD_BUILD_DIR")) return; // a fixed folder for every build, by request
  const root = repoRoot();
  const plain = { KVFOLD_SANITIZE: "" }; // whatever this process's environment says
  assert.equal(await buildVariant(root, { ...plain, KVFOLD_CUDA: "0" }), "cpu");
  assert.equal(await buildVariant(root, { ...plain, KVFOLD_CUDA: "1" }), "cuda");
  assert.equal(await buildVariant(root, { ...plain, KVFOLD_CUDA: "auto", NVCC: "/nonexistent/nvcc" }), "cpu");
  assert.equal(await buildVariant(root, { KVFOLD_CUDA: "1", KVFOLD_SANITIZE: "address" }), "cpu");
  assert.equal(await buildDir(root, { KVFOLD_CUDA: "0", KVFOLD_SANITIZE: "" }), `${root}/build/cpu`);
  assert.equal(await buildDir(root, { KVFOLD_CUDA: "1", KVFOLD_SANITIZE: "" }), `${root}/build/cuda`);
  assert.equal(
    await buildDir(root, { KVFOLD_SANITIZE: "address,undefined" }),
    `${root}/build/sanitize-address-undefined`,
  );
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

// The native library's own C++ checks (kernels against a double-precision reference; JSON,
// safetensors and config.json parsing with every error path; gradient replicas on real threads),
// built and run as part of the suite.
import assert from "node:assert/strict";
import { ensureNativeLibrary, repoRoot } from "../src/_native_build.ts";
import { tempDir } from "./_fixtures.ts";

// `KVFOLD_SANITIZE` (tests/sanitize.sh) builds the checks with the sanitizers the library uses.
function optimization(): string[] {
  const sanitize = Deno.env.get("KVFOLD_SANITIZE");
  if (!sanitize) return ["-O2"];
  return ["-O1", "-g", "-fno-omit-frame-pointer", `-fsanitize=${sanitize}`, "-fno-sanitize-recover=all"];
}

async function buildAndRun(name: string, sources: string[], link: string[] = []): Promise<string> {
  const root = repoRoot();
  const outDir = await tempDir("kvfold-native-");
  try {
    const exe = `${outDir}/${name}`;
    const cc = await new Deno.Command("g++", {
      args: [
        "-std=c++17",
        ...optimization(),
        "-march=native",
        "-pthread",
        `-I${root}/ffi/include`,
        ...sources.map((s) => `${root}/${s}`),
        ...link,
        "-o",
        exe,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.ok(cc.success, `compiling ${name} failed:\n${new TextDecoder().decode(cc.stderr).slice(-4000)}`);
    const run = await new Deno.Command(exe, { stdout: "piped", stderr: "piped", cwd: outDir }).output();
    const text = new TextDecoder().decode(run.stdout) + new TextDecoder().decode(run.stderr);
    assert.ok(
      run.success,
      `${name} reported failures:\n${
        text.split("\n").filter((l) => /FAIL|Sanitizer|runtime error/i.test(l)).join("\n") ||
        text.slice(-4000)
      }`,
    );
    return text;
  } finally {
    await Deno.remove(outDir, { recursive: true });
  }
}

Deno.test("native: CPU kernels match a double-precision reference at many sizes, dtypes and thread counts", async () => {
  const out = await buildAndRun("cpu_ops_test", [
    "ffi/tests/cpu_ops_test.cpp",
    "ffi/src/cpu_ops.cpp",
    "ffi/src/cpu_matmul.cpp",
    "ffi/src/cpu_matvec.cpp",
    "ffi/src/cpu_matmul_avx512.cpp",
    "ffi/src/cpu_matmul_scalar.cpp",
    "ffi/src/cpu_quant.cpp",
    "ffi/src/cpu_quant_vnni512.cpp",
    "ffi/src/cpu_quant_rows16.cpp",
    "ffi/src/cpu_quant_amx.cpp",
    "ffi/src/cpu_matmul_amx.cpp",
    "ffi/src/cpu_features.cpp",
    "ffi/src/cpu_attention.cpp",
    "ffi/src/cpu_attention_avx512.cpp",
    "ffi/src/cpu_ops_avx512.cpp",
    "ffi/src/cpu_quant_act.cpp",
    "ffi/src/threadpool.cpp",
    "ffi/src/common.cpp",
  ]);
  assert.ok(/ok|pass/i.test(out), out.slice(-2000));
});

for (
  const [name, what] of [
    ["model_files_test", "JSON and safetensors parsing"],
    ["model_folder_test", "config.json parsing and model folders"],
    ["weight_arena_test", "the memory converted weights live in"],
  ]
) {
  Deno.test(`native: ${what}, including every error path`, async () => {
    const out = await buildAndRun(name, [
      `ffi/tests/${name}.cpp`,
      "ffi/src/json.cpp",
      "ffi/src/safetensors.cpp",
      "ffi/src/model_config.cpp",
      "ffi/src/weight_arena.cpp",
      "ffi/src/common.cpp",
    ]);
    assert.match(out, /[1-9]\d* passed, 0 failed/, out.slice(-2000));
  });
}

Deno.test("native: gradient replicas on threads of their own end in the bits of one thread", async () => {
  // Against the library itself (the sanitized one under tests/sanitize.sh), through kvfold.h only.
  const lib = await ensureNativeLibrary();
  const dir = lib.slice(0, lib.lastIndexOf("/"));
  const out = await buildAndRun(
    "train_replicas_threads_test",
    ["ffi/tests/train_replicas_threads_test.cpp"],
    [
      lib,
      `-Wl,-rpath,${dir}`,
    ],
  );
  assert.match(out, /threaded replicas end in the sequential run's bits: 0 of \d+ values differ/);
  assert.match(out, /a second call on a busy replica is refused/);
});

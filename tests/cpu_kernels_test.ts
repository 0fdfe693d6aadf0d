// Every CPU kernel path, on this machine: the native kernel checks (ffi/tests/cpu_kernels_test.cpp:
// each path against float64 references on ragged shapes, llama.cpp's block layouts), then whole
// models under each KVFOLD_CPU setting (scalar, avx2, avx512, avx512bf16) against the float64
// reference. Paths this CPU lacks are reported and skipped (KVFOLD_CPU never raises a path).
import assert from "node:assert/strict";
import { repoRoot } from "../src/_native_build.ts";
import { ensureNativeLibrary } from "../src/_native_build.ts";
import { loadReferenceModel, referenceLogits } from "./reference_forward.ts";
import { relativeError, tempDir, testModel } from "./_fixtures.ts";

const PATHS = ["scalar", "avx2", "avx512", "avx512bf16", "amx"] as const;

Deno.test("cpu kernels: every path against float64 references (native checks)", async () => {
  const root = repoRoot();
  const dir = await tempDir("kvfold-kernels-");
  try {
    const src = [
      "cpu_ops",
      "cpu_matmul",
      "cpu_matmul_avx512",
      "cpu_matvec",
      "cpu_matmul_scalar",
      "cpu_quant",
      "cpu_quant_vnni512",
      "cpu_quant_rows16",
      "cpu_quant_amx",
      "cpu_matmul_amx",
      "cpu_attention",
      "cpu_attention_avx512",
      "cpu_attention_decode",
      "cpu_ops_avx512",
      "cpu_quant_act",
      "cpu_features",
    ]
      .concat(["threadpool", "common"]).map((f) => `${root}/ffi/src/${f}.cpp`);
    const cc = await new Deno.Command("g++", {
      args: [
        "-std=c++17",
        "-O2",
        "-march=native",
        "-pthread",
        `-I${root}/ffi/include`,
        `${root}/ffi/tests/cpu_kernels_test.cpp`,
        `${root}/ffi/tests/cpu_kernels_avx512_test.cpp`,
        `${root}/ffi/tests/cpu_attention_rows_test.cpp`,
        `${root}/ffi/tests/cpu_decode_reads_test.cpp`,
        ...src,
        "-o",
        `${dir}/t`,
      ],
      stderr: "piped",
    }).output();
    assert.ok(cc.success, new TextDecoder().decode(cc.stderr).slice(-4000));
    const run = await new Deno.Command(`${dir}/t`, { stdout: "piped", stderr: "piped" }).output();
    const text = new TextDecoder().decode(run.stdout);
    console.log(text.trim());
    assert.ok(
      run.success && /all checks passed/.test(text),
      text.split("\n").filter((l) => /FAIL/.test(l)).join("\n"),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cpu kernels: whole models under every KVFOLD_CPU path match the float64 reference", async () => {
  const lib = await ensureNativeLibrary();
  const f32Dir = await testModel("paths-f32", { seed: 8 });
  const bf16Dir = await testModel("paths-bf16", { seed: 8, dtype: "bfloat16" });
  const ids = Array.from({ length: 20 }, (_, i) => 3 + ((i * 97) % 500));
  const steps = [5, 9, 11];
  // The reference's logits of the child's prefill, then of each decode step's last position.
  const want = async (dir: string) => {
    const ref = await loadReferenceModel(dir);
    const all = [...referenceLogits(ref, ids)];
    for (let i = 1; i <= steps.length; i++) {
      const l = referenceLogits(ref, [...ids, ...steps.slice(0, i)]);
      all.push(...l.slice(l.length - ref.config.vocabSize));
    }
    return all;
  };
  const wantF32 = await want(f32Dir), wantBf16 = await want(bf16Dir);
  const results: Record<string, { name: string; logits: Record<string, number[]> }> = {};
  for (const path of PATHS) {
    const child = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", new URL("./_cpu_path_child.ts", import.meta.url).pathname, f32Dir, bf16Dir],
      env: { KVFOLD_CPU: path, KVFOLD_LIB: lib },
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.ok(child.success, new TextDecoder().decode(child.stderr).slice(-3000));
    results[path] = JSON.parse(new TextDecoder().decode(child.stdout).trim().split("\n").at(-1)!);
  }
  for (const path of PATHS) {
    const { name, logits } = results[path];
    const ran = name.match(/kernels ([a-z0-9-]+)/)?.[1];
    if (ran !== path.replace("avx512bf16", "avx512-bf16")) {
      console.log(`skip ${path}: this CPU runs ${ran} at most (${name})`);
      continue;
    }
    // f32 weights: f32 arithmetic everywhere. bf16 weights: exact products, except the GEMM of the
    // avx512-bf16 path, which rounds the activations to bf16 (vdpbf16ps) as llama.cpp does.
    const f32Err = relativeError(logits.f32, wantF32), bf16Err = relativeError(logits.bf16, wantBf16);
    console.log(`${path}: f32 ${f32Err.toExponential(2)}, bf16 ${bf16Err.toExponential(2)} (${name})`);
    assert.ok(f32Err < 1e-4, `${path}: f32 logits ${f32Err} from the reference`);
    assert.ok(
      bf16Err < (path === "avx512bf16" || path === "amx" ? 3e-2 : 1e-4),
      `${path}: bf16 logits ${bf16Err} from the reference`,
    );
    // Quantized weights: the same int8 sums on every path, only f32 summation order differs.
    for (const q of ["q8_0", "q4_0"]) {
      const err = relativeError(logits[q], results.scalar.logits[q]);
      assert.ok(err < 1e-4, `${path}: ${q} logits ${err} from the scalar path's`);
    }
  }
});

// `KVFOLD_NATIVE=0` builds without -march=native, for a CPU other than the build machine's: every
// kernel then lives in a function with its own target attribute, and one that calls an intrinsic
// its target lacks stops the build ("inlining failed ... target specific option mismatch"), which
// a -march=native build never shows. -O0 -c: the error needs no optimisation, and takes seconds.
Deno.test({
  name: "cpu kernels: the native sources compile without -march=native (x86-64 baseline, and AVX2)",
  ignore: Deno.build.arch !== "x86_64",
  fn: async () => {
    const root = repoRoot();
    const files: string[] = [];
    for await (const e of Deno.readDir(`${root}/ffi/src`)) {
      if (!e.name.endsWith(".cpp")) continue;
      const text = await Deno.readTextFile(`${root}/ffi/src/${e.name}`);
      if (/immintrin|cpu_simd\.h|target\(/.test(text)) files.push(e.name);
    }
    assert.ok(files.length >= 10, `only ${files.length} files with x86 kernels found in ffi/src`);
    const jobs = files.sort().flatMap((f) =>
      [[] as string[], ["-mavx2", "-mfma", "-mf16c"]].map((arch) => ({ f, arch }))
    );
    const failures: string[] = [];
    const compile = async ({ f, arch }: { f: string; arch: string[] }) => {
      const out = await new Deno.Command("g++", {
        args: [
          "-std=c++17",
          "-O0",
          "-pthread",
          ...arch,
          `-I${root}/ffi/include`,
          "-c",
          `${root}/ffi/src/${f}`,
          "-o",
          "/dev/null",
        ],
        stderr: "piped",
      }).output();
      if (!out.success) {
        const err = new TextDecoder().decode(out.stderr).split("\n").find((l) => /error/.test(l)) ?? "";
        failures.push(`${f} (${arch.join(" ") || "baseline"}): ${err}`);
      }
    };
    for (let i = 0; i < jobs.length; i += 2) await Promise.all(jobs.slice(i, i + 2).map(compile));
    assert.deepEqual(failures, []);
  },
});

// bench/gpu/bench.py drives libkvfold.so through ctypes with its own copy of the ABI's signatures and
// structs, and a GPU session has minutes for it; so the harness runs here first, against the CPU
// library (`--cpu-as-gpu --quick`: the cpu engine checked against itself on the tiny fixtures). An ABI
// change bench.py does not follow (a version bump, a struct field) fails here, not on the GPU.
import assert from "node:assert/strict";
import { libraryPath, native } from "../src/_binding.ts";

await native();

Deno.test("bench/gpu harness: speaks this library's ABI and passes its checks with cpu standing in for cuda", async () => {
  const out = await Deno.makeTempDir({ prefix: "kvfold-gpu-harness-" });
  try {
    const run = await new Deno.Command("python3", {
      args: ["bench/gpu/bench.py", "--lib", libraryPath()!, "--cpu-as-gpu", "--quick", "--out", out],
      cwd: new URL("..", import.meta.url).pathname,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const log = new TextDecoder().decode(run.stdout) + new TextDecoder().decode(run.stderr);
    assert.ok(run.success, `bench.py failed (python3 with numpy is needed):\n${log.slice(-3000)}`);
    const { checks } = JSON.parse(await Deno.readTextFile(`${out}/gpu.json`)) as {
      checks: { fixture: string; check: string; rel_err: number; ok: boolean }[];
    };
    // Every fixture and both dtypes ran, and cpu against cpu is exact.
    assert.ok(checks.length >= 200, `only ${checks.length} checks ran`);
    assert.ok(new Set(checks.map((c) => c.fixture)).size >= 5);
    for (const c of checks) assert.ok(c.ok && c.rel_err === 0, `${c.fixture} ${c.check}: ${c.rel_err}`);
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

// Default thread count: the CPU set the process may run on (taskset, a container's cpuset), not every
// core of the machine, so a pool never spins more threads than it has cores.
import assert from "node:assert/strict";
import { availableParallelism } from "node:os";
import { ensureNativeLibrary } from "../src/_native_build.ts";

async function threadsUnder(prefix: string[]): Promise<number> {
  const lib = await ensureNativeLibrary();
  const code = `import { Kvfold } from ${JSON.stringify(new URL("../mod.ts", import.meta.url).href)};
await using kv = await Kvfold.open({ backend: "cpu" }); console.log(kv.threads);`;
  const [cmd, ...args] = [...prefix, Deno.execPath(), "eval", code];
  const out = await new Deno.Command(cmd, {
    args,
    env: { KVFOLD_LIB: lib },
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  assert.ok(out.success, new TextDecoder().decode(out.stderr).slice(-2000));
  return Number(new TextDecoder().decode(out.stdout).trim().split("\n").at(-1));
}

const hasTaskset = await new Deno.Command("taskset", {
  args: ["-p", String(Deno.pid)],
  stdout: "null",
  stderr: "null",
})
  .output().then((o) => o.success, () => false);

Deno.test("engine: the default thread count is every core the process may use", async () => {
  assert.equal(await threadsUnder([]), availableParallelism());
});

Deno.test({
  name: "engine: under taskset -c 0 the default pool has one thread",
  ignore: !hasTaskset,
  fn: async () => {
    assert.equal(await threadsUnder(["taskset", "-c", "0"]), 1);
  },
});

import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { KvfoldError } from "../src/errors.ts";
import { readSafetensorsFile, type TensorView } from "../src/formats/safetensors.ts";
import { convertTorchCheckpoint, readTorchCheckpoint } from "../src/formats/torch_bin.ts";
import { Pickler, zip } from "./_torch_zip.ts";
import { tempDir } from "./_fixtures.ts";

const FIXTURES = new URL("../../shared/fixtures/torch-bin/", import.meta.url);
const fixture = (p: string) => fileURLToPath(new URL(p, FIXTURES));

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await tempDir("kvfold-torch-bin-");
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function assertSameTensors(actual: Map<string, TensorView>, expected: Map<string, TensorView>) {
  assert.deepEqual([...actual.keys()].sort(), [...expected.keys()].sort());
  for (const [name, e] of expected) {
    const a = actual.get(name)!;
    assert.equal(a.dtype, e.dtype, `dtype of ${name}`);
    assert.deepEqual(a.shape, e.shape, `shape of ${name}`);
    assert.deepEqual(a.data, e.data, `data of ${name}`);
  }
}

async function readOutputs(files: string[]): Promise<Map<string, TensorView>> {
  const all = new Map<string, TensorView>();
  for (const f of files.filter((f) => f.endsWith(".safetensors"))) {
    const { tensors } = await readSafetensorsFile(f);
    const names = [...tensors.keys()];
    assert.deepEqual(names, [...names].sort(), `tensors of ${f} are sorted by name`);
    for (const [k, v] of tensors) {
      assert.ok(!all.has(k), `${k} appears in one shard only`);
      all.set(k, v);
    }
  }
  return all;
}

function isFormatError(pattern?: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof KvfoldError, `expected KvfoldError, got ${e}`);
    assert.equal(e.code, "FORMAT", e.message);
    if (pattern) assert.match(e.message, pattern);
    return true;
  };
}

Deno.test("single: f32/bf16/f16, offset views, transposed and tied tensors match expected", async () => {
  await withTempDir(async (dir) => {
    const { files, tensors } = await convertTorchCheckpoint(fixture("single"), dir);
    assert.deepEqual(files, [join(dir, "model.safetensors")]);
    const expected = (await readSafetensorsFile(fixture("single/expected.safetensors"))).tensors;
    assert.equal(tensors, expected.size);
    const out = await readSafetensorsFile(join(dir, "model.safetensors"));
    assert.equal(out.metadata.format, "pt");
    assertSameTensors(out.tensors, expected);
    const dtypes = new Set([...out.tensors.values()].map((t) => t.dtype));
    for (const d of ["F32", "BF16", "F16"]) assert.ok(dtypes.has(d as TensorView["dtype"]), `has ${d}`);
  });
});

Deno.test("single: a .bin file converts to a named .safetensors file and reads directly", async () => {
  const bin = fixture("single/pytorch_model.bin");
  const direct = readTorchCheckpoint(await Deno.readFile(bin), bin);
  const expected = (await readSafetensorsFile(fixture("single/expected.safetensors"))).tensors;
  assertSameTensors(direct, expected);
  await withTempDir(async (dir) => {
    const out = join(dir, "x.safetensors");
    const r = await convertTorchCheckpoint(bin, out);
    assert.deepEqual(r, { files: [out], tensors: expected.size });
    assertSameTensors((await readSafetensorsFile(out)).tensors, expected);
  });
});

Deno.test("sharded: shards keep their grouping and the union equals expected", async () => {
  await withTempDir(async (dir) => {
    const { files, tensors } = await convertTorchCheckpoint(fixture("sharded"), dir);
    const shard1 = join(dir, "model-00001-of-00002.safetensors");
    const shard2 = join(dir, "model-00002-of-00002.safetensors");
    const indexPath = join(dir, "model.safetensors.index.json");
    assert.deepEqual(files, [shard1, shard2, indexPath]);
    const expected = (await readSafetensorsFile(fixture("sharded/expected.safetensors"))).tensors;
    assert.equal(tensors, expected.size);
    assertSameTensors(await readOutputs(files), expected);

    const srcIndex = JSON.parse(await Deno.readTextFile(fixture("sharded/pytorch_model.bin.index.json")));
    const index = JSON.parse(await Deno.readTextFile(indexPath));
    const rename: Record<string, string> = {
      "pytorch_model-00001-of-00002.bin": "model-00001-of-00002.safetensors",
      "pytorch_model-00002-of-00002.bin": "model-00002-of-00002.safetensors",
    };
    assert.deepEqual(
      Object.entries(index.weight_map).sort(),
      Object.entries(srcIndex.weight_map as Record<string, string>).map(([k, v]) => [k, rename[v]]).sort(),
    );
    let total = 0;
    for (const t of expected.values()) total += t.data.length;
    assert.equal(index.metadata.total_size, total);
    for (const [name, file] of Object.entries(index.weight_map as Record<string, string>)) {
      assert.ok((await readSafetensorsFile(join(dir, file))).tensors.has(name), `${name} in ${file}`);
    }
  });
});

Deno.test("adapter: adapter_model.bin becomes adapter_model.safetensors and the config is copied", async () => {
  await withTempDir(async (dir) => {
    const { files, tensors } = await convertTorchCheckpoint(fixture("adapter"), dir);
    const out = join(dir, "adapter_model.safetensors");
    assert.deepEqual(files, [out, join(dir, "adapter_config.json")]);
    const expected = (await readSafetensorsFile(fixture("adapter/expected.safetensors"))).tensors;
    assert.equal(tensors, expected.size);
    assertSameTensors((await readSafetensorsFile(out)).tensors, expected);
    assert.equal(
      await Deno.readTextFile(join(dir, "adapter_config.json")),
      await Deno.readTextFile(fixture("adapter/adapter_config.json")),
    );
  });
});

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

Deno.test("hostile: a pickle calling os.system is refused and nothing runs", async () => {
  await withTempDir(async (dir) => {
    const out = join(dir, "out");
    await assert.rejects(
      convertTorchCheckpoint(fixture("hostile"), out),
      isFormatError(
        /^Cannot convert .*pytorch_model\.bin: the pickle references posix\.system, which is not part of a plain tensor state dict; refusing to load it$/,
      ),
    );
    const bin = fixture("hostile/pytorch_model.bin");
    assert.throws(() => readTorchCheckpoint(Deno.readFileSync(bin), bin), isFormatError(/posix\.system/));
    assert.ok(!(await exists(join(Deno.cwd(), "kvfold-pickle-ran"))));
    assert.ok(!(await exists(join(dir, "kvfold-pickle-ran"))));
    assert.ok(!(await exists(join(out, "kvfold-pickle-ran"))));
    assert.ok(!(await exists(join(out, "model.safetensors"))));

    // Again in a child process whose working directory is the temp dir.
    const script = `
      import { convertTorchCheckpoint } from ${
      JSON.stringify(new URL("../src/formats/torch_bin.ts", import.meta.url).href)
    };
      try { await convertTorchCheckpoint(${JSON.stringify(bin)}, "out2"); console.log("converted"); }
      catch (e) { console.log(e.code + " " + e.message); }`;
    const child = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--no-config", script],
      cwd: dir,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(child.stdout) + new TextDecoder().decode(child.stderr);
    assert.match(text, /FORMAT Cannot convert .*posix\.system/);
    assert.ok(!(await exists(join(dir, "kvfold-pickle-ran"))));
  });
});

Deno.test("other forbidden globals and unknown opcodes are refused", () => {
  const pkl = (body: number[]) => zip([["a/data.pkl", new Uint8Array([0x80, 2, ...body, 0x2e])]]);
  const enc = (s: string) => [...new TextEncoder().encode(s)];
  assert.throws(
    () => readTorchCheckpoint(pkl([0x63, ...enc("builtins\neval\n")]), "x.bin"),
    isFormatError(/references builtins\.eval, which is not part/),
  );
  // STACK_GLOBAL with os.system.
  assert.throws(
    () =>
      readTorchCheckpoint(
        pkl([0x8c, 2, ...enc("os"), 0x8c, 6, ...enc("system"), 0x93]),
        "x.bin",
      ),
    isFormatError(/references os\.system/),
  );
  // NEWOBJ (0x81) is not supported.
  assert.throws(
    () => readTorchCheckpoint(pkl([0x7d, 0x81]), "x.bin"),
    isFormatError(/opcode 0x81 at offset 3/),
  );
});

Deno.test("a truncated zip is a FORMAT error; a missing source is an IO error", async () => {
  const bytes = await Deno.readFile(fixture("single/pytorch_model.bin"));
  for (const cut of [10, 100, bytes.length / 2, bytes.length - 30]) {
    assert.throws(() => readTorchCheckpoint(bytes.subarray(0, Math.floor(cut)), "t.bin"), isFormatError());
  }
  await withTempDir(async (dir) => {
    const truncated = join(dir, "pytorch_model.bin");
    await Deno.writeFile(truncated, bytes.subarray(0, bytes.length - 100));
    await assert.rejects(convertTorchCheckpoint(truncated, join(dir, "out")), isFormatError());
    await assert.rejects(convertTorchCheckpoint(join(dir, "nope"), join(dir, "out")), (e: unknown) => {
      assert.ok(e instanceof KvfoldError);
      assert.equal(e.code, "IO");
      return true;
    });
  });
});

// ---------------------------------------------------------------------------------------------
// A hand-built checkpoint: ZIP64 central directory, I64 transposed view, I32 offset view, BOOL.

Deno.test("hand-built ZIP64 checkpoint: I64 transpose, I32 offset view, BOOL, parameter, nested dict", () => {
  const i64 = new BigInt64Array([0n, 1n, 2n, -3n, 4n, 5n]); // 2x3
  const i32 = new Int32Array([9, 8, 7, 6, 5, 4, 3, 2]);
  const bools = new Uint8Array([1, 0, 1]);
  const p = new Pickler().global("collections", "OrderedDict").op(0x29, 0x52, 0x71, 0, 0x28);
  p.str("t").tensor("LongStorage", "0", 6, 0, [3, 2], [1, 3]); // transpose of the 2x3 matrix
  p.str("v").tensor("IntStorage", "1", 8, 2, [2, 2], [3, 1]); // rows at 2 and 5, two columns
  p.str("b").global("torch._utils", "_rebuild_parameter");
  p.op(0x28).tensor("BoolStorage", "2", 3, 0, [3], [1]).op(0x88).global("collections", "OrderedDict");
  p.op(0x29, 0x52, 0x74, 0x52); // (tensor, True, OrderedDict())
  p.str("sub").op(0x7d).str("w").tensor("LongStorage", "0", 6, 5, [1], [1]).op(0x73);
  p.str("step").int(7);
  p.op(0x75, 0x7d, 0x62, 0x2e); // SETITEMS, then BUILD with an empty state
  const files: [string, Uint8Array][] = [
    ["archive/data.pkl", new Uint8Array(p.bytes)],
    ["archive/data/0", new Uint8Array(i64.buffer)],
    ["archive/data/1", new Uint8Array(i32.buffer)],
    ["archive/data/2", bools],
    ["archive/version", new TextEncoder().encode("3\n")],
  ];
  for (const z64 of [false, true]) {
    const m = readTorchCheckpoint(zip(files, z64), "hand.bin");
    assert.deepEqual([...m.keys()], ["t", "v", "b", "sub.w"]);
    const t = m.get("t")!;
    assert.equal(t.dtype, "I64");
    assert.deepEqual(t.shape, [3, 2]);
    assert.deepEqual([...new BigInt64Array(t.data.slice().buffer)], [0n, -3n, 1n, 4n, 2n, 5n]);
    const v = m.get("v")!;
    assert.equal(v.dtype, "I32");
    assert.deepEqual([...new Int32Array(v.data.slice().buffer)], [7, 6, 4, 3]);
    assert.deepEqual(m.get("b"), { dtype: "BOOL", shape: [3], data: bools });
    assert.deepEqual([...new BigInt64Array(m.get("sub.w")!.data.slice().buffer)], [5n]);
  }
  // A view reaching past its storage is refused.
  const bad = new Pickler().op(0x7d, 0x28).str("x").tensor("LongStorage", "0", 6, 4, [3], [1]).op(0x75, 0x2e);
  assert.throws(
    () =>
      readTorchCheckpoint(zip([["a/data.pkl", new Uint8Array(bad.bytes)], ["a/data/0", files[1][1]]]), "x"),
    isFormatError(/past the end of its storage/),
  );
});

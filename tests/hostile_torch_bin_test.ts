// Hostile `.bin` checkpoints: views larger than their storage, zip bombs, flipped bytes, mutated
// pickles and empty or incomplete state dicts must end in a KvfoldError naming the problem, never in
// gigabytes of memory, garbage tensors or a JS exception.

import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { KvfoldError } from "../src/errors.ts";
import { DTYPE_SIZES, readSafetensorsFile, type TensorView } from "../src/formats/safetensors.ts";
import { convertTorchCheckpoint, readTorchCheckpoint } from "../src/formats/torch_bin.ts";
import { crc32, crc32Portable } from "../src/_crc32.ts";
import { u16, ZipArchive } from "../src/formats/torch_zip.ts";
import { runCli, tempDir } from "./_fixtures.ts";
import { Pickler, zip } from "./_torch_zip.ts";

const SHARED = new URL("../../shared/fixtures/", import.meta.url);
const shared = (p: string) => fileURLToPath(new URL(p, SHARED));
const SINGLE = shared("torch-bin/single/pytorch_model.bin");
const BOMB = shared("hostile/convert-stride0-bomb.bin");

function isKvfoldError(code: string, pattern?: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof KvfoldError, `expected KvfoldError, got ${e}`);
    assert.equal(e.code, code, e.message);
    if (pattern) assert.match(e.message, pattern);
    return true;
  };
}

/** The entries of a zip (name, bytes), in directory order. */
function unzip(bytes: Uint8Array): [string, Uint8Array][] {
  const z = new ZipArchive(bytes, "fixture", () => {});
  return [...z.entries.values()].map((e) => [e.name, z.read(e).slice()]);
}

/** A checkpoint with one F32 storage of `numel` elements and `body` (SETITEMS content) as its dict. */
function checkpoint(body: (p: Pickler) => void, numel = 6): Uint8Array {
  const p = new Pickler().op(0x7d, 0x28);
  body(p);
  p.op(0x75);
  return zip([["a/data.pkl", p.done()], [
    "a/data/0",
    new Uint8Array(new Float32Array(numel).fill(1).buffer),
  ]]);
}

// ---------------------------------------------------------------------------------------------
// Views

Deno.test("the stride-0 bomb is refused before anything is allocated, naming the tensor", async () => {
  const bytes = await Deno.readFile(BOMB);
  assert.throws(
    () => readTorchCheckpoint(bytes, BOMB),
    isKvfoldError(
      "OUT_OF_MEMORY",
      /^Cannot convert .*convert-stride0-bomb\.bin: tensor model\.norm\.weight \(size \[32768,32768\], stride \[0,0\]\) would take 4294967296 bytes, past the memory budget of \d+ bytes/,
    ),
  );
  // A budget set by the caller is the one applied.
  assert.throws(
    () => readTorchCheckpoint(bytes, BOMB, { maxBytes: 1 << 20 }),
    isKvfoldError("OUT_OF_MEMORY", /past the memory budget of 1048576 bytes/),
  );
  const dir = await tempDir();
  try {
    await assert.rejects(convertTorchCheckpoint(BOMB, join(dir, "out")), isKvfoldError("OUT_OF_MEMORY"));
    await assert.rejects(Deno.stat(join(dir, "out", "model.safetensors")), Deno.errors.NotFound);
    const r = await runCli("convert", BOMB, join(dir, "cli"), "--max-memory", "64M");
    assert.notEqual(r.code, 0);
    assert.match(
      r.err,
      /tensor model\.norm\.weight .* past the memory budget of 67108864 bytes .*\[OUT_OF_MEMORY\]/,
    );
    const bad = await runCli("convert", BOMB, join(dir, "cli"), "--max-memory", "lots");
    assert.notEqual(bad.code, 0);
    assert.match(bad.err, /--max-memory lots is not a size/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a small broadcast view (stride 0) within the budget is materialised correctly", () => {
  const p = new Pickler().op(0x7d, 0x28).str("x").tensor("IntStorage", "0", 3, 0, [4, 3], [0, 1]).op(0x75);
  const bytes = zip([["a/data.pkl", p.done()], [
    "a/data/0",
    new Uint8Array(new Int32Array([7, 8, 9]).buffer),
  ]]);
  const x = readTorchCheckpoint(bytes, "b.bin").get("x")!;
  assert.deepEqual(x.shape, [4, 3]);
  assert.deepEqual([...new Int32Array(x.data.slice().buffer)], [7, 8, 9, 7, 8, 9, 7, 8, 9, 7, 8, 9]);
});

Deno.test("one storage repeated under many names is charged for every name", () => {
  // 2000 names for one 1 MiB tensor: 2000 MiB to write from a 1 MiB file, past the default budget.
  const p = new Pickler().op(0x7d, 0x28).str("t0").tensor("FloatStorage", "0", 1 << 18, 0, [1 << 18], [1]);
  p.op(0x71, 200);
  for (let i = 1; i < 2000; i++) p.str(`t${i}`).op(0x68, 200);
  p.op(0x75);
  const bytes = zip([["a/data.pkl", p.done()], ["a/data/0", new Uint8Array(1 << 20)]]);
  assert.throws(
    () => readTorchCheckpoint(bytes, "many.bin"),
    isKvfoldError(
      "OUT_OF_MEMORY",
      /^Cannot convert many\.bin: tensor t\d+ \(size \[262144\], stride \[1\]\) would take 1048576 bytes, past the memory budget of \d+ bytes/,
    ),
  );
  assert.equal(readTorchCheckpoint(bytes, "many.bin", { maxBytes: 2100 * 2 ** 20 }).size, 2000);
  assert.throws(() => readTorchCheckpoint(bytes, "many.bin", { maxBytes: -1 }), RangeError);
});

Deno.test("views that do not fit their storage are FORMAT errors naming the tensor", () => {
  const cases: [string, (p: Pickler) => void, RegExp][] = [
    [
      "past the end",
      (p) => p.str("w").tensor("FloatStorage", "0", 6, 1, [2, 3], [3, 1]),
      /tensor w reaches past the end of its storage 0: element 6 of 6/,
    ],
    [
      "huge strides",
      (p) => p.str("w").tensor("FloatStorage", "0", 6, 0, [2, 2], [65535, 1]),
      /tensor w reaches past the end/,
    ],
    [
      "mismatched rank",
      (p) => p.str("w").tensor("FloatStorage", "0", 6, 0, [2, 3], [1]),
      /tensor w has 2 sizes but 1 strides/,
    ],
    [
      "storage larger than its entry",
      (p) => p.str("w").tensor("FloatStorage", "0", 60, 0, [6], [1]),
      /references storage 0, which holds 24 bytes, fewer than 60 F32 elements need/,
    ],
    [
      "missing storage",
      (p) => p.str("w").tensor("FloatStorage", "9", 6, 0, [6], [1]),
      /references storage 9, which the archive lacks at offset \d+/,
    ],
  ];
  for (const [what, body, pattern] of cases) {
    assert.throws(
      () => readTorchCheckpoint(checkpoint(body), "v.bin"),
      isKvfoldError("FORMAT", pattern),
      what,
    );
  }
  // A negative stride (BININT 0xffffffff = -1).
  const neg = new Pickler().op(0x7d, 0x28).str("w");
  neg.global("torch._utils", "_rebuild_tensor_v2").op(0x28);
  neg.op(0x28).str("storage").global("torch", "FloatStorage").str("0").str("cpu").int(6).op(0x74, 0x51);
  neg.int(5).ints([6]).op(0x28, 0x4a, 0xff, 0xff, 0xff, 0xff, 0x74).op(0x89);
  neg.global("collections", "OrderedDict").op(0x29, 0x52, 0x74, 0x52, 0x75);
  assert.throws(
    () => readTorchCheckpoint(zip([["a/data.pkl", neg.done()], ["a/data/0", new Uint8Array(24)]]), "n.bin"),
    isKvfoldError("FORMAT", /tensor w has a negative size, stride or offset/),
  );
});

// ---------------------------------------------------------------------------------------------
// Zip bombs and declared sizes

Deno.test("deflated entries: honest ones read, bombs refused before inflating, lies caught", () => {
  const pkl = new Pickler().op(0x7d, 0x28).str("w").tensor("FloatStorage", "0", 4, 0, [4], [1]).op(0x75)
    .done();
  const values = new Uint8Array(new Float32Array([1, 2, 3, 4]).buffer);
  const ok = zip([{ name: "a/data.pkl", data: pkl, deflate: true }, {
    name: "a/data/0",
    data: values,
    deflate: true,
  }]);
  assert.deepEqual([...new Float32Array(readTorchCheckpoint(ok, "z.bin").get("w")!.data.slice().buffer)], [
    1,
    2,
    3,
    4,
  ]);

  // 64 MiB of zeros deflate to about 64 KiB: refused under a 16 MiB budget before inflating.
  const zeros = new Uint8Array(64 << 20);
  const bomb = zip([["a/data.pkl", pkl], { name: "a/data/0", data: zeros, deflate: true }]);
  assert.ok(bomb.length < 1 << 20, `the bomb is ${bomb.length} bytes`);
  assert.throws(
    () => readTorchCheckpoint(bomb, "bomb.bin", { maxBytes: 16 << 20 }),
    isKvfoldError(
      "OUT_OF_MEMORY",
      /^Cannot convert bomb\.bin: zip entry a\/data\/0 would take 67108864 bytes, past the memory budget of 16777216/,
    ),
  );
  // A declared size of 3 GiB is past the default budget of a small file (3 x size + 1 GiB).
  const big = zip([["a/data.pkl", pkl], {
    name: "a/data/0",
    data: zeros,
    deflate: true,
    declaredSize: 3 * 2 ** 30,
  }]);
  assert.throws(
    () => readTorchCheckpoint(big, "big.bin"),
    isKvfoldError("OUT_OF_MEMORY", /zip entry a\/data\/0 would take 3221225472 bytes/),
  );
  // An entry that inflates further than it declares stops at the declared size.
  const lie = zip([["a/data.pkl", pkl], { name: "a/data/0", data: zeros, deflate: true, declaredSize: 16 }]);
  assert.throws(
    () => readTorchCheckpoint(lie, "lie.bin"),
    isKvfoldError("FORMAT", /zip entry a\/data\/0 inflates to more than its declared 16 bytes/),
  );
  const short = zip([["a/data.pkl", pkl], {
    name: "a/data/0",
    data: values,
    deflate: true,
    declaredSize: 20,
  }]);
  assert.throws(
    () => readTorchCheckpoint(short, "short.bin"),
    isKvfoldError("FORMAT", /inflates to 16 bytes, but its declared size is 20/),
  );
});

// ---------------------------------------------------------------------------------------------
// CRC-32 and byte flips

Deno.test("CRC-32: zlib's and the portable one agree with the zip check value", () => {
  const text = new TextEncoder().encode("123456789");
  assert.equal(crc32Portable(text), 0xcbf43926);
  assert.equal(crc32(text), 0xcbf43926);
  const odd = new Uint8Array(1001).map((_, i) => (i * 31 + 7) & 0xff);
  for (const n of [0, 1, 7, 8, 9, 1001]) {
    assert.equal(crc32Portable(odd.subarray(0, n)), crc32(odd.subarray(0, n)), `${n}`);
  }
});

Deno.test("byte flips anywhere in a real checkpoint are refused, or hit an unused byte and change nothing", async () => {
  const bytes = await Deno.readFile(SINGLE);
  const reference = readTorchCheckpoint(bytes, SINGLE);
  // Every byte of every entry's data, where a silent change would alter a tensor or the pickle.
  const dataBytes = new Set<number>();
  for (const e of new ZipArchive(bytes, SINGLE, () => {}).entries.values()) {
    const start = e.localOffset + 30 + u16(bytes, e.localOffset + 26) + u16(bytes, e.localOffset + 28);
    for (let i = 0; i < e.compressedSize; i += 97) dataBytes.add(start + i);
    dataBytes.add(start + e.compressedSize - 1);
  }
  let seed = 12345;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  const positions = new Set(dataBytes);
  while (positions.size < dataBytes.size + 300) positions.add(Math.floor(random() * bytes.length));
  let refused = 0;
  for (const at of positions) {
    const flipped = bytes.slice();
    flipped[at] ^= 1 << Math.floor(random() * 8);
    let out: Map<string, TensorView>;
    try {
      out = readTorchCheckpoint(flipped, "flipped.bin");
    } catch (e) {
      assert.ok(e instanceof KvfoldError && e.code === "FORMAT", `flip at ${at}: ${e}`);
      refused++;
      continue;
    }
    assert.ok(!dataBytes.has(at), `a flip at ${at}, in an entry's data, was accepted`);
    assert.deepEqual(out, reference, `a flip at ${at} was accepted and changed the tensors`);
  }
  assert.ok(refused >= dataBytes.size, `${refused} of ${positions.size} refused`);
});

Deno.test("a flipped byte in tensor data fails the CRC with a message naming the entry", async () => {
  const bytes = await Deno.readFile(SINGLE);
  const entry = new ZipArchive(bytes, SINGLE, () => {}).entries.get("pytorch_model/data/3")!;
  const at = entry.localOffset + 30 + u16(bytes, entry.localOffset + 26) +
    u16(bytes, entry.localOffset + 28) + 10;
  const flipped = bytes.slice();
  flipped[at] ^= 0x10;
  assert.throws(
    () => readTorchCheckpoint(flipped, "f.bin"),
    isKvfoldError(
      "FORMAT",
      /^Cannot convert f\.bin: zip entry pytorch_model\/data\/3 fails its CRC-32 check \(0x[0-9a-f]{8}, expected 0x[0-9a-f]{8}\): the file is corrupt$/,
    ),
  );
});

Deno.test("a local header that disagrees with the central directory is refused", () => {
  const pkl = new Pickler().op(0x7d, 0x28).str("w").tensor("FloatStorage", "0", 1, 0, [1], [1]).op(0x75)
    .done();
  const good = zip([["a/data.pkl", pkl], ["a/data/0", new Uint8Array(4)]]);
  readTorchCheckpoint(good, "ok.bin");
  const renamed = good.slice();
  renamed[30] = "b".charCodeAt(0); // the local name of a/data.pkl
  assert.throws(
    () => readTorchCheckpoint(renamed, "r.bin"),
    isKvfoldError("FORMAT", /zip entry a\/data\.pkl has a local header of another name/),
  );
  const crc = good.slice();
  crc[14] ^= 1; // the local CRC-32 field
  assert.throws(
    () => readTorchCheckpoint(crc, "c.bin"),
    isKvfoldError("FORMAT", /disagrees with the central directory \(CRC-32 or sizes\)/),
  );
  const wrongCrc = zip([["a/data.pkl", pkl], { name: "a/data/0", data: new Uint8Array(4), crc: 1 }]);
  assert.throws(
    () => readTorchCheckpoint(wrongCrc, "w.bin"),
    isKvfoldError("FORMAT", /zip entry a\/data\/0 fails its CRC-32 check/),
  );
});

// ---------------------------------------------------------------------------------------------
// Pickles

const singlePickle = async () => unzip(await Deno.readFile(SINGLE));

function rezip(entries: [string, Uint8Array][], pkl: Uint8Array): Uint8Array {
  return zip(entries.map(([n, d]) => [n, n.endsWith("data.pkl") ? pkl : d]));
}

Deno.test("every truncation of a real pickle is a FORMAT error", async () => {
  const entries = await singlePickle();
  const pkl = entries.find(([n]) => n.endsWith("data.pkl"))![1];
  for (let n = 0; n < pkl.length; n++) {
    assert.throws(
      () => readTorchCheckpoint(rezip(entries, pkl.subarray(0, n)), "t.bin"),
      isKvfoldError("FORMAT"),
      `cut at ${n}`,
    );
  }
});

/** Offsets of the opcodes of a torch.save pickle (the opcodes it uses, with their argument sizes). */
function opcodeOffsets(p: Uint8Array): number[] {
  const fixed: Record<number, number> = {
    0x80: 1,
    0x71: 1,
    0x68: 1,
    0x72: 4,
    0x6a: 4,
    0x4b: 1,
    0x4d: 2,
    0x4a: 4,
  };
  const out: number[] = [];
  for (let at = 0; at < p.length;) {
    out.push(at);
    const op = p[at++];
    if (op === 0x63) at = p.indexOf(0x0a, p.indexOf(0x0a, at) + 1) + 1; // GLOBAL: two lines
    else if (op === 0x58) at += 4 + new DataView(p.buffer, p.byteOffset + at).getUint32(0, true);
    else at += fixed[op] ?? 0;
  }
  return out;
}

Deno.test("opcode and argument flips in a real pickle end in FORMAT errors or a well-formed state dict", async () => {
  const entries = await singlePickle();
  const pkl = entries.find(([n]) => n.endsWith("data.pkl"))![1];
  const reference = readTorchCheckpoint(rezip(entries, pkl), "ref.bin");
  const opcodes = new Set(opcodeOffsets(pkl));
  assert.equal(pkl[[...opcodes].at(-1)!], 0x2e, "the walk ends on STOP");
  // Every opcode becomes a few others; every third argument byte a few values.
  const values = {
    opcode: [0x00, 0x28, 0x2e, 0x30, 0x52, 0x74, 0x7d],
    argument: [0x00, 0x2e, 0xff],
  };
  const count = { opcode: { refused: 0, accepted: 0 }, argument: { refused: 0, accepted: 0 } };
  for (let at = 0; at < pkl.length; at++) {
    const kind = opcodes.has(at) ? "opcode" : "argument";
    if (kind === "argument" && at % 3 !== 0) continue;
    for (const v of values[kind]) {
      if (pkl[at] === v) continue;
      const mutated = pkl.slice();
      mutated[at] = v;
      let out: Map<string, TensorView>;
      try {
        out = readTorchCheckpoint(rezip(entries, mutated), "m.bin");
      } catch (e) {
        assert.ok(e instanceof KvfoldError && e.code === "FORMAT", `0x${v.toString(16)} at ${at}: ${e}`);
        count[kind].refused++;
        continue;
      }
      // Accepted (a renamed key, a requires_grad flag, another shape that fits its storage): still
      // a state dict of plausible names and consistent tensors. CRC-32 keeps such edits out of files.
      count[kind].accepted++;
      assert.ok(out.size > 0);
      for (const [name, t] of out) {
        assert.match(name, /^[\x21-\x7e]+$/, `0x${v.toString(16)} at ${at}`);
        assert.equal(t.data.length, t.shape.reduce((a, b) => a * b, 1) * DTYPE_SIZES[t.dtype], name);
      }
    }
  }
  console.log(`pickle mutations: ${JSON.stringify(count)}`);
  assert.ok(count.opcode.refused > 10 * count.opcode.accepted, JSON.stringify(count));
  assert.ok(reference.size > 0);
});

Deno.test("malformed pickles are FORMAT errors naming the problem and the offset", () => {
  const t = (p: Pickler) => p.tensor("FloatStorage", "0", 6, 0, [6], [1]);
  const cases: [string, Uint8Array, RegExp][] = [
    ["empty dict", new Pickler().op(0x7d).done(), /^Cannot convert p\.bin: the state dict holds no tensors$/],
    [
      "empty OrderedDict",
      new Pickler().global("collections", "OrderedDict").op(0x29, 0x52).done(),
      /the state dict holds no tensors/,
    ],
    ["not a dict", new Pickler().op(0x5d).done(), /the pickle does not hold a state dict/],
    ["stack underflow", new Pickler().op(0x7d, 0x73).done(), /the pickle pops an empty stack at offset 3/],
    ["memo miss", new Pickler().op(0x68, 7).done(), /the pickle reads unset memo slot 7 at offset 2/],
    [
      "odd SETITEMS",
      new Pickler().op(0x7d, 0x28).str("a").op(0x75).done(),
      /the pickle sets a key without a value at offset 10/,
    ],
    [
      "non-string key",
      t(new Pickler().op(0x7d).int(3)).op(0x73).done(),
      /the state dict has a key that is not a string \(number\)/,
    ],
    [
      "control character",
      t(new Pickler().op(0x7d).str("lm_head\u0001weight")).op(0x73).done(),
      /implausible tensor name "lm_head\\u0001weight"/,
    ],
    ["empty name", t(new Pickler().op(0x7d).str("")).op(0x73).done(), /implausible tensor name ""/],
    [
      "invalid UTF-8",
      new Pickler().op(0x7d, 0x58, 1, 0, 0, 0, 0xff).done(),
      /the pickle has a string that is not UTF-8 at offset 3/,
    ],
    [
      "bytes after STOP",
      new Uint8Array([...new Pickler().op(0x7d).done(), 0x4e]),
      /the pickle stops with 1 bytes after STOP at offset 3/,
    ],
    ["leftover stack", new Pickler().op(0x7d, 0x7d).done(), /the pickle stops with values left on its stack/],
    [
      "list value",
      new Pickler().op(0x7d).str("w").op(0x5d, 0x73).done(),
      /the state dict entry "w" is neither a tensor nor a dict/,
    ],
    [
      "storage not found",
      new Pickler().op(0x7d).str("w").tensor("FloatStorage", "1", 6, 0, [6], [1]).op(0x73).done(),
      /references storage 1, which the archive lacks/,
    ],
    [
      "a storage key that is a number",
      new Pickler().op(0x7d).str("w").global("torch._utils", "_rebuild_tensor_v2").op(0x28, 0x28).str(
        "storage",
      ).global("torch", "FloatStorage").int(0).str("cpu").int(6).op(0x74, 0x51).done(),
      /storage key is not a string/,
    ],
    [
      "huge integer",
      new Pickler().op(0x8a, 9, 1, 1, 1, 1, 1, 1, 1, 1, 1).done(),
      /has an integer of 9 bytes at offset 2/,
    ],
  ];
  for (const [what, pkl, pattern] of cases) {
    const bytes = zip([["p/data.pkl", pkl], ["p/data/0", new Uint8Array(24)]]);
    assert.throws(() => readTorchCheckpoint(bytes, "p.bin"), isKvfoldError("FORMAT", pattern), what);
  }
  // The same storage as 6 F32 and as 3 F64.
  const twice = new Pickler().op(0x7d, 0x28).str("a").tensor("FloatStorage", "0", 6, 0, [6], [1]);
  twice.str("b").tensor("DoubleStorage", "0", 3, 0, [3], [1]).op(0x75);
  assert.throws(
    () => readTorchCheckpoint(zip([["p/data.pkl", twice.done()], ["p/data/0", new Uint8Array(24)]]), "p.bin"),
    isKvfoldError("FORMAT", /uses storage 0 as 6 F32 and as 3 F64/),
  );
  // _rebuild_from_type_v2 nested 100000 deep would exhaust the JS stack: refused at the second level.
  const deep = new Pickler().global("torch._tensor", "_rebuild_from_type_v2").op(0x71, 0, 0x30);
  deep.global("collections", "OrderedDict").op(0x71, 1, 0x30, 0x68, 0);
  for (let i = 0; i < 100000; i++) deep.op(0x28, 0x68, 0, 0x4e);
  deep.op(0x28, 0x68, 1, 0x4e, 0x29, 0x74);
  for (let i = 0; i < 100000; i++) deep.op(0x74);
  deep.op(0x52);
  assert.throws(
    () => readTorchCheckpoint(zip([["p/data.pkl", deep.done()]]), "deep.bin"),
    isKvfoldError("FORMAT", /the pickle nests _rebuild_from_type_v2 at offset/),
  );
});

Deno.test("an empty state dict is refused by convert and nothing is written", async () => {
  const dir = await tempDir();
  try {
    const src = join(dir, "pytorch_model.bin");
    await Deno.writeFile(
      src,
      zip([["archive/data.pkl", new Pickler().global("collections", "OrderedDict").op(0x29, 0x52).done()]]),
    );
    await assert.rejects(
      convertTorchCheckpoint(src, join(dir, "out")),
      isKvfoldError("FORMAT", /^Cannot convert .*pytorch_model\.bin: the state dict holds no tensors$/),
    );
    await assert.rejects(Deno.stat(join(dir, "out", "model.safetensors")), Deno.errors.NotFound);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------------------------
// The converted set against config.json

Deno.test("convert refuses a checkpoint that lacks a tensor its config.json requires", async () => {
  const entries = await singlePickle();
  const pkl = entries.find(([n]) => n.endsWith("data.pkl"))![1];
  // Same length, so the pickle stays valid: lm_head.weight becomes lm_head.weighX.
  const at = new TextDecoder("ascii").decode(pkl).indexOf("lm_head.weight");
  assert.ok(at > 0);
  const renamed = pkl.slice();
  renamed[at + "lm_head.weigh".length] = "X".charCodeAt(0);
  const dir = await tempDir();
  try {
    const src = join(dir, "src");
    await Deno.mkdir(src);
    const config = { model_type: "llama", num_hidden_layers: 2, tie_word_embeddings: false };
    await Deno.writeTextFile(join(src, "config.json"), JSON.stringify(config));
    await Deno.writeFile(join(src, "pytorch_model.bin"), rezip(entries, renamed));
    const err =
      /^Cannot convert .*pytorch_model\.bin: it lacks tensor lm_head\.weight, which .*config\.json requires$/;
    await assert.rejects(convertTorchCheckpoint(src, join(dir, "out")), isKvfoldError("FORMAT", err));
    await assert.rejects(
      convertTorchCheckpoint(join(src, "pytorch_model.bin"), join(dir, "out")),
      isKvfoldError("FORMAT", err),
    );
    // Tied embeddings need no lm_head; three layers need layer 2.
    await Deno.writeTextFile(
      join(src, "config.json"),
      JSON.stringify({ ...config, tie_word_embeddings: true }),
    );
    const r = await convertTorchCheckpoint(src, join(dir, "out"));
    assert.ok((await readSafetensorsFile(r.files[0])).tensors.has("lm_head.weighX"));
    await Deno.writeTextFile(join(src, "config.json"), JSON.stringify({ ...config, num_hidden_layers: 3 }));
    await Deno.copyFile(SINGLE, join(src, "pytorch_model.bin"));
    await assert.rejects(
      convertTorchCheckpoint(src, join(dir, "out2")),
      isKvfoldError(
        "FORMAT",
        /lacks tensors model\.layers\.2\.input_layernorm\.weight, .* and 4 more, which/,
      ),
    );
    await Deno.writeTextFile(join(src, "config.json"), JSON.stringify({ ...config, num_hidden_layers: 2 }));
    assert.equal((await convertTorchCheckpoint(src, join(dir, "out3"))).tensors, 21);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------------------------
// JS exceptions

Deno.test("a JS exception while reading becomes a KvfoldError naming the file", () => {
  class Failing extends Uint8Array {
    override get length(): number {
      throw new RangeError("Array buffer allocation failed");
    }
  }
  const bytes = new Failing(zip([["a/data.pkl", new Pickler().op(0x7d).done()]]));
  assert.throws(
    () => readTorchCheckpoint(bytes, "x.bin"),
    isKvfoldError(
      "OUT_OF_MEMORY",
      /^Cannot convert x\.bin: out of memory \(Array buffer allocation failed\)$/,
    ),
  );
  class Odd extends Uint8Array {
    override get length(): number {
      throw new TypeError("x.split is not a function");
    }
  }
  assert.throws(
    () => readTorchCheckpoint(new Odd(zip([["a/data.pkl", new Pickler().op(0x7d).done()]])), "y.bin"),
    isKvfoldError(
      "FORMAT",
      /^Cannot convert y\.bin: the checkpoint is malformed \(x\.split is not a function\)$/,
    ),
  );
});

import assert from "node:assert/strict";
import { join } from "node:path";
import { KvfoldError } from "../src/errors.ts";
import {
  bf16ToF32,
  DTYPE_SIZES,
  f16ToF32,
  f32ToBf16,
  f32ToF16,
  readSafetensors,
  readSafetensorsFile,
  type SafetensorsDtype,
  toFloat32,
  toFloat64,
  writeSafetensors,
  writeSafetensorsFile,
} from "../src/formats/safetensors.ts";
import { tempDir } from "./_fixtures.ts";

/** Raw file bytes from a header object (serialized as is) and a data section of `dataLen` bytes. */
function rawFile(header: unknown, dataLen: number, headerText?: string): Uint8Array {
  const json = new TextEncoder().encode(headerText ?? JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + dataLen);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  return out;
}

function assertFormatError(fn: () => unknown, pattern: RegExp) {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof KvfoldError, `expected KvfoldError, got ${e}`);
    assert.equal(e.code, "FORMAT");
    assert.match(e.message, /^Cannot read safetensors /);
    assert.match(e.message, pattern);
    return true;
  });
}

Deno.test("f16 conversion: exact values, subnormals, infinities, NaN", () => {
  assert.equal(f32ToF16(1), 0x3c00);
  assert.equal(f32ToF16(-2), 0xc000);
  assert.equal(f32ToF16(65504), 0x7bff);
  assert.equal(f32ToF16(1e6), 0x7c00);
  assert.equal(f32ToF16(-Infinity), 0xfc00);
  assert.equal(f32ToF16(0), 0);
  assert.equal(f32ToF16(-0), 0x8000);
  assert.equal(f32ToF16(2 ** -24), 1); // smallest subnormal
  assert.equal(f32ToF16(2 ** -14), 0x0400); // smallest normal
  assert.equal(f32ToF16(1023 * 2 ** -24), 0x03ff); // largest subnormal
  assert.equal(f32ToF16(2 ** -25), 0); // tie between 0 and the smallest subnormal: even is 0
  assert.equal(f32ToF16(1.5 * 2 ** -24), 2); // tie between 1 and 2 (×2^-24): even is 2
  assert.equal(f32ToF16(2 ** -26), 0);
  assert.ok(Number.isNaN(f16ToF32(f32ToF16(NaN))));
  assert.equal(f16ToF32(1), 2 ** -24);
  assert.equal(f16ToF32(0x03ff), 1023 * 2 ** -24);
  assert.equal(f16ToF32(0x7c00), Infinity);
  assert.equal(f16ToF32(0xfc00), -Infinity);
  assert.ok(Number.isNaN(f16ToF32(0x7e00)));
  assert.ok(Object.is(f16ToF32(0x8000), -0));
  // round to nearest even at the mantissa cut: 1 + 2^-11 is halfway between 1 and 1 + 2^-10
  assert.equal(f32ToF16(1 + 2 ** -11), 0x3c00);
  assert.equal(f32ToF16(1 + 3 * 2 ** -11), 0x3c02);
  assert.equal(f32ToF16(1 + 2 ** -11 + 2 ** -20), 0x3c01);
  // 65520 is halfway between 65504 and the next (infinite) step: rounds to even = Inf
  assert.equal(f32ToF16(65520), 0x7c00);
  assert.equal(f32ToF16(65519), 0x7bff);
  // every finite half survives half → number → half
  for (let h = 0; h < 0x10000; h++) {
    const v = f16ToF32(h);
    if (Number.isNaN(v)) continue;
    assert.equal(f32ToF16(v), h);
  }
});

Deno.test("bf16 conversion: round to nearest even, NaN, infinities", () => {
  assert.equal(f32ToBf16(1), 0x3f80);
  assert.equal(f32ToBf16(-1), 0xbf80);
  assert.equal(f32ToBf16(Infinity), 0x7f80);
  assert.equal(bf16ToF32(0x3f80), 1);
  assert.equal(bf16ToF32(0xff80), -Infinity);
  assert.ok(Number.isNaN(bf16ToF32(f32ToBf16(NaN))));
  assert.equal(f32ToBf16(1 + 2 ** -8), 0x3f80); // tie, even is 1
  assert.equal(f32ToBf16(1 + 3 * 2 ** -8), 0x3f82); // tie, even is up
  assert.equal(f32ToBf16(1 + 2 ** -8 + 2 ** -20), 0x3f81);
  assert.equal(f32ToBf16(3.4e38), 0x7f80); // rounds past the largest finite bf16
  for (let h = 0; h < 0x10000; h += 7) {
    const v = bf16ToF32(h);
    if (!Number.isNaN(v)) assert.equal(f32ToBf16(v), h);
  }
});

Deno.test("round trip of every dtype, with shapes and metadata", () => {
  const floats = new Float32Array([0, 1, -2.5, 3.140625, 1e-3, -65504, 0.333333, 7e-8]);
  const ints = [0, 1, -2, 3, 100, -100, 7, 8];
  const cases: { dtype: SafetensorsDtype; data: ArrayLike<number>; expect: ArrayLike<number> }[] = [
    { dtype: "F32", data: floats, expect: floats },
    {
      dtype: "F64",
      data: Float64Array.from([0.1, 1e300, -1e-300, 2, 3, 4, 5, 6]),
      expect: [0.1, 1e300, -1e-300, 2, 3, 4, 5, 6],
    },
    { dtype: "F16", data: floats, expect: Array.from(floats, (v) => f16ToF32(f32ToF16(v))) },
    { dtype: "BF16", data: floats, expect: Array.from(floats, (v) => bf16ToF32(f32ToBf16(v))) },
    { dtype: "I8", data: ints, expect: ints },
    { dtype: "I16", data: ints, expect: ints },
    { dtype: "I32", data: Int32Array.from(ints), expect: ints },
    { dtype: "I64", data: ints, expect: ints },
    { dtype: "U8", data: ints.map(Math.abs), expect: ints.map(Math.abs) },
    { dtype: "U16", data: ints.map(Math.abs), expect: ints.map(Math.abs) },
    { dtype: "U32", data: ints.map(Math.abs), expect: ints.map(Math.abs) },
    { dtype: "U64", data: ints.map(Math.abs), expect: ints.map(Math.abs) },
    { dtype: "BOOL", data: [0, 1, 1, 0, 1, 0, 0, 1], expect: [0, 1, 1, 0, 1, 0, 0, 1] },
    {
      dtype: "F8_E5M2",
      data: [0, 1, -2, 0.5, 1.25, 3, 57344, -0.75],
      expect: [0, 1, -2, 0.5, 1.25, 3, 57344, -0.75],
    },
    {
      dtype: "F8_E4M3",
      data: [0, 1, -2, 0.5, 1.125, 3, 448, -0.75],
      expect: [0, 1, -2, 0.5, 1.125, 3, 448, -0.75],
    },
  ];
  const tensors = cases.map((c, i) => ({
    name: `t${i}.${c.dtype}`,
    dtype: c.dtype,
    shape: [2, 4],
    data: c.data as Float32Array,
  }));
  tensors.push({ name: "empty", dtype: "F32", shape: [0, 3], data: new Float32Array(0) });
  tensors.push({ name: "scalar", dtype: "F32", shape: [], data: new Float32Array([42]) });
  const bytes = writeSafetensors(tensors, { format: "pt", note: "hello" });
  const headerLen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assert.equal((8 + headerLen) % 8, 0, "data starts 8-aligned");
  const file = readSafetensors(bytes);
  assert.deepEqual(file.metadata, { format: "pt", note: "hello" });
  assert.deepEqual([...file.tensors.keys()], tensors.map((t) => t.name), "tensors keep the given order");
  cases.forEach((c, i) => {
    const view = file.tensors.get(`t${i}.${c.dtype}`)!;
    assert.equal(view.dtype, c.dtype);
    assert.deepEqual(view.shape, [2, 4]);
    assert.equal(view.data.length, 8 * DTYPE_SIZES[c.dtype]);
    assert.deepEqual(Array.from(toFloat64(view)), Array.from(c.expect), c.dtype);
    assert.deepEqual(Array.from(toFloat32(view)), Array.from(c.expect, Math.fround), c.dtype);
  });
  assert.equal(toFloat32(file.tensors.get("empty")!).length, 0);
  assert.deepEqual(Array.from(toFloat32(file.tensors.get("scalar")!)), [42]);
  // writing with no metadata leaves __metadata__ out
  const plain = readSafetensors(writeSafetensors([{ name: "a", dtype: "F32", shape: [1], data: [1] }]));
  assert.deepEqual(plain.metadata, {});
});

Deno.test("raw bits are written as is", () => {
  const bits = new Uint16Array([0x3c00, 0x7e01, 0x0001]);
  const file = readSafetensors(writeSafetensors([{ name: "h", dtype: "F16", shape: [3], data: bits }]));
  const raw = file.tensors.get("h")!.data;
  assert.deepEqual(Array.from(new Uint16Array(raw.slice().buffer)), [0x3c00, 0x7e01, 0x0001]);
  const bytes = new Uint8Array([1, 2, 3, 4]);
  const f2 = readSafetensors(writeSafetensors([{ name: "b", dtype: "BF16", shape: [2], data: bytes }]));
  assert.deepEqual(Array.from(f2.tensors.get("b")!.data), [1, 2, 3, 4]);
});

Deno.test("writer refuses bad input", () => {
  assert.throws(() => writeSafetensors([{ name: "a", dtype: "F32", shape: [3], data: [1, 2] }]), RangeError);
  assert.throws(() => writeSafetensors([{ name: "a", dtype: "F32", shape: [-1], data: [] }]), RangeError);
  assert.throws(
    () => writeSafetensors([{ name: "a", dtype: "I32", shape: [1], data: [0.5] }]),
    /not an integer/,
  );
  assert.throws(
    () =>
      writeSafetensors([
        { name: "a", dtype: "F32", shape: [1], data: [1] },
        { name: "a", dtype: "F32", shape: [1], data: [1] },
      ]),
    /repeated/,
  );
  assert.throws(
    () => writeSafetensors([{ name: "a", dtype: "X9" as SafetensorsDtype, shape: [1], data: [1] }]),
    /unknown dtype/,
  );
});

Deno.test("file round trip, and file errors are IO", async () => {
  const dir = await tempDir();
  try {
    const path = join(dir, "t.safetensors");
    const data = new Float32Array(1000).map((_, i) => Math.sin(i));
    await writeSafetensorsFile(path, [{ name: "w", dtype: "BF16", shape: [10, 100], data }], { a: "b" });
    const inMemory = writeSafetensors([{ name: "w", dtype: "BF16", shape: [10, 100], data }], { a: "b" });
    assert.deepEqual(
      await Deno.readFile(path),
      inMemory,
      "file writer and buffer writer agree byte for byte",
    );
    const file = await readSafetensorsFile(path);
    const back = toFloat32(file.tensors.get("w")!);
    for (let i = 0; i < data.length; i++) {
      assert.ok(Math.abs(back[i] - data[i]) <= 2 ** -8 * Math.abs(data[i]) + 1e-30);
    }
    await assert.rejects(
      () => readSafetensorsFile(join(dir, "missing.safetensors")),
      (e: unknown) => e instanceof KvfoldError && e.code === "IO" && /missing\.safetensors/.test(e.message),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("corrupt files are refused with FORMAT errors naming the problem", () => {
  const ok = { a: { dtype: "F32", shape: [2], data_offsets: [0, 8] } };
  readSafetensors(rawFile(ok, 8)); // the baseline parses

  assertFormatError(
    () => readSafetensors(new Uint8Array(5), { name: "x.safetensors" }),
    /x\.safetensors: .*shorter/,
  );
  const big = rawFile(ok, 8);
  new DataView(big.buffer).setBigUint64(0, 1000n, true);
  assertFormatError(() => readSafetensors(big), /header length 1000 is beyond the end/);
  new DataView(big.buffer).setBigUint64(0, 0xffffffffffffffffn, true);
  assertFormatError(() => readSafetensors(big), /header length .* beyond/);
  assertFormatError(() => readSafetensors(rawFile(null, 0, "{not json")), /not valid JSON/);
  assertFormatError(() => readSafetensors(rawFile([1, 2], 0)), /not a JSON object/);
  assertFormatError(() => readSafetensors(rawFile(null, 0, "null")), /not a JSON object/);
  assertFormatError(
    () => readSafetensors(rawFile({ __metadata__: { a: 1 } }, 0)),
    /__metadata__ value of "a"/,
  );
  assertFormatError(() => readSafetensors(rawFile({ a: 5 }, 0)), /tensor a is not an object/);
  assertFormatError(
    () => readSafetensors(rawFile({ a: { shape: [2], data_offsets: [0, 8] } }, 8)),
    /a has no dtype/,
  );
  assertFormatError(
    () => readSafetensors(rawFile({ a: { dtype: "F32", data_offsets: [0, 8] } }, 8)),
    /a has no shape/,
  );
  assertFormatError(
    () => readSafetensors(rawFile({ a: { dtype: "F32", shape: [2] } }, 8)),
    /a has no data_offsets/,
  );
  assertFormatError(
    () => readSafetensors(rawFile({ a: { dtype: "F17", shape: [2], data_offsets: [0, 8] } }, 8)),
    /unknown dtype "F17"/,
  );
  assertFormatError(
    () => readSafetensors(rawFile({ a: { dtype: "F32", shape: [2.5], data_offsets: [0, 10] } }, 10)),
    /invalid dimension 2.5/,
  );
  assertFormatError(
    () => readSafetensors(rawFile({ a: { dtype: "F32", shape: [-2], data_offsets: [0, 8] } }, 8)),
    /invalid dimension -2/,
  );
  assertFormatError(
    () => readSafetensors(rawFile({ a: { dtype: "F32", shape: "2", data_offsets: [0, 8] } }, 8)),
    /shape is not an array/,
  );
  assertFormatError(
    () => readSafetensors(rawFile({ a: { dtype: "F32", shape: [2], data_offsets: [0] } }, 8)),
    /data_offsets .* are not two non-negative integers/,
  );
  assertFormatError(
    () => readSafetensors(rawFile({ a: { dtype: "F32", shape: [2], data_offsets: [-8, 0] } }, 8)),
    /not two non-negative integers/,
  );
  assertFormatError(
    () => readSafetensors(rawFile({ a: { dtype: "F32", shape: [2], data_offsets: [8, 0] } }, 8)),
    /out of range/,
  );
  assertFormatError(
    () => readSafetensors(rawFile({ a: { dtype: "F32", shape: [2], data_offsets: [0, 16] } }, 8)),
    /\[0, 16\] are out of range \(data section is 8 bytes\)/,
  );
  assertFormatError(
    () => readSafetensors(rawFile({ a: { dtype: "F32", shape: [3], data_offsets: [0, 8] } }, 8)),
    /span 8 bytes, shape \[3\] of F32 needs 12/,
  );
  assertFormatError(
    () =>
      readSafetensors(
        rawFile({
          a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
          b: { dtype: "F32", shape: [2], data_offsets: [4, 12] },
        }, 12),
      ),
    /tensors a \[0, 8\] and b \[4, 12\] are overlapping/,
  );
});

Deno.test("a truncated file is refused", () => {
  const bytes = writeSafetensors([
    { name: "a", dtype: "F32", shape: [4, 4], data: new Float32Array(16) },
    { name: "b", dtype: "F16", shape: [8], data: new Float32Array(8) },
  ]);
  readSafetensors(bytes);
  for (const cut of [bytes.length - 1, bytes.length - 17, 40, 9, 7, 0]) {
    assertFormatError(
      () => readSafetensors(bytes.subarray(0, cut), { name: "cut.safetensors" }),
      /cut\.safetensors: (.*out of range|.*beyond the end|.*shorter)/,
    );
  }
});

Deno.test("views are zero-copy and decode from unaligned offsets", () => {
  const bytes = writeSafetensors([
    { name: "a", dtype: "U8", shape: [1], data: [7] },
    { name: "b", dtype: "F32", shape: [2], data: [1.5, -2] },
    { name: "c", dtype: "F64", shape: [1], data: [0.1] },
  ]);
  const file = readSafetensors(bytes);
  const b = file.tensors.get("b")!;
  assert.equal(b.data.buffer, bytes.buffer);
  assert.notEqual(b.data.byteOffset % 4, 0, "b starts unaligned after a 1-byte tensor");
  assert.deepEqual(Array.from(toFloat32(b)), [1.5, -2]);
  assert.deepEqual(Array.from(toFloat64(file.tensors.get("c")!)), [0.1]);
});

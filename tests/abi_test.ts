// The struct tables of src/_abi.ts: true to the library, checked for C layout, and the one way fields are read.
import assert from "node:assert/strict";
import { checkNaturalLayout, NativeStruct, structFields, STRUCTS } from "../src/_abi.ts";
import { cString, native } from "../src/_binding.ts";

Deno.test("abi: every struct table has the size the library reports", async () => {
  const s = await native();
  for (const [name, table] of Object.entries(STRUCTS)) {
    assert.deepEqual(Number(s.kf_struct_size(cString(name))), table.size, name);
  }
});

Deno.test("abi: a mistyped offset or size is refused as not the C layout", () => {
  const good = { size: 16, fields: { a: ["i32", 0], b: ["i64", 8] } } as const;
  checkNaturalLayout("good", good);
  assert.throws(
    () => checkNaturalLayout("bad", { size: 16, fields: { a: ["i32", 0], b: ["i64", 4] } }),
    { message: "ABI table bad.b: offset 4, the C layout puts it at 8" },
  );
  assert.throws(
    () => checkNaturalLayout("short", { size: 12, fields: { a: ["i32", 0], b: ["i64", 8] } }),
    { message: "ABI table short: size 12, its fields make 16" },
  );
});

Deno.test("abi: NativeStruct reads and writes fields at the table's offsets", () => {
  const p = new NativeStruct("kf_lora_train_params")
    .set("rank", -3)
    .set("alpha", 0.5)
    .set("target_mask", 0xffffffff)
    .set("seed", 2n ** 64n - 1n)
    .set("total_steps", 7);
  const v = new DataView(p.buf.buffer);
  assert.deepEqual(v.getInt32(0, true), -3);
  assert.deepEqual(v.getFloat32(4, true), 0.5);
  assert.deepEqual(v.getUint32(8, true), 0xffffffff);
  assert.deepEqual(v.getBigUint64(16, true), 2n ** 64n - 1n);
  assert.deepEqual(v.getInt32(56, true), 7);
  assert.deepEqual([p.get("rank"), p.get("alpha"), p.get("target_mask"), p.get("total_steps")], [
    -3,
    0.5,
    0xffffffff,
    7,
  ]);

  const info = new NativeStruct("kf_model_info");
  info.buf.set(new TextEncoder().encode("llama"), 56);
  assert.deepEqual(info.text("model_type"), "llama");
});

Deno.test("abi: misuse of a NativeStruct is a TypeError or RangeError naming the field", () => {
  const p = new NativeStruct("kf_engine_params");
  assert.throws(() => p.get("nope" as "device"), {
    name: "TypeError",
    message: /kf_engine_params\.nope:\ no\ such\ field/,
  });
  assert.throws(() => p.setPointer("device", null), {
    name: "TypeError",
    message: /kf_engine_params\.device\ as\ a\ pointer/,
  });
  assert.throws(() => new NativeStruct("kf_engine_info").get("name"), {
    name: "TypeError",
    message: /it\ is\ char\[64\]/,
  });
  assert.throws(() => new NativeStruct("kf_engine_params", new Uint8Array(8)), {
    name: "RangeError",
    message: /8\ bytes\ given/,
  });
});

Deno.test("abi: struct results are declared from the tables", () => {
  assert.deepEqual(structFields("kf_model_params"), ["i32", "i32"]);
  assert.deepEqual(structFields("kf_engine_info").length, 2 + 64);
});

// The runtime layer under Node.js/Bun (node/runtime.ts, node/ffi.ts over ffi-rs): that native code
// and JavaScript see each other's writes in shared buffers, that struct results and out-pointers
// come back, that nonblocking calls leave the event loop free while the control block carries
// progress one way and cancellation the other, and that native messages reach KvfoldError.
import { Kvfold, KvfoldError } from "kvfold";
import assert from "node:assert/strict";
import { readFile, writeFile } from "node:fs/promises";
import { after, test } from "node:test";
import { ABI_VERSION, alloc, native, outPointer } from "../../dist/src/_binding.js";
import { removeTestModels, someIds, tempDir, testEngine, testModel, WIDE_MODEL } from "./_fixtures.mjs";

after(removeTestModels);

test("runtime: Deno is the Node.js/Bun layer, and the library loads through it", async () => {
  assert.equal(typeof globalThis.Deno?.dlopen, "function");
  assert.equal(globalThis.Deno.execPath(), process.execPath); // not a real Deno
  const s = await native();
  assert.equal(s.kf_abi_version(), 6);
  assert.equal(ABI_VERSION, 6);
  assert.equal(Number(s.kf_struct_size(new TextEncoder().encode("kf_control\0"))), 512);
});

test("ffi: struct results come back by value as their bytes", async () => {
  const s = await native();
  const engine = new DataView(s.kf_engine_default_params().buffer);
  assert.equal(s.kf_engine_default_params().byteLength, 16);
  assert.deepEqual([0, 4, 8, 12].map((o) => engine.getInt32(o, true)), [0, 0, 0, 0]); // auto, all cores

  const model = s.kf_model_default_params();
  assert.equal(model.byteLength, 8);
  assert.equal(new DataView(model.buffer).getInt32(0, true), -1); // weight dtype auto
  assert.equal(new DataView(model.buffer).getInt32(4, true), 0); // mmap off: weights read into owned memory

  // 32 bytes, returned in memory, with f32 fields: the kvfold.h defaults to the bit.
  const sampler = s.kf_sampler_default_params();
  assert.equal(sampler.byteLength, 32);
  const v = new DataView(sampler.buffer);
  assert.equal(v.getBigUint64(0, true), 0x6b76666f6c64n);
  assert.equal(v.getFloat32(8, true), Math.fround(0.8));
  assert.equal(v.getFloat32(12, true), Math.fround(0.95));
  assert.equal(v.getInt32(16, true), 40);
  assert.equal(v.getFloat32(20, true), 1);
  assert.equal(v.getInt32(24, true), 64);
  assert.equal(v.getFloat32(28, true), 0);
});

test("ffi: out-pointers and info structs are written by native code into JavaScript buffers", async () => {
  const s = await native();
  const params = alloc(16);
  params.set(s.kf_engine_default_params());
  new DataView(params.buffer).setInt32(0, 1, true); // cpu
  new DataView(params.buffer).setInt32(4, 2, true);
  const out = outPointer();
  assert.equal(out.get(), null);
  assert.equal(s.kf_engine_open(params, out.buf), 0);
  const engine = out.get();
  assert.equal(typeof engine, "bigint");
  const info = alloc(72);
  assert.equal(s.kf_engine_get_info(engine, info), 0);
  const iv = new DataView(info.buffer);
  assert.equal(iv.getInt32(0, true), 1);
  assert.equal(iv.getInt32(4, true), 2);
  assert.match(new TextDecoder().decode(info.subarray(8, info.indexOf(0, 8))), /^cpu/);
  assert.equal(s.kf_engine_free(engine), 0);
});

test("ffi: UnsafePointer.of is the address native code sees, and UnsafePointerView reads it", () => {
  const buf = alloc(16);
  buf.set(new TextEncoder().encode("kvfold\0"));
  const p = Deno.UnsafePointer.of(buf);
  assert.equal(typeof p, "bigint");
  assert.equal(new Deno.UnsafePointerView(p).getCString(), "kvfold");
  assert.equal(new Deno.UnsafePointerView(p).getCString(2), "fold");
  assert.equal(Deno.UnsafePointer.of(buf.subarray(3)), p + 3n);
  assert.equal(Deno.UnsafePointer.value(Deno.UnsafePointer.create(0n)), 0n);
});

test("ffi: model load fills the control block passed last (progress reaches the total)", async () => {
  const kv = await testEngine();
  const seen = [];
  const model = await kv.loadModel(await testModel("gqa", { seed: 11 }), {
    onProgress: (done, total) => seen.push([done, total]),
  });
  try {
    assert.ok(seen.length > 0);
    const [done, total] = seen.at(-1);
    assert.ok(total > 0 && done === total, JSON.stringify(seen));
  } finally {
    model.dispose();
  }
});

test("ffi: a long prefill runs off the event loop; progress is seen while it runs; abort stops it", async () => {
  const kv = await testEngine();
  const model = await kv.loadModel(await testModel("wide", WIDE_MODEL));
  try {
    const s = model.session({ contextSize: 2048, batchSize: 1 });
    const ids = someIds(2000, model.info.vocabSize);
    let ticks = 0;
    const timer = setInterval(() => ticks++, 5);
    const ac = new AbortController();
    const progress = [];
    const t0 = performance.now();
    await assert.rejects(
      () =>
        s.prefill(ids, {
          signal: ac.signal,
          onProgress: (done, total) => {
            progress.push(done);
            assert.equal(total, 2000);
            if (done > 0) ac.abort(new Error("stop"));
          },
        }),
      (e) => e instanceof KvfoldError && e.code === "ABORTED",
    );
    clearInterval(timer);
    const ms = performance.now() - t0;
    const last = progress.at(-1);
    assert.ok(last > 0 && last < 2000, `progress ${progress}`);
    // Timers fired while native code ran: the call did not block the event loop.
    assert.ok(ticks >= 5, `${ticks} timer ticks in ${ms.toFixed(0)} ms`);
    assert.equal(s.position, 0);

    // The session is usable afterwards, and a short prefill completes.
    await s.prefill(ids.slice(0, 8));
    assert.equal(s.position, 8);
    s.dispose();
  } finally {
    model.dispose();
  }
});

test("errors: native messages reach KvfoldError from the caller's thread and from a worker thread", async () => {
  // kf_engine_open fails synchronously: the message comes from kf_last_error().
  await assert.rejects(
    () => Kvfold.open({ backend: "cpu", threads: 5000 }),
    (e) =>
      e instanceof KvfoldError && e.code === "INVALID_ARGUMENT" &&
      /n_threads 5000 is outside/.test(e.message),
  );
  // kf_model_load fails on its thread: the message comes through the control block.
  const dir = await tempDir();
  const src = await testModel("gqa", { seed: 11 });
  for (const f of ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]) {
    await writeFile(`${dir}/${f}`, await readFile(`${src}/${f}`)).catch(() => {});
  }
  const cfg = JSON.parse(await readFile(`${dir}/config.json`, "utf8"));
  cfg.intermediate_size = 100;
  await writeFile(`${dir}/config.json`, JSON.stringify(cfg));
  const kv = await testEngine();
  await assert.rejects(
    () => kv.loadModel(dir),
    (e) =>
      e instanceof KvfoldError && e.code === "FORMAT" &&
      /mlp\.(gate|up|down)_proj\.weight has shape \[\d+, \d+\], config\.json says/.test(e.message),
  );
  await Deno.remove(dir, { recursive: true });
});

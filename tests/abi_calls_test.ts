// ABI version 3: the library and the binding agree on the version, and the long calls that gained a
// control block as their last argument (heads load, engine measurements) honour it: a set cancel
// stops them, progress counts up to its total, and a failure's message reaches the caller through
// the block even when the call ran on a worker thread.
import assert from "node:assert/strict";
import { join } from "node:path";
import { Kvfold } from "../mod.ts";
import { ABI_VERSION, alloc, ControlBlock, cString, outPointer, Status, sym } from "../src/_binding.ts";
import { KvfoldError } from "../src/errors.ts";
import { makeTestLococoHeads } from "../testing/mod.ts";
import { tempDir, testEngine, testModel } from "./_fixtures.ts";

Deno.test("abi: the library reports ABI version 6, the one the binding speaks", async () => {
  const info = await Kvfold.info();
  assert.equal(info.abiVersion, 6);
  assert.equal(ABI_VERSION, 6);
  assert.equal(sym().kf_abi_version(), 6);
});

Deno.test("abi: a heads load stops at a set cancel flag, frees what it made, and counts layers", async () => {
  const kv = await testEngine();
  const dir = await testModel("tiny");
  const tmp = await tempDir();
  try {
    const made = await makeTestLococoHeads(join(tmp, "h.safetensors"), {
      base: dir,
      slots: 24,
      keepRate: 0.5,
      kernel: 5,
      segment: 16,
    });
    const model = await kv.loadModel(dir);
    try {
      const s = sym();
      const path = cString(made.path);

      const cancelled = new ControlBlock();
      cancelled.cancel();
      const none = outPointer();
      const status = s.kf_lococo_heads_load(model._handle.ptr, path, none.buf, cancelled.buf);
      assert.equal(status, Status.CANCELLED);
      assert.equal(cancelled.error, "cannot load LoCoCo heads: cancelled");
      assert.equal(none.get(), null);
      assert.equal(cancelled.done, 0);

      const ctl = new ControlBlock();
      const out = outPointer();
      assert.equal(s.kf_lococo_heads_load(model._handle.ptr, path, out.buf, ctl.buf), Status.OK);
      assert.notEqual(out.get(), null);
      assert.deepEqual([ctl.done, ctl.total], [model.info.layers, model.info.layers]);
      assert.equal(ctl.error, "");
      assert.equal(s.kf_lococo_heads_free(out.get()), Status.OK);
    } finally {
      // Refused while any heads of the model were still loaded: the cancelled load left none.
      model.dispose();
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("abi: a failed heads load names the problem through the public API and the control block", async () => {
  const kv = await testEngine();
  using model = await kv.loadModel(await testModel("tiny"));
  const tmp = await tempDir();
  try {
    assert.throws(() => model.loadLococoHeads(join(tmp, "none.safetensors")), (e) => {
      assert.ok(e instanceof KvfoldError);
      assert.equal(e.code, "IO");
      assert.match(e.message, /^Cannot load LoCoCo heads: .*none\.safetensors/);
      return true;
    });
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("abi: engine measurements stop at a set cancel flag and count passes", async () => {
  const kv = await testEngine();
  const s = sym();
  const ptr = kv._handle.ptr;
  const out = alloc(8);

  const cancelled = new ControlBlock();
  cancelled.cancel();
  assert.equal(
    await s.kf_engine_measure_read_bandwidth(ptr, 1n << 20n, 3, out, cancelled.buf),
    Status.CANCELLED,
  );
  assert.equal(cancelled.error, "cannot measure read bandwidth: cancelled");
  const cancelled2 = new ControlBlock();
  cancelled2.cancel();
  assert.equal(await s.kf_engine_measure_matmul_rate(ptr, 8, 8, 8, 3, out, cancelled2.buf), Status.CANCELLED);
  assert.equal(cancelled2.error, "cannot measure matmul rate: cancelled");

  const ctl = new ControlBlock();
  assert.equal(await s.kf_engine_measure_read_bandwidth(ptr, 1n << 20n, 3, out, ctl.buf), Status.OK);
  assert.deepEqual([ctl.done, ctl.total], [3, 3]);
  const ctl2 = new ControlBlock();
  assert.equal(await s.kf_engine_measure_matmul_rate(ptr, 8, 8, 8, 4, out, ctl2.buf), Status.OK);
  assert.deepEqual([ctl2.done, ctl2.total], [4, 4]);
});

Deno.test("abi: a refused measurement's message reaches the caller from the worker thread", async () => {
  const kv = await testEngine();
  // 128 GiB is past the native limit of 64 GiB; the call runs on a worker thread, so the message
  // must come back in the control block (before ABI 3 it was lost and read "A kvfold call failed").
  await assert.rejects(() => kv.measureReadBandwidth({ bytes: 2 ** 37, repeats: 1 }), (e) => {
    assert.ok(e instanceof KvfoldError);
    assert.equal(e.code, "INVALID_ARGUMENT");
    assert.match(
      e.message,
      /^Cannot measure read bandwidth: bytes 137438953472 is outside \[1 MiB, 64 GiB\]/,
    );
    return true;
  });
});

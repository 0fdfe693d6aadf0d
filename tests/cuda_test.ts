// The CUDA backend as far as a machine without a GPU can see it: it is compiled wherever nvcc is (so a
// kernel that does not compile for sm_80/86/89/90 fails this suite), and every way of asking for it
// without a usable device ends in a KvfoldError that names the cause. Kernels themselves are checked
// against the CPU backend by bench/gpu on a GPU machine.
import assert from "node:assert/strict";
import { Kvfold, KvfoldError } from "../mod.ts";
import { libraryPath, native, sym } from "../src/_binding.ts";

const s = await native();
const built = s.kf_backend_built(2) === 1;
const devices = s.kf_backend_device_count(2);
const nvccFound = await new Deno.Command("bash", { args: ["-c", "command -v ${NVCC:-nvcc}"] }).output()
  .then((o) => o.success, () => false);
const cudaWanted = nvccFound && Deno.env.get("KVFOLD_CUDA") !== "0" && !Deno.env.get("KVFOLD_LIB");

Deno.test("cuda build: the backend is compiled for sm_80, sm_86, sm_89 and sm_90 whenever nvcc is found", () => {
  const info = JSON.parse(Deno.readTextFileSync(libraryPath()!.replace(/[^/]+$/, "build-info.json")));
  assert.equal(info.cuda_built, cudaWanted, JSON.stringify(info));
  assert.equal(built, cudaWanted, "kf_backend_built(cuda) disagrees with build-info.json");
  if (cudaWanted) {
    const archs = Deno.env.get("KVFOLD_CUDA_ARCHS")?.split(/\s+/).map((a) => `sm_${a}`) ??
      ["sm_80", "sm_86", "sm_89", "sm_90"];
    assert.deepEqual(info.cuda_archs, archs);
  }
});

Deno.test("cuda: device count is a number and never throws, 0 when not built", () => {
  assert.ok(Number.isInteger(devices) && devices >= 0);
  if (!built) assert.equal(devices, 0);
});

Deno.test("cuda: asking for the cuda backend without a usable GPU is a KvfoldError naming the cause", {
  ignore: devices > 0,
}, async () => {
  await assert.rejects(
    () => Kvfold.open({ backend: "cuda" }),
    (e: unknown) => {
      assert.ok(e instanceof KvfoldError, String(e));
      if (!built) {
        assert.equal(e.code, "UNSUPPORTED");
        assert.match(e.message, /not built/);
      } else {
        assert.equal(e.code, "BACKEND", e.message);
        assert.match(e.message, /no NVIDIA driver|driver|no CUDA device|cudaGetDeviceCount/, e.message);
      }
      return true;
    },
  );
});

Deno.test("cuda: auto picks the cpu when no GPU is usable; a bad device index or budget is refused", async () => {
  if (devices === 0) {
    using kv = await Kvfold.open({ backend: "auto", threads: 1 });
    assert.equal(kv.backend, "cpu");
  }
  await assert.rejects(() => Kvfold.open({ backend: "cuda", device: -1 }), RangeError);
  await assert.rejects(() => Kvfold.open({ backend: "cuda", memoryMiB: -5 }), RangeError);
  await assert.rejects(() => Kvfold.open({ backend: "cuda", memoryMiB: 1.5 }), RangeError);
});

Deno.test("cuda: the engine params' memory budget field keeps the struct at 16 bytes, zero by default", () => {
  const p = new Uint8Array(sym().kf_engine_default_params());
  assert.equal(p.length, 16);
  assert.equal(new DataView(p.buffer).getInt32(12, true), 0);
});

Deno.test("cuda: the cuBLAS loader refuses a bogus KVFOLD_CUBLAS cleanly and can be turned off", {
  ignore: !built,
}, async () => {
  const before = Deno.env.get("KVFOLD_CUBLAS");
  try {
    Deno.env.set("KVFOLD_CUBLAS", "/nonexistent/libcublas.so.99");
    await assert.rejects(() => Kvfold.cublasLibrary(), (e: unknown) => {
      assert.ok(e instanceof KvfoldError, String(e));
      assert.equal(e.code, "BACKEND");
      assert.match(e.message, /KVFOLD_CUBLAS=\/nonexistent\/libcublas\.so\.99 cannot be loaded/);
      return true;
    });
    // A real library that is not cuBLAS: loaded, then refused for the missing entry point.
    const libc = [
      "/lib/x86_64-linux-gnu/libm.so.6",
      "/usr/lib/x86_64-linux-gnu/libm.so.6",
      "/lib64/libm.so.6",
    ]
      .find((p) => {
        try {
          return Deno.statSync(p).isFile;
        } catch {
          return false;
        }
      });
    if (libc) {
      Deno.env.set("KVFOLD_CUBLAS", libc);
      await assert.rejects(() => Kvfold.cublasLibrary(), /lacks the symbol cublasCreate_v2/);
    }
    for (const off of ["0", "none", "off"]) {
      Deno.env.set("KVFOLD_CUBLAS", off);
      assert.equal(await Kvfold.cublasLibrary(), "");
    }
    Deno.env.delete("KVFOLD_CUBLAS");
    const found = await Kvfold.cublasLibrary();
    assert.ok(found === "" || /libcublas/.test(found), found);
  } finally {
    if (before === undefined) Deno.env.delete("KVFOLD_CUBLAS");
    else Deno.env.set("KVFOLD_CUBLAS", before);
  }
});

Deno.test("cuda: the BLAS probe of a backend that is not built says so", { ignore: built }, async () => {
  await assert.rejects(
    () => Kvfold.cublasLibrary(),
    (e: unknown) => e instanceof KvfoldError && e.code === "UNSUPPORTED",
  );
});

Deno.test("cuda: the cpu engine measures its matmul rate (the prefill ceiling), and refuses bad sizes", async () => {
  using kv = await Kvfold.open({ backend: "cpu", threads: 1 });
  const rate = await kv.measureMatmulRate({ m: 16, n: 64, k: 64, repeats: 2 });
  assert.ok(rate > 0 && Number.isFinite(rate), String(rate));
  await assert.rejects(() => kv.measureMatmulRate({ m: 0 }), RangeError);
});

Deno.test("cuda: kvfold info says whether CUDA is built, for which GPUs, and why none is usable", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../cli/main.ts", import.meta.url).pathname, "info"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assert.ok(out.success, text + new TextDecoder().decode(out.stderr));
  assert.match(text, /backends built: cpu/);
  if (built) {
    assert.match(text, /backends built: cpu, cuda \(cuda for sm_80, sm_86, sm_89, sm_90\)/);
    assert.match(text, /cublas: /);
    if (devices === 0) assert.match(text, /gpu: +none usable \(.+\)/);
  }
});

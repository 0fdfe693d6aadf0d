/**
 * The entry point: {@link Kvfold.open} picks a backend and starts its threads; models load from it.
 *
 * @module
 */

import {
  alloc,
  check,
  libraryPath,
  native,
  outPointer,
  readCharArray,
  readCString,
  sym,
} from "./_binding.ts";
import { HandleOwner, NativeHandle } from "./_handle.ts";
import { NativeStruct } from "./_abi.ts";
import { int32Arg, int64Arg } from "./_int_args.ts";
import { KvfoldError } from "./errors.ts";
import { type LoadModelOptions, Model } from "./model.ts";

/** Which compute backend runs the model. */
export type BackendName = "auto" | "cpu" | "cuda";

const BACKEND_IDS: Record<BackendName, number> = { auto: 0, cpu: 1, cuda: 2 };
const BACKEND_NAMES = ["auto", "cpu", "cuda"] as const;

/** Options of {@link Kvfold.open}. */
export interface OpenOptions {
  /** `"auto"` (default: CUDA when built and a GPU is present, else CPU), `"cpu"` or `"cuda"`. */
  backend?: BackendName;
  /** CPU worker threads, the calling one included; default: every core this process may run on (its CPU set). */
  threads?: number;
  /** GPU index for GPU backends; default 0. */
  device?: number;
  /**
   * GPU backends: most device memory (MiB) the engine may hold for weights, KV caches and scratch;
   * allocations past it fail with an `OUT_OF_MEMORY` {@link KvfoldError}. Default: the device's own limit.
   */
  memoryMiB?: number;
}

/** What the library was built with and what this machine offers. */
export interface LibraryInfo {
  version: string;
  abiVersion: number;
  libraryPath: string;
  backendsBuilt: BackendName[];
  /** CUDA devices usable by the cuda backend (compute capability 8.0+); 0 when it is not built. */
  gpuCount: number;
}

/**
 * A backend with its worker threads. Dispose it (or use `using`) when done; that disposes every
 * model and session loaded through it.
 *
 * @example
 * ```ts ignore
 * import { Kvfold } from "./mod.ts";
 * using kv = await Kvfold.open({ backend: "cpu" });
 * using model = await kv.loadModel("./models/tiny");
 * for await (const piece of model.generate("Once upon a time", { maxTokens: 16 })) {
 *   Deno.stdout.writeSync(new TextEncoder().encode(piece));
 * }
 * ```
 */
export class Kvfold extends HandleOwner {
  /** The backend actually chosen. */
  readonly backend: BackendName;
  /** Worker threads in use. */
  readonly threads: number;
  /** A short description, e.g. "cpu (avx2+fma+f16c)". */
  readonly name: string;

  private constructor(handle: NativeHandle, backend: BackendName, threads: number, name: string) {
    super(handle);
    this.backend = backend;
    this.threads = threads;
    this.name = name;
  }

  /** Loads the native library (building it on first use) and opens a backend. */
  static async open(options: OpenOptions = {}): Promise<Kvfold> {
    const s = await native();
    const backend = options.backend ?? "auto";
    if (!Object.hasOwn(BACKEND_IDS, backend)) {
      throw new TypeError(`Cannot open kvfold: backend "${backend}" is not one of auto, cpu, cuda`);
    }
    const threads = int32Arg("open kvfold", "threads", options.threads ?? 0, { min: 0 });
    const device = int32Arg("open kvfold", "device", options.device ?? 0, { min: 0 });
    const memoryMiB = int32Arg("open kvfold", "memoryMiB", options.memoryMiB ?? 0, { min: 0 });
    const params = new NativeStruct("kf_engine_params", s.kf_engine_default_params())
      .set("backend", BACKEND_IDS[backend])
      .set("n_threads", threads)
      .set("device", device)
      .set("memory_mib", memoryMiB);
    const out = outPointer();
    check(s.kf_engine_open(params.buf, out.buf));
    const ptr = out.get();
    const handle = new NativeHandle(ptr, "the kvfold engine", (p) => check(sym().kf_engine_free(p)), null);
    const info = new NativeStruct("kf_engine_info");
    check(s.kf_engine_get_info(ptr, info.buf));
    return new Kvfold(handle, BACKEND_NAMES[info.get("backend")], info.get("n_threads"), info.text("name"));
  }

  /** Library version, backends compiled in, GPUs visible. */
  static async info(): Promise<LibraryInfo> {
    const s = await native();
    const built: BackendName[] = [];
    if (s.kf_backend_built(1)) built.push("cpu");
    if (s.kf_backend_built(2)) built.push("cuda");
    return {
      version: readCString(s.kf_version()),
      abiVersion: s.kf_abi_version(),
      libraryPath: libraryPath() ?? "",
      backendsBuilt: built,
      gpuCount: s.kf_backend_device_count(2),
    };
  }

  /**
   * The cuBLAS library the cuda backend would load now (`$KVFOLD_CUBLAS`, else `libcublas.so.13`,
   * `.12`, `.so`), or `""` when none is found and kvfold's own matrix kernels run. Needs no GPU.
   * Rejects with an `UNSUPPORTED` {@link KvfoldError} when the cuda backend is not built, `BACKEND`
   * when `$KVFOLD_CUBLAS` names something that cannot be loaded or is not cuBLAS.
   *
   * @example
   * ```ts ignore
   * import { Kvfold } from "./mod.ts";
   * console.log((await Kvfold.cublasLibrary()) || "own kernels");
   * ```
   */
  static async cublasLibrary(): Promise<string> {
    const s = await native();
    const out = alloc(1024);
    check(s.kf_backend_blas_library(BACKEND_IDS.cuda, out, out.length));
    return readCharArray(out, 0, out.length);
  }

  /**
   * Loads a Hugging Face model folder (config.json, safetensors, tokenizer.json), or a llama.cpp
   * GGUF file (llama or qwen2; F32, F16, BF16, Q8_0 or Q4_0 tensors; its tokenizer from a
   * tokenizer.json beside it, else from its metadata). `onProgress(bytesDone, bytesTotal)` is called
   * while weights load; `signal` cancels.
   *
   * @example
   * ```ts ignore
   * import { Kvfold } from "./mod.ts";
   * using kv = await Kvfold.open();
   * using model = await kv.loadModel("./models/tinyllama-q8_0.gguf"); // Q8_0 blocks used as stored
   * console.log(model.info.weightDType); // q8_0
   * using f32 = await kv.loadModel("./models/tinyllama-q8_0.gguf", { dtype: "f32" }); // dequantized
   * ```
   */
  loadModel(dir: string, options: LoadModelOptions = {}): Promise<Model> {
    return Model._load(this, dir, options);
  }

  /**
   * Measures memory read bandwidth (GB/s) with this engine's threads, best of `repeats` passes over
   * `bytes` (default 512 MiB, 5): the ceiling that decode speed is compared to.
   */
  async measureReadBandwidth(options: { bytes?: number; repeats?: number } = {}): Promise<number> {
    const bytes = int64Arg("measure bandwidth", "bytes", options.bytes ?? 512 << 20, { min: 1n << 20n });
    const repeats = int32Arg("measure bandwidth", "repeats", options.repeats ?? 5, { min: 1 });
    const out = alloc(8);
    await this._handle.runControlled((ptr, ctl) =>
      sym().kf_engine_measure_read_bandwidth(ptr, bytes, repeats, out, ctl.buf)
    );
    return new DataView(out.buffer).getFloat64(0, true);
  }

  /**
   * Measures the rate (TFLOP/s) of the matrix product the forward runs, `[m, k] · [n, k]^T` on random
   * bf16 operands with f32 output, best of `repeats` (default 4096³, 10): the ceiling prefill speed is
   * compared to. On cuda it is cuBLAS when loaded, else kvfold's own kernels.
   */
  async measureMatmulRate(
    options: { m?: number; n?: number; k?: number; repeats?: number } = {},
  ): Promise<number> {
    const dim = (name: "m" | "n" | "k") =>
      int32Arg("measure matmul rate", name, options[name] ?? 4096, { min: 1, max: 65536 });
    const m = dim("m"), n = dim("n"), k = dim("k");
    const repeats = int32Arg("measure matmul rate", "repeats", options.repeats ?? 10, { min: 1, max: 1000 });
    const out = alloc(8);
    await this._handle.runControlled((ptr, ctl) =>
      sym().kf_engine_measure_matmul_rate(ptr, m, n, k, repeats, out, ctl.buf)
    );
    return new DataView(out.buffer).getFloat64(0, true);
  }

  /** Throws unless the engine is usable. */
  assertOpen(): void {
    if (this._handle.disposed) {
      throw new KvfoldError("DISPOSED", "Cannot use the kvfold engine: it was disposed");
    }
  }
}

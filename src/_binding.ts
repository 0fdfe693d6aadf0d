/**
 * The raw native surface: `Deno.dlopen` symbols of `ffi/include/kvfold.h`, struct layouts, and the
 * status-to-{@link KvfoldError} translation. Everything else in `src/` goes through this file.
 *
 * @module
 */

import { KvfoldError, type KvfoldErrorCode } from "./errors.ts";
import { ensureNativeLibrary } from "./_native_build.ts";
import { NativeStruct, structFields, STRUCTS } from "./_abi.ts";

const SYMBOLS = {
  kf_last_error: { parameters: [], result: "pointer" },
  kf_status_name: { parameters: ["i32"], result: "pointer" },
  kf_abi_version: { parameters: [], result: "i32" },
  kf_version: { parameters: [], result: "pointer" },
  kf_struct_size: { parameters: ["buffer"], result: "usize" },
  kf_backend_built: { parameters: ["i32"], result: "i32" },
  kf_backend_device_count: { parameters: ["i32"], result: "i32" },
  kf_backend_blas_library: { parameters: ["i32", "buffer", "i32"], result: "i32" },

  kf_engine_default_params: { parameters: [], result: { struct: structFields("kf_engine_params") } },
  kf_engine_open: { parameters: ["buffer", "buffer"], result: "i32" },
  kf_engine_free: { parameters: ["pointer"], result: "i32" },
  kf_engine_get_info: { parameters: ["pointer", "buffer"], result: "i32" },
  kf_engine_measure_read_bandwidth: {
    parameters: ["pointer", "i64", "i32", "buffer", "buffer"],
    result: "i32",
    nonblocking: true,
  },
  kf_engine_measure_matmul_rate: {
    parameters: ["pointer", "i32", "i32", "i32", "i32", "buffer", "buffer"],
    result: "i32",
    nonblocking: true,
  },

  kf_model_default_params: { parameters: [], result: { struct: structFields("kf_model_params") } },
  kf_model_load: {
    parameters: ["pointer", "buffer", "buffer", "buffer", "buffer"],
    result: "i32",
    nonblocking: true,
  },
  kf_model_free: { parameters: ["pointer"], result: "i32" },
  kf_model_get_info: { parameters: ["pointer", "buffer"], result: "i32" },

  kf_session_default_params: {
    parameters: [],
    result: { struct: structFields("kf_session_params") },
  },
  kf_session_create: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  kf_session_free: { parameters: ["pointer"], result: "i32" },
  kf_session_reset: { parameters: ["pointer"], result: "i32" },
  kf_session_n_past: { parameters: ["pointer"], result: "i32" },
  kf_session_truncate: { parameters: ["pointer", "i32"], result: "i32" },
  kf_session_prefill: {
    parameters: ["pointer", "buffer", "i32", "buffer", "buffer"],
    result: "i32",
    nonblocking: true,
  },
  kf_session_prefill_hidden: {
    parameters: ["pointer", "buffer", "i32", "buffer", "buffer", "buffer"],
    result: "i32",
    nonblocking: true,
  },
  kf_session_prefill_embeddings: {
    parameters: ["pointer", "buffer", "i32", "i32", "i32", "buffer", "buffer", "buffer"],
    result: "i32",
    nonblocking: true,
  },
  kf_session_decode: { parameters: ["pointer", "i32", "buffer"], result: "i32", nonblocking: true },
  kf_session_get_logits: { parameters: ["pointer", "buffer", "i32"], result: "i32" },
  kf_session_get_info: { parameters: ["pointer", "buffer"], result: "i32" },
  kf_session_read_cache: {
    parameters: ["pointer", "i32", "buffer", "buffer", "buffer", "i32"],
    result: "i32",
  },

  kf_adapter_load: {
    parameters: ["pointer", "buffer", "buffer", "buffer"],
    result: "i32",
    nonblocking: true,
  },
  kf_adapter_free: { parameters: ["pointer"], result: "i32" },
  kf_adapter_get_info: { parameters: ["pointer", "buffer"], result: "i32" },
  kf_session_set_adapter: { parameters: ["pointer", "pointer"], result: "i32" },
  kf_session_set_adapters: { parameters: ["pointer", "buffer", "buffer", "i32"], result: "i32" },
  kf_batch_decode: { parameters: ["buffer", "buffer", "i32", "buffer"], result: "i32", nonblocking: true },
  kf_batch_prefill: {
    parameters: ["buffer", "buffer", "buffer", "i32", "buffer"],
    result: "i32",
    nonblocking: true,
  },

  kf_lora_trainer_create: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  kf_lora_trainer_free: { parameters: ["pointer"], result: "i32" },
  kf_lora_trainer_get_info: { parameters: ["pointer", "buffer"], result: "i32" },
  kf_lora_trainer_accumulate: {
    parameters: ["pointer", "buffer", "i32", "buffer", "buffer", "i32", "buffer", "buffer"],
    result: "i32",
    nonblocking: true,
  },
  kf_lora_trainer_step: { parameters: ["pointer", "buffer"], result: "i32" },
  kf_lora_trainer_read: { parameters: ["pointer", "i32", "i32", "i32", "buffer", "i64"], result: "i32" },
  kf_lora_trainer_write: { parameters: ["pointer", "i32", "i32", "i32", "buffer", "i64"], result: "i32" },
  kf_lora_trainer_set_step: { parameters: ["pointer", "i64"], result: "i32" },

  kf_model_train_default_params: {
    parameters: [],
    result: { struct: structFields("kf_model_train_params") },
  },
  kf_model_trainer_create: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  kf_model_trainer_free: { parameters: ["pointer"], result: "i32" },
  kf_model_trainer_get_info: { parameters: ["pointer", "buffer"], result: "i32" },
  kf_model_trainer_tensor_name: {
    parameters: ["pointer", "i32", "buffer", "i32", "buffer", "buffer"],
    result: "i32",
  },
  kf_model_trainer_accumulate: {
    parameters: ["pointer", "buffer", "i32", "buffer", "buffer", "i32", "buffer", "buffer"],
    result: "i32",
    nonblocking: true,
  },
  kf_model_trainer_accumulate_document: {
    parameters: ["pointer", "buffer", "i32", "buffer", "i32", "buffer", "i32", "buffer", "buffer", "buffer"],
    result: "i32",
    nonblocking: true,
  },
  kf_model_trainer_accumulate_document_targets: {
    parameters: [
      "pointer",
      "buffer",
      "i32",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "i32",
      "buffer",
      "buffer",
      "i32",
      "f32",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
    ],
    result: "i32",
    nonblocking: true,
  },
  // The *_on twins take a gradient replica after the trainer (kvfold.h).
  kf_model_trainer_accumulate_on: {
    parameters: ["pointer", "i32", "buffer", "i32", "buffer", "buffer", "i32", "buffer", "buffer"],
    result: "i32",
    nonblocking: true,
  },
  kf_model_trainer_accumulate_document_on: {
    parameters: [
      "pointer",
      "i32",
      "buffer",
      "i32",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "i32",
      "buffer",
      "buffer",
      "i32",
      "f32",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
    ],
    result: "i32",
    nonblocking: true,
  },
  kf_model_trainer_accumulate_document_pairs: {
    parameters: [
      "pointer",
      "buffer",
      "i32",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "i32",
      "buffer",
      "buffer",
      "buffer",
    ],
    result: "i32",
    nonblocking: true,
  },
  kf_model_trainer_step: { parameters: ["pointer", "buffer"], result: "i32" },
  kf_model_trainer_read: { parameters: ["pointer", "buffer", "i32", "buffer", "i64"], result: "i32" },
  kf_model_trainer_write: { parameters: ["pointer", "buffer", "i32", "buffer", "i64"], result: "i32" },
  kf_model_trainer_set_step: { parameters: ["pointer", "i64"], result: "i32" },

  kf_lococo_trainer_create: { parameters: ["pointer", "buffer", "pointer", "buffer"], result: "i32" },
  kf_lococo_trainer_free: { parameters: ["pointer"], result: "i32" },
  kf_lococo_trainer_accumulate: {
    parameters: ["pointer", "buffer", "i32", "buffer", "buffer"],
    result: "i32",
    nonblocking: true,
  },
  kf_lococo_trainer_step: { parameters: ["pointer", "buffer"], result: "i32" },
  kf_lococo_trainer_read: { parameters: ["pointer", "i32", "i32", "buffer", "i64"], result: "i32" },
  kf_lococo_trainer_write: { parameters: ["pointer", "i32", "i32", "buffer", "i64"], result: "i32" },
  kf_lococo_trainer_set_step: { parameters: ["pointer", "i64"], result: "i32" },
  kf_lococo_trainer_set_adapter: { parameters: ["pointer", "pointer"], result: "i32" },

  kf_lococo_heads_load: { parameters: ["pointer", "buffer", "buffer", "buffer"], result: "i32" },
  kf_lococo_heads_free: { parameters: ["pointer"], result: "i32" },
  kf_lococo_heads_get_info: { parameters: ["pointer", "buffer"], result: "i32" },

  kf_sampler_default_params: {
    parameters: [],
    result: { struct: structFields("kf_sampler_params") },
  },
  kf_sampler_create: { parameters: ["buffer", "buffer"], result: "i32" },
  kf_sampler_free: { parameters: ["pointer"], result: "i32" },
  kf_sampler_accept: { parameters: ["pointer", "buffer", "i32"], result: "i32" },
  kf_sampler_sample: { parameters: ["pointer", "pointer", "buffer"], result: "i32" },
  kf_sampler_sample_logits: { parameters: ["pointer", "buffer", "i32", "buffer"], result: "i32" },
  kf_sampler_sample_batch: { parameters: ["buffer", "buffer", "i32", "buffer"], result: "i32" },
  kf_sampler_set_allowed: { parameters: ["pointer", "buffer", "i32"], result: "i32" },
  kf_generate_default_params: { parameters: [], result: { struct: structFields("kf_generate_params") } },
  kf_session_generate: {
    parameters: ["pointer", "pointer", "buffer", "buffer", "i32", "buffer", "buffer", "buffer"],
    result: "i32",
    nonblocking: true,
  },
} as const satisfies Deno.ForeignLibraryInterface;

/** The loaded library's symbols. */
export type NativeSymbols = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

/** Status codes of `kf_status`, by name. */
export const Status = {
  OK: 0,
  INVALID_ARGUMENT: 1,
  IO: 2,
  FORMAT: 3,
  UNSUPPORTED: 4,
  OUT_OF_MEMORY: 5,
  CANCELLED: 6,
  INVALID_STATE: 7,
  BACKEND: 8,
  INTERNAL: 9,
} as const;

const CODE_OF_STATUS: Record<number, KvfoldErrorCode> = {
  1: "INVALID_ARGUMENT",
  2: "IO",
  3: "FORMAT",
  4: "UNSUPPORTED",
  5: "OUT_OF_MEMORY",
  6: "ABORTED",
  7: "INVALID_STATE",
  8: "BACKEND",
  9: "INTERNAL",
};

/** The `KF_ABI_VERSION` of `ffi/include/kvfold.h` that {@link SYMBOLS} and the struct tables follow. */
export const ABI_VERSION = 6;

let loaded: { lib: Deno.DynamicLibrary<typeof SYMBOLS>; path: string } | null = null;
let loading: Promise<NativeSymbols> | null = null;

/** Loads (building first if needed) the native library once per process. */
export function native(): Promise<NativeSymbols> {
  if (loaded) return Promise.resolve(loaded.lib.symbols);
  loading ??= (async () => {
    const path = await ensureNativeLibrary();
    let lib: Deno.DynamicLibrary<typeof SYMBOLS>;
    try {
      lib = Deno.dlopen(path, SYMBOLS);
    } catch (e) {
      throw new KvfoldError("BUILD", `Cannot open ${path}: ${(e as Error).message}`, { cause: e });
    }
    // A library of another ABI may bind (same names) and then misread arguments: refuse it first.
    const abi = lib.symbols.kf_abi_version();
    if (abi !== ABI_VERSION) {
      lib.close();
      throw new KvfoldError(
        "BUILD",
        `Cannot use ${path}: its ABI version is ${abi}, this kvfold needs ${ABI_VERSION}`,
      );
    }
    for (const [name, { size }] of Object.entries(STRUCTS)) {
      const got = Number(lib.symbols.kf_struct_size(cString(name)));
      if (got !== size) {
        lib.close();
        throw new KvfoldError(
          "BUILD",
          `Cannot use ${path}: struct ${name} is ${got} bytes there, ${size} here`,
        );
      }
    }
    loaded = { lib, path };
    return lib.symbols;
  })();
  loading.catch(() => (loading = null));
  return loading;
}

/** The already loaded symbols (after `await native()`). */
export function sym(): NativeSymbols {
  if (!loaded) {
    throw new KvfoldError("INVALID_STATE", "Cannot call kvfold: the native library is not loaded yet");
  }
  return loaded.lib.symbols;
}

/** Path of the loaded library, or null. */
export function libraryPath(): string | null {
  return loaded?.path ?? null;
}

/** NUL-terminated UTF-8 bytes of a string, in an off-heap buffer (safe for nonblocking calls). */
export function cString(s: string): Uint8Array<ArrayBuffer> {
  const enc = new TextEncoder().encode(s);
  const buf = new Uint8Array(new ArrayBuffer(enc.length + 1));
  buf.set(enc);
  return buf;
}

/** Reads a NUL-terminated string at a native pointer. */
export function readCString(p: Deno.PointerValue): string {
  return p === null ? "" : new Deno.UnsafePointerView(p).getCString();
}

/** Reads a NUL-terminated string from a fixed char array inside a struct buffer. */
export function readCharArray(buf: Uint8Array, offset: number, capacity: number): string {
  const bytes = buf.subarray(offset, offset + capacity);
  const end = bytes.indexOf(0);
  return new TextDecoder().decode(bytes.subarray(0, end < 0 ? capacity : end));
}

/** An off-heap zeroed byte buffer (never moved by the GC while native code holds it). */
export function alloc(bytes: number): Uint8Array<ArrayBuffer> {
  return new Uint8Array(new ArrayBuffer(bytes));
}

/** Throws the {@link KvfoldError} for a non-OK status, with the native thread-local message. */
export function check(status: number, control?: ControlBlock): void {
  if (status === Status.OK) return;
  const s = sym();
  // Nonblocking calls ran on a worker thread: their message is in the control block.
  let msg = control?.error || readCString(s.kf_last_error());
  if (msg.length > 0) msg = msg[0].toUpperCase() + msg.slice(1);
  else msg = `A kvfold call failed with ${readCString(s.kf_status_name(status))}`;
  throw new KvfoldError(CODE_OF_STATUS[status] ?? "INTERNAL", msg);
}

/** A pointer-sized out parameter. */
export function outPointer(): { buf: Uint8Array<ArrayBuffer>; get(): Deno.PointerValue } {
  const buf = alloc(8);
  return {
    buf,
    get: () => Deno.UnsafePointer.create(new DataView(buf.buffer).getBigUint64(0, true)),
  };
}

/**
 * The shared control block of long calls (`kf_control`): the caller flips `cancel`, the native
 * code updates `done`/`total` while the call runs.
 */
export class ControlBlock {
  readonly #struct = new NativeStruct("kf_control");
  /** The struct handed to native code. */
  readonly buf: Uint8Array<ArrayBuffer> = this.#struct.buf;
  /** Asks the running call to stop at its next check. */
  cancel(): void {
    this.#struct.set("cancel", 1);
  }
  /** Whether cancellation was asked for. */
  get cancelled(): boolean {
    return this.#struct.get("cancel") !== 0;
  }
  /** Progress units done. */
  get done(): number {
    return this.#struct.get("done");
  }
  /** Progress units in all (0 while unknown). */
  get total(): number {
    return this.#struct.get("total");
  }
  /** The failure message the native call left here ("" if none). */
  get error(): string {
    return this.#struct.text("error");
  }
}

/** Runs a nonblocking native call with a control block tied to an AbortSignal and a progress poller. */
export async function withControl<T>(
  run: (ctl: ControlBlock) => Promise<T>,
  options: { signal?: AbortSignal; onProgress?: (done: number, total: number) => void; intervalMs?: number } =
    {},
): Promise<T> {
  const ctl = new ControlBlock();
  const { signal, onProgress } = options;
  if (signal?.aborted) ctl.cancel();
  const onAbort = () => ctl.cancel();
  signal?.addEventListener("abort", onAbort, { once: true });
  let timer: ReturnType<typeof setInterval> | undefined;
  let last = -1;
  let callbackError: { error: unknown } | null = null;
  const report = () => {
    if (!onProgress || callbackError || ctl.done === last) return;
    last = ctl.done;
    try {
      onProgress(ctl.done, ctl.total);
    } catch (error) {
      // A throwing callback stops the call and becomes its error; it never reaches native code.
      callbackError = { error };
      ctl.cancel();
    }
  };
  if (onProgress) timer = setInterval(report, options.intervalMs ?? 100);
  try {
    const result = await run(ctl);
    report();
    if (callbackError) throw (callbackError as { error: unknown }).error;
    return result;
  } catch (e) {
    if (callbackError) throw (callbackError as { error: unknown }).error;
    if (e instanceof KvfoldError && e.code === "ABORTED" && signal?.aborted) {
      throw new KvfoldError("ABORTED", e.message, { cause: signal.reason });
    }
    throw e;
  } finally {
    if (timer !== undefined) clearInterval(timer);
    signal?.removeEventListener("abort", onAbort);
  }
}

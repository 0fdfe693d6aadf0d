/**
 * Bounded KV caches: LoCoCo convolutional fusion, H2O heavy hitters and StreamingLLM, as session
 * options. A session with one of them prefills a prompt of any length segment by segment into a
 * cache of a fixed number of slots per layer (DESIGN.md, "LoCoCo").
 *
 * @module
 */

import { check, ControlBlock, cString, outPointer, sym } from "./_binding.ts";
import { NativeStruct } from "./_abi.ts";
import { HandleOwner, NativeHandle } from "./_handle.ts";
import { KvfoldError } from "./errors.ts";
import type { Model } from "./model.ts";

/** Native `kf_cache_kind` values. */
export const CACHE_KINDS = Object.freeze({ full: 0, lococo: 1, h2o: 2, streaming: 3 } as const);
/** A cache kind by name. */
export type CacheKind = keyof typeof CACHE_KINDS;

/**
 * How a session keeps its KV cache:
 * - `full`: every position keeps its slot (the default);
 * - `lococo`: above `slots + 16` slots, the top Mh by attention score stay and the rest are fused
 *   into Mc slots by the heads' convolution (M, B from the heads file unless given);
 * - `h2o`: above `slots + 16`, the top `slots` by attention score stay;
 * - `streaming`: above `sinks + window`, the first `sinks` and the last `window` slots stay.
 * Compressing kinds prefill in segments of `segment` tokens (default: the session's batch size,
 * or the heads file's B for lococo).
 */
export type CacheOptions =
  | { kind: "full" }
  | { kind: "lococo"; heads: LococoHeads; slots?: number; segment?: number }
  | { kind: "h2o"; slots: number; segment?: number }
  | { kind: "streaming"; window: number; sinks?: number; segment?: number };

/** What a loaded heads file holds. */
export interface LococoHeadsInfo {
  /** M: slots per layer after a compression (file metadata). */
  slots: number;
  /** Mc: slots the convolution fuses into. */
  fusedSlots: number;
  /** k: the convolution's kernel. */
  kernel: number;
  /** B: the prefill segment (file metadata). */
  segment: number;
  /** r: keep rate (file metadata). */
  keepRate: number;
  /** Layers (the model's). */
  layers: number;
  /** head_dim (the model's). */
  headDim: number;
  /** Bytes held in memory (f32). */
  bytes: number;
}

/**
 * LoCoCo heads (one Conv1d compressor per layer) loaded for one model and checked against it.
 * Pass them to `model.session({ cache: { kind: "lococo", heads } })`; many sessions can share them.
 *
 * @example
 * ```ts ignore
 * using heads = await model.loadLococoHeads("./heads.safetensors");
 * using session = model.session({ cache: { kind: "lococo", heads } });
 * await session.prefill(longPromptIds, { onProgress: (done, total) => console.log(done, total) });
 * console.log(session.memory().kvSlotsPeak); // at most M + B (+ 16)
 * ```
 */
export class LococoHeads extends HandleOwner {
  /** The model they were loaded for. */
  readonly model: Model;
  /** The heads file. */
  readonly path: string;
  /** M, Mc, k, B, r and size. */
  readonly info: LococoHeadsInfo;

  private constructor(handle: NativeHandle, model: Model, path: string, info: LococoHeadsInfo) {
    super(handle);
    this.model = model;
    this.path = path;
    this.info = info;
  }

  /** @internal use {@link Model.loadLococoHeads}. */
  static _load(model: Model, path: string): LococoHeads {
    if (typeof path !== "string" || path.length === 0) {
      throw new KvfoldError("INVALID_ARGUMENT", "Cannot load LoCoCo heads: the path is empty");
    }
    const s = sym();
    const out = outPointer();
    // A synchronous call: nothing can cancel it from this thread, but the block takes the error copy
    // as on every long call (kvfold.h, "Conventions").
    const ctl = new ControlBlock();
    check(s.kf_lococo_heads_load(model._handle.ptr, cString(path), out.buf, ctl.buf), ctl);
    const ptr = out.get();
    const handle = new NativeHandle(
      ptr,
      `the LoCoCo heads ${path}`,
      (p) => check(sym().kf_lococo_heads_free(p)),
      model._handle,
    );
    const i = new NativeStruct("kf_lococo_heads_info");
    check(s.kf_lococo_heads_get_info(ptr, i.buf));
    const info: LococoHeadsInfo = {
      slots: i.get("slots"),
      fusedSlots: i.get("fused_slots"),
      kernel: i.get("kernel"),
      segment: i.get("segment"),
      keepRate: i.get("keep_rate"),
      layers: i.get("n_layers"),
      headDim: i.get("head_dim"),
      bytes: i.get("bytes"),
    };
    return new LococoHeads(handle, model, path, info);
  }

  /** Sessions using them. */
  get users(): number {
    if (this._handle.disposed) return 0;
    const info = new NativeStruct("kf_lococo_heads_info");
    check(sym().kf_lococo_heads_get_info(this._handle.ptr, info.buf));
    return info.get("n_users");
  }

  /** Frees them; refused (INVALID_STATE) while a live session uses them. */
  override dispose(): void {
    this.disposeUnlessUsed("free the LoCoCo heads", "them");
  }
}

/**
 * `kf_session_params` from {@link SessionOptions}, filled in this one place: the context and batch
 * sizes, and the cache kind with its settings (slots, segment, sinks, window, LoCoCo heads).
 *
 * @module
 */

import { NativeStruct } from "./_abi.ts";
import { sym } from "./_binding.ts";
import { int32Arg } from "./_int_args.ts";
import { KvfoldError } from "./errors.ts";
import { CACHE_KINDS, type CacheKind, type CacheOptions, LococoHeads } from "./lococo.ts";
import type { Model } from "./model.ts";
import type { SessionOptions } from "./session.ts";

/**
 * The params of a new session of `model`, and the LoCoCo heads it will hold (null for other
 * caches). Wrong values are refused before any native call.
 */
export function sessionParams(
  model: Model,
  options: SessionOptions,
): { params: NativeStruct<"kf_session_params">; heads: LococoHeads | null } {
  const params = new NativeStruct("kf_session_params", sym().kf_session_default_params());
  // 0 in the native params means "the default"; a caller who writes contextSize asks for at least 1.
  const ctx = options.contextSize === undefined
    ? 0
    : int32Arg("create session", "contextSize", options.contextSize, { min: 1 });
  const batch = int32Arg("create session", "batchSize", options.batchSize ?? params.get("n_batch"), {
    min: 1,
  });
  params.set("n_ctx", ctx).set("n_batch", batch);
  return { params, heads: encodeCacheOptions(params, options.cache, model) };
}

function nonNegative(what: string, v: number | undefined): number {
  return v === undefined ? 0 : int32Arg("create session", `cache ${what}`, v, { min: 0 });
}

/** Writes a {@link CacheOptions} into `params` and returns the heads the session will rely on, if any. */
function encodeCacheOptions(
  params: NativeStruct<"kf_session_params">,
  cache: CacheOptions | undefined,
  model: Model,
): LococoHeads | null {
  if (cache === undefined) return null;
  const kind = Object.hasOwn(CACHE_KINDS, cache.kind) ? CACHE_KINDS[cache.kind as CacheKind] : undefined;
  if (kind === undefined) {
    throw new RangeError(
      `Cannot create session: cache kind "${cache.kind}" is not one of ${
        Object.keys(CACHE_KINDS).join(", ")
      }`,
    );
  }
  params.set("cache_kind", kind);
  if (cache.kind === "full") return null;
  params.set("segment", nonNegative("segment", cache.segment));
  if (cache.kind === "h2o") {
    params.set("slots", nonNegative("slots", cache.slots));
    return null;
  }
  if (cache.kind === "streaming") {
    if (cache.sinks !== undefined) params.set("sinks", nonNegative("sinks", cache.sinks));
    params.set("window", nonNegative("window", cache.window));
    return null;
  }
  const heads = cache.heads;
  if (!(heads instanceof LococoHeads)) {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      "Cannot create session: a lococo cache needs `heads` loaded with model.loadLococoHeads(path)",
    );
  }
  if (heads.model !== model) {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      "Cannot create session: the LoCoCo heads belong to another model",
    );
  }
  params.set("slots", nonNegative("slots", cache.slots));
  params.setPointer("heads", heads._handle.ptr);
  return heads;
}

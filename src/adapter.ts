/**
 * LoRA adapters: PEFT folders loaded once per model and kept resident, selected per request by
 * handle or name. {@link AdapterRegistry} keeps them under a memory budget, evicting the least
 * recently used ones no session is using, and reloads an evicted one when a request names it.
 *
 * @module
 */

import { check, cString, outPointer, sym } from "./_binding.ts";
import { NativeStruct } from "./_abi.ts";
import { HandleOwner, NativeHandle } from "./_handle.ts";
import { KvfoldError } from "./errors.ts";
import type { Model } from "./model.ts";

/** The projections a LoRA can adapt, in the native bit order. */
export const LORA_PROJECTIONS = [
  "q_proj",
  "k_proj",
  "v_proj",
  "o_proj",
  "gate_proj",
  "up_proj",
  "down_proj",
] as const;
/** One of {@link LORA_PROJECTIONS}. */
export type LoraProjection = typeof LORA_PROJECTIONS[number];

/** Most adapters one session composes (`KF_MAX_ADAPTERS` of the native library). */
export const MAX_COMPOSED_ADAPTERS = 8;

/**
 * One term of an adapter composition (`session.setAdapters`): an {@link Adapter} or a name
 * registered in `model.adapters`, and its weight. The session applies
 * `y = W x + Σ weight_i · s_i · B_i (A_i x)`, `s_i` each adapter's own scale.
 *
 * @example
 * ```ts ignore
 * const mix: AdapterTerm[] = [{ adapter: "finance", weight: 0.7 }, { adapter: "legal", weight: 0.3 }];
 * await session.setAdapters(mix);
 * ```
 */
export interface AdapterTerm {
  /** The adapter, or its registry name (loaded if it was evicted). */
  adapter: Adapter | string;
  /** Its weight: any finite number (1: the adapter as trained; 0: no effect). */
  weight: number;
}

/** A term of the composition a session applies now, its adapter loaded. */
export interface AppliedAdapterTerm {
  adapter: Adapter;
  weight: number;
}

/** What a loaded adapter holds. */
export interface AdapterInfo {
  /** Largest rank of any adapted projection. */
  rank: number;
  /** Projections some layer adapts. */
  modules: LoraProjection[];
  /** `lora_alpha` of adapter_config.json. */
  alpha: number;
  /** Whether the scale is alpha / sqrt(r). */
  rslora: boolean;
  /** LoRA parameters. */
  params: number;
  /** Bytes held in memory (f32). */
  bytes: number;
}

/**
 * A PEFT LoRA adapter loaded for one model. Sessions select it with `session.setAdapter(adapter)`
 * or `generate({ adapter })`; selecting is a pointer change, nothing is copied.
 *
 * @example
 * ```ts ignore
 * using adapter = await model.adapters.load("./adapters/finance");
 * for await (const piece of model.generate("Revenue was", { adapter, maxTokens: 16 })) console.log(piece);
 * ```
 */
export class Adapter extends HandleOwner {
  /** The model it was loaded for. */
  readonly model: Model;
  /** Registry name (the folder's base name unless given). */
  readonly name: string;
  /** The PEFT folder. */
  readonly dir: string;
  /** Rank, modules, scale and size. */
  readonly info: AdapterInfo;

  private constructor(handle: NativeHandle, model: Model, name: string, dir: string, info: AdapterInfo) {
    super(handle);
    this.model = model;
    this.name = name;
    this.dir = dir;
    this.info = info;
  }

  /** @internal use {@link AdapterRegistry.load}. */
  static async _load(
    model: Model,
    dir: string,
    name: string,
    options: { signal?: AbortSignal } = {},
  ): Promise<Adapter> {
    dir = dir.replace(/\/+$/, "") || "/";
    await assertPeftFolder(dir);
    const s = sym();
    const out = outPointer();
    const path = cString(dir);
    // Made while the model is still held: a model disposed during the load frees the adapter first.
    const handle = await model._handle.runControlled(
      (modelPtr, ctl) => s.kf_adapter_load(modelPtr, path, out.buf, ctl.buf),
      {
        signal: options.signal,
        discard: () => {
          const made = out.get();
          if (made !== null) s.kf_adapter_free(made);
        },
        adopt: () =>
          new NativeHandle(
            out.get(),
            `adapter ${name}`,
            (p) => check(sym().kf_adapter_free(p)),
            model._handle,
          ),
      },
    );
    const ptr = handle.ptr;
    const i = new NativeStruct("kf_adapter_info");
    check(s.kf_adapter_get_info(ptr, i.buf));
    const mask = i.get("proj_mask");
    const info: AdapterInfo = {
      rank: i.get("max_rank"),
      modules: LORA_PROJECTIONS.filter((_, p) => (mask & (1 << p)) !== 0),
      rslora: i.get("rslora") === 1,
      alpha: i.get("alpha"),
      params: i.get("n_params"),
      bytes: i.get("bytes"),
    };
    return new Adapter(handle, model, name, dir, info);
  }

  /** Sessions whose current adapter this is. */
  get users(): number {
    if (this._handle.disposed) return 0;
    const info = new NativeStruct("kf_adapter_info");
    check(sym().kf_adapter_get_info(this._handle.ptr, info.buf));
    return info.get("n_users");
  }

  /** Whether it was disposed (unloaded or evicted). */
  get disposed(): boolean {
    return this._handle.disposed;
  }

  /**
   * Frees the adapter. Refused (INVALID_STATE) while a live session uses it: select another
   * adapter (or none) there first. Disposing the model frees everything in the right order.
   */
  override dispose(): void {
    this.disposeUnlessUsed(`unload adapter ${this.name}`, "it");
  }
}

// A clear message for the common mistakes, before the native loader's generic ones.
async function assertPeftFolder(dir: string): Promise<void> {
  // What is wrong with a file the folder should hold: "does not exist", "is a directory, ...", or "".
  const problem = async (f: string) => {
    try {
      const info = await Deno.stat(`${dir}/${f}`);
      return info.isDirectory ? "is a directory, not a file" : info.isFile ? "" : "is not a regular file";
    } catch {
      return "does not exist";
    }
  };
  const config = await problem("adapter_config.json");
  if (config) throw new KvfoldError("IO", `Cannot load adapter: ${dir}/adapter_config.json ${config}`);
  const weights = await problem("adapter_model.safetensors");
  if (weights === "does not exist") {
    const hint = (await problem("adapter_model.bin")) === ""
      ? `; it has adapter_model.bin: convert it once with \`kvfold convert ${dir} OUT_DIR\``
      : "";
    throw new KvfoldError(
      "IO",
      `Cannot load adapter: ${dir}/adapter_model.safetensors does not exist${hint}`,
    );
  }
  if (weights) {
    throw new KvfoldError("IO", `Cannot load adapter: ${dir}/adapter_model.safetensors ${weights}`);
  }
}

/** One registered adapter, loaded or not. */
export interface AdapterEntry {
  name: string;
  dir: string;
  /** Whether it is resident now. */
  loaded: boolean;
  /** Bytes held (0 when not loaded). */
  bytes: number;
  /** Sessions using it now. */
  users: number;
  /** When a request last selected it (performance.now() ms), 0 if never. */
  lastUsed: number;
}

/**
 * The adapters of one model, by name, under a memory budget. `load` registers and loads;
 * `acquire` returns a resident adapter, reloading one that was evicted. When resident bytes pass
 * the budget, the least recently used adapters that no session is using are evicted (they stay
 * registered); an adapter in use is never evicted.
 *
 * @example
 * ```ts ignore
 * model.adapters.budgetBytes = 256 * 2 ** 20;
 * await model.adapters.load("./adapters/finance");            // name "finance"
 * model.adapters.register("legal", "./adapters/legal");       // loaded on first use
 * for await (const p of model.generate("Q: ...", { adapter: "legal" })) console.log(p);
 * console.log(model.adapters.list());
 * ```
 */
export class AdapterRegistry {
  /** The model the adapters belong to. */
  readonly model: Model;
  #budget: number;
  #entries = new Map<string, { dir: string; adapter: Adapter | null; lastUsed: number }>();
  #loading = new Map<string, Promise<Adapter>>();
  #clock = 0;

  constructor(model: Model, budgetBytes = Infinity) {
    this.model = model;
    this.#budget = checkBudget(budgetBytes);
  }

  /** Most bytes of resident adapters; lowering it evicts what it can now. Default Infinity. */
  get budgetBytes(): number {
    return this.#budget;
  }
  set budgetBytes(bytes: number) {
    this.#budget = checkBudget(bytes);
    this.#evict(null);
  }

  /** Bytes held by resident adapters. */
  get residentBytes(): number {
    let n = 0;
    for (const e of this.#entries.values()) if (e.adapter && !e.adapter.disposed) n += e.adapter.info.bytes;
    return n;
  }

  /** Makes `name` known without loading it; the first request that names it loads it. */
  register(name: string, dir: string): void {
    checkName(name);
    const known = this.#entries.get(name);
    if (known && known.dir !== dir.replace(/\/+$/, "")) {
      throw new KvfoldError(
        "INVALID_ARGUMENT",
        `Cannot register adapter ${name}: it is already ${known.dir}`,
      );
    }
    if (!known) this.#entries.set(name, { dir: dir.replace(/\/+$/, ""), adapter: null, lastUsed: 0 });
  }

  /** Registers (name: the folder's base name unless given) and loads a PEFT folder. */
  async load(dir: string, options: { name?: string; signal?: AbortSignal } = {}): Promise<Adapter> {
    const name = options.name ?? (dir.replace(/\/+$/, "").split("/").pop() || dir);
    const isNew = !this.#entries.has(name);
    this.register(name, dir);
    try {
      return await this.acquire(name, options);
    } catch (e) {
      if (isNew) this.#entries.delete(name); // a folder that does not load is not registered
      throw e;
    }
  }

  /**
   * The resident adapter for a name (loading or reloading it) or the given adapter itself, marked
   * most recently used.
   */
  async acquire(adapter: string | Adapter, options: { signal?: AbortSignal } = {}): Promise<Adapter> {
    if (typeof adapter !== "string") {
      if (adapter.model !== this.model) {
        throw new KvfoldError(
          "INVALID_ARGUMENT",
          `Cannot use adapter ${adapter.name}: it belongs to another model`,
        );
      }
      if (adapter.disposed) {
        throw new KvfoldError("DISPOSED", `Cannot use adapter ${adapter.name}: it was unloaded`);
      }
      const e = this.#entries.get(adapter.name);
      if (e?.adapter === adapter) e.lastUsed = this.#tick();
      return adapter;
    }
    const e = this.#entries.get(adapter);
    if (!e) {
      const known = [...this.#entries.keys()];
      throw new KvfoldError(
        "INVALID_ARGUMENT",
        `Cannot use adapter ${JSON.stringify(adapter)}: no adapter of that name is registered` +
          (known.length ? ` (known: ${known.join(", ")})` : ""),
      );
    }
    e.lastUsed = this.#tick();
    if (e.adapter && !e.adapter.disposed) return e.adapter;
    let pending = this.#loading.get(adapter);
    if (!pending) {
      pending = Adapter._load(this.model, e.dir, adapter, options);
      this.#loading.set(adapter, pending);
    }
    try {
      const loaded = await pending;
      e.adapter = loaded;
      this.#evict(loaded);
      return loaded;
    } finally {
      this.#loading.delete(adapter);
    }
  }

  /** The resident adapter of that name, if any (does not load or touch it). */
  get(name: string): Adapter | undefined {
    const a = this.#entries.get(name)?.adapter;
    return a && !a.disposed ? a : undefined;
  }

  /** Every registered adapter, most recently used first. */
  list(): AdapterEntry[] {
    return [...this.#entries].map(([name, e]) => {
      const a = e.adapter && !e.adapter.disposed ? e.adapter : null;
      return {
        name,
        dir: e.dir,
        loaded: a !== null,
        bytes: a?.info.bytes ?? 0,
        users: a?.users ?? 0,
        lastUsed: e.lastUsed,
      };
    }).sort((x, y) => y.lastUsed - x.lastUsed);
  }

  /** Frees and forgets an adapter. Refused while a session uses it. */
  unload(name: string): void {
    const e = this.#entries.get(name);
    if (!e) {
      throw new KvfoldError(
        "INVALID_ARGUMENT",
        `Cannot unload adapter ${JSON.stringify(name)}: not registered`,
      );
    }
    e.adapter?.dispose(); // throws INVALID_STATE when in use
    this.#entries.delete(name);
  }

  #tick(): number {
    // Strictly increasing even within one millisecond, so LRU order is exact.
    this.#clock = Math.max(this.#clock + 1e-6, performance.now());
    return this.#clock;
  }

  // Evicts least recently used, unused adapters until resident bytes fit the budget. `keep` (just
  // loaded) goes last; if it alone cannot fit, it is freed and the load fails.
  #evict(keep: Adapter | null): void {
    if (this.residentBytes <= this.#budget) return;
    const candidates = [...this.#entries.values()]
      .filter((e) => e.adapter && !e.adapter.disposed && e.adapter !== keep)
      .sort((a, b) => a.lastUsed - b.lastUsed);
    for (const e of candidates) {
      if (this.residentBytes <= this.#budget) return;
      if (e.adapter!._handle.liveUsers > 0) continue; // in use: never evicted
      e.adapter!.dispose();
      e.adapter = null;
    }
    if (keep && this.residentBytes > this.#budget) {
      const entry = [...this.#entries.values()].find((e) => e.adapter === keep);
      if (keep._handle.liveUsers === 0) {
        keep.dispose();
        if (entry) entry.adapter = null;
      }
      throw new KvfoldError(
        "OUT_OF_MEMORY",
        `Cannot load adapter ${keep.name}: it needs ${keep.info.bytes} bytes, and the adapters in use already ` +
          `hold ${this.residentBytes} of the ${this.#budget}-byte budget`,
      );
    }
  }
}

function checkBudget(bytes: number): number {
  if (typeof bytes !== "number" || Number.isNaN(bytes) || bytes < 0) {
    throw new RangeError(`Cannot set the adapter budget: ${bytes} is not a non-negative number of bytes`);
  }
  return bytes;
}

function checkName(name: string): void {
  if (typeof name !== "string" || name.length === 0) {
    throw new TypeError("Cannot register adapter: the name is empty");
  }
}

/**
 * Lifetime of a native handle: idempotent dispose, children disposed before their parent, and a
 * guard that defers the native free until in-flight nonblocking calls have returned.
 *
 * @module
 */

import { check, type ControlBlock, withControl } from "./_binding.ts";
import { KvfoldError } from "./errors.ts";

// Backstop only: frees handles the user forgot, when the GC collects their wrapper.
const registry = new FinalizationRegistry<() => void>((free) => {
  try {
    free();
  } catch { /* nothing to report to at GC time */ }
});

/** Owns one native pointer. */
export class NativeHandle {
  #ptr: Deno.PointerValue;
  #what: string;
  #free: (p: Deno.PointerValue) => void;
  #inflight = new Set<Promise<unknown>>();
  #cancels = new Set<() => void>();
  #children = new Set<NativeHandle>();
  #parent: NativeHandle | null;
  // Handles this one relies on without owning (a session's adapter), and the reverse: a handle is
  // freed only after every handle using it has been freed.
  #uses = new Set<NativeHandle>();
  #usedBy = new Set<NativeHandle>();
  #disposed = false;
  #token = {};

  constructor(
    ptr: Deno.PointerValue,
    what: string,
    free: (p: Deno.PointerValue) => void,
    parent: NativeHandle | null,
  ) {
    this.#ptr = ptr;
    this.#what = what;
    this.#free = free;
    this.#parent = parent;
    if (parent) parent.#children.add(this);
    registry.register(this, () => free(ptr), this.#token);
  }

  /** Whether dispose() was called. */
  get disposed(): boolean {
    return this.#disposed;
  }

  /** The live pointer; throws a DISPOSED error after dispose(). */
  get ptr(): Deno.PointerValue {
    if (this.#disposed) throw new KvfoldError("DISPOSED", `Cannot use ${this.#what}: it was disposed`);
    return this.#ptr;
  }

  /**
   * Runs a nonblocking call while keeping the handle alive: dispose() during the call cancels it
   * (through `cancel`) and frees only after it settles.
   */
  async hold<T>(call: () => Promise<T>, cancel?: () => void): Promise<T> {
    this.ptr; // throws when disposed
    const p = call();
    this.#inflight.add(p);
    if (cancel) this.#cancels.add(cancel);
    try {
      return await p;
    } finally {
      this.#inflight.delete(p);
      if (cancel) this.#cancels.delete(cancel);
      this.#maybeRelease();
    }
  }

  /**
   * Runs a long nonblocking call with a control block: `signal` and dispose() cancel it, progress
   * is reported, and a failure becomes a KvfoldError with the native message. A call during which
   * this handle was disposed ends in a DISPOSED error, even if it finished: its result belongs to
   * freed state. `discard` frees what a failed call made and `adopt` takes what a successful one
   * made; both run while this handle is still alive, so a child handle registered in `adopt`
   * is freed before this one, never after.
   */
  async runControlled<T = void>(
    call: (ptr: Deno.PointerValue, ctl: ControlBlock) => Promise<number>,
    options: {
      signal?: AbortSignal;
      onProgress?: (done: number, total: number) => void;
      discard?: () => void;
      adopt?: () => T;
    } = {},
  ): Promise<T> {
    const ptr = this.ptr;
    let control: ControlBlock | undefined;
    const disposedError = () =>
      new KvfoldError("DISPOSED", `Cannot finish the call: ${this.#what} was disposed while it ran`);
    return await this.hold(async () => {
      try {
        await withControl(async (ctl) => {
          control = ctl;
          check(await call(ptr, ctl), ctl);
        }, options);
      } catch (e) {
        options.discard?.();
        const cancelled = e instanceof KvfoldError && e.code === "ABORTED" && !options.signal?.aborted;
        throw cancelled && this.#disposed ? disposedError() : e;
      }
      // Still inside the held region: this handle cannot have been freed yet.
      if (this.#disposed) {
        options.discard?.();
        throw disposedError();
      }
      return options.adopt ? options.adopt() : undefined as T;
    }, () => control?.cancel());
  }

  /** Keeps `target` from being freed until this handle is freed (or {@link unuse} is called). */
  use(target: NativeHandle): void {
    this.#uses.add(target);
    target.#usedBy.add(this);
  }

  /** Ends a {@link use}. */
  unuse(target: NativeHandle): void {
    this.#uses.delete(target);
    target.#usedBy.delete(this);
    target.#maybeRelease();
  }

  /** Live (not disposed) handles using this one. */
  get liveUsers(): number {
    let n = 0;
    for (const u of this.#usedBy) if (!u.#disposed) n++;
    return n;
  }

  /** Disposes children, then this handle (deferred while calls are in flight). Idempotent. */
  dispose(): void {
    if (this.#disposed) return;
    for (const c of [...this.#children]) c.dispose();
    this.#disposed = true;
    for (const cancel of this.#cancels) cancel();
    this.#maybeRelease();
  }

  /** Resolves once the native memory is actually freed. */
  async settled(): Promise<void> {
    while (this.#inflight.size > 0) await Promise.allSettled([...this.#inflight]);
    for (const c of [...this.#children]) await c.settled();
  }

  #released = false;
  // Frees once disposed, idle, childless and unused (a parent outlives its children's in-flight calls).
  #maybeRelease() {
    if (
      this.#released || !this.#disposed || this.#inflight.size > 0 || this.#children.size > 0 ||
      this.#usedBy.size > 0
    ) return;
    this.#released = true;
    registry.unregister(this.#token);
    this.#free(this.#ptr);
    for (const t of [...this.#uses]) this.unuse(t);
    const parent = this.#parent;
    if (parent) {
      parent.#children.delete(this);
      parent.#maybeRelease();
    }
  }
}

/**
 * Base of the public handle classes: `dispose()`, `Symbol.dispose` and `Symbol.asyncDispose`
 * (which also waits until the native memory is really freed).
 */
export class HandleOwner {
  #handle: NativeHandle;

  constructor(handle: NativeHandle) {
    this.#handle = handle;
  }

  /** @internal the native handle, for children. */
  get _handle(): NativeHandle {
    return this.#handle;
  }

  /** Frees the native object and its children (after in-flight calls return). Idempotent. */
  dispose(): void {
    this.#handle.dispose();
  }

  /**
   * Disposes unless live sessions use this handle (an adapter, LoCoCo heads): then an INVALID_STATE
   * error "Cannot <action>: N session(s) are using <what>", and nothing is freed.
   */
  protected disposeUnlessUsed(action: string, what: string): void {
    if (this.#handle.disposed) return;
    const users = this.#handle.liveUsers;
    if (users > 0) {
      throw new KvfoldError("INVALID_STATE", `Cannot ${action}: ${users} session(s) are using ${what}`);
    }
    this.#handle.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.dispose();
    await this.#handle.settled();
  }
}

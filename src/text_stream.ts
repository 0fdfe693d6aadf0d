/**
 * Turning a stream of token ids into a stream of text: incremental detokenization that never cuts a
 * UTF-8 sequence or a merged space in half, and stop strings that never leak a partial match.
 *
 * @module
 */

/**
 * Emits the text each new token adds. Decodes a short window (`prefix..end`) rather than the whole
 * sequence, so cost stays flat; holds text back while it ends in an incomplete character (U+FFFD).
 *
 * @example
 * ```ts
 * import { IncrementalDecoder } from "./text_stream.ts";
 * const pieces = ["He", "llo"];
 * const dec = new IncrementalDecoder((ids) => ids.map((i) => pieces[i]).join(""));
 * console.log(dec.push(0) + dec.push(1)); // "Hello"
 * ```
 */
export class IncrementalDecoder {
  #decode: (ids: number[]) => string;
  #ids: number[] = [];
  #prefix = 0;
  #read = 0;

  constructor(decode: (ids: number[]) => string) {
    this.#decode = decode;
  }

  /** Adds one id; returns the text it completes (possibly ""). */
  push(id: number): string {
    this.#ids.push(id);
    const before = this.#decode(this.#ids.slice(this.#prefix, this.#read));
    const after = this.#decode(this.#ids.slice(this.#prefix));
    if (after.length > before.length && !after.endsWith("\uFFFD")) {
      const delta = after.slice(before.length);
      this.#prefix = this.#read;
      this.#read = this.#ids.length;
      return delta;
    }
    return "";
  }

  /** Whatever is still held back (e.g. an incomplete character at the end). */
  flush(): string {
    const before = this.#decode(this.#ids.slice(this.#prefix, this.#read));
    const after = this.#decode(this.#ids.slice(this.#prefix));
    this.#prefix = this.#read = this.#ids.length;
    return after.length > before.length ? after.slice(before.length) : "";
  }
}

/**
 * Cuts a text stream at the first of several stop strings. Text that might be the start of a stop
 * string is held back until it is known not to be one.
 *
 * @example
 * ```ts
 * import { StopStringFilter } from "./text_stream.ts";
 * const f = new StopStringFilter(["\nUser:"]);
 * let out = f.push("Hi there\nUs");
 * out += f.push("er: more");
 * console.log(out, f.stopped); // "Hi there" true
 * ```
 */
export class StopStringFilter {
  #stops: string[];
  #pending = "";
  /** Whether a stop string was found; later pushes return "". */
  stopped = false;
  /** The stop string that matched, if any. */
  matched?: string;

  constructor(stops: readonly string[]) {
    this.#stops = stops.filter((s) => s.length > 0);
  }

  /** Whether there is no stop string to look for. */
  get empty(): boolean {
    return this.#stops.length === 0;
  }

  /** Adds text; returns what is safe to emit. */
  push(text: string): string {
    if (this.stopped) return "";
    if (this.#stops.length === 0) return text;
    this.#pending += text;
    let cut = -1;
    for (const s of this.#stops) {
      const i = this.#pending.indexOf(s);
      if (i >= 0 && (cut < 0 || i < cut)) {
        cut = i;
        this.matched = s;
      }
    }
    if (cut >= 0) {
      this.stopped = true;
      const out = this.#pending.slice(0, cut);
      this.#pending = "";
      return out;
    }
    // Hold back the longest tail that is a proper prefix of some stop string.
    let hold = 0;
    for (const s of this.#stops) {
      for (let k = Math.min(s.length - 1, this.#pending.length); k > hold; k--) {
        if (this.#pending.endsWith(s.slice(0, k))) {
          hold = k;
          break;
        }
      }
    }
    const out = this.#pending.slice(0, this.#pending.length - hold);
    this.#pending = this.#pending.slice(this.#pending.length - hold);
    return out;
  }

  /** Emits the held-back tail at the end of the stream (it was not a stop string). */
  flush(): string {
    const out = this.stopped ? "" : this.#pending;
    this.#pending = "";
    return out;
  }
}

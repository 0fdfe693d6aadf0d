/**
 * Seeded mutations of the inputs kvfold reads: byte-level (flips, interesting integers, cuts,
 * inserts, repeats; biased towards headers, where one byte moves everything after it) and
 * JSON-level (wrong types, edge numbers, dropped and unknown keys). The same seed gives the same
 * mutation, so every failing case can be replayed alone.
 *
 * @module
 */

/** A small, fast, seeded PRNG (mulberry32). */
export class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    let t = (this.#s = (this.#s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  /** One element of `xs`. */
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
}

/** The seed of case `index` of target `target` in a campaign seeded with `seed`. */
export function caseSeed(seed: number, target: string, index: number): number {
  let h = 2166136261 ^ seed;
  for (const c of `${target}#${index}`) h = Math.imul(h ^ c.charCodeAt(0), 16777619);
  return h >>> 0;
}

// Integers that sit on the edges parsers get wrong: sign bits, 32-bit wrap, past 2^53.
const EDGE_U32 = [0, 1, 0x7f, 0x80, 0xff, 0x7fff, 0x8000, 0xffff, 0x7fffffff, 0x80000000, 0xffffffff];

/** A copy of `bytes` with 1 to 3 random byte-level mutations; `hot` bytes at the start are favoured. */
export function mutateBytes(rng: Rng, bytes: Uint8Array, hot = 0): Uint8Array {
  let b: Uint8Array = bytes.slice();
  const n = 1 + rng.int(3);
  for (let m = 0; m < n; m++) {
    const len = b.length;
    if (len === 0) return new Uint8Array([rng.int(256)]);
    // Half of the positions fall in the header region, when there is one.
    const pos = hot > 0 && rng.next() < 0.5 ? rng.int(Math.min(hot, len)) : rng.int(len);
    switch (rng.int(8)) {
      case 0:
        b[pos] ^= 1 << rng.int(8);
        break;
      case 1:
        b[pos] = rng.pick([0x00, 0xff, 0x7f, 0x80, 0x20, 0x22, 0x30, 0x39, 0x5b, 0x7b]);
        break;
      case 2: {
        const v = rng.pick(EDGE_U32) + (rng.next() < 0.2 ? rng.int(3) - 1 : 0);
        const w = rng.pick([2, 4, 8]);
        for (let i = 0; i < w && pos + i < len; i++) b[pos + i] = i < 4 ? (v >>> (8 * i)) & 0xff : 0;
        break;
      }
      case 3: // truncate (rarely: a cut file is refused at once, the other cases reach deeper)
        if (rng.next() < 0.3) b = b.slice(0, pos);
        else b[pos] ^= 1 << rng.int(8);
        break;
      case 4: { // append or insert random bytes
        const k = 1 + rng.int(16);
        const ins = new Uint8Array(k).map(() => rng.int(256));
        const out = new Uint8Array(len + k);
        out.set(b.subarray(0, pos));
        out.set(ins, pos);
        out.set(b.subarray(pos), pos + k);
        b = out;
        break;
      }
      case 5: { // delete a range
        const k = 1 + rng.int(Math.min(64, len - pos));
        const out = new Uint8Array(len - k);
        out.set(b.subarray(0, pos));
        out.set(b.subarray(pos + k), pos);
        b = out;
        break;
      }
      case 6: { // repeat a range
        const k = 1 + rng.int(Math.min(64, len - pos));
        const out = new Uint8Array(len + k);
        out.set(b.subarray(0, pos + k));
        out.set(b.subarray(pos, pos + k), pos + k);
        out.set(b.subarray(pos + k), pos + 2 * k);
        b = out;
        break;
      }
      default: // a random run of bytes overwritten
        for (let i = 0, k = 1 + rng.int(8); i < k && pos + i < len; i++) b[pos + i] = rng.int(256);
    }
  }
  return b;
}

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

const EDGE_NUMBERS = [
  0,
  -1,
  1,
  2 ** 31,
  2 ** 31 - 1,
  2 ** 32 + 5,
  2 ** 53 + 2,
  -(2 ** 31),
  1e308,
  -1e308,
  0.5,
  1e-320,
];

function randomValue(rng: Rng): Json {
  switch (rng.int(9)) {
    case 0:
      return null;
    case 1:
      return rng.next() < 0.5;
    case 2:
      return rng.pick(EDGE_NUMBERS);
    case 3:
      return "";
    case 4:
      return rng.pick([
        "\u0000",
        "x".repeat(1 + rng.int(300)),
        "llama",
        "bf16",
        "../../etc/passwd",
        "\ud800",
      ]);
    case 5:
      return [];
    case 6:
      return {};
    case 7:
      return [rng.pick(EDGE_NUMBERS), "a"];
    default:
      return rng.int(1000);
  }
}

/** Every (container, key) pair of a JSON tree, so one can be picked uniformly. */
function slots(root: Json, out: [Json[] | Record<string, Json>, string | number][] = []) {
  if (Array.isArray(root)) {
    root.forEach((v, i) => {
      out.push([root, i]);
      slots(v, out);
    });
  } else if (root !== null && typeof root === "object") {
    for (const k of Object.keys(root)) {
      out.push([root, k]);
      slots(root[k], out);
    }
  }
  return out;
}

/**
 * A mutated JSON text: 1 to 3 edits of the parsed tree (a value replaced by a wrong type or an edge
 * number, a key dropped or duplicated under a new name, an array element dropped), or, one time in
 * six, byte-level mutations of the text itself.
 */
export function mutateJson(rng: Rng, text: string): string {
  if (rng.next() < 1 / 6) return new TextDecoder().decode(mutateBytes(rng, new TextEncoder().encode(text)));
  const root = JSON.parse(text) as Json;
  const n = 1 + rng.int(3);
  for (let m = 0; m < n; m++) {
    const all = slots(root);
    if (all.length === 0) break;
    const [holder, key] = rng.pick(all);
    const op = rng.int(6);
    if (Array.isArray(holder)) {
      const i = key as number;
      if (op === 0) holder.splice(i, 1);
      else if (op === 1) holder.push(holder[i]);
      else holder[i] = randomValue(rng);
    } else {
      const k = key as string;
      const obj = holder as Record<string, Json>;
      if (op === 0) delete obj[k];
      else if (op === 1) obj[`${k}_x`] = obj[k];
      else if (op === 2 && typeof obj[k] === "number") {
        obj[k] = (obj[k] as number) * rng.pick([-1, 2, 1000, 0]);
      } else obj[k] = randomValue(rng);
    }
  }
  return JSON.stringify(root, null, rng.next() < 0.5 ? 2 : undefined);
}

/**
 * A mutated safetensors file: the JSON header edited and re-framed with a correct length (so the
 * edit reaches the shape, dtype and offset checks), the length field nudged (one byte short shifts
 * every tensor), or byte-level mutations favouring the header.
 */
export function mutateSafetensors(rng: Rng, bytes: Uint8Array): Uint8Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = Number(view.getBigUint64(0, true));
  const r = rng.next();
  if (r < 0.4) {
    const header = new TextEncoder().encode(
      mutateJson(rng, new TextDecoder().decode(bytes.subarray(8, 8 + n))),
    );
    const out = new Uint8Array(8 + header.length + bytes.length - 8 - n);
    new DataView(out.buffer).setBigUint64(0, BigInt(header.length), true);
    out.set(header, 8);
    out.set(bytes.subarray(8 + n), 8 + header.length);
    return out;
  }
  if (r < 0.55) {
    const out = bytes.slice();
    new DataView(out.buffer).setBigUint64(0, BigInt(Math.max(0, n + rng.pick([-8, -2, -1, 1, 2, 8]))), true);
    return out;
  }
  return mutateBytes(rng, bytes, 8 + n);
}

/**
 * Which tokens a grammar state allows. The vocabulary's byte strings form a trie; walking it
 * against the matcher advances the state one byte per edge and prunes a whole subtree at the first
 * byte the grammar refuses, so tokens that straddle grammar boundries (`",` `}]` ` "x`) are judged
 * byte by byte. A state's result is cached by its key: inside a long string or a repeated object
 * the walk happens once and later steps are a lookup.
 *
 * @module
 */

import { canEnd, isClosed, type MatchState, minCompletion, stateKey, stepState } from "./json_matcher.ts";

/** A vocabulary as a byte trie, in flat arrays. */
export class TokenTrie {
  /** Vocabulary size (logits length): masks have this many bits. */
  readonly size: number;
  /** Per node: first edge index and edge count; per edge: byte and child; per node: tokens ending there. */
  readonly edgeStart: Int32Array;
  readonly edgeCount: Int32Array;
  readonly edgeByte: Uint8Array;
  readonly edgeChild: Int32Array;
  readonly endsAt: (number[] | undefined)[];
  /** The bytes of each id (null: none). */
  readonly bytes: readonly (Uint8Array | null)[];

  constructor(bytes: readonly (Uint8Array | null)[], size: number) {
    this.size = size;
    this.bytes = bytes;
    type Node = { kids: Map<number, Node>; ids?: number[]; index: number };
    const root: Node = { kids: new Map(), index: 0 };
    let nodes = 1;
    for (let id = 0; id < Math.min(size, bytes.length); id++) {
      const b = bytes[id];
      if (!b) continue;
      let n = root;
      for (const byte of b) {
        let next = n.kids.get(byte);
        if (!next) n.kids.set(byte, next = { kids: new Map(), index: nodes++ });
        n = next;
      }
      (n.ids ??= []).push(id);
    }
    this.edgeStart = new Int32Array(nodes);
    this.edgeCount = new Int32Array(nodes);
    this.edgeByte = new Uint8Array(nodes - 1);
    this.edgeChild = new Int32Array(nodes - 1);
    this.endsAt = new Array(nodes);
    let e = 0;
    const queue: Node[] = [root];
    for (let q = 0; q < queue.length; q++) {
      const n = queue[q];
      this.endsAt[n.index] = n.ids;
      this.edgeStart[n.index] = e;
      this.edgeCount[n.index] = n.kids.size;
      for (const [byte, kid] of [...n.kids].sort((a, b) => a[0] - b[0])) {
        this.edgeByte[e] = byte;
        this.edgeChild[e++] = kid.index;
        queue.push(kid);
      }
    }
  }

  /** Trie nodes (the root included). */
  get nodes(): number {
    return this.edgeStart.length;
  }
}

/** What a state allows: token ids, the bytes each leaves to write, and the whole set as a bitmask. */
export interface StateMask {
  readonly ids: Int32Array;
  /** Fewest bytes that finish the value after each id (clamped to 65535). */
  readonly costs: Uint16Array;
  readonly maxCost: number;
  /** Bit i of byte i >> 3 set: id i allowed (end tokens not included). */
  readonly bits: Uint8Array;
  /** The value is complete here (an end token may come). */
  readonly canEnd: boolean;
  /** Nothing more may be written. */
  readonly closed: boolean;
  /** Trie nodes visited to compute it. */
  readonly visited: number;
}

/** Walks the trie from `state`: every token all of whose bytes the grammar accepts. */
export function computeMask(trie: TokenTrie, state: MatchState): StateMask {
  const ids: number[] = [];
  const costs: number[] = [];
  let visited = 0;
  const nodeStack: number[] = [0];
  const stateStack: MatchState[] = [state];
  while (nodeStack.length > 0) {
    const node = nodeStack.pop()!;
    const st = stateStack.pop()!;
    visited++;
    const from = trie.edgeStart[node], to = from + trie.edgeCount[node];
    for (let e = from; e < to; e++) {
      const next = stepState(st, trie.edgeByte[e]);
      if (next.length === 0) continue;
      const child = trie.edgeChild[e];
      const ending = trie.endsAt[child];
      if (ending) {
        const cost = Math.min(65535, minCompletion(next));
        for (const id of ending) {
          ids.push(id);
          costs.push(cost);
        }
      }
      nodeStack.push(child);
      stateStack.push(next);
    }
  }
  const bits = new Uint8Array((trie.size + 7) >> 3);
  let maxCost = 0;
  for (let k = 0; k < ids.length; k++) {
    bits[ids[k] >> 3] |= 1 << (ids[k] & 7);
    if (costs[k] > maxCost) maxCost = costs[k];
  }
  return {
    ids: Int32Array.from(ids),
    costs: Uint16Array.from(costs),
    maxCost,
    bits,
    canEnd: canEnd(state),
    closed: isClosed(state),
    visited,
  };
}

/** A bounded cache of state masks, least recently used dropped first. */
export class MaskCache {
  readonly #trie: TokenTrie;
  readonly #capacity: number;
  readonly #entries = new Map<string, StateMask>();
  /** Lookups answered from the cache, and walks done. */
  hits = 0;
  misses = 0;

  constructor(trie: TokenTrie, capacity = 128) {
    this.#trie = trie;
    this.#capacity = capacity;
  }

  /** The mask of `state` (from the cache when its key was seen). */
  get(state: MatchState): StateMask {
    const key = stateKey(state);
    const hit = this.#entries.get(key);
    if (hit) {
      this.hits++;
      this.#entries.delete(key);
      this.#entries.set(key, hit);
      return hit;
    }
    this.misses++;
    const mask = computeMask(this.#trie, state);
    this.#entries.set(key, mask);
    if (this.#entries.size > this.#capacity) this.#entries.delete(this.#entries.keys().next().value!);
    return mask;
  }
}

/**
 * The bitmask to sample from: the state's tokens that leave at most `budget` bytes to write (so
 * that one byte per token still closes the value), plus `endIds` when the value may end here.
 * When no token fits the budget, the ones that leave the fewest bytes.
 */
export function budgetBits(
  mask: StateMask,
  budget: number,
  endIds: readonly number[],
  size: number,
): Uint8Array {
  let bits: Uint8Array;
  if (mask.maxCost <= budget) bits = mask.bits.slice();
  else {
    bits = new Uint8Array((size + 7) >> 3);
    let floor = budget;
    let any = false;
    for (let k = 0; k < mask.ids.length; k++) if (mask.costs[k] <= floor) any = true;
    if (!any && !(mask.canEnd && endIds.length > 0)) {
      floor = Infinity;
      for (let k = 0; k < mask.ids.length; k++) floor = Math.min(floor, mask.costs[k]);
    }
    for (let k = 0; k < mask.ids.length; k++) {
      if (mask.costs[k] <= floor) bits[mask.ids[k] >> 3] |= 1 << (mask.ids[k] & 7);
    }
  }
  if (mask.canEnd) { for (const id of endIds) if (id >= 0 && id < size) bits[id >> 3] |= 1 << (id & 7); }
  return bits;
}

/**
 * The demo corpus's entities: invented names built from syllables with a fixed seed, so every
 * corpus seed shares one vocabulary (a held-out corpus needs no word the model has not seen).
 *
 * @module
 */

import { seededUint32 } from "../src/_seeded_random.ts";
import { DEMO_GROUPS, groupTemplates, SLOT_VALUES, templateWords } from "./groups.ts";

/** How many names the pool holds: a corpus gives each name to at most one document per group. */
export const ENTITY_POOL_SIZE = 768;

// The names never change with the corpus seed: this seed is part of the vocabulary.
const NAME_SEED = 18;
const ONSETS = [
  "b",
  "d",
  "f",
  "g",
  "h",
  "k",
  "l",
  "m",
  "n",
  "p",
  "r",
  "s",
  "t",
  "v",
  "z",
  "br",
  "dr",
  "kr",
  "tr",
];
const VOWELS = ["a", "e", "i", "o", "u"];
const CODAS = ["n", "r", "l", "s", "k"];

/** Every word of the templates and value lists, which a name must not be. */
function otherWords(): Set<string> {
  const words = new Set<string>();
  for (const g of DEMO_GROUPS) {
    for (const t of groupTemplates(g)) for (const w of templateWords(t)) words.add(w);
  }
  for (const g of DEMO_GROUPS) {
    for (const a of g.attributes) for (const v of a.values) for (const w of v.split(" ")) words.add(w);
  }
  for (const list of Object.values(SLOT_VALUES)) {
    for (const v of list) for (const w of v.split(" ")) words.add(w);
  }
  return words;
}

let pool: readonly string[] | undefined;

/**
 * The entity names, {@link ENTITY_POOL_SIZE} of them, each one lower-case word of two or three
 * syllables ("varno", "telik"), none of them a word of the templates or values.
 *
 * @example
 * ```ts
 * import { entityNames } from "./names.ts";
 * console.log(entityNames().length); // 768
 * ```
 */
export function entityNames(): readonly string[] {
  if (pool) return pool;
  const next = seededUint32(NAME_SEED, "demo.names");
  const pick = <T>(xs: readonly T[]) => xs[Math.floor((next() / 0x100000000) * xs.length)];
  const taken = otherWords();
  const names: string[] = [];
  while (names.length < ENTITY_POOL_SIZE) {
    const syllables = next() % 10 < 7 ? 2 : 3;
    let name = "";
    for (let i = 0; i < syllables; i++) name += pick(ONSETS) + pick(VOWELS);
    if (next() % 2 === 0) name += pick(CODAS);
    if (name.length < 4 || taken.has(name)) continue;
    taken.add(name);
    names.push(name);
  }
  pool = Object.freeze(names);
  return pool;
}

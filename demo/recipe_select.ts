/**
 * Choosing among several starts of the demo recipe. Two runs of the same recipe with other seeds part
 * early (README "Training the demo model": by compressor step 2,000 one run answers held-out questions
 * better than the other and the gap only widens), so the recipe can start K runs, score each part-way on
 * the validation seed, and go on with the best. The check seed never takes part in the choice.
 *
 * @module
 */

import { join } from "node:path";
import type { Kvfold } from "../src/engine.ts";
import { evaluateDemo } from "./evaluate.ts";

/** Held-out seed that chooses among starts, snapshots and runs, and its documents. */
export const VALIDATION_SEED = 5150;
export const VALIDATION_DOCUMENTS = 8;
/** Seeds of a recipe's starts lie this far apart (every document stream of a run has an offset below it). */
export const START_SEED_STRIDE = 1000;

/**
 * The seed of start `k` of a run seeded `seed` (start 0 is the run's own seed).
 *
 * @example
 * ```ts
 * import { startSeed } from "./recipe_select.ts";
 * console.log(startSeed(20261204, 2)); // 20263204
 * ```
 */
export function startSeed(seed: number, k: number): number {
  return seed + k * START_SEED_STRIDE;
}

/** What `starts.json` in a run's folder records: each start's validation score, then the choice. */
export interface StartsRecord {
  /** The budget the starts were trained with (JSON). */
  budget: string;
  /** Exact match of LLoCO (retrieved) on the validation seed, per start, as scored so far. */
  scores: number[];
  /** The chosen start, once every start is scored. */
  chosen?: number;
}

/** Reads `dir/starts.json`, or undefined when there is none. */
export async function readStartsRecord(dir: string): Promise<StartsRecord | undefined> {
  try {
    return JSON.parse(await Deno.readTextFile(join(dir, "starts.json")));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
}

/** Writes `dir/starts.json`. */
export async function writeStartsRecord(dir: string, record: StartsRecord): Promise<void> {
  await Deno.writeTextFile(join(dir, "starts.json"), JSON.stringify(record, null, 2) + "\n");
}

/** The best start: highest score, the lowest index among equals. */
export function bestStart(scores: readonly number[]): number {
  let best = 0;
  for (let k = 1; k < scores.length; k++) if (scores[k] > scores[best]) best = k;
  return best;
}

/**
 * Exact match of LLoCO (BM25, k = 1) on the validation seed's documents for the model and group
 * adapters in `trainedDir` (`model/`, `adapters/<group>/`).
 */
export async function validationScore(kv: Kvfold, trainedDir: string, signal?: AbortSignal): Promise<number> {
  const e = await evaluateDemo(kv, {
    trainedDir,
    seed: VALIDATION_SEED,
    documents: VALIDATION_DOCUMENTS,
    conditions: ["lloco"],
    signal,
  });
  return e.conditions[0].exactMatch;
}

/**
 * Which adapters decode an answer over retrieved chunks: the rule that turns the chunks' adapter
 * groups and retrieval scores into a weighted composition of LoRA adapters (DESIGN.md, "LoRA").
 * LLoCO trains one LoRA per document group; a question whose chunks come from several groups is
 * decoded with all their adapters at once, each weighted by how much of the retrieval it carried.
 *
 * @module
 */

import type { Adapter, AdapterTerm } from "./adapter.ts";
import { MAX_COMPOSED_ADAPTERS } from "./adapter.ts";
import type { Model } from "./model.ts";

/**
 * How an answer over chunks of several adapter groups picks its adapters:
 * - `"compose"` (default): every group's adapter, weighted by the group's share of the retrieval
 *   (see {@link adaptersForChunks});
 * - `"best"`: the adapter of the group of the best-scoring chunk alone, at weight 1;
 * - `"none"`: the base model.
 * With chunks of one group, `"compose"` and `"best"` agree: that group's adapter at weight 1.
 */
export type AdapterMode = "compose" | "best" | "none";

/** The adapter modes, for option parsers. */
export const ADAPTER_MODES: readonly AdapterMode[] = ["compose", "best", "none"];

/** What {@link adaptersForChunks} reads of a chunk: its group and its retrieval score. */
export interface ChunkGroupScore {
  /** The document's adapter group; null, absent or "" has no say. */
  group?: string | null;
  /** Retrieval score, higher is better (BM25 from the store); absent or 0 when unknown. */
  score?: number;
}

/** What chooses the adapters: an explicit choice, or the mode applied to the chunks. */
export interface AdapterCompositionChoice {
  /** This composition, as given (wins over everything else). */
  adapters?: readonly AdapterTerm[];
  /** This adapter alone at weight 1 (`null`: the base model). */
  adapter?: Adapter | string | null;
  /** Decode as this group alone, whatever the chunks' groups (`null`: as chunks without a group). */
  group?: string | null;
  /** How chunks of several groups choose; default `"compose"`. */
  adapterMode?: AdapterMode;
}

/**
 * The adapters an answer over `chunks` decodes with, as composition terms (empty: the base model).
 * The first that applies:
 *
 * 1. `choice.adapters`: that composition. 2. `choice.adapter`: that adapter at weight 1 (`null`:
 *    none). 3. `choice.group`: that group's adapter at weight 1 (none when no adapter has its name).
 * 4. `adapterMode: "none"`: none.
 * 5. Otherwise the chunks decide. A group's adapter is the one registered under the group's name in
 *    `model.adapters`; chunks without a group have no say; no grouped chunk: none.
 *    - `"best"`: the group of the grouped chunk with the highest known score (the first such chunk
 *      on ties, or the first grouped chunk when no score is known), its adapter at weight 1.
 *    - `"compose"` (default): each group's weight is its share of the grouped chunks' mass,
 *      `w_g = m_g / Σ m`, where a group's mass `m_g` is the sum of its chunks' retrieval scores
 *      when every grouped chunk has a finite positive score, else its chunk count. The weights sum
 *      to 1 over all groups; a group without an adapter adds no term, so its share stays with the
 *      base model (its vectors were compressed for no LoRA). One term per group with an adapter, in
 *      the order the groups first appear; past {@link MAX_COMPOSED_ADAPTERS} groups with adapters,
 *      the heaviest are kept (the rest add nothing). Chunks of one group give that group's adapter
 *      at weight 1, exactly today's single-adapter answer.
 *
 * @example
 * ```ts ignore
 * await model.adapters.load("./loras/finance", { name: "finance" });
 * await model.adapters.load("./loras/legal", { name: "legal" });
 * const chunks = [{ group: "finance", score: 3 }, { group: "legal", score: 1 }];
 * console.log(adaptersForChunks(model, chunks)); // [{ adapter: "finance", weight: 0.75 }, { adapter: "legal", weight: 0.25 }]
 * console.log(adaptersForChunks(model, chunks, { adapterMode: "best" })); // [{ adapter: "finance", weight: 1 }]
 * ```
 */
export function adaptersForChunks(
  model: Model,
  chunks: readonly ChunkGroupScore[],
  choice: AdapterCompositionChoice = {},
): AdapterTerm[] {
  const mode = choice.adapterMode ?? "compose";
  if (!ADAPTER_MODES.includes(mode)) {
    throw new RangeError(
      `Cannot choose adapters: adapterMode ${JSON.stringify(mode)} is not compose, best or none`,
    );
  }
  if (choice.adapters !== undefined) return [...choice.adapters];
  if (choice.adapter !== undefined) {
    return choice.adapter === null ? [] : [{ adapter: choice.adapter, weight: 1 }];
  }
  const registered = new Set(model.adapters.list().map((e) => e.name));
  const alone = (group: string | null) =>
    group !== null && registered.has(group) ? [{ adapter: group, weight: 1 }] : [];
  if (choice.group !== undefined) return alone(choice.group);
  if (mode === "none") return [];
  const grouped = chunks.filter((c): c is ChunkGroupScore & { group: string } =>
    typeof c.group === "string" && c.group !== ""
  );
  if (grouped.length === 0) return [];
  const known = (c: ChunkGroupScore) => typeof c.score === "number" && Number.isFinite(c.score);
  if (mode === "best") {
    let best = grouped[0];
    for (const c of grouped) if (known(c) && (!known(best) || c.score! > best.score!)) best = c;
    return alone(best.group);
  }
  const scored = grouped.every((c) => known(c) && c.score! > 0);
  const mass = new Map<string, number>(); // in first-appearance order
  for (const c of grouped) mass.set(c.group, (mass.get(c.group) ?? 0) + (scored ? c.score! : 1));
  const total = [...mass.values()].reduce((a, b) => a + b, 0);
  let terms = [...mass].filter(([g]) => registered.has(g)).map(([g, m]) => ({
    adapter: g,
    weight: m / total,
  }));
  if (terms.length > MAX_COMPOSED_ADAPTERS) {
    const kept = new Set(
      [...terms].sort((a, b) => b.weight - a.weight).slice(0, MAX_COMPOSED_ADAPTERS).map((t) => t.adapter),
    );
    terms = terms.filter((t) => kept.has(t.adapter));
  }
  // One group's whole mass is exactly weight 1 (m / m), the single-adapter answer.
  return terms;
}

/** A composition as one line: "finance×0.75 + legal×0.25", "finance" (weight 1), "none" (empty). */
export function describeAdapters(terms: readonly { adapter: Adapter | string; weight: number }[]): string {
  if (terms.length === 0) return "none";
  return terms.map((t) => {
    const name = typeof t.adapter === "string" ? t.adapter : t.adapter.name;
    return t.weight === 1 ? name : `${name}×${Number(t.weight.toPrecision(4))}`;
  }).join(" + ");
}

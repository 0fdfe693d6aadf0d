/**
 * Scoring of the demo's answers: SQuAD-style exact match (lower case, punctuation and articles
 * dropped, whitespace collapsed), so "The silk." and "silk" agree and "forty two" does not match
 * "forty".
 *
 * @module
 */

/**
 * `text` normalised for exact match: lower case, punctuation replaced by spaces, the articles a,
 * an and the removed, whitespace collapsed and trimmed.
 *
 * @example
 * ```ts
 * import { normalizeAnswer } from "./answers.ts";
 * console.log(normalizeAnswer("  The Red   Lion. ")); // "red lion"
 * ```
 */
export function normalizeAnswer(text: string): string {
  return text.toLowerCase()
    .replace(/[\p{P}\p{S}]/gu, " ")
    .split(/\s+/)
    .filter((w) => w !== "" && w !== "a" && w !== "an" && w !== "the")
    .join(" ");
}

/**
 * Whether `prediction` is `answer` once both are normalised by {@link normalizeAnswer}.
 *
 * @example
 * ```ts
 * import { exactMatch } from "./answers.ts";
 * console.log(exactMatch("Forty two.", "forty two")); // true
 * console.log(exactMatch("forty", "forty two")); // false
 * ```
 */
export function exactMatch(prediction: string, answer: string): boolean {
  return normalizeAnswer(prediction) === normalizeAnswer(answer);
}

/**
 * How many of `parts` the prediction states: each part counts when its normalised words appear in the
 * normalised prediction as a run of whole words (so "seventy" is not found in "seventy six"). For a
 * two-part question ("X and Y") it tells a model that gives one of the two values from one that gives
 * neither, where exact match scores both 0.
 *
 * @example
 * ```ts
 * import { partsAnswered } from "./answers.ts";
 * console.log(partsAnswered("quillon", ["ninety", "quillon"])); // 1
 * console.log(partsAnswered("seventy six", ["wax", "seventy"])); // 0
 * ```
 */
export function partsAnswered(prediction: string, parts: readonly string[]): number {
  const said = ` ${normalizeAnswer(prediction)} `;
  return parts.filter((p) => {
    const words = normalizeAnswer(p);
    return words !== "" && said.includes(` ${words} `);
  }).length;
}

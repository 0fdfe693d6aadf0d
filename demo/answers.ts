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

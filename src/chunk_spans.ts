/**
 * Where a document is cut into store chunks: every `chunkTokens` tokens, or at a sentence end near
 * that length, so the words of one sentence (a fact's owner and its value) land in one chunk. One
 * rule for every path that stores chunks (`compressIntoStore`, the work queue's workers, the LangChain
 * and LlamaIndex compressors), so a stored document's chunk texts can be recomputed and compared.
 *
 * @module
 */

import type { TextTokenizer } from "./tokenizer.ts";

/**
 * Where chunks end: `"tokens"` every `chunkTokens` tokens; `"sentence"` after the last token that
 * ends a sentence in the chunk's second half (a chunk without one there ends at `chunkTokens`).
 */
export type ChunkBreak = "tokens" | "sentence";

/** The chunk break names, for messages and option parsing. */
export const CHUNK_BREAKS: readonly ChunkBreak[] = ["tokens", "sentence"];

/** How {@link chunkSpans} cuts. */
export interface ChunkSpanOptions {
  /** Tokens per chunk at most. Default 1536 (LLoCO's chunks). */
  chunkTokens?: number;
  /** Where chunks end. Default `"tokens"`. */
  breakAt?: ChunkBreak;
}

/**
 * What is wrong with chunk options, as the end of a "Cannot X: ..." message, or undefined when
 * nothing is: `chunkTokens` must be a positive safe integer, `breakAt` one of {@link CHUNK_BREAKS}.
 * One check for every caller that refuses them early (a compressor's constructor) or late.
 *
 * @example
 * ```ts
 * import { chunkOptionsProblem } from "./chunk_spans.ts";
 * chunkOptionsProblem({ chunkTokens: 0 }); // "chunkTokens 0 is not a positive integer"
 * chunkOptionsProblem({ chunkTokens: 256, breakAt: "sentence" }); // undefined
 * ```
 */
export function chunkOptionsProblem(options: ChunkSpanOptions): string | undefined {
  const { chunkTokens = 1536, breakAt = "tokens" } = options;
  if (!Number.isSafeInteger(chunkTokens) || chunkTokens < 1) {
    return `chunkTokens ${chunkTokens} is not a positive integer`;
  }
  if (!CHUNK_BREAKS.includes(breakAt)) return `breakAt "${breakAt}" is not one of ${CHUNK_BREAKS.join(", ")}`;
  return undefined;
}

/** A token that ends a sentence: its text ends in `.`, `!` or `?` (closing quotes aside) or a newline. */
const SENTENCE_END = /([.!?]["'”’)\]]*|\n)\s*$/;

/**
 * A predicate for tokens that end a sentence, from each token's own text (cached per id).
 *
 * @example
 * ```ts ignore
 * const ends = sentenceEnds(model.tokenizer);
 * ends(model.tokenizer.encode(".")[0]); // true
 * ```
 */
export function sentenceEnds(tokenizer: Pick<TextTokenizer, "decode">): (id: number) => boolean {
  const known = new Map<number, boolean>();
  return (id) => {
    let v = known.get(id);
    if (v === undefined) {
      v = SENTENCE_END.test(tokenizer.decode([id], { skipSpecialTokens: false }));
      known.set(id, v);
    }
    return v;
  };
}

/**
 * The `[start, end)` token spans of a document's chunks, in order, covering all `ids`. With
 * `breakAt: "sentence"`, `endsSentence` says which tokens end one ({@link sentenceEnds}).
 *
 * @example
 * ```ts
 * import { chunkSpans } from "./chunk_spans.ts";
 * chunkSpans(10, { chunkTokens: 4 }); // [[0, 4], [4, 8], [8, 10]]
 * const dots = [0, 0, 1, 0, 0, 1, 0, 0, 0]; // 1: a token that ends a sentence
 * chunkSpans(9, { chunkTokens: 5, breakAt: "sentence" }, (i) => dots[i] === 1); // [[0, 3], [3, 6], [6, 9]]
 * ```
 */
export function chunkSpans(
  length: number,
  options: ChunkSpanOptions = {},
  endsSentence?: (index: number) => boolean,
): [number, number][] {
  const problem = chunkOptionsProblem(options);
  if (problem) throw new RangeError(`Cannot cut chunks: ${problem}`);
  const { chunkTokens = 1536, breakAt = "tokens" } = options;
  if (breakAt === "sentence" && !endsSentence) {
    throw new RangeError("Cannot cut chunks at sentences: no sentence-end test was given");
  }
  const spans: [number, number][] = [];
  for (let start = 0; start < length;) {
    let end = Math.min(start + chunkTokens, length);
    if (breakAt === "sentence" && end < length) {
      // The last sentence end in the chunk's second half, so no chunk is less than half full.
      const floor = start + Math.ceil(chunkTokens / 2);
      for (let i = end - 1; i >= floor; i--) {
        if (endsSentence!(i)) {
          end = i + 1;
          break;
        }
      }
    }
    spans.push([start, end]);
    start = end;
  }
  return spans;
}

/**
 * The chunk spans of a document's token ids under `options`, testing sentence ends with
 * `tokenizer` (only when `breakAt` is `"sentence"`).
 *
 * @example
 * ```ts ignore
 * const ids = tok.encode(text);
 * for (const [a, b] of documentChunkSpans(ids, tok, { chunkTokens: 256, breakAt: "sentence" })) {
 *   console.log(tok.decode(ids.slice(a, b)));
 * }
 * ```
 */
export function documentChunkSpans(
  ids: readonly number[],
  tokenizer: Pick<TextTokenizer, "decode">,
  options: ChunkSpanOptions = {},
): [number, number][] {
  if (options.breakAt !== "sentence") return chunkSpans(ids.length, options);
  const ends = sentenceEnds(tokenizer);
  return chunkSpans(ids.length, options, (i) => ends(ids[i]));
}

/**
 * The texts of the chunks `compressIntoStore` stores for `text` under `options` (same cut, same
 * decode): what a stored document must match to be reused. Pass the text's ids instead of the text
 * when they are at hand, so it is not encoded twice.
 *
 * @example
 * ```ts ignore
 * const texts = chunkTexts(compressor.model.tokenizer, text, { chunkTokens: 256, breakAt: "sentence" });
 * ```
 */
export function chunkTexts(
  tokenizer: Pick<TextTokenizer, "encode" | "decode">,
  text: string | readonly number[],
  options: ChunkSpanOptions = {},
): string[] {
  const ids = typeof text === "string" ? tokenizer.encode(text) : text;
  return documentChunkSpans(ids, tokenizer, options).map(([a, b]) => tokenizer.decode(ids.slice(a, b)));
}

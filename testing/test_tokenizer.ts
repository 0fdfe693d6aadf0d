/**
 * The test models' tokenizer: a real byte-level BPE `tokenizer.json` (special tokens, the 256 byte
 * tokens, merges learned on a small embedded English corpus, then filler words up to the vocabulary
 * size) and its `tokenizer_config.json` with a Zephyr-style chat template.
 *
 * @module
 */

import { specialAddedTokens } from "../src/formats/_tokenizer_json.ts";
import { KvfoldError } from "../src/errors.ts";

/** Plain English the BPE merges are learned from. */
const CORPUS = `
The river town woke slowly on the first cold morning of the autumn. Bakers opened their shutters,
children ran along the stone bridge, and the old ferryman counted the boats that had come in during
the night. Nobody in the town could remember a season when the water had been so high, but nobody
seemed worried either. They had seen floods before, and they knew that the river always went back
to where it belonged.

A library is a quiet machine for remembering. Every book on its shelves was written by someone who
wanted a thought to outlive the moment it was born. When you open a book, that moment comes back,
and for a while the writer is sitting beside you, explaining what they saw and why it mattered to
them. Good questions are the keys to that machine; a reader who asks better questions finds better
answers in the same pages.

Computers read text by splitting it into small pieces called tokens. A token can be a whole word,
part of a word, a single letter, or even one byte of a character that has no shorter form. The model
never sees letters at all: it sees numbers, one for each token, and it learns which numbers tend to
follow which others. From those patterns it can continue a sentence, answer a question, or summarize
a long document into a few short lines.

The garden behind the school was planted by the students themselves. In the spring they sowed beans,
peas, carrots and sunflowers; in the summer they watered the rows every evening; and in the autumn
they weighed what they had grown and wrote the numbers on a board by the door. The best year gave
them forty kilograms of potatoes and more tomatoes than anyone could eat.

What is the capital of France? Paris is the capital of France, and it is also its largest city. What
is the tallest mountain in the world? Mount Everest, which stands on the border between Nepal and
China, is the tallest mountain above sea level. How many days are there in a week? There are seven
days in a week, and most people work on five of them.

The user asked the assistant a question, and the assistant answered it. The system told the
assistant to be helpful, honest and brief. When the answer was not in the documents, the assistant
said that it did not know, which is better than making something up. Short answers that are true are
worth more than long answers that are wrong.

Memory is expensive, so engineers compress what they keep. A long report can be folded into a handful
of vectors, stored on a disk, and unfolded again when someone asks about it. The trick is to keep
what matters for the questions people will ask, and to forget the rest without regret.
`;

const GPT2_PATTERN = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/** GPT-2's byte → printable character map, as the ByteLevel pre-tokenizer uses it. */
const BYTE_TO_CHAR: readonly string[] = (() => {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const map = new Array<string>(256);
  for (const b of bs) map[b] = String.fromCharCode(b);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (map[b] === undefined) map[b] = String.fromCharCode(256 + n++);
  }
  return map;
})();

/** The special tokens, in id order from 0. */
export const TEST_SPECIAL_TOKENS: readonly string[] = Object.freeze([
  "<unk>",
  "<s>",
  "</s>",
  "<|system|>",
  "<|user|>",
  "<|assistant|>",
]);

const CHAT_TEMPLATE = "{{ bos_token }}" +
  "{% for message in messages %}" +
  "{% if message['role'] == 'system' %}{{ '<|system|>\\n' + message['content'] + eos_token + '\\n' }}" +
  "{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + eos_token + '\\n' }}" +
  "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' + message['content'] + eos_token + '\\n' }}" +
  "{% else %}{{ raise_exception('Unknown role: ' + message['role']) }}{% endif %}" +
  "{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}";

let learnedMerges: [string, string][] | undefined;

/**
 * Learns BPE merges on the embedded corpus (deterministic: most frequent pair first, ties by the
 * pair's text), stopping when no pair occurs twice. Computed once per process.
 */
function corpusMerges(): [string, string][] {
  if (learnedMerges !== undefined) return learnedMerges;
  const enc = new TextEncoder();
  const counts = new Map<string, number>();
  for (const piece of CORPUS.match(GPT2_PATTERN) ?? []) {
    const w = Array.from(enc.encode(piece), (b) => BYTE_TO_CHAR[b]).join("");
    counts.set(w, (counts.get(w) ?? 0) + 1);
  }
  const words = [...counts].map(([w, c]) => ({ syms: Array.from(w), count: c }));
  const merges: [string, string][] = [];
  for (;;) {
    const pairs = new Map<string, number>();
    for (const { syms, count } of words) {
      for (let i = 0; i + 1 < syms.length; i++) {
        const key = syms[i] + " " + syms[i + 1];
        pairs.set(key, (pairs.get(key) ?? 0) + count);
      }
    }
    let best = "";
    let bestCount = 1;
    for (const [key, c] of pairs) {
      if (c > bestCount || (c === bestCount && c > 1 && key < best)) {
        best = key;
        bestCount = c;
      }
    }
    if (bestCount < 2) break;
    const [a, b] = best.split(" ");
    merges.push([a, b]);
    for (const w of words) {
      const s = w.syms;
      const next: string[] = [];
      for (let i = 0; i < s.length; i++) {
        if (i + 1 < s.length && s[i] === a && s[i + 1] === b) {
          next.push(a + b);
          i++;
        } else next.push(s[i]);
      }
      w.syms = next;
    }
  }
  learnedMerges = merges;
  return merges;
}

const CONSONANTS = "bdfgklmnprstvz";
const VOWELS = "aeiou";

/** The k-th filler word: "Ġ" (a space) plus pronounceable syllables. */
function fillerWord(k: number): string {
  let s = "";
  let x = k;
  do {
    const syl = x % (CONSONANTS.length * VOWELS.length);
    s += CONSONANTS[Math.floor(syl / VOWELS.length)] + VOWELS[syl % VOWELS.length];
    x = Math.floor(x / (CONSONANTS.length * VOWELS.length));
  } while (x > 0);
  return BYTE_TO_CHAR[0x20] + s;
}

/**
 * Builds the tokenizer files of a test model: a byte-level BPE `tokenizer.json` of exactly
 * `vocabSize` tokens and its `tokenizer_config.json` (with a Zephyr-style `chat_template`).
 * `modelMaxLength` (default 2048) is written as `model_max_length`.
 *
 * @example
 * ```ts
 * import { makeTestTokenizer } from "./test_tokenizer.ts";
 * const { tokenizerJson } = makeTestTokenizer(512);
 * console.log((tokenizerJson.added_tokens as unknown[]).length); // 6
 * ```
 */
export function makeTestTokenizer(
  vocabSize: number,
  options: { modelMaxLength?: number } = {},
): { tokenizerJson: Record<string, unknown>; tokenizerConfig: Record<string, unknown> } {
  const base = TEST_SPECIAL_TOKENS.length + 256;
  if (!Number.isSafeInteger(vocabSize) || vocabSize < base) {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      `Cannot make test tokenizer: vocab_size ${vocabSize} is below ${base} (specials and 256 bytes)`,
    );
  }
  const vocab = new Map<string, number>();
  TEST_SPECIAL_TOKENS.forEach((t, i) => vocab.set(t, i));
  for (let b = 0; b < 256; b++) vocab.set(BYTE_TO_CHAR[b], TEST_SPECIAL_TOKENS.length + b);
  // Merges: learned pairs whose result is new take one id each; keep merges up to the budget of
  // 2000 merge tokens or what the vocabulary has room for, whichever is smaller.
  const budget = Math.min(2000, vocabSize - base);
  const merges: string[] = [];
  for (const [a, b] of corpusMerges()) {
    const t = a + b;
    if (!vocab.has(t)) {
      if (vocab.size - base >= budget) break;
      vocab.set(t, vocab.size);
    }
    merges.push(`${a} ${b}`);
  }
  for (let k = 0; vocab.size < vocabSize; k++) {
    const w = fillerWord(k);
    if (!vocab.has(w)) vocab.set(w, vocab.size);
  }
  const added = specialAddedTokens(TEST_SPECIAL_TOKENS);
  const tokenizerJson: Record<string, unknown> = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      pair: [
        { SpecialToken: { id: "<s>", type_id: 0 } },
        { Sequence: { id: "A", type_id: 0 } },
        { SpecialToken: { id: "<s>", type_id: 1 } },
        { Sequence: { id: "B", type_id: 1 } },
      ],
      special_tokens: { "<s>": { id: "<s>", ids: [1], tokens: ["<s>"] } },
    },
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab: Object.fromEntries(vocab),
      merges,
    },
  };
  const addedTokensDecoder: Record<string, unknown> = {};
  for (const { id, ...rest } of added) addedTokensDecoder[String(id)] = rest;
  const tokenizerConfig: Record<string, unknown> = {
    add_bos_token: true,
    add_eos_token: false,
    added_tokens_decoder: addedTokensDecoder,
    additional_special_tokens: ["<|system|>", "<|user|>", "<|assistant|>"],
    bos_token: "<s>",
    chat_template: CHAT_TEMPLATE,
    clean_up_tokenization_spaces: false,
    eos_token: "</s>",
    model_max_length: options.modelMaxLength ?? 2048,
    pad_token: null,
    tokenizer_class: "PreTrainedTokenizerFast",
    unk_token: "<unk>",
  };
  return { tokenizerJson, tokenizerConfig };
}

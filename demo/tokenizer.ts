/**
 * The demo model's tokenizer: one token per word of the demo corpus's closed vocabulary, as a
 * Hugging Face `tokenizer.json` that `@huggingface/tokenizers` (and so `TextTokenizer` and the
 * model folder loader) runs.
 *
 * The library has no WordLevel model, so it is a WordPiece model whose vocabulary holds every
 * whole word: a known word is one token. Text is lower-cased, split at word boundaries and
 * punctuation (`Whitespace`), and decoded by joining tokens with spaces and then removing the
 * space before `.`, `,` and `?` (`clean_up_tokenization_spaces`), which gives the corpus's text
 * back exactly. Single letters, digits and punctuation (and their `##` continuations) spell out a
 * word from outside the vocabulary, so what a user types never becomes `<unk>`.
 *
 * @module
 */

import { specialAddedTokens } from "../src/formats/_tokenizer_json.ts";
import { DEMO_GROUPS, groupTemplates, SLOT_VALUES, templateWords } from "./groups.ts";
import { entityNames } from "./names.ts";

/** The special tokens, at ids 0..3 in this order (Llama's `<unk>`, `<s>`, `</s>`, then padding). */
export const DEMO_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"] as const;
/** Id of `<s>`, which `encode` with special tokens prepends. */
export const DEMO_BOS_ID = 1;
/** Id of `</s>`, which ends an answer. */
export const DEMO_EOS_ID = 2;
/** Id of `<pad>`. */
export const DEMO_PAD_ID = 3;

const LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789";
const PUNCTUATION = ".,?!:;'\"()-/";

let vocabulary: readonly string[] | undefined;

/**
 * The demo tokenizer's tokens in id order: the special tokens, every word the corpus can write
 * (template words, values, entity names), then the spelling pieces for other words.
 *
 * @example
 * ```ts
 * import { demoVocabulary } from "./tokenizer.ts";
 * const v = demoVocabulary();
 * console.log(v[1], v.includes("silk")); // <s> true
 * ```
 */
export function demoVocabulary(): readonly string[] {
  if (vocabulary) return vocabulary;
  const seen = new Set<string>(DEMO_SPECIAL_TOKENS);
  const add = (w: string) => void seen.add(w);
  for (const g of DEMO_GROUPS) {
    for (const t of groupTemplates(g)) templateWords(t).forEach(add);
    for (const a of g.attributes) for (const v of a.values) v.split(" ").forEach(add);
  }
  for (const list of Object.values(SLOT_VALUES)) for (const v of list) v.split(" ").forEach(add);
  entityNames().forEach(add);
  for (const c of LETTERS + PUNCTUATION) add(c);
  for (const c of LETTERS + PUNCTUATION) add(`##${c}`);
  vocabulary = Object.freeze([...seen]);
  return vocabulary;
}

/**
 * Token ids of word-level tokens (a `DemoDocument`'s `tokens`) straight from the vocabulary, the
 * same ids the tokenizer gives their text; a word outside it is a RangeError.
 *
 * @example
 * ```ts
 * import { demoTokenIds } from "./tokenizer.ts";
 * console.log(demoTokenIds(["<s>", "</s>"])); // [1, 2]
 * ```
 */
export function demoTokenIds(tokens: readonly string[]): number[] {
  const ids = idsOf();
  return tokens.map((t) => {
    const id = ids.get(t);
    if (id === undefined) throw new RangeError(`Cannot map "${t}" to a demo token id: not in the vocabulary`);
    return id;
  });
}

let idMap: Map<string, number> | undefined;
function idsOf(): Map<string, number> {
  idMap ??= new Map(demoVocabulary().map((t, i) => [t, i]));
  return idMap;
}

/** The three tokenizer files of a Hugging Face model folder, as JSON objects. */
export interface DemoTokenizerFiles {
  /** `tokenizer.json`. */
  tokenizerJson: Record<string, unknown>;
  /** `tokenizer_config.json`. */
  tokenizerConfig: Record<string, unknown>;
  /** `special_tokens_map.json`. */
  specialTokensMap: Record<string, unknown>;
}

/**
 * The demo tokenizer's files; `modelMaxLength` (default 4096) is written as `model_max_length`.
 *
 * @example
 * ```ts
 * import { demoVocabulary, makeDemoTokenizer } from "./tokenizer.ts";
 * const { tokenizerJson } = makeDemoTokenizer();
 * const vocab = (tokenizerJson.model as { vocab: Record<string, number> }).vocab;
 * console.log(Object.keys(vocab).length === demoVocabulary().length); // true
 * ```
 */
export function makeDemoTokenizer(options: { modelMaxLength?: number } = {}): DemoTokenizerFiles {
  const vocab = Object.fromEntries(demoVocabulary().map((t, i) => [t, i]));
  const added = specialAddedTokens(DEMO_SPECIAL_TOKENS);
  const tokenizerJson: Record<string, unknown> = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: { type: "Lowercase" },
    pre_tokenizer: { type: "Whitespace" },
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      pair: [
        { SpecialToken: { id: "<s>", type_id: 0 } },
        { Sequence: { id: "A", type_id: 0 } },
        { SpecialToken: { id: "<s>", type_id: 1 } },
        { Sequence: { id: "B", type_id: 1 } },
      ],
      special_tokens: { "<s>": { id: "<s>", ids: [DEMO_BOS_ID], tokens: ["<s>"] } },
    },
    decoder: { type: "WordPiece", prefix: "##", cleanup: false },
    model: {
      type: "WordPiece",
      unk_token: "<unk>",
      continuing_subword_prefix: "##",
      max_input_chars_per_word: 100,
      vocab,
    },
  };
  const addedTokensDecoder: Record<string, unknown> = {};
  for (const { id, ...rest } of added) addedTokensDecoder[String(id)] = rest;
  const tokenizerConfig: Record<string, unknown> = {
    add_bos_token: true,
    add_eos_token: false,
    added_tokens_decoder: addedTokensDecoder,
    bos_token: "<s>",
    // Decoding joins tokens with spaces; this takes the space before . , ? away again.
    clean_up_tokenization_spaces: true,
    eos_token: "</s>",
    model_max_length: options.modelMaxLength ?? 4096,
    pad_token: "<pad>",
    tokenizer_class: "PreTrainedTokenizerFast",
    unk_token: "<unk>",
  };
  const specialTokensMap = { bos_token: "<s>", eos_token: "</s>", unk_token: "<unk>", pad_token: "<pad>" };
  return { tokenizerJson, tokenizerConfig, specialTokensMap };
}

/**
 * Writes `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` into `dir`
 * (which must exist) and returns their names.
 *
 * @example
 * ```ts
 * import { writeDemoTokenizer } from "./tokenizer.ts";
 * const dir = await Deno.makeTempDir();
 * console.log(await writeDemoTokenizer(dir)); // ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function writeDemoTokenizer(
  dir: string,
  options: { modelMaxLength?: number } = {},
): Promise<string[]> {
  const files = makeDemoTokenizer(options);
  const out: [string, Record<string, unknown>][] = [
    ["tokenizer.json", files.tokenizerJson],
    ["tokenizer_config.json", files.tokenizerConfig],
    ["special_tokens_map.json", files.specialTokensMap],
  ];
  for (const [name, json] of out) {
    await Deno.writeTextFile(`${dir}/${name}`, JSON.stringify(json, null, 2) + "\n");
  }
  return out.map(([name]) => name);
}

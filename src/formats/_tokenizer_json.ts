/**
 * Checks of a `tokenizer.json` before it reaches `@huggingface/tokenizers`, which accepts some
 * broken files silently (an empty vocab, an unknown model type it guesses around, ids that are
 * strings) and fails on others with its own internals ("x.split is not a function"); and the
 * `added_tokens` entries of the tokenizers kvfold writes itself (test models, the demo).
 *
 * @module
 */

import { KvfoldError } from "../errors.ts";

/**
 * The model types of Hugging Face tokenizers, all of which the library runs (WordLevel through its
 * inference from the vocab); a file without a type is inferred, as HF does.
 */
const MODEL_TYPES = ["BPE", "Unigram", "WordLevel", "WordPiece"];

type Json = Record<string, unknown>;

const isObject = (v: unknown): v is Json => typeof v === "object" && v !== null && !Array.isArray(v);
const isId = (v: unknown) => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;

/**
 * Throws a `KvfoldError` naming `path` when `json` is not a tokenizer the library can run: FORMAT
 * for a missing or mistyped part, UNSUPPORTED for a model type it does not implement. Returns the
 * largest token id it defines (vocab and added tokens), for the check against the model's vocabulary.
 */
export function checkTokenizerJson(json: Json, path: string): number {
  let maxId = -1;
  const fail = (why: string, code: "FORMAT" | "UNSUPPORTED" = "FORMAT") =>
    new KvfoldError(code, `Cannot load tokenizer: ${path}: ${why}`);
  const model = json.model;
  if (!isObject(model)) throw fail(`"model" is ${describe(model)}, not an object`);
  const type = model.type;
  if (type !== undefined && (typeof type !== "string" || !MODEL_TYPES.includes(type))) {
    throw fail(
      `model type ${JSON.stringify(type)} is not supported (${MODEL_TYPES.join(", ")})`,
      "UNSUPPORTED",
    );
  }
  const vocab = model.vocab;
  if (type === "Unigram" || (type === undefined && Array.isArray(vocab))) {
    if (!Array.isArray(vocab)) throw fail(`model.vocab is ${describe(vocab)}, not a list of [piece, score]`);
    if (vocab.length === 0) throw fail("model.vocab is empty");
    const bad = vocab.findIndex((e) =>
      !Array.isArray(e) || e.length !== 2 || typeof e[0] !== "string" || typeof e[1] !== "number"
    );
    if (bad >= 0) throw fail(`model.vocab entry ${bad} is not a [piece, score] pair`);
    maxId = vocab.length - 1;
  } else {
    if (!isObject(vocab)) throw fail(`model.vocab is ${describe(vocab)}, not an object of token ids`);
    const entries = Object.entries(vocab);
    if (entries.length === 0) throw fail("model.vocab is empty");
    const bad = entries.find(([, id]) => !isId(id));
    if (bad) throw fail(`model.vocab gives token ${JSON.stringify(bad[0])} the id ${describe(bad[1])}`);
    for (const [, id] of entries) maxId = Math.max(maxId, id as number);
  }
  if (type === "BPE" || (type === undefined && "merges" in model)) {
    const merges = model.merges ?? [];
    if (!Array.isArray(merges)) throw fail(`model.merges is ${describe(merges)}, not a list`);
    const bad = merges.findIndex((m) =>
      !(typeof m === "string" ||
        (Array.isArray(m) && m.length === 2 && typeof m[0] === "string" && typeof m[1] === "string"))
    );
    if (bad >= 0) {
      throw fail(`model.merges entry ${bad} is ${describe(merges[bad])}, not "a b" or ["a", "b"]`);
    }
  }
  const added = json.added_tokens ?? [];
  if (!Array.isArray(added)) throw fail(`added_tokens is ${describe(added)}, not a list`);
  const badAdded = added.findIndex((t) => !isObject(t) || !isId(t.id) || typeof t.content !== "string");
  if (badAdded >= 0) throw fail(`added_tokens entry ${badAdded} has no integer id and string content`);
  for (const t of added) maxId = Math.max(maxId, (t as { id: number }).id);
  for (const part of ["normalizer", "pre_tokenizer", "post_processor", "decoder"]) {
    const v = json[part];
    if (v === undefined || v === null) continue;
    if (!isObject(v) || typeof v.type !== "string") {
      throw fail(`${part} is ${describe(v)}, not an object with a type`);
    }
  }
  return maxId;
}

/** "a number (5)", "a string", "an array", ... for messages. */
export function describe(v: unknown): string {
  if (v === undefined) return "missing";
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  if (typeof v === "number" || typeof v === "boolean") {
    return `${typeof v === "number" ? "a number" : "a boolean"} (${v})`;
  }
  if (typeof v === "string") {
    return `a string (${JSON.stringify(v.length > 40 ? v.slice(0, 40) + "..." : v)})`;
  }
  return typeof v === "object" ? "an object" : typeof v;
}

/**
 * `added_tokens` entries for special tokens whose ids are their indices in `contents`, as Hugging
 * Face writes them (never split, stripped or normalised).
 */
export function specialAddedTokens(contents: readonly string[]): Json[] {
  return contents.map((content, id) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  }));
}

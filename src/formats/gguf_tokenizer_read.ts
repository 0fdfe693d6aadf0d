/**
 * A Hugging Face `tokenizer.json` (and the `tokenizer_config.json` fields kvfold reads) rebuilt from
 * the `tokenizer.ggml.*` metadata of a GGUF file, for byte-level BPE ("gpt2") tokenizers whose
 * pre-tokenizer llama.cpp names (GPT-2, Llama 3, Qwen2). The inverse of gguf_tokenizer.ts.
 *
 * @module
 */

import { KvfoldError } from "../errors.ts";
import type { GgufValue } from "./gguf_read.ts";

type Json = Record<string, unknown>;

const LLAMA3_SPLIT =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2_SPLIT =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

function preTokenizer(pre: string): Json | undefined {
  const split = (regex: string) => ({
    type: "Sequence",
    pretokenizers: [
      { type: "Split", pattern: { Regex: regex }, behavior: "Isolated", invert: false },
      { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false },
    ],
  });
  if (pre === "gpt-2") {
    return { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true };
  }
  if (pre === "llama-bpe" || pre === "llama3" || pre === "llama-v3") return split(LLAMA3_SPLIT);
  if (pre === "qwen2") return split(QWEN2_SPLIT);
  return undefined;
}

/**
 * The tokenizer files that the GGUF metadata `meta` (of the file `path`) describes. Errors:
 * `KvfoldError` FORMAT for missing or mistyped keys, UNSUPPORTED for a tokenizer model or
 * pre-tokenizer this cannot rebuild (the message says to put a tokenizer.json beside the file).
 *
 * @example
 * ```ts
 * import { tokenizerFromGguf } from "./gguf_tokenizer_read.ts";
 * const meta = new Map<string, any>([
 *   ["tokenizer.ggml.model", "gpt2"], ["tokenizer.ggml.pre", "gpt-2"],
 *   ["tokenizer.ggml.tokens", ["a", "b", "ab"]], ["tokenizer.ggml.token_type", [1, 1, 1]],
 *   ["tokenizer.ggml.merges", ["a b"]],
 * ]);
 * const { tokenizerJson } = tokenizerFromGguf(meta, "m.gguf");
 * console.log((tokenizerJson.model as { merges: string[] }).merges); // [ "a b" ]
 * ```
 */
export function tokenizerFromGguf(
  meta: ReadonlyMap<string, GgufValue>,
  path: string,
): { tokenizerJson: Json; tokenizerConfig: Json } {
  const fail = (why: string, code: "FORMAT" | "UNSUPPORTED" = "FORMAT") =>
    new KvfoldError(code, `Cannot load tokenizer: ${path}: ${why}`);
  const beside = "; put the model's tokenizer.json beside the file";
  const model = meta.get("tokenizer.ggml.model");
  if (model === undefined) throw fail(`the file has no tokenizer (tokenizer.ggml.model)${beside}`);
  if (model !== "gpt2") {
    throw fail(
      `tokenizer.ggml.model ${JSON.stringify(model)} is not rebuilt from GGUF (gpt2)${beside}`,
      "UNSUPPORTED",
    );
  }
  const preName = meta.get("tokenizer.ggml.pre") ?? "gpt-2";
  const pre = typeof preName === "string" ? preTokenizer(preName) : undefined;
  if (!pre) {
    throw fail(
      `pre-tokenizer ${JSON.stringify(preName)} is not rebuilt from GGUF (gpt-2, llama-bpe, qwen2)${beside}`,
      "UNSUPPORTED",
    );
  }
  const list = (key: string, kind: "string" | "number", optional = false): GgufValue[] => {
    const v = meta.get(key);
    if (v === undefined && optional) return [];
    if (!Array.isArray(v) || v.some((x) => typeof x !== kind)) {
      throw fail(`${key} is not an array of ${kind}s`);
    }
    return v;
  };
  const tokens = list("tokenizer.ggml.tokens", "string") as string[];
  if (tokens.length === 0) throw fail("tokenizer.ggml.tokens is empty");
  const types = list("tokenizer.ggml.token_type", "number", true) as number[];
  if (types.length !== 0 && types.length !== tokens.length) {
    throw fail(
      `tokenizer.ggml.token_type has ${types.length} entries, tokenizer.ggml.tokens ${tokens.length}`,
    );
  }
  const merges = list("tokenizer.ggml.merges", "string", true) as string[];
  const vocab: Record<string, number> = {};
  const added: Json[] = [];
  tokens.forEach((t, id) => {
    if (!Object.hasOwn(vocab, t)) vocab[t] = id;
    const type = types[id] ?? 1;
    // llama.cpp's CONTROL (3) tokens are HF's special added tokens, USER_DEFINED (4) its plain ones.
    if (type === 3 || type === 4) {
      added.push({
        id,
        content: t,
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: type === 4,
        special: type === 3,
      });
    }
  });
  const tokenOf = (key: string) => {
    const id = meta.get(key);
    if (id === undefined) return undefined;
    if (typeof id !== "number" || !Number.isInteger(id) || id < 0 || id >= tokens.length) {
      throw fail(`${key} ${String(id)} is not a token id below ${tokens.length}`);
    }
    return tokens[id];
  };
  const tokenizerJson: Json = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: pre,
    post_processor: null,
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
      vocab,
      merges,
    },
  };
  const tokenizerConfig: Json = {};
  const bos = tokenOf("tokenizer.ggml.bos_token_id");
  const eos = tokenOf("tokenizer.ggml.eos_token_id");
  if (bos !== undefined) tokenizerConfig.bos_token = bos;
  if (eos !== undefined) tokenizerConfig.eos_token = eos;
  const addBos = meta.get("tokenizer.ggml.add_bos_token") === true && bos !== undefined;
  const addEos = meta.get("tokenizer.ggml.add_eos_token") === true && eos !== undefined;
  tokenizerConfig.add_bos_token = addBos;
  tokenizerConfig.add_eos_token = addEos;
  if (addBos || addEos) {
    // Encoding with special tokens adds them, as the post-processor of Llama-style tokenizer.json does.
    const special = (t: string, typeId: number) => ({ SpecialToken: { id: t, type_id: typeId } });
    const around = (seq: string, typeId: number) => [
      ...(addBos ? [special(bos!, typeId)] : []),
      { Sequence: { id: seq, type_id: typeId } },
      ...(addEos ? [special(eos!, typeId)] : []),
    ];
    const specials: Json = {};
    for (
      const [t, key] of [[bos, "tokenizer.ggml.bos_token_id"], [eos, "tokenizer.ggml.eos_token_id"]] as const
    ) {
      if (t !== undefined) specials[t] = { id: t, ids: [meta.get(key)], tokens: [t] };
    }
    tokenizerJson.post_processor = {
      type: "TemplateProcessing",
      single: around("A", 0),
      pair: [...around("A", 0), ...around("B", 1)],
      special_tokens: specials,
    };
  }
  const template = meta.get("tokenizer.chat_template");
  if (typeof template === "string") tokenizerConfig.chat_template = template;
  return { tokenizerJson, tokenizerConfig };
}

/**
 * A Hugging Face `tokenizer.json` as GGUF tokenizer metadata (`tokenizer.ggml.*`), the way llama.cpp
 * reads it: "gpt2" for byte-level BPE (tokens, token types, merges, and the pre-tokenizer's name),
 * "llama" for SentencePiece-style BPE with byte fallback (tokens, scores from the merge ranks, types).
 *
 * @module
 */

import { KvfoldError } from "../errors.ts";
import { checkTokenizerJson } from "./_tokenizer_json.ts";
import type { GgufMetadataValue } from "./gguf_write.ts";

/** llama.cpp's token types (llama_token_type). */
export const GGUF_TOKEN_TYPES = Object.freeze({
  normal: 1,
  unknown: 2,
  control: 3,
  userDefined: 4,
  unused: 5,
  byte: 6,
});

/** Options of {@link tokenizerMetadata}. */
export interface TokenizerMetadataOptions {
  /** The model's vocabulary size: ids the tokenizer leaves unused are padded as `[PAD<id>]`. */
  vocabSize: number;
  /** The file, for messages. */
  path: string;
  bosTokenId?: number;
  eosTokenId?: number;
  /** Whether a BOS token is prepended (`add_bos_token` of tokenizer_config.json). */
  addBos?: boolean;
  addEos?: boolean;
  /** Jinja chat template, written as `tokenizer.chat_template`. */
  chatTemplate?: string;
  /** llama.cpp's pre-tokenizer name for byte-level BPE, when it cannot be told from the file. */
  pre?: string;
}

type Json = Record<string, unknown>;

// Split patterns of the pre-tokenizers llama.cpp knows by name (llama-vocab.cpp), by tokenizer.json text.
const KNOWN_SPLITS: Record<string, string> = {
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+":
    "llama-bpe",
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+":
    "qwen2",
};

const isObject = (v: unknown): v is Json => typeof v === "object" && v !== null && !Array.isArray(v);

function partsOf(v: unknown): Json[] {
  if (!isObject(v)) return [];
  if (v.type === "Sequence") {
    const list = (v.pretokenizers ?? v.normalizers ?? v.decoders) as unknown;
    return Array.isArray(list) ? list.filter(isObject) : [];
  }
  return [v];
}

/** llama.cpp's name of the byte-level pre-tokenizer, or undefined when the file is not byte-level. */
function byteLevelPre(json: Json, path: string, override?: string): string | undefined {
  const parts = partsOf(json.pre_tokenizer);
  const byteLevel = parts.find((p) => p.type === "ByteLevel");
  if (!byteLevel) return undefined;
  if (override !== undefined) return override;
  const splits = parts.filter((p) => p.type === "Split");
  if (splits.length === 0 && byteLevel.use_regex !== false) return "gpt-2";
  if (splits.length === 1 && byteLevel.use_regex === false) {
    const pattern = (splits[0].pattern as Json | undefined)?.Regex;
    const name = typeof pattern === "string" ? KNOWN_SPLITS[pattern] : undefined;
    if (name) return name;
  }
  throw new KvfoldError(
    "UNSUPPORTED",
    `Cannot convert tokenizer ${path}: its byte-level pre-tokenizer is not one llama.cpp knows by name ` +
      `(GPT-2, Llama 3, Qwen2); pass the name as the "pre" option`,
  );
}

/** Whether the file is SentencePiece-style BPE: byte fallback, spaces as "▁". */
function isSentencePiece(json: Json): boolean {
  const model = json.model as Json;
  if (model.type !== "BPE" || model.byte_fallback !== true) return false;
  const meta = partsOf(json.pre_tokenizer).some((p) => p.type === "Metaspace");
  const replace = partsOf(json.normalizer).some((p) =>
    p.type === "Replace" && (p.content === "\u2581" || p.content === "▁")
  );
  return meta || replace;
}

/**
 * The `tokenizer.ggml.*` (and `tokenizer.chat_template`) metadata of a parsed `tokenizer.json`.
 * Errors: `KvfoldError` FORMAT for a broken file or ids past `vocabSize`, UNSUPPORTED for a tokenizer
 * llama.cpp has no model for (WordPiece, Unigram, an unknown byte-level split).
 *
 * @example
 * ```ts
 * import { tokenizerMetadata } from "./gguf_tokenizer.ts";
 * import { makeTestTokenizer } from "../../testing/mod.ts";
 * const { tokenizerJson } = makeTestTokenizer(300);
 * const meta = tokenizerMetadata(tokenizerJson, { vocabSize: 300, path: "tokenizer.json" });
 * console.log(meta["tokenizer.ggml.model"], meta["tokenizer.ggml.pre"]); // gpt2 gpt-2
 * ```
 */
export function tokenizerMetadata(
  json: Json,
  options: TokenizerMetadataOptions,
): Record<string, GgufMetadataValue> {
  const { path, vocabSize } = options;
  const maxId = checkTokenizerJson(json, path);
  if (maxId >= vocabSize) {
    throw new KvfoldError(
      "FORMAT",
      `Cannot convert tokenizer ${path}: it defines token id ${maxId}, the model has ${vocabSize} tokens`,
    );
  }
  const model = json.model as Json;
  const pre = model.type === "BPE" ? byteLevelPre(json, path, options.pre) : undefined;
  const spm = pre === undefined && isSentencePiece(json);
  if (pre === undefined && !spm) {
    throw new KvfoldError(
      "UNSUPPORTED",
      `Cannot convert tokenizer ${path}: only byte-level BPE ("gpt2") and SentencePiece-style BPE with byte ` +
        `fallback ("llama") are written to GGUF, this is ${String(model.type ?? "untyped")}`,
    );
  }
  const tokens = new Array<string | undefined>(vocabSize);
  const types = new Int32Array(vocabSize);
  for (const [t, id] of Object.entries(model.vocab as Record<string, number>)) {
    tokens[id] = t;
    types[id] = spm && /^<0x[0-9A-Fa-f]{2}>$/.test(t) ? GGUF_TOKEN_TYPES.byte : GGUF_TOKEN_TYPES.normal;
  }
  for (const a of (json.added_tokens ?? []) as { id: number; content: string; special?: boolean }[]) {
    tokens[a.id] = a.content;
    types[a.id] = a.special ? GGUF_TOKEN_TYPES.control : GGUF_TOKEN_TYPES.userDefined;
  }
  const unk = typeof model.unk_token === "string"
    ? (model.vocab as Record<string, number>)[model.unk_token]
    : undefined;
  if (unk !== undefined) types[unk] = GGUF_TOKEN_TYPES.unknown;
  for (let id = 0; id < vocabSize; id++) {
    if (tokens[id] === undefined) {
      tokens[id] = `[PAD${id}]`;
      types[id] = GGUF_TOKEN_TYPES.unused;
    }
  }
  const merges = ((model.merges ?? []) as (string | [string, string])[]).map((m) =>
    typeof m === "string" ? m : `${m[0]} ${m[1]}`
  );
  const meta: Record<string, GgufMetadataValue> = {
    "tokenizer.ggml.model": spm ? "llama" : "gpt2",
  };
  if (pre !== undefined) meta["tokenizer.ggml.pre"] = pre;
  meta["tokenizer.ggml.tokens"] = { type: "array", itemType: "string", value: tokens as string[] };
  if (spm) {
    // llama.cpp's SentencePiece tokenizer merges the adjacent pair whose result scores highest:
    // scoring each token by minus the rank of the merge that makes it gives BPE's merge order.
    const scores = new Float32Array(vocabSize);
    const vocab = model.vocab as Record<string, number>;
    merges.forEach((m, rank) => {
      const id = vocab[m.replace(" ", "")];
      if (id !== undefined && scores[id] === 0) scores[id] = -(rank + 1);
    });
    meta["tokenizer.ggml.scores"] = { type: "array", itemType: "float32", value: Array.from(scores) };
  }
  meta["tokenizer.ggml.token_type"] = { type: "array", itemType: "int32", value: Array.from(types) };
  if (!spm) meta["tokenizer.ggml.merges"] = { type: "array", itemType: "string", value: merges };
  const id = (key: string, v: number | undefined) => {
    if (v === undefined) return;
    if (!Number.isSafeInteger(v) || v < 0 || v >= vocabSize) {
      throw new KvfoldError(
        "FORMAT",
        `Cannot convert tokenizer ${path}: ${key} ${v} is not a token id below ${vocabSize}`,
      );
    }
    meta[`tokenizer.ggml.${key}`] = { type: "uint32", value: v };
  };
  id("bos_token_id", options.bosTokenId);
  id("eos_token_id", options.eosTokenId);
  id("unknown_token_id", unk);
  if (options.addBos !== undefined) meta["tokenizer.ggml.add_bos_token"] = options.addBos;
  if (options.addEos !== undefined) meta["tokenizer.ggml.add_eos_token"] = options.addEos;
  if (options.chatTemplate !== undefined) meta["tokenizer.chat_template"] = options.chatTemplate;
  return meta;
}

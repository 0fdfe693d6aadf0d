/**
 * The demo model's fixed shape: its config, the store's chunking and the summary vectors per segment,
 * the document groups and the training seed. Shared by the recipe, its examples and the evaluation.
 *
 * @module
 */

import { demoVocabulary } from "./tokenizer.ts";

/** Seed of the training documents' stream. */
export const TRAIN_SEED = 20261204;
/**
 * Tokens of the longest training window (two segments: the compressor learns the hand-off between
 * segments on it), and per compressor segment; summary vectors per segment. The store's chunks are
 * one segment each ({@linkcode storeChunking} in `trained.ts`).
 */
export const CHUNK_TOKENS = 512;
export const SEGMENT_TOKENS = 256;
export const SUMMARY_VECTORS = 8;
/** Groups, each with its own adapter. */
export const GROUPS = ["ledger", "voyage"] as const;

/** The demo model's size: decoder layers and hidden width. */
export interface DemoShape {
  layers: number;
  width: number;
}

/**
 * The demo model's config (Hugging Face `config.json`): `layers` decoder layers (default 4) of
 * `width` (default 128), 4 heads of width / 4 (2 KV heads) and an MLP 2.75 times as wide (to a
 * multiple of 16).
 */
export function demoConfig(shape: Partial<DemoShape> = {}): Record<string, unknown> {
  const { layers = 4, width = 128 } = shape;
  return {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: width,
    intermediate_size: Math.round((width * 2.75) / 16) * 16,
    num_hidden_layers: layers,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    head_dim: width / 4,
    vocab_size: demoVocabulary().length,
    max_position_embeddings: 4096,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: true,
    bos_token_id: 1,
    eos_token_id: 2,
    pad_token_id: 3,
    hidden_act: "silu",
    initializer_range: 0.02,
    torch_dtype: "float32",
  };
}

/**
 * {@linkcode KvfoldEmbeddings}: a LangChain `Embeddings` over any loaded kvfold model, and the token
 * count the kvfold LangChain models report (the model's own tokenizer, never tiktoken's download).
 *
 * @module
 */

import type { EmbeddingPooling, Model } from "../../mod.ts";
import { checkModelOption } from "../_model_option.ts";
import { Embeddings, type EmbeddingsParams, type MessageContent } from "./_deps.ts";

/** Options of {@linkcode KvfoldEmbeddings}. */
export interface KvfoldEmbeddingsInput extends EmbeddingsParams {
  /** A loaded model (any kvfold model: embeddings are its pooled final-normed hidden states). */
  model: Model;
  /** `"mean"` (default) or `"last"` token pooling. */
  pooling?: EmbeddingPooling;
}

/**
 * Text embeddings from a kvfold model for LangChain (`MemoryVectorStore`, retrievers, …): each text
 * is run through the model once, its final-normed hidden states are pooled (mean by default) and
 * L2-normalised, so cosine similarity is a dot product. `embedDocuments` runs all its texts in one
 * call on one session. No network, no other provider.
 *
 * @example
 * ```ts ignore
 * import { MemoryVectorStore } from "npm:@langchain/classic@1.0.50/vectorstores/memory";
 * import { Kvfold } from "../../mod.ts";
 * import { KvfoldEmbeddings } from "./mod.ts";
 *
 * using kv = await Kvfold.open();
 * using model = await kv.loadModel("./models/tiny");
 * const store = await MemoryVectorStore.fromTexts(
 *   ["The ship left at dawn.", "Bees make honey."],
 *   [{ id: 1 }, { id: 2 }],
 *   new KvfoldEmbeddings({ model }),
 * );
 * console.log(await store.similaritySearch("Which ship left?", 1));
 * ```
 */
export class KvfoldEmbeddings extends Embeddings {
  /** The model that embeds. */
  readonly model: Model;
  /** How a text's rows become one vector. */
  readonly pooling: EmbeddingPooling;

  constructor(fields: KvfoldEmbeddingsInput) {
    checkModelOption("KvfoldEmbeddings", fields);
    super(fields);
    this.model = fields.model;
    this.pooling = fields.pooling ?? "mean";
  }

  /** One vector per text, in order (one batched call). */
  async embedDocuments(documents: string[]): Promise<number[][]> {
    const vectors = await this.model.embed(documents, { pooling: this.pooling });
    return vectors.map((v) => Array.from(v));
  }

  /** The vector of one text (queries are embedded as documents are). */
  async embedQuery(document: string): Promise<number[]> {
    const [v] = await this.model.embed([document], { pooling: this.pooling });
    return Array.from(v);
  }
}

/**
 * Tokens of `content` (a string or content blocks, whose text parts are counted) by the model's
 * own tokenizer, without special tokens.
 */
export function countModelTokens(model: Model, content: MessageContent): number {
  const text = typeof content === "string" ? content : content.map((block: unknown) => {
    if (typeof block === "string") return block;
    const { type, text } = block as { type?: unknown; text?: unknown };
    return type === "text" && typeof text === "string" ? text : "";
  }).join("");
  return model.tokenizer.encode(text).length;
}

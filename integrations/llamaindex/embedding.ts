/**
 * {@linkcode KvfoldEmbedding}: a LlamaIndex `BaseEmbedding` over any loaded kvfold model, and
 * {@linkcode kvfoldTokenizer}, the model's own tokenizer in the shape `Settings.tokenizer` takes.
 *
 * @module
 */

import type { EmbeddingPooling, Model } from "../../mod.ts";
import { checkModelOption } from "../_model_option.ts";
import { BaseEmbedding } from "./_deps.ts";

/** Options of {@linkcode KvfoldEmbedding}. */
export interface KvfoldEmbeddingOptions {
  /** A loaded model (any kvfold model: embeddings are its pooled final-normed hidden states). */
  model: Model;
  /** `"mean"` (default) or `"last"` token pooling. */
  pooling?: EmbeddingPooling;
  /** Texts per call to the model (LlamaIndex's `embedBatchSize`); default 32. */
  embedBatchSize?: number;
}

/** A tokenizer as LlamaIndex's `Settings.tokenizer` takes it (`@llamaindex/env`'s `Tokenizer`). */
export interface LlamaIndexTokenizer {
  /** Token ids of `text`, without special tokens. */
  encode: (text: string) => Uint32Array;
  /** Text of token ids. */
  decode: (tokens: Uint32Array) => string;
}

/**
 * The model's own tokenizer for LlamaIndex: `Settings.tokenizer = kvfoldTokenizer(model)` makes the
 * splitters, prompt helper and chat memory count the tokens the model will run (LlamaIndex's default
 * is OpenAI's cl100k). `llamaindex`'s `Settings` has no `tokenizer`; set it on the one of
 * `@llamaindex/core/global`, which holds the same global state.
 */
export function kvfoldTokenizer(model: Model): LlamaIndexTokenizer {
  return {
    encode: (text) => Uint32Array.from(model.tokenizer.encode(text)),
    decode: (tokens) => model.tokenizer.decode(Array.from(tokens)),
  };
}

/**
 * Text embeddings from a kvfold model for LlamaIndex (`VectorStoreIndex`, `Settings.embedModel`):
 * each text is run through the model once, its final-normed hidden states are pooled (mean by
 * default) and L2-normalised. A batch of texts runs in one call on one session. No network, no other
 * provider.
 *
 * @example
 * ```ts ignore
 * import { Document, Settings, VectorStoreIndex } from "npm:llamaindex@0.12.1";
 * import { Settings as CoreSettings } from "npm:@llamaindex/core@0.6.22/global";
 * import { Kvfold } from "../../mod.ts";
 * import { KvfoldEmbedding, KvfoldLLM, kvfoldTokenizer } from "./mod.ts";
 *
 * using kv = await Kvfold.open();
 * using model = await kv.loadModel("./models/tiny");
 * Settings.embedModel = new KvfoldEmbedding({ model });
 * Settings.llm = new KvfoldLLM({ model, maxTokens: 64 });
 * CoreSettings.tokenizer = kvfoldTokenizer(model);
 * const index = await VectorStoreIndex.fromDocuments([new Document({ text: "The ship left at dawn." })]);
 * console.log(await index.asRetriever({ similarityTopK: 1 }).retrieve({ query: "Which ship left?" }));
 * ```
 */
export class KvfoldEmbedding extends BaseEmbedding {
  /** The model that embeds. */
  readonly model: Model;
  /** How a text's rows become one vector. */
  readonly pooling: EmbeddingPooling;

  constructor(options: KvfoldEmbeddingOptions) {
    checkModelOption("KvfoldEmbedding", options);
    super();
    this.model = options.model;
    this.pooling = options.pooling ?? "mean";
    this.embedBatchSize = options.embedBatchSize ?? 32;
    this.embedInfo = { dimensions: this.model.info.hiddenSize, maxTokens: this.model.info.maxPositions };
    // BaseEmbedding declares this one as an instance property (one text at a time), not a method.
    this.getTextEmbeddings = (texts: string[]) => this.#embed(texts);
  }

  /** The vector of one text. */
  override async getTextEmbedding(text: string): Promise<number[]> {
    const [v] = await this.#embed([text]);
    return v;
  }

  async #embed(texts: string[]): Promise<number[][]> {
    const vectors = await this.model.embed(texts, { pooling: this.pooling });
    return vectors.map((v) => Array.from(v));
  }
}

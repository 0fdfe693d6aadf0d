/**
 * {@linkcode createKvfoldQaChain}: retrieve, then answer from the retrieved documents' compressed
 * context, as one streaming runnable.
 *
 * @module
 */

import {
  type DocumentInterface,
  type Runnable,
  type RunnableConfig,
  RunnableLambda,
  RunnablePassthrough,
  RunnableSequence,
} from "./_deps.ts";
import type { ChatKvfold } from "./chat_models.ts";

/** Options of {@linkcode createKvfoldQaChain}. */
export interface KvfoldQaChainOptions {
  /**
   * Finds the context for a question: a {@linkcode KvfoldRetriever}, a `ContextualCompressionRetriever`
   * over a {@linkcode KvfoldDocumentCompressor}, or any retriever (its documents are then read as text).
   */
  retriever: Runnable<string, DocumentInterface[]>;
  /** Answers. */
  model: ChatKvfold;
}

/** What the answering step of {@linkcode createKvfoldQaChain} receives. */
interface QaInput {
  question: string;
  documents: DocumentInterface[];
}

/**
 * A runnable that takes a question, retrieves documents and streams the answer's text. Documents
 * with a compressed payload become the prompt's summary-vector prefix; documents without one are
 * given as text context; with no documents at all the model answers the question alone. `invoke`
 * returns the whole answer; `stream` yields its pieces; `streamEvents` shows the retriever's and the
 * model's runs; `signal` aborts either step.
 *
 * @example
 * ```ts ignore
 * import { ChatKvfold, createKvfoldQaChain, KvfoldRetriever } from "./mod.ts";
 * const chain = createKvfoldQaChain({
 *   retriever: new KvfoldRetriever({ store, k: 2 }),
 *   model: new ChatKvfold({ model: compressor.model, store, temperature: 0 }),
 * });
 * for await (const piece of await chain.stream("Which ship left the harbour?")) console.log(piece);
 * ```
 */
export function createKvfoldQaChain(options: KvfoldQaChainOptions): Runnable<string, string> {
  const { retriever, model } = options;
  const answer = RunnableLambda.from(async function* (input: QaInput, config?: RunnableConfig) {
    const stream = await model.stream(input.question, { ...config, documents: input.documents });
    for await (const chunk of stream) {
      if (chunk.text !== "") yield chunk.text;
    }
  }).withConfig({ runName: "KvfoldAnswer" });
  return RunnableSequence.from([
    { question: new RunnablePassthrough<string>(), documents: retriever },
    answer,
  ]).withConfig({ runName: "KvfoldQaChain" }) as unknown as Runnable<string, string>;
}

/**
 * {@linkcode createKvfoldQaChain}: retrieve, then answer from the retrieved documents' compressed
 * context, as one streaming runnable.
 *
 * @module
 */

import {
  BasePromptTemplate,
  ChatPromptTemplate,
  type DocumentInterface,
  type Runnable,
  type RunnableConfig,
  RunnableLambda,
  RunnablePassthrough,
  RunnableSequence,
} from "./_deps.ts";
import type { ChatKvfold } from "./chat_models.ts";
import { kvfoldPayloadOf } from "./payload.ts";

/** Options of {@linkcode createKvfoldQaChain}. */
export interface KvfoldQaChainOptions {
  /**
   * Finds the context for a question: a {@linkcode KvfoldRetriever}, a `ContextualCompressionRetriever`
   * over a {@linkcode KvfoldDocumentCompressor}, or any retriever (its documents are then read as text).
   */
  retriever: Runnable<string, DocumentInterface[]>;
  /** Answers. */
  model: ChatKvfold;
  /**
   * The prompt: a `ChatPromptTemplate` (or any prompt template) or a template string (one human
   * message), with the variables `{question}` and, optionally, `{context}`. `{context}` receives the
   * text of the documents without a kvfold payload, separated by blank lines; documents with one
   * are always read from their summary vectors, never as text. Default: the question alone, with
   * text documents written in by the model's `formatContext`.
   */
  prompt?: BasePromptTemplate | string;
}

/** What the answering step of {@linkcode createKvfoldQaChain} receives. */
interface QaInput {
  question: string;
  documents: DocumentInterface[];
}

/**
 * A runnable that takes a question, retrieves documents and streams the answer's text. Documents
 * with a compressed payload become the prompt's summary-vector prefix; documents without one are
 * given as text context (in the prompt's `{context}` when it has one); with no documents at all the
 * model answers the question alone. `invoke`
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
  const prompt = typeof options.prompt === "string"
    ? ChatPromptTemplate.fromTemplate(options.prompt)
    : options.prompt;
  if (prompt !== undefined && !(prompt instanceof BasePromptTemplate)) {
    throw new TypeError("createKvfoldQaChain takes prompt, a prompt template or a template string");
  }
  const answer = RunnableLambda.from(async function* (input: QaInput, config?: RunnableConfig) {
    let messages: Parameters<ChatKvfold["stream"]>[0] = input.question;
    let documents = input.documents;
    if (prompt !== undefined) {
      const text = documents.filter((d) => kvfoldPayloadOf(d) === undefined);
      const values: Record<string, string> = { question: input.question };
      if (prompt.inputVariables.includes("context")) {
        // The template places the text documents itself; the model only reads the payloads.
        values.context = text.map((d) => d.pageContent).join("\n\n");
        documents = documents.filter((d) => kvfoldPayloadOf(d) !== undefined);
      }
      messages = await prompt.invoke(values, config);
    }
    const stream = await model.stream(messages, { ...config, documents });
    for await (const chunk of stream) {
      if (chunk.text !== "") yield chunk.text;
    }
  }).withConfig({ runName: "KvfoldAnswer" });
  return RunnableSequence.from([
    { question: new RunnablePassthrough<string>(), documents: retriever },
    answer,
  ]).withConfig({ runName: "KvfoldQaChain" }) as unknown as Runnable<string, string>;
}

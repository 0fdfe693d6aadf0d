/**
 * Question answering from compressed contexts inside LlamaIndex: a response synthesizer that hands
 * retrieved nodes' summary vectors to a {@linkcode KvfoldLLM}, and a `RetrieverQueryEngine` using it.
 *
 * @module
 */

import type { StoreLike } from "../../mod.ts";
import {
  type BaseNodePostprocessor,
  type BaseRetriever,
  BaseSynthesizer,
  defaultTextQAPrompt,
  EngineResponse,
  extractText,
  type MessageContent,
  MetadataMode,
  type ModuleRecord,
  type NodeWithScore,
  RetrieverQueryEngine,
  Settings,
  type SynthesizeQuery,
  type TextQAPrompt,
} from "./_deps.ts";
import type { KvfoldCallOptions, KvfoldLLM } from "./llm.ts";
import { type CompressedContext, loadCompressedContext } from "./payload.ts";
import { KvfoldRetriever } from "./retriever.ts";

/** Options of {@linkcode KvfoldResponseSynthesizer}. */
export interface KvfoldResponseSynthesizerOptions {
  /** The LLM that answers. */
  llm: KvfoldLLM;
  /** Resolves payload references of nodes whose vectors are not in memory (read from this store). */
  store?: StoreLike;
  /**
   * The prompt for nodes without a compressed payload, whose text goes in `{context}`; default
   * LlamaIndex's `defaultTextQAPrompt`. Unused when every node has a payload.
   */
  textQATemplate?: TextQAPrompt;
  /** Metadata shown with a text node's content; default `MetadataMode.LLM`. */
  metadataMode?: MetadataMode;
  /** Generation options for every answer (temperature, maxTokens, signal, group, ...). */
  generation?: Omit<KvfoldCallOptions, "contexts">;
}

/**
 * Answers from retrieved nodes with their compressed contexts: the summary vectors of every node
 * that has a payload go before the prompt (in retrieval order), and the prompt is the question
 * itself, as in kvfold's `answerFromChunks`. Nodes without a payload fall back to text: their
 * content fills `textQATemplate`, which becomes the prompt. With no nodes at all, the question
 * is answered on its own (LlamaIndex's base synthesizer would say "Empty Response").
 * The adapters follow kvfold's rule (`adaptersForChunks`): compressed nodes of several groups decode
 * with their groups' adapters composed, weighted by the nodes' scores (`generation.adapterMode`
 * "compose", the default), unless `generation.group` picks one group.
 *
 * @example
 * ```ts ignore
 * import { KvfoldResponseSynthesizer } from "./query_engine.ts";
 * const synthesizer = new KvfoldResponseSynthesizer({ llm, generation: { maxTokens: 64 } });
 * const response = await synthesizer.synthesize({ query: { query: "Which ship left?" }, nodes });
 * console.log(response.message.content);
 * ```
 */
export class KvfoldResponseSynthesizer extends BaseSynthesizer {
  /** The LLM that answers. */
  readonly kvfoldLLM: KvfoldLLM;
  /** The prompt for text-only nodes. */
  textQATemplate: TextQAPrompt;
  readonly #store?: StoreLike;
  readonly #metadataMode: MetadataMode;
  readonly #generation: Omit<KvfoldCallOptions, "contexts">;

  /** Answers with `options.llm`. */
  constructor(options: KvfoldResponseSynthesizerOptions) {
    super({ llm: options.llm });
    this.kvfoldLLM = options.llm;
    this.textQATemplate = options.textQATemplate ?? defaultTextQAPrompt;
    this.#store = options.store;
    this.#metadataMode = options.metadataMode ?? MetadataMode.LLM;
    this.#generation = options.generation ?? {};
  }

  /** No sub-modules with prompts. */
  protected _getPromptModules(): ModuleRecord {
    return {};
  }

  /** The text-fallback prompt, for `getPrompts()`. */
  protected _getPrompts(): { textQATemplate: TextQAPrompt } {
    return { textQATemplate: this.textQATemplate };
  }

  /** Replaces the text-fallback prompt, for `updatePrompts({ textQATemplate })`. */
  protected _updatePrompts(prompts: { textQATemplate?: TextQAPrompt }): void {
    if (prompts.textQATemplate) this.textQATemplate = prompts.textQATemplate;
  }

  /** Answers `query` from `nodes`, also when there are none; streams `EngineResponse`s when `stream`. */
  override synthesize(query: SynthesizeQuery, stream: true): Promise<AsyncIterable<EngineResponse>>;
  /** Answers `query` from `nodes`, also when there are none. */
  override synthesize(query: SynthesizeQuery, stream?: false): Promise<EngineResponse>;
  override async synthesize(
    query: SynthesizeQuery,
    stream = false,
  ): Promise<EngineResponse | AsyncIterable<EngineResponse>> {
    const id = crypto.randomUUID();
    Settings.callbackManager.dispatchEvent("synthesize-start", { id, query });
    const question = typeof query.query === "string" ? query.query : query.query.query;
    const response = await this.getResponse(question, query.nodes, stream);
    Settings.callbackManager.dispatchEvent("synthesize-end", { id, query, response });
    return response;
  }

  /** Splits nodes into compressed contexts and text, and asks the LLM. */
  protected async getResponse(
    query: MessageContent,
    nodes: NodeWithScore[],
    stream: boolean,
  ): Promise<EngineResponse | AsyncIterable<EngineResponse>> {
    const contexts: CompressedContext[] = [];
    const texts: string[] = [];
    for (const n of nodes) {
      const context = await loadCompressedContext(n, this.#store);
      // The node's retrieval score weighs its group's adapter in a composition.
      if (context) contexts.push(typeof n.score === "number" ? { ...context, score: n.score } : context);
      else texts.push(n.node.getContent(this.#metadataMode));
    }
    const question = extractText(query);
    const prompt = texts.length === 0
      ? question
      : this.textQATemplate.format({ context: texts.join("\n\n"), query: question });
    const messages = [{ role: "user" as const, content: prompt }];
    const additionalChatOptions = { ...this.#generation, contexts };
    if (stream) {
      const chunks = await this.kvfoldLLM.chat({ messages, stream: true, additionalChatOptions });
      return (async function* () {
        for await (const chunk of chunks) yield EngineResponse.fromChatResponseChunk(chunk, nodes);
      })();
    }
    const response = await this.kvfoldLLM.chat({ messages, additionalChatOptions });
    return EngineResponse.fromChatResponse(response, nodes);
  }
}

/** Options of {@linkcode KvfoldQueryEngine}. */
export interface KvfoldQueryEngineOptions extends Omit<KvfoldResponseSynthesizerOptions, "llm"> {
  /** Finds the nodes: a {@linkcode KvfoldRetriever}, or any retriever followed by a {@linkcode KvfoldNodeCompressor}. */
  retriever: BaseRetriever;
  /** The LLM that answers. */
  llm: KvfoldLLM;
  /** Run on the retrieved nodes in order, e.g. a {@linkcode KvfoldNodeCompressor}. */
  nodePostprocessors?: BaseNodePostprocessor[];
}

/**
 * LlamaIndex's `RetrieverQueryEngine` answering from compressed contexts through a
 * {@linkcode KvfoldResponseSynthesizer}: `query({ query })`, or `query({ query, stream: true })`
 * for a stream of `EngineResponse` deltas. Payload references are resolved against `store`,
 * by default the retriever's store when it is a {@linkcode KvfoldRetriever}.
 *
 * @example
 * ```ts ignore
 * import { Compressor, DocumentStore, Kvfold } from "../../mod.ts";
 * import { KvfoldLLM, KvfoldQueryEngine, KvfoldRetriever } from "./mod.ts";
 * using kv = await Kvfold.open();
 * using compressor = await Compressor.load(kv, "./models/lloco");
 * using store = DocumentStore.open("kb.sqlite");
 * const engine = new KvfoldQueryEngine({
 *   retriever: new KvfoldRetriever({ store, k: 2 }),
 *   llm: new KvfoldLLM({ model: compressor.model, temperature: 0 }),
 * });
 * const stream = await engine.query({ query: "Which ship left the harbour?", stream: true });
 * for await (const chunk of stream) console.log(chunk.delta);
 * ```
 */
export class KvfoldQueryEngine extends RetrieverQueryEngine {
  /** Retrieves with `options.retriever`, post-processes, and answers with `options.llm`. */
  constructor(options: KvfoldQueryEngineOptions) {
    const { retriever, nodePostprocessors, ...synthesis } = options;
    const store = synthesis.store ?? (retriever instanceof KvfoldRetriever ? retriever.store : undefined);
    super(retriever, new KvfoldResponseSynthesizer({ ...synthesis, store }), nodePostprocessors);
  }
}

/**
 * Training and evaluation examples over demo documents, in exactly the token layouts kvfold's answer
 * paths produce at inference, so the trained model meets at test time what it learned on:
 *
 * - text QA (the "full text" and "truncated" baselines): `[<s> | context tokens | question | answer </s>]`;
 * - compressed QA (LLoCO): the compressor reads a store chunk's ids (no `<s>`), and the decoder reads
 *   `[summary vectors | <s> question | answer </s>]`, as `answerFromChunks(model, chunks, question)` does for
 *   a model without a chat template.
 *
 * A chunk is what `compressIntoStore` stores: the document's ids cut every `chunkTokens` tokens.
 *
 * @module
 */

import type { DemoDocument, DemoFact } from "./corpus.ts";
import { DEMO_BOS_ID, DEMO_EOS_ID, demoTokenIds } from "./tokenizer.ts";

/** A question over a span of a document, with its expected answer. */
export interface SpanQuestion {
  question: string;
  answer: string;
  /** The fact it asks about. */
  fact: DemoFact;
}

/** Token ids of a question or answer text (lower case, word-level; no `<s>`). */
export function textIds(text: string): number[] {
  return demoTokenIds(text.toLowerCase().match(/[a-z0-9]+|[^\sa-z0-9]/g) ?? []);
}

/** The document's ids (no `<s>`). */
export function documentIds(doc: DemoDocument): number[] {
  return demoTokenIds(doc.tokens);
}

/** The questions whose fact sentence lies wholly inside tokens [start, end) of `doc`. */
export function questionsIn(doc: DemoDocument, start: number, end: number): SpanQuestion[] {
  const out: SpanQuestion[] = [];
  doc.facts.forEach((fact, i) => {
    if (fact.tokenStart >= start && fact.tokenEnd <= end) {
      out.push({ question: doc.questions[i].question, answer: doc.questions[i].answer, fact });
    }
  });
  return out;
}

/** Chunk `index` of a document cut every `chunkTokens` tokens: its token range. */
export function chunkRange(doc: DemoDocument, chunkTokens: number, index: number): [number, number] {
  const start = index * chunkTokens;
  return [start, Math.min(doc.tokens.length, start + chunkTokens)];
}

/** A language-modelling example: rows `[<s> | context | question | answer]` and what each predicts. */
export interface TextQaExample {
  ids: number[];
  labels: number[];
}

/**
 * Text QA over `context` ids: the answer then `</s>`, and with `languageModel` also next-token loss on
 * the context (no loss on the question either way). Without it every labelled row is an answer row,
 * so a context of hundreds of tokens does not drown the answer's few tokens in the mean loss.
 */
export function textQaExample(
  context: readonly number[],
  question: string,
  answer: string,
  options: { languageModel?: boolean } = {},
): TextQaExample {
  const q = textIds(question), a = textIds(answer);
  const ids = [DEMO_BOS_ID, ...context, ...q, ...a];
  const labels = new Array<number>(ids.length).fill(-1);
  // <s> and the context predict the context; the context's last token does not predict the question.
  if (options.languageModel) { for (let t = 0; t < context.length; t++) labels[t] = ids[t + 1]; }
  const firstAnswer = 1 + context.length + q.length;
  labels[firstAnswer - 1] = a[0]; // the question's last token predicts the answer
  for (let t = firstAnswer; t < ids.length; t++) labels[t] = t + 1 < ids.length ? ids[t + 1] : DEMO_EOS_ID;
  return { ids, labels };
}

/** A compressor example: the chunk's ids, `<s> question`, and `answer </s>`. */
export interface CompressedQaExample {
  ids: number[];
  question: number[];
  answer: number[];
}

/** Compressed QA over one chunk's ids. */
export function compressedQaExample(
  chunk: readonly number[],
  question: string,
  answer: string,
): CompressedQaExample {
  return {
    ids: [...chunk],
    question: [DEMO_BOS_ID, ...textIds(question)],
    answer: [...textIds(answer), DEMO_EOS_ID],
  };
}

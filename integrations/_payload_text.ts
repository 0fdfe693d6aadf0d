/**
 * How stock chains answer from summary vectors. A stock LCEL chain (`prompt | ChatKvfold | parser`)
 * or a LlamaIndex response synthesizer writes the retrieved documents' text into the prompt and
 * hands the model only that text. The rule, shared by both integrations:
 *
 * > kvfold's retrievers and compressors remember the text of every document or node they hand out
 * > with a compressed payload. When a kvfold model receives a prompt in which such a text appears
 * > verbatim (at least {@linkcode MIN_PAYLOAD_TEXT} characters), it cuts the text out and reads the
 * > payload's summary vectors instead, as the embedding prefix, in the order the texts appear.
 *
 * Text the model was never handed with a payload (other retrievers, edited text) stays text. The
 * memory is per process and bounded ({@linkcode MAX_REMEMBERED} texts and
 * {@linkcode MAX_REMEMBERED_BYTES} of vectors, least recently used dropped), so a long-running server
 * does not grow; a text that was dropped is simply read as text again.
 *
 * @module
 */

import type { AnswerContext } from "../mod.ts";

/** Shorter texts are never matched: a few common words must not pull in a document's vectors. */
export const MIN_PAYLOAD_TEXT = 24;

/** Texts remembered at most; the least recently handed out is forgotten first. */
export const MAX_REMEMBERED = 4096;

/** Bytes of summary vectors remembered at most (they are what a payload costs in memory). */
export const MAX_REMEMBERED_BYTES = 256 * 1024 * 1024;

// Insertion order is recency order: a remembered text is re-inserted when handed out again.
const remembered = new Map<string, readonly AnswerContext[]>();
let rememberedBytes = 0;

function bytesOf(chunks: readonly AnswerContext[]): number {
  return chunks.reduce((n, c) => n + c.vectors.data.byteLength, 0);
}

function forget(text: string): void {
  const chunks = remembered.get(text);
  if (chunks === undefined) return;
  remembered.delete(text);
  rememberedBytes -= bytesOf(chunks);
}

/**
 * Remembers that `text` stands for `chunks` (their summary vectors, in prefix order). Called by
 * kvfold's retrievers and compressors for every document or node they return with a payload.
 *
 * @example
 * ```ts
 * import { forgetPayloadTexts, rememberPayloadText, takePayloadTexts } from "./_payload_text.ts";
 * const chunk = {
 *   chunkId: 1, documentId: 1, source: "a.txt", ordinal: 0, text: "The ship Gull left at dawn for Velmora.",
 *   tokens: 9, group: null, score: 1, vectors: { rows: 1, hidden: 2, data: new Float32Array(2) }, metadata: {},
 * };
 * rememberPayloadText(chunk.text, [chunk]);
 * const { texts, chunks } = takePayloadTexts([`Context: ${chunk.text}\n\nWhere did the Gull go?`]);
 * console.log(texts[0]); // "Context: \n\nWhere did the Gull go?"
 * console.log(chunks.length); // 1
 * forgetPayloadTexts();
 * ```
 */
export function rememberPayloadText(text: string, chunks: readonly AnswerContext[]): void {
  if (text.length < MIN_PAYLOAD_TEXT || chunks.length === 0) return;
  forget(text);
  remembered.set(text, chunks);
  rememberedBytes += bytesOf(chunks);
  while (
    remembered.size > MAX_REMEMBERED || (rememberedBytes > MAX_REMEMBERED_BYTES && remembered.size > 1)
  ) {
    forget(remembered.keys().next().value!);
  }
}

/** Forgets every remembered text (tests; a process that closed its stores). */
export function forgetPayloadTexts(): void {
  remembered.clear();
  rememberedBytes = 0;
}

/** What {@linkcode takePayloadTexts} found. */
export interface TakenPayloads {
  /** The input texts with every remembered payload text cut out. */
  texts: string[];
  /** The payloads' chunks in the order their texts appeared (across texts, then by position). */
  chunks: AnswerContext[];
}

/**
 * Cuts every remembered payload text out of `texts` (the prompt's messages, in order) and returns
 * the chunks they stand for, each chunk once, in order of appearance. A longer remembered text wins
 * over a shorter one it contains (a whole document over one of its chunks).
 */
export function takePayloadTexts(texts: readonly string[]): TakenPayloads {
  const out: TakenPayloads = { texts: [...texts], chunks: [] };
  if (remembered.size === 0) return out;
  const seen = new Set<AnswerContext>();
  // Longest first, so a document's text is taken whole before any of its chunks could match.
  const candidates = [...remembered.keys()].sort((a, b) => b.length - a.length);
  for (let m = 0; m < out.texts.length; m++) {
    const found: { at: number; chunks: readonly AnswerContext[] }[] = [];
    let text = out.texts[m];
    for (const candidate of candidates) {
      if (candidate.length > text.length) continue;
      for (let at = text.indexOf(candidate); at >= 0; at = text.indexOf(candidate)) {
        const chunks = remembered.get(candidate)!;
        remembered.delete(candidate); // used again: now the most recent
        remembered.set(candidate, chunks);
        // Positions of earlier finds shift as text is cut: record where it sat in the cut text.
        for (const f of found) if (f.at > at) f.at -= candidate.length;
        found.push({ at, chunks });
        text = text.slice(0, at) + text.slice(at + candidate.length);
      }
    }
    out.texts[m] = text;
    found.sort((a, b) => a.at - b.at);
    for (const f of found) {
      for (const chunk of f.chunks) {
        if (seen.has(chunk)) continue;
        seen.add(chunk);
        out.chunks.push(chunk);
      }
    }
  }
  return out;
}

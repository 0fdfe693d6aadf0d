/**
 * What both frameworks' embedding tests share: a few short texts and a query, the dot product
 * their cosine checks use, and a guard that fails a test when anything reaches for the network.
 *
 * @module
 */

import assert from "node:assert/strict";

/** Four unrelated sentences to embed and index. */
export const TEXTS = [
  "The harbour log lists every ship that left at dawn.",
  "Bees keep the orchard alive and honey is sold in June.",
  "A library is a quiet machine for remembering.",
  "Computers read text by splitting it into tokens.",
];

/** A query over them. */
export const QUERY = "Which ship left the harbour?";

/** Σ a[i]·b[i] (the cosine of unit vectors). */
export function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

/** Fails the test when fetch is called while `fn` runs (tiktoken's default downloads its ranks). */
export async function withoutNetwork<T>(fn: () => Promise<T>): Promise<T> {
  const real = globalThis.fetch;
  const calls: string[] = [];
  globalThis.fetch = (input: string | URL | Request) => {
    calls.push(String(input instanceof Request ? input.url : input));
    return Promise.reject(new Error("no network in this test"));
  };
  try {
    return await fn();
  } finally {
    globalThis.fetch = real;
    assert.deepEqual(calls, [], "fetch was called");
  }
}

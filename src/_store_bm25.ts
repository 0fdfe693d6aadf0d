/**
 * The store's keyword search: chunk text split into terms, term frequencies for the postings, and
 * BM25 ranking over the postings table.
 *
 * @module
 */

import type { StatementSync } from "node:sqlite";
import type { StoreValues } from "./_store_integrity.ts";

/** BM25 term-frequency saturation. */
export const BM25_K1 = 1.2;
/** BM25 length normalisation. */
export const BM25_B = 0.75;

/** Lowercase runs of Unicode letters and digits. */
export function tokenize(text: string): string[] {
  return text.toLowerCase().match(/[\p{L}\p{N}]+/gu) ?? [];
}

/** How often each term occurs in `terms`. */
export function termFrequencies(terms: readonly string[]): Map<string, number> {
  const tf = new Map<string, number>();
  for (const t of terms) tf.set(t, (tf.get(t) ?? 0) + 1);
  return tf;
}

/** The BM25 top `k` chunk ids with their scores; `stmt` prepares (and caches) a statement of the store. */
export function rankBm25(
  stmt: (sql: string) => StatementSync,
  terms: string[],
  k: number,
  group: string | undefined,
  v: StoreValues,
): [number, number][] {
  const corpus = stmt("SELECT COUNT(*) AS n, COALESCE(AVG(length), 0) AS avg FROM chunks").get()!;
  const n = v.int(corpus.n, "COUNT(*)", "chunks", 0);
  const avg = v.real(corpus.avg, "AVG(chunks.length)", "chunks", 0);
  if (n === 0) return [];
  const dfStmt = stmt("SELECT COUNT(*) AS df FROM postings WHERE term = ?");
  const postingsStmt = group === undefined
    ? stmt(
      "SELECT p.chunk_id, p.tf, c.length FROM postings p JOIN chunks c ON c.id = p.chunk_id WHERE p.term = ?",
    )
    : stmt(
      `SELECT p.chunk_id, p.tf, c.length FROM postings p JOIN chunks c ON c.id = p.chunk_id
       JOIN documents d ON d.id = c.document_id WHERE p.term = ? AND d.grp = ?`,
    );
  const scores = new Map<number, number>();
  for (const term of terms) {
    const df = v.int(dfStmt.get(term)!.df, "COUNT(*)", `postings of term ${term}`, 0);
    if (df === 0) continue;
    const idf = Math.log(1 + (n - df + 0.5) / (df + 0.5));
    const rows = group === undefined ? postingsStmt.all(term) : postingsStmt.all(term, group);
    for (const row of rows) {
      const id = v.int(row.chunk_id, "postings.chunk_id", `a posting of term ${term}`, 1);
      const tf = v.int(row.tf, "postings.tf", `the posting of ${term} in chunk ${id}`, 1);
      const len = v.int(row.length, "chunks.length", `chunk ${id}`, 0);
      const norm = avg > 0 ? len / avg : 0;
      const s = idf * (tf * (BM25_K1 + 1)) / (tf + BM25_K1 * (1 - BM25_B + BM25_B * norm));
      scores.set(id, (scores.get(id) ?? 0) + s);
    }
  }
  return [...scores].sort((a, b) => b[1] - a[1] || a[0] - b[0]).slice(0, k);
}

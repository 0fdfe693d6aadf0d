/**
 * Rows of a store read back into records, checked the same way whichever backend (SQLite or
 * PostgreSQL) they come from: a chunk row with its document (`chunkFromRow`) and a document's rows
 * joined with its chunks (`documentFromRows`). Both backends select the same column names.
 *
 * @module
 */

import { KvfoldError } from "./errors.ts";
import { decodeVectors, type RetrievedChunk, type StoredDocument } from "./store_records.ts";
import { chunkChecksum, type Row, StoreValues } from "./_store_integrity.ts";

/**
 * The chunk `id` of the row `r` (columns of `chunkSelect` in `_store_schema.ts`), with `score`.
 * A row that does not match its checksum, or holds values kvfold never writes, is a FORMAT error
 * naming the chunk and its document; `location` names the store.
 */
export function chunkFromRow(location: string, r: Row, id: number, score: number): RetrievedChunk {
  const action = `read chunk ${id} of store`;
  const v = new StoreValues(location, action);
  const where = `chunk ${id}`;
  const c = {
    id: v.int(r.chunk_id, "chunks.id", where, 1),
    documentId: v.int(r.document_id, "chunks.document_id", where, 1),
    ordinal: v.int(r.ordinal, "chunks.ordinal", where, 0),
    tokens: v.int(r.tokens, "chunks.tokens", where, 0),
    length: v.int(r.length, "chunks.length", where, 0),
    rows: v.int(r.rows, "chunks.rows", where, 1),
    hidden: v.int(r.hidden, "chunks.hidden", where, 1),
    dtype: v.text(r.dtype, "chunks.dtype", where),
    text: v.text(r.text, "chunks.text", where),
    vectors: v.blob(r.vectors, "chunks.vectors", where),
  };
  const docWhere = `document ${c.documentId}`;
  const source = v.text(r.source, "documents.source", docWhere);
  const stored = v.intOrNull(r.checksum, "chunks.checksum", where, 0);
  if (stored !== null && stored > 0xffffffff) {
    throw v.error("chunks.checksum", where, `is ${stored}, not a CRC-32`);
  }
  // Before the dtype check: a flipped dtype is damage (FORMAT), not a newer kvfold's (UNSUPPORTED).
  if (stored !== null) {
    const computed = chunkChecksum(c);
    if (stored !== computed) {
      throw new KvfoldError(
        "FORMAT",
        `Cannot ${action}: ${location} is damaged: chunk ${id} (#${c.ordinal} of document ${c.documentId}, ${source}) ` +
          `does not match its checksum (stored ${stored.toString(16)}, computed ${computed.toString(16)})`,
      );
    }
  }
  if (c.id !== id) throw v.error("chunks.id", where, `is ${c.id}`);
  if (c.dtype !== "bf16") {
    throw new KvfoldError(
      "UNSUPPORTED",
      `Cannot ${action}: ${location}: vector dtype ${c.dtype} of ${where} is not supported`,
    );
  }
  if (c.vectors.byteLength !== 2 * c.rows * c.hidden) {
    throw v.error(
      "chunks.vectors",
      where,
      `has ${c.vectors.byteLength} bytes, not 2 × rows × hidden = 2 × ${c.rows} × ${c.hidden}`,
    );
  }
  return {
    chunkId: c.id,
    documentId: c.documentId,
    source,
    ordinal: c.ordinal,
    text: c.text,
    tokens: c.tokens,
    group: v.textOrNull(r.grp, "documents.grp", docWhere),
    score,
    vectors: decodeVectors(c.vectors, c.rows, c.hidden),
    metadata: v.jsonObject(r.metadata, "documents.metadata", docWhere),
  };
}

/**
 * The document `source` from its rows joined with its chunks in ordinal order (columns id, source,
 * grp, metadata, chunk_id, ordinal, tokens, rows; a document without chunks gives one row of NULL
 * chunk columns), or undefined when there are no rows.
 */
export function documentFromRows(
  location: string,
  source: string,
  rows: readonly Row[],
): StoredDocument | undefined {
  if (rows.length === 0) return undefined;
  const action = `read document ${source} of store`;
  const v = new StoreValues(location, action);
  const first = rows[0];
  const documentId = v.int(first.id, "documents.id", `document ${source}`, 1);
  const where = `document ${documentId}`;
  const doc: StoredDocument = {
    documentId,
    source: v.text(first.source, "documents.source", where),
    group: v.textOrNull(first.grp, "documents.grp", where),
    metadata: v.jsonObject(first.metadata, "documents.metadata", where),
    chunkIds: [],
    tokens: 0,
    vectors: 0,
  };
  for (const r of rows) {
    // Every document is written with chunks 0..n-1: a gap (or none at all) means rows or index
    // entries were lost, which no checksum of the rows that remain can show.
    if (r.chunk_id === null || r.ordinal !== doc.chunkIds.length) {
      throw new KvfoldError(
        "FORMAT",
        `Cannot ${action}: ${location} is damaged: ${where} (${source}) lacks its chunk ` +
          `#${doc.chunkIds.length}`,
      );
    }
    const chunkId = v.int(r.chunk_id, "chunks.id", `a chunk of ${where}`, 1);
    doc.chunkIds.push(chunkId);
    doc.tokens += v.int(r.tokens, "chunks.tokens", `chunk ${chunkId}`, 0);
    doc.vectors += v.int(r.rows, "chunks.rows", `chunk ${chunkId}`, 1);
  }
  v.int(doc.tokens, "the sum of chunks.tokens", where, 0);
  return doc;
}

/**
 * Writing one document into a PostgreSQL store inside a transaction the caller holds (the store's
 * own `addDocument`, or a worker committing a document with its queue item). No `pg` import here:
 * the queue and the workers load without the client until a store is opened.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { KvfoldError } from "../errors.ts";
import {
  checkNewChunk,
  checkNewDocument,
  encodeVectors,
  type NewChunk,
  type NewDocument,
} from "../store_records.ts";
import { chunkChecksum } from "../_store_integrity.ts";
import { termFrequencies, tokenize } from "../_store_bm25.ts";
import type { PgQueryable } from "./_postgres_connection.ts";

/** A document checked and encoded, ready to be written (nothing left to fail but the server). */
export interface EncodedDocument {
  source: string;
  group?: string;
  metaJson: string;
  chunks: { text: string; tokens: number; rows: number; hidden: number; blob: Uint8Array; terms: string[] }[];
}

/** Checks and encodes `doc` (INVALID_ARGUMENT naming what is wrong), before any transaction. */
export function encodeDocument(doc: NewDocument): EncodedDocument {
  const { source, group, metaJson, chunks } = checkNewDocument(doc);
  return {
    source,
    group,
    metaJson,
    chunks: chunks.map((chunk: NewChunk, ordinal) => {
      const where = `chunk ${ordinal} of ${source}`;
      checkNewChunk(chunk, where);
      const blob = encodeVectors(chunk.vectors, where);
      return {
        text: chunk.text,
        tokens: chunk.tokens,
        rows: chunk.vectors.rows,
        hidden: chunk.vectors.hidden,
        blob,
        terms: tokenize(chunk.text),
      };
    }),
  };
}

/**
 * Writes `doc` inside the caller's transaction on `db` and returns its id. Writers of one source
 * take turns (an advisory lock on it), so two processes adding or replacing it at once end with
 * exactly one document, never two or none.
 */
export async function writeDocument(
  db: PgQueryable,
  doc: EncodedDocument,
  replace: boolean,
): Promise<number> {
  const { source } = doc;
  await db.query("SELECT pg_advisory_xact_lock(hashtext('kvfold source ' || $1))", [source]);
  const existing = await db.query("SELECT id FROM documents WHERE source = $1 FOR UPDATE", [source]);
  if (existing.rows.length > 0) {
    if (!replace) {
      throw new KvfoldError(
        "INVALID_STATE",
        `Cannot add document: source ${source} is already in the store (pass { replace: true } to replace it)`,
      );
    }
    await db.query("DELETE FROM documents WHERE id = $1", [existing.rows[0].id]);
  }
  const inserted = await db.query(
    "INSERT INTO documents (source, grp, metadata, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
    [source, doc.group ?? null, doc.metaJson, new Date().toISOString()],
  );
  const documentId = Number(inserted.rows[0].id);
  // Chunk ids come from a sequence before the rows are written, because the checksum covers them.
  const ids = (await db.query("SELECT nextval('chunks_id_seq') AS id FROM generate_series(1, $1)", [
    doc.chunks.length,
  ])).rows.map((r) => Number(r.id)).sort((a, b) => a - b);
  const cols = {
    id: [] as number[],
    ordinal: [] as number[],
    text: [] as string[],
    tokens: [] as number[],
    length: [] as number[],
    rows: [] as number[],
    hidden: [] as number[],
    vectors: [] as Buffer[],
    checksum: [] as number[],
  };
  const postings = { term: [] as string[], chunk: [] as number[], tf: [] as number[] };
  doc.chunks.forEach((c, ordinal) => {
    const id = ids[ordinal];
    cols.id.push(id);
    cols.ordinal.push(ordinal);
    cols.text.push(c.text);
    cols.tokens.push(c.tokens);
    cols.length.push(c.terms.length);
    cols.rows.push(c.rows);
    cols.hidden.push(c.hidden);
    cols.vectors.push(Buffer.from(c.blob.buffer, c.blob.byteOffset, c.blob.byteLength));
    cols.checksum.push(chunkChecksum({
      id,
      documentId,
      ordinal,
      tokens: c.tokens,
      length: c.terms.length,
      rows: c.rows,
      hidden: c.hidden,
      dtype: "bf16",
      text: c.text,
      vectors: c.blob,
    }));
    for (const [term, n] of termFrequencies(c.terms)) {
      postings.term.push(term);
      postings.chunk.push(id);
      postings.tf.push(n);
    }
  });
  await db.query(
    `INSERT INTO chunks (id, document_id, ordinal, text, tokens, length, rows, hidden, dtype, vectors, checksum)
     SELECT id, $1, ordinal, text, tokens, length, rows, hidden, 'bf16', vectors, checksum
     FROM unnest($2::bigint[], $3::int[], $4::text[], $5::int[], $6::int[], $7::int[], $8::int[], $9::bytea[], $10::bigint[])
       AS t (id, ordinal, text, tokens, length, rows, hidden, vectors, checksum)`,
    [
      documentId,
      cols.id,
      cols.ordinal,
      cols.text,
      cols.tokens,
      cols.length,
      cols.rows,
      cols.hidden,
      cols.vectors,
      cols.checksum,
    ],
  );
  if (postings.term.length > 0) {
    await db.query(
      "INSERT INTO postings (term, chunk_id, tf) SELECT * FROM unnest($1::text[], $2::bigint[], $3::int[])",
      [postings.term, postings.chunk, postings.tf],
    );
  }
  return documentId;
}

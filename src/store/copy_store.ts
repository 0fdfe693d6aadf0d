/**
 * `copyStore(src, dst)`: every document of one store into another, whatever their backends
 * (SQLite -> PostgreSQL and back), verified afterwards by counts and a checksum of every vector blob.
 *
 * @module
 */

import { crc32 } from "../_crc32.ts";
import { KvfoldError } from "../errors.ts";
import type { RetrievedChunk } from "../store_records.ts";
import type { Store } from "./store_api.ts";

/** What {@linkcode copyStore} copied and checked. */
export interface CopyReport {
  documents: number;
  chunks: number;
  /** Bytes of vector blobs copied (2 per value). */
  vectorBytes: number;
  /** CRC-32 over every chunk's vector blob, in (source order, ordinal) order; equal on both sides. */
  checksum: number;
}

/** The chunks' little-endian bf16 bytes, as both backends store them. */
function blobOf(c: RetrievedChunk): Uint8Array {
  const bits = c.vectors.bf16;
  if (bits === undefined) {
    throw new KvfoldError("INTERNAL", `Cannot copy chunk ${c.chunkId}: it has no stored bits`);
  }
  const out = new Uint8Array(bits.length * 2);
  const view = new DataView(out.buffer);
  for (let i = 0; i < bits.length; i++) view.setUint16(2 * i, bits[i], true);
  return out;
}

/** Counts and the vector checksum of `store`, over `sources` in that order. */
async function digest(store: Store, sources: readonly string[]): Promise<CopyReport> {
  const r: CopyReport = { documents: 0, chunks: 0, vectorBytes: 0, checksum: 0 };
  for (const source of sources) {
    const doc = await store.getDocument(source);
    if (doc === undefined) {
      throw new KvfoldError(
        "INVALID_STATE",
        `Cannot verify copy: ${source} is missing from ${store.location}`,
      );
    }
    r.documents++;
    for (const c of await store.getChunks(doc.chunkIds)) {
      const blob = blobOf(c);
      r.chunks++;
      r.vectorBytes += blob.byteLength;
      r.checksum = crc32(blob, r.checksum);
    }
  }
  return r;
}

/**
 * Copies every document of `src` into `dst` (source, group, metadata, chunk texts, token counts and
 * vectors, bit for bit), each in its own transaction, then reads both back and compares the
 * document and chunk counts and a CRC-32 over every vector blob. A source already in `dst` is
 * refused ("INVALID_STATE") unless `replace`. `onProgress(done, total, source)` after each document.
 *
 * @example
 * ```ts ignore
 * import { openStore } from "./open_store.ts";
 * import { copyStore } from "./copy_store.ts";
 * await using src = await openStore("corpus.sqlite", { readOnly: true });
 * await using dst = await openStore("postgres://kvfold@db/corpus");
 * console.log(await copyStore(src, dst));
 * ```
 */
export async function copyStore(
  src: Store,
  dst: Store,
  options: { replace?: boolean; onProgress?: (done: number, total: number, source: string) => void } = {},
): Promise<CopyReport> {
  const sources = await src.listSources();
  if (!options.replace) {
    for (const s of sources) {
      if (await dst.hasDocument(s)) {
        throw new KvfoldError(
          "INVALID_STATE",
          `Cannot copy ${src.location} to ${dst.location}: ${s} is already there (pass replace to replace it)`,
        );
      }
    }
  }
  for (const [i, source] of sources.entries()) {
    const doc = (await src.getDocument(source))!;
    const chunks = await src.getChunks(doc.chunkIds);
    await dst.addDocument({
      source,
      group: doc.group ?? undefined,
      metadata: doc.metadata,
      // bf16 -> f32 -> bf16 is exact: the copy holds the same bits.
      chunks: chunks.map((c) => ({ text: c.text, tokens: c.tokens, vectors: c.vectors })),
    }, { replace: options.replace });
    options.onProgress?.(i + 1, sources.length, source);
  }
  const [a, b] = [await digest(src, sources), await digest(dst, sources)];
  for (const key of ["documents", "chunks", "vectorBytes", "checksum"] as const) {
    if (a[key] !== b[key]) {
      throw new KvfoldError(
        "IO",
        `Cannot copy ${src.location} to ${dst.location}: the copy differs (${key}: ${a[key]} vs ${b[key]})`,
      );
    }
  }
  return a;
}

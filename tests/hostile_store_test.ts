// Hostile store files: flipped bytes, impossible values, foreign layouts, stores written before
// checksums. Every read must give the stored data or a KvfoldError, never different data or a stack
// trace. Paths, processes and the CLI: hostile_store_paths_test.ts.
import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { join } from "node:path";
import { Compressor } from "../src/compressor.ts";
import { compressIntoStore } from "../src/lloco.ts";
import { DocumentStore, type NewChunk, type RetrievedChunk } from "../src/store.ts";
import { KvfoldError } from "../src/errors.ts";
import { bf16ToF32, f32ToBf16 } from "../src/formats/safetensors.ts";
import { crc32, crc32Portable } from "../src/_crc32.ts";
import { sameBytes, tempDirSync, TEST_COMPRESSOR, testEngine, testModel } from "./_fixtures.ts";
import { tempStore, throwsKvfold as assertKvfold } from "./_kvfold_asserts.ts";

/** Runs raw SQL on a store file, as another program (or damage) would. */
function raw(path: string, ...sql: string[]): void {
  const db = new DatabaseSync(path);
  try {
    for (const s of sql) db.exec(s);
  } finally {
    db.close();
  }
}

function vectors(rows: number, hidden: number, seed: number) {
  const data = new Float32Array(rows * hidden);
  for (let i = 0; i < data.length; i++) data[i] = Math.cos(seed * 1.3 + i * 0.71);
  return { rows, hidden, data };
}

function chunk(text: string, tokens: number, seed: number): NewChunk {
  return { text, tokens, vectors: vectors(2, 4, seed) };
}

/** A chunk without its score, for comparing reads. */
function content(c: RetrievedChunk): Omit<RetrievedChunk, "score"> {
  const { score: _, ...rest } = c;
  return rest;
}

Deno.test("hostile store: CRC-32 matches zlib's check value, natively and in TypeScript", () => {
  const enc = new TextEncoder();
  assert.equal(crc32(enc.encode("123456789")), 0xcbf43926);
  assert.equal(crc32Portable(enc.encode("123456789")), 0xcbf43926);
  const bytes = new Uint8Array(1003).map((_, i) => (i * 2654435761) >>> 24);
  assert.equal(crc32Portable(bytes), crc32(bytes));
  assert.equal(crc32Portable(bytes.subarray(500), crc32Portable(bytes.subarray(0, 500))), crc32(bytes));
});

// --- page flips ------------------------------------------------------------------------------

const TEXTS = [
  "The harbour log lists every ship. The ship Aurora left the harbour at dawn with timber. ".repeat(8),
  "Bees keep the orchard alive. Honey from the hives was sold at the market in June. ".repeat(8),
  "A lighthouse keeper writes the weather down twice a day, and the storms of March in red. ".repeat(5),
];

/** A store built by the test compressor: small chunks (inline in their pages) and big ones (overflow pages). */
async function compressedStore(path: string): Promise<void> {
  const kv = await testEngine();
  using compressor = await Compressor.load(kv, await testModel("compressor", TEST_COMPRESSOR));
  using store = DocumentStore.open(path);
  for (const [i, text] of TEXTS.entries()) {
    await compressIntoStore(compressor, store, { source: `doc${i}.txt`, text, metadata: { i } }, {
      chunkTokens: i === 1 ? 256 : 64,
      segmentLength: 32,
    });
  }
}

function latin1(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 8192) {
    s += String.fromCharCode(...bytes.subarray(i, Math.min(i + 8192, bytes.length)));
  }
  return s;
}

/** xorshift32: the flips are the same on every run. */
function prng(seed: number): () => number {
  let x = seed >>> 0;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>>= 0);
  };
}

type Outcome = "same" | "checksum" | "format";

/** Reads every chunk of a damaged copy; each read must give the original or a FORMAT error. */
function readBack(
  path: string,
  integrityCheck: boolean,
  original: Map<number, RetrievedChunk>,
): { open: Outcome; chunks: Map<number, Outcome>; wrong: string[] } {
  const wrong: string[] = [];
  const chunks = new Map<number, Outcome>();
  const classify = (e: unknown, what: string): Outcome => {
    if (!(e instanceof KvfoldError) || e.code !== "FORMAT") {
      wrong.push(`${what}: ${(e as Error)?.stack ?? e}`);
      return "format";
    }
    return /does not match its checksum/.test(e.message) ? "checksum" : "format";
  };
  let store: DocumentStore;
  try {
    store = DocumentStore.open(path, { readOnly: true, integrityCheck });
  } catch (e) {
    return { open: classify(e, "open"), chunks, wrong };
  }
  try {
    for (const [id, want] of original) {
      try {
        const [got] = store.getChunks([id]);
        assert.deepEqual(content(got), content(want));
        chunks.set(id, "same");
      } catch (e) {
        if (e instanceof assert.AssertionError) wrong.push(`chunk ${id} read back different data`);
        else chunks.set(id, classify(e, `chunk ${id}`));
      }
    }
    try {
      for (const hit of store.retrieve("ship honey storms harbour", { k: 100 })) {
        const want = original.get(hit.chunkId);
        if (want === undefined) wrong.push(`retrieve returned unknown chunk ${hit.chunkId}`);
        else if (JSON.stringify(content(hit)) !== JSON.stringify(content(want))) {
          wrong.push(`retrieve returned different data for chunk ${hit.chunkId}`);
        }
      }
    } catch (e) {
      classify(e, "retrieve");
    }
  } finally {
    store.close();
  }
  return { open: "same", chunks, wrong };
}

Deno.test("hostile store: byte flips in vector pages read back as the original data or a FORMAT error", async () => {
  const path = tempStore();
  await compressedStore(path);
  const original = new Map<number, RetrievedChunk>();
  const blobs = new Map<number, Uint8Array>();
  {
    using store = DocumentStore.open(path, { readOnly: true });
    const ids = TEXTS.flatMap((_, i) => store.getDocument(`doc${i}.txt`)!.chunkIds);
    for (const c of store.getChunks(ids)) original.set(c.chunkId, c);
    const db = new DatabaseSync(path, { readOnly: true });
    for (const r of db.prepare("SELECT id, vectors FROM chunks").all()) {
      blobs.set(Number(r.id), r.vectors as Uint8Array);
    }
    db.close();
  }
  assert.ok(original.size >= 10, `${original.size} chunks`);
  assert.ok([...blobs.values()].some((b) => b.length >= 4096), "some chunks spill into overflow pages");

  // Where the vector bytes lie: each 32-byte piece of each blob, found in the file's pages. A piece
  // found twice may be a stale copy SQLite left in free space when it moved cells; one found once
  // is the live one.
  // (Read-only connections leave an empty WAL behind: the data is all in the main file.)
  assert.ok(!exists(`${path}-wal`) || Deno.statSync(`${path}-wal`).size === 0, "the WAL was checkpointed");
  const file = Deno.readFileSync(path);
  const pageSize = 4096;
  assert.equal(file.length % pageSize, 0);
  const pages = Array.from(
    { length: file.length / pageSize },
    (_, p) => latin1(file.subarray(p * pageSize, (p + 1) * pageSize)),
  );
  const vectorPages = new Set<number>();
  const blobBytes: { offset: number; chunkId: number }[] = [];
  for (const [chunkId, blob] of blobs) {
    for (let k = 0; k + 32 <= blob.length; k += 32) {
      const piece = latin1(blob.subarray(k, k + 32));
      const found: number[] = [];
      pages.forEach((page, p) => {
        for (let at = page.indexOf(piece); at >= 0; at = page.indexOf(piece, at + 1)) {
          vectorPages.add(p);
          found.push(p * pageSize + at);
        }
      });
      if (found.length === 1) blobBytes.push({ offset: found[0] + (k * 7919) % 32, chunkId });
    }
  }
  assert.ok(blobBytes.length >= 100, `${blobBytes.length} pieces of vectors located`);
  assert.ok(vectorPages.size >= 4, `${vectorPages.size} vector pages`);

  const next = prng(15);
  const flips: { offset: number; chunkId?: number }[] = [];
  // Half inside the vector bytes themselves, half anywhere in their pages (headers, cells, text, ids).
  for (let i = 0; i < 40; i++) flips.push(blobBytes[next() % blobBytes.length]);
  const pageList = [...vectorPages];
  for (let i = 0; i < 40; i++) {
    flips.push({ offset: pageList[next() % pageList.length] * pageSize + next() % pageSize });
  }

  const wrong: string[] = [];
  const tally = { same: 0, checksum: 0, format: 0 };
  const damaged = join(tempDirSync("kvfold_hostile_store_"), "damaged.kvfold");
  for (const [n, flip] of flips.entries()) {
    const bytes = file.slice();
    bytes[flip.offset] ^= 1 + next() % 255;
    for (const integrityCheck of [true, false]) {
      Deno.writeFileSync(damaged, bytes);
      const r = readBack(damaged, integrityCheck, original);
      wrong.push(
        ...r.wrong.map((w) => `flip ${n} at ${flip.offset} (integrityCheck ${integrityCheck}): ${w}`),
      );
      if (r.open !== "same") tally[r.open]++;
      for (const o of r.chunks.values()) tally[o]++;
      // A flip inside a chunk's vectors is never structural: only the checksum can catch it.
      if (flip.chunkId !== undefined && !integrityCheck) {
        assert.equal(
          r.chunks.get(flip.chunkId),
          "checksum",
          `flip ${n} at ${flip.offset} in chunk ${flip.chunkId}`,
        );
      }
    }
  }
  assert.deepEqual(wrong, []);
  assert.ok(tally.checksum >= 40, JSON.stringify(tally));
});

// --- impossible values -----------------------------------------------------------------------

/** A small store with two documents; chunk ids 1, 2 (doc a) and 3 (doc b). */
function smallStore(): string {
  const path = tempStore();
  using store = DocumentStore.open(path);
  store.addDocument({
    source: "a",
    group: "g",
    metadata: { k: 1 },
    chunks: [chunk("alpha beta", 5, 1), chunk("gamma", 3, 2)],
  });
  store.addDocument({ source: "b", chunks: [chunk("delta alpha", 7, 3)] });
  return path;
}

function mutated(base: string, ...sql: string[]): string {
  const path = tempStore();
  Deno.copyFileSync(base, path);
  raw(path, ...sql);
  return path;
}

Deno.test("hostile store: impossible counts, ids and types are refused naming the column", () => {
  const base = smallStore();
  const noSums = "UPDATE chunks SET checksum = NULL";
  const open = (path: string) => DocumentStore.open(path, { readOnly: true });

  {
    using s = open(mutated(base, "UPDATE chunks SET tokens = -5 WHERE id = 2"));
    assertKvfold(() => s.stats(), "FORMAT", /chunks\.tokens of chunk 2 is -5; it cannot be below 0/);
    assertKvfold(() => s.getDocument("a"), "FORMAT", /chunks\.tokens of chunk 2 is -5/);
    assertKvfold(() => s.getChunks([2]), "FORMAT", /chunks\.tokens of chunk 2 is -5/);
    assert.equal(s.getChunks([1])[0].tokens, 5); // the other chunks still read
  }
  {
    // A possible but changed count: the checksum tells, naming the chunk and its document.
    using s = open(mutated(base, "UPDATE chunks SET tokens = 6 WHERE id = 2"));
    assertKvfold(
      () => s.getChunks([2]),
      "FORMAT",
      /chunk 2 \(#1 of document 1, a\) does not match its checksum/,
    );
  }
  {
    using s = open(mutated(base, noSums, "UPDATE chunks SET tokens = -5 WHERE id = 2"));
    assertKvfold(() => s.getChunks([2]), "FORMAT", /store\.kvfold: chunks\.tokens of chunk 2 is -5/);
  }
  {
    using s = open(mutated(base, noSums, "UPDATE chunks SET rows = 0 WHERE id = 3"));
    assertKvfold(() => s.stats(), "FORMAT", /chunks\.rows of chunk 3 is 0; it cannot be below 1/);
    assertKvfold(() => s.getChunks([3]), "FORMAT", /chunks\.rows of chunk 3 is 0/);
  }
  {
    using s = open(mutated(base, noSums, "UPDATE chunks SET hidden = -4 WHERE id = 1"));
    assertKvfold(() => s.getChunks([1]), "FORMAT", /chunks\.hidden of chunk 1 is -4/);
  }
  {
    using s = open(mutated(base, noSums, "UPDATE chunks SET hidden = 3 WHERE id = 1"));
    assertKvfold(
      () => s.getChunks([1]),
      "FORMAT",
      /chunks\.vectors of chunk 1 has 16 bytes, not 2 × rows × hidden/,
    );
  }
  {
    using s = open(mutated(base, noSums, "UPDATE chunks SET tokens = 'many' WHERE id = 1"));
    assertKvfold(() => s.stats(), "FORMAT", /chunks\.tokens of chunk 1 is the text "many", not an integer/);
    assertKvfold(() => s.getChunks([1]), "FORMAT", /chunks\.tokens of chunk 1 is the text "many"/);
  }
  {
    // 64-bit integers past 2^53: refused, never rounded.
    using s = open(mutated(base, noSums, "UPDATE chunks SET tokens = 4611686018427387904 WHERE id = 1"));
    assertKvfold(() => s.stats(), "FORMAT", /past 2\^53/);
    assertKvfold(() => s.getChunks([1]), "FORMAT", /past 2\^53/);
    assertKvfold(() => s.getDocument("a"), "FORMAT", /past 2\^53/);
  }
  {
    using s = open(
      mutated(base, "UPDATE chunks SET tokens = 9223372036854775000 WHERE id IN (1, 2)"),
    );
    assertKvfold(() => s.stats(), "FORMAT", /past 2\^53|overflow/);
  }
  {
    using s = open(mutated(base, "UPDATE documents SET metadata = '{\"k\": 1' WHERE id = 1"));
    assertKvfold(() => s.getChunks([1]), "FORMAT", /documents\.metadata of document 1 is not valid JSON/);
    assertKvfold(() => s.getDocument("a"), "FORMAT", /documents\.metadata of document 1 is not valid JSON/);
    assertKvfold(() => s.retrieve("alpha"), "FORMAT", /documents\.metadata of document 1/);
  }
  {
    using s = open(mutated(base, "UPDATE documents SET metadata = '[1, 2]' WHERE id = 2"));
    assertKvfold(() => s.getChunks([3]), "FORMAT", /documents\.metadata of document 2 is not a JSON object/);
  }
  {
    using s = open(mutated(base, "UPDATE postings SET tf = 0 WHERE term = 'alpha'"));
    assertKvfold(
      () => s.retrieve("alpha"),
      "FORMAT",
      /postings\.tf of the posting of alpha in chunk \d is 0/,
    );
  }
  {
    using s = open(mutated(base, "UPDATE chunks SET checksum = -1 WHERE id = 1"));
    assertKvfold(() => s.getChunks([1]), "FORMAT", /chunks\.checksum of chunk 1 is -1/);
  }
  assertKvfold(
    () => open(mutated(base, "UPDATE meta SET value = '1x' WHERE key = 'schema_version'")),
    "FORMAT",
    /has no valid schema_version in meta/,
  );
});

Deno.test("hostile store: a foreign layout is a FORMAT error, at open or at the statement that meets it", () => {
  const base = smallStore();
  assertKvfold(
    () => DocumentStore.open(mutated(base, "ALTER TABLE chunks DROP COLUMN length")),
    "FORMAT",
    /store\.kvfold lacks column chunks\.length/,
  );
  assertKvfold(
    () => DocumentStore.open(mutated(base, "DROP TABLE postings")),
    "FORMAT",
    /lacks table postings/,
  );
  // Changed under an open store by another program: the statement fails, named as SQLite says.
  const path = mutated(base);
  using store = DocumentStore.open(path, { readOnly: true });
  assert.equal(store.retrieve("alpha").length, 2);
  raw(path, "ALTER TABLE postings DROP COLUMN tf");
  const e = assertKvfold(
    () => store.retrieve("gamma"),
    "FORMAT",
    /does not have kvfold's layout \(no such column/,
  );
  assert.ok(e.message.includes(path), e.message);
});

// --- stores written before checksums ---------------------------------------------------------

/** The schema of stores written before chunks.checksum existed, verbatim. */
const SCHEMA_BEFORE_CHECKSUMS = `
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE documents (
  id INTEGER PRIMARY KEY,
  source TEXT NOT NULL UNIQUE,
  grp TEXT,
  metadata TEXT NOT NULL DEFAULT '{}',
  created_at TEXT NOT NULL
);
CREATE INDEX documents_grp ON documents (grp);
CREATE TABLE chunks (
  id INTEGER PRIMARY KEY,
  document_id INTEGER NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
  ordinal INTEGER NOT NULL,
  text TEXT NOT NULL,
  tokens INTEGER NOT NULL,
  length INTEGER NOT NULL,
  rows INTEGER NOT NULL,
  hidden INTEGER NOT NULL,
  dtype TEXT NOT NULL DEFAULT 'bf16',
  vectors BLOB NOT NULL,
  UNIQUE (document_id, ordinal)
);
CREATE TABLE postings (
  term TEXT NOT NULL,
  chunk_id INTEGER NOT NULL REFERENCES chunks (id) ON DELETE CASCADE,
  tf INTEGER NOT NULL,
  PRIMARY KEY (term, chunk_id)
) WITHOUT ROWID;
CREATE INDEX postings_term ON postings (term);
CREATE INDEX postings_chunk ON postings (chunk_id);
`;

/** A store as kvfold wrote them before checksums: one document, one chunk "old words here". */
function storeBeforeChecksums(): { path: string; data: Float32Array } {
  const path = tempStore();
  const data = vectors(2, 4, 9).data;
  const blob = new Uint8Array(data.length * 2);
  data.forEach((x, i) => new DataView(blob.buffer).setUint16(i * 2, f32ToBf16(x), true));
  const db = new DatabaseSync(path);
  db.exec("PRAGMA journal_mode = WAL");
  db.exec(SCHEMA_BEFORE_CHECKSUMS);
  db.exec(`INSERT INTO meta VALUES ('schema_version', '1'), ('created_by', 'kvfold'), ('created_at', 'x');
    INSERT INTO documents (id, source, grp, metadata, created_at) VALUES (1, 'old', 'g', '{"v":0}', 'x');`);
  db.prepare(
    `INSERT INTO chunks (id, document_id, ordinal, text, tokens, length, rows, hidden, dtype, vectors)
    VALUES (1, 1, 0, 'old words here', 4, 3, 2, 4, 'bf16', ?)`,
  ).run(blob);
  db.exec("INSERT INTO postings VALUES ('old', 1, 1), ('words', 1, 1), ('here', 1, 1)");
  db.close();
  return { path, data: data.map((x) => bf16ToF32(f32ToBf16(x))) };
}

function columns(path: string): string[] {
  const db = new DatabaseSync(path, { readOnly: true });
  try {
    return db.prepare("PRAGMA table_info(chunks)").all().map((r) => String(r.name));
  } finally {
    db.close();
  }
}

Deno.test("hostile store: stores written before checksums read unchanged and gain checksums on the first write", () => {
  const { path, data } = storeBeforeChecksums();
  const before = Deno.readFileSync(path);
  {
    using ro = DocumentStore.open(path, { readOnly: true });
    const [hit] = ro.retrieve("old words");
    assert.deepEqual([hit.source, hit.text, hit.tokens, hit.group, hit.metadata], [
      "old",
      "old words here",
      4,
      "g",
      {
        v: 0,
      },
    ]);
    assert.deepEqual(hit.vectors.data, data);
    assert.equal(ro.stats().chunks, 1);
  }
  // Read-only: not one byte changed, no migration.
  assert.ok(sameBytes(Deno.readFileSync(path), before), "the read-only store changed");
  assert.ok(!columns(path).includes("checksum"));
  {
    // Opening to write changes nothing until something is written.
    using rw = DocumentStore.open(path);
    assert.equal(rw.getChunks([1])[0].text, "old words here");
  }
  assert.ok(!columns(path).includes("checksum"));
  {
    using rw = DocumentStore.open(path);
    rw.addDocument({ source: "new", chunks: [chunk("new words", 2, 5)] });
    assert.equal(rw.getDocument("new")!.chunkIds[0], 2);
  }
  assert.ok(columns(path).includes("checksum"));
  const db = new DatabaseSync(path, { readOnly: true });
  const sums = db.prepare("SELECT id, checksum FROM chunks ORDER BY id").all().map((r) => [r.id, r.checksum]);
  assert.equal(db.prepare("SELECT value FROM meta WHERE key = 'schema_version'").get()!.value, "1");
  db.close();
  assert.equal(sums[0][1], null); // the old chunk: not recorded
  assert.equal(typeof sums[1][1], "number"); // the new one: recorded
  raw(
    path,
    "UPDATE chunks SET text = 'old words HERE' WHERE id = 1",
    "UPDATE chunks SET text = 'new wordz' WHERE id = 2",
  );
  using store = DocumentStore.open(path, { readOnly: true });
  assert.equal(store.getChunks([1])[0].text, "old words HERE"); // no checksum to tell
  assertKvfold(
    () => store.getChunks([2]),
    "FORMAT",
    /chunk 2 \(#0 of document 2, new\) does not match its checksum/,
  );
});

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

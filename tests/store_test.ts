import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { join } from "node:path";
import { DocumentStore, type NewChunk, type StoredVectors } from "../src/store.ts";
import { bf16ToF32, f32ToBf16 } from "../src/formats/safetensors.ts";
import { throwsKvfold as assertKvfold } from "./_kvfold_asserts.ts";
import { tempDirSync } from "./_fixtures.ts";

function tempPath(): string {
  return join(tempDirSync("kvfold_store_"), "store.kvfold");
}

function vectors(rows: number, hidden: number, seed: number): StoredVectors {
  const data = new Float32Array(rows * hidden);
  for (let i = 0; i < data.length; i++) data[i] = Math.sin(seed * 31.7 + i * 1.37) * (1 + seed) + i * 1e-3;
  return { rows, hidden, data };
}

function bf16Rounded(data: Float32Array): Float32Array {
  return data.map((x) => bf16ToF32(f32ToBf16(x)));
}

function chunk(text: string, tokens: number, rows: number, hidden: number, seed: number): NewChunk {
  return { text, tokens, vectors: vectors(rows, hidden, seed) };
}

function rawCount(path: string, sql: string): number {
  const db = new DatabaseSync(path, { readOnly: true });
  try {
    return Number(db.prepare(sql).get()!.n);
  } finally {
    db.close();
  }
}

Deno.test("store: round trip of documents, chunks, vectors and stats", () => {
  const path = tempPath();
  using store = DocumentStore.open(path);
  assert.equal(store.path, path);
  const docA = {
    source: "a.md",
    group: "papers",
    metadata: { title: "A", year: 2024, tags: ["x", "y"] },
    chunks: [chunk("first chunk of a", 10, 2, 3, 1), chunk("second chunk of a", 7, 1, 3, 2)],
  };
  const docB = {
    source: "b.md",
    chunks: [chunk("b one", 5, 3, 4, 3), chunk("b two", 8, 1, 4, 4), chunk("b three", 9, 2, 4, 5)],
  };
  const idA = store.addDocument(docA);
  const idB = store.addDocument(docB);
  assert.notEqual(idA, idB);
  assert.ok(store.hasDocument("a.md"));
  assert.ok(!store.hasDocument("c.md"));

  const db = new DatabaseSync(path, { readOnly: true });
  const ids = db.prepare("SELECT id FROM chunks ORDER BY document_id, ordinal").all().map((r) =>
    Number(r.id)
  );
  assert.deepEqual(
    db.prepare("SELECT key, value FROM meta WHERE key IN ('schema_version', 'created_by') ORDER BY key").all()
      .map((r) => [r.key, r.value]),
    [["created_by", "kvfold"], ["schema_version", "1"]],
  );
  assert.equal(db.prepare("SELECT DISTINCT dtype FROM chunks").get()!.dtype, "bf16");
  db.close();
  assert.equal(ids.length, 5);

  // In a non-sorted order, to check order is kept.
  const order = [ids[3], ids[0], ids[4], ids[1], ids[2]];
  const got = store.getChunks(order);
  const inputs = [docB.chunks[1], docA.chunks[0], docB.chunks[2], docA.chunks[1], docB.chunks[0]];
  assert.deepEqual(got.map((c) => c.chunkId), order);
  got.forEach((c, i) => {
    const input = inputs[i];
    const isA = docA.chunks.includes(input);
    assert.equal(c.text, input.text);
    assert.equal(c.tokens, input.tokens);
    assert.equal(c.score, 0);
    assert.equal(c.source, isA ? "a.md" : "b.md");
    assert.equal(c.documentId, isA ? idA : idB);
    assert.equal(c.ordinal, (isA ? docA.chunks : docB.chunks).indexOf(input));
    assert.equal(c.group, isA ? "papers" : null);
    assert.deepEqual(c.metadata, isA ? docA.metadata : {});
    assert.equal(c.vectors.rows, input.vectors.rows);
    assert.equal(c.vectors.hidden, input.vectors.hidden);
    assert.ok(c.vectors.data instanceof Float32Array);
    assert.deepEqual(c.vectors.data, bf16Rounded(input.vectors.data));
  });
  // bf16 actually rounds (the inputs are not all representable).
  assert.notDeepEqual(got[0].vectors.data, inputs[0].vectors.data);

  const s = store.stats();
  assert.equal(s.documents, 2);
  assert.equal(s.chunks, 5);
  assert.equal(s.tokensIn, 10 + 7 + 5 + 8 + 9);
  assert.equal(s.vectorsKept, 2 + 1 + 3 + 1 + 2);
  assert.equal(s.ratio, 39 / 9);
  assert.equal(s.vectorBytes, 2 * (2 * 3 + 1 * 3 + 3 * 4 + 1 * 4 + 2 * 4));
  assert.ok(s.fileBytes > s.vectorBytes);
  assert.deepEqual(s.groups, ["papers"]);

  assertKvfold(() => store.getChunks([ids[0], 424242]), "INVALID_ARGUMENT", /chunk 424242 does not exist/);

  assert.equal(store.removeDocument("a.md"), true);
  assert.equal(store.removeDocument("a.md"), false);
  assert.equal(store.stats().chunks, 3);
  assert.equal(rawCount(path, "SELECT COUNT(*) AS n FROM postings WHERE term = 'first'"), 0);
  assertKvfold(
    () => store.getChunks([ids[0]]),
    "INVALID_ARGUMENT",
    new RegExp(`chunk ${ids[0]} does not exist`),
  );
});

Deno.test("store: addDocument argument checks", () => {
  using store = DocumentStore.open(tempPath());
  const ok = chunk("x", 1, 1, 2, 1);
  assertKvfold(() => store.addDocument({ source: "a", chunks: [] }), "INVALID_ARGUMENT");
  assertKvfold(() => store.addDocument({ source: "", chunks: [ok] }), "INVALID_ARGUMENT");
  assertKvfold(
    () =>
      store.addDocument({
        source: "a",
        chunks: [{ text: "x", tokens: 1, vectors: { rows: 2, hidden: 2, data: new Float32Array(3) } }],
      }),
    "INVALID_ARGUMENT",
    /rows\*hidden/,
  );
  assertKvfold(
    () =>
      store.addDocument({
        source: "a",
        chunks: [{
          text: "x",
          tokens: 1,
          vectors: { rows: 1, hidden: 2, data: new Float32Array([1, Infinity]) },
        }],
      }),
    "INVALID_ARGUMENT",
  );
  assert.equal(store.stats().documents, 0);
});

Deno.test("store: BM25 scores match a hand computation", () => {
  using store = DocumentStore.open(tempPath());
  // Chunk lengths 3, 2, 4 → avgdl = 3; N = 3.
  store.addDocument({
    source: "d1",
    group: "g1",
    chunks: [chunk("Apple, banana; APPLE!", 3, 1, 2, 1), chunk("banana cherry", 2, 1, 2, 2)],
  });
  store.addDocument({ source: "d2", group: "g2", chunks: [chunk("cherry cherry cherry date", 4, 1, 2, 3)] });

  const k1 = 1.2, b = 0.75;
  const idfApple = Math.log(1 + (3 - 1 + 0.5) / (1 + 0.5)); // df 1
  const idfCherry = Math.log(1 + (3 - 2 + 0.5) / (2 + 0.5)); // df 2
  const expectA = idfApple * (2 * (k1 + 1)) / (2 + k1 * (1 - b + b * 3 / 3));
  const expectB = idfCherry * (1 * (k1 + 1)) / (1 + k1 * (1 - b + b * 2 / 3));
  const expectC = idfCherry * (3 * (k1 + 1)) / (3 + k1 * (1 - b + b * 4 / 3));
  // Same numbers, simplified by hand.
  assert.ok(Math.abs(expectA - Math.log(8 / 3) * 1.375) < 1e-12);
  assert.ok(Math.abs(expectB - Math.log(1.6) * 2.2 / 1.9) < 1e-12);
  assert.ok(Math.abs(expectC - Math.log(1.6) * 6.6 / 4.5) < 1e-12);

  const hits = store.retrieve("apple Cherry");
  assert.deepEqual(hits.map((h) => h.text), [
    "Apple, banana; APPLE!",
    "cherry cherry cherry date",
    "banana cherry",
  ]);
  const expected = [expectA, expectC, expectB];
  hits.forEach((h, i) => assert.ok(Math.abs(h.score - expected[i]) < 1e-9, `${h.score} vs ${expected[i]}`));
  assert.equal(hits[1].group, "g2");
  assert.equal(hits[1].vectors.rows, 1);

  assert.equal(store.retrieve("apple cherry", { k: 2 }).length, 2);
  assert.equal(store.retrieve("apple cherry", { k: 1 })[0].text, "Apple, banana; APPLE!");
  const g2 = store.retrieve("apple cherry", { group: "g2" });
  assert.deepEqual(g2.map((h) => h.text), ["cherry cherry cherry date"]);
  assert.ok(Math.abs(g2[0].score - expectC) < 1e-9);
  assert.deepEqual(store.retrieve("cherry", { group: "nope" }), []);
  assert.deepEqual(store.retrieve("zebra quokka"), []);
  assert.deepEqual(store.retrieve(""), []);
  assert.deepEqual(store.retrieve("  ,;! "), []);
  assertKvfold(() => store.retrieve("apple", { k: 0 }), "INVALID_ARGUMENT");
});

Deno.test("store: a failed addDocument leaves no trace; other connections see only commits", () => {
  const path = tempPath();
  using store = DocumentStore.open(path);
  using other = DocumentStore.open(path);
  store.addDocument({ source: "good", chunks: [chunk("good words here", 3, 1, 2, 1)] });
  assert.ok(other.hasDocument("good"));

  const nan = vectors(2, 2, 9);
  nan.data[3] = NaN;
  assertKvfold(
    () =>
      store.addDocument({
        source: "bad",
        group: "bad-group",
        chunks: [
          chunk("unique alpha", 1, 1, 2, 2),
          { text: "unique beta", tokens: 1, vectors: nan },
          chunk("unique gamma", 1, 1, 2, 3),
        ],
      }),
    "INVALID_ARGUMENT",
    /NaN/,
  );
  for (const s of [store, other]) {
    assert.ok(!s.hasDocument("bad"));
    assert.equal(s.stats().documents, 1);
    assert.equal(s.stats().chunks, 1);
    assert.deepEqual(s.stats().groups, []);
    assert.deepEqual(s.retrieve("unique alpha"), []);
  }
  assert.equal(rawCount(path, "SELECT COUNT(*) AS n FROM postings WHERE term IN ('unique', 'alpha')"), 0);
  assert.equal(rawCount(path, "SELECT COUNT(*) AS n FROM chunks"), 1);
  assert.equal(rawCount(path, "SELECT COUNT(*) AS n FROM documents"), 1);

  // The store still works after the rollback, and the other connection sees the new commit.
  store.addDocument({ source: "later", chunks: [chunk("later text", 2, 1, 2, 4)] });
  assert.equal(other.retrieve("later")[0].source, "later");
  assert.equal(other.stats().documents, 2);
});

Deno.test("store: reopen, schema version, non-SQLite file, duplicates and replace", () => {
  const path = tempPath();
  const input = chunk("persistent text", 6, 2, 2, 1);
  {
    using store = DocumentStore.open(path);
    store.addDocument({ source: "p", group: "g", metadata: { k: 1 }, chunks: [input] });
    assertKvfold(
      () => store.addDocument({ source: "p", chunks: [chunk("dup", 1, 1, 2, 2)] }),
      "INVALID_STATE",
      /already/,
    );
  }
  {
    using store = DocumentStore.open(path);
    const [hit] = store.retrieve("persistent");
    assert.equal(hit.source, "p");
    assert.equal(hit.group, "g");
    assert.deepEqual(hit.metadata, { k: 1 });
    assert.deepEqual(hit.vectors.data, bf16Rounded(input.vectors.data));
    assert.equal(store.stats().tokensIn, 6);

    const id = store.addDocument(
      {
        source: "p",
        group: "h",
        chunks: [chunk("replacement words", 3, 1, 2, 3), chunk("more", 2, 1, 2, 4)],
      },
      { replace: true },
    );
    assert.deepEqual(store.retrieve("persistent"), []);
    const hits = store.retrieve("replacement");
    assert.equal(hits[0].documentId, id);
    assert.equal(hits[0].group, "h");
    assert.deepEqual(hits[0].metadata, {});
    const s = store.stats();
    assert.equal(s.documents, 1);
    assert.equal(s.chunks, 2);
    assert.deepEqual(s.groups, ["h"]);
    assert.equal(rawCount(path, "SELECT COUNT(*) AS n FROM postings WHERE term = 'persistent'"), 0);
    store.close();
    assertKvfold(() => store.stats(), "INVALID_STATE");
  }
  {
    using ro = DocumentStore.open(path, { readOnly: true });
    assert.equal(ro.stats().chunks, 2);
    assertKvfold(() => ro.removeDocument("p"), "INVALID_STATE");
  }

  const db = new DatabaseSync(path);
  db.prepare("UPDATE meta SET value = '99' WHERE key = 'schema_version'").run();
  db.close();
  assertKvfold(
    () => DocumentStore.open(path),
    "UNSUPPORTED",
    /schema version 99 is newer than this kvfold \(1\)/,
  );

  const junk = join(tempDirSync("kvfold_store_"), "junk.kvfold");
  Deno.writeTextFileSync(junk, "this is definitely not a SQLite database, just some text\n".repeat(100));
  assertKvfold(() => DocumentStore.open(junk), "FORMAT");
});

Deno.test("store: getDocument lists a document's chunk ids in ordinal order", () => {
  const path = tempPath();
  using store = DocumentStore.open(path);
  // Interleave two documents so chunk ids of one are not contiguous.
  store.addDocument({ source: "other", chunks: [chunk("other zero", 1, 1, 2, 9)] });
  const chunks = [chunk("zero", 4, 2, 2, 1), chunk("one", 3, 1, 2, 2), chunk("two", 5, 3, 2, 3)];
  const id = store.addDocument({ source: "d", group: "g", metadata: { n: 1 }, chunks });
  store.addDocument({ source: "later", chunks: [chunk("later zero", 1, 1, 2, 8)] });

  const doc = store.getDocument("d");
  assert.ok(doc !== undefined);
  assert.equal(doc.documentId, id);
  assert.equal(doc.source, "d");
  assert.equal(doc.group, "g");
  assert.deepEqual(doc.metadata, { n: 1 });
  assert.equal(doc.tokens, 12);
  assert.equal(doc.vectors, 6);
  const db = new DatabaseSync(path, { readOnly: true });
  const want = db.prepare("SELECT id FROM chunks WHERE document_id = ? ORDER BY ordinal").all(id)
    .map((r) => Number(r.id));
  db.close();
  assert.deepEqual(doc.chunkIds, want);
  const got = store.getChunks(doc.chunkIds);
  assert.deepEqual(got.map((c) => c.ordinal), [0, 1, 2]);
  assert.deepEqual(got.map((c) => c.text), ["zero", "one", "two"]);
  assert.ok(got.every((c) => c.documentId === id && c.source === "d"));
  for (const [i, c] of got.entries()) {
    assert.deepEqual(c.vectors.data, bf16Rounded(chunks[i].vectors.data));
  }
  assert.equal(store.getDocument("other")!.group, null);
  assert.deepEqual(store.getDocument("other")!.metadata, {});

  assert.equal(store.getDocument("missing"), undefined);
  assert.equal(store.getDocument(""), undefined);
  assertKvfold(() => store.getDocument(1 as unknown as string), "INVALID_ARGUMENT");

  // replace: a new document id and new chunks; the old chunk ids are gone.
  const id2 = store.addDocument(
    { source: "d", chunks: [chunk("fresh one", 2, 1, 2, 4), chunk("fresh two", 2, 1, 2, 5)] },
    { replace: true },
  );
  const replaced = store.getDocument("d")!;
  assert.equal(replaced.documentId, id2);
  assert.notEqual(id2, id);
  assert.equal(replaced.group, null);
  assert.deepEqual(replaced.metadata, {});
  assert.equal(replaced.tokens, 4);
  assert.equal(replaced.vectors, 2);
  assert.equal(replaced.chunkIds.length, 2);
  assert.ok(replaced.chunkIds.every((c) => !doc.chunkIds.includes(c)));
  assert.deepEqual(store.getChunks(replaced.chunkIds).map((c) => c.text), ["fresh one", "fresh two"]);
  assertKvfold(() => store.getChunks(doc.chunkIds), "INVALID_ARGUMENT", /does not exist/);

  assert.ok(store.removeDocument("d"));
  assert.equal(store.getDocument("d"), undefined);
  store.close();
  assertKvfold(() => store.getDocument("other"), "INVALID_STATE");
});

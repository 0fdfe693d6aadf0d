/**
 * The store suite (tests/store_test.ts's cases) through the `Store` interface, once per backend:
 * SQLite and PostgreSQL (see `_store_backends.ts`; the PostgreSQL half needs
 * KVFOLD_TEST_POSTGRES_URL, which `.ci/run` sets).
 */

import assert from "node:assert/strict";
import type { NewChunk, StoredVectors } from "../src/store.ts";
import { bf16ToF32, f32ToBf16 } from "../src/formats/safetensors.ts";
import { rejectsWith } from "./_kvfold_asserts.ts";
import { storeTest } from "./_store_backends.ts";

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

storeTest("store: round trip of documents, chunks, vectors and stats", async (b, backend) => {
  await using store = await b.open();
  assert.equal(store.backend, backend.name);
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
  const idA = await store.addDocument(docA);
  const idB = await store.addDocument(docB);
  assert.notEqual(idA, idB);
  assert.ok(await store.hasDocument("a.md"));
  assert.ok(!(await store.hasDocument("c.md")));
  assert.deepEqual(await store.listSources(), ["a.md", "b.md"]);

  const ids: number[] = [];
  for (const [doc, n] of [[idA, 2], [idB, 3]] as const) {
    for (let o = 0; o < n; o++) {
      ids.push(await b.raw("SELECT id FROM chunks WHERE document_id = ? AND ordinal = ?", doc, o));
    }
  }
  assert.equal(await b.raw("SELECT COUNT(*) FROM chunks WHERE dtype <> 'bf16'"), 0);
  assert.equal(ids.length, 5);

  // In a non-sorted order, to check order is kept.
  const order = [ids[3], ids[0], ids[4], ids[1], ids[2]];
  const got = await store.getChunks(order);
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
  // A chunk asked for twice comes twice.
  assert.deepEqual((await store.getChunks([ids[1], ids[1]])).map((c) => c.chunkId), [ids[1], ids[1]]);

  const s = await store.stats();
  assert.equal(s.documents, 2);
  assert.equal(s.chunks, 5);
  assert.equal(s.tokensIn, 10 + 7 + 5 + 8 + 9);
  assert.equal(s.vectorsKept, 2 + 1 + 3 + 1 + 2);
  assert.equal(s.ratio, 39 / 9);
  assert.equal(s.vectorBytes, 2 * (2 * 3 + 1 * 3 + 3 * 4 + 1 * 4 + 2 * 4));
  assert.ok(s.fileBytes > s.vectorBytes);
  assert.deepEqual(s.groups, ["papers"]);

  await rejectsWith(store.getChunks([ids[0], 424242]), "INVALID_ARGUMENT", /chunk 424242 does not exist/);

  assert.equal(await store.removeDocument("a.md"), true);
  assert.equal(await store.removeDocument("a.md"), false);
  assert.equal((await store.stats()).chunks, 3);
  assert.equal(await b.raw("SELECT COUNT(*) AS n FROM postings WHERE term = 'first'"), 0);
  await rejectsWith(
    store.getChunks([ids[0]]),
    "INVALID_ARGUMENT",
    new RegExp(`chunk ${ids[0]} does not exist`),
  );
});

storeTest("store: addDocument argument checks", async (b) => {
  await using store = await b.open();
  const ok = chunk("x", 1, 1, 2, 1);
  await rejectsWith(store.addDocument({ source: "a", chunks: [] }), "INVALID_ARGUMENT");
  await rejectsWith(store.addDocument({ source: "", chunks: [ok] }), "INVALID_ARGUMENT");
  await rejectsWith(
    store.addDocument({
      source: "a",
      chunks: [{ text: "x", tokens: 1, vectors: { rows: 2, hidden: 2, data: new Float32Array(3) } }],
    }),
    "INVALID_ARGUMENT",
    /rows\*hidden/,
  );
  await rejectsWith(
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
  assert.equal((await store.stats()).documents, 0);
});

storeTest("store: BM25 scores match a hand computation", async (b) => {
  await using store = await b.open();
  // Chunk lengths 3, 2, 4 → avgdl = 3; N = 3.
  await store.addDocument({
    source: "d1",
    group: "g1",
    chunks: [chunk("Apple, banana; APPLE!", 3, 1, 2, 1), chunk("banana cherry", 2, 1, 2, 2)],
  });
  await store.addDocument({
    source: "d2",
    group: "g2",
    chunks: [chunk("cherry cherry cherry date", 4, 1, 2, 3)],
  });

  const k1 = 1.2, bb = 0.75;
  const idfApple = Math.log(1 + (3 - 1 + 0.5) / (1 + 0.5)); // df 1
  const idfCherry = Math.log(1 + (3 - 2 + 0.5) / (2 + 0.5)); // df 2
  const expectA = idfApple * (2 * (k1 + 1)) / (2 + k1 * (1 - bb + bb * 3 / 3));
  const expectB = idfCherry * (1 * (k1 + 1)) / (1 + k1 * (1 - bb + bb * 2 / 3));
  const expectC = idfCherry * (3 * (k1 + 1)) / (3 + k1 * (1 - bb + bb * 4 / 3));
  // Same numbers, simplified by hand.
  assert.ok(Math.abs(expectA - Math.log(8 / 3) * 1.375) < 1e-12);
  assert.ok(Math.abs(expectB - Math.log(1.6) * 2.2 / 1.9) < 1e-12);
  assert.ok(Math.abs(expectC - Math.log(1.6) * 6.6 / 4.5) < 1e-12);

  const hits = await store.retrieve("apple Cherry");
  assert.deepEqual(hits.map((h) => h.text), [
    "Apple, banana; APPLE!",
    "cherry cherry cherry date",
    "banana cherry",
  ]);
  const expected = [expectA, expectC, expectB];
  hits.forEach((h, i) => assert.ok(Math.abs(h.score - expected[i]) < 1e-9, `${h.score} vs ${expected[i]}`));
  assert.equal(hits[1].group, "g2");
  assert.equal(hits[1].vectors.rows, 1);

  assert.equal((await store.retrieve("apple cherry", { k: 2 })).length, 2);
  assert.equal((await store.retrieve("apple cherry", { k: 1 }))[0].text, "Apple, banana; APPLE!");
  const g2 = await store.retrieve("apple cherry", { group: "g2" });
  assert.deepEqual(g2.map((h) => h.text), ["cherry cherry cherry date"]);
  assert.ok(Math.abs(g2[0].score - expectC) < 1e-9);
  assert.deepEqual(await store.retrieve("cherry", { group: "nope" }), []);
  assert.deepEqual(await store.retrieve("zebra quokka"), []);
  assert.deepEqual(await store.retrieve(""), []);
  assert.deepEqual(await store.retrieve("  ,;! "), []);
  await rejectsWith(store.retrieve("apple", { k: 0 }), "INVALID_ARGUMENT");
});

storeTest("store: a failed addDocument leaves no trace; other connections see only commits", async (b) => {
  await using store = await b.open();
  await using other = await b.open();
  await store.addDocument({ source: "good", chunks: [chunk("good words here", 3, 1, 2, 1)] });
  assert.ok(await other.hasDocument("good"));

  const nan = vectors(2, 2, 9);
  nan.data[3] = NaN;
  await rejectsWith(
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
    assert.ok(!(await s.hasDocument("bad")));
    const stats = await s.stats();
    assert.equal(stats.documents, 1);
    assert.equal(stats.chunks, 1);
    assert.deepEqual(stats.groups, []);
    assert.deepEqual(await s.retrieve("unique alpha"), []);
  }
  assert.equal(await b.raw("SELECT COUNT(*) AS n FROM postings WHERE term IN ('unique', 'alpha')"), 0);
  assert.equal(await b.raw("SELECT COUNT(*) AS n FROM chunks"), 1);
  assert.equal(await b.raw("SELECT COUNT(*) AS n FROM documents"), 1);

  // The store still works after the rollback, and the other connection sees the new commit.
  await store.addDocument({ source: "later", chunks: [chunk("later text", 2, 1, 2, 4)] });
  assert.equal((await other.retrieve("later"))[0].source, "later");
  assert.equal((await other.stats()).documents, 2);
});

storeTest("store: reopen, schema version, duplicates and replace", async (b) => {
  const input = chunk("persistent text", 6, 2, 2, 1);
  {
    await using store = await b.open();
    await store.addDocument({ source: "p", group: "g", metadata: { k: 1 }, chunks: [input] });
    await rejectsWith(
      store.addDocument({ source: "p", chunks: [chunk("dup", 1, 1, 2, 2)] }),
      "INVALID_STATE",
      /already/,
    );
  }
  {
    await using store = await b.open();
    const [hit] = await store.retrieve("persistent");
    assert.equal(hit.source, "p");
    assert.equal(hit.group, "g");
    assert.deepEqual(hit.metadata, { k: 1 });
    assert.deepEqual(hit.vectors.data, bf16Rounded(input.vectors.data));
    assert.equal((await store.stats()).tokensIn, 6);

    const id = await store.addDocument(
      {
        source: "p",
        group: "h",
        chunks: [chunk("replacement words", 3, 1, 2, 3), chunk("more", 2, 1, 2, 4)],
      },
      { replace: true },
    );
    assert.deepEqual(await store.retrieve("persistent"), []);
    const hits = await store.retrieve("replacement");
    assert.equal(hits[0].documentId, id);
    assert.equal(hits[0].group, "h");
    assert.deepEqual(hits[0].metadata, {});
    const s = await store.stats();
    assert.equal(s.documents, 1);
    assert.equal(s.chunks, 2);
    assert.deepEqual(s.groups, ["h"]);
    assert.equal(await b.raw("SELECT COUNT(*) AS n FROM postings WHERE term = 'persistent'"), 0);
    await store.close();
    await rejectsWith(store.stats(), "INVALID_STATE");
  }
  {
    await using ro = await b.open({ readOnly: true });
    assert.equal((await ro.stats()).chunks, 2);
    await rejectsWith(ro.removeDocument("p"), "INVALID_STATE");
    await rejectsWith(ro.addDocument({ source: "q", chunks: [chunk("q", 1, 1, 2, 5)] }), "INVALID_STATE");
  }
  await b.setSchemaVersion(99);
  await rejectsWith(b.open(), "UNSUPPORTED", /schema version 99 is newer than this kvfold \(\d+\)/);
  await rejectsWith(b.open({ readOnly: true }), "UNSUPPORTED", /schema version 99/);
});

storeTest("store: getDocument lists a document's chunk ids in ordinal order", async (b) => {
  await using store = await b.open();
  // Interleave two documents so chunk ids of one are not contiguous.
  await store.addDocument({ source: "other", chunks: [chunk("other zero", 1, 1, 2, 9)] });
  const chunks = [chunk("zero", 4, 2, 2, 1), chunk("one", 3, 1, 2, 2), chunk("two", 5, 3, 2, 3)];
  const id = await store.addDocument({ source: "d", group: "g", metadata: { n: 1 }, chunks });
  await store.addDocument({ source: "later", chunks: [chunk("later zero", 1, 1, 2, 8)] });

  const doc = await store.getDocument("d");
  assert.ok(doc !== undefined);
  assert.equal(doc.documentId, id);
  assert.equal(doc.source, "d");
  assert.equal(doc.group, "g");
  assert.deepEqual(doc.metadata, { n: 1 });
  assert.equal(doc.tokens, 12);
  assert.equal(doc.vectors, 6);
  const want = [];
  for (let o = 0; o < 3; o++) {
    want.push(await b.raw("SELECT id FROM chunks WHERE document_id = ? AND ordinal = ?", id, o));
  }
  assert.deepEqual(doc.chunkIds, want);
  const got = await store.getChunks(doc.chunkIds);
  assert.deepEqual(got.map((c) => c.ordinal), [0, 1, 2]);
  assert.deepEqual(got.map((c) => c.text), ["zero", "one", "two"]);
  assert.ok(got.every((c) => c.documentId === id && c.source === "d"));
  for (const [i, c] of got.entries()) assert.deepEqual(c.vectors.data, bf16Rounded(chunks[i].vectors.data));
  assert.equal((await store.getDocument("other"))!.group, null);
  assert.deepEqual((await store.getDocument("other"))!.metadata, {});

  assert.equal(await store.getDocument("missing"), undefined);
  assert.equal(await store.getDocument(""), undefined);
  await rejectsWith(store.getDocument(1 as unknown as string), "INVALID_ARGUMENT");

  // replace: a new document id and new chunks; the old chunk ids are gone.
  const id2 = await store.addDocument(
    { source: "d", chunks: [chunk("fresh one", 2, 1, 2, 4), chunk("fresh two", 2, 1, 2, 5)] },
    { replace: true },
  );
  const replaced = (await store.getDocument("d"))!;
  assert.equal(replaced.documentId, id2);
  assert.notEqual(id2, id);
  assert.equal(replaced.group, null);
  assert.deepEqual(replaced.metadata, {});
  assert.equal(replaced.tokens, 4);
  assert.equal(replaced.vectors, 2);
  assert.equal(replaced.chunkIds.length, 2);
  assert.ok(replaced.chunkIds.every((c) => !doc.chunkIds.includes(c)));
  assert.deepEqual((await store.getChunks(replaced.chunkIds)).map((c) => c.text), ["fresh one", "fresh two"]);
  await rejectsWith(store.getChunks(doc.chunkIds), "INVALID_ARGUMENT", /does not exist/);

  assert.ok(await store.removeDocument("d"));
  assert.equal(await store.getDocument("d"), undefined);
  await store.close();
  await rejectsWith(store.getDocument("other"), "INVALID_STATE");
});

storeTest("store: a changed chunk row is refused by its checksum on either backend", async (b) => {
  await using store = await b.open();
  await store.addDocument({ source: "c", chunks: [chunk("checked words", 2, 1, 2, 1)] });
  const [hit] = await store.retrieve("checked");
  await b.exec("UPDATE chunks SET tokens = tokens + 1 WHERE id = ?", hit.chunkId);
  await rejectsWith(store.getChunks([hit.chunkId]), "FORMAT", /does not match its checksum/);
});

storeTest("store: concurrent writers of one source end with exactly one document", async (b) => {
  const stores = await Promise.all([b.open(), b.open(), b.open()]);
  try {
    // Every writer replaces the same sources at once, and adds one of its own.
    await Promise.all(stores.flatMap((s, w) => [
      ...["x", "y", "z"].map((src, i) =>
        s.addDocument({ source: src, chunks: [chunk(`w${w} ${src}`, 1, 1, 2, w * 3 + i)] }, { replace: true })
      ),
      s.addDocument({ source: `own${w}`, chunks: [chunk(`own ${w}`, 1, 1, 2, 20 + w)] }),
    ]));
    assert.deepEqual((await stores[0].listSources()).sort(), ["own0", "own1", "own2", "x", "y", "z"]);
    assert.equal(await b.raw("SELECT COUNT(*) FROM documents"), 6);
    assert.equal(await b.raw("SELECT COUNT(*) FROM chunks"), 6);
  } finally {
    for (const s of stores) await s.close();
  }
});

storeTest("store: impossible counts are refused naming the column, on either backend", async (b) => {
  await using store = await b.open();
  await store.addDocument({ source: "a", chunks: [chunk("one", 5, 1, 2, 1), chunk("two", 4, 1, 2, 2)] });
  const [first, second] = (await store.getDocument("a"))!.chunkIds;
  await b.exec("UPDATE chunks SET tokens = -5 WHERE id = ?", second);
  await rejectsWith(
    store.stats(),
    "FORMAT",
    new RegExp(`chunks\\.tokens of chunk ${second} is -5; it cannot be below 0`),
  );
  await rejectsWith(store.getDocument("a"), "FORMAT", new RegExp(`chunks\\.tokens of chunk ${second} is -5`));
  await rejectsWith(
    store.getChunks([second]),
    "FORMAT",
    new RegExp(`chunks\\.tokens of chunk ${second} is -5`),
  );
  assert.equal((await store.getChunks([first]))[0].tokens, 5); // the other chunk still reads
  await b.exec("UPDATE chunks SET tokens = 4, checksum = NULL, rows = 0 WHERE id = ?", second);
  await rejectsWith(
    store.stats(),
    "FORMAT",
    new RegExp(`chunks\\.rows of chunk ${second} is 0; it cannot be below 1`),
  );
  await b.exec("UPDATE chunks SET rows = 1, hidden = 3 WHERE id = ?", second);
  await rejectsWith(store.getChunks([second]), "FORMAT", /has 4 bytes, not 2 × rows × hidden/);
});

// Hostile store paths and processes: several processes creating one store, FIFOs, devices and
// directories, and the damaged store of the fuzz run through the API and the CLI. Never a hang,
// a stack trace or a lost write. Hostile file contents: hostile_store_test.ts.
import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { join } from "node:path";
import { DocumentStore } from "../src/store.ts";
import { KvfoldError } from "../src/errors.ts";
import { bf16ToF32, f32ToBf16 } from "../src/formats/safetensors.ts";
import { repoRoot } from "../src/_native_build.ts";
import { runCli, tempDirSync } from "./_fixtures.ts";
import { tempStore, throwsKvfold as assertKvfold } from "./_kvfold_asserts.ts";
import { raceChunks } from "./_store_race_child.ts";

const CORRUPT_FIXTURE = `${repoRoot()}/tests/fixtures/hostile/store-corrupt.sqlite`;

// --- concurrent creation ---------------------------------------------------------------------

Deno.test("hostile store: processes creating one new store at once all succeed; nothing lost or duplicated", async () => {
  const writers = 6;
  const dir = tempDirSync("kvfold_hostile_store_");
  const path = join(dir, "race.kvfold");
  const go = join(dir, "go");
  const children = Array.from({ length: writers }, (_, i) =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `${repoRoot()}/tests/_store_race_child.ts`, path, String(i), go],
      stdout: "piped",
      stderr: "piped",
    }).spawn());
  // Start them together once all are waiting (a cap, not a timing assertion: a stuck start fails).
  for (let waited = 0; [...Array(writers).keys()].some((i) => !exists(`${go}.ready-${i}`)); waited++) {
    assert.ok(waited < 6000, "the writers did not start");
    await new Promise((r) => setTimeout(r, 20));
  }
  Deno.writeTextFileSync(go, "");
  const results = await Promise.all(children.map((c) => c.output()));
  const dec = new TextDecoder();
  results.forEach((r, i) => assert.equal(r.code, 0, `writer ${i}: ${dec.decode(r.stderr)}`));

  using store = DocumentStore.open(path, { readOnly: true, integrityCheck: true });
  const s = store.stats();
  assert.equal(s.documents, writers * 2);
  assert.equal(s.chunks, writers * 4);
  for (let i = 0; i < writers; i++) {
    for (const doc of [0, 1]) {
      const want = raceChunks(i, doc);
      const stored = store.getDocument(`writer-${i}-doc-${doc}`)!;
      const got = store.getChunks(stored.chunkIds);
      assert.deepEqual(got.map((c) => c.text), want.map((c) => c.text));
      got.forEach((c, k) =>
        assert.deepEqual(c.vectors.data, want[k].vectors.data.map((x) => bf16ToF32(f32ToBf16(x))))
      );
    }
  }
  const db = new DatabaseSync(path, { readOnly: true });
  assert.deepEqual(
    db.prepare("SELECT key, COUNT(*) AS n FROM meta GROUP BY key ORDER BY key").all().map((
      r,
    ) => [r.key, r.n]),
    [["created_at", 1], ["created_by", 1], ["schema_version", 1]],
  );
  assert.equal(db.prepare("SELECT COUNT(*) AS n FROM postings WHERE term = 'writer'").get()!.n, writers * 4);
  db.close();
});

// --- paths that are not files ----------------------------------------------------------------

function mkfifo(path: string): void {
  const r = new Deno.Command("mkfifo", { args: [path] }).outputSync();
  assert.equal(r.code, 0, new TextDecoder().decode(r.stderr));
}

Deno.test("hostile store: FIFO, device and directory paths are refused with IO errors naming the path", async () => {
  const dir = tempDirSync("kvfold_hostile_store_");
  const fifo = join(dir, "fifo.kvfold");
  mkfifo(fifo);
  for (const readOnly of [false, true]) {
    assertKvfold(
      () => DocumentStore.open(fifo, { readOnly }),
      "IO",
      /fifo\.kvfold is a FIFO, not a regular file/,
    );
    assertKvfold(
      () => DocumentStore.open("/dev/null", { readOnly }),
      "IO",
      /\/dev\/null is a device, not a regular file/,
    );
    assertKvfold(() => DocumentStore.open(dir, { readOnly }), "IO", /is a directory, not a file/);
  }
  const file = join(dir, "plain.txt");
  Deno.writeTextFileSync(file, "x");
  assertKvfold(
    () => DocumentStore.open(join(file, "kb.kvfold")),
    "IO",
    /plain\.txt\/kb\.kvfold: a folder of the path is a file/,
  );
  assertKvfold(
    () => DocumentStore.open(join(dir, "no", "kb.kvfold")),
    "IO",
    /its folder .*\/no does not exist/,
  );
  assertKvfold(
    () => DocumentStore.open(join(dir, "absent.kvfold"), { readOnly: true }),
    "IO",
    /absent\.kvfold does not exist/,
  );
  // A side file SQLite would open next to the store: the same checks.
  const store = join(dir, "kb.kvfold");
  DocumentStore.open(store).close();
  mkfifo(`${store}-wal`);
  assertKvfold(() => DocumentStore.open(store, { readOnly: true }), "IO", /kb\.kvfold-wal is a FIFO/);

  // Through the CLI: a message and exit code 1, not a hang or a stack trace.
  for (
    const args of [
      ["store", "stats", fifo],
      ["store", "stats", "--store", "/dev/zero"],
      ["store", "stats", dir],
      ["ask", "--model", join(dir, "no-model"), "--store", fifo, "what?"],
    ]
  ) {
    const r = await runCli(...args);
    assert.equal(r.code, 1, `${args.join(" ")}: ${r.err}`);
    assert.match(r.err, /Cannot open store: .* (is a FIFO|is a device|is a directory)/);
    assert.match(r.err, /\[IO\]/);
    assert.doesNotMatch(r.err, /^\s+at /m);
  }
});

// --- the shared reproduction -----------------------------------------------------------------

Deno.test("hostile store: the damaged store of the fuzz run is a FORMAT error through the API and the CLI", async () => {
  const path = tempStore("store-corrupt.sqlite");
  Deno.copyFileSync(CORRUPT_FIXTURE, path);
  Deno.chmodSync(path, 0o644);
  for (const readOnly of [true, false]) {
    const e = assertKvfold(() => DocumentStore.open(path, { readOnly }), "FORMAT", /is damaged/);
    assert.ok(e.message.includes(path), e.message);
  }
  // Without the check at open, each read gives data or a FORMAT error naming the file.
  using store = DocumentStore.open(path, { readOnly: true, integrityCheck: false });
  const reads: (() => unknown)[] = [
    () => store.stats(),
    () => store.retrieve("the of and a to in", { k: 50 }),
    ...Array.from({ length: 16 }, (_, i) => () => store.getChunks([i + 1])),
    ...[0, 1, 2].map((i) => () => store.getDocument(`/srv/kvfold/demo/store/doc${i}.txt`)),
  ];
  let failures = 0;
  for (const read of reads) {
    try {
      read();
    } catch (e) {
      if (e instanceof KvfoldError && e.code === "INVALID_ARGUMENT") continue; // chunk 16 does not exist
      assert.ok(e instanceof KvfoldError && e.code === "FORMAT", `${(e as Error)?.stack ?? e}`);
      assert.ok(e.message.includes(path), e.message);
      failures++;
    }
  }
  assert.ok(failures > 0, "some read meets the damaged page");

  for (const args of [["store", "stats", path], ["store", "stats", "--store", path]]) {
    const r = await runCli(...args);
    assert.equal(r.code, 1, r.err);
    assert.ok(r.err.includes(`Cannot open store: ${path} is damaged`), r.err);
    assert.match(r.err, /\[FORMAT\]/);
    assert.doesNotMatch(r.err, /^\s+at /m);
    assert.equal(r.out, "");
  }
});

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

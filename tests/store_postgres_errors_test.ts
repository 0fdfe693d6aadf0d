/**
 * A PostgreSQL store meeting what goes wrong: an unreachable server, refused credentials, a missing
 * database, a schema of other tables or a damaged layout, a newer kvfold's schema, and a connection
 * dropped in the middle of a transaction. Each is a clear `KvfoldError` naming the store (never its
 * password), and nothing committed is lost. Needs KVFOLD_TEST_POSTGRES_URL (see `_store_backends.ts`).
 */

import assert from "node:assert/strict";
import pg from "npm:pg@8.23.1";
import { openStore } from "../mod.ts";
import { rejectsWith } from "./_kvfold_asserts.ts";
import { pgRaw, POSTGRES_URL, postgresTest } from "./_store_backends.ts";

const vectors = (seed: number) => ({ rows: 1, hidden: 2, data: new Float32Array([seed, -seed]) });

postgresTest("postgres errors: unreachable server, refused credentials, missing database", async (b) => {
  const url = new URL(b.location);
  // Nothing listens on port 1.
  const unreachable = new URL(url);
  unreachable.port = "1";
  unreachable.password = "s3cret-pw";
  const e1 = await rejectsWith(
    openStore(unreachable.toString()),
    "IO",
    /Cannot open store: postgres:\/\/.*:1\/.*the server is unreachable/,
  );
  assert.ok(!e1.message.includes("s3cret-pw"), e1.message);

  const wrong = new URL(url);
  wrong.password = "not-the-password";
  const e2 = await rejectsWith(openStore(wrong.toString()), "IO", /refused the credentials/);
  assert.ok(!e2.message.includes("not-the-password"), e2.message);

  const missing = new URL(url);
  missing.pathname = "/no_such_database_kvfold";
  await rejectsWith(openStore(missing.toString()), "IO", /database does not exist/);

  const badSchema = new URL(url);
  badSchema.searchParams.set("schema", "Robert'); DROP TABLE x;--");
  await rejectsWith(openStore(badSchema.toString()), "INVALID_ARGUMENT", /is not a lowercase SQL name/);

  // Read-only on a schema that holds no store: nothing is created.
  await rejectsWith(openStore(b.location, { readOnly: true }), "FORMAT", /holds no kvfold store/);
  assert.equal(
    (await pgRaw(undefined, "SELECT COUNT(*) AS n FROM pg_namespace WHERE nspname = ?", [
      url.searchParams.get("schema"),
    ]))[0].n,
    "0",
  );
});

postgresTest(
  "postgres errors: a schema of other tables, a damaged layout and a newer version are refused",
  async (b) => {
    const schema = new URL(b.location).searchParams.get("schema")!;
    await pgRaw(undefined, `CREATE SCHEMA ${schema}`);
    await pgRaw(schema, "CREATE TABLE documents (id int, title text)");
    await pgRaw(schema, "INSERT INTO documents VALUES (1, 'theirs')");
    await rejectsWith(
      openStore(b.location),
      "FORMAT",
      /holds tables kvfold did not create \(documents\) and no schema_version/,
    );
    // Their table is untouched.
    assert.equal((await pgRaw(schema, "SELECT title FROM documents"))[0].title, "theirs");
    await pgRaw(undefined, `DROP SCHEMA ${schema} CASCADE`);

    {
      await using store = await openStore(b.location);
      await store.addDocument({
        source: "kept",
        chunks: [{ text: "kept text", tokens: 2, vectors: vectors(1) }],
      });
    }
    await pgRaw(schema, "ALTER TABLE chunks DROP COLUMN length");
    await rejectsWith(openStore(b.location), "FORMAT", /lacks column chunks\.length/);
    await pgRaw(schema, "ALTER TABLE chunks ADD COLUMN length INTEGER NOT NULL DEFAULT 2");
    await pgRaw(schema, "INSERT INTO schema_version (version, applied_by) VALUES (7, 'kvfold 9')");
    await rejectsWith(
      openStore(b.location),
      "UNSUPPORTED",
      /schema version 7 is newer than this kvfold \(2\); upgrade kvfold/,
    );
    await pgRaw(schema, "DELETE FROM schema_version WHERE version = 7");
    await using store = await openStore(b.location, { readOnly: true });
    assert.equal((await store.retrieve("kept"))[0].source, "kept");
  },
);

postgresTest(
  "postgres errors: a connection dropped mid-transaction is an IO error; nothing committed is lost",
  async (b) => {
    await using store = await openStore(b.location);
    await store.addDocument({
      source: "before",
      chunks: [{ text: "committed words", tokens: 2, vectors: vectors(1) }],
    });
    // Another session holds the lock every writer of "victim" takes first, so the write waits inside
    // its transaction, where the server then drops it.
    const blocker = new pg.Client({ connectionString: POSTGRES_URL });
    await blocker.connect();
    try {
      await blocker.query("SELECT pg_advisory_lock(hashtext('kvfold source ' || 'victim'))");
      const write = store.addDocument({
        source: "victim",
        chunks: [{ text: "half written", tokens: 2, vectors: vectors(2) }, {
          text: "never",
          tokens: 1,
          vectors: vectors(3),
        }],
      });
      const failed = rejectsWith(
        write,
        "IO",
        /Cannot add document victim to store: postgres:.*connection to the server was lost/,
      );
      let pid: unknown;
      for (let i = 0; i < 200 && pid === undefined; i++) {
        const { rows } = await blocker.query(
          "SELECT pid FROM pg_stat_activity WHERE application_name = 'kvfold' AND wait_event_type = 'Lock' AND state = 'active'",
        );
        pid = rows[0]?.pid;
        if (pid === undefined) await new Promise((r) => setTimeout(r, 25));
      }
      assert.ok(pid !== undefined, "the write waits on the lock");
      // The transaction has begun and written the lock request; the server now drops its connection.
      assert.equal(
        (await blocker.query("SELECT state FROM pg_stat_activity WHERE pid = $1", [pid])).rows[0].state,
        "active",
      );
      await blocker.query("SELECT pg_terminate_backend($1)", [pid]);
      await failed;
    } finally {
      await blocker.end();
    }
    // Nothing of the dropped transaction; everything committed before it; the store keeps working.
    assert.equal(await store.hasDocument("victim"), false);
    assert.equal(await b.raw("SELECT COUNT(*) FROM chunks"), 1);
    assert.equal((await store.retrieve("committed"))[0].source, "before");
    await store.addDocument({
      source: "after",
      chunks: [{ text: "after words", tokens: 2, vectors: vectors(4) }],
    });
    assert.deepEqual(await store.listSources(), ["before", "after"]);
  },
);

/**
 * The store backends the parameterised store suite runs on: SQLite (a temp file) always, and
 * PostgreSQL when `KVFOLD_TEST_POSTGRES_URL` names a server (`.ci/run` starts one and sets it; in
 * CI, `CI=1`, its absence is a failure, not a skip). Each PostgreSQL test gets its own schema,
 * dropped afterwards.
 */

import { DatabaseSync } from "node:sqlite";
import { join } from "node:path";
import pg from "npm:pg@8.23.1";
import { openStore } from "../src/store/open_store.ts";
import type { Store } from "../src/store/store_api.ts";
import { tempDirSync } from "./_fixtures.ts";

/** The PostgreSQL server of the tests, or undefined. */
export const POSTGRES_URL = Deno.env.get("KVFOLD_TEST_POSTGRES_URL") || undefined;

/** Whether the PostgreSQL half must run (CI) rather than be skipped. */
const REQUIRED = Deno.env.get("CI") !== undefined && Deno.env.get("CI") !== "" && Deno.env.get("CI") !== "0";

/** One store of a test, on one backend. */
export interface BackendStore {
  /** The location to open (`openStore(location)`). */
  location: string;
  /** Opens the store at `location`. */
  open(options?: { readOnly?: boolean }): Promise<Store>;
  /** A number read with raw SQL (`?` placeholders), bypassing kvfold. */
  raw(sql: string, ...params: unknown[]): Promise<number>;
  /** Raw SQL run against the store, bypassing kvfold. */
  exec(sql: string, ...params: unknown[]): Promise<void>;
  /** Sets the recorded schema version. */
  setSchemaVersion(v: number): Promise<void>;
  /** Removes the store. */
  cleanup(): Promise<void>;
}

export interface Backend {
  name: "sqlite" | "postgres";
  /** Why the backend is skipped, or undefined when it runs. */
  skip?: string;
  create(): Promise<BackendStore>;
}

function sqliteBackend(): Backend {
  return {
    name: "sqlite",
    create() {
      const dir = tempDirSync("kvfold_store_");
      const path = join(dir, "store.kvfold");
      const withDb = <T>(fn: (db: DatabaseSync) => T): T => {
        const db = new DatabaseSync(path);
        try {
          return fn(db);
        } finally {
          db.close();
        }
      };
      return Promise.resolve({
        location: path,
        open: (options = {}) => openStore(path, options),
        raw: (sql, ...params) =>
          Promise.resolve(
            withDb((db) => Number(Object.values(db.prepare(sql).get(...(params as never[]))!)[0])),
          ),
        exec: (sql, ...params) =>
          Promise.resolve(withDb((db) => void db.prepare(sql).run(...(params as never[])))),
        setSchemaVersion: (v) =>
          Promise.resolve(withDb((db) => {
            db.prepare("UPDATE meta SET value = ? WHERE key = 'schema_version'").run(String(v));
          })),
        cleanup: () => Deno.remove(dir, { recursive: true }),
      });
    },
  };
}

/** `?` placeholders as PostgreSQL's `$1, $2, ...`. */
function numbered(sql: string): string {
  let i = 0;
  return sql.replace(/\?/g, () => `$${++i}`);
}

/** A URL of the test server with `?schema=NAME`. */
export function withSchema(url: string, schema: string): string {
  const u = new URL(url);
  u.searchParams.set("schema", schema);
  return u.toString();
}

/** Runs raw SQL on the test server (search_path `schema`). */
export async function pgRaw(schema: string | undefined, sql: string, params: unknown[] = []) {
  const client = new pg.Client({ connectionString: POSTGRES_URL });
  await client.connect();
  try {
    if (schema !== undefined) await client.query(`SET search_path = ${schema}`);
    return (await client.query(numbered(sql), params)).rows as Record<string, unknown>[];
  } finally {
    await client.end();
  }
}

let schemas = 0;

function postgresBackend(): Backend {
  return {
    name: "postgres",
    skip: POSTGRES_URL === undefined
      ? "KVFOLD_TEST_POSTGRES_URL is not set (.ci/run starts a PostgreSQL server and sets it)"
      : undefined,
    create() {
      const schema = `kvfold_t${Deno.pid}_${++schemas}_${Math.floor(Math.random() * 1e6)}`;
      const location = withSchema(POSTGRES_URL!, schema);
      return Promise.resolve({
        location,
        open: (options = {}) => openStore(location, options),
        raw: async (sql, ...params) => Number(Object.values((await pgRaw(schema, sql, params))[0])[0]),
        exec: async (sql, ...params) => void await pgRaw(schema, sql, params),
        setSchemaVersion: async (v) =>
          void await pgRaw(schema, "INSERT INTO schema_version (version, applied_by) VALUES (?, 'test')", [
            v,
          ]),
        cleanup: async () => void await pgRaw(undefined, `DROP SCHEMA IF EXISTS ${schema} CASCADE`),
      });
    },
  };
}

/** Both backends, SQLite first. */
export const BACKENDS: readonly Backend[] = [sqliteBackend(), postgresBackend()];

/**
 * Registers `fn` as one test per backend ("NAME [sqlite]", "NAME [postgres]"), each with a new
 * store removed afterwards. Without a server the PostgreSQL test is registered as ignored and says
 * why (once), except in CI, where it fails.
 */
export function storeTest(name: string, fn: (b: BackendStore, backend: Backend) => Promise<void>): void {
  for (const backend of BACKENDS) {
    const skipped = backend.skip !== undefined && !REQUIRED;
    Deno.test({
      name: `${name} [${backend.name}]`,
      ignore: skipped,
      // pg's pool timers end with the store; the sanitizers would see the sockets of other tests.
      sanitizeResources: false,
      sanitizeOps: false,
      fn: async () => {
        if (backend.skip !== undefined) {
          throw new Error(`The PostgreSQL tests must run in CI: ${backend.skip}`);
        }
        const b = await backend.create();
        try {
          await fn(b, backend);
        } finally {
          await b.cleanup();
        }
      },
    });
    if (skipped) noteSkip(backend);
  }
}

const noted = new Set<string>();
function noteSkip(backend: Backend): void {
  if (noted.has(backend.name)) return;
  noted.add(backend.name);
  console.warn(`store tests: the ${backend.name} half is SKIPPED: ${backend.skip}`);
}

/**
 * Registers `fn` as a PostgreSQL-only test with a new schema (its URL given), dropped afterwards;
 * skipped (saying why) without a server, failing in CI.
 */
export function postgresTest(name: string, fn: (b: BackendStore) => Promise<void>): void {
  const backend = BACKENDS[1];
  const skipped = backend.skip !== undefined && !REQUIRED;
  Deno.test({
    name: `${name} [postgres]`,
    ignore: skipped,
    sanitizeResources: false,
    sanitizeOps: false,
    fn: async () => {
      if (backend.skip !== undefined) throw new Error(`The PostgreSQL tests must run in CI: ${backend.skip}`);
      const b = await backend.create();
      try {
        await fn(b);
      } finally {
        await b.cleanup();
      }
    },
  });
  if (skipped) noteSkip(backend);
}

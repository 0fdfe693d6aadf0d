/**
 * The PostgreSQL side of a store: the `pg` client (node-postgres, pinned), a small pool per open
 * store, one place where the server's and the network's errors become `KvfoldError`s naming the
 * store, and transactions.
 *
 * Why `pg`: the most used PostgreSQL client for JavaScript (maintained since 2010), plain
 * parameterised queries with SQLSTATE codes on its errors, dedicated clients for transactions,
 * and it runs unchanged on Deno (npm:), Node.js and Bun.
 *
 * @module
 */

import pg from "npm:pg@8.23.1";
import { KvfoldError } from "../errors.ts";

/** A row as `pg` returns it. */
export type PgRow = Record<string, unknown>;

/** What a store runs statements on: the pool, or one client inside a transaction. */
export interface PgQueryable {
  query(sql: string, params?: unknown[]): Promise<{ rows: PgRow[]; rowCount: number | null }>;
}

interface PgClient extends PgQueryable {
  release(destroy?: boolean | Error): void;
  on(event: "error", fn: (e: Error) => void): void;
  off(event: "error", fn: (e: Error) => void): void;
}

interface PgPool extends PgQueryable {
  connect(): Promise<PgClient>;
  end(): Promise<void>;
  on(event: "error", fn: (e: Error) => void): void;
}

const INT8_OID = 20;

/** bigint columns (ids, sums) as numbers when exact, as bigints past 2^53 (refused by the readers). */
function parseInt8(text: string): number | bigint {
  const n = Number(text);
  return Number.isSafeInteger(n) ? n : BigInt(text);
}

const TYPES = {
  getTypeParser(oid: number, format?: string) {
    if (oid === INT8_OID) return parseInt8;
    return (pg.types.getTypeParser as (oid: number, format?: string) => unknown)(oid, format);
  },
};

/** A store location's URL with its password replaced, for messages and `Store.location`. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password !== "") u.password = "***";
    return u.toString();
  } catch {
    return url.replace(/:[^:@/]*@/, ":***@");
  }
}

/** The connection options of a store URL: the URL minus kvfold's own parameters (`schema`). */
export function parseStoreUrl(url: string): { connectionString: string; schema: string } {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new KvfoldError("INVALID_ARGUMENT", `Cannot open store: ${redactUrl(url)} is not a valid URL`);
  }
  const schema = u.searchParams.get("schema") ?? "kvfold";
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(schema)) {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      `Cannot open store: schema=${schema} in ${
        redactUrl(url)
      } is not a lowercase SQL name ([a-z_][a-z0-9_]*)`,
    );
  }
  u.searchParams.delete("schema");
  return { connectionString: u.toString(), schema };
}

const UNREACHABLE = new Set([
  "ECONNREFUSED",
  "ENOTFOUND",
  "EAI_AGAIN",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
]);

function isLostConnection(e: Error & { code?: string }): boolean {
  return e.code === "ECONNRESET" || e.code === "EPIPE" || /^(57P0[123]|08)/.test(e.code ?? "") ||
    /connection terminated|connection (was )?(closed|ended|lost)|terminating connection|Client has encountered a connection error/i
      .test(e.message);
}

/**
 * `e` as the `KvfoldError` a PostgreSQL store operation throws: `KvfoldError`s as they are, the
 * network and the server classified (unreachable, credentials, lost connection: IO; a foreign
 * layout: FORMAT), anything else not from `pg` (a bug of kvfold) as it is.
 */
export function pgFailure(location: string, action: string, e: unknown): unknown {
  if (e instanceof KvfoldError || !(e instanceof Error)) return e;
  const err = e as Error & { code?: string };
  const code = err.code ?? "";
  const io = (why: string) => new KvfoldError("IO", `Cannot ${action}: ${location}: ${why}`, { cause: e });
  if (UNREACHABLE.has(code)) return io(`the server is unreachable (${err.message})`);
  if (code === "28P01" || code === "28000") return io(`the server refused the credentials (${err.message})`);
  if (code === "3D000") return io(`the database does not exist (${err.message})`);
  if (code === "42501") return io(`permission denied (${err.message})`);
  if (isLostConnection(err)) {
    return io(`the connection to the server was lost (${err.message}); the transaction was rolled back`);
  }
  if (code === "42703" || code === "42P01" || code === "42804") {
    return new KvfoldError(
      "FORMAT",
      `Cannot ${action}: ${location} does not have kvfold's layout (${err.message})`,
      {
        cause: e,
      },
    );
  }
  if (/^[0-9A-Z]{5}$/.test(code)) return io(`${err.message} (SQLSTATE ${code})`);
  if (/timeout|connect/i.test(err.message)) return io(err.message);
  return e;
}

/** How long a connection attempt may take before the server counts as unreachable. */
const CONNECT_TIMEOUT_MS = 10_000;

/**
 * One store's connections: a pool of up to `max` clients to `connectionString`, with the store's
 * schema first on every client's search_path.
 */
export class PgConnection implements PgQueryable {
  readonly location: string;
  readonly schema: string;
  readonly #pool: PgPool;
  #closed = false;

  constructor(url: string, max = 4) {
    const { connectionString, schema } = parseStoreUrl(url);
    this.location = redactUrl(url);
    this.schema = schema;
    this.#pool = new (pg.Pool as unknown as new (config: unknown) => PgPool)({
      connectionString,
      max,
      types: TYPES,
      connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
      idleTimeoutMillis: 10_000,
      // The schema's tables by their plain names, and nothing else's (pg_catalog is always searched).
      options: `-c search_path=${schema}`,
      application_name: "kvfold",
    });
    // An idle client whose server went away: the pool drops it; the next query reconnects.
    this.#pool.on("error", () => {});
  }

  /** Throws "INVALID_STATE" once closed. */
  check(): void {
    if (this.#closed) {
      throw new KvfoldError("INVALID_STATE", `Cannot use store ${this.location}: it is closed`);
    }
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** One statement on any pooled client; errors as `pgFailure`. */
  async query(
    sql: string,
    params: unknown[] = [],
    action = "query store",
  ): Promise<{ rows: PgRow[]; rowCount: number | null }> {
    this.check();
    try {
      return await this.#pool.query(sql, params);
    } catch (e) {
      throw pgFailure(this.location, action, e);
    }
  }

  /**
   * Runs `fn` in one transaction on one client: committed when it returns, rolled back when it
   * throws (or the connection drops: the server rolls back what it never saw committed).
   */
  async transaction<T>(action: string, fn: (client: PgQueryable) => Promise<T>): Promise<T> {
    this.check();
    let client: PgClient;
    try {
      client = await this.#pool.connect();
    } catch (e) {
      throw pgFailure(this.location, action, e);
    }
    let broken: Error | undefined;
    // The server dropping a checked-out client is an 'error' event besides the failed query; the
    // query's rejection is what reports it.
    const dropped = (e: Error) => void (broken = e);
    client.on("error", dropped);
    try {
      await client.query("BEGIN");
      const result = await fn(client);
      await client.query("COMMIT");
      return result;
    } catch (e) {
      try {
        await client.query("ROLLBACK");
      } catch (rollbackError) {
        broken = rollbackError as Error; // the connection is gone: do not return it to the pool
      }
      throw pgFailure(this.location, action, e);
    } finally {
      client.off("error", dropped);
      client.release(broken ?? false);
    }
  }

  /** Closes every connection. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      await this.#pool.end();
    } catch (e) {
      throw pgFailure(this.location, "close store", e);
    }
  }
}

/**
 * Assertions and scratch copies the hostile-input tests share: an error must be a `KvfoldError` of
 * the expected code whose message names the problem, never a JS internal.
 *
 * @module
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { KvfoldError, type KvfoldErrorCode } from "../mod.ts";
import { tempDir, tempDirSync, testModel } from "./_fixtures.ts";

function checkKvfold(e: unknown, code: string, patterns: readonly RegExp[]): KvfoldError {
  assert.ok(e instanceof KvfoldError, `expected KvfoldError, got ${(e as Error)?.stack ?? e}`);
  assert.equal(e.code, code, e.message);
  for (const re of patterns) assert.match(e.message, re);
  assert.doesNotMatch(e.message, /is not a function|is not iterable|Cannot read properties/);
  return e;
}

/** Asserts that `p` rejects with a KvfoldError of `code` whose message matches every pattern. */
export async function rejectsWith(
  p: Promise<unknown>,
  code: KvfoldErrorCode,
  ...patterns: RegExp[]
): Promise<KvfoldError> {
  let caught: KvfoldError | undefined;
  await assert.rejects(p, (e: unknown) => {
    caught = checkKvfold(e, code, patterns);
    return true;
  });
  return caught!;
}

/** Asserts that `fn` throws a KvfoldError of `code` whose message matches every pattern. */
export function throwsKvfold(fn: () => unknown, code: KvfoldErrorCode, ...patterns: RegExp[]): KvfoldError {
  let caught: KvfoldError | undefined;
  assert.throws(fn, (e: unknown) => {
    caught = checkKvfold(e, code, patterns);
    return true;
  });
  return caught!;
}

/** A writable copy of a test model (default: the tiny GQA one), handed to `edit`, removed afterwards. */
export async function withBrokenModel(
  edit: (dir: string) => Promise<void> | void,
  check: (dir: string) => Promise<unknown>,
  source: Promise<string> = testModel("gqa", { seed: 11 }),
): Promise<void> {
  const src = await source;
  const dir = await tempDir();
  try {
    for (const f of Deno.readDirSync(src)) Deno.copyFileSync(`${src}/${f.name}`, `${dir}/${f.name}`);
    await edit(dir);
    await check(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** A path for a new store in a fresh temp folder. */
export function tempStore(name = "store.kvfold"): string {
  return join(tempDirSync("kvfold_hostile_store_"), name);
}

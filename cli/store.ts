/**
 * `kvfold store stats`: what a document store holds.
 *
 * @module
 */

import { DocumentStore, KvfoldError } from "../mod.ts";
import { defineCommand, parseCommand, str } from "./_options.ts";
import { write } from "./_console.ts";

/** `kvfold store`'s usage and options. */
export const STORE = defineCommand({
  name: "store",
  summary: "what a document store holds: documents, tokens in, vectors kept, ratio, bytes",
  usage: ["store stats FILE", "store stats --store FILE"],
  options: { store: str("FILE", "the document store (instead of FILE)") },
  positionals: true,
});

export function cmdStore(args: string[]): Promise<void> {
  // FILE or --store FILE, as `compress` and `ask` take it.
  const { values: v, positionals } = parseCommand(args, STORE);
  const [sub, ...rest] = positionals;
  const file = v.store ?? rest[0];
  if (sub !== "stats" || !file || rest.length > (v.store === undefined ? 1 : 0)) {
    throw new KvfoldError("INVALID_ARGUMENT", "Usage: kvfold store stats FILE (or --store FILE)");
  }
  using store = DocumentStore.open(file, { readOnly: true });
  const s = store.stats();
  write(
    [
      `store:        ${file}`,
      `documents:    ${s.documents} (${s.chunks} chunks; groups: ${s.groups.join(", ") || "none"})`,
      `tokens in:    ${s.tokensIn}`,
      `vectors kept: ${s.vectorsKept}`,
      `ratio:        ${s.ratio.toFixed(1)}x fewer positions`,
      `bytes:        ${s.vectorBytes} in vectors, ${s.fileBytes} on disk`,
    ].join("\n") + "\n",
  );
  return Promise.resolve();
}

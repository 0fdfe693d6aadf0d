/**
 * `kvfold compress`: AutoCompressor summary vectors of ids, or documents compressed into the store.
 *
 * @module
 */

import {
  CHUNK_BREAKS,
  compressIntoStore,
  Compressor,
  KvfoldError,
  openStore,
  writeSafetensorsFile,
} from "../mod.ts";
import {
  bool,
  choiceOpt,
  COMMON,
  defineCommand,
  dtypeOpt,
  intOpt,
  need,
  openEngine,
  parseCommand,
  parseIds,
  str,
} from "./_options.ts";
import { interruptSignal, note, ProgressBar, readUserText } from "./_console.ts";

/** `kvfold compress`'s usage and options. */
export const COMPRESS = defineCommand({
  name: "compress",
  summary: "compress documents into the store, or token ids into summary vectors",
  usage: [
    "compress --compressor DIR --store FILE|URL [--group NAME] [--chunk-tokens N] [--break-at tokens|sentence]\n" +
    "         [--replace] FILES...",
    "compress --compressor DIR --ids 1,2,3 [--segment-length N] --out FILE.safetensors",
  ],
  details: "With --store, each FILE becomes a document of the store, a SQLite file or a postgres:// URL\n" +
    "(its path is its source);\n" +
    "a source already there is refused unless --replace. With --ids, writes the AutoCompressor's\n" +
    'summary vectors: tensor "summary" [K, hidden] f32.',
  options: {
    compressor: str("DIR", "AutoCompressor model folder"),
    store: str("FILE|URL", "the document store (SQLite file or postgres:// URL) to add FILES to"),
    group: str("NAME", "the group the documents belong to (chooses adapters in `ask`)"),
    "chunk-tokens": str("N", "tokens per chunk of a document (at most, with --break-at sentence)"),
    "break-at": str("tokens|sentence", "where chunks end: every N tokens (default), or at a sentence end"),
    replace: bool("replace documents whose source is already in the store"),
    ids: str("1,2,3", "token ids to compress instead of files"),
    out: str("FILE", "with --ids: the .safetensors file to write"),
    "segment-length": str("N", "tokens per compression segment"),
    ...COMMON,
  },
  positionals: true,
});

export async function cmdCompress(args: string[]) {
  const { values: v, positionals: files } = parseCommand(args, COMPRESS);
  const dir = need(v.compressor, "compressor");
  if (v.store === undefined && v.ids === undefined) {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      "Missing --store FILE with FILES..., or --ids 1,2,3 with --out FILE",
    );
  }
  const breakAt = choiceOpt(v["break-at"], "break-at", CHUNK_BREAKS); // refused before loading
  using kv = await openEngine(v);
  using compressor = await Compressor.load(kv, dir, { dtype: dtypeOpt(v) });
  const segmentLength = intOpt(v["segment-length"], "segment-length", 1);
  if (v.store === undefined) {
    // Inspection mode: exact summary vectors of given ids.
    const out = need(v.out, "out");
    const summary = await compressor.compress(parseIds(need(v.ids, "ids")), { segmentLength });
    await writeSafetensorsFile(
      out,
      [{ name: "summary", dtype: "F32", shape: [summary.rows, summary.hidden], data: summary.data }],
      { "kvfold.compressor": dir, "kvfold.tokens": String(summary.tokens) },
    );
    note(`wrote ${out}: summary [${summary.rows}, ${summary.hidden}] f32 from ${summary.tokens} tokens`);
    return;
  }
  if (files.length === 0) {
    throw new KvfoldError("INVALID_ARGUMENT", "Missing FILES to compress into the store");
  }
  await using store = await openStore(v.store);
  // Refused before any compressing, not after (the store would refuse the source at the end).
  const existing = new Set<string>();
  for (const f of files) if (await store.hasDocument(f)) existing.add(f);
  for (const [i, f] of files.entries()) {
    if (files.indexOf(f) !== i) {
      throw new KvfoldError("INVALID_ARGUMENT", `Cannot compress ${f}: it is named twice`);
    }
    if (existing.has(f) && !v.replace) {
      throw new KvfoldError(
        "INVALID_STATE",
        `Cannot compress ${f}: it is already in the store ${v.store}; pass --replace to replace it`,
      );
    }
  }
  using interrupt = interruptSignal(); // Ctrl-C aborts within one token
  const texts = await Promise.all(files.map((f) => readUserText(f, "compress")));
  const totals = texts.map((t) => compressor.model.tokenizer.encode(t).length);
  const all = totals.reduce((a, b) => a + b, 0);
  const bar = new ProgressBar(all);
  let before = 0;
  for (let i = 0; i < files.length; i++) {
    const r = await compressIntoStore(compressor, store, {
      source: files[i],
      text: texts[i],
      group: v.group,
    }, {
      chunkTokens: intOpt(v["chunk-tokens"], "chunk-tokens", 1),
      breakAt,
      segmentLength,
      replace: v.replace,
      signal: interrupt.signal,
      onProgress: (done) => bar.update(before + done, files[i]),
    });
    before += totals[i];
    bar.update(before, files[i]);
    bar.done(
      `${files[i]}: ${r.tokens} tokens -> ${r.vectors} vectors (${(r.tokens / r.vectors).toFixed(1)}x)` +
        (existing.has(files[i]) ? ", replacing the stored one" : ""),
    );
  }
}

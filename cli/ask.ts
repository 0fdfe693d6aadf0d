/**
 * `kvfold ask`: stream an answer from the best chunks' summary vectors in the store.
 *
 * @module
 */

import {
  ADAPTER_MODES,
  type AdapterMode,
  answerFromChunks,
  KvfoldError,
  type Model,
  openStore,
} from "../mod.ts";
import {
  CACHE,
  cacheFromArgs,
  COMMON,
  defineCommand,
  dtypeOpt,
  intOpt,
  many,
  need,
  numOpt,
  openEngine,
  parseCommand,
  seedOpt,
  str,
} from "./_options.ts";
import { decodeRate, interruptSignal, note, write } from "./_console.ts";

/** `kvfold ask`'s usage and options. */
export const ASK = defineCommand({
  name: "ask",
  summary: "stream an answer from the best chunks' summary vectors in the store",
  usage: [
    "ask --model DIR --store FILE [--k N] [--adapter [GROUP=]DIR]... [--adapter-mode MODE] [options] QUESTION",
  ],
  details: "GROUP=DIR adapters are chosen by the retrieved chunks' groups: with chunks of several groups,\n" +
    "compose (default) applies every group's adapter weighted by its share of the chunks' BM25\n" +
    "scores, best the best chunk's group alone, none the base model. A plain DIR is used whatever\n" +
    "the group.",
  options: {
    model: str("DIR", "model folder (Hugging Face layout) or GGUF file"),
    store: str("FILE|URL", "the document store (SQLite file or postgres:// URL) to answer from"),
    k: str("N", "chunks retrieved (default 2)"),
    "max-tokens": str("N", "tokens to generate at most (default 128)"),
    temperature: str("T", "sampling temperature (0: greedy)"),
    seed: str("S", "sampling seed"),
    adapter: many("[GROUP=]DIR", "a PEFT LoRA adapter, for one group or for all"),
    "adapter-mode": str("MODE", "chunks of several groups: compose (default), best or none"),
    ...COMMON,
    ...CACHE,
  },
  positionals: true,
});

export async function cmdAsk(args: string[]) {
  const { values: v, positionals } = parseCommand(args, ASK);
  const question = positionals.join(" ");
  if (!question) {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      "Missing QUESTION: kvfold ask --model DIR --store FILE QUESTION",
    );
  }
  const mode = v["adapter-mode"] ?? "compose";
  if (!(ADAPTER_MODES as readonly string[]).includes(mode)) {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      `Cannot ask: --adapter-mode ${mode} is not one of ${ADAPTER_MODES.join(", ")}`,
    );
  }
  await using store = await openStore(need(v.store, "store"), { readOnly: true });
  const chunks = await store.retrieve(question, { k: intOpt(v.k, "k", 1) ?? 2 });
  for (const c of chunks) {
    note(`[retrieved ${c.source} #${c.ordinal}, score ${c.score.toFixed(3)}, ${c.vectors.rows} vectors]`);
  }
  if (chunks.length === 0) note("[nothing retrieved: answering without context]");
  using kv = await openEngine(v);
  using model = await kv.loadModel(need(v.model, "model"), { dtype: dtypeOpt(v) });
  const forced = await loadAdapters(model, v.adapter);
  using interrupt = interruptSignal(); // Ctrl-C aborts within one token
  let stats:
    | {
      prefixPositions: number;
      promptTokens: number;
      generatedTokens: number;
      decodeMs: number;
      adapter: string | null;
    }
    | undefined;
  for await (
    const piece of answerFromChunks(model, chunks, question, {
      adapter: forced,
      adapterMode: mode as AdapterMode,
      cache: cacheFromArgs(model, v),
      maxTokens: intOpt(v["max-tokens"], "max-tokens") ?? 128,
      temperature: numOpt(v.temperature, "temperature"),
      seed: seedOpt(v.seed),
      signal: interrupt.signal,
      onStats: (s) => (stats = s),
    })
  ) write(piece);
  write("\n");
  if (stats) {
    const tokensIn = chunks.reduce((n, c) => n + c.tokens, 0);
    note(
      `[${stats.prefixPositions} prefix positions for ${tokensIn} context tokens; ${stats.promptTokens} prompt tokens; ` +
        `adapter ${stats.adapter ?? "none"}; ` +
        `${stats.generatedTokens} generated at ${decodeRate(stats.generatedTokens, stats.decodeMs)}]`,
    );
  }
}

// --adapter specs: "DIR" (used as given) or "GROUP=DIR" (registered under the group's name, chosen
// by the retrieved chunks' group). Returns the adapter name to force, if a plain DIR was given.
async function loadAdapters(model: Model, specs: string[] | undefined): Promise<string | undefined> {
  let forced: string | undefined;
  for (const spec of specs ?? []) {
    const eq = spec.indexOf("=");
    if (eq > 0) {
      await model.adapters.load(spec.slice(eq + 1), { name: spec.slice(0, eq) });
      continue;
    }
    if (forced !== undefined) {
      throw new KvfoldError(
        "INVALID_ARGUMENT",
        "Cannot use two plain --adapter folders; name them GROUP=DIR",
      );
    }
    forced = (await model.adapters.load(spec)).name;
  }
  return forced;
}

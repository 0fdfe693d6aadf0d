/**
 * `kvfold serve`: an OpenAI-compatible HTTP server with continuous batching across adapters.
 *
 * @module
 */

import { KvfoldError, openStore, startServer, type Store } from "../mod.ts";
import {
  CACHE,
  cacheFromArgs,
  COMMON,
  defineCommand,
  dtypeOpt,
  intOpt,
  many,
  need,
  openEngine,
  parseCommand,
  str,
} from "./_options.ts";
import { note } from "./_console.ts";

/** `kvfold serve`'s usage and options. */
export const SERVE = defineCommand({
  name: "serve",
  summary: "serve the model over an OpenAI-compatible HTTP API, batching requests across adapters",
  usage: [
    "serve --model DIR [--adapter GROUP=DIR]... [--store [NAME=]FILE|URL]... [--port N] [--host H] [options]",
  ],
  details: "Endpoints: POST /v1/chat/completions, POST /v1/completions (stream: true for server-sent\n" +
    "events), GET /v1/models (the model as `base`, each adapter as `base:GROUP`), GET /health,\n" +
    "GET /metrics (Prometheus). Requests may add a `kvfold` field: { store, query, k, chunk_ids,\n" +
    "group, adapter, adapter_mode, cache, ignore_eos } to answer from the store's compressed chunks.\n" +
    "The API key may also come from $KVFOLD_API_KEY. SIGTERM or Ctrl-C: finish running requests, exit.",
  options: {
    model: str("DIR", "model folder (Hugging Face layout) or GGUF file"),
    adapter: many("GROUP=DIR", "a PEFT LoRA adapter, served as model id base:GROUP"),
    store: many(
      "[NAME=]FILE|URL",
      "a document store (SQLite file or postgres:// URL) for kvfold.store (the first is the default)",
    ),
    port: str("N", "port to listen on (default 8000; 0: any free port)"),
    host: str("H", "interface to listen on (default 127.0.0.1)"),
    "api-key": str("KEY", "require Authorization: Bearer KEY on /v1/*"),
    name: str("NAME", "the base model's id (default base)"),
    "max-batch": str("N", "requests decoded together at most (default 16)"),
    "max-queue": str("N", "requests waiting for a slot at most, then 429 (default 256)"),
    "prefill-chunk": str("N", "prompt tokens prefilled between two decode steps (default 256)"),
    "solo-interval-ms": str(
      "MS",
      "a request decoding alone runs natively this long per turn (default 20; 0: a token)",
    ),
    ...COMMON,
    ...CACHE,
  },
});

export async function cmdServe(args: string[]) {
  const { values: v } = parseCommand(args, SERVE);
  const modelDir = need(v.model, "model");
  const adapters: Record<string, string> = {};
  for (const spec of v.adapter ?? []) {
    const eq = spec.indexOf("=");
    if (eq <= 0 || eq === spec.length - 1) {
      throw new KvfoldError("INVALID_ARGUMENT", `Cannot parse --adapter "${spec}": expected GROUP=DIR`);
    }
    adapters[spec.slice(0, eq)] = spec.slice(eq + 1);
  }
  const stores: Record<string, Store> = {};
  try {
    for (const spec of v.store ?? []) {
      // NAME=LOCATION; a URL's own "=" (?schema=x) comes after "://", never in a name.
      const eq = spec.indexOf("=");
      const named = eq > 0 && /^[\w.-]+$/.test(spec.slice(0, eq));
      const name = named ? spec.slice(0, eq) : "default";
      if (Object.hasOwn(stores, name)) {
        throw new KvfoldError("INVALID_ARGUMENT", `Cannot serve: two --store flags are named ${name}`);
      }
      stores[name] = await openStore(named ? spec.slice(eq + 1) : spec, { readOnly: true });
    }
    const port = intOpt(v.port, "port", 0, 65535) ?? 8000;
    const maxBatch = intOpt(v["max-batch"], "max-batch", 1, 4096);
    const maxQueue = intOpt(v["max-queue"], "max-queue", 0);
    const prefillChunk = intOpt(v["prefill-chunk"], "prefill-chunk", 1, 65536);
    const soloIntervalMs = intOpt(v["solo-interval-ms"], "solo-interval-ms", 0, 60_000);
    using kv = await openEngine(v);
    const server = startServer({
      model: kv.loadModel(modelDir, { dtype: dtypeOpt(v) }),
      ownsModel: true,
      name: v.name,
      adapters,
      stores,
      caches: (model) => {
        const cache = cacheFromArgs(model, v);
        return cache ? [cache] : [];
      },
      defaultCache: v.cache ?? "full",
      hostname: v.host,
      port,
      apiKey: v["api-key"] ?? Deno.env.get("KVFOLD_API_KEY"),
      maxBatch,
      maxQueue,
      prefillChunk,
      soloIntervalMs,
    });
    note(`kvfold serve: listening on ${server.url}; loading ${modelDir} ...`);
    const stop = () => {
      note("kvfold serve: shutting down (finishing running requests) ...");
      server.shutdown();
    };
    const signals: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGTERM", "SIGINT"];
    for (const s of signals) Deno.addSignalListener(s, stop);
    try {
      try {
        await server.ready;
      } catch (e) {
        await server.shutdown();
        throw e;
      }
      note(
        `kvfold serve: ready on ${server.url} (models: ${
          ["base", ...Object.keys(adapters)].map((a, i) => i === 0 ? v.name ?? a : `${v.name ?? "base"}:${a}`)
            .join(", ")
        })`,
      );
      await server.finished;
      note("kvfold serve: stopped");
    } finally {
      for (const s of signals) Deno.removeSignalListener(s, stop);
    }
  } finally {
    for (const s of Object.values(stores)) await s.close();
  }
}

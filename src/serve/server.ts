/**
 * `kvfold serve` as an API: an OpenAI-compatible HTTP server on `Deno.serve` over one model, its
 * adapters and document stores, answering through the continuous-batching {@link Scheduler}.
 *
 * Endpoints: `POST /v1/chat/completions`, `POST /v1/completions` (with `stream: true` as
 * server-sent events), `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus text).
 *
 * @module
 */

import type { CacheOptions } from "../lococo.ts";
import { KvfoldError } from "../errors.ts";
import type { Model } from "../model.ts";
import { asStore } from "../store/open_store.ts";
import type { StoreLike } from "../store/store_api.ts";
import { type CompletionPlan, modelIds, planCompletion, type ServedModel } from "./completion_plan.ts";
import { HttpError, toHttpError } from "./http_error.ts";
import { ServerMetrics } from "./metrics.ts";
import { type CompletionRequest, parseCompletionRequest } from "./openai_request.ts";
import {
  completionBody,
  type ResponseIdentity,
  responseIdentity,
  sseEvent,
  streamChunk,
  usageChunk,
} from "./openai_response.ts";
import { type Job, Scheduler, type SchedulerEvent } from "./scheduler.ts";

/** Options of {@link startServer}. */
export interface ServerOptions {
  /**
   * The model, or a promise of it: until it resolves (and `adapters` are loaded) the endpoints
   * answer 503 and `/health` says `loading`.
   */
  model: Model | Promise<Model>;
  /** Dispose the model when the server shuts down (the CLI's case); default false. */
  ownsModel?: boolean;
  /** The base model's id in `/v1/models` and requests; adapters are `NAME:<adapter>`. Default `base`. */
  name?: string;
  /** PEFT LoRA folders to load into `model.adapters` before serving, by name (the adapter group). */
  adapters?: Readonly<Record<string, string>>;
  /** Document stores by name, for `kvfold.store` (the first is the default). */
  stores?: Readonly<Record<string, StoreLike>>;
  /**
   * KV caches requests may ask for by kind name (`kvfold.cache`), besides `full`; or a function
   * that makes them once the model is loaded (LoCoCo heads belong to a model).
   */
  caches?: readonly CacheOptions[] | ((model: Model) => readonly CacheOptions[]);
  /** The cache of requests that name none: `full` (default) or a kind of `caches`. */
  defaultCache?: string;
  /** Interface to listen on; default `127.0.0.1`. */
  hostname?: string;
  /** Port; 0 picks a free one (read it from {@link KvfoldServer.port}). Default 8000. */
  port?: number;
  /** Requests to `/v1/*` must send `Authorization: Bearer <apiKey>`; default none. */
  apiKey?: string;
  /** Most requests prefilling or generating at once; default 16. */
  maxBatch?: number;
  /** Most requests waiting for a slot before 429; default 256. */
  maxQueue?: number;
  /** Tokens per prefill chunk between decode steps; default 256. */
  prefillChunk?: number;
  /** Milliseconds a request generating alone runs natively per turn (0: a token a turn); default 20. */
  soloIntervalMs?: number;
  /** Largest request body in bytes (413 past it); default 4 MiB. */
  maxBodyBytes?: number;
  /** Keep the scheduler's trace ({@link KvfoldServer.trace}); default false. */
  trace?: boolean;
}

/**
 * Starts the OpenAI-compatible server; it listens at once (503 until the model is ready).
 *
 * @example
 * ```ts ignore
 * import { Kvfold, startServer } from "./mod.ts";
 * using kv = await Kvfold.open();
 * await using server = startServer({ model: kv.loadModel("./models/tiny"), ownsModel: true, port: 0 });
 * await server.ready;
 * const r = await fetch(`${server.url}/v1/chat/completions`, {
 *   method: "POST",
 *   body: JSON.stringify({ model: "base", messages: [{ role: "user", content: "Hi" }], max_tokens: 8 }),
 * });
 * console.log((await r.json()).choices[0].message.content);
 * ```
 */
export function startServer(options: ServerOptions): KvfoldServer {
  return new KvfoldServer(options);
}

/** A running server: its address, readiness, metrics, and a graceful shutdown. */
export class KvfoldServer {
  /** The interface it listens on. */
  readonly hostname: string;
  /** The port it listens on. */
  readonly port: number;
  /** `http://host:port`. */
  readonly url: string;
  /** Resolves once the model and adapters are loaded; rejects with the load's error. */
  readonly ready: Promise<void>;
  /** Counters, gauges and histograms (what `/metrics` shows). */
  readonly metrics: ServerMetrics = new ServerMetrics();
  /** Resolves when the server has shut down. */
  readonly finished: Promise<void>;
  readonly #options: ServerOptions;
  readonly #http: Deno.HttpServer<Deno.NetAddr>;
  #served?: ServedModel;
  #scheduler?: Scheduler;
  #loadError?: unknown;
  #draining = false;
  #shutdown?: Promise<void>;
  #resolveFinished!: () => void;

  /** @internal use {@link startServer}. */
  constructor(options: ServerOptions) {
    if (typeof Deno?.serve !== "function") {
      throw new KvfoldError(
        "UNSUPPORTED",
        "Cannot start the server: it runs on Deno.serve (run it under Deno)",
      );
    }
    this.#options = options;
    const hostname = options.hostname ?? "127.0.0.1";
    this.#http = Deno.serve(
      { hostname, port: options.port ?? 8000, onListen: () => {} },
      (req) => this.#handle(req),
    );
    this.hostname = this.#http.addr.hostname;
    this.port = this.#http.addr.port;
    const host = this.hostname.includes(":") ? `[${this.hostname}]` : this.hostname;
    this.url = `http://${host}:${this.port}`;
    this.finished = new Promise((r) => (this.#resolveFinished = r));
    this.ready = this.#load();
    this.ready.catch(() => {}); // read by /health; the caller awaits it for the error
  }

  /** The scheduler's trace (with `trace: true`; empty before the model is ready). */
  get trace(): readonly SchedulerEvent[] {
    return this.#scheduler?.trace ?? [];
  }

  async #load(): Promise<void> {
    const o = this.#options;
    try {
      const model = await o.model;
      for (const [name, dir] of Object.entries(o.adapters ?? {})) await model.adapters.load(dir, { name });
      const offered = typeof o.caches === "function" ? o.caches(model) : o.caches ?? [];
      const caches = new Map(offered.map((c) => [c.kind, c] as const));
      const defaultCache = o.defaultCache ?? "full";
      if (defaultCache !== "full" && !caches.has(defaultCache as CacheOptions["kind"])) {
        throw new KvfoldError(
          "INVALID_ARGUMENT",
          `Cannot serve: the default cache ${defaultCache} is not offered`,
        );
      }
      this.#served = {
        model,
        name: o.name ?? "base",
        stores: new Map(Object.entries(o.stores ?? {}).map(([name, s]) => [name, asStore(s)])),
        caches,
        defaultCache,
      };
      this.#scheduler = new Scheduler(model, this.metrics, {
        maxBatch: o.maxBatch,
        maxQueue: o.maxQueue,
        prefillChunk: o.prefillChunk,
        soloIntervalMs: o.soloIntervalMs,
        trace: o.trace,
      });
    } catch (e) {
      this.#loadError = e;
      throw e;
    }
  }

  /**
   * Graceful shutdown: refuses new requests (503, and the listener closes), lets every accepted
   * request finish, then frees the model when the server owns it. Idempotent.
   */
  shutdown(): Promise<void> {
    this.#shutdown ??= (async () => {
      this.#draining = true;
      await this.ready.catch(() => {});
      await Promise.all([this.#scheduler?.close(), this.#http.shutdown()]);
      if (this.#options.ownsModel) (await Promise.resolve(this.#options.model).catch(() => null))?.dispose();
      this.#resolveFinished();
    })();
    return this.#shutdown;
  }

  /** Same as {@link KvfoldServer.shutdown}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.shutdown();
  }

  async #handle(req: Request): Promise<Response> {
    const path = new URL(req.url).pathname;
    let response: Response;
    try {
      response = await this.#route(req, path);
    } catch (e) {
      response = toHttpError(e).response();
    }
    this.metrics.request(KNOWN_PATHS.has(path) ? path : "other", response.status);
    return response;
  }

  #route(req: Request, path: string): Response | Promise<Response> {
    const method = req.method;
    if (path === "/health") {
      allow(method, "GET");
      const status = this.#served ? "ok" : this.#loadError ? "error" : "loading";
      const body = {
        status: this.#draining ? "shutting_down" : status,
        running: this.#scheduler?.running ?? 0,
        queued: this.#scheduler?.queued ?? 0,
      };
      return Response.json(body, { status: status === "ok" && !this.#draining ? 200 : 503 });
    }
    if (path === "/metrics") {
      allow(method, "GET");
      return new Response(this.metrics.text(), {
        headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
      });
    }
    if (!path.startsWith("/v1/")) {
      throw new HttpError(404, `No route ${method} ${path}`, { code: "not_found" });
    }
    this.#authorize(req);
    if (this.#draining) {
      throw new HttpError(503, "The server is shutting down", { code: "shutting_down" });
    }
    const served = this.#served;
    if (!served) {
      if (this.#loadError) {
        throw new HttpError(503, `The model failed to load: ${(this.#loadError as Error).message}`, {
          code: "model_load_failed",
        });
      }
      throw new HttpError(503, "The model is still loading; retry shortly", { code: "model_loading" });
    }
    if (path === "/v1/models") {
      allow(method, "GET");
      return Response.json({ object: "list", data: modelIds(served).map(modelEntry) });
    }
    if (path.startsWith("/v1/models/")) {
      allow(method, "GET");
      const id = decodeURIComponent(path.slice("/v1/models/".length));
      if (!modelIds(served).includes(id)) {
        throw new HttpError(404, `The model ${JSON.stringify(id)} does not exist`, {
          code: "model_not_found",
        });
      }
      return Response.json(modelEntry(id));
    }
    if (path === "/v1/chat/completions" || path === "/v1/completions") {
      allow(method, "POST");
      return this.#complete(req, path === "/v1/chat/completions" ? "chat" : "completions", served);
    }
    throw new HttpError(404, `No route ${method} ${path}`, { code: "not_found" });
  }

  #authorize(req: Request) {
    const key = this.#options.apiKey;
    if (key === undefined || key === "") return;
    const got = req.headers.get("authorization") ?? "";
    if (!sameText(got, `Bearer ${key}`)) {
      throw new HttpError(401, "Missing or wrong API key (send Authorization: Bearer <key>)", {
        type: "authentication_error",
        code: "invalid_api_key",
      });
    }
  }

  async #complete(req: Request, endpoint: "chat" | "completions", served: ServedModel): Promise<Response> {
    const body = await readJsonBody(req, this.#options.maxBodyBytes ?? 4 * 1024 * 1024);
    const request = parseCompletionRequest(body, endpoint);
    const plan = await planCompletion(served, request);
    const job = this.#scheduler!.submit({ ...plan.spec, signal: req.signal });
    const who = responseIdentity(endpoint, request.model);
    return request.stream ? streamResponse(job, who, plan, request) : await wholeResponse(job, who, plan);
  }
}

const KNOWN_PATHS = new Set([
  "/health",
  "/metrics",
  "/v1/models",
  "/v1/chat/completions",
  "/v1/completions",
]);

function allow(method: string, expected: string) {
  if (method !== expected) {
    throw new HttpError(405, `Method ${method} is not allowed here; use ${expected}`, {
      code: "method_not_allowed",
    });
  }
}

function modelEntry(id: string) {
  return { id, object: "model", created: 0, owned_by: "kvfold" };
}

// Compares without stopping at the first difference (no timing hint about the key).
function sameText(a: string, b: string): boolean {
  const x = new TextEncoder().encode(a), y = new TextEncoder().encode(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < y.length; i++) diff |= (x[i] ?? 0) ^ y[i];
  return diff === 0;
}

/** The body as JSON: at most `max` bytes (413), valid UTF-8 and valid JSON (400). */
async function readJsonBody(req: Request, max: number): Promise<unknown> {
  const tooLarge = () =>
    new HttpError(413, `The request body is larger than ${max} bytes`, { code: "request_too_large" });
  const declared = Number(req.headers.get("content-length") ?? "0");
  if (declared > max) throw tooLarge();
  const parts: Uint8Array[] = [];
  let size = 0;
  if (req.body) {
    for await (const part of req.body) {
      size += part.length;
      if (size > max) throw tooLarge();
      parts.push(part);
    }
  }
  const bytes = new Uint8Array(size);
  let at = 0;
  for (const p of parts) {
    bytes.set(p, at);
    at += p.length;
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw HttpError.badRequest(null, "The request body is not valid UTF-8");
  }
  if (text.trim() === "") throw HttpError.badRequest(null, "The request body is empty; send a JSON object");
  try {
    return JSON.parse(text);
  } catch (e) {
    throw HttpError.badRequest(null, `The request body is not valid JSON: ${(e as Error).message}`);
  }
}

async function wholeResponse(job: Job, who: ResponseIdentity, plan: CompletionPlan): Promise<Response> {
  const pieces = job.stream();
  let text = "";
  for (;;) {
    const r = await pieces.next();
    if (r.done) return Response.json(completionBody(who, text, r.value, plan));
    text += r.value;
  }
}

function streamResponse(
  job: Job,
  who: ResponseIdentity,
  plan: CompletionPlan,
  req: CompletionRequest,
): Response {
  const body = new ReadableStream<Uint8Array>({
    async start(controller) {
      // After the client went away the stream is closed: nothing more is sent.
      const send = (data: unknown) => {
        if (!job.signal.aborted) controller.enqueue(sseEvent(data));
      };
      try {
        if (who.endpoint === "chat") send(streamChunk(who, undefined));
        const pieces = job.stream();
        for (;;) {
          const r = await pieces.next();
          if (r.done) {
            send(streamChunk(who, undefined, { reason: r.value.stopReason, plan }));
            if (req.includeUsage) send(usageChunk(who, r.value));
            break;
          }
          send(streamChunk(who, r.value));
        }
      } catch (e) {
        // Headers are sent: the error goes in the stream, in OpenAI's shape.
        if (job.signal.aborted) return;
        send(toHttpError(e).body());
      }
      if (job.signal.aborted) return;
      send("[DONE]");
      controller.close();
    },
    cancel(reason) {
      job.abort(reason); // the client went away
    },
  });
  return new Response(body, {
    headers: { "content-type": "text/event-stream", "cache-control": "no-cache", connection: "keep-alive" },
  });
}

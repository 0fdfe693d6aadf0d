// The llama.cpp side of bench/vs_llamacpp.ts: node-llama-cpp@3.22.1 (its prebuilt CPU binary, which
// picks its ggml kernels by CPU features at run time) driven through its public API, in a Deno
// process of its own. It is a separate process so that the two engines never hold threads, caches
// or memory at the same time, and so node-llama-cpp's node_modules (bench/llamacpp, installed by
// `npm ci` there) stays out of kvfold's dependency graph.
//
// Protocol: one JSON request per stdin line, one `@@peer <json>` reply per request on stdout
// (anything else on stdout is llama.cpp's logging and is ignored by the driver).
//
//   deno run -A --no-config --node-modules-dir=manual --no-lock bench/llamacpp/peer.ts
//
// Requests: {op:"info"} | {op:"load", path, threads, contextSize, batchSize} | {op:"logits", ids}
// | {op:"prefill", ids} | {op:"decode", prompt, tokens} | {op:"unload"} | {op:"quit"}.

// A non-literal specifier: type checking of the kvfold tree must not need node-llama-cpp's
// node_modules, so the few parts of its API used here are typed by hand below.
const packageName = "node-llama-cpp";
const nlc = await import(packageName) as NodeLlamaCpp;

interface NodeLlamaCpp {
  getLlama(options: Record<string, unknown>): Promise<Llama>;
}
interface Llama {
  readonly systemInfo: string;
  readonly cpuMathCores: number;
  readonly buildType: string;
  loadModel(options: Record<string, unknown>): Promise<LlamaModel>;
  dispose(): Promise<void>;
}
interface LlamaModel {
  readonly size: number;
  readonly trainContextSize: number;
  createContext(options: Record<string, unknown>): Promise<LlamaContext>;
  dispose(): Promise<void>;
}
interface LlamaContext {
  readonly contextSize: number;
  readonly batchSize: number;
  readonly flashAttention: boolean;
  getSequence(): LlamaContextSequence;
  dispose(): Promise<void>;
}
interface LlamaContextSequence {
  clearHistory(): Promise<void>;
  evaluate(tokens: number[], options?: Record<string, unknown>): AsyncGenerator<number, void, unknown>;
  evaluateWithoutGeneratingNewTokens(tokens: number[]): Promise<void>;
  controlledEvaluate(
    input: (number | [number, Record<string, unknown>])[],
  ): Promise<({ next: { logits?: Map<number, number> } } | undefined)[]>;
}

type Request =
  | { op: "info" }
  | { op: "load"; path: string; threads: number; contextSize: number; batchSize: number }
  | { op: "logits"; ids: number[] }
  | { op: "prefill"; ids: number[] }
  | { op: "decode"; prompt: number[]; tokens: number }
  | { op: "unload" }
  | { op: "quit" };

const llama = await nlc.getLlama({
  gpu: false, // the CPU binary only: the comparison is CPU against CPU
  build: "never", // the prebuilt binary as users get it, never a local build
  logLevel: "error",
  logger: (level: string, message: string) => console.error(`[llama.cpp ${level}] ${message.trimEnd()}`),
});
let model: LlamaModel | null = null;
let context: LlamaContext | null = null;
let sequence: LlamaContextSequence | null = null;

async function unload(): Promise<void> {
  await context?.dispose();
  await model?.dispose();
  context = null;
  model = null;
  sequence = null;
}

function loaded(): LlamaContextSequence {
  if (sequence === null) throw new Error("no model is loaded");
  return sequence;
}

async function handle(req: Request): Promise<unknown> {
  switch (req.op) {
    case "info": {
      // The llama.cpp release node-llama-cpp's binaries are built from.
      const release = JSON.parse(
        await Deno.readTextFile(
          new URL("./node_modules/node-llama-cpp/llama/llama.cpp.info.json", import.meta.url),
        ),
      );
      return {
        llamaCpp: `${release.llamaCppGithubRepo}@${release.tag}`,
        systemInfo: llama.systemInfo,
        cpuMathCores: llama.cpuMathCores,
        buildType: llama.buildType,
      };
    }
    case "load": {
      await unload();
      const t0 = performance.now();
      model = await llama.loadModel({ modelPath: req.path, gpuLayers: 0 });
      context = await model.createContext({
        contextSize: req.contextSize,
        batchSize: req.batchSize,
        sequences: 1,
        threads: { ideal: req.threads, min: req.threads },
      });
      sequence = context.getSequence();
      return {
        loadMs: performance.now() - t0,
        modelBytes: model.size,
        contextSize: context.contextSize,
        batchSize: context.batchSize,
        flashAttention: context.flashAttention,
      };
    }
    case "logits": {
      // The logits after each prefix ids[0..i], full vocabulary, indexed by token id.
      const seq = loaded();
      await seq.clearHistory();
      const out = await seq.controlledEvaluate(req.ids.map((id) => [id, { generateNext: { logits: true } }]));
      return {
        logits: out.map((o) => {
          const m = o?.next.logits;
          if (m === undefined) throw new Error("node-llama-cpp returned no logits");
          const row = new Array<number>(m.size);
          for (const [id, v] of m) row[id] = v;
          return row;
        }),
      };
    }
    case "prefill": {
      // One prompt of ids.length tokens into an empty sequence; no token is sampled after it.
      const seq = loaded();
      await seq.clearHistory();
      const t0 = performance.now();
      await seq.evaluateWithoutGeneratingNewTokens(req.ids);
      const ms = performance.now() - t0;
      return { ms, tokPerS: req.ids.length / (ms / 1000) };
    }
    case "decode": {
      // Greedy generation as a user runs it: the prompt, then `tokens` decode steps, timed from the
      // first sampled token (which the prompt's prefill produced) to the last.
      const seq = loaded();
      await seq.clearHistory();
      let t1 = 0, steps = -1;
      for await (const _ of seq.evaluate(req.prompt, { temperature: 0 })) {
        if (++steps === 0) t1 = performance.now();
        if (steps === req.tokens) break;
      }
      const ms = performance.now() - t1;
      return { ms, steps, tokPerS: steps / (ms / 1000) };
    }
    case "unload":
      await unload();
      return {};
    case "quit":
      await unload();
      await llama.dispose();
      return {};
  }
}

const encoder = new TextEncoder();
function reply(v: unknown): void {
  // A pipe takes a large reply (a logits table) in several writes.
  const bytes = encoder.encode(`@@peer ${JSON.stringify(v)}\n`);
  for (let done = 0; done < bytes.length;) done += Deno.stdout.writeSync(bytes.subarray(done));
}
let buffered = "";
const decoder = new TextDecoder();
for await (const chunk of Deno.stdin.readable) {
  buffered += decoder.decode(chunk, { stream: true });
  let nl;
  while ((nl = buffered.indexOf("\n")) >= 0) {
    const line = buffered.slice(0, nl);
    buffered = buffered.slice(nl + 1);
    if (line.trim() === "") continue;
    const req = JSON.parse(line) as Request;
    try {
      reply({ ok: true, ...(await handle(req) as object) });
    } catch (e) {
      reply({ ok: false, error: e instanceof Error ? e.message : String(e) });
    }
    if (req.op === "quit") Deno.exit(0);
  }
}

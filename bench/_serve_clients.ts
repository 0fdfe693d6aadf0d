// The clients of bench/serve.ts. Run as a script they live in a process of their own, so their work
// (fetch, SSE parsing, JSON) never runs on the server's event loop: N concurrent streaming chat
// requests against --url, client i with adapter i mod 4, printing one JSON line with, per client,
// the completion tokens, the time to first token and the gaps between content events (seconds,
// timed from the moment all N start).
//
//   deno run -A bench/_serve_clients.ts --url http://127.0.0.1:PORT --clients 16 --max-tokens 32
import { parseArgs } from "node:util";

/** Client i's question (bench/serve.ts asks the same in-process). */
export const prompt = (
  i: number,
) => [{ role: "user", content: `Client ${i} asks: what happened on day ${i}?` }];

/** What one client saw. */
export interface ClientResult {
  tokens: number;
  /** Seconds from the start of all clients to the first content event. */
  ttft: number;
  /** Seconds between consecutive content events. */
  gaps: number[];
}

/** Runs `n` concurrent streaming clients; resolves with their results and the seconds all took. */
export async function runClients(
  url: string,
  n: number,
  maxTokens: number,
  adapters: readonly string[],
): Promise<{ seconds: number; results: ClientResult[] }> {
  const t0 = performance.now();
  const results = await Promise.all(
    Array.from({ length: n }, (_, i) => client(url, i, t0, maxTokens, adapters[i % adapters.length])),
  );
  return { seconds: (performance.now() - t0) / 1000, results };
}

async function client(url: string, i: number, t0: number, maxTokens: number, adapter: string) {
  const r = await fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    body: JSON.stringify({
      model: `base:${adapter}`,
      messages: prompt(i),
      max_tokens: maxTokens,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
      kvfold: { ignore_eos: true },
    }),
  });
  if (!r.ok) throw new Error(`client ${i}: HTTP ${r.status} ${await r.text()}`);
  const reader = r.body!.pipeThrough(new TextDecoderStream()).getReader();
  const times: number[] = [];
  let buffer = "", tokens = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const data = buffer.slice(6, end);
      buffer = buffer.slice(end + 2);
      if (data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
      // A chunk may carry several tokens' text: each content event counts as one arrival.
      if (chunk.choices?.[0]?.delta?.content) times.push(performance.now());
    }
  }
  return { tokens, ttft: (times[0] - t0) / 1000, gaps: times.slice(1).map((t, j) => (t - times[j]) / 1000) };
}

if (import.meta.main) {
  const { values: v } = parseArgs({
    args: Deno.args,
    options: {
      url: { type: "string" },
      clients: { type: "string", default: "1" },
      "max-tokens": { type: "string", default: "32" },
      adapters: { type: "string", default: "a0,a1,a2,a3" },
    },
  });
  if (!v.url) throw new TypeError("--url is required");
  const out = await runClients(v.url, Number(v.clients), Number(v["max-tokens"]), v.adapters.split(","));
  console.log(JSON.stringify(out));
}

/**
 * The server's counters, gauges and histograms, written in the Prometheus text format
 * (version 0.0.4) for `GET /metrics`.
 *
 * @module
 */

/** A Prometheus histogram with fixed upper bounds. */
export class Histogram {
  /** Upper bounds of the buckets (ascending; +Inf is implied). */
  readonly bounds: readonly number[];
  /** Observations per bucket (not cumulative); the last is +Inf. */
  readonly counts: number[];
  /** Sum of all observations. */
  sum = 0;
  /** Number of observations. */
  count = 0;

  constructor(bounds: readonly number[]) {
    this.bounds = bounds;
    this.counts = new Array(bounds.length + 1).fill(0);
  }

  /** Records one value. */
  observe(v: number): void {
    let i = this.bounds.findIndex((b) => v <= b);
    if (i < 0) i = this.bounds.length;
    this.counts[i]++;
    this.sum += v;
    this.count++;
  }

  /** The exposition lines of this histogram under `name` (with `# HELP`/`# TYPE`). */
  lines(name: string, help: string): string[] {
    const out = [`# HELP ${name} ${help}`, `# TYPE ${name} histogram`];
    let cumulative = 0;
    this.bounds.forEach((b, i) => {
      cumulative += this.counts[i];
      out.push(`${name}_bucket{le="${b}"} ${cumulative}`);
    });
    out.push(
      `${name}_bucket{le="+Inf"} ${this.count}`,
      `${name}_sum ${this.sum}`,
      `${name}_count ${this.count}`,
    );
    return out;
  }
}

const LATENCY_BOUNDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
const BATCH_BOUNDS = [1, 2, 4, 8, 16, 32, 64, 128, 256];
const STEP_BOUNDS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1];

/**
 * What the server counts. The scheduler and the HTTP layer update it; {@link ServerMetrics.text}
 * renders it.
 *
 * @example
 * ```ts
 * import { ServerMetrics } from "./metrics.ts";
 * const m = new ServerMetrics();
 * m.request("/v1/chat/completions", 200);
 * m.batchRows.observe(3);
 * console.log(m.text().includes('kvfold_batch_rows_bucket{le="2"} 0'));
 * ```
 */
export class ServerMetrics {
  /** Requests answered, by `endpoint status`. */
  readonly requests: Map<string, number> = new Map();
  /** Prompt tokens prefilled (summary vector rows not counted). */
  promptTokens = 0;
  /** Summary vector rows prefilled. */
  vectorRows = 0;
  /** Tokens generated. */
  generatedTokens = 0;
  /** Requests aborted by their client. */
  aborted = 0;
  /** Prefill chunks run. */
  prefillChunks = 0;
  /** Requests generating or prefilling now. */
  running = 0;
  /** Requests waiting for a slot now. */
  queued = 0;
  /** Most requests running at once. */
  maxBatch = 0;
  /** Rows per batched decode step. */
  readonly batchRows: Histogram = new Histogram(BATCH_BOUNDS);
  /** Seconds from arrival to the first generated token. */
  readonly timeToFirstToken: Histogram = new Histogram(LATENCY_BOUNDS);
  /** Seconds between a request's consecutive tokens. */
  readonly interTokenLatency: Histogram = new Histogram(LATENCY_BOUNDS);
  /** Seconds of each batched decode step's native call. */
  readonly decodeStepSeconds: Histogram = new Histogram(STEP_BOUNDS);
  /** Seconds of each step's host work before its native call (sampling, detokenizing, stops). */
  readonly stepHostSeconds: Histogram = new Histogram(STEP_BOUNDS);
  /** Seconds of each prefill native call (one request's chunk, or several requests' in one pass). */
  readonly prefillChunkSeconds: Histogram = new Histogram(STEP_BOUNDS);

  /** Counts one answered request. */
  request(endpoint: string, status: number): void {
    const key = `${endpoint} ${status}`;
    this.requests.set(key, (this.requests.get(key) ?? 0) + 1);
  }

  /** The Prometheus text exposition. */
  text(): string {
    const lines: string[] = [];
    const scalar = (name: string, type: "counter" | "gauge", help: string, v: number) =>
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, `${name} ${v}`);
    lines.push("# HELP kvfold_requests_total Requests answered, by endpoint and HTTP status.");
    lines.push("# TYPE kvfold_requests_total counter");
    for (const [key, n] of [...this.requests].sort()) {
      const [endpoint, status] = key.split(" ");
      lines.push(`kvfold_requests_total{endpoint="${escapeLabel(endpoint)}",status="${status}"} ${n}`);
    }
    scalar("kvfold_prompt_tokens_total", "counter", "Prompt tokens prefilled.", this.promptTokens);
    scalar("kvfold_vector_rows_total", "counter", "Summary vector rows prefilled.", this.vectorRows);
    scalar("kvfold_generated_tokens_total", "counter", "Tokens generated.", this.generatedTokens);
    scalar("kvfold_aborted_requests_total", "counter", "Requests aborted by their client.", this.aborted);
    scalar("kvfold_prefill_chunks_total", "counter", "Prefill chunks run.", this.prefillChunks);
    scalar("kvfold_running_requests", "gauge", "Requests prefilling or generating.", this.running);
    scalar("kvfold_queue_length", "gauge", "Requests waiting for a slot.", this.queued);
    scalar("kvfold_max_batch", "gauge", "Most requests running at once.", this.maxBatch);
    lines.push(...this.batchRows.lines("kvfold_batch_rows", "Rows (requests) per batched decode step."));
    lines.push(
      ...this.timeToFirstToken.lines(
        "kvfold_time_to_first_token_seconds",
        "Seconds from a request's arrival to its first generated token.",
      ),
    );
    lines.push(
      ...this.interTokenLatency.lines(
        "kvfold_inter_token_latency_seconds",
        "Seconds between a request's consecutive generated tokens.",
      ),
    );
    lines.push(
      ...this.decodeStepSeconds.lines(
        "kvfold_decode_step_seconds",
        "Seconds of each batched decode step's native call.",
      ),
      ...this.stepHostSeconds.lines(
        "kvfold_step_host_seconds",
        "Seconds of each step's host work before its native call: sampling, detokenizing, stop checks.",
      ),
      ...this.prefillChunkSeconds.lines(
        "kvfold_prefill_chunk_seconds",
        "Seconds of each prefill native call (one request's chunk, or several requests' in one pass).",
      ),
    );
    return lines.join("\n") + "\n";
  }
}

function escapeLabel(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

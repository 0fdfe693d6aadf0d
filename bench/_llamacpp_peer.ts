// The driver's end of bench/llamacpp/peer.ts: starts it as a child Deno process (this same Deno
// binary) and sends it one request at a time.

const PEER_DIR = new URL("./llamacpp/", import.meta.url).pathname;

/** Reply to a `load` request. */
export interface PeerLoad {
  loadMs: number;
  modelBytes: number;
  contextSize: number;
  batchSize: number;
  flashAttention: boolean;
}

/** A running node-llama-cpp peer process. */
export class LlamaCppPeer {
  readonly #child: Deno.ChildProcess;
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  readonly #lines: AsyncIterator<string>;

  private constructor(child: Deno.ChildProcess) {
    this.#child = child;
    this.#writer = child.stdin.getWriter();
    this.#lines = child.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(splitLines())[
      Symbol.asyncIterator
    ]();
  }

  /** The peer's process id (its CPU time is the bench's own, not the machine's other load). */
  get pid(): number {
    return this.#child.pid;
  }

  /** Starts the peer; fails with the install command if bench/llamacpp has no node_modules. */
  static start(): LlamaCppPeer {
    try {
      Deno.statSync(`${PEER_DIR}node_modules/node-llama-cpp/package.json`);
    } catch {
      throw new Error(
        `Cannot start the llama.cpp peer: node-llama-cpp is not installed in ${PEER_DIR}; run ` +
          `\`npm install --prefix bench/llamacpp --omit=optional --ignore-scripts\` first`,
      );
    }
    const child = new Deno.Command(Deno.execPath(), {
      // No kvfold config: the peer resolves node-llama-cpp from bench/llamacpp/node_modules only.
      args: ["run", "-A", "--no-config", "--node-modules-dir=manual", "--no-lock", `${PEER_DIR}peer.ts`],
      cwd: PEER_DIR,
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    return new LlamaCppPeer(child);
  }

  /** Sends one request and waits for its reply; a failed request throws with the peer's message. */
  async request<T = Record<string, unknown>>(op: string, args: Record<string, unknown> = {}): Promise<T> {
    await this.#writer.write(new TextEncoder().encode(JSON.stringify({ op, ...args }) + "\n"));
    for (;;) {
      const next = await this.#lines.next();
      if (next.done) throw new Error(`the llama.cpp peer exited during "${op}"`);
      if (!next.value.startsWith("@@peer ")) continue; // llama.cpp logging on stdout
      const reply = JSON.parse(next.value.slice(7));
      if (!reply.ok) throw new Error(`the llama.cpp peer failed "${op}": ${reply.error}`);
      return reply as T;
    }
  }

  /** Stops the peer and waits for it to exit. */
  async close(): Promise<void> {
    try {
      await this.request("quit");
    } catch { /* already gone */ }
    await this.#writer.close().catch(() => {});
    await this.#child.status;
  }
}

function splitLines(): TransformStream<string, string> {
  let rest = "";
  return new TransformStream({
    transform(chunk, controller) {
      rest += chunk;
      const lines = rest.split("\n");
      rest = lines.pop()!;
      for (const line of lines) controller.enqueue(line);
    },
    flush(controller) {
      if (rest) controller.enqueue(rest);
    },
  });
}

/**
 * What the `kvfold` commands print: results on stdout, progress and notes on stderr, and the
 * Ctrl-C signal long commands pass to the engine.
 *
 * @module
 */

import { readBoundedText, type Session, type TrainingProgress } from "../mod.ts";

const enc = new TextEncoder();
/** Writes `s` to stdout as is. */
export const write = (s: string): void => void Deno.stdout.writeSync(enc.encode(s));
/** Writes one line to stderr. */
export const note = (s: string): void => void Deno.stderr.writeSync(enc.encode(s + "\n"));

/** "12.3 tok/s" for the tokens decoded after the first (sampled from the prefill), or "n/a". */
export function decodeRate(generated: number, decodeMs: number): string {
  return generated > 1 && decodeMs > 0
    ? `${((generated - 1) / (decodeMs / 1000)).toFixed(1)} tok/s`
    : "n/a tok/s";
}

/** An AbortSignal that Ctrl-C fires while it is in scope. */
export function interruptSignal(): { signal: AbortSignal; [Symbol.dispose](): void } {
  const ac = new AbortController();
  const onSig = () => ac.abort(new Error("interrupted"));
  Deno.addSignalListener("SIGINT", onSig);
  return { signal: ac.signal, [Symbol.dispose]: () => Deno.removeSignalListener("SIGINT", onSig) };
}

/** One stderr line on what a compressing cache did. */
export function cacheNote(session: Session): void {
  const m = session.memory();
  if (m.cacheKind === "full") return;
  note(
    `[cache ${m.cacheKind}: ${m.position} positions seen, ${m.kvSlotsUsed} slots in use, peak ${m.kvSlotsPeak} of ` +
      `${m.kvSlots} allocated (${(m.kvBytes / 1048576).toFixed(2)} MiB KV), ${m.compressions} compressions]`,
  );
}

/** One stderr line per optimizer step of `train lora` and `train lococo`. */
export function noteTrainingStep(p: TrainingProgress): void {
  note(
    `step ${p.step}/${p.totalSteps}  loss ${p.loss.toFixed(4)}  lr ${p.learningRate.toExponential(2)}  ` +
      `|g| ${p.gradNorm.toFixed(3)}  ${p.tokensPerSecond.toFixed(0)} tok/s  ETA ${p.etaSeconds.toFixed(0)} s`,
  );
}

/**
 * Progress on stderr: on a terminal, one line redrawn in place (`\r`) with the percentage, tokens/s
 * and ETA; otherwise (a log file, a pipe) a plain line at every tenth of the way, so logs read cleanly.
 */
export class ProgressBar {
  #total: number;
  #t0 = performance.now();
  #tty: boolean;
  #lastTenth = -1;
  constructor(total: number, tty: boolean = isStderrTerminal()) {
    this.#total = Math.max(total, 1);
    this.#tty = tty;
  }
  update(done: number, label: string) {
    const secs = (performance.now() - this.#t0) / 1000;
    const rate = done / Math.max(secs, 1e-9);
    const eta = rate > 0 ? (this.#total - done) / rate : 0;
    const pct = `${(100 * done / this.#total).toFixed(0)}% ${done}/${this.#total} tokens, ${
      rate.toFixed(0)
    } tok/s`;
    if (!this.#tty) {
      const tenth = Math.floor((10 * done) / this.#total);
      if (tenth > this.#lastTenth) note(`${pct}, ETA ${eta.toFixed(0)} s  ${label}`);
      this.#lastTenth = Math.max(this.#lastTenth, tenth);
      return;
    }
    const width = 24, filled = Math.round((width * done) / this.#total);
    const line = `[${"#".repeat(filled)}${"-".repeat(width - filled)}] ${pct}, ETA ${
      eta.toFixed(0)
    } s  ${label}`;
    Deno.stderr.writeSync(enc.encode(`\r${line.slice(0, 150).padEnd(150)}`));
  }
  done(message: string) {
    if (this.#tty) Deno.stderr.writeSync(enc.encode(`\r${message.padEnd(150)}\n`));
    else note(message);
  }
}

// A runtime without isTerminal (or a closed stream) counts as not a terminal.
function isStderrTerminal(): boolean {
  try {
    return Deno.stderr.isTerminal();
  } catch {
    return false;
  }
}

/** A text file named on the command line: regular files only, at most 1 GiB (documents, data sets). */
export function readUserText(path: string, action: string): Promise<string> {
  return readBoundedText(path, { action, maxBytes: 1024 ** 3 });
}

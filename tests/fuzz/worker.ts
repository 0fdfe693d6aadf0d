/**
 * Runs fuzz cases of one target in this process and reports each as a JSON line on stdout:
 * `{"start":i}` before the case, then `{"index":i,"outcome":...,"message":...}`. A crash or a hang
 * leaves a start without its result, which the campaign (the parent process) reports.
 *
 * Usage: deno run -A tests/fuzz/worker.ts TARGET CORPUS SEED INDEXES (comma-separated case numbers)
 *
 * @module
 */

import { join } from "node:path";
import { Kvfold, KvfoldError } from "../../mod.ts";
import { caseSeed, Rng } from "./mutate.ts";
import { type CaseContext, Garbage, TARGETS } from "./targets.ts";

/** How a case ended inside the worker. */
export type CaseOutcome = "ok" | "refused" | "garbage" | "uncaught";

const [targetName, corpus, seedText, indexText] = Deno.args;
const target = TARGETS.find((t) => t.name === targetName);
if (!target) throw new Error(`unknown fuzz target ${targetName}`);
const seed = Number(seedText);
const indexes = indexText.split(",").map(Number);

const kv = await Kvfold.open({ backend: "cpu", threads: 1 });
const memo = new Map<string, unknown>();
const scratch = await Deno.makeTempDir({ prefix: `kvfold-fuzz-${target.name}-` });
// A leading newline ends whatever a case printed without one (the CLI target prints text).
const out = (o: unknown) => Deno.stdout.writeSync(new TextEncoder().encode("\n" + JSON.stringify(o) + "\n"));

function copyDir(src: string, dst: string) {
  Deno.mkdirSync(dst, { recursive: true });
  for (const e of Deno.readDirSync(src)) Deno.copyFileSync(join(src, e.name), join(dst, e.name));
}

try {
  for (const index of indexes) {
    out({ start: index });
    const dir = join(scratch, String(index));
    copyDir(join(corpus, target.from), dir);
    // Case 0 is the control: the pristine input, which must load and pass the oracle.
    if (index > 0) target.mutate(new Rng(caseSeed(seed, target.name, index)), dir);
    // Relative paths a mutated command line names land in the case's folder, never in the checkout.
    Deno.chdir(dir);
    const ctx: CaseContext = { kv, corpus, dir, index, memo };
    let outcome: CaseOutcome = "ok";
    let message = "";
    try {
      await target.run(ctx);
    } catch (e) {
      message = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
      if (e instanceof Garbage) outcome = "garbage";
      else if (e instanceof KvfoldError && /^Cannot /.test(e.message)) outcome = "refused";
      else if (target.misuseErrors && (e instanceof RangeError || e instanceof TypeError)) {
        outcome = "refused";
      } else {
        outcome = "uncaught";
        message = e instanceof Error ? `${message}\n${e.stack ?? ""}` : message;
      }
    }
    out({ index, outcome, message: message.slice(0, 2000) });
    Deno.chdir(scratch);
    Deno.removeSync(dir, { recursive: true });
  }
} finally {
  Deno.removeSync(scratch, { recursive: true });
}
// Leaves at once: the pristine model stays loaded and the engine open for the OS to reclaim.
Deno.exit(0);

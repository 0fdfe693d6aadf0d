/**
 * A fuzz campaign: builds the pristine corpus, runs each target's cases in worker subprocesses
 * (so a crash costs one case, not the runner), kills a worker that stops reporting (a hang) and
 * restarts after the case that killed it. `deno task fuzz` runs it from the command line:
 *
 *   deno task fuzz [--cases N] [--seed S] [--target NAME]... [--case I] [--parallel P] [--timeout MS]
 *
 * `--case I` replays one case (with `--target` and the campaign's `--seed`).
 *
 * @module
 */

import { join } from "node:path";
import { parseArgs } from "node:util";
import { ensureNativeLibrary, repoRoot } from "../../src/_native_build.ts";
import { makeCorpus, TARGETS } from "./targets.ts";
import type { CaseOutcome } from "./worker.ts";

/** How one case ended, as the campaign saw it. */
export interface CaseResult {
  target: string;
  index: number;
  outcome: CaseOutcome | "crash" | "hang";
  message: string;
}

/** Options of {@link runCampaign}. */
export interface CampaignOptions {
  /** Cases per target. */
  cases: number;
  seed: number;
  /** Exactly these cases (replays of cases a long run found), instead of `cases` from `from`. */
  only?: readonly { target: string; index: number }[];
  /** Targets to run; default all (with `only`: the targets it names). */
  targets?: readonly string[];
  /** First case index; default 0. */
  from?: number;
  /** A worker silent this long is killed and its case counts as a hang; default 30 s. */
  caseTimeoutMs?: number;
  /** Workers at once; default 2. */
  parallel?: number;
  /** Where torch.save fixtures are; default the shared fixtures folder. */
  torchFixture?: string;
}

/** The results of every case, in target order. */
export async function runCampaign(options: CampaignOptions): Promise<CaseResult[]> {
  await ensureNativeLibrary(); // built once here, so no worker's first case waits for the compiler
  const corpus = await Deno.makeTempDir({ prefix: "kvfold-fuzz-corpus-" });
  try {
    await makeCorpus(
      corpus,
      options.torchFixture ?? join(repoRoot(), "..", "shared", "fixtures", "torch-bin", "single"),
    );
    const names = options.targets ??
      (options.only ? [...new Set(options.only.map((c) => c.target))] : TARGETS.map((t) => t.name));
    const results: CaseResult[][] = names.map(() => []);
    let next = 0;
    const lane = async () => {
      while (next < names.length) {
        const i = next++;
        const from = options.from ?? 0;
        const only = options.only?.filter((c) => c.target === names[i]).map((c) => c.index);
        const indexes = only ?? Array.from({ length: options.cases }, (_, k) => from + k);
        results[i] = await runTarget(names[i], corpus, options.seed, indexes, options);
      }
    };
    await Promise.all(Array.from({ length: options.parallel ?? 2 }, lane));
    return results.flat();
  } finally {
    await Deno.remove(corpus, { recursive: true });
  }
}

async function runTarget(
  target: string,
  corpus: string,
  seed: number,
  indexes: readonly number[],
  options: CampaignOptions,
): Promise<CaseResult[]> {
  const results: CaseResult[] = [];
  let at = 0; // position in `indexes` of the next case to run
  while (at < indexes.length) {
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        join(repoRoot(), "tests/fuzz/worker.ts"),
        target,
        corpus,
        String(seed),
        indexes.slice(at).join(","),
      ],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const stderr = new Response(child.stderr).text();
    let started = -1;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let hung = false;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        hung = true;
        try {
          child.kill("SIGKILL");
        } catch { /* already gone */ }
      }, options.caseTimeoutMs ?? 30_000);
    };
    arm();
    let buffered = "";
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
      buffered += chunk;
      let nl;
      while ((nl = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        arm();
        let msg: { start?: number; index?: number; outcome?: CaseOutcome; message?: string };
        try {
          msg = JSON.parse(line);
        } catch {
          continue; // a stray line a case printed
        }
        if (msg.start !== undefined) started = msg.start;
        else if (msg.index !== undefined) {
          results.push({ target, index: msg.index, outcome: msg.outcome!, message: msg.message ?? "" });
          at = indexes.indexOf(msg.index, at) + 1;
          started = -1;
        }
      }
    }
    const status = await child.status;
    clearTimeout(timer);
    const err = await stderr;
    if (started >= 0) {
      // The case that was running when the worker died or went silent.
      const why = hung
        ? `no answer within ${options.caseTimeoutMs ?? 30_000} ms`
        : `worker ended: ${exitText(status)}`;
      results.push({
        target,
        index: started,
        outcome: hung ? "hang" : "crash",
        message: `${why}\n${err.slice(-3000)}`,
      });
      at = indexes.indexOf(started, at) + 1;
    } else if (at < indexes.length) {
      // Died before its first case: report it once and stop this target.
      results.push({
        target,
        index: indexes[at],
        outcome: "crash",
        message: `worker failed to start: ${exitText(status)}\n${err.slice(-3000)}`,
      });
      break;
    }
  }
  return results;
}

function exitText(s: Deno.CommandStatus): string {
  return s.signal ? `signal ${s.signal}` : `exit code ${s.code}`;
}

/** A table of outcome counts per target. */
export function summarize(results: readonly CaseResult[]): string {
  const kinds = ["ok", "refused", "garbage", "uncaught", "crash", "hang"] as const;
  const rows = new Map<string, Record<string, number>>();
  for (const r of results) {
    const row = rows.get(r.target) ?? Object.fromEntries(kinds.map((k) => [k, 0]));
    row[r.outcome]++;
    rows.set(r.target, row);
  }
  const lines = [["target", ...kinds].map((s) => s.padEnd(18)).join("")];
  for (const [t, row] of rows) {
    lines.push([t, ...kinds.map((k) => String(row[k]))].map((s) => s.padEnd(18)).join(""));
  }
  return lines.join("\n");
}

/** Whether a case ended as the suite demands: correct output or a clean refusal. */
export function isClean(r: CaseResult): boolean {
  if (r.index === 0) return r.outcome === "ok"; // the unmutated control
  return r.outcome === "ok" || r.outcome === "refused";
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      cases: { type: "string", default: "300" },
      seed: { type: "string", default: "1" },
      target: { type: "string", multiple: true },
      case: { type: "string" },
      timeout: { type: "string", default: "30000" },
      parallel: { type: "string", default: "2" },
    },
  });
  const one = values.case !== undefined ? Number(values.case) : undefined;
  const results = await runCampaign({
    cases: one !== undefined ? 1 : Number(values.cases),
    from: one,
    seed: Number(values.seed),
    targets: values.target,
    caseTimeoutMs: Number(values.timeout),
    parallel: Number(values.parallel),
  });
  console.log(summarize(results));
  const bad = results.filter((r) => !isClean(r));
  for (const r of bad) {
    console.log(`\n--- ${r.target} #${r.index} (seed ${values.seed}): ${r.outcome}\n${r.message}`);
  }
  console.log(`\n${results.length - bad.length} clean, ${bad.length} not`);
  Deno.exit(bad.length === 0 ? 0 : 1);
}

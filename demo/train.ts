/**
 * `deno task train-demo [OUT_DIR] ['{budget overrides}'] [--resume]`: trains the demo model from zero with the seeded recipe
 * (demo/recipe.ts), then checks it on held-out documents (demo/evaluate.ts) and writes
 * `recipe.json` (budget, seconds per phase, machine) and `eval.json` beside the weights.
 * Ctrl-C stops between steps and keeps a checkpoint in `OUT_DIR.partial/` (one is also written every
 * 500 steps); `--resume` goes on from it with the same budget, to the bits of an unstopped run.
 * `deno task train-demo [DIR] --recheck` runs only the check of a folder trained before, rewriting its
 * `eval.json`.
 *
 * @module
 */

import { join, relative } from "node:path";
import { cpus } from "node:os";
import { Kvfold } from "../mod.ts";
import { overShippedBudget, type RecipeProgress, SHIPPED_BUDGET, trainDemoModel } from "./recipe.ts";
import { DEFAULT_TRAINED_DIR } from "./trained.ts";
import { type DemoEvaluation, evaluateDemo } from "./evaluate.ts";
import { formatDemoTable } from "./evaluate_table.ts";
import { VALIDATION_DOCUMENTS, VALIDATION_SEED } from "./recipe_select.ts";

/** Held-out seed of the recipe's own check (no training seed shares it). */
export const CHECK_SEED = 4242;
if (import.meta.main && Deno.args.includes("--recheck")) {
  const dir = Deno.args.find((a) => !a.startsWith("--")) ?? DEFAULT_TRAINED_DIR;
  const before = await Deno.readTextFile(join(dir, "eval.json")).then(JSON.parse).catch(() => ({}));
  await using kv = await Kvfold.open();
  await checkTrained(kv, dir, Object.keys(before.snapshots ?? {}));
} else if (import.meta.main) {
  const resume = Deno.args.includes("--resume");
  const args = Deno.args.filter((a) => a !== "--resume");
  const outDir = args[0] ?? DEFAULT_TRAINED_DIR;
  const budget = args[1] ? overShippedBudget(JSON.parse(args[1])) : SHIPPED_BUDGET;
  const abort = new AbortController();
  Deno.addSignalListener("SIGINT", () => abort.abort(new Error("interrupted")));
  const phases: Record<string, number> = {};
  let last = 0;
  const report = (p: RecipeProgress) => {
    phases[p.start === undefined ? p.phase : `start-${p.start}`] = p.seconds;
    if (p.seconds - last < 15 && p.step !== p.steps && p.phase !== "select") return;
    last = p.seconds;
    const loss = [
      isNaN(p.loss.lm) ? "" : `lm ${p.loss.lm.toFixed(3)}`,
      isNaN(p.loss.qa) ? "" : `qa ${p.loss.qa.toFixed(3)}`,
      p.score === undefined ? "" : `validation ${p.score.toFixed(3)}`,
    ]
      .filter(Boolean).join(" ");
    const start = p.start === undefined ? "" : `start ${p.start}: `;
    console.log(`${start}${p.phase} ${p.step}/${p.steps} ${loss} ${p.seconds.toFixed(0)} s`);
  };
  await using kv = await Kvfold.open();
  const tmp = `${outDir}.partial`;
  if (!resume) await Deno.remove(tmp, { recursive: true }).catch(() => {});
  const out = await trainDemoModel(kv, {
    outDir: tmp,
    budget,
    onProgress: report,
    signal: abort.signal,
    resume,
  }).catch((e) => {
    const again = [outDir, ...args.slice(1).map((a) => `'${a}'`), "--resume"].join(" ");
    if (abort.signal.aborted) console.error(`stopped; go on with: deno task train-demo ${again}`);
    throw e;
  });
  await Deno.remove(outDir, { recursive: true }).catch(() => {});
  await Deno.rename(tmp, outDir);
  const recipe = {
    command: `deno task train-demo ${args.join(" ")}`.trim(),
    date: new Date().toISOString(),
    machine: { cpu: cpus()[0]?.model ?? "unknown", cores: cpus().length, threads: kv.threads },
    budget,
    seconds: out.seconds,
    phaseEndSeconds: phases,
  };
  await Deno.writeTextFile(join(outDir, "recipe.json"), JSON.stringify(recipe, null, 2) + "\n");
  console.log(`trained in ${(out.seconds / 60).toFixed(1)} min`);
  await checkTrained(kv, outDir, out.snapshots.map((dir) => relative(tmp, dir)), abort.signal);
}

/**
 * The recipe's check of a trained folder: the check seed's table (none, LLoCO retrieved and oracle,
 * the chunk's text) and LLoCO exact match on the check and validation seeds for the model and each
 * snapshot (`snapshots`, folders under `dir`), written to `dir/eval.json`. `--recheck` runs it alone
 * on a folder trained before, as when the evaluation changes (the store's chunking on 2026-12-06).
 *
 * @example
 * ```ts ignore
 * await using kv = await Kvfold.open();
 * await checkTrained(kv, "demo/trained", []);
 * ```
 */
export async function checkTrained(
  kv: Kvfold,
  dir: string,
  snapshotNames: readonly string[],
  signal?: AbortSignal,
): Promise<void> {
  console.log(`checking ${dir} on held-out documents (seed ${CHECK_SEED})`);
  const check = await evaluateDemo(kv, {
    trainedDir: dir,
    seed: CHECK_SEED,
    documents: 4,
    conditions: ["none", "lloco", "lloco-oracle", "chunk-text"],
    signal,
  });
  console.log(formatDemoTable(check));
  const { rows: _rows, ...summary } = check as unknown as Record<string, unknown>;
  // The validation seed: more documents, for choosing among snapshots and runs without the check seed.
  // The model's check-seed scores are the check's own; snapshots are scored on both seeds.
  const compressed = async (trainedDir: string, checked?: DemoEvaluation) => {
    const exact: Record<string, number> = {};
    for (const seed of [CHECK_SEED, VALIDATION_SEED]) {
      const e = seed === CHECK_SEED && checked ? checked : await evaluateDemo(kv, {
        trainedDir,
        seed,
        documents: seed === CHECK_SEED ? 4 : VALIDATION_DOCUMENTS,
        conditions: ["lloco", "lloco-oracle"],
        signal,
      });
      for (const c of e.conditions) {
        if (c.condition === "lloco" || c.condition === "lloco-oracle") {
          exact[`${c.condition}@${seed}`] = c.exactMatch;
        }
      }
    }
    return exact;
  };
  const validation = await compressed(dir, check);
  const snapshots: Record<string, Record<string, number>> = {};
  for (const name of snapshotNames) {
    snapshots[name] = await compressed(join(dir, name));
    console.log(`${name}: ${JSON.stringify(snapshots[name])}`);
  }
  console.log(`final: ${JSON.stringify(validation)}`);
  await Deno.writeTextFile(
    join(dir, "eval.json"),
    JSON.stringify({ ...summary, compressed: validation, snapshots }, null, 2) + "\n",
  );
}

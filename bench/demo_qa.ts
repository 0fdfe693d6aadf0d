// The demo model's exact match on held-out documents, side by side (issue 18's table): the same
// trained model given no context, the full document text, LLoCO summary vectors (retrieved and
// oracle chunk), the text truncated to the vectors' positions, the retrieved chunk's text, and the
// LoCoCo / H2O / StreamingLLM caches over the full text; then the cross-group questions with the
// best group's adapter, composed adapters and none. Greedy decoding; it never trains.
//
//   deno run -A bench/demo_qa.ts [--trained demo/trained] [--seed 4242] [--documents 8]
//     [--cross-group 16] [--conditions none,full,...] [--questions-per-document N] [--threads 2]
//     [--rows] [--out bench/results/demo_qa.json]
import { parseArgs } from "node:util";
import { Kvfold } from "../mod.ts";
import { DEMO_CONDITIONS, type DemoCondition, evaluateDemo } from "../demo/evaluate.ts";
import { formatCrossGroupTable, formatDemoTable, formatDemoTargets } from "../demo/evaluate_table.ts";
import { DEFAULT_TRAINED_DIR } from "../demo/trained.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    trained: { type: "string", default: DEFAULT_TRAINED_DIR },
    seed: { type: "string", default: "4242" },
    documents: { type: "string", default: "8" },
    "cross-group": { type: "string", default: "16" },
    conditions: { type: "string", default: DEMO_CONDITIONS.join(",") },
    "questions-per-document": { type: "string" },
    threads: { type: "string", default: "2" },
    rows: { type: "boolean", default: false },
    out: { type: "string", default: new URL("./results/demo_qa.json", import.meta.url).pathname },
  },
});
const int = (name: string, s: string | undefined) => {
  const n = Number(s);
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`--${name} ${s} is not a non-negative integer`);
  return n;
};
const conditions = v.conditions!.split(",").map((c) => c.trim()) as DemoCondition[];
const cpu = (await Deno.readTextFile("/proc/cpuinfo").catch(() => "")).match(/model name\s*:\s*(.*)/)?.[1] ??
  "unknown";
await using kv = await Kvfold.open({ backend: "cpu", threads: int("threads", v.threads) });
const t0 = performance.now();
let lastPrint = 0;
const evaluation = await evaluateDemo(kv, {
  trainedDir: v.trained!,
  seed: int("seed", v.seed),
  documents: int("documents", v.documents),
  crossGroup: int("cross-group", v["cross-group"]),
  conditions,
  questionsPerDocument: v["questions-per-document"] === undefined
    ? undefined
    : int("questions-per-document", v["questions-per-document"]),
  onProgress: (p) => {
    const now = performance.now();
    if (now - lastPrint < 1000 && p.done < p.total) return;
    lastPrint = now;
    Deno.stderr.writeSync(
      new TextEncoder().encode(`\r${p.phase} ${p.done}/${p.total}, ${((now - t0) / 1000).toFixed(0)} s   `),
    );
  },
});
console.error();
const { rows, crossGroup, ...summary } = evaluation;
console.log(
  `\ndemo QA on held-out documents — seed ${summary.seed}, ${summary.documents} documents, ${summary.questions} ` +
    `questions, greedy (max ${summary.maxTokens} tokens); trained folder ${summary.trainedDir}`,
);
console.log(
  `machine: ${cpu}, ${kv.name}, ${kv.threads} threads; store: ${summary.store.tokens} tokens -> ` +
    `${summary.store.vectors} vectors (chunks of at most ${summary.store.chunkTokens} cut at ${summary.store.breakAt} ` +
    `ends, segments of ` +
    `${summary.store.segmentLength}); ${summary.seconds.toFixed(0)} s\n`,
);
console.log(formatDemoTable(evaluation));
console.log(`\n${formatDemoTargets(evaluation)}`);
if (crossGroup) console.log(`\n${formatCrossGroupTable(crossGroup)}`);

const command = ["deno", "run", "-A", "bench/demo_qa.ts", ...Deno.args].join(" ");
const result = {
  date: new Date().toISOString(),
  command,
  machine: { cpu, cores: navigator.hardwareConcurrency, engine: kv.name, threads: kv.threads },
  ...summary,
  crossGroup: crossGroup && (v.rows ? crossGroup : { ...crossGroup, rows: undefined }),
  ...(v.rows ? { rows } : {}),
};
await Deno.mkdir(new URL(".", `file://${v.out}`).pathname, { recursive: true });
await Deno.writeTextFile(v.out!, JSON.stringify(result, null, 2) + "\n");
console.log(`\nwrote ${v.out}`);

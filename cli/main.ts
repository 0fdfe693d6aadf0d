/**
 * The `kvfold` command line (`deno task kvfold <command> ...` from a checkout, `kvfold` from npm).
 * One file per command in `cli/`, each over the public API (`mod.ts`) only, each with the option
 * table that both parses its flags and prints its `--help`; `_options.ts` holds the shared parts.
 *
 * @module
 */

import { Kvfold, KvfoldError } from "../mod.ts";
import { note, write } from "./_console.ts";
import { closest, type CommandSpec, helpText, isUsageError } from "./_options.ts";
import { VERSION } from "./_version.ts";
import { ASK, cmdAsk } from "./ask.ts";
import { BENCH, cmdBench } from "./bench.ts";
import { BUILD, cmdBuild } from "./build.ts";
import { cmdCompress, COMPRESS } from "./compress.ts";
import { cmdConvert, CONVERT } from "./convert.ts";
import { cmdGenerate, GENERATE } from "./generate.ts";
import { cmdInfo, INFO } from "./info.ts";
import { cmdLogits, LOGITS } from "./logits.ts";
import { cmdMakeDemoCorpus, MAKE_DEMO_CORPUS } from "./make_demo_corpus.ts";
import { cmdMakeTestModel, MAKE_TEST_MODEL } from "./make_test_model.ts";
import { cmdServe, SERVE } from "./serve.ts";
import { cmdStore, STORE } from "./store.ts";
import { cmdTrain, TRAIN } from "./train.ts";
import { cmdWorker, WORKER } from "./worker.ts";

/** Every command: its usage and option table (for --help and parsing) and what runs it. */
export const COMMANDS: readonly { spec: CommandSpec; run: (args: string[]) => Promise<void> }[] = [
  { spec: INFO, run: cmdInfo },
  { spec: BUILD, run: cmdBuild },
  { spec: GENERATE, run: cmdGenerate },
  { spec: LOGITS, run: cmdLogits },
  { spec: MAKE_TEST_MODEL, run: cmdMakeTestModel },
  { spec: MAKE_DEMO_CORPUS, run: cmdMakeDemoCorpus },
  { spec: COMPRESS, run: cmdCompress },
  { spec: ASK, run: cmdAsk },
  { spec: SERVE, run: cmdServe },
  { spec: STORE, run: cmdStore },
  { spec: WORKER, run: cmdWorker },
  { spec: CONVERT, run: cmdConvert },
  { spec: BENCH, run: cmdBench },
  { spec: TRAIN, run: cmdTrain },
];

/** `kvfold --help`: the commands, one line each. */
export function usage(): string {
  const width = Math.max(...COMMANDS.map((c) => c.spec.name.length)) + 3;
  return [
    "kvfold — Llama-family models with compressed context",
    "",
    "Usage: kvfold <command> [options]",
    "       kvfold <command> --help     the command's usage and options",
    "       kvfold --version            the package and native library versions",
    "",
    "Commands:",
    ...COMMANDS.map((c) => `  ${c.spec.name.padEnd(width)}${c.spec.summary}`),
    "",
    "Engine options (commands that load a model): --threads N, --backend auto|cpu|cuda,",
    "  --dtype auto|f32|f16|bf16|q8_0|q4_0. Environment: KVFOLD_LIB (a prebuilt library), KVFOLD_CUDA=0|1,",
    "  KVFOLD_CPU=scalar|avx2|avx512|avx512bf16|amx (CPU kernels; default: the best this CPU has),",
    "  KVFOLD_BUILD_DIR, KVFOLD_DEBUG=1 (stack traces).",
    "",
  ].join("\n");
}

/** `kvfold --version`: the package version, and the native library's version and ABI. */
async function version(): Promise<string> {
  let native: string;
  try {
    const info = await Kvfold.info();
    native = `native library ${info.version} (ABI ${info.abiVersion}) at ${info.libraryPath}`;
  } catch (e) {
    native = `native library: not available (${(e as Error).message.split("\n")[0]})`;
  }
  return `kvfold ${VERSION}\n${native}\n`;
}

// -h/--help anywhere before a "--" (after it, words are positionals: a question may say "--help").
function asksHelp(args: string[]): boolean {
  const end = args.indexOf("--");
  return args.slice(0, end < 0 ? args.length : end).some((a) => a === "--help" || a === "-h");
}

/** Runs the CLI with `args`; returns the process exit code. */
export async function main(args: string[]): Promise<number> {
  const [cmd, ...rest] = args;
  if (!cmd || cmd === "--help" || cmd === "-h" || cmd === "help") {
    const about = cmd === "help" && rest[0] ? COMMANDS.find((c) => c.spec.name === rest[0]) : undefined;
    write(about ? helpText(about.spec) : usage());
    return cmd ? 0 : 2;
  }
  if (cmd === "--version" || cmd === "-V" || cmd === "version") {
    write(await version());
    return 0;
  }
  const command = COMMANDS.find((c) => c.spec.name === cmd);
  if (!command) {
    const near = closest(cmd.replace(/^-+/, ""), COMMANDS.map((c) => c.spec.name));
    note(`kvfold: unknown command "${cmd}"${near ? `; did you mean ${near}?` : ""}\n\n${usage()}`);
    return 2;
  }
  if (asksHelp(rest)) {
    write(helpText(command.spec));
    return 0;
  }
  try {
    await command.run(rest);
    return 0;
  } catch (e) {
    if (isUsageError(e)) {
      note(`kvfold ${cmd}: ${(e as Error).message}`);
      note(`Run 'kvfold ${cmd} --help' for its usage and options.`);
      return 2;
    }
    if (e instanceof KvfoldError) {
      note(`kvfold ${cmd}: ${e.message} [${e.code}]`);
      return e.code === "ABORTED" ? 130 : 1;
    }
    // Anything else is a kvfold bug: one line, and the stack only on request.
    const err = e instanceof Error ? e : new Error(String(e));
    note(`kvfold ${cmd}: ${err.name}: ${err.message} [INTERNAL]`);
    if (Deno.env.get("KVFOLD_DEBUG")) note(err.stack ?? "");
    else note("kvfold: this is a bug in kvfold; run again with KVFOLD_DEBUG=1 for the stack trace");
    return 70; // EX_SOFTWARE
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));

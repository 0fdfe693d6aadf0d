/**
 * The `kvfold` command line: `deno task kvfold <command> ...`. One file per command in `cli/`,
 * each over the public API (`mod.ts`) only; `_options.ts` parses the flags they share.
 *
 * @module
 */

import { KvfoldError } from "../mod.ts";
import { note, write } from "./_console.ts";
import { cmdAsk } from "./ask.ts";
import { cmdBench } from "./bench.ts";
import { cmdBuild } from "./build.ts";
import { cmdCompress } from "./compress.ts";
import { cmdConvert } from "./convert.ts";
import { cmdGenerate } from "./generate.ts";
import { cmdInfo } from "./info.ts";
import { cmdLogits } from "./logits.ts";
import { cmdMakeTestModel } from "./make_test_model.ts";
import { cmdStore } from "./store.ts";
import { cmdTrain } from "./train.ts";

const USAGE = `kvfold — Llama-family models with compressed context, from Deno

Usage: deno task kvfold <command> [options]

Commands:
  info                                   version, backends built, threads, GPU found or not
  build [--force]                        build the native library (done on first use anyway)
  generate --model DIR --prompt TEXT     stream a completion to stdout
      [--max-tokens N] [--temperature T] [--top-p P] [--top-k K] [--min-p P]
      [--repetition-penalty R] [--seed S] [--stop TEXT]... [--chat] [--system TEXT] [--adapter DIR]
      [CACHE]
  logits --model DIR --ids 1,2,3 --out FILE.safetensors [--prefix EMB.safetensors] [--adapter DIR]
      [CACHE]                            logits [n_ids, vocab] f32 at every position (no BOS added);
                                         --prefix runs its tensor "embeddings" [K, hidden] first;
                                         a compressing cache prefills segment by segment
  make-test-model OUT_DIR [--seed S] [--preset tiny|small|compressor] [--dtype float32|float16|bfloat16]
                                         write a random Llama-family model in Hugging Face layout
  make-test-model OUT_DIR --preset lora --base DIR [--rank R] [--targets q_proj,v_proj,...] [--seed S]
                                         write a random PEFT LoRA adapter for the model in DIR
  make-test-model FILE.safetensors --preset lococo-heads --base DIR [--slots M] [--segment B] [--seed S]
                                         write random LoCoCo heads (k 21, r 0.5; M, B default 512)
  compress --compressor DIR --ids 1,2,3 [--segment-length N] --out FILE.safetensors
                                         AutoCompressor summary vectors: tensor "summary" [K, hidden] f32
  compress --compressor DIR --store FILE [--group NAME] [--chunk-tokens N] FILES...
                                         compress documents into the SQLite store, with progress
  ask --model DIR --store FILE [--k N] [--adapter [GROUP=]DIR]... [CACHE] QUESTION
                                         stream an answer from the best chunks' summary vectors;
                                         GROUP=DIR adapters are chosen by the best chunk's group,
                                         a plain DIR is used whatever the group
  train lora --model DIR --data FILE.jsonl --out DIR [--rank R] [--alpha A] [--targets q_proj,...]
      [--rslora] [--steps N] [--accumulate N] [--lr LR] [--weight-decay W] [--warmup N] [--seed S]
      [--checkpoint FILE [--checkpoint-every N]]
                                         finetune a LoRA on {"question","answer"[,"document"]} lines
                                         (documents compressed by the checkpoint); writes a PEFT
                                         folder; --checkpoint resumes a killed run
  train lococo --model DIR --data FILE.txt --out HEADS.safetensors [--slots M] [--segment B]
      [--kernel K] [--keep-rate R] [--init HEADS] [--sequence-length N] [--steps N] [--lr LR]
      [--seed S] [--checkpoint FILE [--checkpoint-every N]]
                                         calibrate LoCoCo heads on text (model frozen)
  store stats FILE                       documents, tokens in, vectors kept, ratio, bytes
  convert SRC DST [--max-memory SIZE]    PyTorch .bin checkpoints (torch.save zip; sharded; PEFT
                                         adapter_model.bin) to safetensors; refuses non-tensor pickles
                                         and corrupt files; SIZE (e.g. 8G) bounds the memory per file
  bench decode|prefill --model DIR [--tokens N] [--repeats N]
                                         tokens/s and the fraction of the memory-bandwidth limit

Common options: --threads N (default: all cores), --backend auto|cpu|cuda, --dtype auto|f32|f16|bf16
CACHE: --cache full|lococo|h2o|streaming (default full)
  lococo:    --heads FILE.safetensors [--slots M] [--segment B]   (M, B default to the file's)
  h2o:       --slots M [--segment B]
  streaming: --window W [--sinks N] [--segment B]                  (sinks default 4)
`;

const COMMANDS: Record<string, (args: string[]) => Promise<void>> = {
  info: cmdInfo,
  build: cmdBuild,
  generate: cmdGenerate,
  logits: cmdLogits,
  "make-test-model": cmdMakeTestModel,
  compress: cmdCompress,
  ask: cmdAsk,
  store: cmdStore,
  convert: cmdConvert,
  bench: cmdBench,
  train: cmdTrain,
};

/** Runs the CLI with `args`; returns the process exit code. */
export async function main(args: string[]): Promise<number> {
  const [cmd, ...rest] = args;
  if (!cmd || cmd === "--help" || cmd === "-h" || cmd === "help" || rest.includes("--help")) {
    write(USAGE);
    return cmd ? 0 : 2;
  }
  const run = COMMANDS[cmd];
  if (!run) {
    note(`kvfold: unknown command "${cmd}"\n\n${USAGE}`);
    return 2;
  }
  try {
    await run(rest);
    return 0;
  } catch (e) {
    if (e instanceof KvfoldError) {
      note(`kvfold ${cmd}: ${e.message} [${e.code}]`);
      return e.code === "ABORTED" ? 130 : 1;
    }
    if (e instanceof TypeError && (e as { code?: string }).code?.startsWith("ERR_PARSE_ARGS")) {
      note(`kvfold ${cmd}: ${e.message}`);
      return 2;
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

/**
 * `kvfold make-demo-corpus`: the demo corpus's documents, `questions.jsonl` and tokenizer files,
 * drawn from a seed (`demo/`).
 *
 * @module
 */

import { KvfoldError } from "../mod.ts";
import {
  DEFAULT_DOCUMENTS,
  DEFAULT_FACTS_PER_DOCUMENT,
  DEFAULT_TOKENS_PER_DOCUMENT,
  DEMO_GROUPS,
  demoVocabulary,
  generateDemoCorpus,
  questionsJsonl,
  writeDemoTokenizer,
} from "../demo/mod.ts";
import { bool, defineCommand, intOpt, need, parseCommand, seedOpt, str, usageError } from "./_options.ts";
import { ProgressBar } from "./_console.ts";

const GROUP_NAMES = DEMO_GROUPS.map((g) => g.name);

/** `kvfold make-demo-corpus`'s usage and options. */
export const MAKE_DEMO_CORPUS = defineCommand({
  name: "make-demo-corpus",
  summary: "write seeded synthetic documents, their questions and the demo tokenizer",
  usage: [
    "make-demo-corpus OUT_DIR --seed S [--documents N] [--groups A,B] [--tokens-per-document N]\n" +
    "         [--facts-per-document N] [--cross-group N] [--force]",
  ],
  details: "Writes each document as <group>-<n>.txt, questions.jsonl (one {document, group, question,\n" +
    "answer} per line; cross-group rows add documents and groups), and tokenizer.json,\n" +
    "tokenizer_config.json and special_tokens_map.json. The same options give the same bytes; a\n" +
    "seed no model was trained on gives held-out documents. Within one corpus a name is stated in\n" +
    "one document only (cross-group names in one of each of two groups).",
  options: {
    seed: str("S", "seed of every draw (required)"),
    documents: str("N", `how many documents, taking the groups in turn (default ${DEFAULT_DOCUMENTS})`),
    groups: str("A,B", `document groups (default ${GROUP_NAMES.join(",")})`),
    "tokens-per-document": str("N", `tokens per document (default ${DEFAULT_TOKENS_PER_DOCUMENT})`),
    "facts-per-document": str(
      "N",
      `facts per document, one per entity (default ${DEFAULT_FACTS_PER_DOCUMENT})`,
    ),
    "cross-group": str("N", "questions whose answer needs documents of two groups (default 0)"),
    force: bool("write into a non-empty OUT_DIR, replacing the files of an earlier corpus"),
  },
  positionals: true,
});

// What this command writes, so --force replaces an earlier corpus (however many documents it had)
// and nothing else.
const OUTPUT = new RegExp(
  `^((${GROUP_NAMES.join("|")})-\\d+\\.txt|questions\\.jsonl|tokenizer\\.json|` +
    `tokenizer_config\\.json|special_tokens_map\\.json)$`,
);

async function entries(dir: string): Promise<string[] | undefined> {
  try {
    const names: string[] = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    return names;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    const why = e instanceof Deno.errors.NotADirectory ? "it is not a folder" : (e as Error).message;
    throw new KvfoldError("IO", `Cannot make the demo corpus: ${dir}: ${why}`, { cause: e });
  }
}

export async function cmdMakeDemoCorpus(args: string[]) {
  const { values: v, positionals } = parseCommand(args, MAKE_DEMO_CORPUS);
  if (positionals.length !== 1) {
    throw usageError(
      positionals.length === 0
        ? "Missing OUT_DIR: kvfold make-demo-corpus OUT_DIR --seed S"
        : `make-demo-corpus takes one OUT_DIR, not ${positionals.length} (${positionals.join(" ")})`,
    );
  }
  const outDir = positionals[0];
  const seed = seedOpt(need(v.seed, "seed"))!;
  const groups = v.groups?.split(",").map((g) => g.trim());
  if (groups?.some((g) => !GROUP_NAMES.includes(g))) {
    const bad = groups.find((g) => !GROUP_NAMES.includes(g));
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      `Cannot parse --groups: "${bad}" is not one of ${GROUP_NAMES.join(", ")}`,
    );
  }
  // Every refusal of the options comes before anything is written.
  const corpus = generateDemoCorpus({
    seed,
    groups,
    documents: intOpt(v.documents, "documents", 1, 1 << 16),
    tokensPerDocument: intOpt(v["tokens-per-document"], "tokens-per-document", 1, 1 << 20),
    factsPerDocument: intOpt(v["facts-per-document"], "facts-per-document", 1, 256),
    crossGroup: intOpt(v["cross-group"], "cross-group", 0, 1 << 20),
  });
  const present = await entries(outDir);
  if (present && present.length > 0) {
    if (!v.force) {
      throw new KvfoldError(
        "INVALID_ARGUMENT",
        `Cannot make the demo corpus: ${outDir} is not empty (pass --force to write into it)`,
      );
    }
    for (const name of present.filter((n) => OUTPUT.test(n))) await Deno.remove(`${outDir}/${name}`);
  }
  await Deno.mkdir(outDir, { recursive: true });
  const total = corpus.documents.reduce((n, d) => n + d.tokens.length, 0);
  const bar = new ProgressBar(total);
  let done = 0;
  for (const d of corpus.documents) {
    await Deno.writeTextFile(`${outDir}/${d.file}`, d.text + "\n");
    done += d.tokens.length;
    bar.update(done, d.file);
  }
  await Deno.writeTextFile(`${outDir}/questions.jsonl`, questionsJsonl(corpus.questions));
  await writeDemoTokenizer(outDir);
  const cross = corpus.questions.filter((q) => q.documents).length;
  bar.done(
    `wrote ${corpus.documents.length} documents (${total} tokens), ${corpus.questions.length} questions ` +
      `(${cross} cross-group) and the tokenizer (${demoVocabulary().length} tokens) to ${outDir}`,
  );
}

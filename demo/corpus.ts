/**
 * The demo corpus: long synthetic documents in two styles (a merchant house's ledger, a ship's log)
 * with facts about invented people placed anywhere among filler sentences, and the questions whose
 * answers are those facts' values. A small model trained from scratch on it can learn to answer
 * from compressed context; a fresh seed draws documents nobody trained on.
 *
 * Everything is drawn from `seededUint32` with integer arithmetic, so a seed gives the same bytes
 * on every platform and runtime. Text is lower case, one space between tokens and none before
 * `.`, `,` or `?`, which the demo tokenizer (`tokenizer.ts`) round-trips exactly.
 *
 * @module
 */

import { KvfoldError } from "../src/errors.ts";
import { seededUint32 } from "../src/_seeded_random.ts";
import { DEMO_GROUPS, type DemoAttribute, type DemoGroup, SLOT_VALUES } from "./groups.ts";
import { entityNames } from "./names.ts";

export { exactMatch, normalizeAnswer, partsAnswered } from "./answers.ts";
export { DEMO_GROUPS, type DemoAttribute, type DemoGroup } from "./groups.ts";

/** Tokens per document unless an option says otherwise. */
export const DEFAULT_TOKENS_PER_DOCUMENT = 3000;
/** Facts (distinct entities) per document unless an option says otherwise. */
export const DEFAULT_FACTS_PER_DOCUMENT = 16;
/** Documents of a corpus unless an option says otherwise. */
export const DEFAULT_DOCUMENTS = 8;

/** One fact of a document: an entity's attribute and value, and where the sentence stating it lies. */
export interface DemoFact {
  readonly entity: string;
  readonly attribute: string;
  /** The value, words separated by spaces (the answer to its question). */
  readonly value: string;
  /** Token index of the fact's sentence in the document (in `tokens`). */
  readonly tokenStart: number;
  /** Token index just past the fact's sentence. */
  readonly tokenEnd: number;
}

/** A question and its expected answer, as a row of `questions.jsonl`. */
export interface DemoQuestion {
  /** The file of the document that answers it (`ledger-0.txt`); for a cross-group one, the first. */
  readonly document: string;
  /** The group of that document. */
  readonly group: string;
  readonly question: string;
  readonly answer: string;
  /** Cross-group questions only: every document the answer needs, in the answer's order. */
  readonly documents?: readonly string[];
  /** Cross-group questions only: the groups of `documents`. */
  readonly groups?: readonly string[];
}

/** One generated document. */
export interface DemoDocument {
  /** `<group>-<n>`, n counting the documents of its group from 0. */
  readonly name: string;
  /** The file it is written to: `<name>.txt`. */
  readonly file: string;
  readonly group: string;
  /** Its tokens, as the demo tokenizer splits `text` (one id each). */
  readonly tokens: readonly string[];
  /** The text: `tokens` joined by spaces, none before punctuation. */
  readonly text: string;
  /** Its facts, in the order they appear. */
  readonly facts: readonly DemoFact[];
  /** One question per fact, in the same order. */
  readonly questions: readonly DemoQuestion[];
}

/** A generated corpus: its documents, and every question (per fact, then cross-group). */
export interface DemoCorpus {
  readonly documents: readonly DemoDocument[];
  readonly questions: readonly DemoQuestion[];
}

/** What a document looks like; shared by the corpus and the endless stream. */
export interface DemoDocumentOptions {
  /** Seed of every draw (a non-negative safe integer). */
  seed: number;
  /** Group names, by default every group (`ledger`, `voyage`); documents take them in turn. */
  groups?: readonly string[];
  /** Length of each document in tokens; it ends within one short sentence below (default 3000). */
  tokensPerDocument?: number;
  /** Facts per document, each about another entity (default 16). */
  factsPerDocument?: number;
}

/** Options of {@link generateDemoCorpus}. */
export interface DemoCorpusOptions extends DemoDocumentOptions {
  /** How many documents (default 8). */
  documents?: number;
  /**
   * Cross-group questions (default 0): each asks about an entity with one fact in a document of
   * one group and one in a document of another, and its answer is both values ("silk and calder").
   */
  crossGroup?: number;
}

type Draw = () => number;

/** A uniform integer in [0, n) (exact: next() · n stays below 2^53). */
const below = (next: Draw, n: number) => Math.floor((next() / 0x100000000) * n);
const pick = <T>(next: Draw, xs: readonly T[]): T => xs[below(next, xs.length)];
function shuffle<T>(next: Draw, xs: T[]): T[] {
  for (let i = xs.length - 1; i > 0; i--) {
    const j = below(next, i + 1);
    [xs[i], xs[j]] = [xs[j], xs[i]];
  }
  return xs;
}

/**
 * Text of word-level tokens: single spaces, none before `.`, `,` or `?`.
 *
 * @example
 * ```ts
 * import { renderTokens } from "./corpus.ts";
 * console.log(renderTokens(["we", "sighted", "kesh", ",", "far", "off", "."])); // "we sighted kesh, far off."
 * ```
 */
export function renderTokens(tokens: readonly string[]): string {
  return tokens.join(" ").replace(/ ([.,?])/g, "$1");
}

/** Tokens of a template, `{e}` and `{v}` filled and any other `{slot}` drawn from its list. */
function fill(next: Draw, template: string, entity = "", value = ""): string[] {
  const out: string[] = [];
  for (const w of template.split(" ")) {
    if (w === "{e}") out.push(entity);
    else if (w === "{v}") out.push(...value.split(" "));
    else if (w.startsWith("{")) out.push(...pick(next, SLOT_VALUES[w.slice(1, -1)]).split(" "));
    else out.push(w);
  }
  return out;
}

/** The question asking `attribute` of `entity`, rendered. */
function questionText(attribute: DemoAttribute, entity: string): string {
  return renderTokens(attribute.question.replace("{e}", entity).split(" "));
}

const fail = (why: string) => new KvfoldError("INVALID_ARGUMENT", `Cannot make the demo corpus: ${why}`);

function checkCount(v: unknown, name: string, min: number, max: number): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min || v > max) {
    throw fail(`${name} ${String(v)} is not an integer in [${min}, ${max}]`);
  }
  return v;
}

interface Shape {
  seed: number;
  groups: DemoGroup[];
  tokens: number;
  facts: number;
}

function checkShape(o: DemoDocumentOptions): Shape {
  const seed = checkCount(o.seed, "seed", 0, Number.MAX_SAFE_INTEGER);
  const names = o.groups ?? DEMO_GROUPS.map((g) => g.name);
  if (!Array.isArray(names) || names.length === 0) throw fail("groups is empty");
  const groups = names.map((n) => {
    const g = DEMO_GROUPS.find((g) => g.name === n);
    if (!g) throw fail(`group "${n}" is not one of ${DEMO_GROUPS.map((g) => g.name).join(", ")}`);
    return g;
  });
  if (new Set(names).size !== names.length) throw fail(`groups names a group twice (${names.join(", ")})`);
  const facts = checkCount(o.factsPerDocument ?? DEFAULT_FACTS_PER_DOCUMENT, "factsPerDocument", 1, 256);
  const tokens = checkCount(
    o.tokensPerDocument ?? DEFAULT_TOKENS_PER_DOCUMENT,
    "tokensPerDocument",
    1,
    1 << 20,
  );
  return { seed, groups, tokens, facts };
}

/**
 * One document of `group` stating one fact about each of `entities` (attribute, value and
 * wording drawn here), filled to `tokens` with the group's filler.
 */
function buildDocument(
  next: Draw,
  group: DemoGroup,
  name: string,
  entities: readonly string[],
  tokens: number,
): DemoDocument {
  const file = `${name}.txt`;
  const header = fill(next, group.header);
  // Attributes in shuffled rounds, so every attribute is asked about as often as the others.
  const attrs: DemoAttribute[] = [];
  while (attrs.length < entities.length) attrs.push(...shuffle(next, [...group.attributes]));
  const facts = entities.map((entity, i) => {
    const attribute = attrs[i];
    const value = pick(next, attribute.values);
    return { entity, attribute, value, tokens: fill(next, pick(next, attribute.facts), entity, value) };
  });
  let used = header.length + facts.reduce((n, f) => n + f.tokens.length, 0);
  if (used > tokens) {
    throw fail(
      `a ${group.name} document of ${tokens} tokens cannot hold its header and ${entities.length} facts ` +
        `(${used} tokens)`,
    );
  }
  // Filler up to the budget. Near the end random draws miss; then each template is tried in turn,
  // so the document stops short of the budget by less than the group's shortest filler sentence.
  const filler: string[][] = [];
  for (let misses = 0; misses < 16 + group.filler.length;) {
    const template = misses < 16 ? pick(next, group.filler) : group.filler[misses - 16];
    const s = fill(next, template);
    if (used + s.length <= tokens) {
      filler.push(s);
      used += s.length;
      misses = 0;
    } else {
      misses++;
    }
  }
  // Each fact goes before a uniformly drawn filler sentence (or at the end): anywhere after the header.
  const slots = facts.map(() => below(next, filler.length + 1));
  const order = facts.map((_, i) => i).sort((a, b) => slots[a] - slots[b] || a - b);
  const out: string[] = [...header];
  const placed: DemoFact[] = [];
  let k = 0;
  for (let s = 0; s <= filler.length; s++) {
    for (; k < order.length && slots[order[k]] === s; k++) {
      const f = facts[order[k]];
      placed.push({
        entity: f.entity,
        attribute: f.attribute.name,
        value: f.value,
        tokenStart: out.length,
        tokenEnd: out.length + f.tokens.length,
      });
      out.push(...f.tokens);
    }
    if (s < filler.length) out.push(...filler[s]);
  }
  const questions = placed.map((f) => ({
    document: file,
    group: group.name,
    question: questionText(group.attributes.find((a) => a.name === f.attribute)!, f.entity),
    answer: f.value,
  }));
  return { name, file, group: group.name, tokens: out, text: renderTokens(out), facts: placed, questions };
}

/**
 * Documents drawn without end (for training): document i is of group `groups[i % G]` and states
 * facts about `factsPerDocument` distinct names drawn afresh, so a name's value in one document
 * says nothing of another. Seeds of training streams and of held-out corpora should differ.
 *
 * @example
 * ```ts
 * import { demoDocuments } from "./corpus.ts";
 * for (const doc of demoDocuments({ seed: 1, tokensPerDocument: 400, factsPerDocument: 4 })) {
 *   console.log(doc.name, doc.questions[0].answer !== ""); // ledger-0 true
 *   break;
 * }
 * ```
 */
export function demoDocuments(options: DemoDocumentOptions & { start?: number }): Generator<DemoDocument> {
  const shape = checkShape(options);
  const start = checkCount(options.start ?? 0, "start", 0, Number.MAX_SAFE_INTEGER);
  // The first document is made now, so options that cannot make one throw here, not at the first next().
  const first = streamDocument(shape, start);
  return (function* () {
    yield first;
    for (let i = start + 1;; i++) yield streamDocument(shape, i);
  })();
}

/** Document i of the stream: its own draws, names drawn afresh from the whole pool. */
function streamDocument(shape: Shape, i: number): DemoDocument {
  const next = seededUint32(shape.seed, `stream:${i}`);
  // A partial Fisher-Yates: the first `facts` of a shuffled copy, without shuffling it all.
  const pool = [...entityNames()];
  for (let j = 0; j < shape.facts; j++) {
    const r = j + below(next, pool.length - j);
    [pool[j], pool[r]] = [pool[r], pool[j]];
  }
  const group = shape.groups[i % shape.groups.length];
  const name = `${group.name}-${Math.floor(i / shape.groups.length)}`;
  return buildDocument(next, group, name, pool.slice(0, shape.facts), shape.tokens);
}

/**
 * A corpus of `documents` documents and their questions, the same for the same options on every
 * platform. Within it a name is stated in at most one document, except the cross-group questions'
 * names, each in exactly one document of each of two groups; so every question has one answer
 * across the whole corpus, as retrieval over a store of all of it needs.
 *
 * @example
 * ```ts
 * import { generateDemoCorpus } from "./corpus.ts";
 * const corpus = generateDemoCorpus({ seed: 7, documents: 2, tokensPerDocument: 500, factsPerDocument: 4 });
 * console.log(corpus.documents.map((d) => d.file)); // ["ledger-0.txt", "voyage-0.txt"]
 * console.log(corpus.questions.length); // 8
 * ```
 */
export function generateDemoCorpus(options: DemoCorpusOptions): DemoCorpus {
  const shape = checkShape(options);
  const n = checkCount(options.documents ?? DEFAULT_DOCUMENTS, "documents", 1, 1 << 16);
  const cross = checkCount(options.crossGroup ?? 0, "crossGroup", 0, 1 << 20);
  const G = shape.groups.length;
  const docGroup = (d: number) => shape.groups[d % G];
  const groupsPresent = Math.min(G, n);
  if (cross > 0 && groupsPresent < 2) {
    throw fail(
      `cross-group questions need documents of two groups (there ${
        n === 1 ? "is 1 document" : `is 1 group`
      })`,
    );
  }
  const names = shuffle(seededUint32(shape.seed, "corpus:names"), [...entityNames()]);
  const needed = n * shape.facts - cross;
  if (needed > names.length) {
    throw fail(
      `${n} documents of ${shape.facts} facts need ${needed} distinct names; the pool has ${names.length} ` +
        `(fewer documents or facts per document)`,
    );
  }
  // Cross-group names first: each takes one fact slot in a document of each of two groups.
  const next = seededUint32(shape.seed, "corpus:cross");
  const slots: string[][] = Array.from({ length: n }, () => []);
  const crossPlan: { entity: string; docs: [number, number] }[] = [];
  for (let c = 0; c < cross; c++) {
    const a = below(next, groupsPresent);
    const b = (a + 1 + below(next, groupsPresent - 1)) % groupsPresent;
    const open = (g: number) =>
      slots.map((_, d) => d).filter((d) => d % G === g && slots[d].length < shape.facts);
    const inA = open(a), inB = open(b);
    if (inA.length === 0 || inB.length === 0) {
      throw fail(`${cross} cross-group questions do not fit in ${n} documents of ${shape.facts} facts`);
    }
    const docs: [number, number] = [pick(next, inA), pick(next, inB)];
    const entity = names[c];
    for (const d of docs) slots[d].push(entity);
    crossPlan.push({ entity, docs });
  }
  let taken = cross;
  for (const s of slots) while (s.length < shape.facts) s.push(names[taken++]);
  const documents = slots.map((entities, d) => {
    const group = docGroup(d);
    const name = `${group.name}-${Math.floor(d / G)}`;
    const rng = seededUint32(shape.seed, `corpus:${name}`);
    return buildDocument(rng, group, name, shuffle(rng, [...entities]), shape.tokens);
  });
  const questions: DemoQuestion[] = documents.flatMap((d) => d.questions);
  for (const { entity, docs } of crossPlan) {
    const parts = docs.map((d) => {
      const doc = documents[d];
      const fact = doc.facts.find((f) => f.entity === entity)!;
      const group = docGroup(d);
      return {
        doc,
        fact,
        question: questionText(group.attributes.find((a) => a.name === fact.attribute)!, entity),
      };
    });
    questions.push({
      document: parts[0].doc.file,
      group: parts[0].doc.group,
      question: `${parts[0].question.replace(/\?$/, "")}, and ${parts[1].question}`,
      answer: `${parts[0].fact.value} and ${parts[1].fact.value}`,
      documents: parts.map((p) => p.doc.file),
      groups: parts.map((p) => p.doc.group),
    });
  }
  return { documents, questions };
}

/**
 * The rows of `questions.jsonl`: one JSON object per line, each ending in a newline.
 *
 * @example
 * ```ts
 * import { generateDemoCorpus, questionsJsonl } from "./corpus.ts";
 * const { questions } = generateDemoCorpus({ seed: 3, documents: 1, tokensPerDocument: 300, factsPerDocument: 2 });
 * console.log(questionsJsonl(questions).split("\n").length); // 3 (two rows and the final newline)
 * ```
 */
export function questionsJsonl(questions: readonly DemoQuestion[]): string {
  return questions.map((q) => JSON.stringify(q) + "\n").join("");
}

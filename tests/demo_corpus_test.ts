// The demo corpus generator (demo/corpus.ts) and `kvfold make-demo-corpus`: the same seed gives the
// same bytes, every answer is stated once in its document as that fact, facts lie anywhere,
// the two groups share no template word, documents have the length asked for, and the CLI writes
// exactly what the API generates and refuses bad arguments by name.
import assert from "node:assert/strict";
import {
  DEMO_GROUPS,
  type DemoCorpus,
  type DemoDocument,
  demoDocuments,
  entityNames,
  exactMatch,
  generateDemoCorpus,
  makeDemoTokenizer,
  normalizeAnswer,
  partsAnswered,
  questionsJsonl,
} from "../demo/mod.ts";
import { SHARED_WORDS, SLOT_VALUES, templateWords } from "../demo/groups.ts";
import { runCli, tempDir } from "./_fixtures.ts";
import { answerParts } from "../demo/evaluate_cross.ts";
import { throwsKvfold } from "./_kvfold_asserts.ts";

const SMALL = { documents: 6, tokensPerDocument: 1200, factsPerDocument: 8, crossGroup: 3 };

async function sha256(text: string): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, "0")).join("");
}
const corpusBytes = (c: DemoCorpus) =>
  c.documents.map((d) => d.text).join("\n") + "\n" + questionsJsonl(c.questions);

/** Regex of a fact template with `{e}` fixed and `{v}` a captured span of words. */
function factPattern(template: string, entity: string): RegExp {
  const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const parts = template.split(" ").map((w) =>
    w === "{e}" ? esc(entity) : w === "{v}" ? "([a-z ]+?)" : esc(w)
  );
  return new RegExp(`^${parts.join(" ")}$`);
}

/** The sentences of a document, each as its tokens joined by single spaces. */
function sentences(doc: DemoDocument): string[] {
  const out: string[] = [];
  let cur: string[] = [];
  for (const t of doc.tokens) {
    cur.push(t);
    if (t === ".") (out.push(cur.join(" ")), cur = []);
  }
  assert.equal(cur.length, 0, `${doc.file} does not end with a full stop`);
  return out;
}

Deno.test("demo corpus: the same seed gives the same bytes (pinned), another seed other documents", async () => {
  const a = generateDemoCorpus({ seed: 42, ...SMALL });
  const b = generateDemoCorpus({ seed: 42, ...SMALL });
  assert.equal(corpusBytes(a), corpusBytes(b));
  // Pinned: a change here changes every corpus drawn so far, and the shipped model's evaluation.
  assert.equal(
    await sha256(corpusBytes(a)),
    "a97f68ddc6eb38d38ca0e00ff32ce70e1e8c2405fabb3648a4932c1eee2cd802",
  );
  const c = generateDemoCorpus({ seed: 43, ...SMALL });
  for (let i = 0; i < a.documents.length; i++) assert.notEqual(a.documents[i].text, c.documents[i].text);
  // The stream is seeded too, restarts at `start`, and its documents are not the corpus's.
  const take = (start: number, n: number) => {
    const out: DemoDocument[] = [];
    for (const d of demoDocuments({ seed: 42, tokensPerDocument: 600, factsPerDocument: 5, start })) {
      out.push(d);
      if (out.length === n) break;
    }
    return out;
  };
  const s = take(0, 4), t = take(2, 2);
  assert.deepEqual(t, s.slice(2));
  assert.deepEqual(s.map((d) => d.name), ["ledger-0", "voyage-0", "ledger-1", "voyage-1"]);
  const same = generateDemoCorpus({ seed: 42, documents: 2, tokensPerDocument: 600, factsPerDocument: 5 });
  assert.notEqual(s[0].text, same.documents[0].text);
  for (const d of s) assert.equal(new Set(d.facts.map((f) => f.entity)).size, 5);
});

Deno.test("demo corpus: every answer is its fact's value, stated once in its document; filler states none", () => {
  const corpus = generateDemoCorpus({ seed: 5, ...SMALL });
  const names = new Set(entityNames());
  const docs = new Map(corpus.documents.map((d) => [d.file, d]));
  const seenIn = new Map<string, string[]>();
  for (const doc of corpus.documents) {
    const group = DEMO_GROUPS.find((g) => g.name === doc.group)!;
    assert.equal(doc.facts.length, SMALL.factsPerDocument);
    assert.equal(doc.questions.length, doc.facts.length);
    assert.equal(new Set(doc.facts.map((f) => f.entity)).size, doc.facts.length, "entities are distinct");
    // Every sentence: a fact sentence of this group about exactly one name, or filler with no name.
    let factSentences = 0;
    for (const s of sentences(doc)) {
      const named = s.split(" ").filter((w) => names.has(w));
      if (named.length === 0) continue;
      assert.equal(named.length, 1, s);
      factSentences++;
      const matches = group.attributes.flatMap((a) => a.facts.map((t) => factPattern(t, named[0]).exec(s)));
      assert.equal(matches.filter(Boolean).length, 1, `not one fact sentence: ${s}`);
    }
    assert.equal(factSentences, doc.facts.length);
    for (const [i, f] of doc.facts.entries()) {
      const attribute = group.attributes.find((a) => a.name === f.attribute)!;
      assert.ok(attribute.values.includes(f.value));
      const sentence = doc.tokens.slice(f.tokenStart, f.tokenEnd).join(" ");
      const m = attribute.facts.map((t) => factPattern(t, f.entity).exec(sentence)).find(Boolean);
      assert.ok(m, `${doc.file}: "${sentence}" does not state ${f.entity}'s ${f.attribute}`);
      assert.equal(m[1], f.value);
      // The name is in the document once: the (entity, attribute) pair is stated exactly once.
      assert.equal(doc.tokens.filter((t) => t === f.entity).length, 1);
      const q = doc.questions[i];
      assert.equal(q.document, doc.file);
      assert.equal(q.group, doc.group);
      assert.equal(q.answer, f.value);
      assert.equal(q.question, attribute.question.replace("{e}", f.entity).replace(" ?", "?"));
      seenIn.set(f.entity, [...seenIn.get(f.entity) ?? [], doc.file]);
    }
  }
  const cross = corpus.questions.filter((q) => q.documents);
  assert.equal(cross.length, SMALL.crossGroup);
  assert.equal(corpus.questions.length, SMALL.documents * SMALL.factsPerDocument + SMALL.crossGroup);
  const crossNames = new Set<string>();
  for (const q of cross) {
    assert.equal(q.documents!.length, 2);
    assert.equal(q.document, q.documents![0]);
    assert.equal(q.group, q.groups![0]);
    assert.notEqual(q.groups![0], q.groups![1]);
    const entity = q.question.split(" ").find((w) => names.has(w.replace(/[,?]$/, "")))!.replace(/[,?]$/, "");
    crossNames.add(entity);
    const values = q.documents!.map((file, i) => {
      const doc = docs.get(file)!;
      assert.equal(doc.group, q.groups![i]);
      return doc.facts.find((f) => f.entity === entity)!.value;
    });
    assert.equal(q.answer, values.join(" and "));
    assert.deepEqual(seenIn.get(entity)!.toSorted(), [...q.documents!].toSorted());
  }
  // Any other name is stated in one document of the whole corpus.
  for (const [name, files] of seenIn) if (!crossNames.has(name)) assert.equal(files.length, 1, name);
});

Deno.test("demo corpus: facts are spread over the whole document", () => {
  const corpus = generateDemoCorpus({ seed: 9 });
  const quarters = [0, 0, 0, 0];
  let firsts = 0;
  for (const d of corpus.documents) {
    for (const f of d.facts) quarters[Math.min(3, Math.floor((4 * f.tokenStart) / d.tokens.length))]++;
    firsts += d.facts[0].tokenStart;
  }
  const all = corpus.documents.length * 16;
  // Uniform placement gives 32 per quarter of 128 (sd ~4.9); 16 is over 3 sd below.
  for (const q of quarters) assert.ok(q >= 16, `facts per quarter: ${quarters}`);
  assert.equal(quarters.reduce((a, b) => a + b), all);
  // The first fact is not pinned behind the header.
  assert.ok(firsts / corpus.documents.length > 30, `mean first fact at ${firsts / corpus.documents.length}`);
});

Deno.test("demo corpus: the groups share no template word, and none is a value or a name", () => {
  const words = (list: readonly string[]) => list.flatMap((v) => v.split(" "));
  const factValues = new Set(DEMO_GROUPS.flatMap((g) => g.attributes.flatMap((a) => words(a.values))));
  // A filler word is never a fact's value: a value is the only word of its kind in a document.
  for (const w of words(Object.values(SLOT_VALUES).flat())) {
    assert.ok(!factValues.has(w), `filler word "${w}" is a value`);
  }
  const values = new Set([...factValues, ...words(Object.values(SLOT_VALUES).flat())]);
  const names = new Set(entityNames());
  const own = DEMO_GROUPS.map((g) => {
    const words = new Set<string>();
    const templates = [g.header, ...g.filler, ...g.attributes.flatMap((a) => [...a.facts, a.question])];
    for (const t of templates) for (const w of templateWords(t)) words.add(w);
    for (const w of words) {
      assert.ok(!values.has(w), `${g.name} template word "${w}" is a value`);
      assert.ok(!names.has(w), `${g.name} template word "${w}" is a name`);
    }
    return new Set([...words].filter((w) => !SHARED_WORDS.has(w)));
  });
  const [ledger, voyage] = own;
  const both = [...ledger].filter((w) => voyage.has(w));
  assert.deepEqual(both, []);
  assert.ok(ledger.size > 80 && voyage.size > 80, `${ledger.size} and ${voyage.size} words of their own`);
  // In generated text: a ledger document uses no word of the voyage style, and the other way round.
  const corpus = generateDemoCorpus({ seed: 2, documents: 2 });
  for (const [i, d] of corpus.documents.entries()) {
    const other = own[1 - i];
    assert.deepEqual(d.tokens.filter((t) => other.has(t)), [], d.file);
    assert.ok(d.tokens.filter((t) => own[i].has(t)).length > d.tokens.length / 4, d.file);
  }
});

Deno.test("demo corpus: documents stop short of the length asked for by less than one short sentence", () => {
  for (const tokensPerDocument of [300, 1000, 3000, 4096]) {
    const corpus = generateDemoCorpus({
      seed: tokensPerDocument,
      documents: 4,
      tokensPerDocument,
      factsPerDocument: 8,
    });
    for (const d of corpus.documents) {
      const group = DEMO_GROUPS.find((g) => g.name === d.group)!;
      // The shortest filler sentence without slots is a lower bound on the gap the generator can close.
      const shortest = Math.min(
        ...group.filler.filter((t) => !t.includes("{")).map((t) => t.split(" ").length),
      );
      assert.ok(d.tokens.length <= tokensPerDocument, `${d.file}: ${d.tokens.length}`);
      assert.ok(
        tokensPerDocument - d.tokens.length < shortest,
        `${d.file}: ${d.tokens.length} of ${tokensPerDocument}`,
      );
    }
  }
});

Deno.test("demo corpus: options out of range are refused by name", () => {
  throwsKvfold(() => generateDemoCorpus({ seed: -1 }), "INVALID_ARGUMENT", /seed -1/);
  throwsKvfold(() => generateDemoCorpus({ seed: 1.5 }), "INVALID_ARGUMENT", /seed 1\.5/);
  throwsKvfold(() => generateDemoCorpus({ seed: 1, documents: 0 }), "INVALID_ARGUMENT", /documents 0/);
  throwsKvfold(() => generateDemoCorpus({ seed: 1, groups: ["atlas"] }), "INVALID_ARGUMENT", /group "atlas"/);
  throwsKvfold(
    () => generateDemoCorpus({ seed: 1, groups: ["ledger", "ledger"] }),
    "INVALID_ARGUMENT",
    /twice/,
  );
  // The stream refuses when called, not at its first document.
  throwsKvfold(() => demoDocuments({ seed: 1, tokensPerDocument: 50 }), "INVALID_ARGUMENT", /50 tokens/);
  throwsKvfold(() => demoDocuments({ seed: 1, start: -2 }), "INVALID_ARGUMENT", /start -2/);
  throwsKvfold(() => demoDocuments({ seed: 1, groups: [] }), "INVALID_ARGUMENT", /groups is empty/);
  throwsKvfold(
    () => generateDemoCorpus({ seed: 1, tokensPerDocument: 100 }),
    "INVALID_ARGUMENT",
    /document of 100 tokens cannot hold its header and 16 facts/,
  );
  throwsKvfold(
    () => generateDemoCorpus({ seed: 1, documents: 60 }),
    "INVALID_ARGUMENT",
    /60 documents of 16 facts need 960 distinct names; the pool has 768/,
  );
  throwsKvfold(
    () => generateDemoCorpus({ seed: 1, groups: ["voyage"], crossGroup: 1 }),
    "INVALID_ARGUMENT",
    /cross-group questions need documents of two groups/,
  );
  throwsKvfold(
    () => generateDemoCorpus({ seed: 1, documents: 2, factsPerDocument: 2, crossGroup: 3 }),
    "INVALID_ARGUMENT",
    /3 cross-group questions do not fit in 2 documents of 2 facts/,
  );
});

Deno.test("demo corpus: exact match normalises case, punctuation, articles and spaces, nothing else", () => {
  assert.equal(normalizeAnswer("  The Red   Lion. "), "red lion");
  assert.equal(normalizeAnswer("an ochre,  a HARE!"), "ochre hare");
  assert.ok(exactMatch("Forty two.", "forty two"));
  assert.ok(exactMatch("silk and calder", "Silk, and Calder"));
  assert.ok(!exactMatch("forty", "forty two"));
  assert.ok(!exactMatch("forty two crowns", "forty two"));
  assert.ok(!exactMatch("", "silk"));
});

Deno.test("demo corpus: a part is stated when its words are whole words of the answer, in order", () => {
  assert.equal(partsAnswered("quillon", ["ninety", "quillon"]), 1);
  assert.equal(partsAnswered("The Quillon, and ninety!", ["ninety", "quillon"]), 2);
  // Not inside a longer value, not a prefix of a word, not out of order.
  assert.equal(partsAnswered("seventy six", ["wax", "seventy six"]), 1);
  assert.equal(partsAnswered("seventy six", ["wax", "seventy"]), 1);
  assert.equal(partsAnswered("seventy", ["wax", "seventy six"]), 0);
  assert.equal(partsAnswered("blue boar", ["varesh", "blue bear"]), 0);
  assert.equal(partsAnswered("bear blue", ["varesh", "blue bear"]), 0);
  assert.equal(partsAnswered("bluebear", ["blue bear"]), 0);
  assert.equal(partsAnswered("", ["silk"]), 0);
  assert.equal(partsAnswered("silk", [""]), 0);
});

Deno.test("demo corpus: a cross-group answer splits into its two facts' values", () => {
  const c = generateDemoCorpus({ seed: 42, ...SMALL });
  const cross = c.questions.filter((q) => q.documents);
  assert.equal(cross.length, SMALL.crossGroup);
  for (const q of cross) {
    // The values of the one entity the question names that has a fact in both documents.
    const [a, b] = q.documents!.map((file) => c.documents.find((d) => d.file === file)!);
    const words = q.question.replace(/[?,]/g, "").split(" ");
    const shared = a.facts.filter((f) =>
      words.includes(f.entity) && b.facts.some((g) => g.entity === f.entity)
    );
    assert.equal(shared.length, 1, q.question);
    const entity = shared[0].entity;
    const values = [a, b].map((d) => d.facts.find((f) => f.entity === entity)!.value);
    assert.deepEqual(answerParts(q), values, q.question);
    assert.equal(partsAnswered(q.answer, answerParts(q)), 2);
  }
  // No value holds the word the answer joins them with.
  for (const list of Object.values(SLOT_VALUES)) {
    for (const v of list) assert.ok(!v.split(" ").includes("and"), v);
  }
});

Deno.test("cli make-demo-corpus: writes the API's corpus, questions and tokenizer, nothing more", async () => {
  const dir = await tempDir();
  try {
    const out = `${dir}/corpus`;
    const r = await runCli(
      "make-demo-corpus",
      out,
      "--seed",
      "12",
      "--documents",
      "3",
      "--tokens-per-document",
      "700",
      "--facts-per-document",
      "6",
      "--cross-group",
      "2",
    );
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /wrote 3 documents \(\d+ tokens\), 20 questions \(2 cross-group\) and the tokenizer/);
    const corpus = generateDemoCorpus({
      seed: 12,
      documents: 3,
      tokensPerDocument: 700,
      factsPerDocument: 6,
      crossGroup: 2,
    });
    const files = [...Deno.readDirSync(out)].map((e) => e.name).toSorted();
    assert.deepEqual(files, [
      "ledger-0.txt",
      "ledger-1.txt",
      "questions.jsonl",
      "special_tokens_map.json",
      "tokenizer.json",
      "tokenizer_config.json",
      "voyage-0.txt",
    ]);
    for (const d of corpus.documents) assert.equal(Deno.readTextFileSync(`${out}/${d.file}`), d.text + "\n");
    const rows = Deno.readTextFileSync(`${out}/questions.jsonl`).trimEnd().split("\n").map((l) =>
      JSON.parse(l)
    );
    assert.deepEqual(rows, corpus.questions);
    for (const row of rows) {
      const keys = row.documents ? ["answer", "document", "documents", "group", "groups", "question"] : [
        "answer",
        "document",
        "group",
        "question",
      ];
      assert.deepEqual(Object.keys(row).toSorted(), keys);
    }
    assert.deepEqual(
      JSON.parse(Deno.readTextFileSync(`${out}/tokenizer.json`)),
      makeDemoTokenizer().tokenizerJson,
    );

    // A non-empty folder is refused and left as it was; --force replaces an earlier corpus's files only.
    Deno.writeTextFileSync(`${out}/notes.md`, "mine");
    Deno.writeTextFileSync(`${out}/voyage-7.txt`, "stale");
    const again = await runCli("make-demo-corpus", out, "--seed", "13", "--documents", "1");
    assert.equal(again.code, 1);
    assert.match(
      again.err,
      /Cannot make the demo corpus: .*corpus is not empty \(pass --force to write into it\) \[INVALID_ARGUMENT\]/,
    );
    assert.equal(Deno.readTextFileSync(`${out}/voyage-7.txt`), "stale");
    const forced = await runCli(
      "make-demo-corpus",
      out,
      "--seed",
      "13",
      "--documents",
      "1",
      "--tokens-per-document",
      "500",
      "--facts-per-document",
      "4",
      "--force",
    );
    assert.equal(forced.code, 0, forced.err);
    const left = [...Deno.readDirSync(out)].map((e) => e.name).toSorted();
    assert.deepEqual(left, [
      "ledger-0.txt",
      "notes.md",
      "questions.jsonl",
      "special_tokens_map.json",
      "tokenizer.json",
      "tokenizer_config.json",
    ]);
    const one = generateDemoCorpus({ seed: 13, documents: 1, tokensPerDocument: 500, factsPerDocument: 4 });
    assert.equal(Deno.readTextFileSync(`${out}/ledger-0.txt`), one.documents[0].text + "\n");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli make-demo-corpus: refuses bad arguments by name, before writing anything", async () => {
  const dir = await tempDir();
  try {
    const out = `${dir}/c`;
    const cases: [string[], number, RegExp][] = [
      [[out], 1, /Missing --seed/],
      [["--seed", "1"], 2, /Missing OUT_DIR/],
      [[out, `${dir}/d`, "--seed", "1"], 2, /takes one OUT_DIR, not 2/],
      [[out, "--seed=-3"], 1, /--seed: "-3" is outside/],
      [[out, "--seed", "1", "--documents", "0"], 1, /--documents: "0" is outside \[1, 65536\]/],
      [[out, "--seed", "1", "--documents", "2.5"], 1, /--documents: "2.5" is not an integer/],
      [[out, "--seed", "1", "--groups", "ledger,atlas"], 1, /--groups: "atlas" is not one of ledger, voyage/],
      [[out, "--seed", "1", "--tokens-per-document", "50"], 1, /document of 50 tokens cannot hold/],
      [[out, "--seed", "1", "--documents", "80"], 1, /need 1280 distinct names; the pool has 768/],
      [[out, "--seed", "1", "--groups", "ledger", "--cross-group", "1"], 1, /need documents of two groups/],
      [
        [out, "--seed", "1", "--cross-groups", "1"],
        2,
        /unknown option --cross-groups; did you mean --cross-group\?/,
      ],
    ];
    for (const [args, code, re] of cases) {
      const r = await runCli("make-demo-corpus", ...args);
      assert.equal(r.code, code, `${args.join(" ")}: ${r.err}`);
      assert.match(r.err, re, args.join(" "));
    }
    assert.throws(() => Deno.statSync(out), Deno.errors.NotFound);
    Deno.writeTextFileSync(out, "a file");
    const file = await runCli("make-demo-corpus", out, "--seed", "1");
    assert.equal(file.code, 1);
    assert.match(file.err, /Cannot make the demo corpus: .*c: it is not a folder \[IO\]/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

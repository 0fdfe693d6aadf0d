// The demo tokenizer (demo/tokenizer.ts) through the normal loading path: every word of every
// generated document is one token with the vocabulary's id, decoding gives the text back exactly,
// nothing the generator writes is <unk>, and a model folder with it loads and encodes the same.
import assert from "node:assert/strict";
import {
  DEMO_BOS_ID,
  DEMO_EOS_ID,
  DEMO_PAD_ID,
  DEMO_SPECIAL_TOKENS,
  demoDocuments,
  demoTokenIds,
  demoVocabulary,
  entityNames,
  generateDemoCorpus,
  writeDemoTokenizer,
} from "../demo/mod.ts";
import { TextTokenizer } from "../mod.ts";
import { tempDir, testEngine, testModel } from "./_fixtures.ts";
import { rejectsWith } from "./_kvfold_asserts.ts";

async function loadDemoTokenizer(): Promise<TextTokenizer> {
  const dir = await tempDir();
  try {
    assert.deepEqual(await writeDemoTokenizer(dir), [
      "tokenizer.json",
      "tokenizer_config.json",
      "special_tokens_map.json",
    ]);
    return await TextTokenizer.fromModelDir(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const UNK = DEMO_SPECIAL_TOKENS.indexOf("<unk>");

Deno.test("demo tokenizer: generated documents round-trip, one token per word, no <unk>", async () => {
  const tok = await loadDemoTokenizer();
  const corpus = generateDemoCorpus({ seed: 31, crossGroup: 6 });
  const stream: { text: string; tokens: readonly string[] }[] = [];
  for (const d of demoDocuments({ seed: 32, tokensPerDocument: 1500, factsPerDocument: 30 })) {
    stream.push(d);
    if (stream.length === 4) break;
  }
  for (const d of [...corpus.documents, ...stream]) {
    const ids = tok.encode(d.text);
    // The generator's token count is the tokenizer's: its length control holds in model tokens.
    assert.equal(ids.length, d.tokens.length);
    assert.deepEqual(ids, demoTokenIds(d.tokens));
    assert.ok(!ids.includes(UNK));
    assert.equal(tok.decode(ids), d.text);
    // The file as written (a trailing newline) encodes the same.
    assert.deepEqual(tok.encode(d.text + "\n"), ids);
  }
  for (const q of corpus.questions) {
    for (const text of [q.question, q.answer]) {
      const ids = tok.encode(text);
      assert.ok(!ids.includes(UNK), text);
      assert.equal(tok.decode(ids), text);
    }
  }
});

Deno.test("demo tokenizer: the vocabulary is the specials, every corpus word once, and spelling pieces", async () => {
  const tok = await loadDemoTokenizer();
  const vocab = demoVocabulary();
  assert.equal(new Set(vocab).size, vocab.length);
  assert.deepEqual(vocab.slice(0, 4), ["<unk>", "<s>", "</s>", "<pad>"]);
  assert.equal(tok.maxTokenId, vocab.length - 1);
  assert.equal(tok.bosTokenId, DEMO_BOS_ID);
  assert.equal(tok.eosTokenId, DEMO_EOS_ID);
  assert.equal(tok.tokenToId("<pad>"), DEMO_PAD_ID);
  // Every word is its own single token, with the id of its place in the vocabulary.
  for (const [id, w] of vocab.entries()) {
    if (id < 4 || w.startsWith("##")) continue;
    assert.deepEqual(tok.encode(w), [id], w);
  }
  for (const name of entityNames()) assert.equal(tok.encode(name).length, 1, name);
  // Between 1k and 2k tokens: small enough for a tiny model's embedding, every name and value in it.
  assert.ok(vocab.length > 1000 && vocab.length < 2000, `${vocab.length} tokens`);
  // BOS on request; what a user types, in any case, with words from outside, is spelled, not <unk>.
  const ids = tok.encode("What goods did Zyxwv buy?", { addSpecialTokens: true });
  assert.equal(ids[0], DEMO_BOS_ID);
  assert.ok(!ids.includes(UNK));
  assert.equal(ids.length, 1 + 3 + 5 + 2); // <s> what goods did z ##y ##x ##w ##v buy ?
  assert.equal(tok.decode(ids), "what goods did zyxwv buy?");
  assert.equal(tok.decode([...tok.encode("silk"), DEMO_EOS_ID]), "silk");
});

Deno.test("demo tokenizer: a model folder with it loads through the model loader and encodes the same", async () => {
  const kv = await testEngine();
  const vocab = demoVocabulary().length;
  const dir = await testModel("demo-tokenizer", { vocabSize: vocab, seed: 4 });
  await writeDemoTokenizer(dir);
  using model = await kv.loadModel(dir);
  assert.equal(model.info.vocabSize, vocab);
  const doc = generateDemoCorpus({ seed: 8, documents: 1, tokensPerDocument: 600, factsPerDocument: 4 })
    .documents[0];
  assert.deepEqual(model.tokenizer.encode(doc.text), demoTokenIds(doc.tokens));
  assert.equal(model.tokenizer.decode(model.tokenizer.encode(doc.text)), doc.text);
  // One id past a smaller model's embedding is refused by the loader's own check.
  const small = await testModel("demo-tokenizer-small", { vocabSize: vocab - 1, seed: 4 });
  await writeDemoTokenizer(small);
  await rejectsWith(kv.loadModel(small), "FORMAT", new RegExp(`token id ${vocab - 1}`));
});

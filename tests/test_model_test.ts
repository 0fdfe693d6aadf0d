import assert from "node:assert/strict";
import { join } from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import { Template } from "@huggingface/jinja";
import { KvfoldError } from "../src/errors.ts";
import {
  f16ToF32,
  f32ToF16,
  readSafetensorsFile,
  type TensorView,
  toFloat32,
} from "../src/formats/safetensors.ts";
import { makeTestModel, makeTestTokenizer, TEST_MODEL_PRESETS, TEST_SPECIAL_TOKENS } from "../testing/mod.ts";
import { sameBytes, tempDir } from "./_fixtures.ts";

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await tempDir("kvfold_test_model_");
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function readJson(path: string): Promise<Record<string, unknown>> {
  return JSON.parse(await Deno.readTextFile(path));
}

/** All tensors of a model folder (single file or sharded). */
async function readAllTensors(dir: string): Promise<Map<string, TensorView>> {
  const out = new Map<string, TensorView>();
  let files = ["model.safetensors"];
  try {
    const index = await readJson(join(dir, "model.safetensors.index.json"));
    files = [...new Set(Object.values(index.weight_map as Record<string, string>))];
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  for (const f of files) {
    for (const [k, v] of (await readSafetensorsFile(join(dir, f))).tensors) out.set(k, v);
  }
  return out;
}

Deno.test("tiny llama: files, config and tensor names/shapes/dtypes", async () => {
  await withTempDir(async (dir) => {
    const info = await makeTestModel(dir, { seed: 7 });
    for (
      const f of [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
      ]
    ) {
      assert.ok((await Deno.stat(join(dir, f))).isFile, f);
      assert.ok(info.files.includes(f), f);
    }
    const cfg = await readJson(join(dir, "config.json"));
    const p = TEST_MODEL_PRESETS.tiny;
    assert.deepEqual(cfg.architectures, ["LlamaForCausalLM"]);
    assert.equal(cfg.model_type, "llama");
    assert.equal(cfg.hidden_size, p.hiddenSize);
    assert.equal(cfg.num_hidden_layers, p.numLayers);
    assert.equal(cfg.num_attention_heads, p.numHeads);
    assert.equal(cfg.num_key_value_heads, p.numKeyValueHeads);
    assert.equal(cfg.intermediate_size, p.intermediateSize);
    assert.equal(cfg.vocab_size, p.vocabSize);
    assert.equal(cfg.max_position_embeddings, p.maxPositionEmbeddings);
    assert.equal(cfg.torch_dtype, "float32");
    assert.equal(cfg.tie_word_embeddings, false);
    assert.equal(cfg.rope_scaling, null);
    assert.equal(cfg.rope_theta, 10000);
    assert.equal(cfg.bos_token_id, 1);
    assert.equal(cfg.eos_token_id, 2);
    assert.equal(cfg.hidden_act, "silu");
    assert.equal(cfg.attention_bias, false);
    assert.equal("head_dim" in cfg, false);
    const gen = await readJson(join(dir, "generation_config.json"));
    assert.equal(gen.bos_token_id, 1);
    assert.equal(gen.eos_token_id, 2);

    const tensors = await readAllTensors(dir);
    const H = 64, I = 128, V = 512, D = 16;
    const expected = new Map<string, number[]>([["model.embed_tokens.weight", [V, H]]]);
    for (let l = 0; l < 2; l++) {
      const q = `model.layers.${l}`;
      expected.set(`${q}.input_layernorm.weight`, [H]);
      expected.set(`${q}.self_attn.q_proj.weight`, [4 * D, H]);
      expected.set(`${q}.self_attn.k_proj.weight`, [2 * D, H]);
      expected.set(`${q}.self_attn.v_proj.weight`, [2 * D, H]);
      expected.set(`${q}.self_attn.o_proj.weight`, [H, 4 * D]);
      expected.set(`${q}.post_attention_layernorm.weight`, [H]);
      expected.set(`${q}.mlp.gate_proj.weight`, [I, H]);
      expected.set(`${q}.mlp.up_proj.weight`, [I, H]);
      expected.set(`${q}.mlp.down_proj.weight`, [H, I]);
    }
    expected.set("model.norm.weight", [H]);
    expected.set("lm_head.weight", [V, H]);
    assert.deepEqual(new Set(tensors.keys()), new Set(expected.keys()));
    assert.deepEqual(info.tensorNames.toSorted(), [...expected.keys()].toSorted());
    for (const [name, shape] of expected) {
      assert.deepEqual(tensors.get(name)!.shape, shape, name);
      assert.equal(tensors.get(name)!.dtype, "F32", name);
    }
    // initialization: weights centred with the preset std, norms near 1
    const emb = toFloat32(tensors.get("model.embed_tokens.weight")!);
    const mean = emb.reduce((a, b) => a + b, 0) / emb.length;
    const std = Math.sqrt(emb.reduce((a, b) => a + (b - mean) ** 2, 0) / emb.length);
    assert.ok(Math.abs(mean) < 0.005, `mean ${mean}`);
    assert.ok(Math.abs(std - p.initStd) < 0.005, `std ${std}`);
    const norm = toFloat32(tensors.get("model.norm.weight")!);
    assert.ok(norm.every((v) => v > 0.7 && v < 1.3));
    assert.ok(new Set(norm).size > 32, "norm weights carry noise");
  });
});

Deno.test("options: qwen2 biases, llama attention_bias, tying, head_dim, rope scaling, dtypes", async () => {
  await withTempDir(async (dir) => {
    const scaling = {
      rope_type: "llama3" as const,
      factor: 8,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 64,
    };
    await makeTestModel(join(dir, "q"), {
      seed: 1,
      modelType: "qwen2",
      dtype: "bfloat16",
      tieWordEmbeddings: true,
      numKeyValueHeads: 1,
      headDim: 8,
      ropeTheta: 500000,
      ropeScaling: scaling,
      rmsNormEps: 1e-6,
      hiddenSize: 32,
      numLayers: 3,
      numHeads: 4,
      intermediateSize: 48,
      vocabSize: 300,
    });
    const cfg = await readJson(join(dir, "q", "config.json"));
    assert.deepEqual(cfg.architectures, ["Qwen2ForCausalLM"]);
    assert.equal(cfg.model_type, "qwen2");
    assert.equal(cfg.torch_dtype, "bfloat16");
    assert.equal(cfg.tie_word_embeddings, true);
    assert.equal(cfg.head_dim, 8);
    assert.equal(cfg.rope_theta, 500000);
    assert.deepEqual(cfg.rope_scaling, scaling);
    assert.equal(cfg.rms_norm_eps, 1e-6);
    assert.equal(cfg.num_key_value_heads, 1);
    const t = await readAllTensors(join(dir, "q"));
    assert.equal(t.has("lm_head.weight"), false);
    assert.deepEqual(t.get("model.embed_tokens.weight")!.shape, [300, 32]);
    assert.deepEqual(t.get("model.layers.2.self_attn.q_proj.weight")!.shape, [32, 32]);
    assert.deepEqual(t.get("model.layers.2.self_attn.q_proj.bias")!.shape, [32]);
    assert.deepEqual(t.get("model.layers.2.self_attn.k_proj.bias")!.shape, [8]);
    assert.deepEqual(t.get("model.layers.2.self_attn.v_proj.bias")!.shape, [8]);
    assert.equal(t.has("model.layers.0.self_attn.o_proj.bias"), false);
    assert.deepEqual(t.get("model.layers.0.mlp.down_proj.weight")!.shape, [32, 48]);
    for (const v of t.values()) assert.equal(v.dtype, "BF16");

    await makeTestModel(join(dir, "l"), { seed: 1, attentionBias: true, dtype: "float16" });
    const l = await readAllTensors(join(dir, "l"));
    assert.equal((await readJson(join(dir, "l", "config.json"))).attention_bias, true);
    for (const p of ["q", "k", "v", "o"]) assert.ok(l.has(`model.layers.1.self_attn.${p}_proj.bias`), p);
    for (const v of l.values()) assert.equal(v.dtype, "F16");

    await makeTestModel(join(dir, "m"), { seed: 1, modelType: "mistral" });
    const m = await readJson(join(dir, "m", "config.json"));
    assert.deepEqual(m.architectures, ["MistralForCausalLM"]);
    assert.equal(m.sliding_window, null);
    assert.ok(!(await readAllTensors(join(dir, "m"))).has("model.layers.0.self_attn.q_proj.bias"));

    // tensors are seeded by name: the same seed gives the same values whatever else changed,
    // and the f16 file holds the f32 values rounded to half
    const plain = await readAllTensors(join(dir, "m"));
    const name = "model.layers.1.mlp.up_proj.weight";
    const f32 = toFloat32(plain.get(name)!);
    const f16 = toFloat32(l.get(name)!);
    assert.deepEqual(f16, f32.map((x) => f16ToF32(f32ToF16(x))));
  });
});

Deno.test("determinism: same seed gives identical bytes, another seed differs", async () => {
  await withTempDir(async (dir) => {
    await makeTestModel(join(dir, "a"), { seed: 42 });
    await makeTestModel(join(dir, "b"), { seed: 42 });
    await makeTestModel(join(dir, "c"), { seed: 43 });
    for (const f of ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]) {
      assert.deepEqual(await Deno.readFile(join(dir, "a", f)), await Deno.readFile(join(dir, "b", f)), f);
      assert.deepEqual(await Deno.readFile(join(dir, "a", f)), await Deno.readFile(join(dir, "c", f)), f);
    }
    const a = await Deno.readFile(join(dir, "a", "model.safetensors"));
    const b = await Deno.readFile(join(dir, "b", "model.safetensors"));
    const c = await Deno.readFile(join(dir, "c", "model.safetensors"));
    assert.ok(sameBytes(a, b), "one seed, two models");
    assert.equal(a.length, c.length);
    assert.ok(!sameBytes(a, c), "two seeds, one model");
    const ta = await readAllTensors(join(dir, "a"));
    const tc = await readAllTensors(join(dir, "c"));
    for (const [name, view] of ta) {
      assert.notDeepEqual(view.data, tc.get(name)!.data, `${name} differs between seeds`);
    }
    // distinct tensors of one model are not copies of each other
    assert.notDeepEqual(
      ta.get("model.layers.0.mlp.gate_proj.weight")!.data,
      ta.get("model.layers.0.mlp.up_proj.weight")!.data,
    );
  });
});

Deno.test("sharded layout: index maps every tensor to the file holding it", async () => {
  await withTempDir(async (dir) => {
    const single = join(dir, "single");
    const sharded = join(dir, "sharded");
    await makeTestModel(single, { seed: 5 });
    const info = await makeTestModel(sharded, { seed: 5, shards: 2 });
    const names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
    for (const n of [...names, "model.safetensors.index.json"]) assert.ok(info.files.includes(n), n);
    await assert.rejects(() => Deno.stat(join(sharded, "model.safetensors")), Deno.errors.NotFound);
    // rewriting a folder in the other layout leaves no stale weights behind
    await makeTestModel(single, { seed: 5, shards: 3 });
    await assert.rejects(() => Deno.stat(join(single, "model.safetensors")), Deno.errors.NotFound);
    await makeTestModel(single, { seed: 5 });
    const left = [...Deno.readDirSync(single)].map((e) => e.name).filter((n) => n.startsWith("model"));
    assert.deepEqual(left, ["model.safetensors"]);
    const index = await readJson(join(sharded, "model.safetensors.index.json"));
    const weightMap = index.weight_map as Record<string, string>;
    const all = await readAllTensors(single);
    assert.deepEqual(new Set(Object.keys(weightMap)), new Set(all.keys()));
    assert.deepEqual(new Set(Object.values(weightMap)), new Set(names));
    let total = 0;
    for (const n of names) {
      const file = await readSafetensorsFile(join(sharded, n));
      assert.ok(file.tensors.size > 0, `${n} holds tensors`);
      for (const [t, view] of file.tensors) {
        assert.equal(weightMap[t], n, `${t} is mapped to ${n}`);
        assert.deepEqual(view.data, all.get(t)!.data, `${t} equals the unsharded tensor`);
        total += view.data.length;
      }
    }
    assert.equal((index.metadata as Record<string, unknown>).total_size, total);
  });
});

Deno.test("tokenizer: loads in @huggingface/tokenizers, ids as documented, round trips", async () => {
  await withTempDir(async (dir) => {
    await makeTestModel(dir, { seed: 1 });
    const tj = await readJson(join(dir, "tokenizer.json"));
    const tc = await readJson(join(dir, "tokenizer_config.json"));
    const tok = new Tokenizer(tj, tc);
    assert.equal(tok.get_vocab().size, 512);
    TEST_SPECIAL_TOKENS.forEach((t, i) => assert.equal(tok.token_to_id(t), i, t));
    assert.equal(tc.bos_token, "<s>");
    assert.equal(tc.eos_token, "</s>");
    assert.equal(tc.unk_token, "<unk>");
    assert.equal(tc.add_bos_token, true);
    assert.equal(tok.token_to_id("A"), 6 + 0x41, "byte b has id 6 + b");
    assert.equal(tok.token_to_id("\u0120"), 6 + 0x20, "the space byte is Ġ");

    const texts = [
      "The river town woke slowly on the first cold morning of the autumn.",
      "What is the capital of France? Paris, of course!  Two  spaces,\ttabs\nand\r\nnewlines.",
      "Emoji 🦀🚀👩‍👩‍👧, CJK 你好世界 日本語, accents é à ü ñ, math ∑∫√, zero-width \u200b.",
      " leading space and trailing space ",
      "it's they're we've I'm you'll he'd don't",
      "<|user|>\nhello</s>",
    ];
    for (const text of texts) {
      const withBos = tok.encode(text);
      const plain = tok.encode(text, { add_special_tokens: false });
      assert.equal(withBos.ids[0], 1, "encode adds <s> in front");
      assert.deepEqual(withBos.ids.slice(1), plain.ids);
      assert.ok(!plain.ids.includes(1));
      assert.equal(tok.decode(plain.ids), text);
      assert.equal(tok.decode(withBos.ids), "<s>" + text);
      assert.equal(
        tok.decode(withBos.ids, { skip_special_tokens: true }),
        text.replace(/<\|user\|>|<\/s>/g, ""),
      );
    }
    // merges make common English shorter than its bytes
    const english = tok.encode(texts[0], { add_special_tokens: false }).ids;
    assert.ok(english.length < new TextEncoder().encode(texts[0]).length / 2, `${english.length} tokens`);
    assert.deepEqual(tok.encode("<|user|>", { add_special_tokens: false }).ids, [4]);
    // every id decodes to some text
    for (let id = 0; id < 512; id++) assert.ok(tok.decode([id]).length > 0, `id ${id}`);
  });
});

Deno.test("tokenizer: exact vocabulary sizes, large vocabularies have fillers", () => {
  for (const v of [262, 300, 512, 4096, 32000]) {
    const { tokenizerJson } = makeTestTokenizer(v);
    const model = tokenizerJson.model as { vocab: Record<string, number>; merges: string[] };
    const ids = Object.values(model.vocab).toSorted((a, b) => a - b);
    assert.equal(ids.length, v);
    assert.deepEqual(ids, Array.from({ length: v }, (_, i) => i), "ids are 0..v-1");
    for (const m of model.merges) {
      const [a, b] = m.split(" ");
      assert.ok(a in model.vocab && b in model.vocab && (a + b) in model.vocab, m);
    }
    if (v >= 512) assert.ok(model.merges.length >= 200, `${model.merges.length} merges`);
  }
  const big = makeTestTokenizer(32000).tokenizerJson;
  const tok = new Tokenizer(big, makeTestTokenizer(32000).tokenizerConfig);
  assert.equal(tok.decode([31999]).startsWith(" "), true, "fillers decode to words");
  assert.throws(
    () => makeTestTokenizer(200),
    (e: unknown) => e instanceof KvfoldError && e.code === "INVALID_ARGUMENT",
  );
});

Deno.test("chat template renders through @huggingface/jinja and encodes with the special tokens", async () => {
  await withTempDir(async (dir) => {
    await makeTestModel(dir, { seed: 1 });
    const tc = await readJson(join(dir, "tokenizer_config.json"));
    const tok = new Tokenizer(await readJson(join(dir, "tokenizer.json")), tc);
    const template = new Template(tc.chat_template as string);
    const messages = [
      { role: "system", content: "Be brief." },
      { role: "user", content: "What is the capital of France?" },
      { role: "assistant", content: "Paris." },
      { role: "user", content: "And of Italy?" },
    ];
    const prompt = template.render({
      messages,
      bos_token: tc.bos_token,
      eos_token: tc.eos_token,
      add_generation_prompt: true,
    });
    assert.equal(
      prompt,
      "<s><|system|>\nBe brief.</s>\n<|user|>\nWhat is the capital of France?</s>\n" +
        "<|assistant|>\nParis.</s>\n<|user|>\nAnd of Italy?</s>\n<|assistant|>\n",
    );
    const ids = tok.encode(prompt, { add_special_tokens: false }).ids;
    assert.equal(ids[0], 1);
    assert.deepEqual(ids.filter((i) => i >= 3 && i <= 5), [3, 4, 5, 4, 5]);
    assert.equal(ids.filter((i) => i === 2).length, 4);
    assert.equal(tok.decode(ids), prompt);
    const noGen = template.render({
      messages,
      bos_token: "<s>",
      eos_token: "</s>",
      add_generation_prompt: false,
    });
    assert.ok(noGen.endsWith("And of Italy?</s>\n"));
    assert.throws(() =>
      template.render({ messages: [{ role: "robot", content: "x" }], bos_token: "", eos_token: "" })
    );
  });
});

Deno.test("invalid options are refused", async () => {
  await withTempDir(async (dir) => {
    const bad: Parameters<typeof makeTestModel>[1][] = [
      { numHeads: 4, numKeyValueHeads: 3 },
      { hiddenSize: 30, numHeads: 4 },
      { headDim: 7 },
      { vocabSize: 100 },
      { modelType: "qwen2", attentionBias: true },
      { shards: 0 },
      { seed: 1.5 },
    ];
    for (const options of bad) {
      await assert.rejects(
        () => makeTestModel(join(dir, "x"), options),
        (e: unknown) => e instanceof KvfoldError && e.code === "INVALID_ARGUMENT",
        JSON.stringify(options),
      );
    }
  });
});

Deno.test({
  // How long writing takes is measured in bench/, not asserted here (a busy machine is slower).
  name: "small preset: 134M parameters in the expected shapes",
  ignore: Deno.env.get("KVFOLD_SKIP_SLOW") === "1",
  async fn() {
    await withTempDir(async (dir) => {
      await makeTestModel(dir, { seed: 0, preset: "small", dtype: "bfloat16" });
      const t = await readAllTensors(dir);
      let params = 0;
      for (const v of t.values()) params += v.shape.reduce((a, b) => a * b, 1);
      assert.equal(params, 134_105_856);
      assert.deepEqual(t.get("model.layers.11.mlp.down_proj.weight")!.shape, [768, 2048]);
    });
  },
});

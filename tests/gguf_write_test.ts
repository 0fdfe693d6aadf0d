// The GGUF writer, checked by an independent reader (@huggingface/gguf, the Hub's own parser): the
// header, metadata types, tensor infos; the tensor bytes against the safetensors they came from
// (q/k permutation checked through RoPE itself, q8_0/q4_0 blocks against ggml's reference quantizer).
import assert from "node:assert/strict";
import { gguf } from "npm:@huggingface/gguf@0.4.6";
import { writeGguf, writeModelGguf } from "../src/formats/gguf_write.ts";
import { permuteLlamaRows } from "../src/formats/gguf_model_write.ts";
import { bf16ToF32, f16ToF32, readSafetensorsFile, toFloat32 } from "../src/formats/safetensors.ts";
import { rejectsWith } from "./_kvfold_asserts.ts";
import { quantizeDequantize } from "./_reference_quant.ts";
import { tempDir, testModel } from "./_fixtures.ts";

type Parsed = Awaited<ReturnType<typeof readWithHub>>;

async function readWithHub(path: string) {
  const out = await gguf(path, { allowLocalFile: true, typedMetadata: true });
  const bytes = await Deno.readFile(path);
  const tensor = (name: string) => {
    const info = out.tensorInfos.find((t) => t.name === name);
    if (!info) throw new Error(`no tensor ${name}`);
    return { info, at: Number(out.tensorDataOffset + info.offset) };
  };
  return { ...out, bytes, tensor };
}

/** Decodes a tensor of the file into f32 (f32, f16, bf16, q8_0, q4_0). */
function decode(p: Parsed, name: string): Float32Array {
  const { info, at } = p.tensor(name);
  const n = info.shape.reduce((a, b) => a * Number(b), 1);
  const dv = new DataView(p.bytes.buffer, p.bytes.byteOffset + at);
  const out = new Float32Array(n);
  switch (info.dtype) {
    case 0:
      for (let i = 0; i < n; i++) out[i] = dv.getFloat32(4 * i, true);
      break;
    case 1:
      for (let i = 0; i < n; i++) out[i] = f16ToF32(dv.getUint16(2 * i, true));
      break;
    case 30:
      for (let i = 0; i < n; i++) out[i] = bf16ToF32(dv.getUint16(2 * i, true));
      break;
    case 8:
      for (let b = 0; b < n / 32; b++) {
        const d = f16ToF32(dv.getUint16(34 * b, true));
        for (let j = 0; j < 32; j++) out[32 * b + j] = Math.fround(d * dv.getInt8(34 * b + 2 + j));
      }
      break;
    case 2:
      for (let b = 0; b < n / 32; b++) {
        const d = f16ToF32(dv.getUint16(18 * b, true));
        for (let j = 0; j < 16; j++) {
          const q = dv.getUint8(18 * b + 2 + j);
          out[32 * b + j] = Math.fround(d * ((q & 15) - 8));
          out[32 * b + j + 16] = Math.fround(d * ((q >> 4) - 8));
        }
      }
      break;
    default:
      throw new Error(`type ${info.dtype}`);
  }
  return out;
}

const meta = (p: Parsed, key: string) => (p.metadata as Record<string, unknown>)[key];
const value = (p: Parsed, key: string) =>
  (p.typedMetadata as Record<string, { type: number; value: unknown }>)[key];

Deno.test("writeModelGguf f32: metadata and tensor infos read back by @huggingface/gguf", async () => {
  const dir = await testModel("gguf-llama", { seed: 5 });
  const out = await tempDir();
  try {
    await writeModelGguf(dir, `${out}/m.gguf`);
    const p = await readWithHub(`${out}/m.gguf`);
    const cfg = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
    assert.deepEqual(p.metadata.version, 3);
    assert.deepEqual(p.metadata["general.architecture"], "llama");
    const u32 = 4, f32 = 6;
    for (
      const [key, want] of [
        ["llama.context_length", cfg.max_position_embeddings],
        ["llama.embedding_length", cfg.hidden_size],
        ["llama.block_count", cfg.num_hidden_layers],
        ["llama.feed_forward_length", cfg.intermediate_size],
        ["llama.attention.head_count", cfg.num_attention_heads],
        ["llama.attention.head_count_kv", cfg.num_key_value_heads],
        ["llama.vocab_size", cfg.vocab_size],
        ["llama.rope.dimension_count", cfg.hidden_size / cfg.num_attention_heads],
        ["general.file_type", 0],
      ] as const
    ) assert.deepEqual(value(p, key), { type: u32, value: want }, key);
    assert.deepEqual(value(p, "llama.rope.freq_base"), { type: f32, value: cfg.rope_theta });
    assert.deepEqual(value(p, "llama.attention.layer_norm_rms_epsilon").type, f32);
    assert.deepEqual(value(p, "llama.attention.layer_norm_rms_epsilon").value, Math.fround(cfg.rms_norm_eps));
    // The tokenizer: byte-level BPE, every id named, the specials as control tokens.
    const tok = JSON.parse(await Deno.readTextFile(`${dir}/tokenizer.json`));
    assert.deepEqual(p.metadata["tokenizer.ggml.model"], "gpt2");
    assert.deepEqual(meta(p, "tokenizer.ggml.pre"), "gpt-2");
    const tokens = p.metadata["tokenizer.ggml.tokens"] as string[];
    assert.deepEqual(tokens.length, cfg.vocab_size);
    for (const [t, id] of Object.entries(tok.model.vocab as Record<string, number>)) {
      assert.deepEqual(tokens[id], t);
    }
    assert.deepEqual((meta(p, "tokenizer.ggml.merges") as string[]).length, tok.model.merges.length);
    assert.deepEqual((p.metadata["tokenizer.ggml.token_type"] as number[]).slice(0, 7), [
      3,
      3,
      3,
      3,
      3,
      3,
      1,
    ]);
    assert.deepEqual(value(p, "tokenizer.ggml.bos_token_id"), { type: u32, value: 1 });
    assert.deepEqual(value(p, "tokenizer.ggml.eos_token_id"), { type: u32, value: 2 });
    assert.deepEqual(p.metadata["tokenizer.ggml.add_bos_token"], true);
    assert.ok(typeof p.metadata["tokenizer.chat_template"] === "string");
    // Tensor infos: llama.cpp's names, dims innermost first, every offset aligned.
    const names = p.tensorInfos.map((t) => t.name);
    assert.deepEqual(names.length, 2 + 9 * cfg.num_hidden_layers + 1);
    for (const n of ["token_embd.weight", "output_norm.weight", "output.weight", "blk.1.ffn_down.weight"]) {
      assert.ok(names.includes(n), n);
    }
    const q = p.tensor("blk.0.attn_q.weight").info;
    assert.deepEqual(q.shape, [BigInt(cfg.hidden_size), BigInt(cfg.hidden_size)]);
    assert.deepEqual(p.tensor("blk.0.ffn_down.weight").info.shape, [
      BigInt(cfg.intermediate_size),
      BigInt(cfg.hidden_size),
    ]);
    assert.deepEqual(p.tensor("blk.0.attn_norm.weight").info.shape, [BigInt(cfg.hidden_size)]);
    for (const t of p.tensorInfos) assert.deepEqual(Number(t.offset) % 32, 0, t.name);
    assert.deepEqual(Number(p.tensorDataOffset) % 32, 0);
    // Unpermuted tensors are the safetensors' values exactly.
    const st = (await readSafetensorsFile(`${dir}/model.safetensors`)).tensors;
    assert.deepEqual(
      decode(p, "blk.1.ffn_up.weight"),
      toFloat32(st.get("model.layers.1.mlp.up_proj.weight")!),
    );
    assert.deepEqual(decode(p, "output.weight"), toFloat32(st.get("lm_head.weight")!));
    assert.deepEqual(
      decode(p, "blk.0.ffn_norm.weight"),
      toFloat32(st.get("model.layers.0.post_attention_layernorm.weight")!),
    );
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

/** q·k after RoPE at positions pq, pk: HF's halves convention, or ggml's adjacent pairs. */
function ropeScore(q: Float32Array, k: Float32Array, pq: number, pk: number, adjacent: boolean): number {
  const d = q.length;
  const rot = (x: Float32Array, pos: number) => {
    const y = new Float64Array(d);
    for (let i = 0; i < d / 2; i++) {
      const th = pos * 10000 ** (-2 * i / d);
      const [a, b] = adjacent ? [2 * i, 2 * i + 1] : [i, i + d / 2];
      y[a] = x[a] * Math.cos(th) - x[b] * Math.sin(th);
      y[b] = x[b] * Math.cos(th) + x[a] * Math.sin(th);
    }
    return y;
  };
  const a = rot(q, pq), b = rot(k, pk);
  return a.reduce((s, v, i) => s + v * b[i], 0);
}

Deno.test("permuteLlamaRows: ggml's adjacent-pair RoPE on permuted rows scores as HF's RoPE on the originals", () => {
  const d = 16;
  const q = Float32Array.from({ length: d }, (_, i) => Math.sin(i * 1.7 + 0.3));
  const k = Float32Array.from({ length: d }, (_, i) => Math.cos(i * 0.9 - 0.2));
  const pq = permuteLlamaRows(q, d, 1, 1), pk = permuteLlamaRows(k, d, 1, 1);
  for (const [a, b] of [[5, 2], [17, 0], [3, 9]]) {
    const hf = ropeScore(q, k, a, b, false);
    assert.ok(Math.abs(ropeScore(pq, pk, a, b, true) - hf) < 1e-9);
    // The unpermuted rows under adjacent pairs give another score: the permutation is needed.
    assert.ok(Math.abs(ropeScore(q, k, a, b, true) - hf) > 1e-3);
  }
  // Several heads permute independently; rows move whole.
  const two = Float32Array.from({ length: 2 * 4 * 3 }, (_, i) => i);
  assert.deepEqual(Array.from(permuteLlamaRows(two, 8, 3, 2)).filter((_, i) => i % 3 === 0), [
    0,
    6,
    3,
    9,
    12,
    18,
    15,
    21,
  ]);
});

Deno.test("writeModelGguf: q/k rows permuted per head (GQA: k by the KV heads), v untouched, bf16 raw", async () => {
  const dir = await testModel("gguf-llama", { seed: 5 });
  const out = await tempDir();
  try {
    await writeModelGguf(dir, `${out}/m.gguf`);
    const p = await readWithHub(`${out}/m.gguf`);
    const cfg = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
    const st = (await readSafetensorsFile(`${dir}/model.safetensors`)).tensors;
    const h = cfg.hidden_size, hd = h / cfg.num_attention_heads;
    const row = (x: Float32Array, r: number) => Array.from(x.subarray(r * h, (r + 1) * h));
    for (const [name, heads] of [["attn_q", cfg.num_attention_heads], ["attn_k", cfg.num_key_value_heads]]) {
      const file = decode(p, `blk.1.${name}.weight`);
      const src = toFloat32(st.get(`model.layers.1.self_attn.${name.slice(5)}_proj.weight`)!);
      assert.equal(file.length, heads * hd * h);
      // Row 2i+j of head g is the source's row j*hd/2+i of that head.
      for (let g = 0; g < heads; g++) {
        for (let i = 0; i < hd / 2; i++) {
          for (let j = 0; j < 2; j++) {
            assert.deepEqual(row(file, g * hd + 2 * i + j), row(src, g * hd + j * hd / 2 + i));
          }
        }
      }
    }
    assert.deepEqual(
      decode(p, "blk.0.attn_v.weight"),
      toFloat32(st.get("model.layers.0.self_attn.v_proj.weight")!),
    );
    // A bf16 folder written as bf16 keeps its bits.
    const bfDir = await testModel("gguf-bf16", { seed: 5, dtype: "bfloat16" });
    await writeModelGguf(bfDir, `${out}/bf.gguf`, { dtype: "bf16" });
    const b = await readWithHub(`${out}/bf.gguf`);
    const bst = (await readSafetensorsFile(`${bfDir}/model.safetensors`)).tensors;
    const { info, at } = b.tensor("blk.0.ffn_up.weight");
    assert.equal(info.dtype, 30);
    const raw = bst.get("model.layers.0.mlp.up_proj.weight")!.data;
    assert.deepEqual(b.bytes.subarray(at, at + raw.length), raw);
    assert.equal(b.tensor("blk.0.attn_norm.weight").info.dtype, 0);
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("writeModelGguf q8_0/q4_0: every 2-D weight is ggml's reference quantization, norms stay f32", async () => {
  const dir = await testModel("gguf-llama", { seed: 5 });
  const out = await tempDir();
  try {
    const st = (await readSafetensorsFile(`${dir}/model.safetensors`)).tensors;
    for (const [dtype, id] of [["q8_0", 8], ["q4_0", 2]] as const) {
      await writeModelGguf(dir, `${out}/${dtype}.gguf`, { dtype });
      const p = await readWithHub(`${out}/${dtype}.gguf`);
      assert.deepEqual(value(p, "general.file_type").value, dtype === "q8_0" ? 7 : 2);
      assert.deepEqual(value(p, "general.quantization_version").value, 2);
      for (
        const [g, hf] of [["token_embd.weight", "model.embed_tokens.weight"], [
          "blk.1.ffn_gate.weight",
          "model.layers.1.mlp.gate_proj.weight",
        ], ["output.weight", "lm_head.weight"]]
      ) {
        assert.deepEqual(p.tensor(g).info.dtype, id);
        // (+0 folds -0 into 0: a zero quantum times a negative scale.)
        const want = quantizeDequantize(toFloat32(st.get(hf)!), dtype).map((v) => v + 0);
        assert.deepEqual(decode(p, g).map((v) => v + 0), want, `${dtype} ${g}`);
      }
      assert.deepEqual(p.tensor("output_norm.weight").info.dtype, 0);
    }
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("writeModelGguf: tied embeddings write no output tensor; qwen2 keeps its biases and its row order", async () => {
  const tied = await testModel("gguf-tied", { seed: 6, tieWordEmbeddings: true });
  const qwen = await testModel("gguf-qwen2", { seed: 7, modelType: "qwen2" });
  const out = await tempDir();
  try {
    await writeModelGguf(tied, `${out}/tied.gguf`, { dtype: "f16" });
    const t = await readWithHub(`${out}/tied.gguf`);
    assert.ok(!t.tensorInfos.some((x) => x.name === "output.weight"));
    assert.deepEqual(t.tensor("token_embd.weight").info.dtype, 1);
    await writeModelGguf(qwen, `${out}/qwen.gguf`);
    const q = await readWithHub(`${out}/qwen.gguf`);
    assert.deepEqual(q.metadata["general.architecture"], "qwen2");
    assert.deepEqual(value(q, "qwen2.block_count").value, 2);
    const st = (await readSafetensorsFile(`${qwen}/model.safetensors`)).tensors;
    for (
      const [g, hf] of [["blk.0.attn_q.weight", "q_proj.weight"], ["blk.0.attn_k.bias", "k_proj.bias"], [
        "blk.0.attn_v.bias",
        "v_proj.bias",
      ]]
    ) {
      assert.deepEqual(decode(q, g), toFloat32(st.get(`model.layers.0.self_attn.${hf}`)!), g);
    }
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("writeGguf / writeModelGguf refuse what GGUF or llama.cpp cannot hold, leaving no file", async () => {
  const out = await tempDir();
  try {
    const odd = await testModel("gguf-odd", { seed: 8, hiddenSize: 48, numHeads: 4, numKeyValueHeads: 2 });
    await rejectsWith(
      writeModelGguf(odd, `${out}/odd.gguf`, { dtype: "q4_0" }),
      "UNSUPPORTED",
      /blocks of 32/,
    );
    const ac = await testModel("gguf-ac", { seed: 9, summaryLength: 2 });
    await rejectsWith(writeModelGguf(ac, `${out}/ac.gguf`), "UNSUPPORTED", /AutoCompressor/);
    const mistral = await testModel("gguf-mistral", { seed: 9, modelType: "mistral", slidingWindow: 64 });
    await rejectsWith(writeModelGguf(mistral, `${out}/mi.gguf`), "UNSUPPORTED", /sliding window/);
    await assert.rejects(
      writeGguf(`${out}/bad.gguf`, {
        metadata: {},
        tensors: [{ name: "x", type: "f32", shape: [3], data: new Float32Array(2) }],
      }),
      /2 values given/,
    );
    await assert.rejects(
      writeGguf(`${out}/bad.gguf`, { metadata: { "a.b": { type: "uint32", value: -1 } }, tensors: [] }),
      RangeError,
    );
    assert.deepEqual([...Deno.readDirSync(out)].map((x) => x.name), []);
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("writeModelGguf: a SentencePiece-style BPE tokenizer is written as 'llama' with merge-rank scores and byte tokens", async () => {
  const dir = await tempDir();
  try {
    const src = await testModel("gguf-llama", { seed: 5 });
    for (const f of ["config.json", "model.safetensors", "tokenizer_config.json"]) {
      await Deno.copyFile(`${src}/${f}`, `${dir}/${f}`);
    }
    const vocab: Record<string, number> = { "<unk>": 0, "<s>": 1, "</s>": 2 };
    for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`] = 3 + b;
    for (const t of ["▁", "t", "h", "e", "▁t", "he", "▁the"]) vocab[t] = Object.keys(vocab).length;
    const special = (id: number, content: string) => ({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    });
    await Deno.writeTextFile(
      `${dir}/tokenizer.json`,
      JSON.stringify({
        version: "1.0",
        added_tokens: [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
        normalizer: {
          type: "Sequence",
          normalizers: [{ type: "Prepend", prepend: "▁" }, {
            type: "Replace",
            pattern: { String: " " },
            content: "▁",
          }],
        },
        pre_tokenizer: null,
        post_processor: null,
        decoder: { type: "Sequence", decoders: [{ type: "ByteFallback" }, { type: "Fuse" }] },
        model: {
          type: "BPE",
          unk_token: "<unk>",
          byte_fallback: true,
          vocab,
          merges: ["▁ t", "h e", "▁t he"],
        },
      }),
    );
    await writeModelGguf(dir, `${dir}/spm.gguf`);
    const p = await readWithHub(`${dir}/spm.gguf`);
    assert.equal(p.metadata["tokenizer.ggml.model"], "llama");
    assert.equal(meta(p, "tokenizer.ggml.merges"), undefined);
    const tokens = p.metadata["tokenizer.ggml.tokens"] as string[];
    const scores = meta(p, "tokenizer.ggml.scores") as number[];
    const types = p.metadata["tokenizer.ggml.token_type"] as number[];
    assert.equal(tokens.length, 512);
    const id = (t: string) => tokens.indexOf(t);
    // Merged first, scored highest: llama.cpp's SentencePiece merge order is BPE's merge order.
    assert.deepEqual([scores[id("▁t")], scores[id("he")], scores[id("▁the")], scores[id("t")]], [
      -1,
      -2,
      -3,
      0,
    ]);
    assert.deepEqual([types[0], types[1], types[3 + 0x41], types[id("▁the")], types[511]], [2, 3, 6, 1, 5]);
    assert.equal(tokens[511], "[PAD511]");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

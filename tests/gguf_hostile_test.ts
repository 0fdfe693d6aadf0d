// Corrupt and unsupported GGUF files: each ends in a KvfoldError naming the problem (and the key or
// tensor at fault), never a crash, a hang or an allocation sized by a lying header. The files are
// made by the writer and then edited, in their metadata or in their bytes; a tokenizer.json beside
// each keeps the TypeScript side out of it, so the native reader (ffi/src/gguf.cpp) is what answers.
import assert from "node:assert/strict";
import type { KvfoldErrorCode } from "../mod.ts";
import { type GgufContents, modelGgufContents, writeGguf } from "../src/formats/gguf_write.ts";
import { tempDir, TEST_KQUANT, testEngine, testModel } from "./_fixtures.ts";
import { rejectsWith } from "./_kvfold_asserts.ts";

const enc = new TextEncoder();

/** Where the bytes after a length-prefixed GGUF string (a key or a tensor name) start. */
function after(bytes: Uint8Array, s: string): number {
  const needle = new Uint8Array(8 + enc.encode(s).length);
  new DataView(needle.buffer).setBigUint64(0, BigInt(needle.length - 8), true);
  needle.set(enc.encode(s), 8);
  outer: for (let i = 0; i + needle.length <= bytes.length; i++) {
    for (let j = 0; j < needle.length; j++) if (bytes[i + j] !== needle[j]) continue outer;
    return i + needle.length;
  }
  throw new Error(`${s} not found`);
}

/** Byte positions of a tensor info's fields. */
function tensorInfo(bytes: Uint8Array, name: string) {
  const at = after(bytes, name);
  const nDims = new DataView(bytes.buffer).getUint32(at, true);
  return { nDims: at, dims: at + 4, type: at + 4 + 8 * nDims, offset: at + 8 + 8 * nDims };
}

const setU32 = (b: Uint8Array, at: number, v: number) => new DataView(b.buffer).setUint32(at, v, true);
const setU64 = (b: Uint8Array, at: number, v: bigint) => new DataView(b.buffer).setBigUint64(at, v, true);
const getU64 = (b: Uint8Array, at: number) => new DataView(b.buffer).getBigUint64(at, true);

interface Case {
  name: string;
  code: KvfoldErrorCode;
  why: RegExp;
  dtype?: "f32" | "q8_0";
  edit?: (c: GgufContents) => void;
  patch?: (b: Uint8Array) => Uint8Array | void;
}

const CASES: Case[] = [
  {
    name: "bad magic",
    code: "FORMAT",
    why: /not a GGUF file \(it starts with "GGUX"/,
    patch: (b) => void (b[3] = 0x58),
  },
  { name: "version 1", code: "UNSUPPORTED", why: /GGUF version 1/, patch: (b) => setU32(b, 4, 1) },
  { name: "version 7", code: "FORMAT", why: /GGUF version 7 is not one/, patch: (b) => setU32(b, 4, 7) },
  { name: "big endian", code: "FORMAT", why: /big-endian/, patch: (b) => setU32(b, 4, 0x03000000) },
  {
    name: "truncated header",
    code: "FORMAT",
    why: /header is truncated|past the end of the file|holds 512 items, more than the file can hold/,
    patch: (b) => b.slice(0, 3000),
  },
  {
    name: "truncated counts",
    code: "FORMAT",
    why: /tensor count 21 is more than the file can hold/,
    patch: (b) => b.slice(0, 300),
  },
  {
    name: "truncated tensor data",
    code: "FORMAT",
    why: /tensor output\.weight .*runs past the end.*truncated/,
    patch: (b) => b.slice(0, b.length - 64),
  },
  {
    name: "huge tensor count",
    code: "FORMAT",
    why: /tensor count 1099511627776/,
    patch: (b) => setU64(b, 8, 1n << 40n),
  },
  {
    name: "huge metadata count",
    code: "FORMAT",
    why: /metadata count/,
    patch: (b) => setU64(b, 16, 1n << 62n),
  },
  {
    name: "huge string length",
    code: "FORMAT",
    why: /a metadata key at byte 24 has length 9223372036854775807, past the end/,
    patch: (b) => setU64(b, 24, (1n << 63n) - 1n),
  },
  {
    name: "huge array count",
    code: "FORMAT",
    why: /tokenizer\.ggml\.tokens.* holds 1125899906842624 items/,
    patch: (b) => setU64(b, after(b, "tokenizer.ggml.tokens") + 8, 1n << 50n),
  },
  {
    name: "q5_K tensor",
    code: "UNSUPPORTED",
    why: /tensor blk\.0\.ffn_up\.weight is of type Q5_K; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K/,
    patch: (b) => setU32(b, tensorInfo(b, "blk.0.ffn_up.weight").type, 13),
  },
  {
    name: "q4_K tensor whose rows are not whole blocks of 256",
    code: "FORMAT",
    why: /tensor blk\.0\.ffn_up\.weight of type Q4_K has rows of \d+ values, not whole blocks of 256/,
    patch: (b) => setU32(b, tensorInfo(b, "blk.0.ffn_up.weight").type, 12),
  },
  {
    name: "unknown ggml type",
    code: "FORMAT",
    why: /tensor output_norm\.weight has ggml type 99, which is not a ggml type/,
    patch: (b) => setU32(b, tensorInfo(b, "output_norm.weight").type, 99),
  },
  {
    name: "misaligned offset",
    code: "FORMAT",
    why: /tensor blk\.1\.attn_norm\.weight is at data offset \d+, not a multiple of the alignment 32/,
    patch: (b) => {
      const at = tensorInfo(b, "blk.1.attn_norm.weight").offset;
      setU64(b, at, getU64(b, at) + 4n);
    },
  },
  {
    name: "offset out of bounds",
    code: "FORMAT",
    why: /tensor blk\.0\.ffn_down\.weight \(data offset 1152921504606846976.*runs past the end/,
    patch: (b) => setU64(b, tensorInfo(b, "blk.0.ffn_down.weight").offset, 1n << 60n),
  },
  {
    name: "overlapping tensors",
    code: "FORMAT",
    why:
      /tensor blk\.1\.ffn_up\.weight is at data offset \d+, but tensor blk\.1\.ffn_gate\.weight ends at \d+ \(they overlap\)/,
    patch: (b) =>
      setU64(
        b,
        tensorInfo(b, "blk.1.ffn_up.weight").offset,
        getU64(b, tensorInfo(b, "blk.1.ffn_gate.weight").offset),
      ),
  },
  {
    name: "hole between tensors",
    code: "FORMAT",
    why:
      /tensor blk\.1\.attn_q\.weight is at data offset \d+, but tensor blk\.1\.attn_norm\.weight ends at \d+ \(a hole/,
    patch: (b) => {
      const at = tensorInfo(b, "blk.1.attn_q.weight").offset;
      setU64(b, at, getU64(b, at) + 32n);
    },
  },
  {
    name: "bytes appended",
    code: "FORMAT",
    why: /64 bytes follow the last tensor's data/,
    patch: (b) => new Uint8Array([...b, ...new Uint8Array(64)]),
  },
  {
    name: "element count overflow",
    code: "FORMAT",
    why: /tensor blk\.0\.attn_v\.weight has too many elements/,
    patch: (b) => setU64(b, tensorInfo(b, "blk.0.attn_v.weight").dims, 1n << 62n),
  },
  {
    name: "nine dimensions",
    code: "FORMAT",
    why: /tensor token_embd\.weight has 9 dimensions/,
    patch: (b) => setU32(b, tensorInfo(b, "token_embd.weight").nDims, 9),
  },
  {
    name: "alignment 3",
    code: "FORMAT",
    why: /general\.alignment must be a uint32 power of two/,
    // The writer refuses alignment 3: the file is written with 4, then its value made 3.
    edit: (c) => void (c.metadata["general.alignment"] = { type: "uint32", value: 4 }),
    patch: (b) => setU32(b, after(b, "general.alignment") + 4, 3),
  },
  {
    name: "shape against hparams",
    code: "FORMAT",
    why: /tensor blk\.0\.ffn_gate\.weight has shape \[128, 64\], the metadata says \[256, 64\]/,
    edit: (c) => void (c.metadata["llama.feed_forward_length"] = { type: "uint32", value: 256 }),
  },
  {
    name: "architecture",
    code: "UNSUPPORTED",
    why: /architecture "gpt2" is not supported \(llama, qwen2\)/,
    edit: (c) => void (c.metadata["general.architecture"] = "gpt2"),
  },
  {
    name: "missing hparam",
    code: "FORMAT",
    why: /metadata key llama\.block_count is missing/,
    edit: (c) => void delete c.metadata["llama.block_count"],
  },
  {
    name: "mistyped hparam",
    code: "FORMAT",
    why: /llama\.embedding_length is a string, not an integer/,
    edit: (c) => void (c.metadata["llama.embedding_length"] = "64"),
  },
  {
    name: "hparam out of range",
    code: "FORMAT",
    why: /llama\.attention\.head_count is 4294967295, outside \[1, 1024\]/,
    edit: (c) => void (c.metadata["llama.attention.head_count"] = { type: "uint32", value: 0xffffffff }),
  },
  {
    name: "per-layer head counts",
    code: "UNSUPPORTED",
    why: /llama\.attention\.head_count_kv holds one value per layer/,
    edit: (c) =>
      void (c.metadata["llama.attention.head_count_kv"] = {
        type: "array",
        itemType: "uint32",
        value: [2, 2],
      }),
  },
  {
    name: "yarn rope scaling",
    code: "UNSUPPORTED",
    why: /rope scaling "yarn" is not supported/,
    edit: (c) => void (c.metadata["llama.rope.scaling.type"] = "yarn"),
  },
  {
    name: "missing tensor",
    code: "FORMAT",
    why: /tensor blk\.1\.ffn_down\.weight is missing/,
    edit: (c) => void (c.tensors = c.tensors.filter((t) => t.name !== "blk.1.ffn_down.weight")),
  },
  {
    name: "tensor of a layer past block_count",
    code: "FORMAT",
    why: /tensor blk\.5\.ffn_norm\.weight is not one of a llama model of 2 layers/,
    edit: (c) =>
      void (c.tensors = [...c.tensors, {
        ...c.tensors.find((t) => t.name === "blk.0.ffn_norm.weight")!,
        name: "blk.5.ffn_norm.weight",
      }]),
  },
  {
    name: "rope_freqs",
    code: "UNSUPPORTED",
    why: /rope_freqs\.weight/,
    edit: (c) =>
      void (c.tensors = [...c.tensors, {
        name: "rope_freqs.weight",
        type: "f32",
        shape: [8],
        data: new Float32Array(8),
      }]),
  },
  {
    name: "quantized vector",
    code: "UNSUPPORTED",
    why: /tensor output_norm\.weight is Q8_0; vectors must be F32, F16 or BF16/,
    edit: (c) => {
      const i = c.tensors.findIndex((t) => t.name === "output_norm.weight");
      c.tensors = c.tensors.map((t, k) => k === i ? { ...t, type: "q8_0" } : t);
    },
  },
  {
    name: "NaN block scale",
    dtype: "q8_0",
    code: "FORMAT",
    why:
      /tensor model\.layers\.0\.mlp\.up_proj\.weight in .* has a NaN or infinite block scale at row 0, column 32/,
    patch: (b) => {
      const info = tensorInfo(b, "blk.0.ffn_up.weight");
      // The data section starts at the first multiple of 32 after the last tensor info; find it from
      // the last tensor's info, whose offset field ends the header.
      const end = tensorInfo(b, "output.weight").offset + 8;
      const data = Math.ceil(end / 32) * 32;
      const at = data + Number(getU64(b, info.offset)) + 34; // block 1's scale
      b[at] = 0x00;
      b[at + 1] = 0x7e;
    },
  },
];

Deno.test("GGUF hostile files: each is refused with a KvfoldError naming the problem", async () => {
  const kv = await testEngine();
  const dir = await testModel("gguf-llama", { seed: 5 });
  const out = await tempDir();
  try {
    for (const f of ["tokenizer.json", "tokenizer_config.json"]) {
      await Deno.copyFile(`${dir}/${f}`, `${out}/${f}`);
    }
    for (const c of CASES) {
      const contents = await modelGgufContents(dir, { dtype: c.dtype ?? "f32" });
      c.edit?.(contents);
      const path = `${out}/model.gguf`;
      await writeGguf(path, contents);
      let bytes: Uint8Array = await Deno.readFile(path);
      bytes = c.patch?.(bytes) ?? bytes;
      await Deno.writeFile(path, bytes);
      const e = await rejectsWith(kv.loadModel(path), c.code, c.why);
      assert.match(e.message, /model\.gguf/, `${c.name}: the message names the file`);
    }
    // The unedited file loads: every refusal above is the edit's doing.
    await writeGguf(`${out}/model.gguf`, await modelGgufContents(dir));
    using model = await kv.loadModel(`${out}/model.gguf`);
    assert.equal(model.info.layers, 2);
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

// A Q4_K file with a non-finite super-block scale (d or dmin): refused at load naming the tensor and
// the block, whether its blocks are computed as stored (AVX512-VNNI, auto) or dequantized (a dtype
// asked for, or other CPUs).
Deno.test("GGUF hostile files: a NaN or infinite Q4_K or Q6_K block scale is refused, naming the block", async () => {
  const kv = await testEngine();
  const dir = await testModel("gguf-kquant", TEST_KQUANT);
  const out = await tempDir();
  try {
    for (const f of ["tokenizer.json", "tokenizer_config.json"]) {
      await Deno.copyFile(`${dir}/${f}`, `${out}/${f}`);
    }
    const path = `${out}/model.gguf`;
    await writeGguf(path, await modelGgufContents(dir, { dtype: "q4_k_m" }));
    const clean = await Deno.readFile(path);
    const data = Math.ceil((tensorInfo(clean, "output.weight").offset + 8) / 32) * 32;
    // [GGUF tensor, HF name, ggml type, block bytes, the block spoiled, its f16 scales' offsets]:
    // ffn_up's rows are one Q4_K block (d, dmin first), ffn_down's two Q6_K blocks (d last).
    const cases = [
      ["blk.0.ffn_up.weight", "mlp\\.up_proj", 12, 144, 1, [0, 2]],
      ["blk.0.ffn_down.weight", "mlp\\.down_proj", 14, 210, 2, [208]],
    ] as const;
    for (const [gguf, hf, type, blockBytes, block, scales] of cases) {
      const info = tensorInfo(clean, gguf);
      assert.equal(
        new DataView(clean.buffer).getUint32(info.type, true),
        type,
        `${gguf}'s type in a q4_k_m file`,
      );
      const at0 = data + Number(getU64(clean, info.offset)) + block * blockBytes;
      for (const [i, at] of scales.entries()) {
        const value = i === 0 ? 0x7e00 : 0x7c00; // d := NaN, then dmin := +Inf
        const bytes = clean.slice();
        bytes[at0 + at] = value & 0xff;
        bytes[at0 + at + 1] = value >> 8;
        await Deno.writeFile(path, bytes);
        // As stored (auto), and dequantized to the dtype asked for: the same refusal.
        for (const options of [{}, { dtype: "q8_0" as const }]) {
          await rejectsWith(
            kv.loadModel(path, options),
            "FORMAT",
            new RegExp(
              `tensor model\\.layers\\.0\\.${hf}\\.weight in .*model\\.gguf has a NaN or infinite block scale at row 1, column 0`,
            ),
          );
        }
      }
    }
    await Deno.writeFile(path, clean);
    using model = await kv.loadModel(path);
    assert.equal(model.info.layers, 2);
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

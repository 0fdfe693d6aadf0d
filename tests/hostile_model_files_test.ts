// Hostile model folders: every file kvfold reads from one may be a FIFO, a link to /dev/zero, a
// directory, or lie about its contents. Each must end in a KvfoldError naming the file (or tensor)
// at fault, never a hang, unbounded memory, silently wrong weights or a JS internal message.
import assert from "node:assert/strict";
import { KvfoldError, type KvfoldErrorCode } from "../mod.ts";
import { Compressor } from "../src/compressor.ts";
import { makeTestLococoHeads } from "../testing/mod.ts";
import { readSafetensors, readSafetensorsFile } from "../src/formats/safetensors.ts";
import { makeTestAdapter } from "../testing/mod.ts";
import { runCli, tempDir, TEST_COMPRESSOR, testEngine, testModel } from "./_fixtures.ts";
import { rejectsWith, withBrokenModel } from "./_kvfold_asserts.ts";

async function expectLoadError(dir: string, code: KvfoldErrorCode, ...patterns: RegExp[]) {
  const kv = await testEngine();
  await rejectsWith(kv.loadModel(dir), code, ...patterns);
}

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/**
 * Runs `check` while `fifo` exists. If `check` has not settled after a minute (only a regression
 * that blocks reading the FIFO takes that long), a writer opens and closes the FIFO, so that a
 * blocked reader sees end of file and the test fails on its assertion instead of hanging.
 */
async function unblockingFifo(fifo: string, check: () => Promise<unknown>) {
  const timer = setTimeout(() => Deno.open(fifo, { write: true }).then((f) => f.close(), () => {}), 60_000);
  try {
    await check();
  } finally {
    clearTimeout(timer);
  }
}

type Breakage = "fifo" | "dev-zero" | "directory";

/** Puts a FIFO, a link to /dev/zero or a directory at `path` (replacing a file there). */
function breakFile(path: string, how: Breakage) {
  try {
    Deno.removeSync(path);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  if (how === "fifo") new Deno.Command("mkfifo", { args: [path] }).outputSync();
  else if (how === "dev-zero") Deno.symlinkSync("/dev/zero", path);
  else Deno.mkdirSync(path);
}

const WHY: Record<Breakage, RegExp> = {
  "fifo": /is not a regular file/,
  "dev-zero": /is not a regular file/,
  "directory": /is a directory, not a file/,
};

for (const file of ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]) {
  for (const how of ["fifo", "dev-zero", "directory"] as const) {
    Deno.test(`hostile files: ${file} as a ${how} is an IO error naming it`, async () => {
      await withBrokenModel(
        (d) => breakFile(`${d}/${file}`, how),
        (d) =>
          unblockingFifo(
            `${d}/${file}`,
            () => expectLoadError(d, "IO", new RegExp(escape(`${d}/${file}`) + " "), WHY[how]),
          ),
      );
    });
  }
}

Deno.test("hostile files: model.safetensors as a FIFO, /dev/zero or a directory is an IO error naming it", async () => {
  for (const how of ["fifo", "dev-zero", "directory"] as const) {
    await withBrokenModel(
      (d) => breakFile(`${d}/model.safetensors`, how),
      (d) =>
        unblockingFifo(
          `${d}/model.safetensors`,
          () => expectLoadError(d, "IO", /model\.safetensors/, WHY[how]),
        ),
    );
  }
});

Deno.test("hostile files: a sharded index as a FIFO, /dev/zero or a directory is an IO error naming it", async () => {
  const sharded = testModel("sharded", { shards: 2, seed: 11 });
  for (const how of ["fifo", "dev-zero", "directory"] as const) {
    await withBrokenModel(
      (d) => breakFile(`${d}/model.safetensors.index.json`, how),
      (d) =>
        unblockingFifo(
          `${d}/model.safetensors.index.json`,
          () => expectLoadError(d, "IO", /model\.safetensors\.index\.json/, WHY[how]),
        ),
      sharded,
    );
  }
});

Deno.test("hostile files: generation_config.json that is not JSON is refused, a missing one is fine", async () => {
  await withBrokenModel(
    (d) => Deno.writeTextFileSync(`${d}/generation_config.json`, "{"),
    (d) => expectLoadError(d, "FORMAT", /generation_config\.json is not valid JSON/),
  );
  await withBrokenModel(
    (d) => Deno.removeSync(`${d}/generation_config.json`),
    async (d) => (await testEngine()).loadModel(d).then((m) => m.dispose()),
  );
});

Deno.test("hostile files: the compressor's index and makeTest* configs are read with the same checks", async () => {
  const kv = await testEngine();
  await withBrokenModel(
    (d) => Deno.symlinkSync("/dev/zero", `${d}/model.safetensors.index.json`),
    (d) => rejectsWith(Compressor.load(kv, d), "IO", /model\.safetensors\.index\.json is not a regular file/),
    testModel("compressor", TEST_COMPRESSOR),
  );
  await withBrokenModel((d) => breakFile(`${d}/config.json`, "fifo"), async (d) => {
    await unblockingFifo(`${d}/config.json`, async () => {
      await rejectsWith(makeTestAdapter(`${d}/a`, { base: d }), "IO", /config\.json is not a regular file/);
      await rejectsWith(
        makeTestLococoHeads(`${d}/h.safetensors`, { base: d }),
        "IO",
        /config\.json is not a regular file/,
      );
    });
  });
});

Deno.test("hostile files: an adapter folder with a directory where a file should be says so", async () => {
  const kv = await testEngine();
  const base = await testModel("gqa", { seed: 11 });
  using model = await kv.loadModel(base);
  const dir = await tempDir();
  try {
    await makeTestAdapter(dir, { base, rank: 2 });
    for (const f of ["adapter_config.json", "adapter_model.safetensors"]) {
      const keep = Deno.readFileSync(`${dir}/${f}`);
      breakFile(`${dir}/${f}`, "directory");
      await rejectsWith(
        model.adapters.load(dir),
        "IO",
        new RegExp(`${escape(f)} is a directory, not a file`),
      );
      Deno.removeSync(`${dir}/${f}`);
      Deno.writeFileSync(`${dir}/${f}`, keep);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("hostile files: CLI data and document files that are FIFOs or /dev/zero are refused", async () => {
  const model = await testModel("gqa", { seed: 11 });
  const dir = await tempDir();
  try {
    breakFile(`${dir}/x`, "dev-zero");
    new Deno.Command("mkfifo", { args: [`${dir}/fifo`] }).outputSync();
    for (
      const [data, want] of [["x", /Cannot train lora: .*\/x is not a regular file \[IO\]/], [
        "fifo",
        /fifo is not a regular file/,
      ]] as const
    ) {
      await unblockingFifo(`${dir}/fifo`, async () => {
        const r = await runCli(
          "train",
          "lora",
          "--model",
          model,
          "--data",
          `${dir}/${data}`,
          "--out",
          `${dir}/out`,
        );
        assert.notEqual(r.code, 0);
        assert.match(r.err, want);
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------------------------
// safetensors that lie

/** Rewrites a safetensors file with its header padded by `pad` spaces and length field `n + delta`. */
function rewriteHeader(path: string, pad: number, delta: number) {
  const bytes = Deno.readFileSync(path);
  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const json = new TextDecoder().decode(bytes.subarray(8, 8 + n)).trimEnd();
  const header = new TextEncoder().encode(json + " ".repeat(pad));
  const out = new Uint8Array(8 + header.length + bytes.length - 8 - n);
  new DataView(out.buffer).setBigUint64(0, BigInt(header.length + delta), true);
  out.set(header, 8);
  out.set(bytes.subarray(8 + n), 8 + header.length);
  Deno.writeFileSync(path, out);
}

Deno.test("hostile safetensors: a header length one byte short or long is refused, not shifted", async () => {
  for (const [pad, delta] of [[8, -1], [0, -1], [8, 1]]) {
    await withBrokenModel(
      (d) => rewriteHeader(`${d}/model.safetensors`, pad, delta),
      (d) => expectLoadError(d, "FORMAT", /model\.safetensors/),
    );
  }
  // The shifted case (padding absorbs the missing byte) names the mismatch itself.
  await withBrokenModel(
    (d) => rewriteHeader(`${d}/model.safetensors`, 8, -1),
    (d) =>
      expectLoadError(
        d,
        "FORMAT",
        /model\.safetensors: the tensors end at data offset \d+, but the data section/,
      ),
  );
});

Deno.test("hostile safetensors: trailing bytes after the data are refused, in the loader and the TS reader", async () => {
  await withBrokenModel((d) => {
    const bytes = Deno.readFileSync(`${d}/model.safetensors`);
    Deno.writeFileSync(`${d}/model.safetensors`, new Uint8Array([...bytes, 1, 2, 3]));
  }, async (d) => {
    await expectLoadError(d, "FORMAT", /model\.safetensors.*trailing bytes/);
    await rejectsWith(
      readSafetensorsFile(`${d}/model.safetensors`),
      "FORMAT",
      /model\.safetensors.*trailing bytes/,
    );
  });
});

Deno.test("hostile safetensors: the TS reader refuses FIFOs, holes and shifted headers", async () => {
  await withBrokenModel((d) => {
    breakFile(`${d}/model.safetensors`, "fifo");
  }, (d) =>
    unblockingFifo(
      `${d}/model.safetensors`,
      () =>
        rejectsWith(
          readSafetensorsFile(`${d}/model.safetensors`),
          "IO",
          /model\.safetensors is not a regular file/,
        ),
    ));
  const enc = new TextEncoder();
  const file = (header: unknown, data: number) => {
    const h = enc.encode(JSON.stringify(header));
    const out = new Uint8Array(8 + h.length + data);
    new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
    out.set(h, 8);
    return out;
  };
  assert.throws(
    () =>
      readSafetensors(file({
        a: { dtype: "U8", shape: [2], data_offsets: [0, 2] },
        b: { dtype: "U8", shape: [1], data_offsets: [4, 5] },
      }, 5)),
    (e: unknown) =>
      e instanceof KvfoldError && e.code === "FORMAT" && /tensor b starts at data offset 4/.test(e.message),
  );
  assert.throws(
    () => readSafetensors(file({ a: { dtype: "U8", shape: [2], data_offsets: [1, 3] } }, 3)),
    (e: unknown) => e instanceof KvfoldError && /tensor a starts at data offset 1/.test(e.message),
  );
});

/** Sets element `index` of tensor `name` in a model.safetensors to `value` (bits written as its dtype). */
function poison(path: string, name: string, index: number, value: number) {
  const bytes = Deno.readFileSync(path);
  const t = readSafetensors(bytes).tensors.get(name)!;
  const dv = new DataView(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  if (t.dtype === "F32") dv.setFloat32(4 * index, value, true);
  else {
    const f = new Float32Array([value]);
    const bits = new Uint32Array(f.buffer)[0];
    // NaN and Inf keep their class in both 16-bit formats with these patterns.
    const h = t.dtype === "BF16" ? bits >>> 16 : Number.isNaN(value) ? 0x7e00 : value > 0 ? 0x7c00 : 0xfc00;
    dv.setUint16(2 * index, h, true);
  }
  Deno.writeFileSync(path, bytes);
}

Deno.test("hostile safetensors: NaN and Inf weights are refused at load, naming the tensor", async () => {
  const cases: [string, number, number, RegExp][] = [
    [
      "model.layers.1.mlp.down_proj.weight",
      70,
      NaN,
      /down_proj\.weight in .*model\.safetensors holds NaN at element 70 \(row 0, column 70\)/,
    ],
    [
      "model.embed_tokens.weight",
      64 * 3 + 5,
      -Infinity,
      /embed_tokens\.weight .*holds -Inf at element 197 \(row 3, column 5\)/,
    ],
    [
      "model.layers.0.input_layernorm.weight",
      63,
      Infinity,
      /input_layernorm\.weight .*holds \+Inf at element 63/,
    ],
  ];
  for (const [name, index, value, re] of cases) {
    await withBrokenModel(
      (d) => poison(`${d}/model.safetensors`, name, index, value),
      (d) => expectLoadError(d, "FORMAT", re, /the weights are corrupt/),
    );
  }
  // 16-bit files, kept as they are (the scan) and converted to f32 (checked during conversion).
  for (const dtype of ["bfloat16", "float16"] as const) {
    const model = testModel(`hostile-${dtype}`, { seed: 11, dtype });
    for (const load of ["auto", "f32"] as const) {
      await withBrokenModel(
        (d) => poison(`${d}/model.safetensors`, "model.layers.0.self_attn.q_proj.weight", 129, NaN),
        async (d) => {
          const kv = await testEngine();
          await rejectsWith(
            kv.loadModel(d, { dtype: load }),
            "FORMAT",
            /q_proj\.weight .*holds NaN at element 129 \(row 2, column 1\)/,
          );
        },
        model,
      );
    }
  }
});

Deno.test("hostile safetensors: an adapter with a NaN weight is refused at load, naming the tensor", async () => {
  const kv = await testEngine();
  const base = await testModel("gqa", { seed: 11 });
  using model = await kv.loadModel(base);
  const dir = await tempDir();
  try {
    const names = await makeTestAdapter(dir, { base, rank: 2 });
    poison(`${dir}/adapter_model.safetensors`, names[1], 3, NaN);
    await rejectsWith(
      model.adapters.load(dir),
      "FORMAT",
      new RegExp(`tensor ${escape(names[1])} of .*adapter_model\\.safetensors holds NaN or Inf at element 3`),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------------------------
// config.json and the sharded index against the weights

Deno.test("hostile config: num_hidden_layers below the layers in the files is refused, naming them", async () => {
  await withBrokenModel((d) => {
    const c = JSON.parse(Deno.readTextFileSync(`${d}/config.json`));
    c.num_hidden_layers = 1;
    Deno.writeTextFileSync(`${d}/config.json`, JSON.stringify(c));
  }, (d) =>
    expectLoadError(
      d,
      "FORMAT",
      /tensors that config\.json does not use: model\.layers\.1\.input_layernorm\.weight, .*\(9 in all\); the files hold layer 1 but num_hidden_layers is 1/,
    ));
});

Deno.test("hostile config: biases the config does not have are refused (qwen2 weights as llama)", async () => {
  await withBrokenModel(
    (d) => {
      const c = JSON.parse(Deno.readTextFileSync(`${d}/config.json`));
      c.model_type = "llama";
      Deno.writeTextFileSync(`${d}/config.json`, JSON.stringify(c));
    },
    (d) => expectLoadError(d, "FORMAT", /does not use: model\.layers\.0\.self_attn\.q_proj\.bias/),
    testModel("qwen2", { modelType: "qwen2", seed: 11 }),
  );
});

Deno.test("hostile config: shapes disagreeing with hidden, heads, kv heads and vocab are named", async () => {
  const cases: [string, number, RegExp][] = [
    ["hidden_size", 32, /embed_tokens\.weight has shape \[512, 64\], config\.json says \[512, 32\]/],
    ["num_key_value_heads", 4, /k_proj\.weight has shape \[32, 64\], config\.json says \[64, 64\]/],
    ["vocab_size", 600, /embed_tokens\.weight has shape \[512, 64\], config\.json says \[600, 64\]/],
    ["num_attention_heads", 2, /k_proj\.weight has shape \[32, 64\], config\.json says \[64, 64\]/],
    ["intermediate_size", 100, /mlp\.gate_proj\.weight has shape \[128, 64\], config\.json says \[100, 64\]/],
  ];
  for (const [key, value, re] of cases) {
    await withBrokenModel((d) => {
      const c = JSON.parse(Deno.readTextFileSync(`${d}/config.json`));
      c[key] = value;
      Deno.writeTextFileSync(`${d}/config.json`, JSON.stringify(c));
    }, (d) => expectLoadError(d, "FORMAT", re));
  }
});

Deno.test("hostile index: weight_map pointing at a missing tensor, and a tensor it does not list", async () => {
  const sharded = testModel("sharded", { shards: 2, seed: 11 });
  const editIndex = (d: string, f: (map: Record<string, string>) => void) => {
    const j = JSON.parse(Deno.readTextFileSync(`${d}/model.safetensors.index.json`));
    f(j.weight_map);
    Deno.writeTextFileSync(`${d}/model.safetensors.index.json`, JSON.stringify(j));
  };
  await withBrokenModel(
    (d) => editIndex(d, (m) => (m["model.layers.0.extra.weight"] = "model-00001-of-00002.safetensors")),
    (d) =>
      expectLoadError(
        d,
        "FORMAT",
        /maps tensor model\.layers\.0\.extra\.weight to .*but that file does not contain it/,
      ),
    sharded,
  );
  await withBrokenModel(
    (d) => editIndex(d, (m) => delete m["model.norm.weight"]),
    (d) =>
      expectLoadError(
        d,
        "FORMAT",
        /holds tensor model\.norm\.weight, which the weight_map of .*does not list/,
      ),
    sharded,
  );
  await withBrokenModel(
    (d) => editIndex(d, (m) => (m["model.norm.weight"] = "model-00009-of-00009.safetensors")),
    (d) => expectLoadError(d, "IO", /model-00009-of-00009\.safetensors listed in .* does not exist/),
    sharded,
  );
});

// ---------------------------------------------------------------------------------------------
// tokenizer.json

// deno-lint-ignore no-explicit-any
function editTokenizer(d: string, f: (t: Record<string, any>) => void) {
  const t = JSON.parse(Deno.readTextFileSync(`${d}/tokenizer.json`));
  f(t);
  Deno.writeTextFileSync(`${d}/tokenizer.json`, JSON.stringify(t));
}

Deno.test("hostile tokenizer: empty vocab, unknown model type and mistyped parts are clear errors", async () => {
  // deno-lint-ignore no-explicit-any
  const cases: [(t: Record<string, any>) => void, KvfoldErrorCode, RegExp][] = [
    [
      (t) => {
        t.model.vocab = {};
        t.model.merges = [];
        t.added_tokens = [];
      },
      "FORMAT",
      /model\.vocab is empty/,
    ],
    [
      (t) => (t.model.type = "Foo"),
      "UNSUPPORTED",
      /model type "Foo" is not supported \(BPE, Unigram, WordLevel, WordPiece\)/,
    ],
    [(t) => delete t.model, "FORMAT", /"model" is missing, not an object/],
    [(t) => (t.model.merges = [1, 2, 3]), "FORMAT", /model\.merges entry 0 is a number \(1\)/],
    [(t) => (t.model.merges = "a b"), "FORMAT", /model\.merges is a string/],
    [(t) => (t.model.vocab = { a: "0" }), "FORMAT", /model\.vocab gives token "a" the id a string/],
    [(t) => (t.added_tokens = 5), "FORMAT", /added_tokens is a number \(5\), not a list/],
    [
      (t) => (t.added_tokens[0].content = 5),
      "FORMAT",
      /added_tokens entry 0 has no integer id and string content/,
    ],
    [(t) => (t.normalizer = 7), "FORMAT", /normalizer is a number \(7\), not an object with a type/],
    // Deeper than the checks go: the library's failure, named as tokenizer.json's.
    [(t) => (t.normalizer = { type: "Sequence", normalizers: 3 }), "FORMAT", /has a part of the wrong type/],
    [
      (t) => (t.pre_tokenizer = { type: "Nope" }),
      "FORMAT",
      /unknown setting \(Unknown PreTokenizer type: Nope\)/,
    ],
  ];
  for (const [edit, code, re] of cases) {
    await withBrokenModel(
      (d) => editTokenizer(d, edit),
      (d) => expectLoadError(d, code, new RegExp(`Cannot load tokenizer: ${escape(d)}/tokenizer\\.json`), re),
    );
  }
});

Deno.test("hostile tokenizer: a tokenizer that yields no id for a piece fails on encode, naming the file", async () => {
  await withBrokenModel(
    // A byte-level BPE vocab read as WordPiece (no unk token in it) gives undefined ids.
    (d) => editTokenizer(d, (t) => (t.model.type = "WordPiece")),
    async (d) => {
      using model = await (await testEngine()).loadModel(d);
      assert.throws(
        () => model.tokenizer.encode("the river town"),
        (e: unknown) =>
          e instanceof KvfoldError && e.code === "FORMAT" &&
          /tokenizer\.json gave the token id/.test(e.message),
      );
      assert.throws(() => model.tokenizer.decode([1.5]), RangeError);
    },
  );
});

// Checks of the float64 reference forward itself: hand-computed cases and metamorphic identities
// that a wrong layout (RoPE pairing, GQA grouping, causal mask, prefix positions, tying) breaks.
import assert from "node:assert/strict";
import { join } from "node:path";
import { makeTestModel, type TestModelOptions } from "../testing/mod.ts";
import {
  embedTokens,
  loadReferenceModel,
  parseReferenceConfig,
  referenceLogits,
  type ReferenceModel,
  ropeInvFreq,
} from "./reference_forward.ts";
import { tempDir } from "./_fixtures.ts";

const IDS = [
  1,
  299,
  481,
  288,
  475,
  267,
  384,
  107,
  269,
  383,
  114,
  127,
  310,
  265,
  287,
  451,
  121,
  122,
  279,
  385,
  283,
  463,
  294,
  52,
  40,
  41,
  300,
  301,
  7,
  8,
  9,
  10,
];

let root: string | undefined;
const cache = new Map<string, Promise<ReferenceModel>>();

/** A freshly loaded reference model for these generator options (files written once per process). */
async function model(name: string, options: TestModelOptions): Promise<ReferenceModel> {
  root ??= await tempDir("kvfold_reference_");
  let p = cache.get(name);
  if (p === undefined) {
    const dir = join(root, name);
    p = makeTestModel(dir, { seed: 11, ...options }).then(() => loadReferenceModel(dir));
    cache.set(name, p);
  }
  const m = await p;
  // a deep copy, so tests may edit tensors and config freely
  return {
    config: { ...m.config },
    tensors: new Map([...m.tensors].map(([k, v]) => [k, Float64Array.from(v)])),
    shapes: new Map(m.shapes),
  };
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

function assertClose(a: ArrayLike<number>, b: ArrayLike<number>, tol = 1e-10, what = "") {
  const d = maxAbsDiff(a, b);
  assert.ok(d <= tol, `${what} max |diff| ${d} > ${tol}`);
}

function assertFar(a: ArrayLike<number>, b: ArrayLike<number>, tol = 1e-3, what = "") {
  const d = maxAbsDiff(a, b);
  assert.ok(d > tol, `${what} max |diff| ${d} <= ${tol}: the check cannot tell the cases apart`);
}

function std(a: ArrayLike<number>): number {
  let s = 0, s2 = 0;
  for (let i = 0; i < a.length; i++) {
    s += a[i];
    s2 += a[i] * a[i];
  }
  return Math.sqrt(s2 / a.length - (s / a.length) ** 2);
}

Deno.test({
  name: "reference forward",
  async fn(t) {
    try {
      // No time limit here: timing belongs in bench/ (it failed on a busy machine before).
      await t.step("logits vary meaningfully, per position", async () => {
        const m = await model("gqa", {});
        const logits = referenceLogits(m, IDS);
        const V = m.config.vocabSize;
        assert.equal(logits.length, IDS.length * V);
        assert.ok(logits.every(Number.isFinite));
        const s = std(logits.subarray(0, V));
        assert.ok(s > 0.3 && s < 5, `logit std ${s}`);
        assertFar(logits.subarray(0, V), logits.subarray(V, 2 * V), 0.1, "rows 0 and 1");
      });

      await t.step("hand-computed single token with attention and MLP switched off", async () => {
        const m = await model("gqa", {});
        const c = m.config;
        for (let l = 0; l < c.numLayers; l++) {
          m.tensors.get(`model.layers.${l}.self_attn.o_proj.weight`)!.fill(0);
          m.tensors.get(`model.layers.${l}.mlp.down_proj.weight`)!.fill(0);
        }
        const id = 299;
        const H = c.hiddenSize;
        const e = m.tensors.get("model.embed_tokens.weight")!.subarray(id * H, (id + 1) * H);
        const w = m.tensors.get("model.norm.weight")!;
        const rms = Math.sqrt(e.reduce((a, x) => a + x * x, 0) / H + c.rmsNormEps);
        const head = m.tensors.get("lm_head.weight")!;
        const want = new Float64Array(c.vocabSize);
        for (let v = 0; v < c.vocabSize; v++) {
          for (let i = 0; i < H; i++) want[v] += head[v * H + i] * w[i] * (e[i] / rms);
        }
        assertClose(referenceLogits(m, [id]), want, 1e-12, "final norm + lm_head");
        // with a longer sequence each row still only sees its own token
        const rows = referenceLogits(m, [5, id, 9]);
        assertClose(rows.subarray(c.vocabSize, 2 * c.vocabSize), want, 1e-12, "row 1");
      });

      await t.step("a single token: attention output is o_proj(v_proj(x)), whatever q and k", async () => {
        const m = await model("one_layer", { numLayers: 1, modelType: "qwen2" });
        const c = m.config;
        const H = c.hiddenSize, D = c.headDim, group = c.numHeads / c.numKeyValueHeads;
        m.tensors.get("model.layers.0.mlp.down_proj.weight")!.fill(0);
        const id = 42;
        const x = embedTokens(m, [id]);
        const lin = (w: Float64Array, b: Float64Array | undefined, v: Float64Array) => {
          const outDim = w.length / v.length;
          const y = new Float64Array(outDim);
          for (let o = 0; o < outDim; o++) {
            y[o] = b ? b[o] : 0;
            for (let i = 0; i < v.length; i++) y[o] += w[o * v.length + i] * v[i];
          }
          return y;
        };
        const norm = (v: Float64Array, w: Float64Array) => {
          const r = Math.sqrt(v.reduce((a, y) => a + y * y, 0) / v.length + c.rmsNormEps);
          return v.map((y, i) => w[i] * (y / r));
        };
        const h = norm(x, m.tensors.get("model.layers.0.input_layernorm.weight")!);
        const vv = lin(
          m.tensors.get("model.layers.0.self_attn.v_proj.weight")!,
          m.tensors.get("model.layers.0.self_attn.v_proj.bias"),
          h,
        );
        const att = new Float64Array(c.numHeads * D); // each query head copies its group's v
        for (let q = 0; q < c.numHeads; q++) {
          att.set(vv.subarray(Math.floor(q / group) * D, (Math.floor(q / group) + 1) * D), q * D);
        }
        const o = lin(m.tensors.get("model.layers.0.self_attn.o_proj.weight")!, undefined, att);
        const resid = x.map((y, i) => y + o[i]);
        const want = lin(
          m.tensors.get("lm_head.weight")!,
          undefined,
          norm(resid, m.tensors.get("model.norm.weight")!),
        );
        assertClose(referenceLogits(m, [id]), want, 1e-12, "one token");
        // q and k cannot matter for one token
        m.tensors.get("model.layers.0.self_attn.q_proj.weight")!.fill(3);
        m.tensors.get("model.layers.0.self_attn.k_proj.bias")!.fill(-2);
        assertClose(referenceLogits(m, [id]), want, 1e-12, "one token, q/k changed");
        assert.ok(H > 0);
      });

      await t.step("causality: logits of a prefix equal the first rows of the longer sequence", async () => {
        for (const name of ["gqa", "qwen"]) {
          const m = await model(name, name === "qwen" ? { modelType: "qwen2" } : {});
          const V = m.config.vocabSize;
          const full = referenceLogits(m, IDS);
          for (const k of [1, 5, 17]) {
            assertClose(
              referenceLogits(m, IDS.slice(0, k)),
              full.subarray(0, k * V),
              1e-10,
              `${name} prefix ${k}`,
            );
          }
          // and a later token does change later rows (the mask is not hiding everything)
          const changed = [...IDS];
          changed[5] = 77;
          const other = referenceLogits(m, changed);
          assertClose(
            other.subarray(0, 5 * V),
            full.subarray(0, 5 * V),
            1e-10,
            `${name} rows before the change`,
          );
          assertFar(
            other.subarray(6 * V, 7 * V),
            full.subarray(6 * V, 7 * V),
            1e-3,
            `${name} row after the change`,
          );
        }
      });

      await t.step("prefixEmbeddings equal to embedding rows give the same logits as the ids", async () => {
        const m = await model("gqa", {});
        const V = m.config.vocabSize;
        const full = referenceLogits(m, IDS);
        for (const k of [1, 8, 20]) {
          const got = referenceLogits(m, IDS.slice(k), { prefixEmbeddings: embedTokens(m, IDS.slice(0, k)) });
          assert.equal(got.length, (IDS.length - k) * V);
          assertClose(got, full.subarray(k * V), 1e-10, `prefix of ${k}`);
        }
        // a prefix shifts positions: the same ids without it give different logits
        const shifted = referenceLogits(m, IDS.slice(8));
        assertFar(shifted, full.subarray(8 * V), 1e-3, "ids without their prefix");
        // a perturbed prefix changes the result
        const pre = embedTokens(m, IDS.slice(0, 8));
        pre[3] += 0.5;
        assertFar(
          referenceLogits(m, IDS.slice(8), { prefixEmbeddings: pre }),
          full.subarray(8 * V),
          1e-4,
          "perturbed prefix",
        );
        assert.throws(() => referenceLogits(m, IDS, { prefixEmbeddings: new Float64Array(5) }), RangeError);
      });

      await t.step("GQA equals MHA whose k/v heads are copied per group (with biases)", async () => {
        for (
          const [name, opts] of [["gqa", {}], ["qwen_mqa", {
            modelType: "qwen2",
            numKeyValueHeads: 1,
          }]] as const
        ) {
          const g = await model(name, opts);
          const c = g.config;
          const D = c.headDim, H = c.hiddenSize, group = c.numHeads / c.numKeyValueHeads;
          assert.ok(group > 1);
          const mha: ReferenceModel = {
            config: { ...c, numKeyValueHeads: c.numHeads },
            tensors: new Map(g.tensors),
            shapes: new Map(g.shapes),
          };
          const expand = (src: Float64Array, rowLen: number) => {
            const out = new Float64Array(c.numHeads * D * rowLen);
            for (let h = 0; h < c.numHeads; h++) {
              const kv = Math.floor(h / group);
              out.set(src.subarray(kv * D * rowLen, (kv + 1) * D * rowLen), h * D * rowLen);
            }
            return out;
          };
          for (let l = 0; l < c.numLayers; l++) {
            for (const p of ["k", "v"]) {
              const w = `model.layers.${l}.self_attn.${p}_proj.weight`;
              mha.tensors.set(w, expand(g.tensors.get(w)!, H));
              mha.shapes.set(w, [c.numHeads * D, H]);
              const b = `model.layers.${l}.self_attn.${p}_proj.bias`;
              if (g.tensors.has(b)) mha.tensors.set(b, expand(g.tensors.get(b)!, 1));
            }
          }
          const want = referenceLogits(g, IDS);
          assertClose(referenceLogits(mha, IDS), want, 1e-10, `${name} expanded`);
          // mapping query heads to kv heads the other way round (h % kvHeads) is not the same
          if (c.numKeyValueHeads > 1) {
            const wrong: ReferenceModel = { ...mha, tensors: new Map(mha.tensors) };
            for (let l = 0; l < c.numLayers; l++) {
              for (const p of ["k", "v"]) {
                const w = `model.layers.${l}.self_attn.${p}_proj.weight`;
                const src = g.tensors.get(w)!;
                const out = new Float64Array(c.numHeads * D * H);
                for (let h = 0; h < c.numHeads; h++) {
                  const kv = h % c.numKeyValueHeads;
                  out.set(src.subarray(kv * D * H, (kv + 1) * D * H), h * D * H);
                }
                wrong.tensors.set(w, out);
              }
            }
            assertFar(referenceLogits(wrong, IDS), want, 1e-3, "interleaved grouping");
          }
        }
      });

      await t.step(
        "rope scaling: linear factor 1 and degenerate llama3 equal none; llama3 can equal linear",
        async () => {
          const base = await model("gqa", {});
          const none = referenceLogits(base, IDS);
          const withScaling = (s: Record<string, unknown> | null) =>
            referenceLogits({ ...base, config: { ...base.config, ropeScaling: s } }, IDS);
          assertClose(withScaling({ rope_type: "linear", factor: 1 }), none, 1e-12, "linear 1");
          assertClose(withScaling({ type: "linear", factor: 1 }), none, 1e-12, "legacy key 'type'");
          const linear4 = withScaling({ rope_type: "linear", factor: 4 });
          assertFar(linear4, none, 1e-3, "linear 4");
          // llama3 whose original context is huge keeps every frequency...
          const llama3 = (orig: number) => ({
            rope_type: "llama3",
            factor: 4,
            low_freq_factor: 1,
            high_freq_factor: 4,
            original_max_position_embeddings: orig,
          });
          assertClose(withScaling(llama3(1e12)), none, 1e-12, "llama3 huge original context");
          // ...and one whose original context is tiny divides every frequency by factor
          assertClose(withScaling(llama3(1e-9)), linear4, 1e-12, "llama3 tiny original context");
          // a realistic setting is in between: different from both
          const mid = withScaling(llama3(16));
          assertFar(mid, none, 1e-4, "llama3 mid vs none");
          assertFar(mid, linear4, 1e-4, "llama3 mid vs linear");
          // and the model generated with rope scaling writes the config the reference reads
          const gen = await model("linear1", { ropeScaling: { rope_type: "linear", factor: 1 } });
          assert.deepEqual(gen.config.ropeScaling, { rope_type: "linear", factor: 1 });
          assertClose(referenceLogits(gen, IDS), none, 1e-12, "generated linear-1 model");
        },
      );

      await t.step("llama3 inverse frequencies follow HF's _compute_llama3_parameters", () => {
        // Values from the formula by hand for head_dim 8, theta 10000, factor 8, low 1, high 4, orig 64:
        // inv = [1, 0.1, 0.01, 0.001]; wavelen = 2π/inv = [6.28, 62.8, 628, 6283];
        // low_freq_wavelen = 64, high_freq_wavelen = 16: [keep, smooth, /8, /8]
        const inv = ropeInvFreq(8, 10000, {
          rope_type: "llama3",
          factor: 8,
          low_freq_factor: 1,
          high_freq_factor: 4,
          original_max_position_embeddings: 64,
        });
        const smooth = (64 / (2 * Math.PI / 0.1) - 1) / 3;
        const expected = [1, (1 - smooth) * 0.1 / 8 + smooth * 0.1, 0.01 / 8, 0.001 / 8];
        expected.forEach((v, i) =>
          assert.ok(Math.abs(inv[i] - v) < 1e-15 * Math.max(1, v), `${i}: ${inv[i]} vs ${v}`)
        );
        assert.deepEqual(Array.from(ropeInvFreq(4, 100, null)), [1, 0.1]);
        assert.throws(() => ropeInvFreq(4, 100, { rope_type: "yarn", factor: 2 }), /yarn is not supported/);
      });

      await t.step("rope uses rotate_half pairs (i, i + head_dim/2), not adjacent pairs", async () => {
        // Rotating every rope pair of q and k by the same fixed 90° commutes with RoPE (rotations
        // of one plane commute) and keeps q·k, so the logits cannot change, but only if the map
        // uses the same pairs as RoPE: with HF's rotate_half pairs it is a symmetry, with adjacent
        // (GPT-J style) pairs it is not.
        const m = await model("gqa", {});
        const c = m.config;
        const D = c.headDim, H = c.hiddenSize;
        // row i of each head becomes sign * row src(i)
        const rotated = (map: (i: number) => [number, number]): ReferenceModel => {
          const out: ReferenceModel = { ...m, tensors: new Map(m.tensors) };
          for (let l = 0; l < c.numLayers; l++) {
            for (const [p, heads] of [["q", c.numHeads], ["k", c.numKeyValueHeads]] as const) {
              for (const suffix of ["weight", "bias"]) {
                const name = `model.layers.${l}.self_attn.${p}_proj.${suffix}`;
                const src = m.tensors.get(name);
                if (src === undefined) continue;
                const row = suffix === "weight" ? H : 1;
                const dst = new Float64Array(src.length);
                for (let h = 0; h < heads; h++) {
                  for (let i = 0; i < D; i++) {
                    const [j, sign] = map(i);
                    for (let x = 0; x < row; x++) {
                      dst[(h * D + i) * row + x] = sign * src[(h * D + j) * row + x];
                    }
                  }
                }
                out.tensors.set(name, dst);
              }
            }
          }
          return out;
        };
        const want = referenceLogits(m, IDS);
        // rotate_half: x[i] ← -x[i + D/2], x[i + D/2] ← x[i]
        const half = (i: number): [number, number] => (i < D / 2 ? [i + D / 2, -1] : [i - D / 2, 1]);
        assertClose(referenceLogits(rotated(half), IDS), want, 1e-9, "90° in rotate_half pairs");
        // the same in adjacent pairs: x[2j] ← -x[2j + 1], x[2j + 1] ← x[2j]
        const adjacent = (i: number): [number, number] => (i % 2 === 0 ? [i + 1, -1] : [i - 1, 1]);
        assertFar(referenceLogits(rotated(adjacent), IDS), want, 1e-4, "90° in adjacent pairs");
      });

      await t.step("a tied model equals an untied one whose lm_head is a copy of embed_tokens", async () => {
        const tied = await model("tied", { tieWordEmbeddings: true });
        assert.equal(tied.tensors.has("lm_head.weight"), false);
        const untied = await model("gqa", {});
        // tensors are seeded by name: everything but lm_head is the same in both models
        assertClose(
          tied.tensors.get("model.layers.1.mlp.up_proj.weight")!,
          untied.tensors.get("model.layers.1.mlp.up_proj.weight")!,
          0,
        );
        const asUntied: ReferenceModel = {
          config: { ...untied.config, tieWordEmbeddings: false },
          tensors: new Map(untied.tensors).set(
            "lm_head.weight",
            Float64Array.from(untied.tensors.get("model.embed_tokens.weight")!),
          ),
          shapes: untied.shapes,
        };
        const want = referenceLogits(tied, IDS);
        assertClose(referenceLogits(asUntied, IDS), want, 0, "copied lm_head");
        assertFar(referenceLogits(untied, IDS), want, 1e-3, "the random lm_head");
      });

      await t.step("sharded and f16 models load to the same numbers", async () => {
        const single = await model("gqa", {});
        const sharded = await model("sharded", { shards: 2 });
        assert.deepEqual([...sharded.tensors.keys()].toSorted(), [...single.tensors.keys()].toSorted());
        assertClose(referenceLogits(sharded, IDS), referenceLogits(single, IDS), 0, "sharded");
        const half = await model("f16", { dtype: "float16" });
        const err = maxAbsDiff(referenceLogits(half, IDS), referenceLogits(single, IDS));
        assert.ok(err > 0 && err < 0.05, `f16 vs f32 logits differ by ${err}`);
      });

      await t.step("config parsing fills HF defaults; bad shapes are refused", async () => {
        const c = parseReferenceConfig({
          hidden_size: 64,
          intermediate_size: 128,
          num_hidden_layers: 2,
          num_attention_heads: 4,
          vocab_size: 512,
        });
        assert.equal(c.numKeyValueHeads, 4);
        assert.equal(c.headDim, 16);
        assert.equal(c.ropeTheta, 10000);
        assert.equal(c.tieWordEmbeddings, false);
        assert.equal(c.ropeScaling, null);
        assert.throws(() => parseReferenceConfig({ hidden_size: 64 }), /num_attention_heads/);
        const dir = join(root!, "badshape");
        await makeTestModel(dir, { seed: 1 });
        const cfg = JSON.parse(await Deno.readTextFile(join(dir, "config.json")));
        cfg.intermediate_size = 100;
        await Deno.writeTextFile(join(dir, "config.json"), JSON.stringify(cfg));
        await assert.rejects(
          () => loadReferenceModel(dir),
          /gate_proj.weight has shape \[128,64\], config says \[100,64\]/,
        );
      });
    } finally {
      if (root !== undefined) await Deno.remove(root, { recursive: true });
    }
  },
});

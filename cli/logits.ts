/**
 * `kvfold logits`: the logits at every position of given ids, written as safetensors.
 *
 * @module
 */

import { KvfoldError, readSafetensorsFile, writeSafetensorsFile } from "../mod.ts";
import {
  CACHE,
  cacheFromArgs,
  COMMON,
  defineCommand,
  dtypeOpt,
  need,
  openEngine,
  parseCommand,
  parseIds,
  str,
} from "./_options.ts";
import { cacheNote, note } from "./_console.ts";

/** `kvfold logits`' usage and options. */
export const LOGITS = defineCommand({
  name: "logits",
  summary: "write the logits at every position of given token ids",
  usage: ["logits --model DIR --ids 1,2,3 --out FILE.safetensors [options]"],
  details: 'Writes tensor "logits" [n_ids, vocab] f32 (no BOS added). --prefix runs its tensor\n' +
    '"embeddings" [K, hidden] first; a compressing cache prefills segment by segment.',
  options: {
    model: str("DIR", "model folder (Hugging Face layout) or GGUF file"),
    ids: str("1,2,3", "token ids, comma-separated"),
    out: str("FILE", "the .safetensors file to write"),
    prefix: str("FILE", 'a .safetensors file whose "embeddings" [K, hidden] run first'),
    adapter: str("DIR", "a PEFT LoRA adapter folder"),
    ...COMMON,
    ...CACHE,
  },
});

export async function cmdLogits(args: string[]) {
  const { values: v } = parseCommand(args, LOGITS);
  const dir = need(v.model, "model");
  const out = need(v.out, "out");
  // --prefix FILE.safetensors: tensor "embeddings" [K, hidden] runs first, at positions 0..K-1.
  let prefix: { data: Float32Array | Uint16Array; dtype: "f32" | "f16" | "bf16"; shape: number[] } | null =
    null;
  if (v.prefix !== undefined) {
    const t = (await readSafetensorsFile(v.prefix)).tensors.get("embeddings");
    if (!t || t.shape.length !== 2) {
      throw new KvfoldError(
        "FORMAT",
        `Cannot read --prefix ${v.prefix}: it has no 2-D tensor "embeddings" [K, hidden]`,
      );
    }
    if (t.dtype !== "F32" && t.dtype !== "F16" && t.dtype !== "BF16") {
      throw new KvfoldError(
        "UNSUPPORTED",
        `Cannot read --prefix ${v.prefix}: embeddings are ${t.dtype}; use F32, F16 or BF16`,
      );
    }
    const bytes = t.data.slice(); // aligned copy
    prefix = {
      data: t.dtype === "F32" ? new Float32Array(bytes.buffer) : new Uint16Array(bytes.buffer),
      dtype: t.dtype === "F32" ? "f32" : t.dtype === "F16" ? "f16" : "bf16",
      shape: t.shape,
    };
  }
  const ids = parseIds(need(v.ids, "ids"));
  using kv = await openEngine(v);
  using model = await kv.loadModel(dir, { dtype: dtypeOpt(v) });
  if (prefix && prefix.shape[1] !== model.info.hiddenSize) {
    throw new KvfoldError(
      "FORMAT",
      `Cannot read --prefix ${v.prefix}: "embeddings" is [${prefix.shape.join(", ")}], but the model's ` +
        `hidden size is ${model.info.hiddenSize} (want [K, ${model.info.hiddenSize}])`,
    );
  }
  const k = prefix?.shape[0] ?? 0;
  // A compressing cache prefills segment by segment; the logits of every position are kept on the way.
  const cache = cacheFromArgs(model, v);
  using session = model.session({
    contextSize: cache ? undefined : k + ids.length, // a compressing cache: no limit
    batchSize: Math.min(k + ids.length, 256),
    cache,
  });
  if (v.adapter !== undefined) await session.setAdapter(await model.adapters.load(v.adapter));
  if (prefix) await session.prefillEmbeddings(prefix.data, { dtype: prefix.dtype, shape: prefix.shape });
  const logits = (await session.prefill(ids, { logits: "all" }))!;
  await writeSafetensorsFile(out, [{
    name: "logits",
    dtype: "F32",
    shape: [ids.length, model.info.vocabSize],
    data: logits,
  }], {
    "kvfold.model": dir,
    "kvfold.ids": ids.join(","),
    "kvfold.prefix_rows": String(k),
    ...(v.adapter !== undefined ? { "kvfold.adapter": v.adapter } : {}),
    "kvfold.cache": cache?.kind ?? "full",
  });
  note(`wrote ${out}: logits [${ids.length}, ${model.info.vocabSize}] f32`);
  cacheNote(session);
}

// LoRA on the float64 reference side: merge a PEFT folder into a reference model's weights with a
// composition weight (W += w · s · B A), and write a reference model back out as an f32 model folder.
// Reads the PEFT files itself (adapter_config.json semantics as PEFT states them), never the engine.
import { join } from "node:path";
import { readSafetensorsFile, toFloat64, writeSafetensorsFile } from "../src/formats/safetensors.ts";
import type { ReferenceModel } from "./reference_forward.ts";

/**
 * W += weight · s · B A for every LoRA pair of a PEFT folder (s = alpha / r, or alpha / sqrt(r) with
 * use_rslora; rank_pattern / alpha_pattern keys matched as dotted suffixes), into `ref`'s tensors.
 */
export async function mergeLoraInto(ref: ReferenceModel, adapterDir: string, weight = 1): Promise<void> {
  const cfg = JSON.parse(await Deno.readTextFile(join(adapterDir, "adapter_config.json")));
  const { tensors } = await readSafetensorsFile(join(adapterDir, "adapter_model.safetensors"));
  const pattern = (table: Record<string, number> | undefined, module: string) => {
    const key = Object.keys(table ?? {}).find((k) => module === k || module.endsWith(`.${k}`));
    return key === undefined ? undefined : table![key];
  };
  for (const [name, a] of tensors) {
    if (!name.endsWith("lora_A.weight")) continue;
    const b = tensors.get(name.replace("lora_A", "lora_B"))!;
    const module = name.replace(/^base_model\.model\./, "").replace(/\.lora_A\.weight$/, "");
    const r = pattern(cfg.rank_pattern, module) ?? cfg.r;
    const alpha = pattern(cfg.alpha_pattern, module) ?? cfg.lora_alpha;
    const s = cfg.use_rslora ? alpha / Math.sqrt(r) : alpha / r;
    const A = toFloat64(a), B = toFloat64(b);
    const [out, rank] = b.shape, inp = a.shape[1];
    if (rank !== r) throw new Error(`${module}: rank ${rank}, config r ${r}`);
    const W = ref.tensors.get(`${module}.weight`)!;
    for (let o = 0; o < out; o++) {
      for (let i = 0; i < inp; i++) {
        let acc = 0;
        for (let j = 0; j < rank; j++) acc += B[o * rank + j] * A[j * inp + i];
        W[o * inp + i] += weight * s * acc;
      }
    }
  }
}

/** Writes `ref`'s tensors as an f32 model.safetensors in `outDir`, with `srcDir`'s other files. */
export async function writeReferenceModel(
  ref: ReferenceModel,
  srcDir: string,
  outDir: string,
): Promise<void> {
  await Deno.mkdir(outDir, { recursive: true });
  for await (const e of Deno.readDir(srcDir)) {
    if (e.isFile && !e.name.endsWith(".safetensors") && !e.name.endsWith(".index.json")) {
      await Deno.copyFile(join(srcDir, e.name), join(outDir, e.name));
    }
  }
  const cfg = JSON.parse(await Deno.readTextFile(join(outDir, "config.json")));
  cfg.torch_dtype = "float32";
  await Deno.writeTextFile(join(outDir, "config.json"), JSON.stringify(cfg));
  await writeSafetensorsFile(
    join(outDir, "model.safetensors"),
    [...ref.tensors].map(([name, data]) => ({
      name,
      dtype: "F32" as const,
      shape: ref.shapes.get(name)!,
      data: Float32Array.from(data),
    })),
  );
}

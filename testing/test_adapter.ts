/**
 * Random PEFT LoRA adapters for a test model folder.
 *
 * @module
 */

import { join } from "node:path";
import { KvfoldError } from "../src/errors.ts";
import { readBoundedJson } from "../src/_bounded_read.ts";
import { type TensorInput, writeSafetensorsFile } from "../src/formats/safetensors.ts";
import { normalTensor } from "../src/_seeded_random.ts";
import { positiveInt } from "./test_model.ts";

/** Options of {@link makeTestAdapter}. */
export interface TestAdapterOptions {
  /** The base model folder (its config.json gives the shapes). */
  base: string;
  /** Seed of the random A and B matrices; default 1. */
  seed?: number;
  /** `r` of adapter_config.json; default 8. */
  rank?: number;
  /** `lora_alpha`; default 2 × rank. */
  alpha?: number;
  /** Projections to adapt; default q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj. */
  targetModules?: readonly string[];
  /** `use_rslora`; default false. */
  rslora?: boolean;
  /** `rank_pattern` (module key → rank), as PEFT writes it. */
  rankPattern?: Record<string, number>;
  /** `alpha_pattern` (module key → alpha). */
  alphaPattern?: Record<string, number>;
  /** Only these layers get LoRA pairs (written as `layers_to_transform`, as PEFT does); default all. */
  layers?: readonly number[];
  /** Tensor dtype; default F32. */
  dtype?: "F32" | "F16" | "BF16";
  /** Standard deviation of A and of B; default 0.05 (B is random, not PEFT's zeros, so it shows). */
  std?: number;
}

const MODULE_PARENT: Record<string, string> = {
  q_proj: "self_attn",
  k_proj: "self_attn",
  v_proj: "self_attn",
  o_proj: "self_attn",
  gate_proj: "mlp",
  up_proj: "mlp",
  down_proj: "mlp",
};

/**
 * Writes a random PEFT LoRA adapter for a base model folder: `adapter_config.json` and
 * `adapter_model.safetensors` with PEFT's tensor names. Returns the tensor names written.
 *
 * @example
 * ```ts ignore
 * await makeTestModel("./models/tiny");
 * await makeTestAdapter("./adapters/a", { base: "./models/tiny", rank: 4, targetModules: ["q_proj", "v_proj"] });
 * ```
 */
export async function makeTestAdapter(outDir: string, options: TestAdapterOptions): Promise<string[]> {
  const json = await readBoundedJson(join(options.base, "config.json"), { action: "make test adapter" });
  const cfg = json as Record<string, number>;
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new KvfoldError(
      "FORMAT",
      `Cannot make test adapter: ${options.base}/config.json is not a JSON object`,
    );
  }
  const hidden = cfg.hidden_size, heads = cfg.num_attention_heads;
  const kvHeads = cfg.num_key_value_heads ?? heads;
  const headDim = cfg.head_dim ?? hidden / heads;
  const inter = cfg.intermediate_size, nLayers = cfg.num_hidden_layers;
  const shapes: Record<string, [number, number]> = { // [out, in]
    q_proj: [heads * headDim, hidden],
    k_proj: [kvHeads * headDim, hidden],
    v_proj: [kvHeads * headDim, hidden],
    o_proj: [hidden, heads * headDim],
    gate_proj: [inter, hidden],
    up_proj: [inter, hidden],
    down_proj: [hidden, inter],
  };
  const rank = positiveInt("rank", options.rank ?? 8);
  const seed = options.seed ?? 1;
  const targets = options.targetModules ?? Object.keys(shapes);
  const layers = options.layers ?? Array.from({ length: nLayers }, (_, i) => i);
  const dtype = options.dtype ?? "F32";
  const std = options.std ?? 0.05;
  const tensors: TensorInput[] = [];
  for (const l of layers) {
    for (const m of targets) {
      const shape = shapes[m];
      if (!shape) {
        throw new KvfoldError("INVALID_ARGUMENT", `Cannot make test adapter: ${m} is not a projection`);
      }
      const [out, inp] = shape;
      const key = `model.layers.${l}.${MODULE_PARENT[m]}.${m}`;
      const r = options.rankPattern?.[m] ?? rank;
      const name = `base_model.model.${key}`;
      tensors.push({
        name: `${name}.lora_A.weight`,
        dtype,
        shape: [r, inp],
        data: normalTensor(seed, `${name}.A`, r * inp, 0, std),
      });
      tensors.push({
        name: `${name}.lora_B.weight`,
        dtype,
        shape: [out, r],
        data: normalTensor(seed, `${name}.B`, out * r, 0, std),
      });
    }
  }
  const config = {
    alpha_pattern: options.alphaPattern ?? {},
    base_model_name_or_path: options.base,
    bias: "none",
    fan_in_fan_out: false,
    inference_mode: true,
    layers_pattern: null,
    layers_to_transform: options.layers ? [...options.layers] : null,
    lora_alpha: options.alpha ?? 2 * rank,
    lora_dropout: 0.05,
    peft_type: "LORA",
    r: rank,
    rank_pattern: options.rankPattern ?? {},
    target_modules: [...targets],
    task_type: "CAUSAL_LM",
    use_dora: false,
    use_rslora: options.rslora ?? false,
  };
  try {
    await Deno.mkdir(outDir, { recursive: true });
    await Deno.writeTextFile(join(outDir, "adapter_config.json"), JSON.stringify(config, null, 2) + "\n");
    await writeSafetensorsFile(join(outDir, "adapter_model.safetensors"), tensors, { format: "pt" });
  } catch (e) {
    throw new KvfoldError("IO", `Cannot make test adapter in ${outDir}: ${(e as Error).message}`, {
      cause: e,
    });
  }
  return tensors.map((t) => t.name);
}
